//! Attaching the `traceparent` insertion programs (see `scouter-ebpf/src/programs/inject.rs`):
//! sockops on the cgroup v2 root, so every tracked process's outgoing connections are seen
//! whatever cgroup it runs in, and sk_msg on the sockhash those connections join.
//!
//! Propagation is best effort by design: a host without cgroup v2, or a kernel that refuses
//! either program, still gets every span, only without cross-service links. The agent logs
//! why once at start-up instead of refusing to run.

use std::fs::File;

use aya::maps::{MapData, SockHash};
use aya::programs::{CgroupAttachMode, SkMsg, SockOps};
use aya::Ebpf;
use scouter_ebpf::map_names;

use super::{load_error, take_map, ProbeError};
use crate::check;
use crate::errors::with_causes;

const SOCKOPS_PROGRAM: &str = "follow_client_socket";
const SK_MSG_PROGRAM: &str = "insert_traceparent";

/// Whether outgoing requests get a `traceparent`.
pub enum Propagation {
    Enabled {
        /// Held so the sk_msg program stays attached to it.
        _client_sockets: SockHash<MapData, u64>,
    },
    /// Turned off by configuration.
    Disabled,
    /// Wanted but not possible here.
    Unavailable(String),
}

impl std::fmt::Display for Propagation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Propagation::Enabled { .. } => f.write_str("on"),
            Propagation::Disabled => f.write_str("off (--no-propagate)"),
            Propagation::Unavailable(why) => write!(f, "unavailable: {why}"),
        }
    }
}

/// Attaches both programs when `wanted`; a failure makes propagation unavailable, not fatal.
pub fn attach(ebpf: &mut Ebpf, wanted: bool) -> Result<Propagation, ProbeError> {
    if !wanted {
        return Ok(Propagation::Disabled);
    }
    match attach_programs(ebpf) {
        Ok(client_sockets) => Ok(Propagation::Enabled { _client_sockets: client_sockets }),
        Err(error) => {
            let why = with_causes(&error);
            tracing::warn!("traceparent propagation is off: {why}; spans are still recorded, but downstream services will not join their traces");
            Ok(Propagation::Unavailable(why))
        }
    }
}

fn attach_programs(ebpf: &mut Ebpf) -> Result<SockHash<MapData, u64>, ProbeError> {
    let client_sockets = SockHash::<MapData, u64>::try_from(take_map(ebpf, map_names::CLIENT_SOCKETS)?)
        .map_err(|source| ProbeError::Map { name: map_names::CLIENT_SOCKETS, source })?;
    let sk_msg: &mut SkMsg = program(ebpf, SK_MSG_PROGRAM)?;
    sk_msg.load().map_err(|source| load_error(SK_MSG_PROGRAM, source))?;
    sk_msg
        .attach(client_sockets.fd())
        .map_err(|source| ProbeError::AttachProgram { program: SK_MSG_PROGRAM, source })?;

    let cgroup_path = check::cgroup2_mount().ok_or(ProbeError::NoCgroup2)?;
    let cgroup = File::open(&cgroup_path).map_err(|source| ProbeError::Cgroup { path: cgroup_path, source })?;
    let sock_ops: &mut SockOps = program(ebpf, SOCKOPS_PROGRAM)?;
    sock_ops.load().map_err(|source| load_error(SOCKOPS_PROGRAM, source))?;
    // A link-based attachment (what aya uses here) coexists with other agents' sockops
    // programs on the root (Cilium, systemd) and takes no multi-attach flag.
    sock_ops
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(|source| ProbeError::AttachProgram { program: SOCKOPS_PROGRAM, source })?;
    Ok(client_sockets)
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
