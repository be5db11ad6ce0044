//! Where a Python process's `_asyncio` C module lives, so its task functions can be probed.
//!
//! A process is inspected when it starts, long before it imports asyncio, so the module is
//! found on disk next to the interpreter's standard library rather than in the process's
//! memory maps: uprobes attach to the file and fire once the process maps it. Builds that
//! compile `_asyncio` into the interpreter have its functions in the interpreter binary.

use std::fs;
use std::path::{Path, PathBuf};

use super::procfs::in_process_root;
use super::PythonProcess;

/// The ELF holding `_asyncio`'s functions for a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AsyncioModule {
    /// Path to open from the agent (through /proc/PID/root).
    pub host_path: PathBuf,
    /// Whether the functions take the module state first (3.12+), moving the task to the
    /// second argument of `task_step`.
    pub state_argument: bool,
    /// `task_wakeup` is a function of its own from 3.10 on.
    pub has_task_wakeup: bool,
}

/// The `_asyncio` extension of `process`'s interpreter, else its interpreter binary (static
/// builds with the module built in; probing fails cleanly if it is not there either).
pub fn module_of(process: &PythonProcess) -> AsyncioModule {
    let minor = process.version.minor;
    let host_path = lib_dynload_dirs(&process.interpreter_binary, minor)
        .into_iter()
        .find_map(|dir| extension_in(&in_process_root(process.pid, &dir), "_asyncio", minor))
        .unwrap_or_else(|| process.interpreter_file());
    AsyncioModule { host_path, state_argument: minor >= 12, has_task_wakeup: minor >= 10 }
}

/// `lib/python3.X/lib-dynload` beside a libpython (`<prefix>/lib/libpython3.X.so`) or below
/// an executable's prefix (`<prefix>/bin/python3.X`), as the process sees them.
pub(super) fn lib_dynload_dirs(interpreter: &Path, minor: u8) -> Vec<PathBuf> {
    let stdlib = format!("python3.{minor}/lib-dynload");
    let Some(dir) = interpreter.parent() else { return Vec::new() };
    let mut dirs = vec![dir.join(&stdlib)];
    if let Some(prefix) = dir.parent() {
        dirs.push(prefix.join("lib").join(&stdlib));
    }
    dirs
}

/// The C extension `module`: `<module>.cpython-3X-<platform>.so` (or the plain `<module>.so`
/// some builds use) in `dir`.
pub(super) fn extension_in(dir: &Path, module: &str, minor: u8) -> Option<PathBuf> {
    let tagged = format!("{module}.cpython-3{minor}");
    let plain = format!("{module}.so");
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            (name.starts_with(&tagged) || name == plain) && name.ends_with(".so")
        })
        .collect();
    found.sort();
    found.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lib_dynload_beside_libpython_and_below_an_executable_prefix() {
        assert_eq!(
            lib_dynload_dirs(Path::new("/opt/py/lib/libpython3.12.so.1.0"), 12)[0],
            PathBuf::from("/opt/py/lib/python3.12/lib-dynload")
        );
        assert_eq!(
            lib_dynload_dirs(Path::new("/usr/bin/python3.11"), 11)[1],
            PathBuf::from("/usr/lib/python3.11/lib-dynload")
        );
    }

    #[test]
    fn finds_the_tagged_extension() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["_asyncio.cpython-312-x86_64-linux-gnu.so", "_bisect.cpython-312-x86_64-linux-gnu.so"] {
            fs::write(dir.path().join(name), b"").unwrap();
        }
        assert_eq!(
            extension_in(dir.path(), "_asyncio", 12).unwrap().file_name().unwrap(),
            "_asyncio.cpython-312-x86_64-linux-gnu.so"
        );
        assert_eq!(extension_in(dir.path(), "_asyncio", 11), None);
    }
}
