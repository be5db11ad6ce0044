//! Interpreters in the shapes they take in the field, beyond pyenv's shared libpython and
//! Debian's static non-PIE python3.11 (which every other test runs):
//!
//! * a venv whose `python` is a symlink, and one made with `--copies` (its own executable
//!   linking pyenv's libpython);
//! * a static PIE executable with libpython linked in, as python-build-standalone (uv, rye),
//!   conda and many container images ship it, built here from pyenv's `libpython3.X.a`;
//! * the same stripped to `.dynsym` (`strip --strip-all`), on 3.8 (no `Py_Version`: the version
//!   comes from the binary's version string) and 3.13;
//! * a shared libpython stripped to `.dynsym`, loaded through `LD_LIBRARY_PATH`;
//! * an interpreter at a path that exists only in the process's own mount namespace (a tmpfs
//!   mounted over an empty host directory), which the agent must open through /proc/PID/root;
//! * a 3.13 whose `_Py_DebugOffsets` says a field moved (a patched copy; the interpreter itself
//!   never reads the table): the agent must notice, say so, and leave the process's memory
//!   alone (no Python stacks, no function spans) while its HTTP spans go on.
//!
//! Each serves `keepalive_server.py`, some started before the agent (found by the /proc scan),
//! some after (found through exec). The agent must recognise each with its exact version, and
//! its spans must be right: the server span of every request, with the process's runtime
//! version and executable as the process sees it, and a function span for the selected handler
//! method (`--function`), which needs the interpreter's frames and code objects read correctly.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use scouter_e2e::agent::{log_context, Agent};
use scouter_e2e::env::{python_dir, require_ebpf_host};
use scouter_e2e::expect::Verdict;
use scouter_e2e::http::{HttpConnection, Request};
use scouter_e2e::lines::has_field;
use scouter_e2e::python::{pyenv_root, Interpreter, PythonServer, ServerProgram};
use scouter_e2e::store::{Span, Store};

/// The handler method selected for function spans (keepalive_server.py runs as `__main__`).
const SELECTED: &str = "__main__:Handler.status_for_path";
const SELECTED_QUALNAME: &str = "Handler.status_for_path";
const REQUESTS_PER_SHAPE: usize = 2;

/// One interpreter shape under test.
struct Shape {
    label: &'static str,
    interpreter: Interpreter,
    /// The exact version the agent must report.
    version: &'static str,
    /// `process.executable.path`: the executable as the process sees it.
    executable: PathBuf,
    /// Started before the agent (found by its /proc scan) rather than after (found at exec).
    before_agent: bool,
    /// Its layout must be refused: the agent's log says this, and no function span is made.
    refused_because: Option<&'static str>,
}

/// Where the shapes are built; removed with the test.
struct Workshop {
    dir: tempfile::TempDir,
}

impl Workshop {
    fn new() -> Result<Self> {
        Ok(Self { dir: tempfile::Builder::new().prefix("scouter-shapes-").tempdir()? })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `python -m venv` of a pyenv interpreter; `copies` copies the executable instead of
    /// linking it. Returns the venv's `bin/python3`.
    fn venv(&self, name: &str, version: &str, copies: bool) -> Result<PathBuf> {
        let base = pyenv_python(version);
        let dir = self.path(name);
        let mut command = Command::new(&base);
        command.args(["-m", "venv", "--without-pip"]);
        if copies {
            command.arg("--copies");
        }
        run(command.arg(&dir))?;
        Ok(dir.join("bin/python3"))
    }

    /// A position-independent executable with pyenv's static `libpython3.X.a` linked in (and
    /// its symbols exported, as extension modules need), at `<name>/bin/python3.X`, beside a
    /// `lib` link to the pyenv install's standard library so that the interpreter finds it.
    fn static_interpreter(&self, name: &str, version: &str, stripped: bool) -> Result<PathBuf> {
        let minor = minor_of(version);
        let install = pyenv_root().join("versions").join(version);
        let root = self.path(name);
        fs::create_dir_all(root.join("bin"))?;
        symlink(install.join("lib"), root.join("lib"))?;
        let main = self.path("embed_main.c");
        fs::write(
            &main,
            "#include <Python.h>\nint main(int argc, char **argv) { return Py_BytesMain(argc, argv); }\n",
        )?;
        let executable = root.join("bin").join(format!("python{minor}"));
        let archive = install.join(format!("lib/python{minor}/config-{minor}-x86_64-linux-gnu/libpython{minor}.a"));
        let mut gcc = Command::new("gcc");
        gcc.args(["-O1", "-fPIE", "-pie"])
            .arg(format!("-I{}", install.join(format!("include/python{minor}")).display()))
            .arg(&main)
            .arg(&archive)
            .args(["-Wl,--export-dynamic", "-lm", "-ldl", "-lpthread", "-lutil", "-o"])
            .arg(&executable);
        run(&mut gcc)?;
        if stripped {
            strip(&executable)?;
        }
        Ok(executable)
    }

    /// A script running pyenv's `version` with a stripped copy of its libpython found first
    /// through `LD_LIBRARY_PATH`.
    fn stripped_libpython(&self, name: &str, version: &str) -> Result<PathBuf> {
        let minor = minor_of(version);
        let soname = format!("libpython{minor}.so.1.0");
        let libraries = self.path(name);
        fs::create_dir_all(&libraries)?;
        let copy = libraries.join(&soname);
        fs::copy(pyenv_root().join("versions").join(version).join("lib").join(&soname), &copy)?;
        strip(&copy)?;
        let script = format!(
            "#!/bin/sh\nLD_LIBRARY_PATH={} exec {} \"$@\"\n",
            libraries.display(),
            pyenv_python(version).display()
        );
        self.script(&format!("{name}.sh"), &script)
    }

    /// A script that runs `target` (a directory holding `bin/python3.X`) from `view`/py, inside
    /// a new mount namespace where `view` is a tmpfs: the host sees `view` empty.
    fn namespaced(&self, name: &str, target: &Path, minor: &str, view: &Path) -> Result<(PathBuf, PathBuf)> {
        fs::create_dir_all(view)?;
        let inside = view.join("py");
        let executable = inside.join("bin").join(format!("python{minor}"));
        let setup = format!(
            "mount -t tmpfs scouter-shapes {view} && mkdir {inside} && mount --bind {target} {inside} && exec {executable} \"$@\"",
            view = view.display(),
            inside = inside.display(),
            target = target.display(),
            executable = executable.display(),
        );
        let script = format!("#!/bin/sh\nexec unshare --mount --propagation private sh -c '{setup}' sh \"$@\"\n");
        Ok((self.script(&format!("{name}.sh"), &script)?, executable))
    }

    fn script(&self, name: &str, text: &str) -> Result<PathBuf> {
        let path = self.path(name);
        fs::write(&path, text)?;
        run(Command::new("chmod").arg("+x").arg(&path))?;
        Ok(path)
    }
}

fn pyenv_python(version: &str) -> PathBuf {
    pyenv_root().join("versions").join(version).join("bin/python3")
}

/// "3.12.1" → "3.12".
fn minor_of(version: &str) -> String {
    version.split('.').take(2).collect::<Vec<_>>().join(".")
}

fn strip(path: &Path) -> Result<()> {
    run(Command::new("strip").arg("--strip-all").arg(path))
}

fn run(command: &mut Command) -> Result<()> {
    let output = command.output().with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim_end());
    }
    Ok(())
}

fn build_shapes(workshop: &Workshop) -> Result<Vec<Shape>> {
    let shape = |label, path: PathBuf, version, executable: PathBuf, before_agent| -> Result<Shape> {
        Ok(Shape {
            label,
            interpreter: Interpreter::at(label, &path)?,
            version,
            executable,
            before_agent,
            refused_because: None,
        })
    };
    let mut shapes = Vec::new();

    let venv = workshop.venv("venv-symlinks", "3.10.13", false)?;
    let resolved = fs::canonicalize(&venv)?;
    shapes.push(shape("venv (symlinked python 3.10)", venv, "3.10.13", resolved, true)?);

    let copied = workshop.venv("venv-copies", "3.9.18", true)?;
    shapes.push(shape("venv --copies (python 3.9)", copied.clone(), "3.9.18", copied, false)?);

    let embedded = workshop.static_interpreter("static-3.12", "3.12.1", false)?;
    shapes.push(shape("static PIE 3.12 (libpython linked in)", embedded.clone(), "3.12.1", embedded, true)?);

    let bare = workshop.static_interpreter("static-3.8-stripped", "3.8.18", true)?;
    shapes.push(shape("static PIE 3.8 stripped to .dynsym", bare.clone(), "3.8.18", bare, false)?);

    let script = workshop.stripped_libpython("stripped-libpython-3.11", "3.11.7")?;
    let resolved = fs::canonicalize(pyenv_python("3.11.7"))?;
    shapes.push(shape("pyenv 3.11 with its libpython stripped to .dynsym", script, "3.11.7", resolved, true)?);

    let target = workshop.static_interpreter("static-3.13-stripped", "3.13.0", true)?;
    let target_root = target.parent().and_then(Path::parent).context("static interpreter root")?.to_owned();
    let view = workshop.path("namespace-view");
    let (script, inside) = workshop.namespaced("namespaced-3.13", &target_root, "3.13", &view)?;
    shapes.push(shape("stripped static 3.13 in its own mount namespace", script, "3.13.0", inside, false)?);

    let patched = workshop.static_interpreter("static-3.13-moved-field", "3.13.0", false)?;
    move_current_frame(&patched)?;
    let mut refused =
        shape("static 3.13 whose _Py_DebugOffsets moved a field", patched.clone(), "3.13.0", patched, true)?;
    refused.refused_because = Some("thread_state.current_frame is 80, the agent's table says 72");
    shapes.push(refused);
    Ok(shapes)
}

/// Rewrites `thread_state.current_frame` in the `_Py_DebugOffsets` of a 3.13.0 executable
/// from 72 to 80: the table is `_PyRuntime`'s static initialiser, found by its cookie and
/// version; the word follows 20 others.
fn move_current_frame(executable: &Path) -> Result<()> {
    let mut bytes = fs::read(executable)?;
    let mut start = b"xdebugpy".to_vec();
    start.extend_from_slice(&0x030d_00f0_u64.to_le_bytes());
    let found: Vec<usize> =
        bytes.windows(start.len()).enumerate().filter(|(_, w)| *w == start).map(|(at, _)| at).collect();
    let [table] = found.as_slice() else {
        bail!("{} holds {} _Py_DebugOffsets tables", executable.display(), found.len())
    };
    let at = table + 8 + 22 * 8;
    let word = u64::from_le_bytes(bytes[at..at + 8].try_into()?);
    anyhow::ensure!(word == 72, "thread_state.current_frame is {word} in {}, expected 72", executable.display());
    bytes[at..at + 8].copy_from_slice(&80u64.to_le_bytes());
    fs::write(executable, bytes)?;
    Ok(())
}

fn get(port: u16, path: &str) -> Result<()> {
    let response = HttpConnection::connect(port)?.send(&Request::get(path))?;
    anyhow::ensure!(response.status == 200, "GET {path} on port {port} answered {}", response.status);
    Ok(())
}

/// What is wrong with the spans of `GET path` served by `shape` as process `pid`.
fn check_request(spans: &[Span], shape: &Shape, pid: u32, path: &str, handler_file: &str) -> Vec<String> {
    let pid = i64::from(pid);
    let Some(server) = spans.iter().find(|s| {
        s.kind == "SERVER" && s.resource_int("process.pid") == Some(pid) && s.attr_str("url.path") == Some(path)
    }) else {
        return vec![format!("no SERVER span of process {pid} for GET {path}")];
    };
    let mut wrong = Vec::new();
    let resource = |key: &str| server.resource_attr(key).and_then(|v| v.as_str()).map(str::to_owned);
    if resource("process.runtime.version").as_deref() != Some(shape.version) {
        wrong.push(format!(
            "process.runtime.version {:?}, expected {:?}",
            resource("process.runtime.version"),
            shape.version
        ));
    }
    let executable = shape.executable.display().to_string();
    if resource("process.executable.path").as_deref() != Some(executable.as_str()) {
        wrong.push(format!(
            "process.executable.path {:?}, expected {executable:?}",
            resource("process.executable.path")
        ));
    }
    let children: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == "INTERNAL" && s.parent_span_id.as_deref() == Some(server.span_id.as_str()))
        .collect();
    if shape.refused_because.is_some() {
        if !children.is_empty() || server.attr("code.function.name").is_some() {
            wrong.push("the agent read the memory of a process whose layout it refused".to_owned());
        }
    } else {
        wrong.extend(function_span_issues(server, &children, handler_file));
    }
    wrong.into_iter().map(|issue| format!("GET {path}: {issue}\n  server span: {}", server.json)).collect()
}

/// What is wrong with the function spans under `server`: exactly one, of the selected
/// handler method, inside its server span.
fn function_span_issues(server: &Span, children: &[&Span], handler_file: &str) -> Vec<String> {
    let [call] = children else {
        return vec![format!(
            "{} function spans under the server span, expected one ({SELECTED_QUALNAME})",
            children.len()
        )];
    };
    let mut wrong = Vec::new();
    if call.name != SELECTED_QUALNAME
        || call.attr_str("code.function.name") != Some(SELECTED_QUALNAME)
        || call.attr_str("code.file.path") != Some(handler_file)
        || call.attr_str("function.module") != Some("__main__")
    {
        wrong.push(format!(
            "the function span should be {SELECTED_QUALNAME} of __main__ in {handler_file}:\n  {}",
            call.json
        ));
    }
    if call.start_time_unix_nano < server.start_time_unix_nano || call.end_time_unix_nano > server.end_time_unix_nano {
        wrong.push(format!("the function span is not inside its server span:\n  {}", call.json));
    }
    wrong
}

#[test]
fn every_interpreter_shape_is_recognised_and_traced() -> Result<()> {
    require_ebpf_host()?;
    let workshop = Workshop::new()?;
    let shapes = build_shapes(&workshop)?;
    let handler_file = fs::canonicalize(python_dir().join("keepalive_server.py"))?.display().to_string();
    let store = Store::new()?;
    let mut verdict = Verdict::new();

    let mut servers: Vec<Option<PythonServer>> = shapes.iter().map(|_| None).collect();
    for (index, shape) in shapes.iter().enumerate().filter(|(_, shape)| shape.before_agent) {
        servers[index] = verdict.step(
            &format!("starting {}", shape.label),
            PythonServer::start(&shape.interpreter, ServerProgram::KeepAlive),
        );
    }
    let mut agent = Agent::start_with_args(&store, &["--function", SELECTED])?;
    for (index, shape) in shapes.iter().enumerate().filter(|(_, shape)| !shape.before_agent) {
        servers[index] = verdict.step(
            &format!("starting {}", shape.label),
            PythonServer::start(&shape.interpreter, ServerProgram::KeepAlive),
        );
    }

    let mut sent = Vec::new();
    for (index, (shape, server)) in shapes.iter().zip(&servers).enumerate() {
        let Some(server) = server else { continue };
        let pid = server.pid();
        let Some(line) = verdict.step(&format!("the agent tracking {}", shape.label), agent.wait_tracking(pid)) else {
            continue;
        };
        if !has_field(&line, "version", shape.version) {
            verdict
                .problem(format!("{}: the agent reports another version than {}: {line}", shape.label, shape.version));
        }
        if let Some(reason) = shape.refused_because {
            let refused = agent.wait_refusing_stacks(pid);
            if let Some(line) = verdict.step(&format!("the agent refusing {}", shape.label), refused) {
                if !line.contains(reason) {
                    verdict.problem(format!("{}: refused, but not because {reason:?}: {line}", shape.label));
                }
            }
        } else if verdict
            .step(&format!("the agent tracing functions of {}", shape.label), agent.wait_tracing_functions(pid))
            .is_none()
        {
            continue;
        }
        for n in 0..REQUESTS_PER_SHAPE {
            let path = format!("/shape/{index}/{n}");
            if verdict.step(&format!("GET {path} on {}", shape.label), get(server.port(), &path)).is_some() {
                sent.push((index, pid, path));
            }
        }
    }

    let log = agent.log().clone();
    verdict.step("stopping the agent", agent.stop());
    if let Some(spans) = verdict.step("reading the store", store.spans()) {
        for (index, pid, path) in &sent {
            let shape = &shapes[*index];
            for issue in check_request(&spans, shape, *pid, path, &handler_file) {
                verdict.problem(format!("{} (pid {pid}): {issue}", shape.label));
            }
        }
    }
    let host_view = fs::read_dir(workshop.path("namespace-view"))?.count();
    if host_view != 0 {
        verdict.problem(format!(
            "the namespace's mounts leaked to the host: its view directory holds {host_view} entries"
        ));
    }
    verdict.finish(&log_context("agent", &log))
}
