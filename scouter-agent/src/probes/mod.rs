//! Probes: loads the eBPF object, attaches its programs, and owns the maps the agent writes.
//!
//! The attachment table below is the single list of tracepoints the agent uses; `check`
//! verifies the same hooks exist. Trace context propagation adds a sockops program on the
//! cgroup v2 root and an sk_msg program on the client-socket sockhash ([`propagation`]); when
//! they cannot attach, the agent says so and traces without inserting `traceparent` (the same
//! sockops program carries TLS requests' contexts in a TCP option). Uprobes attach per library
//! file as processes are found: `_asyncio` ([`asyncio`]), the interpreter's `contextvars`
//! ([`contextvars`]) and libssl for HTTPS ([`tls`]); the interpreter's context variables also
//! show which span an in-process SDK made current ([`sdk_context`]). Function spans attach per process, only
//! where the user selected functions ([`python_calls`], with the 3.11+ [`eval_hook`]).
//! Dropping [`Probes`] detaches everything (aya closes the links and the maps go with the last
//! file descriptor), so SIGTERM leaves nothing behind.

// aya's ProgramError is large; these errors happen once, at start-up, so size does not matter.
#![allow(clippy::result_large_err)]

mod asyncio;
mod contextvars;
pub mod eval_hook;
pub mod kernel_btf;
mod propagation;
mod python_calls;
mod python_stacks;
mod sdk_context;
mod tls;
pub mod tracefs;
mod uprobes;

use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::{ProgramError, TracePoint};
use aya::{Ebpf, EbpfLoader};
use scouter_ebpf::{counter, global_names, map_names, TrackedProcess, TRACK_SOCKETS};

pub use propagation::Propagation;

use crate::discovery::asyncio::AsyncioModule;

/// The eBPF object built by build.rs (empty when built with AYA_BUILD_SKIP=1).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/scouter-ebpf"));

/// The syscall exits of the I/O families.
const IO_EXITS: &[&str] = &[
    "sys_exit_read",
    "sys_exit_recvfrom",
    "sys_exit_readv",
    "sys_exit_recvmsg",
    "sys_exit_write",
    "sys_exit_sendto",
    "sys_exit_writev",
    "sys_exit_sendmsg",
];

/// (program, tracepoint category, tracepoint names), attached in this order (programs on one
/// tracepoint run in attach order).
pub const ATTACHMENTS: &[(&str, &str, &[&str])] = &[
    ("sched_process_exec", "sched", &["sched_process_exec"]),
    ("sched_process_fork", "sched", &["sched_process_fork"]),
    ("sched_process_exit", "sched", &["sched_process_exit"]),
    ("accept_enter", "syscalls", &["sys_enter_accept", "sys_enter_accept4"]),
    ("accept_exit", "syscalls", &["sys_exit_accept", "sys_exit_accept4"]),
    ("connect_enter", "syscalls", &["sys_enter_connect"]),
    ("connect_exit", "syscalls", &["sys_exit_connect"]),
    ("close_enter", "syscalls", &["sys_enter_close"]),
    ("io_enter_read", "syscalls", &["sys_enter_read", "sys_enter_recvfrom"]),
    ("io_enter_readv", "syscalls", &["sys_enter_readv"]),
    ("io_enter_recvmsg", "syscalls", &["sys_enter_recvmsg"]),
    ("io_enter_write", "syscalls", &["sys_enter_write", "sys_enter_sendto"]),
    ("io_enter_writev", "syscalls", &["sys_enter_writev"]),
    ("io_enter_sendmsg", "syscalls", &["sys_enter_sendmsg"]),
    ("io_exit", "syscalls", IO_EXITS),
    // After io_exit: reads the Python stack io_exit asked for in the same syscall exit.
    ("python_stack_after_io", "syscalls", IO_EXITS),
];

/// How many verifier log lines an error shows (the end, where the rejection is explained).
const VERIFIER_LOG_TAIL: usize = 25;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("this binary was built without its eBPF object (AYA_BUILD_SKIP=1); build it with `cargo xtask build`")]
    NoObject,
    #[error(transparent)]
    Tracefs(#[from] tracefs::TracefsError),
    #[error("loading the eBPF object failed: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("tracepoint {tracepoint} has no field {field} on this kernel")]
    MissingField { tracepoint: &'static str, field: &'static str },
    #[error("the eBPF object has no program {0}")]
    MissingProgram(&'static str),
    #[error("the kernel verifier rejected program {program}:\n{log_tail}")]
    Verifier { program: &'static str, log_tail: String },
    #[error("loading program {program} failed: {source}")]
    ProgramLoad { program: &'static str, source: ProgramError },
    #[error("attaching {program} to tracepoint {category}/{name} failed: {source}")]
    Attach { program: &'static str, category: &'static str, name: &'static str, source: ProgramError },
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map { name: &'static str, source: aya::maps::MapError },
    #[error("no cgroup v2 hierarchy is mounted (sockops programs attach to one)")]
    NoCgroup2,
    #[error("cannot open cgroup {path}: {source}")]
    Cgroup { path: std::path::PathBuf, source: std::io::Error },
    #[error("attaching {program} failed: {source}")]
    AttachProgram { program: &'static str, source: ProgramError },
}

/// What the kernel side is asked to do besides following sockets.
#[derive(Clone, Copy, Debug)]
pub struct ProbeOptions {
    /// Insert `traceparent` into outgoing plain-HTTP requests.
    pub propagate: bool,
    /// How long a request being served may parent its thread's client calls.
    pub max_transaction: Duration,
}

/// The loaded, attached programs and the maps userspace uses.
pub struct Probes {
    /// Holds the links: dropping it detaches every program.
    ebpf: Ebpf,
    asyncio: asyncio::AsyncioProbes,
    contexts: contextvars::ContextProbes,
    sdk_contexts: sdk_context::SdkContextProbes,
    tls: tls::TlsProbes,
    stacks: python_stacks::StackProbes,
    calls: python_calls::CallProbes,
    tracked: BpfHashMap<MapData, u32, TrackedProcess>,
    counters: PerCpuArray<MapData, u64>,
    propagation: Propagation,
}

impl Probes {
    /// Loads the object and attaches every program; returns the probes and the event ring.
    pub fn attach(options: ProbeOptions) -> Result<(Self, RingBuf<MapData>), ProbeError> {
        if EBPF_OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        let tracefs = tracefs::ensure_mounted()?;
        let fork_child = tracefs::tracepoint_format(&tracefs, "sched", "sched_process_fork")?
            .field_offset("child_pid")
            .ok_or(ProbeError::MissingField { tracepoint: "sched/sched_process_fork", field: "child_pid" })?;
        let exit_group_dead = tracefs::tracepoint_format(&tracefs, "sched", "sched_process_exit")?
            .field_offset("group_dead")
            .unwrap_or(u32::MAX);
        let max_transaction_ns = u64::try_from(options.max_transaction.as_nanos()).unwrap_or(u64::MAX);
        let fsbase_offset = kernel_btf::task_fsbase_offset().unwrap_or_else(|error| {
            tracing::warn!(%error, "Python stacks are not read on this kernel (no thread-pointer offset)");
            u32::MAX
        });
        let mut ebpf = EbpfLoader::new()
            .override_global(global_names::FORK_CHILD_PID_OFFSET, &fork_child, true)
            .override_global(global_names::EXIT_GROUP_DEAD_OFFSET, &exit_group_dead, true)
            .override_global(global_names::MAX_TRANSACTION_NS, &max_transaction_ns, true)
            .override_global(global_names::TASK_FSBASE_OFFSET, &fsbase_offset, true)
            .load(EBPF_OBJECT)
            .map_err(ProbeError::Load)?;
        for (program, category, names) in ATTACHMENTS {
            attach_tracepoint(&mut ebpf, program, category, names)?;
        }
        let propagation = propagation::attach(&mut ebpf, options.propagate)?;
        asyncio::load(&mut ebpf)?;
        contextvars::load(&mut ebpf)?;
        tls::load(&mut ebpf)?;
        let stacks = python_stacks::StackProbes::load(&mut ebpf, fsbase_offset != u32::MAX)?;
        let calls = python_calls::CallProbes::load(&mut ebpf)?;
        let sdk_contexts = sdk_context::SdkContextProbes::load(&mut ebpf)?;
        let tracked = BpfHashMap::try_from(take_map(&mut ebpf, map_names::TRACKED_PROCESSES)?)
            .map_err(|source| ProbeError::Map { name: map_names::TRACKED_PROCESSES, source })?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, map_names::COUNTERS)?)
            .map_err(|source| ProbeError::Map { name: map_names::COUNTERS, source })?;
        let events = RingBuf::try_from(take_map(&mut ebpf, map_names::EVENTS)?)
            .map_err(|source| ProbeError::Map { name: map_names::EVENTS, source })?;
        let asyncio = asyncio::AsyncioProbes::default();
        let contexts = contextvars::ContextProbes::default();
        let tls = tls::TlsProbes::default();
        Ok((Self { ebpf, asyncio, contexts, sdk_contexts, tls, stacks, calls, tracked, counters, propagation }, events))
    }

    /// Whether outgoing requests get a `traceparent`, and if not, why.
    pub fn propagation(&self) -> &Propagation {
        &self.propagation
    }

    /// Starts following the sockets of `pid` in the kernel.
    pub fn track(&mut self, pid: u32) -> Result<(), ProbeError> {
        let value = TrackedProcess { flags: TRACK_SOCKETS, _pad: 0 };
        self.tracked
            .insert(pid, value, 0)
            .map_err(|source| ProbeError::Map { name: map_names::TRACKED_PROCESSES, source })
    }

    /// Follows the asyncio tasks of processes using `module`; false when its symbols are
    /// missing (reported once per module).
    pub fn track_asyncio(&mut self, module: &AsyncioModule) -> bool {
        self.asyncio.instrument(&mut self.ebpf, module)
    }

    /// Follows `contextvars` contexts handed to other threads by processes whose interpreter is
    /// `interpreter` (a path the agent opens); false when it cannot (reported once per file).
    pub fn track_contexts(&mut self, interpreter: &std::path::Path) -> bool {
        self.contexts.instrument(&mut self.ebpf, interpreter)
    }

    /// Follows which span an in-process SDK made current in `pid` (whose interpreter is
    /// `interpreter`, laid out as `layout`); false when it cannot.
    pub fn track_sdk_contexts(
        &mut self,
        pid: u32,
        interpreter: &std::path::Path,
        layout: scouter_ebpf::ObjectLayout,
    ) -> bool {
        self.sdk_contexts.instrument(&mut self.ebpf, pid, interpreter, layout)
    }

    /// The kernel reads the native SDK span objects of `pid` as `layout` says.
    pub fn read_native_sdk_spans(&mut self, pid: u32, layout: scouter_ebpf::NativeSpanLayout) {
        self.sdk_contexts.read_native_spans(pid, layout);
    }

    /// Stops reading `pid`'s objects (it exited, or exec'd a new image).
    pub fn forget_sdk_contexts(&mut self, pid: u32) {
        self.sdk_contexts.forget(pid);
    }

    /// Traces the HTTPS plaintext of processes using the libssl at `library` (a path the agent
    /// opens); false when it cannot be probed (reported once per library).
    pub fn track_tls(&mut self, library: &std::path::Path) -> bool {
        self.tls.instrument(&mut self.ebpf, library)
    }

    /// Stops following `pid`; absent entries are fine (the kernel removes exited processes).
    pub fn untrack(&mut self, pid: u32) {
        let _ = self.tracked.remove(&pid);
    }

    /// Whether the kernel can read Python stacks on this host.
    pub fn reads_stacks(&self) -> bool {
        self.stacks.enabled()
    }

    /// Reads `pid`'s Python stacks with `layout` (checked against the process) from now on.
    pub fn read_stacks(&mut self, pid: u32, layout: scouter_ebpf::PythonLayout) -> Result<(), ProbeError> {
        self.stacks.set(pid, layout)
    }

    /// Stops reading `pid`'s stacks (it exited, or exec'd a new image).
    pub fn forget_stacks(&mut self, pid: u32) {
        self.stacks.forget(pid);
    }

    /// Reports `pid`'s calls of selected functions from now on (see [`python_calls`]),
    /// keeping the evaluator hook set for it (3.11+) until [`Self::untrace_calls`].
    pub fn trace_calls(
        &mut self,
        pid: u32,
        interpreter: &std::path::Path,
        minor: u8,
        layout: scouter_ebpf::CallLayout,
        hook: Option<eval_hook::EvalHook>,
    ) -> Result<(), ProbeError> {
        self.calls.trace(&mut self.ebpf, pid, interpreter, minor, layout, hook)
    }

    pub fn traces_calls(&self, pid: u32) -> bool {
        self.calls.is_traced(pid)
    }

    /// The processes whose calls are reported.
    pub fn call_traced_processes(&self) -> Vec<u32> {
        self.calls.traced()
    }

    /// Stops reporting `pid`'s calls; returns the evaluator hook to undo, if any.
    pub fn untrace_calls(&mut self, pid: u32) -> Option<eval_hook::EvalHook> {
        self.calls.untrace(&mut self.ebpf, pid)
    }

    /// Tells the kernel whether one of `pid`'s code objects is selected.
    pub fn set_code_verdict(&mut self, pid: u32, code: u64, verdict: scouter_ebpf::FunctionVerdict) {
        self.calls.set_verdict(pid, code, verdict);
    }

    /// Kernel-side drop counters, summed over CPUs, indexed by `scouter_ebpf::counter`.
    pub fn kernel_counters(&self) -> [u64; counter::COUNT as usize] {
        let mut totals = [0u64; counter::COUNT as usize];
        for (index, total) in totals.iter_mut().enumerate() {
            if let Ok(values) = self.counters.get(&(index as u32), 0) {
                *total = values.iter().sum();
            }
        }
        totals
    }
}

pub(crate) fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    program: &'static str,
    category: &'static str,
    names: &'static [&'static str],
) -> Result<(), ProbeError> {
    let tracepoint: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or(ProbeError::MissingProgram(program))?
        .try_into()
        .map_err(|source| ProbeError::ProgramLoad { program, source })?;
    tracepoint.load().map_err(|source| load_error(program, source))?;
    for name in names.iter().copied() {
        tracepoint.attach(category, name).map_err(|source| ProbeError::Attach { program, category, name, source })?;
    }
    Ok(())
}

/// A verifier rejection shows the end of the verifier's log, where it explains itself.
pub(crate) fn load_error(program: &'static str, source: ProgramError) -> ProbeError {
    match &source {
        ProgramError::LoadError { verifier_log, .. } => {
            let log = verifier_log.to_string();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(VERIFIER_LOG_TAIL)..].join("\n");
            ProbeError::Verifier { program, log_tail: tail }
        }
        _ => ProbeError::ProgramLoad { program, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_rejections_show_the_program_and_the_end_of_the_log() {
        let log: String =
            (1..=100).map(|i| format!("line {i}\n")).collect::<String>() + "R1 invalid mem access 'scalar'\n";
        let error = ProgramError::LoadError {
            io_error: std::io::Error::from_raw_os_error(libc::EACCES),
            verifier_log: aya_obj::VerifierLog::new(log),
        };
        let message = load_error("io_exit", error).to_string();
        assert!(message.starts_with("the kernel verifier rejected program io_exit:"), "{message}");
        assert!(message.ends_with("R1 invalid mem access 'scalar'"), "{message}");
        assert!(message.contains("line 100") && !message.contains("line 50\n"), "{message}");
    }
}
