//! Where a Python process's libssl lives, so `SSL_read`/`SSL_write` can be probed for HTTPS.
//!
//! CPython's `_ssl` extension links the system's OpenSSL (`libssl.so.3` on Debian 12, for pyenv
//! builds and Debian's own python3.11 alike). The extension is loaded by `import ssl`, usually
//! after the agent inspected the process, so the library is looked for two ways, both kept:
//! - in the process's memory maps: a mapped `libssl.so*` is the copy the loader actually chose
//!   (also when another extension, a database driver say, brought it in);
//! - on disk: the `_ssl` extension beside the standard library (found like `_asyncio`, see
//!   [`super::asyncio`]), and the libssl its `DT_NEEDED` names, resolved the way the dynamic
//!   loader would (`DT_RUNPATH`/`DT_RPATH` with `$ORIGIN`, `/etc/ld.so.conf`, the default
//!   directories), inside the process's root. Uprobes attach to the file, so a process that
//!   imports ssl later fires them as soon as it maps the library.
//!
//! A build that links OpenSSL into `_ssl` itself (python-build-standalone) has no libssl to
//! find: the extension is then the candidate, and probing it fails cleanly (and is reported) if
//! it does not export the functions.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::asyncio::{extension_in, lib_dynload_dirs};
use super::interpreter::elf_dynamic_strings;
use super::procfs::{in_process_root, mapped_files};
use super::PythonProcess;

/// How deep `include` directives of ld.so.conf are followed.
const MAX_INCLUDE_DEPTH: u32 = 4;

/// The ELF files holding libssl's functions for `process`, as paths the agent can open
/// (through /proc/PID/root), without duplicates. Empty when none is found.
pub fn libraries_of(process: &PythonProcess) -> Vec<PathBuf> {
    let pid = process.pid;
    let mut found: Vec<PathBuf> = mapped_files(pid)
        .unwrap_or_default()
        .into_iter()
        .filter(|path| is_libssl(path))
        .map(|path| in_process_root(pid, &path))
        .collect();
    let root = in_process_root(pid, Path::new("/"));
    if let Some(library) = ssl_extension(process).and_then(|extension| linked_libssl(&root, &extension)) {
        found.push(library);
    }
    let mut unique = Vec::new();
    for path in found {
        if !unique.contains(&path) {
            unique.push(path);
        }
    }
    unique
}

/// The `_ssl` extension of the process's interpreter, as the process sees its path.
fn ssl_extension(process: &PythonProcess) -> Option<PathBuf> {
    let minor = process.version.minor;
    lib_dynload_dirs(&process.interpreter_binary, minor).into_iter().find_map(|dir| {
        let found = extension_in(&in_process_root(process.pid, &dir), "_ssl", minor)?;
        Some(dir.join(found.file_name()?))
    })
}

/// Whether a file name is a libssl (`libssl.so`, `libssl.so.3`, `libssl.so.1.1`).
fn is_libssl(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|name| name.starts_with("libssl.so"))
}

/// The libssl `extension` links, resolved under `root` (the process's root as the agent opens
/// it); the extension itself when it links none (OpenSSL built in).
fn linked_libssl(root: &Path, extension: &Path) -> Option<PathBuf> {
    let linkage = cached_linkage(&under(root, extension))?;
    let Some(soname) = linkage.needed.iter().find(|name| is_libssl(Path::new(name))) else {
        return Some(under(root, extension));
    };
    resolve(root, extension.parent()?, &linkage.runpaths, soname)
}

/// Where the loader finds `soname` for an ELF in directory `origin` with `runpaths`.
fn resolve(root: &Path, origin: &Path, runpaths: &[String], soname: &str) -> Option<PathBuf> {
    search_dirs(root, origin, runpaths).into_iter().map(|dir| under(root, &dir.join(soname))).find(|p| p.is_file())
}

/// What the dynamic loader needs from an ELF: the libraries it names and where to look first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Linkage {
    needed: Vec<String>,
    /// `DT_RUNPATH` then `DT_RPATH` entries, unexpanded.
    runpaths: Vec<String>,
}

/// [`Linkage`] of the ELF at `path`, cached by file identity: every process of an interpreter
/// has the same `_ssl`.
fn cached_linkage(path: &Path) -> Option<Linkage> {
    /// (device, inode, modification time).
    type FileIdentity = (u64, u64, i64);
    static CACHE: Mutex<Option<HashMap<FileIdentity, Linkage>>> = Mutex::new(None);
    let meta = fs::metadata(path).ok()?;
    let key = (meta.dev(), meta.ino(), meta.mtime());
    if let Some(linkage) = CACHE.lock().ok().and_then(|c| c.as_ref()?.get(&key).cloned()) {
        return Some(linkage);
    }
    let bytes = fs::read(path).ok()?;
    let object::File::Elf64(elf) = object::File::parse(&*bytes).ok()? else { return None };
    let mut linkage = Linkage { needed: elf_dynamic_strings(&elf, object::elf::DT_NEEDED), runpaths: Vec::new() };
    for tag in [object::elf::DT_RUNPATH, object::elf::DT_RPATH] {
        for entry in elf_dynamic_strings(&elf, tag) {
            linkage.runpaths.extend(entry.split(':').filter(|d| !d.is_empty()).map(str::to_owned));
        }
    }
    if let Ok(mut cache) = CACHE.lock() {
        cache.get_or_insert_with(HashMap::new).insert(key, linkage.clone());
    }
    Some(linkage)
}

/// The directories the loader searches, in order, as the process sees them: the ELF's run
/// paths (`$ORIGIN` is the directory of the ELF, `origin`), then those of `ld.so.conf` read
/// under `root` (the process's root as the agent opens it), then the defaults.
fn search_dirs(root: &Path, origin: &Path, runpaths: &[String]) -> Vec<PathBuf> {
    let origin = origin.to_string_lossy();
    let mut dirs: Vec<PathBuf> = runpaths
        .iter()
        .map(|dir| PathBuf::from(dir.replace("${ORIGIN}", &origin).replace("$ORIGIN", &origin)))
        .collect();
    dirs.extend(ld_so_conf(root, Path::new("/etc/ld.so.conf"), 0));
    let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
    for dir in [format!("/lib/{triplet}"), format!("/usr/lib/{triplet}")] {
        dirs.push(PathBuf::from(dir));
    }
    dirs.extend(["/lib64", "/usr/lib64", "/lib", "/usr/lib"].map(PathBuf::from));
    let mut unique = Vec::new();
    for dir in dirs {
        if !unique.contains(&dir) {
            unique.push(dir);
        }
    }
    unique
}

/// The directories an `ld.so.conf` lists, following its `include` lines (globs in the file
/// name only, as distributions write them).
fn ld_so_conf(root: &Path, file: &Path, depth: u32) -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string(under(root, file)) else { return Vec::new() };
    let mut dirs = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() || line.starts_with("hwcap ") {
            continue;
        }
        if let Some(pattern) = line.strip_prefix("include").filter(|rest| rest.starts_with([' ', '\t'])) {
            if depth >= MAX_INCLUDE_DEPTH {
                continue;
            }
            for pattern in pattern.split_whitespace() {
                let pattern = file.parent().unwrap_or(Path::new("/")).join(pattern);
                for included in glob_files(root, &pattern) {
                    dirs.extend(ld_so_conf(root, &included, depth + 1));
                }
            }
            continue;
        }
        dirs.extend(line.split([':', ',', ' ', '\t']).filter(|d| d.starts_with('/')).map(PathBuf::from));
    }
    dirs
}

/// Files matching `pattern` (a `*` in the last component at most), sorted like glob(3) does.
fn glob_files(root: &Path, pattern: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (pattern.parent(), pattern.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let Some((prefix, suffix)) = name.split_once('*') else { return vec![pattern.to_path_buf()] };
    let Ok(entries) = fs::read_dir(under(root, dir)) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|file| file.len() >= prefix.len() + suffix.len() && file.starts_with(prefix) && file.ends_with(suffix))
        .map(|file| dir.join(file))
        .collect();
    files.sort();
    files
}

/// `path` (absolute, as the process sees it) under `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_libssl_names() {
        assert!(is_libssl(Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3")));
        assert!(is_libssl(Path::new("libssl.so.1.1")));
        assert!(!is_libssl(Path::new("/usr/lib/x86_64-linux-gnu/libssl3.so")), "NSS, not OpenSSL");
        assert!(!is_libssl(Path::new("/usr/lib/libcrypto.so.3")));
    }

    #[test]
    fn follows_ld_so_conf_includes_under_the_process_root() {
        let root = tempfile::tempdir().unwrap();
        let etc = root.path().join("etc");
        fs::create_dir_all(etc.join("ld.so.conf.d")).unwrap();
        fs::write(etc.join("ld.so.conf"), "# comment\ninclude /etc/ld.so.conf.d/*.conf\n/opt/extra/lib\n").unwrap();
        fs::write(etc.join("ld.so.conf.d/b-arch.conf"), "/usr/local/lib/x86_64-linux-gnu\n").unwrap();
        fs::write(etc.join("ld.so.conf.d/a-libc.conf"), "# libc\n/usr/local/lib\n").unwrap();
        fs::write(etc.join("ld.so.conf.d/ignored.txt"), "/nope\n").unwrap();
        let dirs = ld_so_conf(root.path(), Path::new("/etc/ld.so.conf"), 0);
        assert_eq!(
            dirs,
            ["/usr/local/lib", "/usr/local/lib/x86_64-linux-gnu", "/opt/extra/lib"].map(PathBuf::from).to_vec()
        );
    }

    #[test]
    fn run_paths_come_first_with_origin_expanded() {
        let root = tempfile::tempdir().unwrap();
        let runpaths = vec!["$ORIGIN/../..".to_owned(), "/opt/py/lib".to_owned()];
        let dirs = search_dirs(root.path(), Path::new("/opt/py/lib/python3.12/lib-dynload"), &runpaths);
        assert_eq!(dirs[0], PathBuf::from("/opt/py/lib/python3.12/lib-dynload/../.."));
        assert_eq!(dirs[1], PathBuf::from("/opt/py/lib"));
        assert!(dirs.contains(&PathBuf::from(format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH))));
    }

    #[test]
    fn resolves_inside_the_root_not_on_the_host() {
        let root = tempfile::tempdir().unwrap();
        let lib = root.path().join("opt/py/lib");
        fs::create_dir_all(lib.join("python3.12/lib-dynload")).unwrap();
        fs::write(lib.join("libssl.so.3"), b"").unwrap();
        let origin = Path::new("/opt/py/lib/python3.12/lib-dynload");
        let found = resolve(root.path(), origin, &["$ORIGIN/../..".into()], "libssl.so.3").unwrap();
        assert_eq!(found.canonicalize().unwrap(), lib.join("libssl.so.3").canonicalize().unwrap());
        assert_eq!(resolve(root.path(), origin, &[], "libssl.so.3"), None, "the host's own libssl is not looked at");
    }

    #[test]
    fn finds_the_libssl_of_this_hosts_pythons() {
        let host = Path::new("/");
        let extensions = ["/usr/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so".to_owned()]
            .into_iter()
            .chain(fs::read_dir("/root/.pyenv/versions").into_iter().flatten().filter_map(|v| {
                let version = v.ok()?.path();
                let minor = version.file_name()?.to_str()?.split('.').nth(1)?.parse::<u8>().ok()?;
                let dir = version.join(format!("lib/python3.{minor}/lib-dynload"));
                Some(extension_in(&dir, "_ssl", minor)?.to_string_lossy().into_owned())
            }));
        for extension in extensions.filter(|e| Path::new(e).is_file()) {
            let found = linked_libssl(host, Path::new(&extension)).expect("libssl resolved");
            assert!(is_libssl(&found) && found.is_file(), "{extension} -> {}", found.display());
        }
    }
}
