//! tracefs: where the kernel describes its tracepoints.
//!
//! aya attaches a tracepoint through `events/<category>/<name>/id` in tracefs, and the agent
//! reads `events/<category>/<name>/format` to find fields whose offsets changed across kernels
//! (`child_pid` in sched_process_fork, `group_dead` in sched_process_exit). tracefs is not
//! always mounted at boot, so [`ensure_mounted`] finds it (a tracefs mount, or the automount
//! under debugfs) and mounts it itself as a last resort.
//!
//! The format parser is a pure function over the file's text, so it is tested on samples from
//! several kernels.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::check::mounts::{self, Mount};

/// Where tracefs is mounted by convention, and where the agent mounts it when nobody did.
pub const DEFAULT_TRACEFS_PATH: &str = "/sys/kernel/tracing";

#[derive(Debug, Error)]
pub enum TracefsError {
    #[error("cannot read the mount table {}: {source}", mounts::MOUNTINFO_PATH)]
    ReadMountTable { source: io::Error },

    #[error(
        "tracefs is not mounted and mounting it at {target} failed: {source}; \
         mount it yourself (mount -t tracefs tracefs {target}), or run as root / with CAP_SYS_ADMIN"
    )]
    Mount { target: PathBuf, source: io::Error },

    #[error(
        "this kernel has no tracefs ({target} is missing or the filesystem type is unknown): \
         it needs CONFIG_TRACING (and CONFIG_FTRACE_SYSCALLS for syscall tracepoints)"
    )]
    Unsupported { target: PathBuf },

    #[error("tracepoint {category}/{name} does not exist on this kernel ({path} is missing)")]
    NoSuchTracepoint { category: String, name: String, path: PathBuf },

    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },

    #[error("{path}: line {line}: {reason}")]
    Parse { path: PathBuf, line: usize, reason: String },
}

/// Returns the root of a usable tracefs, mounting tracefs at [`DEFAULT_TRACEFS_PATH`] if none
/// is mounted.
pub fn ensure_mounted() -> Result<PathBuf, TracefsError> {
    if let Some(root) = find_mounted()? {
        return Ok(root);
    }
    let target = PathBuf::from(DEFAULT_TRACEFS_PATH);
    match mounts::mount_pseudo_fs("tracefs", &target) {
        Ok(()) => Ok(target),
        // Someone (another agent instance, systemd) mounted it since we looked.
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            find_mounted()?.ok_or(TracefsError::Mount { target, source: e })
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV)) => {
            Err(TracefsError::Unsupported { target })
        }
        Err(source) => Err(TracefsError::Mount { target, source }),
    }
}

/// The root of an already mounted tracefs, if any.
fn find_mounted() -> Result<Option<PathBuf>, TracefsError> {
    let table = mounts::read_mountinfo().map_err(|source| TracefsError::ReadMountTable { source })?;
    Ok(choose_tracefs_root(&table, |path| path.join("events").is_dir()))
}

/// Prefers a tracefs mount (the conventional path first), then debugfs's `tracing` directory,
/// which the kernel automounts on first access. `has_events` is asked only about debugfs
/// candidates, because looking there is what triggers that automount.
fn choose_tracefs_root(table: &[Mount], has_events: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    let mut tracefs: Vec<&Path> = mounts::mount_points_of_type(table, "tracefs").collect();
    tracefs.sort_by_key(|path| *path != Path::new(DEFAULT_TRACEFS_PATH));
    if let Some(root) = tracefs.first() {
        return Some(root.to_path_buf());
    }
    mounts::mount_points_of_type(table, "debugfs")
        .map(|debugfs| debugfs.join("tracing"))
        .find(|candidate| has_events(candidate))
}

/// The numeric id of a tracepoint (what perf_event_open takes), which also proves it exists.
pub fn tracepoint_id(root: &Path, category: &str, name: &str) -> Result<u32, TracefsError> {
    let path = event_dir(root, category, name).join("id");
    let text = read_event_file(&path, category, name)?;
    text.trim().parse().map_err(|e| TracefsError::Parse {
        path,
        line: 1,
        reason: format!("tracepoint id {:?} is not a number: {e}", text.trim()),
    })
}

/// The record layout of a tracepoint, from its `format` file.
pub fn tracepoint_format(root: &Path, category: &str, name: &str) -> Result<TracepointFormat, TracefsError> {
    let path = event_dir(root, category, name).join("format");
    let text = read_event_file(&path, category, name)?;
    parse_format(&text).map_err(|FormatError { line, reason }| TracefsError::Parse { path, line, reason })
}

fn event_dir(root: &Path, category: &str, name: &str) -> PathBuf {
    root.join("events").join(category).join(name)
}

fn read_event_file(path: &Path, category: &str, name: &str) -> Result<String, TracefsError> {
    std::fs::read_to_string(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => TracefsError::NoSuchTracepoint {
            category: category.to_owned(),
            name: name.to_owned(),
            path: path.to_owned(),
        },
        _ => TracefsError::Read { path: path.to_owned(), source },
    })
}

/// A tracepoint's record layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracepointFormat {
    pub name: String,
    pub id: Option<u32>,
    /// Common fields (`common_type`, `common_pid`, ...) first, then the event's own.
    pub fields: Vec<TracepointField>,
}

/// One `field:` line of a format file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TracepointField {
    pub name: String,
    /// The C declaration as the kernel prints it, e.g. `pid_t child_pid` or `char comm[16]`.
    pub declaration: String,
    /// Byte offset from the start of the record (what a tracepoint program's context points to).
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

impl TracepointFormat {
    pub fn field(&self, name: &str) -> Option<&TracepointField> {
        self.fields.iter().find(|field| field.name == name)
    }

    pub fn field_offset(&self, name: &str) -> Option<u32> {
        self.field(name).map(|field| field.offset)
    }
}

/// A parse failure, located by (1-based) line; the caller adds the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError {
    pub line: usize,
    pub reason: String,
}

/// Parses the text of a tracefs `format` file. Lines other than `name:`, `ID:` and `field:`
/// (the `format:` header, blank separators, `print fmt:`) carry nothing the agent needs.
pub fn parse_format(text: &str) -> Result<TracepointFormat, FormatError> {
    let mut format = TracepointFormat { name: String::new(), id: None, fields: Vec::new() };
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let fail = |reason: String| FormatError { line: index + 1, reason };
        if let Some(name) = line.strip_prefix("name:") {
            format.name = name.trim().to_owned();
        } else if let Some(id) = line.strip_prefix("ID:") {
            format.id = Some(id.trim().parse().map_err(|e| fail(format!("bad ID {:?}: {e}", id.trim())))?);
        } else if line.starts_with("field:") {
            format.fields.push(parse_field(line).map_err(fail)?);
        }
    }
    Ok(format)
}

/// `field:pid_t child_pid;<TAB>offset:20;<TAB>size:4;<TAB>signed:1;` (attributes are tab-separated)
fn parse_field(line: &str) -> Result<TracepointField, String> {
    let mut declaration = None;
    let (mut offset, mut size, mut signed) = (None, None, false);
    for attribute in line.split(';').map(str::trim).filter(|a| !a.is_empty()) {
        let (key, value) = attribute.split_once(':').ok_or_else(|| format!("expected key:value, got {attribute:?}"))?;
        let number = || value.trim().parse::<u32>().map_err(|e| format!("bad {key} {value:?}: {e}"));
        match key.trim() {
            "field" => declaration = Some(value.trim().to_owned()),
            "offset" => offset = Some(number()?),
            "size" => size = Some(number()?),
            "signed" => signed = number()? != 0,
            // Newer kernels may add attributes; they do not change the layout.
            _ => {}
        }
    }
    let declaration = declaration.ok_or("no field declaration")?;
    let name = declared_name(&declaration).ok_or_else(|| format!("no field name in {declaration:?}"))?;
    Ok(TracepointField {
        name,
        offset: offset.ok_or_else(|| format!("field {declaration:?} has no offset"))?,
        size: size.ok_or_else(|| format!("field {declaration:?} has no size"))?,
        declaration,
        signed,
    })
}

/// The identifier a C declaration declares: `char comm[16]` -> `comm`,
/// `struct sockaddr * uservaddr` -> `uservaddr`, `__data_loc char[] filename` -> `filename`.
fn declared_name(declaration: &str) -> Option<String> {
    let without_array = match declaration.strip_suffix(']') {
        Some(rest) => rest.rsplit_once('[').map_or(rest, |(before, _)| before),
        None => declaration,
    };
    let name = without_array.rsplit(|c: char| c.is_whitespace() || c == '*').next()?;
    let is_identifier = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    is_identifier.then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux 6.18 (this machine): comm fields became `__data_loc` strings.
    const FORK_6_18: &str = "\
name: sched_process_fork
ID: 366
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;
\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;
\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;

print fmt: \"comm=%s pid=%d child_comm=%s child_pid=%d\", __get_str(parent_comm), REC->parent_pid, __get_str(child_comm), REC->child_pid
";

    /// Linux 6.18: `group_dead` is present.
    const EXIT_6_18: &str = "\
name: sched_process_exit
ID: 369
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;
\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;

print fmt: \"comm=%s pid=%d prio=%d group_dead=%s\", REC->comm, REC->pid, REC->prio, REC->group_dead ? \"true\" : \"false\"
";

    /// Linux 5.x: fixed-size comm arrays put child_pid at 44.
    const FORK_5_X: &str = "\
name: sched_process_fork
ID: 314
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:1;
\tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:1;
\tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;

print fmt: \"comm=%s pid=%d child_comm=%s child_pid=%d\", REC->parent_comm, REC->parent_pid, REC->child_comm, REC->child_pid
";

    /// Linux 5.x: no `group_dead`.
    const EXIT_5_X: &str = "\
name: sched_process_exit
ID: 312
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:1;
\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;

print fmt: \"comm=%s pid=%d prio=%d\", REC->comm, REC->pid, REC->prio
";

    /// Linux 6.18 syscall tracepoint: pointer declarations with spaces around `*`.
    const CONNECT_6_18: &str = "\
name: sys_enter_connect
ID: 2230
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;
\tfield:struct sockaddr * uservaddr;\toffset:24;\tsize:8;\tsigned:0;
\tfield:int addrlen;\toffset:32;\tsize:8;\tsigned:0;

print fmt: \"fd: 0x%08lx, uservaddr: 0x%08lx, addrlen: 0x%08lx\", ((unsigned long)(REC->fd)), ((unsigned long)(REC->uservaddr)), ((unsigned long)(REC->addrlen))
";

    #[test]
    fn fork_6_18_child_pid_at_20() {
        let format = parse_format(FORK_6_18).unwrap();
        assert_eq!(format.name, "sched_process_fork");
        assert_eq!(format.id, Some(366));
        assert_eq!(format.fields.len(), 8);
        assert_eq!(format.field_offset("child_pid"), Some(20));
        assert_eq!(
            format.field("parent_comm"),
            Some(&TracepointField {
                name: "parent_comm".into(),
                declaration: "__data_loc char[] parent_comm".into(),
                offset: 8,
                size: 4,
                signed: false,
            })
        );
    }

    #[test]
    fn fork_5_x_child_pid_at_44() {
        let format = parse_format(FORK_5_X).unwrap();
        assert_eq!(format.field_offset("child_pid"), Some(44));
        let comm = format.field("child_comm").unwrap();
        assert_eq!((comm.offset, comm.size, comm.signed), (28, 16, true));
        assert_eq!(comm.declaration, "char child_comm[16]");
    }

    #[test]
    fn exit_6_18_has_group_dead() {
        let format = parse_format(EXIT_6_18).unwrap();
        let group_dead = format.field("group_dead").unwrap();
        assert_eq!((group_dead.offset, group_dead.size, group_dead.signed), (32, 1, false));
        assert_eq!(format.field_offset("comm"), Some(8));
    }

    #[test]
    fn exit_5_x_has_no_group_dead() {
        let format = parse_format(EXIT_5_X).unwrap();
        assert_eq!(format.field_offset("group_dead"), None);
        assert_eq!(format.field_offset("prio"), Some(28));
    }

    #[test]
    fn syscall_format_with_pointer_fields() {
        let format = parse_format(CONNECT_6_18).unwrap();
        assert_eq!(format.field_offset("uservaddr"), Some(24));
        assert_eq!(format.field_offset("fd"), Some(16));
        assert_eq!(format.field("__syscall_nr").map(|f| f.signed), Some(true));
        assert_eq!(format.field_offset("common_pid"), Some(4));
    }

    #[test]
    fn declared_names() {
        assert_eq!(declared_name("char *name").as_deref(), Some("name"));
        assert_eq!(declared_name("const char * filename").as_deref(), Some("filename"));
        assert_eq!(declared_name("u8 saddr[4]").as_deref(), Some("saddr"));
        assert_eq!(declared_name("__data_loc char[] comm").as_deref(), Some("comm"));
        assert_eq!(declared_name("struct foo *").as_deref(), None);
    }

    #[test]
    fn reports_the_bad_line() {
        let text = "name: x\nformat:\n\tfield:int a;\toffset:zero;\tsize:4;\tsigned:1;\n";
        let error = parse_format(text).unwrap_err();
        assert_eq!(error.line, 3);
        assert!(error.reason.contains("offset"), "{}", error.reason);

        let missing_size = parse_format("\tfield:int a;\toffset:0;\tsigned:1;\n").unwrap_err();
        assert!(missing_size.reason.contains("no size"), "{}", missing_size.reason);
        assert!(parse_format("ID: abc\n").is_err());
    }

    #[test]
    fn ignores_unknown_attributes() {
        let format = parse_format("\tfield:int a;\toffset:8;\tsize:4;\tsigned:1;\tflags:3;\n").unwrap();
        assert_eq!(format.field_offset("a"), Some(8));
    }

    fn mount(point: &str, fstype: &str) -> Mount {
        Mount { root: "/".into(), mount_point: point.into(), fstype: fstype.into() }
    }

    #[test]
    fn prefers_conventional_tracefs_mount() {
        let table = [mount("/other/tracing", "tracefs"), mount(DEFAULT_TRACEFS_PATH, "tracefs")];
        assert_eq!(choose_tracefs_root(&table, |_| false), Some(DEFAULT_TRACEFS_PATH.into()));
        let table = [mount("/other/tracing", "tracefs")];
        assert_eq!(choose_tracefs_root(&table, |_| false), Some("/other/tracing".into()));
    }

    #[test]
    fn falls_back_to_debugfs_tracing() {
        let table = [mount("/sys/kernel/debug", "debugfs")];
        assert_eq!(choose_tracefs_root(&table, |_| true), Some("/sys/kernel/debug/tracing".into()));
        assert_eq!(choose_tracefs_root(&table, |_| false), None);
        assert_eq!(choose_tracefs_root(&[], |_| true), None);
    }

    /// The real files of the running kernel parse, when tracefs is readable (root, CI).
    #[test]
    fn parses_this_kernels_sched_formats() {
        let root = Path::new(DEFAULT_TRACEFS_PATH);
        if !root.join("events/sched").is_dir() {
            return;
        }
        let fork = tracepoint_format(root, "sched", "sched_process_fork").unwrap();
        assert!(fork.field_offset("child_pid").is_some());
        assert!(tracepoint_id(root, "sched", "sched_process_exit").unwrap() > 0);
        assert!(matches!(
            tracepoint_format(root, "sched", "no_such_tracepoint"),
            Err(TracefsError::NoSuchTracepoint { .. })
        ));
    }
}
