//! The stacks of every process whose layout was checked: one code reader per process, one
//! qualified-name cache for all.

use std::collections::HashMap;

use scouter_ebpf::FrameRef;

use super::attach::CheckedLayout;
use super::attribution::{attribute, Attribution};
use super::code::{CodeLocation, CodeReader};
use super::memory::MemoryError;
use super::source::SourceQualnames;

#[derive(Default)]
pub struct ProcessStacks {
    pub(super) readers: HashMap<u32, CodeReader>,
    pub(super) qualnames: SourceQualnames,
    /// Module names by (pid, globals dict), for function spans.
    pub(super) modules: HashMap<(u32, u64), String>,
    /// Type names by (pid, type object, qualified with the module), for captured arguments
    /// and exceptions.
    pub(super) types: HashMap<(u32, u64, bool), String>,
}

impl ProcessStacks {
    /// Starts reading `pid`'s code objects with its checked layout.
    pub fn add(&mut self, pid: u32, layout: CheckedLayout) -> Result<(), MemoryError> {
        self.readers.insert(pid, CodeReader::new(pid, &layout)?);
        Ok(())
    }

    /// The layout a forked child shares with its parent (same memory image).
    pub fn layout_of(&self, pid: u32) -> Option<CheckedLayout> {
        self.readers.get(&pid).map(|reader| *reader.layout())
    }

    pub fn remove(&mut self, pid: u32) {
        self.readers.remove(&pid);
        self.modules.retain(|(owner, _), _| *owner != pid);
        self.types.retain(|(owner, _, _), _| *owner != pid);
    }

    /// The application frames of a stack `pid`'s thread had; nothing for a process without a
    /// checked layout.
    pub fn attribute(&mut self, pid: u32, frames: &[FrameRef]) -> Attribution {
        let Some(reader) = self.readers.get_mut(&pid) else { return Attribution::default() };
        let located: Vec<CodeLocation> =
            frames.iter().filter_map(|frame| reader.locate(frame, &mut self.qualnames)).collect();
        attribute(&located)
    }
}
