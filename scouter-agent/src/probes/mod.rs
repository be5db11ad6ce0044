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
pub mod features;
pub mod kernel_btf;
mod links;
mod loading;
mod propagation;
mod python_calls;
mod python_stacks;
mod sdk_context;
mod tls;
pub mod tracefs;
mod uprobes;
pub mod verifier;

use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use aya::programs::{ProgramError, TracePoint};
use aya::{Ebpf, EbpfLoader};
use scouter_ebpf::{counter, global_names, map_names, tracked_flags, TrackedProcess};

pub use features::{Feature, FeatureState, FeatureStates};
use links::{Detacher, OwnedLink};

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
/// tracepoint run in attach order): the core, without which the agent cannot run.
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
];

/// Attached after the core (after `io_exit` on the same exits): reads the Python stack
/// `io_exit` asked for in the same syscall exit. Part of [`Feature::PythonStacks`].
pub const STACK_ATTACHMENT: (&str, &str, &[&str]) = ("python_stack_after_io", "syscalls", IO_EXITS);

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
    #[error("program {0} is of a kind the agent does not load")]
    UnsupportedProgram(&'static str),
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map { name: &'static str, source: aya::maps::MapError },
    #[error("no cgroup v2 hierarchy is mounted (sockops programs attach to one)")]
    NoCgroup2,
    #[error("cannot open cgroup {path}: {source}")]
    Cgroup { path: std::path::PathBuf, source: std::io::Error },
    #[error("the {0} feature is unavailable on this kernel")]
    FeatureUnavailable(Feature),
    #[error("measuring the programs: {0}")]
    Stats(#[from] verifier::StatsError),
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
    /// Load the function-span programs (some function is selected). They are the slowest to
    /// verify, and nothing runs them otherwise.
    pub function_spans: bool,
}

impl Default for ProbeOptions {
    /// Every feature on, as `check` loads the programs.
    fn default() -> Self {
        Self { propagate: true, max_transaction: Duration::from_secs(300), function_spans: true }
    }
}

/// The loaded, attached programs and the maps userspace uses. A feature the kernel refused
/// has no probes here (`None`), and what would use it does nothing.
pub struct Probes {
    /// Holds the links: dropping it detaches every program.
    ebpf: Ebpf,
    features: FeatureStates,
    asyncio: Option<asyncio::AsyncioProbes>,
    contexts: Option<contextvars::ContextProbes>,
    sdk_contexts: Option<sdk_context::SdkContextProbes>,
    tls: Option<tls::TlsProbes>,
    stacks: Option<python_stacks::StackProbes>,
    calls: Option<python_calls::CallProbes>,
    /// Held so the insertion and option programs stay attached.
    propagation: Option<propagation::PropagationLinks>,
    /// The core's tracepoint attachments.
    core_links: Vec<OwnedLink>,
    /// Links let go of while running (a process no longer function-traced), detaching.
    detacher: Detacher,
    tracked: BpfHashMap<MapData, u32, TrackedProcess>,
    counters: PerCpuArray<MapData, u64>,
}

impl Probes {
    /// Loads the object and attaches its programs; returns the probes and the event ring.
    /// Fails only when the core cannot run; any other feature the kernel refuses is left out
    /// (see [`features`]).
    pub fn attach(options: ProbeOptions) -> Result<(Self, RingBuf<MapData>), ProbeError> {
        let (mut ebpf, fsbase_offset) = load_object(options)?;
        let mut features = FeatureStates::default();
        if !options.propagate {
            for feature in [Feature::HeaderInsertion, Feature::TcpOption] {
                features.set(feature, FeatureState::Off("--no-propagate".into()));
            }
        }
        if !options.function_spans {
            features.set(Feature::FunctionSpans, FeatureState::Off("no function is selected (--function)".into()));
        }
        if fsbase_offset == u32::MAX {
            features.unavailable(Feature::PythonStacks, "the kernel's BTF gives no thread-pointer offset".into());
        }
        for (program, result) in loading::load_programs(&mut ebpf, &features.wanted_programs()) {
            let Err(error) = result else { continue };
            for feature in Feature::ALL.into_iter().filter(|feature| feature.programs().contains(&program)) {
                if feature == Feature::Core {
                    return Err(error);
                }
                features.unavailable(feature, crate::errors::with_causes(&error));
            }
        }
        let mut core_links = Vec::new();
        for (program, category, names) in ATTACHMENTS {
            core_links.extend(attach_tracepoint(&mut ebpf, program, category, names)?);
        }
        let propagation = propagation::attach(&mut ebpf, &mut features);
        let stacks = features.load(Feature::PythonStacks, || python_stacks::StackProbes::attach(&mut ebpf));
        let calls = features.load(Feature::FunctionSpans, || python_calls::CallProbes::new(&mut ebpf));
        let sdk_contexts = features.load(Feature::SdkContexts, || sdk_context::SdkContextProbes::new(&mut ebpf));
        let tracked = BpfHashMap::try_from(take_map(&mut ebpf, map_names::TRACKED_PROCESSES)?)
            .map_err(|source| ProbeError::Map { name: map_names::TRACKED_PROCESSES, source })?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, map_names::COUNTERS)?)
            .map_err(|source| ProbeError::Map { name: map_names::COUNTERS, source })?;
        let events = RingBuf::try_from(take_map(&mut ebpf, map_names::EVENTS)?)
            .map_err(|source| ProbeError::Map { name: map_names::EVENTS, source })?;
        let probes = Self {
            asyncio: features.is_enabled(Feature::AsyncioTasks).then(asyncio::AsyncioProbes::default),
            contexts: features.is_enabled(Feature::ContextThreads).then(contextvars::ContextProbes::default),
            tls: features.is_enabled(Feature::Tls).then(tls::TlsProbes::default),
            ebpf,
            features,
            sdk_contexts,
            stacks,
            calls,
            propagation,
            core_links,
            detacher: Detacher::default(),
            tracked,
            counters,
        };
        Ok((probes, events))
    }

    /// What works on this kernel, feature by feature.
    pub fn features(&self) -> &FeatureStates {
        &self.features
    }

    /// Starts following the sockets of `pid` in the kernel, and carrying its requests'
    /// context downstream where the kernel can.
    pub fn track(&mut self, pid: u32) -> Result<(), ProbeError> {
        let mut flags = tracked_flags::SOCKETS;
        if self.features.is_enabled(Feature::HeaderInsertion) {
            flags |= tracked_flags::INSERT_TRACEPARENT;
        }
        if self.features.is_enabled(Feature::TcpOption) {
            flags |= tracked_flags::TCP_OPTION;
        }
        let value = TrackedProcess { flags, _pad: 0 };
        self.tracked
            .insert(pid, value, 0)
            .map_err(|source| ProbeError::Map { name: map_names::TRACKED_PROCESSES, source })
    }

    /// Follows the asyncio tasks of processes using `module`; false when its symbols are
    /// missing (reported once per module).
    pub fn track_asyncio(&mut self, module: &AsyncioModule) -> bool {
        self.asyncio.as_mut().is_some_and(|asyncio| asyncio.instrument(&mut self.ebpf, module))
    }

    /// Follows `contextvars` contexts handed to other threads by processes whose interpreter is
    /// `interpreter` (a path the agent opens); false when it cannot (reported once per file).
    pub fn track_contexts(&mut self, interpreter: &std::path::Path) -> bool {
        self.contexts.as_mut().is_some_and(|contexts| contexts.instrument(&mut self.ebpf, interpreter))
    }

    /// Follows which span an in-process SDK made current in `pid` (whose interpreter is
    /// `interpreter`, laid out as `layout`); false when it cannot.
    pub fn track_sdk_contexts(
        &mut self,
        pid: u32,
        interpreter: &std::path::Path,
        layout: scouter_ebpf::ObjectLayout,
    ) -> bool {
        self.sdk_contexts.as_mut().is_some_and(|sdk| sdk.instrument(&mut self.ebpf, pid, interpreter, layout))
    }

    /// The kernel reads the native SDK span objects of `pid` as `layout` says.
    pub fn read_native_sdk_spans(&mut self, pid: u32, layout: scouter_ebpf::NativeSpanLayout) {
        if let Some(sdk) = self.sdk_contexts.as_mut() {
            sdk.read_native_spans(pid, layout);
        }
    }

    /// Stops reading `pid`'s objects (it exited, or exec'd a new image).
    pub fn forget_sdk_contexts(&mut self, pid: u32) {
        if let Some(sdk) = self.sdk_contexts.as_mut() {
            sdk.forget(pid);
        }
    }

    /// Traces the HTTPS plaintext of processes using the libssl at `library` (a path the agent
    /// opens); false when it cannot be probed (reported once per library).
    pub fn track_tls(&mut self, library: &std::path::Path) -> bool {
        self.tls.as_mut().is_some_and(|tls| tls.instrument(&mut self.ebpf, library))
    }

    /// Stops following `pid`; absent entries are fine (the kernel removes exited processes).
    pub fn untrack(&mut self, pid: u32) {
        let _ = self.tracked.remove(&pid);
    }

    /// Whether the kernel can read Python stacks on this host.
    pub fn reads_stacks(&self) -> bool {
        self.stacks.is_some()
    }

    /// Reads `pid`'s Python stacks with `layout` (checked against the process) from now on.
    pub fn read_stacks(&mut self, pid: u32, layout: scouter_ebpf::PythonLayout) -> Result<(), ProbeError> {
        match self.stacks.as_mut() {
            Some(stacks) => stacks.set(pid, layout),
            None => Ok(()),
        }
    }

    /// Stops reading `pid`'s stacks (it exited, or exec'd a new image).
    pub fn forget_stacks(&mut self, pid: u32) {
        if let Some(stacks) = self.stacks.as_mut() {
            stacks.forget(pid);
        }
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
        let calls = self.calls.as_mut().ok_or(ProbeError::FeatureUnavailable(Feature::FunctionSpans))?;
        calls.trace(&mut self.ebpf, pid, interpreter, minor, layout, hook)
    }

    pub fn traces_calls(&self, pid: u32) -> bool {
        self.calls.as_ref().is_some_and(|calls| calls.is_traced(pid))
    }

    /// The processes whose calls are reported.
    pub fn call_traced_processes(&self) -> Vec<u32> {
        self.calls.as_ref().map(|calls| calls.traced()).unwrap_or_default()
    }

    /// Stops reporting `pid`'s calls; returns the evaluator hook to undo, if any.
    pub fn untrace_calls(&mut self, pid: u32) -> Option<eval_hook::EvalHook> {
        let (hook, links) = self.calls.as_mut()?.untrace(pid);
        self.detacher.detach(links.into_iter().map(|link| Box::new(link) as OwnedLink).collect());
        hook
    }

    /// Tells the kernel whether one of `pid`'s code objects is selected.
    pub fn set_code_verdict(&mut self, pid: u32, code: u64, verdict: scouter_ebpf::FunctionVerdict) {
        if let Some(calls) = self.calls.as_mut() {
            calls.set_verdict(pid, code, verdict);
        }
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

/// Loads the object (maps created, programs not yet loaded) with the globals this kernel needs;
/// returns it and the thread-pointer offset (`u32::MAX`: stacks are not read here).
fn load_object(options: ProbeOptions) -> Result<(Ebpf, u32), ProbeError> {
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
    let ebpf = EbpfLoader::new()
        .override_global(global_names::FORK_CHILD_PID_OFFSET, &fork_child, true)
        .override_global(global_names::EXIT_GROUP_DEAD_OFFSET, &exit_group_dead, true)
        .override_global(global_names::MAX_TRANSACTION_NS, &max_transaction_ns, true)
        .override_global(global_names::TASK_FSBASE_OFFSET, &fsbase_offset, true)
        .verifier_log_level(aya::VerifierLogLevel::STATS)
        .load(EBPF_OBJECT)
        .map_err(ProbeError::Load)?;
    Ok((ebpf, fsbase_offset))
}

/// The verifier's statistics for every program of the object, loaded as `run` loads it.
pub fn verifier_stats(options: ProbeOptions) -> Result<Vec<verifier::ProgramStats>, ProbeError> {
    let (ebpf, _) = load_object(options)?;
    verifier::program_stats(EBPF_OBJECT, &ebpf, |_| None).map_err(ProbeError::Stats)
}

impl Drop for Probes {
    /// Detaches everything at once (see [`links`]) before the programs and maps are closed.
    fn drop(&mut self) {
        let mut links = std::mem::take(&mut self.core_links);
        let uprobe_links = [
            self.asyncio.as_mut().map(|asyncio| asyncio.take_links()),
            self.contexts.as_mut().map(|contexts| contexts.take_links()),
            self.sdk_contexts.as_mut().map(|sdk| sdk.take_links()),
            self.tls.as_mut().map(|tls| tls.take_links()),
            self.calls.as_mut().map(|calls| calls.take_links()),
        ];
        links.extend(uprobe_links.into_iter().flatten().flatten().map(|link| Box::new(link) as OwnedLink));
        links.extend(self.stacks.as_mut().map(|stacks| stacks.take_links()).unwrap_or_default());
        links.extend(self.propagation.as_mut().map(|propagation| propagation.take_links()).unwrap_or_default());
        self.detacher.detach(links);
        self.detacher.finish();
    }
}

pub(crate) fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))
}

/// Attaches the loaded `program` to each tracepoint `category/name`; returns the links.
fn attach_tracepoint(
    ebpf: &mut Ebpf,
    program: &'static str,
    category: &'static str,
    names: &'static [&'static str],
) -> Result<Vec<OwnedLink>, ProbeError> {
    let tracepoint: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or(ProbeError::MissingProgram(program))?
        .try_into()
        .map_err(|source| ProbeError::ProgramLoad { program, source })?;
    let mut links: Vec<OwnedLink> = Vec::with_capacity(names.len());
    for name in names.iter().copied() {
        let attach_error = |source| ProbeError::Attach { program, category, name, source };
        let id = tracepoint.attach(category, name).map_err(attach_error)?;
        links.push(Box::new(tracepoint.take_link(id).map_err(attach_error)?));
    }
    Ok(links)
}
