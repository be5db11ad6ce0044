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

use std::fs;
use std::path::{Path, PathBuf};

use super::asyncio::{extension_in, lib_dynload_dirs};
use super::file_cache::{self, FileCache};
use super::loader::{self, under, Linkage};
use super::procfs::{in_process_root, mapped_files};
use super::PythonProcess;

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
    let found = loader::find(root, extension.parent()?, &linkage.runpaths, soname)?;
    Some(under(root, &found))
}

/// [`Linkage`] of the ELF at `path`, cached by file identity: every process of an interpreter
/// has the same `_ssl`.
fn cached_linkage(path: &Path) -> Option<Linkage> {
    static CACHE: FileCache<Linkage> = FileCache::new();
    let file = file_cache::identity(path).ok()?;
    if let Some(linkage) = CACHE.get(file) {
        return Some(linkage);
    }
    let bytes = fs::read(path).ok()?;
    let object::File::Elf64(elf) = object::File::parse(&*bytes).ok()? else { return None };
    let linkage = Linkage::of(&elf);
    CACHE.insert(file, linkage.clone());
    Some(linkage)
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
