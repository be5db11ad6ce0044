//! The /proc reads discovery needs. Every function tolerates the process vanishing midway.

use std::fs;
use std::path::{Path, PathBuf};

pub fn all_pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

/// The executable's path as the process sees it (in its own mount namespace).
pub fn executable(pid: u32) -> Option<PathBuf> {
    let link = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    // A replaced binary reads back as "/path (deleted)"; the mapped file is still usable.
    let text = link.to_string_lossy();
    Some(PathBuf::from(text.strip_suffix(" (deleted)").unwrap_or(&text)))
}

/// Paths of the files mapped into the process, without duplicates.
pub fn mapped_files(pid: u32) -> Option<Vec<PathBuf>> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let mut files: Vec<PathBuf> = maps.lines().filter_map(mapped_path).map(PathBuf::from).collect();
    files.dedup();
    Some(files)
}

/// Files mapped into the process from their start (file offset 0), with the address they start
/// at: where a shared object was loaded.
pub fn mapped_file_starts(pid: u32) -> Option<Vec<(PathBuf, u64)>> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    Some(maps.lines().filter_map(file_start).collect())
}

/// (path, start address) of a maps line that maps a file from offset 0.
fn file_start(line: &str) -> Option<(PathBuf, u64)> {
    let mut fields = line.split_ascii_whitespace();
    let start = fields.next()?.split('-').next()?;
    let offset = fields.nth(1)?;
    if u64::from_str_radix(offset, 16).ok()? != 0 {
        return None;
    }
    let path = mapped_path(line)?;
    Some((PathBuf::from(path), u64::from_str_radix(start, 16).ok()?))
}

/// The path column of a /proc/PID/maps line, when it names a file.
fn mapped_path(line: &str) -> Option<&str> {
    let path = line.splitn(6, ' ').nth(5)?.trim_start();
    path.starts_with('/').then_some(path)
}

/// `/proc/<pid>/cgroup`: the cgroups the process belongs to, as the agent's cgroup namespace
/// sees them (the host's, for an agent with `hostPID` and no cgroup namespace of its own).
pub fn cgroup(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()
}

/// Opens a path of the process's mount namespace from ours.
pub fn in_process_root(pid: u32, path: &Path) -> PathBuf {
    let relative = path.strip_prefix("/").unwrap_or(path);
    Path::new("/proc").join(pid.to_string()).join("root").join(relative)
}

/// The process (thread group) a task belongs to; `None` once it has exited. /proc/<tid>
/// resolves for threads too, though it is not listed.
pub fn thread_group(tid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status.lines().find_map(|line| line.strip_prefix("Tgid:")?.trim().parse().ok())
}

/// The process's own `OTEL_SERVICE_NAME`, which every other way of naming it yields to.
pub fn own_service_name(pid: u32) -> Option<String> {
    environ_var(pid, "OTEL_SERVICE_NAME").filter(|n| !n.is_empty())
}

/// What the process runs (`-m module` or the script's name), else the executable's name.
pub fn program_name(pid: u32, executable: &Path) -> String {
    let args = cmdline(pid);
    main_program(&args)
        .or_else(|| executable.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "python".to_owned())
}

fn cmdline(pid: u32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
        })
        .unwrap_or_default()
}

/// The module or script a Python command line runs.
fn main_program(args: &[String]) -> Option<String> {
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "-m" => return rest.next().cloned(),
            "-c" => return None,
            // Options that take a value.
            "-W" | "-X" | "--check-hash-based-pycs" => {
                rest.next();
            }
            _ if arg.starts_with("-m") && arg.len() > 2 => return Some(arg[2..].to_owned()),
            _ if arg.starts_with('-') => {}
            script => {
                let name = Path::new(script).file_name()?.to_string_lossy();
                return Some(name.strip_suffix(".py").unwrap_or(&name).to_owned());
            }
        }
    }
    None
}

fn environ_var(pid: u32, name: &str) -> Option<String> {
    let raw = fs::read(format!("/proc/{pid}/environ")).ok()?;
    raw.split(|&b| b == 0).find_map(|entry| {
        let entry = String::from_utf8_lossy(entry);
        let value = entry.strip_prefix(name)?.strip_prefix('=')?;
        Some(value.to_owned())
    })
}

pub fn hostname() -> Option<String> {
    let name = fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn main_program_from_command_lines() {
        assert_eq!(main_program(&args(&["python3", "-m", "http.server", "8000"])).as_deref(), Some("http.server"));
        assert_eq!(main_program(&args(&["python3", "-u", "/srv/app/server.py"])).as_deref(), Some("server"));
        assert_eq!(main_program(&args(&["python3", "-X", "dev", "-mflask", "run"])).as_deref(), Some("flask"));
        assert_eq!(
            main_program(&args(&["/venv/bin/python3", "/venv/bin/gunicorn", "app:wsgi"])).as_deref(),
            Some("gunicorn")
        );
        assert_eq!(main_program(&args(&["python3", "-c", "print(1)"])), None);
        assert_eq!(main_program(&args(&["python3"])), None);
    }

    #[test]
    fn maps_lines() {
        let line = "7f1c2a000000-7f1c2a100000 r-xp 00000000 fd:01 1234    /usr/lib/libpython3.11.so.1.0";
        assert_eq!(mapped_path(line), Some("/usr/lib/libpython3.11.so.1.0"));
        assert_eq!(mapped_path("7ffd-7ffe rw-p 00000000 00:00 0                          [stack]"), None);
        assert_eq!(mapped_path("7ffd-7ffe rw-p 00000000 00:00 0"), None);
        assert_eq!(file_start(line), Some((PathBuf::from("/usr/lib/libpython3.11.so.1.0"), 0x7f1c2a000000)));
        let later = "7f1c2a100000-7f1c2a200000 r-xp 00100000 fd:01 1234    /usr/lib/libpython3.11.so.1.0";
        assert_eq!(file_start(later), None, "not the file's start");
        assert_eq!(file_start("7ffd-7ffe rw-p 00000000 00:00 0                          [stack]"), None);
    }

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id();
        assert!(executable(me).is_some());
        assert!(mapped_files(me).unwrap().iter().any(|p| p.to_string_lossy().contains("libc")));
        assert!(all_pids().contains(&me));
        assert_eq!(thread_group(me), Some(me));
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() } as u32).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(200));
        });
        let tid = rx.recv().unwrap();
        assert_eq!(thread_group(tid), Some(me));
        worker.join().unwrap();
    }
}
