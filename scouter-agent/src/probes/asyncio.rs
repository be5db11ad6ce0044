//! Uprobes on `_asyncio` (see `scouter-ebpf/src/programs/asyncio.rs`): attached once per
//! module file, for every process that maps it; the kernel side ignores untracked processes.
//!
//! A module without the symbols (distribution builds strip `_asyncio`'s static functions) is
//! reported once; client calls from its tasks are then parented by thread only, which is
//! exact for thread-per-request servers and approximate on event loops.

use aya::programs::uprobe::UProbeLink;
use aya::Ebpf;

use super::uprobes::{self, InstrumentedFiles};
use super::ProbeError;
use crate::discovery::asyncio::AsyncioModule;

/// (program, symbol); the step and init probes are required for task tracking. Steps are
/// probed at `task_step_impl`, the one function every step runs: `task_step` is inlined into
/// some of its callers (the first step of a task, via `TaskStepMethWrapper`, skips it).
const TASK_STEP: (&str, &str) = ("asyncio_task_step", "task_step_impl");
const TASK_STEP_STATE_FIRST: (&str, &str) = ("asyncio_task_step_state_first", "task_step_impl");
const TASK_STEP_RETURN: (&str, &str) = ("asyncio_task_step_return", "task_step_impl");
const TASK_INIT: (&str, &str) = ("asyncio_task_init", "_asyncio_Task___init__");
const FUTURE_SET_RESULT: (&str, &str) = ("asyncio_future_set_result", "_asyncio_Future_set_result");
const TASK_WAKEUP: (&str, &str) = ("asyncio_task_wakeup", "task_wakeup");
/// 3.8–3.9: the wake-up runs in the method wrapper's call.
const TASK_WAKEUP_WRAPPER: (&str, &str) = ("asyncio_task_wakeup_wrapper", "TaskWakeupMethWrapper_call");
const ALL: [(&str, &str); 7] = [
    TASK_STEP,
    TASK_STEP_STATE_FIRST,
    TASK_STEP_RETURN,
    TASK_INIT,
    FUTURE_SET_RESULT,
    TASK_WAKEUP,
    TASK_WAKEUP_WRAPPER,
];

/// Loads the programs; attaching waits for the first process of each module.
/// The feature's programs ([`super::Feature::AsyncioTasks`]).
pub const PROGRAMS: [&str; 7] = [ALL[0].0, ALL[1].0, ALL[2].0, ALL[3].0, ALL[4].0, ALL[5].0, ALL[6].0];

/// Modules already handled: whether their tasks are tracked.
#[derive(Default)]
pub struct AsyncioProbes {
    modules: InstrumentedFiles,
}

impl AsyncioProbes {
    /// Attaches to `module` unless done before; returns whether its tasks are tracked.
    pub fn instrument(&mut self, ebpf: &mut Ebpf, module: &AsyncioModule) -> bool {
        self.modules.once(&module.host_path, || match attach_all(ebpf, module) {
            Ok(links) => {
                tracing::info!(module = %module.host_path.display(), "tracking asyncio tasks");
                Some(links)
            }
            Err(error) => {
                tracing::warn!(
                    module = %module.host_path.display(),
                    %error,
                    "asyncio tasks are not tracked for this interpreter; client calls made by tasks are parented by thread only"
                );
                None
            }
        })
    }

    pub fn take_links(&mut self) -> Vec<UProbeLink> {
        self.modules.take_links()
    }
}

/// The required probes all or none: a step entry probe left attached by a failed try would
/// fire twice per step after the next try, and the running-task stack would never unwind.
fn attach_all(ebpf: &mut Ebpf, module: &AsyncioModule) -> Result<Vec<UProbeLink>, ProbeError> {
    let step = if module.state_argument { TASK_STEP_STATE_FIRST } else { TASK_STEP };
    let mut links = uprobes::attach_all_or_none(ebpf, &[step, TASK_STEP_RETURN, TASK_INIT], &module.host_path)?;
    // Without these, tasks still inherit their creator's request; only handing a request to an
    // already running task (aiohttp's per-connection handler) is lost.
    let wakeup = if module.has_task_wakeup { TASK_WAKEUP } else { TASK_WAKEUP_WRAPPER };
    for (program, symbol) in [FUTURE_SET_RESULT, wakeup] {
        match uprobes::attach(ebpf, program, symbol, &module.host_path) {
            Ok(link) => links.push(link),
            Err(error) => tracing::debug!(%error, "optional asyncio probe not attached"),
        }
    }
    Ok(links)
}
