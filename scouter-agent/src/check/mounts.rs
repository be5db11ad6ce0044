//! The mount table (`/proc/self/mountinfo`) and mounting the kernel's pseudo filesystems.
//!
//! tracefs, securityfs and cgroup2 are found here rather than at fixed paths: hosts differ
//! (hybrid cgroup layouts put cgroup2 at /sys/fs/cgroup/unified, Kubernetes nodes at
//! /sys/fs/cgroup, containers bind-mount sub-trees) and tracefs may be reachable only through
//! debugfs.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

pub const MOUNTINFO_PATH: &str = "/proc/self/mountinfo";

/// One line of mountinfo, reduced to what the agent looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The directory of the filesystem that is mounted (`/` unless a sub-tree is bind-mounted).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub fstype: String,
}

/// Parses mountinfo text (proc(5)); lines it cannot make sense of are skipped, since one odd
/// entry must not hide the others.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_mountinfo_line).collect()
}

/// `36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue`:
/// the optional fields before `-` vary in number, so the filesystem type is found after it.
fn parse_mountinfo_line(line: &str) -> Option<Mount> {
    let mut fields = line.split_ascii_whitespace();
    let root = fields.nth(3)?;
    let mount_point = fields.next()?;
    let fstype = fields.skip_while(|field| *field != "-").nth(1)?;
    Some(Mount {
        root: PathBuf::from(unescape_octal(root)),
        mount_point: PathBuf::from(unescape_octal(mount_point)),
        fstype: fstype.to_owned(),
    })
}

/// The kernel writes space, tab, newline and backslash in paths as `\ooo` octal escapes.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes.get(i + 1..i + 4).filter(|digits| bytes[i] == b'\\' && is_octal(digits));
        match escaped {
            Some(digits) => {
                out.push(digits.iter().fold(0u8, |acc, d| acc.wrapping_mul(8) + (d - b'0')));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_octal(digits: &[u8]) -> bool {
    digits.iter().all(|d| (b'0'..=b'7').contains(d))
}

/// Mount points of every filesystem of this type, in mount order.
pub fn mount_points_of_type<'a>(mounts: &'a [Mount], fstype: &'a str) -> impl Iterator<Item = &'a Path> + 'a {
    mounts.iter().filter(move |m| m.fstype == fstype).map(|m| m.mount_point.as_path())
}

/// The cgroup v2 mount that sockops/sk_msg programs should attach to. A mount of the
/// hierarchy's root covers every process (of this cgroup namespace), whereas a bind-mounted
/// sub-tree would only cover part of them; among equals the shortest path is the canonical one.
pub fn choose_cgroup2_mount(mounts: &[Mount]) -> Option<PathBuf> {
    mounts
        .iter()
        .filter(|m| m.fstype == "cgroup2")
        .min_by_key(|m| (m.root != Path::new("/"), m.mount_point.as_os_str().len()))
        .map(|m| m.mount_point.clone())
}

pub fn read_mountinfo() -> io::Result<Vec<Mount>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(MOUNTINFO_PATH)?))
}

/// Mounts a kernel pseudo filesystem (tracefs, securityfs) the way systemd does: no setuid, no
/// devices, no executables. Needs CAP_SYS_ADMIN.
pub fn mount_pseudo_fs(fstype: &str, target: &Path) -> io::Result<()> {
    let source = CString::new(fstype).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let target_c =
        CString::new(target.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call; no data
    // argument is passed.
    let rc = unsafe { libc::mount(source.as_ptr(), target_c.as_ptr(), source.as_ptr(), flags, std::ptr::null()) };
    if rc == 0 {
        tracing::info!(fstype, target = %target.display(), "mounted");
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's table: hybrid cgroup layout, tracefs mounted by hand.
    const HYBRID: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 23 0:13 / /sys/kernel/tracing rw,relatime - tracefs tracefs rw
";

    /// A systemd host with the unified layout: optional fields (shared:N) before the separator.
    const UNIFIED: &str = "\
24 29 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
25 24 0:6 / /sys/kernel/security rw,nosuid,nodev,noexec,relatime shared:8 - securityfs securityfs rw
30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 master:3 - cgroup2 cgroup2 rw,nsdelegate
35 24 0:7 / /sys/kernel/debug rw,nosuid,nodev,noexec,relatime shared:15 - debugfs debugfs rw
";

    #[test]
    fn parses_fields_around_optional_fields() {
        let mounts = parse_mountinfo(UNIFIED);
        assert_eq!(mounts.len(), 4);
        assert_eq!(
            mounts[2],
            Mount { root: "/".into(), mount_point: "/sys/fs/cgroup".into(), fstype: "cgroup2".into() }
        );
        assert_eq!(mounts[1].fstype, "securityfs");
    }

    #[test]
    fn skips_malformed_lines() {
        let mounts = parse_mountinfo("garbage\n\n1 2 3:4 / /x rw - \n42 23 0:13 / /t rw - tracefs tracefs rw\n");
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].mount_point, Path::new("/t"));
    }

    #[test]
    fn unescapes_octal_in_paths() {
        let mounts = parse_mountinfo("50 1 0:40 /a\\134b /mnt/my\\040dir rw - tmpfs tmpfs rw\n");
        assert_eq!(mounts[0].mount_point, Path::new("/mnt/my dir"));
        assert_eq!(mounts[0].root, Path::new("/a\\b"));
        assert_eq!(unescape_octal("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn finds_mounts_by_type() {
        let mounts = parse_mountinfo(HYBRID);
        let tracefs: Vec<_> = mount_points_of_type(&mounts, "tracefs").collect();
        assert_eq!(tracefs, [Path::new("/sys/kernel/tracing")]);
        assert_eq!(mount_points_of_type(&mounts, "debugfs").count(), 0);
    }

    #[test]
    fn cgroup2_in_hybrid_layout() {
        assert_eq!(choose_cgroup2_mount(&parse_mountinfo(HYBRID)), Some("/sys/fs/cgroup/unified".into()));
    }

    #[test]
    fn cgroup2_in_unified_layout() {
        assert_eq!(choose_cgroup2_mount(&parse_mountinfo(UNIFIED)), Some("/sys/fs/cgroup".into()));
    }

    #[test]
    fn cgroup2_prefers_hierarchy_root_over_bind_mounted_subtree() {
        let text = "\
60 1 0:26 /kubepods/pod1 /host/cg rw - cgroup2 cgroup2 rw
61 1 0:26 / /sys/fs/cgroup/longer/path rw - cgroup2 cgroup2 rw
";
        assert_eq!(choose_cgroup2_mount(&parse_mountinfo(text)), Some("/sys/fs/cgroup/longer/path".into()));
    }

    #[test]
    fn no_cgroup2_on_v1_only_hosts() {
        let text = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n";
        assert_eq!(choose_cgroup2_mount(&parse_mountinfo(text)), None);
    }
}
