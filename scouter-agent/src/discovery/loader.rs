//! Where the dynamic loader finds a library a process links, worked out from the outside: the
//! ELF's `DT_NEEDED` and run paths, `/etc/ld.so.conf`, the default directories, all read inside
//! the process's root. Used for a libpython that an executable links but has not mapped yet
//! ([`super::interpreter`]) and for the libssl that `_ssl` links ([`super::libssl`]).

use std::fs;
use std::path::{Path, PathBuf};

/// How deep `include` directives of ld.so.conf are followed.
const MAX_INCLUDE_DEPTH: u32 = 4;

/// What the dynamic loader needs from an ELF: the libraries it names and where to look first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Linkage {
    pub needed: Vec<String>,
    /// `DT_RUNPATH` then `DT_RPATH` entries, unexpanded.
    pub runpaths: Vec<String>,
}

impl Linkage {
    pub fn of(elf: &object::read::elf::ElfFile64<'_>) -> Self {
        let mut linkage = Linkage { needed: dynamic_strings(elf, object::elf::DT_NEEDED), runpaths: Vec::new() };
        for tag in [object::elf::DT_RUNPATH, object::elf::DT_RPATH] {
            for entry in dynamic_strings(elf, tag) {
                linkage.runpaths.extend(entry.split(':').filter(|d| !d.is_empty()).map(str::to_owned));
            }
        }
        linkage
    }
}

/// Where the loader finds `soname` for an ELF in directory `origin` with `runpaths`, as the
/// process sees the path; look for it under `root` (the process's root as the agent opens it).
pub fn find(root: &Path, origin: &Path, runpaths: &[String], soname: &str) -> Option<PathBuf> {
    search_dirs(root, origin, runpaths).into_iter().map(|dir| dir.join(soname)).find(|path| under(root, path).is_file())
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
pub fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// The strings of a dynamic-section tag (`DT_NEEDED`, `DT_RUNPATH`, ...).
fn dynamic_strings(elf: &object::read::elf::ElfFile64<'_>, tag: u32) -> Vec<String> {
    use object::read::elf::{Dyn, FileHeader, SectionHeader};
    let endian = elf.endian();
    let data = elf.data();
    let Ok(sections) = elf.elf_header().sections(endian, data) else { return Vec::new() };
    let Some((section_index, section)) =
        sections.iter().enumerate().find(|(_, s)| s.sh_type(endian) == object::elf::SHT_DYNAMIC)
    else {
        return Vec::new();
    };
    let Ok(Some((entries, _))) = section.dynamic(endian, data) else { return Vec::new() };
    let Ok(strings) = sections.strings(endian, data, object::SectionIndex(section.sh_link(endian) as usize)) else {
        return Vec::new();
    };
    let _ = section_index;
    entries
        .iter()
        .filter(|d| d.d_tag(endian) as u32 == tag)
        .filter_map(|d| d.string(endian, strings).ok())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let found = find(root.path(), origin, &["$ORIGIN/../..".into()], "libssl.so.3").unwrap();
        assert_eq!(under(root.path(), &found).canonicalize().unwrap(), lib.join("libssl.so.3").canonicalize().unwrap());
        assert_eq!(find(root.path(), origin, &[], "libssl.so.3"), None, "the host's own libssl is not looked at");
    }
}
