//! Attaching the `traceparent` insertion programs (see `scouter-ebpf/src/programs/inject.rs`):
//! sockops on the cgroup v2 root, so every tracked process's outgoing connections are seen
//! whatever cgroup it runs in, and sk_msg on the sockhash those connections join.
//!
//! Propagation is best effort by design: a host without cgroup v2, or a kernel that refuses
//! either program, still gets every span, only without cross-service links. The features
//! concerned ([`Feature::HeaderInsertion`], [`Feature::TcpOption`]) are then unavailable, and
//! the agent says why once at start-up instead of refusing to run.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use aya::maps::{MapData, SockHash};
use aya::programs::{CgroupAttachMode, SkMsg, SockOps};
use aya::Ebpf;
use scouter_ebpf::map_names;

use super::features::{Feature, FeatureStates};
use super::links::OwnedLink;
use super::{take_map, ProbeError};
use crate::check as host;
use crate::errors::with_causes;

const SOCKOPS_PROGRAM: &str = "follow_client_socket";
const SK_MSG_PROGRAM: &str = "insert_traceparent";
/// [`Feature::HeaderInsertion`]'s programs: the sockops one joins connections to the sockhash
/// the sk_msg one runs on.
pub const HEADER_PROGRAMS: [&str; 2] = [SOCKOPS_PROGRAM, SK_MSG_PROGRAM];
/// [`Feature::TcpOption`]'s program.
pub const OPTION_PROGRAMS: [&str; 1] = [SOCKOPS_PROGRAM];

/// The attached programs' links and the sockhash the sk_msg program runs on.
pub struct PropagationLinks {
    /// The sk_msg program's sockhash (held so the program stays attached to it).
    client_sockets: Option<SockHash<MapData, u64>>,
    /// The sockops program's attachment to the cgroup.
    sock_ops: Option<OwnedLink>,
}

impl PropagationLinks {
    pub fn take_links(&mut self) -> Vec<OwnedLink> {
        self.sock_ops.take().into_iter().collect()
    }

    /// Joins connections process `pid` opened before the agent saw them (its descriptors
    /// `fds`) to the sockhash, as the sockops program joins the ones it sees established, so
    /// requests on a warm pool get their `traceparent` too. Each descriptor is duplicated
    /// from the process (`pidfd_getfd`, which needs ptrace rights over it) only to be
    /// inserted. Returns how many joined; a descriptor closed or reused meanwhile is skipped.
    pub fn join_connections(&mut self, pid: u32, fds: &[u32]) -> Result<usize, JoinError> {
        let Some(sockets) = self.client_sockets.as_mut() else { return Ok(0) };
        if fds.is_empty() {
            return Ok(0);
        }
        let process = pidfd_open(pid).map_err(JoinError::Process)?;
        let mut joined = 0;
        for fd in fds {
            let socket = match pidfd_getfd(&process, *fd) {
                Ok(socket) => socket,
                Err(error) if error.raw_os_error() == Some(libc::EBADF) => continue,
                Err(error) => return Err(JoinError::Descriptor(error)),
            };
            // The socket's cookie, the key the sockops program files connections under.
            let Ok(cookie) = socket_cookie(&socket) else { continue };
            if sockets.insert(cookie, socket.as_raw_fd(), 0).is_ok() {
                joined += 1;
            }
        }
        Ok(joined)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("pidfd_open: {0}")]
    Process(std::io::Error),
    #[error("pidfd_getfd (needs ptrace rights over the process): {0}")]
    Descriptor(std::io::Error),
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; it returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    owned(fd)
}

fn pidfd_getfd(process: &OwnedFd, fd: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: a pidfd, a descriptor number of that process, no flags; returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, process.as_raw_fd(), fd as libc::c_int, 0) };
    owned(fd)
}

fn owned(fd: libc::c_long) -> std::io::Result<OwnedFd> {
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the system call just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn socket_cookie(socket: &OwnedFd) -> std::io::Result<u64> {
    let mut cookie = 0u64;
    let mut length = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: SO_COOKIE writes a u64 into `cookie`, whose size is passed.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            &mut cookie as *mut u64 as *mut libc::c_void,
            &mut length,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Attaches the sockops program (TCP option and the sockhash's membership) and the sk_msg
/// program (header insertion) when `wanted`; a failure turns off the features that need the
/// program, never the agent.
pub fn attach(ebpf: &mut Ebpf, features: &mut FeatureStates) -> Option<PropagationLinks> {
    if !features.is_enabled(Feature::HeaderInsertion) && !features.is_enabled(Feature::TcpOption) {
        return None;
    }
    let sock_ops = match attach_sock_ops(ebpf) {
        Ok(link) => link,
        Err(error) => {
            let why = with_causes(&error);
            features.unavailable(Feature::HeaderInsertion, why.clone());
            features.unavailable(Feature::TcpOption, why);
            return None;
        }
    };
    let client_sockets = features.load(Feature::HeaderInsertion, || attach_sk_msg(ebpf));
    Some(PropagationLinks { client_sockets, sock_ops: Some(sock_ops) })
}

fn attach_sk_msg(ebpf: &mut Ebpf) -> Result<SockHash<MapData, u64>, ProbeError> {
    let client_sockets = SockHash::<MapData, u64>::try_from(take_map(ebpf, map_names::CLIENT_SOCKETS)?)
        .map_err(|source| ProbeError::Map { name: map_names::CLIENT_SOCKETS, source })?;
    let sk_msg: &mut SkMsg = program(ebpf, SK_MSG_PROGRAM)?;
    sk_msg
        .attach(client_sockets.fd())
        .map_err(|source| ProbeError::AttachProgram { program: SK_MSG_PROGRAM, source })?;
    Ok(client_sockets)
}

fn attach_sock_ops(ebpf: &mut Ebpf) -> Result<OwnedLink, ProbeError> {
    let cgroup_path = host::cgroup2_mount().ok_or(ProbeError::NoCgroup2)?;
    let cgroup = File::open(&cgroup_path).map_err(|source| ProbeError::Cgroup { path: cgroup_path, source })?;
    let sock_ops: &mut SockOps = program(ebpf, SOCKOPS_PROGRAM)?;
    // A link-based attachment (what aya uses here) coexists with other agents' sockops
    // programs on the root (Cilium, systemd) and takes no multi-attach flag.
    let attach_error = |source| ProbeError::AttachProgram { program: SOCKOPS_PROGRAM, source };
    let id = sock_ops.attach(cgroup, CgroupAttachMode::Single).map_err(attach_error)?;
    Ok(Box::new(sock_ops.take_link(id).map_err(attach_error)?))
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(ProbeError::MissingProgram(name))?
        .try_into()
        .map_err(|source| ProbeError::ProgramLoad { program: name, source })
}
