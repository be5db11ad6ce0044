//! The running kernel: its version (uname) and whether bpf() works, asked of the kernel itself.
//!
//! Version numbers only hint at features (distributions backport), so when bpf() works the
//! ring buffer is checked by creating one; the version decides only when it cannot be asked.

use std::ffi::CStr;
use std::fmt;
use std::io;
use std::path::Path;

use super::Finding;

/// The kernel that brought BPF_MAP_TYPE_RINGBUF, which carries all the agent's events.
pub const RINGBUF_MIN_KERNEL: KernelVersion = KernelVersion { major: 5, minor: 8, patch: 0 };

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Parses a `uname -r` release: `6.18.44-fc-v595`, `5.15.0-1051-azure`, `6.1.0+`, `4.19`.
pub fn parse_kernel_release(release: &str) -> Option<KernelVersion> {
    let mut numbers = release.split('.').map(leading_number);
    let major = numbers.next()??;
    let minor = numbers.next()??;
    // The patch level is absent in `x.y` releases and only matters for ordering.
    let patch = numbers.next().flatten().unwrap_or(0);
    Some(KernelVersion { major, minor, patch })
}

fn leading_number(part: &str) -> Option<u32> {
    let end = part.find(|c: char| !c.is_ascii_digit()).unwrap_or(part.len());
    part[..end].parse().ok()
}

/// `uname -r` and `uname -m`.
pub fn uname_release_and_machine() -> io::Result<(String, String)> {
    // SAFETY: utsname is plain data; uname fills it with NUL-terminated strings.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is a valid, writable utsname.
    if unsafe { libc::uname(&mut name) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel NUL-terminates every utsname field.
    let field = |chars: &[libc::c_char]| unsafe { CStr::from_ptr(chars.as_ptr()) }.to_string_lossy().into_owned();
    Ok((field(&name.release), field(&name.machine)))
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_RINGBUF: u32 = 27;

/// The leading fields of `union bpf_attr` for BPF_MAP_CREATE; the kernel treats the fields
/// this struct does not cover as zero.
#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// Creates a one-entry array map and closes it: the smallest proof that bpf() is allowed.
pub fn probe_bpf_syscall() -> io::Result<()> {
    create_and_close_map(MapCreateAttr {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        map_flags: 0,
    })
}

/// Creates the smallest ring buffer (one page) and closes it.
pub fn probe_ring_buffer() -> io::Result<()> {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    create_and_close_map(MapCreateAttr {
        map_type: BPF_MAP_TYPE_RINGBUF,
        key_size: 0,
        value_size: 0,
        max_entries: u32::try_from(page_size).unwrap_or(4096),
        map_flags: 0,
    })
}

fn create_and_close_map(attr: MapCreateAttr) -> io::Result<()> {
    let size = std::mem::size_of::<MapCreateAttr>() as libc::c_uint;
    // SAFETY: `attr` is a valid bpf_attr prefix of `size` bytes that outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, &attr as *const MapCreateAttr, size) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is the map descriptor just returned to us, closed exactly once.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

pub fn kernel_finding(uname: &io::Result<(String, String)>) -> Finding {
    match uname {
        Ok((release, machine)) if parse_kernel_release(release).is_some() => {
            Finding::ok("kernel", format!("{release} ({machine})"))
        }
        Ok((release, _)) => {
            Finding::warn("kernel", format!("cannot parse release {release:?}: version-based checks are skipped"))
        }
        Err(e) => Finding::warn("kernel", format!("uname failed: {e}")),
    }
}

pub fn bpf_syscall_finding(probe: &io::Result<()>) -> Finding {
    const FEATURE: &str = "bpf() syscall";
    let Err(e) = probe else {
        return Finding::ok(FEATURE, "created and closed an array map");
    };
    let fix = match e.raw_os_error() {
        Some(libc::EPERM) => {
            "run as root or with CAP_BPF (CAP_SYS_ADMIN before 5.8); in a container, also allow bpf() in its seccomp profile"
        }
        Some(libc::ENOSYS) => "use a kernel built with CONFIG_BPF_SYSCALL=y",
        _ => "see the error; bpftool feature probe tells more",
    };
    Finding::missing(FEATURE, format!("BPF_MAP_CREATE failed: {e}")).with_fix(fix)
}

/// `probe` is None when bpf() itself is unusable, and then only the version can tell.
pub fn ring_buffer_finding(kernel: Option<KernelVersion>, probe: Option<&io::Result<()>>) -> Finding {
    const FEATURE: &str = "BPF ring buffer";
    const FIX: &str = "upgrade to Linux 5.8 or later (BPF_MAP_TYPE_RINGBUF)";
    match (probe, kernel) {
        (Some(Ok(())), _) => Finding::ok(FEATURE, "created and closed a ring buffer map"),
        (Some(Err(e)), _) => {
            Finding::missing(FEATURE, format!("the kernel refused a ring buffer map: {e}")).with_fix(FIX)
        }
        (None, Some(version)) if version >= RINGBUF_MIN_KERNEL => {
            Finding::ok(FEATURE, format!("kernel {version} >= {RINGBUF_MIN_KERNEL} (not probed: bpf() unusable)"))
        }
        (None, Some(version)) => {
            Finding::missing(FEATURE, format!("kernel {version} < {RINGBUF_MIN_KERNEL}")).with_fix(FIX)
        }
        (None, None) => Finding::warn(FEATURE, "unknown: bpf() unusable and kernel version unknown"),
    }
}

/// BTF is optional: the agent's programs read tracepoint records at offsets taken from tracefs
/// and do no CO-RE relocation, so they load without kernel BTF.
pub fn btf_finding(btf_path: &Path) -> Finding {
    if btf_path.exists() {
        return Finding::ok("BTF", format!("{} present", btf_path.display()));
    }
    Finding::warn(
        "BTF",
        format!(
            "{} not found: not needed by the agent's programs, but bpftool and CO-RE tools need it",
            btf_path.display()
        ),
    )
    .with_fix("use a kernel built with CONFIG_DEBUG_INFO_BTF=y")
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::*;

    fn errno(code: i32) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(code))
    }

    #[test]
    fn ring_buffer_probe_wins_over_version() {
        let old = Some(version(5, 4, 0));
        assert_eq!(ring_buffer_finding(old, Some(&Ok(()))).status, Status::Ok);
        let refused = ring_buffer_finding(Some(version(6, 1, 0)), Some(&errno(libc::EINVAL)));
        assert_eq!(refused.status, Status::Missing);
    }

    #[test]
    fn ring_buffer_falls_back_to_version() {
        assert_eq!(ring_buffer_finding(Some(version(5, 8, 0)), None).status, Status::Ok);
        let old = ring_buffer_finding(Some(version(5, 4, 0)), None);
        assert_eq!(old.status, Status::Missing);
        assert!(old.detail.contains("5.4.0 < 5.8.0"), "{}", old.detail);
        assert_eq!(ring_buffer_finding(None, None).status, Status::Warn);
    }

    #[test]
    fn bpf_syscall_errors_say_what_to_do() {
        assert_eq!(bpf_syscall_finding(&Ok(())).status, Status::Ok);
        let eperm = bpf_syscall_finding(&errno(libc::EPERM));
        assert_eq!(eperm.status, Status::Missing);
        assert!(eperm.fix.unwrap().contains("CAP_BPF"));
        assert!(bpf_syscall_finding(&errno(libc::ENOSYS)).fix.unwrap().contains("CONFIG_BPF_SYSCALL"));
    }

    #[test]
    fn kernel_line() {
        let finding = kernel_finding(&Ok(("6.18.44-fc-v595".into(), "x86_64".into())));
        assert_eq!((finding.status, finding.detail.as_str()), (Status::Ok, "6.18.44-fc-v595 (x86_64)"));
        assert_eq!(kernel_finding(&Ok(("weird".into(), "x86_64".into()))).status, Status::Warn);
    }

    fn version(major: u32, minor: u32, patch: u32) -> KernelVersion {
        KernelVersion { major, minor, patch }
    }

    #[test]
    fn parses_release_strings() {
        assert_eq!(parse_kernel_release("6.18.44-fc-v595"), Some(version(6, 18, 44)));
        assert_eq!(parse_kernel_release("5.15.0-1051-azure"), Some(version(5, 15, 0)));
        assert_eq!(parse_kernel_release("6.1.0+"), Some(version(6, 1, 0)));
        assert_eq!(parse_kernel_release("4.19"), Some(version(4, 19, 0)));
        assert_eq!(parse_kernel_release("5.4.0-rc3"), Some(version(5, 4, 0)));
        assert_eq!(parse_kernel_release("6.10-rc1"), Some(version(6, 10, 0)));
    }

    #[test]
    fn rejects_nonsense() {
        assert_eq!(parse_kernel_release(""), None);
        assert_eq!(parse_kernel_release("linux"), None);
        assert_eq!(parse_kernel_release("6"), None);
    }

    #[test]
    fn orders_versions_numerically() {
        assert!(version(5, 10, 0) > RINGBUF_MIN_KERNEL);
        assert!(version(5, 7, 19) < RINGBUF_MIN_KERNEL);
        assert!(version(6, 0, 0) > version(5, 19, 99));
        assert_eq!(version(6, 18, 44).to_string(), "6.18.44");
    }
}
