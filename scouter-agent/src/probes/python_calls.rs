//! Function spans' probes (see `scouter-ebpf/src/programs/python_call.rs`): a uprobe and a
//! return probe on `_PyEval_EvalFrameDefault`, attached per process (the breakpoint is
//! planted in that process's memory only, so other processes of the same interpreter pay
//! nothing), the per-process call layout, and the agent's verdicts on code objects.
//!
//! This is the one mechanism whose cost falls on every Python call of a hooked process (an int3
//! trap at entry and at return, see the README's measured figures), which is why it is only
//! used where the user selected functions.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;

use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::programs::uprobe::UProbeLink;
use aya::Ebpf;
use scouter_ebpf::{map_names, CallLayout, FunctionVerdict, ObjectKey};

use super::eval_hook::EvalHook;
use super::uprobes::attach_to_process;
use super::{take_map, ProbeError};

/// Entry programs by where the frame argument is: 3.8 passes `(frame, throwflag)`, 3.9+
/// `(tstate, frame, throwflag)`.
const ENTRY_FRAME_FIRST: &str = "python_call_frame_first";
const ENTRY_FRAME_SECOND: &str = "python_call_frame_second";
const RETURN: &str = "python_call_return";
const EVALUATOR: &str = "_PyEval_EvalFrameDefault";
/// The feature's programs ([`super::Feature::FunctionSpans`]).
pub const PROGRAMS: [&str; 3] = [ENTRY_FRAME_FIRST, ENTRY_FRAME_SECOND, RETURN];

pub struct CallProbes {
    layouts: BpfHashMap<MapData, u32, CallLayout>,
    verdicts: BpfHashMap<MapData, ObjectKey, FunctionVerdict>,
    /// Each traced process: its links, and the evaluator hook to undo (3.11+).
    traced: HashMap<u32, TracedProcess>,
}

struct TracedProcess {
    links: Vec<UProbeLink>,
    hook: Option<EvalHook>,
}

impl CallProbes {
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, ProbeError> {
        let layouts = BpfHashMap::try_from(take_map(ebpf, map_names::CALL_LAYOUTS)?)
            .map_err(|source| ProbeError::Map { name: map_names::CALL_LAYOUTS, source })?;
        let verdicts = BpfHashMap::try_from(take_map(ebpf, map_names::CODE_VERDICTS)?)
            .map_err(|source| ProbeError::Map { name: map_names::CODE_VERDICTS, source })?;
        Ok(Self { layouts, verdicts, traced: HashMap::new() })
    }

    /// Reports `pid`'s calls from now on; `interpreter` is the file holding the evaluator
    /// (libpython, or the executable of a static build) as the agent opens it, and `hook` the
    /// evaluator hook set for it, kept until [`Self::untrace`] hands it back.
    pub fn trace(
        &mut self,
        ebpf: &mut Ebpf,
        pid: u32,
        interpreter: &Path,
        minor: u8,
        layout: CallLayout,
        hook: Option<EvalHook>,
    ) -> Result<(), ProbeError> {
        if self.traced.contains_key(&pid) {
            return Ok(());
        }
        let Some(process) = NonZeroU32::new(pid) else { return Ok(()) };
        self.layouts
            .insert(pid, layout, 0)
            .map_err(|source| ProbeError::Map { name: map_names::CALL_LAYOUTS, source })?;
        let entry = if minor == 8 { ENTRY_FRAME_FIRST } else { ENTRY_FRAME_SECOND };
        let links: Result<Vec<UProbeLink>, ProbeError> = [RETURN, entry]
            .into_iter()
            .map(|program| attach_to_process(ebpf, program, EVALUATOR, interpreter, process))
            .collect();
        let links = match links {
            Ok(links) => links,
            Err(error) => {
                let _ = self.layouts.remove(&pid);
                return Err(error);
            }
        };
        self.traced.insert(pid, TracedProcess { links, hook });
        Ok(())
    }

    pub fn is_traced(&self, pid: u32) -> bool {
        self.traced.contains_key(&pid)
    }

    pub fn traced(&self) -> Vec<u32> {
        self.traced.keys().copied().collect()
    }

    /// Stops reporting `pid`'s calls (it exited, exec'd, or the agent is stopping); returns
    /// the evaluator hook to undo, if the process lives on, and the probes' links to drop.
    pub fn untrace(&mut self, pid: u32) -> (Option<EvalHook>, Vec<UProbeLink>) {
        let _ = self.layouts.remove(&pid);
        match self.traced.remove(&pid) {
            Some(traced) => (traced.hook, traced.links),
            None => (None, Vec::new()),
        }
    }

    /// Every process's links, for detaching them all at once (the agent is stopping).
    pub fn take_links(&mut self) -> Vec<UProbeLink> {
        self.traced.values_mut().flat_map(|traced| std::mem::take(&mut traced.links)).collect()
    }

    /// Records the agent's decision about one of `pid`'s code objects.
    pub fn set_verdict(&mut self, pid: u32, code: u64, verdict: FunctionVerdict) {
        let key = ObjectKey { pid, _pad: 0, address: code };
        if let Err(error) = self.verdicts.insert(key, verdict, 0) {
            tracing::debug!(pid, %error, "code verdict not recorded");
        }
    }
}
