//! The guests' initramfs: busybox, the agent, Debian's python3.11 and the matrix's scripts, with
//! every shared library they load, packed by cpio and gzip.
//!
//! The guest has no disk: the initramfs is its root file system, and its `/init`
//! (`guest/init.sh`) runs the checks and powers off. What goes in, at the paths the host has:
//! - `/bin/busybox` (Debian's busybox-static) and a link per applet (`busybox --list-full`):
//!   the shell, mount, ip, wget, poweroff;
//! - the agent, as `/usr/local/bin/scouter-agent`;
//! - `/usr/bin/python3.11` and its standard library (`/usr/lib/python3.11`), without the parts
//!   nothing here imports ([`STDLIB_LEFT_OUT`]: tests, IDLE, tkinter, the static libpython of
//!   `config-*`, byte code, site packages);
//! - the libraries `ldd` lists for the agent, the interpreter and each extension module of
//!   `lib-dynload`, and the dynamic loader, copied (links followed) to the same paths;
//! - `/matrix/` (`matrix.sh`, `smoke_check.py`, `variants`: see [`super::write_matrix_files`]).
//!
//! It is staged in `<tools>/kernels/initramfs/root` and rebuilt on every run (a few seconds),
//! since the agent changes between runs. cpio writes the entries with root as their owner.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::cmd;

/// Where the guest finds the agent (guest/init.sh passes it to matrix.sh).
const GUEST_AGENT: &str = "usr/local/bin/scouter-agent";
const PYTHON: &str = "/usr/bin/python3.11";
const STDLIB: &str = "/usr/lib/python3.11";
const BUSYBOX: &str = "/bin/busybox";
const INIT: &str = include_str!("guest/init.sh");
/// Directories of the standard library that are left out wherever they are.
const STDLIB_LEFT_OUT: &[&str] = &[
    "__pycache__",
    "test",
    "tests",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "pydoc_data",
    "site-packages",
    "dist-packages",
    "config-3.11-x86_64-linux-gnu",
];

/// Builds `<dir>/initramfs.cpio.gz` around `agent`; `ready_secs` is how long the guest's agent
/// may take to get ready.
pub fn build(dir: &Path, agent: &Path, ready_secs: u64) -> Result<PathBuf> {
    let root = dir.join("root");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("cannot remove {}", root.display()))?;
    }
    for sub in ["proc", "sys", "dev", "tmp", "root", "etc", "matrix"] {
        create_dir(&root.join(sub))?;
    }
    install_busybox(&root)?;
    write(&root.join("init"), &INIT.replace("@READY_SECS@", &ready_secs.to_string()), 0o755)?;
    super::write_matrix_files(&root.join("matrix"))?;
    write(&root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n", 0o644)?;
    write(&root.join("etc/group"), "root:x:0:\n", 0o644)?;
    copy_file(agent, &root.join(GUEST_AGENT))?;
    copy_file(Path::new(PYTHON), &in_root(&root, Path::new(PYTHON)))?;
    copy_tree(Path::new(STDLIB), &in_root(&root, Path::new(STDLIB)))?;

    let mut programs = vec![agent.to_path_buf(), PathBuf::from(PYTHON)];
    programs.extend(extension_modules(&Path::new(STDLIB).join("lib-dynload"))?);
    for library in libraries(&programs)? {
        copy_file(&library, &in_root(&root, &library))?;
    }
    archive(&root, &dir.join("initramfs.cpio"))
}

/// `/a/b` under `root`.
fn in_root(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn install_busybox(root: &Path) -> Result<()> {
    if !Path::new(BUSYBOX).is_file() {
        bail!("{BUSYBOX} is missing: install Debian's busybox-static (`cargo xtask setup` does)");
    }
    copy_file(Path::new(BUSYBOX), &in_root(root, Path::new(BUSYBOX)))?;
    let applets = cmd::output(Command::new(BUSYBOX).arg("--list-full"))?;
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty()) {
        let link = root.join(applet);
        if link.symlink_metadata().is_ok() {
            continue;
        }
        create_dir(link.parent().context("an applet path has no parent")?)?;
        std::os::unix::fs::symlink(BUSYBOX, &link).with_context(|| format!("cannot create {}", link.display()))?;
    }
    Ok(())
}

/// The `.so` files of a `lib-dynload` directory.
fn extension_modules(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut modules = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry.with_context(|| format!("cannot list {}", dir.display()))?.path();
        if path.extension().is_some_and(|e| e == "so") {
            modules.push(path);
        }
    }
    Ok(modules)
}

/// Every library (and the dynamic loader) that `ldd` lists for `programs`.
fn libraries(programs: &[PathBuf]) -> Result<BTreeSet<PathBuf>> {
    let mut libraries = BTreeSet::new();
    for program in programs {
        let listing = cmd::output(Command::new("ldd").arg(program))?;
        let found = ldd_paths(&listing).with_context(|| format!("ldd {}", program.display()))?;
        libraries.extend(found);
    }
    Ok(libraries)
}

/// The paths in `ldd` output: `name => /path (0x...)` and `/path (0x...)` (the loader); the
/// vDSO and "statically linked" have none. A library `ldd` cannot find is an error.
fn ldd_paths(listing: &str) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for line in listing.lines().map(str::trim) {
        let target = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    bail!("{} not found", name.trim());
                }
                target
            }
            None => line,
        };
        if let Some(path) = target.split_whitespace().next().filter(|p| p.starts_with('/')) {
            paths.push(PathBuf::from(path));
        }
    }
    Ok(paths)
}

/// Copies the tree at `from` to `to`, links followed, [`STDLIB_LEFT_OUT`] left out (and links
/// that lead nowhere: nothing could use them).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    create_dir(to)?;
    for entry in fs::read_dir(from).with_context(|| format!("cannot list {}", from.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", from.display()))?;
        let name = entry.file_name();
        let source = entry.path();
        let Ok(metadata) = fs::metadata(&source) else { continue };
        if metadata.is_dir() {
            if !STDLIB_LEFT_OUT.iter().any(|left_out| name == *left_out) {
                copy_tree(&source, &to.join(&name))?;
            }
        } else if metadata.is_file() {
            copy_file(&source, &to.join(&name))?;
        }
    }
    Ok(())
}

/// Copies a file's contents and permissions (a link's target's), creating directories.
fn copy_file(from: &Path, to: &Path) -> Result<()> {
    create_dir(to.parent().context("a destination has no parent")?)?;
    fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<()> {
    fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the permissions of {}", path.display()))
}

fn create_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

/// `cpio` (newc, entries owned by root) of everything under `root` into `cpio`, then gzip;
/// returns the `.gz`.
fn archive(root: &Path, cpio: &Path) -> Result<PathBuf> {
    let mut entries = Vec::new();
    list(root, Path::new(""), &mut entries)?;
    // Parents before children, as the kernel unpacks in order.
    entries.sort();
    let mut names = Vec::new();
    for entry in &entries {
        names.extend_from_slice(entry.as_os_str().as_encoded_bytes());
        names.push(0);
    }
    let mut pack = Command::new("cpio");
    pack.current_dir(root)
        .args(["--create", "--format=newc", "--null", "--owner=0:0", "--quiet"])
        .arg("--file")
        .arg(cpio);
    cmd::run_with_input(&mut pack, &names)?;
    cmd::run(Command::new("gzip").args(["-1", "--force", "--no-name"]).arg(cpio))?;
    let gz = cpio.with_extension("cpio.gz");
    let size = fs::metadata(&gz).with_context(|| format!("gzip left no {}", gz.display()))?.len();
    println!("initramfs: {} ({} entries, {:.1} MiB)", gz.display(), entries.len(), size as f64 / (1 << 20) as f64);
    Ok(gz)
}

/// Every path under `dir` (whose path relative to the root is `relative`), relative.
fn list(dir: &Path, relative: &Path, entries: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let path = relative.join(entry.file_name());
        let kind = entry.file_type().with_context(|| format!("cannot stat {}", entry.path().display()))?;
        entries.push(path.clone());
        if kind.is_dir() {
            list(&entry.path(), &path, entries)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_library_paths_from_ldd() {
        let listing = "\
\tlinux-vdso.so.1 (0x00007ffd5f1e4000)
\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f8ad7550000)
\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f8ad7470000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f8ad7583000)
";
        let paths = ldd_paths(listing).unwrap();
        assert_eq!(
            paths,
            ["/lib/x86_64-linux-gnu/libgcc_s.so.1", "/lib/x86_64-linux-gnu/libm.so.6", "/lib64/ld-linux-x86-64.so.2"]
                .map(PathBuf::from)
        );
        assert!(ldd_paths("\tstatically linked\n").unwrap().is_empty());
        let missing = ldd_paths("\tlibssl.so.3 => not found\n").unwrap_err();
        assert_eq!(missing.to_string(), "libssl.so.3 not found");
    }

    #[test]
    fn the_init_script_gets_its_timeout() {
        assert!(INIT.contains("READY_SECS=@READY_SECS@"));
        assert!(INIT.contains("sh /matrix/matrix.sh"));
        assert!(INIT.contains(GUEST_AGENT));
    }
}
