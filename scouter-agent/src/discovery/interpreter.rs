//! Which ELF holds a process's interpreter, and which CPython version it is.
//!
//! The version comes from the binary, never from the process's memory: `Py_Version` (exported
//! since 3.11) when present, else the `PY_VERSION` string in `.rodata`, located with the
//! major.minor that the library or executable name carries.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection, ObjectSymbol};

use super::file_cache::{self, FileCache};
use super::loader::{self, under, Linkage};
use super::procfs::in_process_root;

/// The CPython versions whose layouts the agent knows.
const SUPPORTED_MINORS: std::ops::RangeInclusive<u8> = 8..=13;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PythonVersion {
    pub major: u8,
    pub minor: u8,
    pub micro: u8,
}

impl PythonVersion {
    pub fn is_supported(&self) -> bool {
        self.major == 3 && SUPPORTED_MINORS.contains(&self.minor)
    }

    /// Decodes `PY_VERSION_HEX` (`0xMMmmuuLS`).
    pub fn from_hex(hex: u32) -> Self {
        Self { major: (hex >> 24) as u8, minor: (hex >> 16) as u8, micro: (hex >> 8) as u8 }
    }
}

impl fmt::Display for PythonVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InterpreterError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a readable ELF file: {source}")]
    Elf { path: PathBuf, source: object::Error },
    #[error("{path} links {soname}, which is not mapped yet and could not be found")]
    LibraryNotFound { path: PathBuf, soname: String },
    #[error("no Py_Version symbol and no version string in {0}")]
    NoVersion(PathBuf),
}

/// Where a process's interpreter lives.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The path to open from the agent (through /proc/PID/root).
    pub host_path: PathBuf,
    /// The path as the process sees it.
    pub path: PathBuf,
    /// (major, minor) from a file name like `libpython3.11.so.1.0` or `python3.11`.
    pub name_hint: Option<(u8, u8)>,
}

/// Finds the interpreter binary of a process: a mapped libpython, else a Python executable.
pub fn locate(pid: u32, executable: &Path, maps: &[PathBuf]) -> Option<Candidate> {
    if let Some(library) = maps.iter().find(|p| libpython_hint(p).is_some()) {
        return Some(candidate(pid, library, libpython_hint(library)));
    }
    let exe_hint = python_executable_hint(executable)?;
    Some(candidate(pid, executable, exe_hint))
}

fn candidate(pid: u32, path: &Path, hint: Option<(u8, u8)>) -> Candidate {
    Candidate { host_path: in_process_root(pid, path), path: path.to_path_buf(), name_hint: hint }
}

/// The version of the interpreter in `candidate` and the ELF that holds it (as the process
/// sees the path), following a not-yet-mapped libpython that a freshly exec'd executable links.
pub fn version_of(candidate: &Candidate) -> Result<(PythonVersion, PathBuf), InterpreterError> {
    if let Some(version) = cached_file_version(&candidate.host_path, candidate.name_hint)? {
        return Ok((version, candidate.path.clone()));
    }
    // No version in this file: an executable linking libpython. Only small executables get here.
    let bytes = read(&candidate.host_path)?;
    let elf = parse(&candidate.host_path, &bytes)?;
    let soname = linked_libpython(&elf).ok_or_else(|| InterpreterError::NoVersion(candidate.path.clone()))?;
    let (host_path, path) = resolve_library(candidate, &elf, &soname)
        .ok_or_else(|| InterpreterError::LibraryNotFound { path: candidate.path.clone(), soname: soname.clone() })?;
    let version = cached_file_version(&host_path, libpython_hint(Path::new(&soname)))?
        .ok_or_else(|| InterpreterError::NoVersion(path.clone()))?;
    Ok((version, path))
}

/// The version recorded in the ELF at `path`, if any; versions found are cached per file.
fn cached_file_version(path: &Path, hint: Option<(u8, u8)>) -> Result<Option<PythonVersion>, InterpreterError> {
    static CACHE: FileCache<PythonVersion> = FileCache::new();
    let file = file_cache::identity(path).map_err(|source| InterpreterError::Read { path: path.to_owned(), source })?;
    if let Some(version) = CACHE.get(file) {
        return Ok(Some(version));
    }
    let bytes = read(path)?;
    let elf = parse(path, &bytes)?;
    let version = version_in(&elf, &bytes, hint);
    if let Some(version) = version {
        CACHE.insert(file, version);
    }
    Ok(version)
}

fn read(path: &Path) -> Result<Vec<u8>, InterpreterError> {
    fs::read(path).map_err(|source| InterpreterError::Read { path: path.to_owned(), source })
}

fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<object::File<'a>, InterpreterError> {
    object::File::parse(bytes).map_err(|source| InterpreterError::Elf { path: path.to_owned(), source })
}

fn version_in(elf: &object::File<'_>, bytes: &[u8], hint: Option<(u8, u8)>) -> Option<PythonVersion> {
    py_version_symbol(elf, bytes).or_else(|| version_string(elf, hint?))
}

/// `const unsigned long Py_Version` (3.11+), read from the file at the symbol's address.
fn py_version_symbol(elf: &object::File<'_>, bytes: &[u8]) -> Option<PythonVersion> {
    let symbol = elf.dynamic_symbols().chain(elf.symbols()).find(|s| s.name() == Ok("Py_Version"))?;
    let offset = file_offset(elf, symbol.address())?;
    let raw = bytes.get(offset..offset + 4)?;
    let version = PythonVersion::from_hex(u32::from_le_bytes(raw.try_into().ok()?));
    (version.major == 3).then_some(version)
}

fn file_offset(elf: &object::File<'_>, address: u64) -> Option<usize> {
    elf.sections().find_map(|section| {
        let start = section.address();
        let (file_start, file_size) = section.file_range()?;
        (address >= start && address < start + file_size).then(|| (file_start + (address - start)) as usize)
    })
}

/// The `PY_VERSION` literal ("3.9.18") in `.rodata`. Linkers merge string tails, so the literal
/// may end a longer string (e.g. an install prefix ".../versions/3.9.18"): it is found as the
/// NUL-terminated tail of any string, after a byte that cannot continue a version number.
fn version_string(elf: &object::File<'_>, (major, minor): (u8, u8)) -> Option<PythonVersion> {
    let rodata = elf.section_by_name(".rodata")?.data().ok()?;
    let prefix = format!("{major}.{minor}.");
    rodata.split(|&b| b == 0).find_map(|s| {
        let text = std::str::from_utf8(s).ok()?;
        let start = text.rfind(&prefix)?;
        let before = text[..start].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_digit() || c == '.') {
            return None;
        }
        let micro: u8 = text[start + prefix.len()..].trim_end_matches('+').parse().ok()?;
        Some(PythonVersion { major, minor, micro })
    })
}

fn linked_libpython(elf: &object::File<'_>) -> Option<String> {
    let object::File::Elf64(elf64) = elf else { return None };
    Linkage::of(elf64).needed.into_iter().find(|n| libpython_hint(Path::new(n)).is_some())
}

/// Resolves a linked libpython the way the dynamic loader would ([`loader::find`]). Returns the
/// path to open from the agent and the path as the process sees it.
fn resolve_library(candidate: &Candidate, elf: &object::File<'_>, soname: &str) -> Option<(PathBuf, PathBuf)> {
    let object::File::Elf64(elf64) = elf else { return None };
    // The process's root as the agent opens it: the candidate's host path minus its own path.
    let host_path = candidate.host_path.to_string_lossy();
    let root = PathBuf::from(host_path.strip_suffix(&*candidate.path.to_string_lossy()).unwrap_or("/"));
    let path = loader::find(&root, candidate.path.parent()?, &Linkage::of(elf64).runpaths, soname)?;
    Some((under(&root, &path), path))
}

/// (major, minor) of a `libpython3.X[suffix].so[.N]` path.
fn libpython_hint(path: &Path) -> Option<(u8, u8)> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix("libpython")?;
    let version = rest.split(".so").next()?;
    parse_major_minor(version.trim_end_matches(|c: char| c.is_ascii_alphabetic()))
}

/// Whether an executable's name says it is Python (`python`, `python3`, `python3.11`,
/// `python3.11-custom`, ...), and the version it names if any.
fn python_executable_hint(path: &Path) -> Option<Option<(u8, u8)>> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix("python")?;
    let version_end = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
    Some(parse_major_minor(rest[..version_end].trim_end_matches('.')))
}

fn parse_major_minor(text: &str) -> Option<(u8, u8)> {
    let (major, minor) = text.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(libpython_hint(Path::new("/x/libpython3.11.so.1.0")), Some((3, 11)));
        assert_eq!(libpython_hint(Path::new("libpython3.8d.so")), Some((3, 8)));
        assert_eq!(libpython_hint(Path::new("/x/libc.so.6")), None);
        assert_eq!(python_executable_hint(Path::new("/usr/bin/python3.11")), Some(Some((3, 11))));
        assert_eq!(python_executable_hint(Path::new("/usr/bin/python3")), Some(None));
        assert_eq!(python_executable_hint(Path::new("/usr/bin/perl")), None);
        assert_eq!(python_executable_hint(Path::new("/opt/app/python3.12-static")), Some(Some((3, 12))));
        assert_eq!(python_executable_hint(Path::new("/usr/bin/python3.11d")), Some(Some((3, 11))));
        assert_eq!(python_executable_hint(Path::new("/usr/bin/python-app")), Some(None));
    }

    #[test]
    fn version_hex() {
        let v = PythonVersion::from_hex(0x030B07F0);
        assert_eq!(v.to_string(), "3.11.7");
        assert!(v.is_supported());
        assert!(!PythonVersion { major: 3, minor: 7, micro: 16 }.is_supported());
        assert!(!PythonVersion { major: 3, minor: 14, micro: 0 }.is_supported());
    }
}
