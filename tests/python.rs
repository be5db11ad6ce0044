//! Python interpreters and the test servers run under them.
//!
//! [`Interpreter`] finds an interpreter (a pyenv build under `$(pyenv root)/versions/X`, or
//! Debian's `/usr/bin/python3.11`) and asks it for its exact version, which the spans'
//! `process.runtime.version` must start with. A missing interpreter is an error, never a skip.
//!
//! [`PythonServer`] runs one of the [`ServerProgram`]s on a free port picked in Rust (bind port 0,
//! read it, close), waits until the port accepts connections, and kills the process on drop. Its
//! stdout/stderr are captured (which also keeps request logs out of the test output) and shown if
//! it fails to start. A program that forks workers (gunicorn) announces each as `WORKER pid=N`;
//! the server waits for all of them, reports them in [`PythonServer::pids`], and kills them too.
//!
//! [`PythonClient`] runs a one-shot traced client program: it announces `READY pid=N` and waits
//! for its input on stdin, so the test can wait for the agent to track it before it sends anything.

use std::collections::HashSet;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::agent::wait_with_timeout;
use crate::chain::ServiceConfig;
use crate::env::python_dir;
use crate::lines::LineLog;

/// How long a test server may take to start listening.
pub const LISTEN_TIMEOUT: Duration = Duration::from_secs(20);

/// The pyenv versions the project supports.
pub const PYENV_VERSIONS: [&str; 6] = ["3.8.18", "3.9.18", "3.10.13", "3.11.7", "3.12.1", "3.13.0"];

/// Debian's own interpreter: static, non-PIE, no libpython, with USDT probes.
pub const DEBIAN_PYTHON: &str = "/usr/bin/python3.11";

/// A Python interpreter on this host.
#[derive(Debug, Clone)]
pub struct Interpreter {
    /// A short name for messages ("pyenv 3.8.18", "debian python3.11").
    pub label: String,
    /// The path the tests run.
    pub path: PathBuf,
    /// `platform.python_version()`, e.g. "3.11.2".
    pub version: String,
}

impl Interpreter {
    /// `$(pyenv root)/versions/VERSION/bin/python3`, which must report exactly `version`.
    pub fn pyenv(version: &str) -> Result<Self> {
        let path = pyenv_root().join("versions").join(version).join("bin/python3");
        let interpreter = Self::at(&format!("pyenv {version}"), &path)?;
        if interpreter.version != version {
            bail!("{} reports version {}, expected {version}", path.display(), interpreter.version);
        }
        Ok(interpreter)
    }

    /// Debian's `/usr/bin/python3.11`.
    pub fn debian() -> Result<Self> {
        Self::at("debian python3.11", Path::new(DEBIAN_PYTHON))
    }

    /// The interpreter at `path`, with its version asked from it.
    pub fn at(label: &str, path: &Path) -> Result<Self> {
        if !path.is_file() {
            bail!("interpreter {label} not found at {} (run `cargo xtask setup`)", path.display());
        }
        let version = query_version(path)?;
        Ok(Self { label: label.to_owned(), path: path.to_owned(), version })
    }

    /// The resolved executable (what /proc/PID/exe points to).
    pub fn canonical_path(&self) -> PathBuf {
        std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone())
    }
}

/// `pyenv root`, else `$PYENV_ROOT`, else `/root/.pyenv`.
pub fn pyenv_root() -> PathBuf {
    let from_command = Command::new("pyenv")
        .arg("root")
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .filter(|root| !root.is_empty());
    from_command
        .or_else(|| std::env::var("PYENV_ROOT").ok().filter(|root| !root.is_empty()))
        .map_or_else(|| PathBuf::from("/root/.pyenv"), PathBuf::from)
}

fn query_version(path: &Path) -> Result<String> {
    let output = Command::new(path)
        .args(["-c", "import platform; print(platform.python_version())"])
        .output()
        .with_context(|| format!("running {}", path.display()))?;
    if !output.status.success() {
        bail!("{} failed to report its version: {}", path.display(), String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The programs the tests serve.
#[derive(Debug, Clone)]
pub enum ServerProgram {
    /// `keepalive_server.py`: HTTP/1.1 with keep-alive; `/status/NNN`; POST answers the length.
    KeepAlive,
    /// `python -m http.server` serving `tests/python/www`: HTTP/1.0, one response per connection.
    HttpServerModule,
    /// `exit_before_response.py`: reads one request, then `os._exit(3)` without responding.
    ExitBeforeResponse,
    /// `echo_server.py`: answers every request with the raw bytes it received (head and body).
    Echo,
    /// `chain_service.py`: one service of an HTTP call chain (see [`crate::chain`]).
    Chain(ServiceConfig),
    /// `stack_service.py --server <server>`: a handler that calls `downstream` itself.
    Stack { server: &'static str, downstream: String },
    /// `function_service.py`, imported as the module `function_service` (through `-c`, so its
    /// functions do not belong to `__main__`): Flask on the port, FastAPI on `async_port`.
    Function { async_port: u16 },
}

impl ServerProgram {
    fn arguments(&self, port: u16) -> Vec<String> {
        let dir = python_dir();
        let script = |name: &str| dir.join(name).display().to_string();
        match self {
            Self::KeepAlive => vec![script("keepalive_server.py"), port.to_string()],
            Self::ExitBeforeResponse => vec![script("exit_before_response.py"), port.to_string()],
            Self::Echo => vec![script("echo_server.py"), port.to_string()],
            Self::Chain(config) => {
                let mut arguments = vec![script("chain_service.py"), "--port".into(), port.to_string()];
                arguments.extend(config.arguments());
                arguments
            }
            Self::Stack { server, downstream } => vec![
                script("stack_service.py"),
                "--server".into(),
                (*server).into(),
                "--port".into(),
                port.to_string(),
                "--downstream".into(),
                downstream.clone(),
            ],
            Self::Function { async_port } => vec![
                "-c".into(),
                "import sys; sys.path.insert(0, sys.argv[1]); import function_service; \
                 sys.exit(function_service.main(sys.argv[2:]))"
                    .into(),
                dir.canonicalize().unwrap_or_else(|_| dir.clone()).display().to_string(),
                "--port".into(),
                port.to_string(),
                "--async-port".into(),
                async_port.to_string(),
            ],
            Self::HttpServerModule => vec![
                "-m".into(),
                "http.server".into(),
                port.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
                "--directory".into(),
                dir.join("www").display().to_string(),
            ],
        }
    }

    /// Worker processes the program forks and announces (`WORKER pid=N` on stdout).
    fn workers(&self) -> usize {
        match self {
            Self::Chain(config) => config.server.workers(),
            _ => 0,
        }
    }

    /// A short name for messages.
    pub fn name(&self) -> String {
        match self {
            Self::Chain(config) => config.describe(),
            other => format!("{other:?}"),
        }
    }
}

/// A running test server; killed on drop.
pub struct PythonServer {
    child: Child,
    port: u16,
    interpreter: Interpreter,
    program: ServerProgram,
    output: LineLog,
    /// Pids of the worker processes it forked (gunicorn), in the order they announced.
    workers: Vec<u32>,
    exited: Option<ExitStatus>,
}

impl PythonServer {
    /// Starts `program` under `interpreter` on a free port and waits until it accepts connections.
    pub fn start(interpreter: &Interpreter, program: ServerProgram) -> Result<Self> {
        let port = free_port()?;
        let mut child = Command::new(&interpreter.path)
            .args(program.arguments(port))
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} ({})", interpreter.path.display(), interpreter.label))?;
        let output = LineLog::new();
        output.follow(child.stdout.take().expect("stdout is piped"));
        output.follow(child.stderr.take().expect("stderr is piped"));
        let mut server =
            Self { child, port, interpreter: interpreter.clone(), program, output, workers: Vec::new(), exited: None };
        server.wait_listening()?;
        server.wait_workers()?;
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn interpreter(&self) -> &Interpreter {
        &self.interpreter
    }

    /// Every process of the server: its own pid, then its workers'.
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(self.pid()).chain(self.workers.iter().copied()).collect()
    }

    /// A one-line description for messages.
    pub fn describe(&self) -> String {
        let workers = if self.workers.is_empty() { String::new() } else { format!(", workers {:?}", self.workers) };
        format!(
            "{} under {} (pid {}{workers}, port {})",
            self.program.name(),
            self.interpreter.label,
            self.pid(),
            self.port
        )
    }

    /// The server's captured output.
    pub fn output(&self) -> String {
        self.output.text()
    }

    /// Polls until a TCP connection to the port succeeds. The probe connection sends nothing.
    fn wait_listening(&mut self) -> Result<()> {
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            if TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                self.exited = Some(status);
                self.output.wait_closed(Duration::from_secs(2));
                bail!("{} exited ({status}) before listening:\n{}", self.describe(), self.output());
            }
            if Instant::now() >= deadline {
                bail!("{} did not listen within {LISTEN_TIMEOUT:?}:\n{}", self.describe(), self.output());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every worker the program forks has announced itself (`WORKER pid=N`).
    fn wait_workers(&mut self) -> Result<()> {
        let expected = self.program.workers();
        let deadline = Instant::now() + LISTEN_TIMEOUT;
        while self.workers.len() < expected {
            let known = self.workers.clone();
            let found = self.output.wait_for(deadline.saturating_duration_since(Instant::now()), |line| {
                announced_pid(line, "WORKER").is_some_and(|pid| !known.contains(&pid))
            });
            match found {
                Ok(line) => self.workers.extend(announced_pid(&line, "WORKER")),
                Err(_) => bail!(
                    "{} announced {} of its {expected} workers within {LISTEN_TIMEOUT:?}:\n{}",
                    self.describe(),
                    self.workers.len(),
                    self.output()
                ),
            }
        }
        Ok(())
    }

    /// Waits for the server to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if self.exited.is_none() {
            self.exited = wait_with_timeout(&mut self.child, timeout);
        }
        self.exited.ok_or_else(|| anyhow!("{} still runs after {timeout:?}", self.describe()))
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        // Workers first: killed alone, a gunicorn master leaves them running until they notice.
        for &worker in &self.workers {
            let _ = crate::agent::signal(worker, libc::SIGKILL);
        }
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The pid in a program's announcement line, `TAG pid=N ...` (e.g. `WORKER pid=42`).
pub fn announced_pid(line: &str, tag: &str) -> Option<u32> {
    let fields = line.strip_prefix(tag)?.strip_prefix(' ')?;
    fields.split_whitespace().find_map(|field| field.strip_prefix("pid="))?.parse().ok()
}

/// A traced one-shot Python program (`raw_client.py`, `client_calls.py`).
///
/// The program prints `READY pid=N` and then waits for one line on stdin, so the test can wait
/// for the agent to track it before it does anything; it prints its results on stdout, then
/// `DONE`, and exits. Killed on drop if still running.
pub struct PythonClient {
    child: Child,
    script: String,
    interpreter: Interpreter,
    stdin: Option<ChildStdin>,
    stdout: LineLog,
    stderr: LineLog,
    exited: Option<ExitStatus>,
}

impl PythonClient {
    /// Starts `tests/python/SCRIPT ARGS...` under `interpreter` and waits for its `READY` line.
    pub fn start(interpreter: &Interpreter, script: &str, args: &[String]) -> Result<Self> {
        let mut child = Command::new(&interpreter.path)
            .arg(python_dir().join(script))
            .args(args)
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {script} under {}", interpreter.label))?;
        let (stdout, stderr) = (LineLog::new(), LineLog::new());
        stdout.follow(child.stdout.take().expect("stdout is piped"));
        stderr.follow(child.stderr.take().expect("stderr is piped"));
        let stdin = child.stdin.take();
        let client = Self {
            child,
            script: script.to_owned(),
            interpreter: interpreter.clone(),
            stdin,
            stdout,
            stderr,
            exited: None,
        };
        let ready = client.stdout.wait_for(LISTEN_TIMEOUT, |line| announced_pid(line, "READY").is_some());
        if ready.is_err() {
            bail!("{} did not print READY within {LISTEN_TIMEOUT:?}\n{}", client.describe(), client.output());
        }
        Ok(client)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn interpreter(&self) -> &Interpreter {
        &self.interpreter
    }

    /// A one-line description for messages.
    pub fn describe(&self) -> String {
        format!("{} under {} (pid {})", self.script, self.interpreter.label, self.pid())
    }

    /// Its stdout and stderr so far, for messages.
    pub fn output(&self) -> String {
        format!("--- stdout ---\n{}\n--- stderr ---\n{}\n--- end ---", self.stdout.text(), self.stderr.text())
    }

    /// Sends `input` as one line, waits for `DONE` and a successful exit, and returns the lines
    /// printed between `READY` and `DONE`.
    pub fn run(&mut self, input: &str, timeout: Duration) -> Result<Vec<String>> {
        let mut stdin = self.stdin.take().context("the input was already sent")?;
        stdin.write_all(format!("{input}\n").as_bytes()).with_context(|| format!("writing to {}", self.describe()))?;
        drop(stdin);
        self.exited = wait_with_timeout(&mut self.child, timeout);
        match self.exited {
            None => bail!("{} did not finish within {timeout:?}\n{}", self.describe(), self.output()),
            Some(status) if !status.success() => bail!("{} exited with {status}\n{}", self.describe(), self.output()),
            Some(_) => {}
        }
        self.stdout.wait_closed(Duration::from_secs(5));
        let text = self.stdout.text();
        let lines: Vec<&str> = text.lines().collect();
        let Some(done) = lines.iter().position(|line| *line == "DONE") else {
            bail!("{} exited without printing DONE\n{}", self.describe(), self.output());
        };
        Ok(lines[..done]
            .iter()
            .filter(|line| announced_pid(line, "READY").is_none())
            .map(|l| (*l).to_owned())
            .collect())
    }
}

impl Drop for PythonClient {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Ports already handed out in this process, so two servers of one test never share a port
/// (the store would then mix their spans) even if the kernel recycles one.
static GIVEN_PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A TCP port on 127.0.0.1 that was free a moment ago and was not handed out before.
pub fn free_port() -> Result<u16> {
    let mut given = GIVEN_PORTS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..100 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port();
        if given.insert(port) {
            return Ok(port);
        }
    }
    bail!("no fresh free port after 100 attempts")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{HttpConnection, Request};

    #[test]
    fn every_supported_interpreter_is_installed() {
        for version in PYENV_VERSIONS {
            Interpreter::pyenv(version).unwrap();
        }
        assert!(Interpreter::debian().unwrap().version.starts_with("3.11."));
    }

    #[test]
    fn free_ports_are_never_repeated() {
        let ports: HashSet<u16> = (0..20).map(|_| free_port().unwrap()).collect();
        assert_eq!(ports.len(), 20);
    }

    #[test]
    fn keepalive_server_serves_several_requests_on_one_connection() {
        let server = PythonServer::start(&Interpreter::pyenv("3.8.18").unwrap(), ServerProgram::KeepAlive).unwrap();
        let mut connection = HttpConnection::connect(server.port()).unwrap();
        let ok = connection.send(&Request::get("/a?b=c")).unwrap();
        assert_eq!(
            (ok.version.as_str(), ok.status, ok.body.as_slice()),
            ("HTTP/1.1", 200, &b"hello from /a?b=c\n"[..])
        );
        let echo = connection.send(&Request::post("/echo", vec![b'x'; 3000])).unwrap();
        assert_eq!((echo.status, echo.body.as_slice()), (200, &b"received 3000 bytes\n"[..]));
        assert_eq!(connection.send(&Request::get("/status/500")).unwrap().status, 500);
        assert_eq!(connection.send(&Request::post("/status/503", "x")).unwrap().status, 503);
        assert!(!connection.closed_by_server(Duration::from_millis(100)).unwrap());
    }

    #[test]
    fn http_server_module_answers_http10_and_closes() {
        let server = PythonServer::start(&Interpreter::debian().unwrap(), ServerProgram::HttpServerModule).unwrap();
        let mut connection = HttpConnection::connect(server.port()).unwrap();
        let response = connection.send(&Request::get("/hello.txt").version("HTTP/1.0")).unwrap();
        assert_eq!((response.version.as_str(), response.status), ("HTTP/1.0", 200));
        assert_eq!(response.body, b"hello from the static directory\n");
        assert!(connection.closed_by_server(Duration::from_secs(5)).unwrap());
        let head = HttpConnection::connect(server.port())
            .unwrap()
            .send(&Request::new("HEAD", "/hello.txt").version("HTTP/1.0"))
            .unwrap();
        assert!(head.body.is_empty() && head.status == 200);
        let post = Request::new("POST", "/hello.txt").version("HTTP/1.0");
        assert_eq!(HttpConnection::connect(server.port()).unwrap().send(&post).unwrap().status, 501);
    }

    #[test]
    fn exit_server_dies_without_responding() {
        let mut server =
            PythonServer::start(&Interpreter::pyenv("3.13.0").unwrap(), ServerProgram::ExitBeforeResponse).unwrap();
        let mut connection = HttpConnection::connect(server.port()).unwrap();
        assert!(connection.send(&Request::post("/in-flight", "payload")).is_err());
        assert_eq!(server.wait_exit(Duration::from_secs(10)).unwrap().code(), Some(3));
    }
}
