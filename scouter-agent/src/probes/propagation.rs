//! Attaching the `traceparent` insertion programs (see `scouter-ebpf/src/programs/inject.rs`):
//! sockops on the cgroup v2 root, so every tracked process's outgoing connections are seen
//! whatever cgroup it runs in, and sk_msg on the sockhash those connections join.
//!
//! Propagation is best effort by design: a host without cgroup v2, or a kernel that refuses
//! either program, still gets every span, only without cross-service links. The features
//! concerned ([`Feature::HeaderInsertion`], [`Feature::TcpOption`]) are then unavailable, and
//! the agent says why once at start-up instead of refusing to run.

use std::fs::File;

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
    /// Held so the sk_msg program stays attached to it.
    _client_sockets: Option<SockHash<MapData, u64>>,
    /// The sockops program's attachment to the cgroup.
    sock_ops: Option<OwnedLink>,
}

impl PropagationLinks {
    pub fn take_links(&mut self) -> Vec<OwnedLink> {
        self.sock_ops.take().into_iter().collect()
    }
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
    Some(PropagationLinks { _client_sockets: client_sockets, sock_ops: Some(sock_ops) })
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
