//! Python stacks (see `scouter-ebpf/src/programs/python_stack.rs`): the per-process layouts
//! the kernel walks frames with, and the capture program the libssl return probe tail-calls.
//! The syscall-side capture program is attached here too ([`super::STACK_ATTACHMENT`]), after
//! the core's I/O exit program it follows.

use aya::maps::{HashMap as BpfHashMap, MapData, ProgramArray};
use aya::programs::UProbe;
use aya::Ebpf;
use scouter_ebpf::{map_names, stack_programs, PythonLayout};

use super::links::OwnedLink;
use super::{take_map, ProbeError};

const FROM_LIBSSL: &str = "python_stack_from_libssl";
/// The feature's programs ([`super::Feature::PythonStacks`]).
pub const PROGRAMS: [&str; 2] = [super::STACK_ATTACHMENT.0, FROM_LIBSSL];

/// The layouts map; empty entries mean no stacks for that process.
pub struct StackProbes {
    layouts: BpfHashMap<MapData, u32, PythonLayout>,
    /// Keeps the program array (and so the tail-call target) alive.
    _programs: ProgramArray<MapData>,
    /// The syscall-side capture's attachments.
    links: Vec<OwnedLink>,
}

impl StackProbes {
    /// Attaches the loaded programs: the syscall-side capture after the core's, the libssl
    /// one in the tail-call slot.
    pub fn attach(ebpf: &mut Ebpf) -> Result<Self, ProbeError> {
        let (program, category, names) = super::STACK_ATTACHMENT;
        let links = super::attach_tracepoint(ebpf, program, category, names)?;
        let program: &mut UProbe = ebpf
            .program_mut(FROM_LIBSSL)
            .ok_or(ProbeError::MissingProgram(FROM_LIBSSL))?
            .try_into()
            .map_err(|source| ProbeError::ProgramLoad { program: FROM_LIBSSL, source })?;
        let fd = program.fd().map_err(|source| ProbeError::ProgramLoad { program: FROM_LIBSSL, source })?.try_clone();
        let fd = fd.map_err(|source| ProbeError::ProgramLoad { program: FROM_LIBSSL, source: source.into() })?;
        let mut programs = ProgramArray::try_from(take_map(ebpf, map_names::STACK_PROGRAMS)?)
            .map_err(|source| ProbeError::Map { name: map_names::STACK_PROGRAMS, source })?;
        programs
            .set(stack_programs::FROM_LIBSSL, &fd, 0)
            .map_err(|source| ProbeError::Map { name: map_names::STACK_PROGRAMS, source })?;
        let layouts = BpfHashMap::try_from(take_map(ebpf, map_names::PYTHON_LAYOUTS)?)
            .map_err(|source| ProbeError::Map { name: map_names::PYTHON_LAYOUTS, source })?;
        Ok(Self { layouts, _programs: programs, links })
    }

    /// The kernel reads `pid`'s stacks with `layout` from now on.
    pub fn set(&mut self, pid: u32, layout: PythonLayout) -> Result<(), ProbeError> {
        self.layouts
            .insert(pid, layout, 0)
            .map_err(|source| ProbeError::Map { name: map_names::PYTHON_LAYOUTS, source })
    }

    pub fn take_links(&mut self) -> Vec<OwnedLink> {
        std::mem::take(&mut self.links)
    }

    pub fn forget(&mut self, pid: u32) {
        let _ = self.layouts.remove(&pid);
    }
}
