//! Uprobes on the interpreter's `PyContextVar_Set` and `PyContextVar_Reset` (see
//! `scouter-ebpf/src/programs/sdk_context.rs`): which span an in-process SDK (OpenTelemetry)
//! made current on each thread or task. Attached once per interpreter file; both functions are
//! exported, so stripped builds have them too. The kernel reads the SDK's objects with each
//! process's [`ObjectLayout`], written here when the process is tracked, and a native SDK's
//! span objects with its [`NativeSpanLayout`], written when the kernel asks for it (see
//! `discovery::native_sdk`).

use std::path::Path;

use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::programs::uprobe::UProbeLink;
use aya::Ebpf;
use scouter_ebpf::{map_names, NativeSpanLayout, ObjectLayout};

use super::uprobes::{self, InstrumentedFiles};
use super::{take_map, ProbeError};

/// (program, symbol).
const SET: (&str, &str) = ("sdk_context_set", "PyContextVar_Set");
const RESET: (&str, &str) = ("sdk_context_reset", "PyContextVar_Reset");
/// The feature's programs ([`super::Feature::SdkContexts`]).
pub const PROGRAMS: [&str; 2] = [SET.0, RESET.0];

pub struct SdkContextProbes {
    interpreters: InstrumentedFiles,
    layouts: BpfHashMap<MapData, u32, ObjectLayout>,
    native_layouts: BpfHashMap<MapData, u32, NativeSpanLayout>,
}

impl SdkContextProbes {
    /// Loads the programs; attaching waits for the first process of each interpreter.
    pub fn new(ebpf: &mut Ebpf) -> Result<Self, ProbeError> {
        let layouts = BpfHashMap::try_from(take_map(ebpf, map_names::OBJECT_LAYOUTS)?)
            .map_err(|source| ProbeError::Map { name: map_names::OBJECT_LAYOUTS, source })?;
        let native_layouts = BpfHashMap::try_from(take_map(ebpf, map_names::NATIVE_SPAN_LAYOUTS)?)
            .map_err(|source| ProbeError::Map { name: map_names::NATIVE_SPAN_LAYOUTS, source })?;
        Ok(Self { interpreters: InstrumentedFiles::default(), layouts, native_layouts })
    }

    /// Follows the SDK context of `pid`, whose interpreter is `interpreter` (attached unless
    /// done before) laid out as `layout`; false when it cannot (reported once per file).
    pub fn instrument(&mut self, ebpf: &mut Ebpf, pid: u32, interpreter: &Path, layout: ObjectLayout) -> bool {
        let attached = self.interpreters.once(interpreter, || match attach_both(ebpf, interpreter) {
            Ok(links) => {
                tracing::info!(interpreter = %interpreter.display(), "following in-process SDKs' current spans");
                Some(links)
            }
            Err(error) => {
                tracing::warn!(
                    interpreter = %interpreter.display(),
                    %error,
                    "spans of in-process SDKs in this interpreter's processes are not nested with the agent's"
                );
                None
            }
        });
        if attached {
            if let Err(error) = self.layouts.insert(pid, layout, 0) {
                tracing::warn!(pid, %error, "cannot follow this process's SDK spans (layout map full?)");
                return false;
            }
        }
        attached
    }

    pub fn take_links(&mut self) -> Vec<UProbeLink> {
        self.interpreters.take_links()
    }

    /// The kernel reads `pid`'s native SDK spans with `layout` from now on. Without a call the
    /// kernel's empty entry stays, and the process's native spans stay counted as opaque.
    pub fn read_native_spans(&mut self, pid: u32, layout: NativeSpanLayout) {
        if let Err(error) = self.native_layouts.insert(pid, layout, 0) {
            tracing::warn!(pid, %error, "cannot follow this process's native SDK spans");
        }
    }

    pub fn forget(&mut self, pid: u32) {
        let _ = self.layouts.remove(&pid);
        let _ = self.native_layouts.remove(&pid);
    }
}

/// Both or neither: sets without resets would leave spans current forever.
fn attach_both(ebpf: &mut Ebpf, interpreter: &Path) -> Result<Vec<UProbeLink>, ProbeError> {
    uprobes::attach_all_or_none(ebpf, &[SET, RESET], interpreter)
}
