//! Probes: loads the eBPF object, attaches its programs, and owns the maps the agent writes.
//!
//! Socket I/O is captured on the kernel's socket layer, or at the syscalls where fentry is not
//! available ([`capture`]). Only that core is required; every other feature is loaded beside
//! it and turned off alone if the kernel refuses it ([`features`]). Programs are verified in
//! parallel ([`loading`]) and attached feature by feature:
//! - trace context propagation: a sockops program on the cgroup v2 root and an sk_msg program
//!   on the client-socket sockhash ([`propagation`]); the same sockops program carries TLS
//!   requests' contexts in a TCP option;
//! - uprobes per library file, as processes are found: `_asyncio` ([`asyncio`]), the
//!   interpreter's `contextvars` ([`contextvars`]) and libssl for HTTPS ([`tls`]); the
//!   interpreter's context variables also show which span an in-process SDK made current
//!   ([`sdk_context`]);
//! - function spans, per process, only where the user selected functions ([`python_calls`],
//!   with the 3.11+ [`eval_hook`]).
//!
//! Dropping [`Probes`] detaches everything, all links at once ([`links`]), so SIGTERM leaves
//! nothing behind.

// aya's ProgramError is large; these errors happen once, at start-up, so size does not matter.
#![allow(clippy::result_large_err)]

mod asyncio;
pub mod capture;
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
use aya::programs::{BtfTracePoint, FEntry, FExit, ProgramError, TracePoint};
use aya::{Ebpf, EbpfLoader};
use scouter_ebpf::{counter, global_names, map_names, tracked_flags, TrackedProcess};

pub use capture::{IoCapture, IoCaptureChoice};
pub use features::{Feature, FeatureState, FeatureStates};
use links::{Detacher, OwnedLink};

use crate::discovery::asyncio::AsyncioModule;

/// The eBPF object built by build.rs (empty when built with AYA_BUILD_SKIP=1).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/scouter-ebpf"));

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
    /// Not the verifier's doing (its log is empty): the kernel does not allow this kind of
    /// program here. The error is in the message only, so a chain of sources does not say it twice.
    #[error("the kernel refused program {program} before verifying it: {error}")]
    Refused { program: &'static str, error: std::io::Error },

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
    #[error("reading the kernel's BTF for fentry/fexit: {0}")]
    KernelBtf(#[source] aya::BtfError),
    #[error("reading the kernel's BTF: {0}")]
    Btf(#[from] kernel_btf::BtfError),
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
    /// How socket I/O may be captured.
    pub io_capture: IoCaptureChoice,
}

impl Default for ProbeOptions {
    /// Every feature on, as `check` loads the programs.
    fn default() -> Self {
        Self {
            propagate: true,
            max_transaction: Duration::from_secs(300),
            function_spans: true,
            io_capture: IoCaptureChoice::Auto,
        }
    }
}

/// The loaded, attached programs and the maps userspace uses. A feature the kernel refused
/// has no probes here (`None`), and what would use it does nothing.
pub struct Probes {
    /// Holds the programs and maps (the links are held apart, see [`links`]).
    ebpf: Ebpf,
    capture: IoCapture,
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
        let candidates = IoCapture::candidates(options.io_capture);
        let kernel_btf = aya::Btf::from_sys_fs().map_err(ProbeError::KernelBtf)?;
        let mut refused: Option<(IoCapture, String)> = None;
        for (index, capture) in candidates.iter().copied().enumerate() {
            let last = index + 1 == candidates.len();
            if let Some(why) = capture.unavailable(&kernel_btf).filter(|_| !last) {
                tracing::warn!(capture = %capture, reason = %why, "socket I/O capture unavailable, falling back");
                refused.get_or_insert((capture, why));
                continue;
            }
            match Self::attach_with(options, capture, &kernel_btf) {
                Ok((mut probes, events)) => {
                    if let Some((preferred, why)) = refused {
                        let cost = if capture.on_socket_layer() {
                            ""
                        } else {
                            ": every read and write on the host runs a program"
                        };
                        let degraded = format!("{capture}, because {preferred} is unavailable ({why}){cost}");
                        probes.features.set(Feature::Core, FeatureState::Degraded(degraded));
                    }
                    return Ok((probes, events));
                }
                Err(error) if !last => {
                    let why = crate::errors::with_causes(&error);
                    tracing::warn!(capture = %capture, reason = %why, "socket I/O capture unavailable, falling back");
                    refused.get_or_insert((capture, why));
                }
                Err(error) => return Err(error),
            }
        }
        unreachable!("every choice has a capture")
    }

    /// Loads the object for `capture` and attaches its programs.
    fn attach_with(
        options: ProbeOptions,
        capture: IoCapture,
        kernel_btf: &aya::Btf,
    ) -> Result<(Self, RingBuf<MapData>), ProbeError> {
        let (mut ebpf, fsbase_offset) = load_object(options, capture)?;
        let mut features = FeatureStates::new(capture);
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
        if capture == IoCapture::Syscalls && options.propagate && !verifier::sock_ops_knows_thread() {
            // Options pending per thread (socket ids are descriptors) are out of the sockops
            // program's reach on this kernel: it sends none.
            let why = "this kernel's sockops programs cannot tell the writing thread: contexts are received, not sent";
            features.set(Feature::TcpOption, FeatureState::Degraded(why.into()));
        }
        let mut loaded = Vec::new();
        for (program, result) in loading::load_programs(&mut ebpf, &features.wanted_programs(), kernel_btf) {
            let error = match result {
                Ok(()) => {
                    loaded.push(program);
                    continue;
                }
                Err(error) => error,
            };
            if IoCapture::is_optional(program) {
                tracing::debug!(program, %error, "optional hook not on this kernel");
                continue;
            }
            let needing: Vec<Feature> =
                Feature::ALL.into_iter().filter(|feature| features.programs_of(*feature).contains(&program)).collect();
            for feature in needing {
                if feature == Feature::Core {
                    return Err(error);
                }
                features.unavailable(feature, crate::errors::with_causes(&error));
            }
        }
        let mut core_links = Vec::new();
        for (program, category, names) in capture::PROCESS_TRACEPOINTS {
            core_links.extend(attach_tracepoint(&mut ebpf, program, category, names)?);
        }
        for (program, _) in capture::CONNECTION_TRACEPOINTS {
            core_links.push(attach_btf_tracepoint(&mut ebpf, program)?);
        }
        match capture {
            IoCapture::SocketFunctions => {
                for function in capture::SOCKET_FUNCTIONS.iter().filter(|function| loaded.contains(&function.program)) {
                    core_links.push(attach_socket_function(&mut ebpf, function)?);
                }
            }
            IoCapture::SocketTracepoints => {
                for (program, _) in capture::SOCKET_TRACEPOINTS {
                    core_links.push(attach_btf_tracepoint(&mut ebpf, program)?);
                }
            }
            IoCapture::Syscalls => {
                for (program, category, names) in capture::SYSCALL_TRACEPOINTS {
                    core_links.extend(attach_tracepoint(&mut ebpf, program, category, names)?);
                }
            }
        }
        let propagation = propagation::attach(&mut ebpf, &mut features);
        let stacks = features.load(Feature::PythonStacks, || python_stacks::StackProbes::new(&mut ebpf));
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
            capture,
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

    /// How socket I/O is captured here.
    pub fn capture(&self) -> IoCapture {
        self.capture
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

    /// Lets requests on connections `pid` opened before the agent saw them (descriptors `fds`)
    /// carry `traceparent` too; how many joined.
    pub fn join_connections(&mut self, pid: u32, fds: &[u32]) -> Result<usize, propagation::JoinError> {
        match self.propagation.as_mut() {
            Some(propagation) if self.features.is_enabled(Feature::HeaderInsertion) => {
                propagation.join_connections(pid, fds)
            }
            _ => Ok(0),
        }
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

/// Loads the object (maps created, programs not yet loaded) with the globals this kernel and
/// `capture` need; returns it and the thread-pointer offset (`u32::MAX`: stacks are not read).
fn load_object(options: ProbeOptions, capture: IoCapture) -> Result<(Ebpf, u32), ProbeError> {
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
    let btf = kernel_btf::KernelBtf::read()?;
    let view = btf.view()?;
    let fsbase_offset = view.task_fsbase_offset().unwrap_or_else(|error| {
        tracing::warn!(%error, "Python stacks are not read on this kernel (no thread-pointer offset)");
        u32::MAX
    });
    let layout = if capture.on_socket_layer() { capture::kernel_layout(&view)? } else { Default::default() };
    let ebpf = EbpfLoader::new()
        .override_global(global_names::FORK_CHILD_PID_OFFSET, &fork_child, true)
        .override_global(global_names::EXIT_GROUP_DEAD_OFFSET, &exit_group_dead, true)
        .override_global(global_names::MAX_TRANSACTION_NS, &max_transaction_ns, true)
        .override_global(global_names::TASK_FSBASE_OFFSET, &fsbase_offset, true)
        .override_global(global_names::CAPTURE, &capture.global(), true)
        .override_global(global_names::KERNEL_LAYOUT, &layout, true)
        .override_global(global_names::SOCKOPS_THREADS, &u32::from(verifier::sock_ops_knows_thread()), true)
        .verifier_log_level(aya::VerifierLogLevel::STATS)
        .load(EBPF_OBJECT)
        .map_err(ProbeError::Load)?;
    Ok((ebpf, fsbase_offset))
}

/// The verifier's statistics for every program of the object, loaded as `run` loads it.
pub fn verifier_stats(options: ProbeOptions, capture: IoCapture) -> Result<Vec<verifier::ProgramStats>, ProbeError> {
    let (ebpf, _) = load_object(options, capture)?;
    let target = |program: &str| {
        capture::socket_function(program).map(|function| function.function).or_else(|| capture::btf_tracepoint(program))
    };
    verifier::program_stats(EBPF_OBJECT, &ebpf, target).map_err(ProbeError::Stats)
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
        links.extend(self.propagation.as_mut().map(|propagation| propagation.take_links()).unwrap_or_default());
        self.detacher.detach(links);
        self.detacher.finish();
    }
}

pub(crate) fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))
}

/// Attaches the loaded socket-layer program to its kernel function; returns the link.
fn attach_socket_function(ebpf: &mut Ebpf, function: &capture::SocketFunction) -> Result<OwnedLink, ProbeError> {
    let program = function.program;
    let found = ebpf.program_mut(program).ok_or(ProbeError::MissingProgram(program))?;
    let attach_error = |source| ProbeError::AttachProgram { program, source };
    if function.on_return {
        let fexit: &mut FExit = found.try_into().map_err(attach_error)?;
        let id = fexit.attach().map_err(attach_error)?;
        Ok(Box::new(fexit.take_link(id).map_err(attach_error)?))
    } else {
        let fentry: &mut FEntry = found.try_into().map_err(attach_error)?;
        let id = fentry.attach().map_err(attach_error)?;
        Ok(Box::new(fentry.take_link(id).map_err(attach_error)?))
    }
}

/// Attaches a loaded BTF-tracepoint program; returns the link.
fn attach_btf_tracepoint(ebpf: &mut Ebpf, program: &'static str) -> Result<OwnedLink, ProbeError> {
    let found = ebpf.program_mut(program).ok_or(ProbeError::MissingProgram(program))?;
    let attach_error = |source| ProbeError::AttachProgram { program, source };
    let tracepoint: &mut BtfTracePoint = found.try_into().map_err(attach_error)?;
    let id = tracepoint.attach().map_err(attach_error)?;
    Ok(Box::new(tracepoint.take_link(id).map_err(attach_error)?))
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
