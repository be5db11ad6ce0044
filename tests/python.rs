//! Python interpreters and the test servers run under them.
//!
//! [`Interpreter`] finds an interpreter (a pyenv build under `$(pyenv root)/versions/X`, or
//! Debian's `/usr/bin/python3.11`) and asks it for its exact version, which the spans'
//! `process.runtime.version` must start with. A missing interpreter is an error, never a skip.
//!
//! [`PythonServer`] runs one of the [`ServerProgram`]s on a free port picked in Rust (bind port 0,
//! read it, close), waits until the port accepts connections, and kills the process on drop. Its
//! stdout/stderr are captured (which also keeps request logs out of the test output) and shown if
//! it fails to start.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::agent::wait_with_timeout;
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
}

impl ServerProgram {
    fn arguments(&self, port: u16) -> Vec<String> {
        let dir = python_dir();
        let script = |name: &str| dir.join(name).display().to_string();
        match self {
            Self::KeepAlive => vec![script("keepalive_server.py"), port.to_string()],
            Self::ExitBeforeResponse => vec![script("exit_before_response.py"), port.to_string()],
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
}

/// A running test server; killed on drop.
pub struct PythonServer {
    child: Child,
    port: u16,
    interpreter: Interpreter,
    program: ServerProgram,
    output: LineLog,
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
        let mut server = Self { child, port, interpreter: interpreter.clone(), program, output, exited: None };
        server.wait_listening()?;
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

    /// A one-line description for messages.
    pub fn describe(&self) -> String {
        format!("{:?} under {} (pid {}, port {})", self.program, self.interpreter.label, self.pid(), self.port)
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
