//! Python stacks (see `scouter-ebpf/src/programs/python_stack.rs`): the I/O programs read them
//! themselves (a subprogram of theirs), for the processes listed here with the layout of their
//! interpreter, once the agent has checked it against the process.

use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::Ebpf;
use scouter_ebpf::{map_names, PythonLayout};

use super::{take_map, ProbeError};

/// The layouts map; a process without an entry gets no stacks.
pub struct StackProbes {
    layouts: BpfHashMap<MapData, u32, PythonLayout>,
}

impl StackProbes {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, ProbeError> {
        let layouts = BpfHashMap::try_from(take_map(ebpf, map_names::PYTHON_LAYOUTS)?)
            .map_err(|source| ProbeError::Map { name: map_names::PYTHON_LAYOUTS, source })?;
        Ok(Self { layouts })
    }

    /// The kernel reads `pid`'s stacks with `layout` from now on.
    pub fn set(&mut self, pid: u32, layout: PythonLayout) -> Result<(), ProbeError> {
        self.layouts
            .insert(pid, layout, 0)
            .map_err(|source| ProbeError::Map { name: map_names::PYTHON_LAYOUTS, source })
    }

    pub fn forget(&mut self, pid: u32) {
        let _ = self.layouts.remove(&pid);
    }
}
