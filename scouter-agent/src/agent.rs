//! The agent: wires discovery → probes → events → spans → export, until SIGINT or SIGTERM.
//!
//! One task owns all mutable state (tracked processes, connection assembly) and reacts to
//! three sources: ring-buffer records, results of process inspections (which read files and so
//! run on the blocking pool), and timers. Probes are attached before the initial /proc scan so
//! no process can start unseen between the two.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::config::{AgentConfig, KubernetesApi, KubernetesConfig};
use crate::discovery::kubernetes::{self, PodChange, PodDirectory, PodMetadata};
use crate::discovery::rules::{PodFacts, ProcessFacts, Verdict};
use crate::discovery::{self, PythonProcess, Skip, UntracedProcesses};
use crate::events::{self, CallOutcome, FunctionEntry, KernelEvent, Peer, WallClock};
use crate::export::Pipeline;
use crate::frames::attach::{self as layouts, CheckedLayout, LayoutError};
use crate::frames::calls::CalledFunction;
use crate::frames::layout::VersionLayout;
use crate::frames::ProcessStacks;
use crate::health::{self, AgentStatus};
use crate::merge::receivers;
use crate::merge::{MergeCounters, Merger, SdkBatch};
use crate::probes::eval_hook;
use crate::probes::{ProbeOptions, Probes};
use crate::spans::assembly::{Assembler, CompletedExchange, Role};
use crate::spans::code_attribution::CodeAttributions;
use crate::spans::function_span::{CallEnd, FunctionSpans, StartedCall};
use crate::spans::http_span::{span_from_exchange, span_from_failed_connect};
use crate::spans::propagation;
use crate::spans::{AttributeValue, Resource, Span, SpanId, TraceId};

/// Records handled per wake-up before other sources get a turn.
const MAX_RECORDS_PER_WAKE: usize = 4096;
/// Accepted SDK requests waiting for the event loop; beyond it the receivers answer "retry".
const SDK_BATCHES_QUEUED: usize = 1024;
/// Unframed responses quiet this long are considered complete.
const RESPONSE_IDLE: Duration = Duration::from_secs(5);
/// Connections silent this long are forgotten (their close was missed).
const CONNECTION_FORGET: Duration = Duration::from_secs(15 * 60);
/// Retries for a process whose interpreter is not readable yet (just exec'd).
const INSPECTION_RETRIES: u32 = 3;
/// When a process's layout is checked again while its interpreter is still starting.
const LAYOUT_RETRY_DELAYS_MS: [u64; 6] = [100, 300, 1_000, 3_000, 10_000, 30_000];

pub fn run(config: AgentConfig) -> anyhow::Result<()> {
    crate::check::require_privileges()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_until_signal(config))
}

/// Why a process was inspected, and how many times already.
#[derive(Clone, Copy, Debug)]
struct Inspection {
    pid: u32,
    attempt: u32,
}

type InspectionResult = (Inspection, Result<PythonProcess, Skip>);

/// What the process rules decided about a process.
enum Selection {
    Excluded,
    /// The rules depend on the metadata of this pod (uid), not received yet.
    AwaitingPod(String),
    Selected {
        rule_name: Option<String>,
        pod: Option<Arc<PodMetadata>>,
    },
}

/// Names and describes `process` with what the rules and its pod say (logged when a pod did).
fn describe(process: &mut PythonProcess, rule_name: Option<&str>, pod: Option<&PodMetadata>) {
    process.describe_with(rule_name, pod);
    if let Some(pod) = pod {
        tracing::info!(pid = process.pid, pod = %pod.name, namespace = %pod.namespace, service = %process.service_name, "process described by its pod");
    }
}

/// Starts watching this node's pods when configured: the directory the watcher fills, and its
/// notices of pods added, changed or deleted (a channel that never yields otherwise).
fn watch_pods(config: Option<&KubernetesConfig>) -> (Option<PodDirectory>, mpsc::UnboundedReceiver<PodChange>) {
    let (changed, changes) = mpsc::unbounded_channel();
    let Some(config) = config else { return (None, changes) };
    let api = match &config.api {
        KubernetesApi::InCluster => match kubernetes::ApiServer::in_cluster() {
            Ok(api) => api,
            Err(error) => {
                tracing::warn!(%error, "no pod metadata: cannot reach the API server from this pod");
                return (None, changes);
            }
        },
        KubernetesApi::Url(url) => kubernetes::ApiServer::plain(url),
    };
    let directory = PodDirectory::default();
    tracing::info!(node = %config.node_name, api = api.base_url(), "watching this node's pods");
    tokio::spawn(kubernetes::watch_pods(api, config.node_name.clone(), directory.clone(), changed));
    (Some(directory), changes)
}

/// A layout check of a process, and which attempt it was.
type LayoutResult = (PythonProcess, usize, Result<CheckedLayout, LayoutError>);

async fn run_until_signal(config: AgentConfig) -> anyhow::Result<()> {
    // Handlers first: a signal that arrives while probes attach must stop the agent cleanly,
    // not kill it with the default action.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let exporter = Pipeline::from_config(&config.export, &config.store)?;
    let merge_counters = Arc::new(MergeCounters::default());
    let status = Arc::new(AgentStatus::new(exporter.counters(), exporter.sink_counters(), Arc::clone(&merge_counters)));
    if let Some(listen) = config.metrics_listen {
        health::serve(listen, Arc::clone(&status)).await?;
    }
    let traced_pids = Arc::new(RwLock::new(Vec::new()));
    let (sdk_spans, mut sdk_batches) = mpsc::channel::<SdkBatch>(SDK_BATCHES_QUEUED);
    receivers::serve(&config.receivers, sdk_spans, Arc::clone(&traced_pids), Arc::clone(&merge_counters)).await;
    let options = ProbeOptions {
        propagate: config.propagate,
        max_transaction: config.max_transaction,
        function_spans: !config.functions.rules.is_empty(),
        io_capture: config.io_capture,
    };
    let (probes, ring) = Probes::attach(options).context("attaching the eBPF probes")?;
    status.set_features(probes.features());
    let (layout_checks, mut checked_layouts) = mpsc::unbounded_channel::<LayoutResult>();
    let merger = Merger::new(config.sdk_twin_window, merge_counters);
    let (pods, mut pod_changes) = watch_pods(config.kubernetes.as_ref());
    let mut agent = Agent::new(config, probes, exporter, layout_checks, Arc::clone(&status), merger, traced_pids);
    agent.pods = pods;
    let (inspections, mut inspected) = mpsc::unbounded_channel::<InspectionResult>();
    agent.scan_existing_processes();
    tracing::info!(
        processes = agent.processes.len(),
        features = %enabled_features(agent.probes.features()),
        propagation = %agent.probes.features().get(crate::probes::Feature::HeaderInsertion),
        route_templates = agent.config.routes.len(),
        "agent ready"
    );
    status.ready.store(true, std::sync::atomic::Ordering::Relaxed);

    // SAFETY: the ring buffer's map descriptor is owned by `RingFd` and lives as long as it.
    let mut ring = unsafe { AsyncFd::register_with_interest(RingFd(ring), tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
        .context("polling the events ring buffer")?;
    let mut expiry = tokio::time::interval(Duration::from_secs(1));
    let mut rescan = tokio::time::interval(agent.config.housekeeping_interval);
    rescan.reset();
    loop {
        tokio::select! {
            ready = ring.readable_mut() => {
                let mut guard = ready.context("waiting for kernel events")?;
                if agent.drain(&mut guard.get_inner_mut().0, &inspections) {
                    guard.clear_ready();
                }
            }
            Some((inspection, result)) = inspected.recv() => agent.decide(inspection, result, Some(&inspections)),
            Some((process, attempt, result)) = checked_layouts.recv() => agent.on_layout(process, attempt, result),
            Some(batch) = sdk_batches.recv() => agent.on_sdk_batch(batch),
            Some(change) = pod_changes.recv() => agent.on_pod_change(change),
            _ = expiry.tick() => agent.expire_and_report(),
            _ = rescan.tick() => agent.rescan(&inspections),
            _ = sigterm.recv() => { tracing::info!("SIGTERM received"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT received"); break; }
        }
    }
    // Events the kernel recorded before the signal belong to requests already served.
    while !agent.drain(&mut ring.get_mut().0, &inspections) {}
    agent.shutdown();
    Ok(())
}

/// The `error.type` of a failed `connect()` result, `None` when it succeeded or goes on in the
/// background.
fn connect_failure(result: i32) -> Option<&'static str> {
    match -result {
        0 | libc::EINPROGRESS => None,
        libc::ECONNREFUSED => Some("connection_refused"),
        libc::ETIMEDOUT => Some("timeout"),
        libc::EHOSTUNREACH => Some("host_unreachable"),
        libc::ENETUNREACH => Some("network_unreachable"),
        _ => Some("_OTHER"),
    }
}

/// The features that work here, for the ready line (the others were logged as they failed).
fn enabled_features(features: &crate::probes::FeatureStates) -> String {
    let enabled: Vec<&str> =
        features.iter().filter(|(_, state)| state.is_enabled()).map(|(feature, _)| feature.name()).collect();
    enabled.join(",")
}

/// Lets tokio poll the ring buffer's descriptor.
struct RingFd(RingBuf<MapData>);

impl std::os::fd::AsRawFd for RingFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

struct Agent {
    config: AgentConfig,
    probes: Probes,
    exporter: Pipeline,
    clock: WallClock,
    assembler: Assembler,
    processes: HashMap<u32, PythonProcess>,
    /// Local port of each listening socket (pid, fd) seen behind an accept.
    listener_ports: HashMap<(u32, u32), Option<u16>>,
    untraced: UntracedProcesses,
    /// Code objects of processes whose stacks the kernel reads.
    stacks: ProcessStacks,
    code: CodeAttributions,
    /// Function spans: open calls, and the decision about each code object seen.
    functions: FunctionSpans,
    /// By (pid, code object address): the code object's identity when decided, and the decision.
    decisions: HashMap<(u32, u64), (u64, Decision)>,
    layout_checks: mpsc::UnboundedSender<LayoutResult>,
    decode_errors: u64,
    last_kernel_counters: [u64; scouter_ebpf::counter::COUNT as usize],
    /// What the metrics and health endpoint reports.
    status: Arc<AgentStatus>,
    /// SDK spans joined with the agent's.
    merger: Merger,
    /// The traced pids, for the receivers to attribute SDK connections.
    traced_pids: Arc<RwLock<Vec<u32>>>,
    /// Native SDK builds already reported as unknown (one warning per build, not per process).
    unknown_native_builds: HashSet<String>,
    /// This node's pods, when watched.
    pods: Option<PodDirectory>,
    /// Processes whose selection waits for their pod's metadata, by pod uid.
    awaiting_pods: HashMap<String, Vec<PythonProcess>>,
}

impl Agent {
    fn new(
        config: AgentConfig,
        probes: Probes,
        exporter: Pipeline,
        layout_checks: mpsc::UnboundedSender<LayoutResult>,
        status: Arc<AgentStatus>,
        merger: Merger,
        traced_pids: Arc<RwLock<Vec<u32>>>,
    ) -> Self {
        Self {
            config,
            probes,
            exporter,
            clock: WallClock::new(),
            assembler: Assembler::default(),
            processes: HashMap::new(),
            listener_ports: HashMap::new(),
            untraced: UntracedProcesses::default(),
            stacks: ProcessStacks::default(),
            code: CodeAttributions::default(),
            functions: FunctionSpans::default(),
            decisions: HashMap::new(),
            layout_checks,
            decode_errors: 0,
            last_kernel_counters: Default::default(),
            status,
            merger,
            traced_pids,
            unknown_native_builds: HashSet::new(),
            pods: None,
            awaiting_pods: HashMap::new(),
        }
    }

    fn scan_existing_processes(&mut self) {
        for pid in discovery::all_pids() {
            let result = discovery::inspect(pid);
            self.decide(Inspection { pid, attempt: INSPECTION_RETRIES }, result, None);
        }
    }

    /// Looks again for Python processes whose exec the agent missed (e.g. a full ring buffer).
    fn rescan(&mut self, inspections: &mpsc::UnboundedSender<InspectionResult>) {
        let all: HashSet<u32> = discovery::all_pids().into_iter().collect();
        self.untraced.retain_alive(&all);
        for pid in all {
            if self.processes.contains_key(&pid) || self.untraced.is_unchanged(pid, &discovery::executable(pid)) {
                continue;
            }
            spawn_inspection(Inspection { pid, attempt: INSPECTION_RETRIES }, Duration::ZERO, inspections);
        }
    }

    /// Handles ring-buffer records; false when it stopped early to let other work run.
    fn drain(&mut self, ring: &mut RingBuf<MapData>, inspections: &mpsc::UnboundedSender<InspectionResult>) -> bool {
        for _ in 0..MAX_RECORDS_PER_WAKE {
            let Some(record) = ring.next() else { return true };
            let decoded = events::decode(&record, &self.clock);
            drop(record);
            match decoded {
                Ok(event) => self.on_event(event, inspections),
                Err(error) => {
                    self.decode_errors += 1;
                    tracing::debug!(%error, "undecodable kernel record dropped");
                }
            }
        }
        false
    }

    fn on_event(&mut self, event: KernelEvent, inspections: &mpsc::UnboundedSender<InspectionResult>) {
        match event {
            KernelEvent::ProcessExec { pid } => {
                spawn_inspection(Inspection { pid, attempt: 0 }, Duration::ZERO, inspections);
            }
            KernelEvent::ProcessFork { parent, child } => self.on_fork(parent, child),
            KernelEvent::ProcessExit { pid } => self.on_exit(pid),
            KernelEvent::Accepted { socket, listener, peer, time } => {
                let port = self.listener_port(socket.pid, listener);
                self.assembler.on_accept(socket, peer, port, time);
            }
            KernelEvent::Followed { socket, server, peer, local_port, time } => {
                self.assembler.on_followed(socket, server, peer, local_port, time);
            }
            KernelEvent::Connected { socket, peer, time, result } => match connect_failure(result) {
                None => self.assembler.on_connect(socket, peer, time, result == -libc::EINPROGRESS),
                Some(error) => {
                    self.assembler.on_connect_failed(socket, peer, time, error);
                    self.export_failed_connects();
                }
            },
            KernelEvent::Data(chunk) => {
                if let Some(context) = chunk.context {
                    self.code.request_started(chunk.socket, context);
                }
                let done = self.assembler.on_data(&chunk);
                self.export(done);
            }
            KernelEvent::Stack { socket, server, frames } => {
                let attribution = self.stacks.attribute(socket.pid, &frames);
                self.code.stack_seen(socket, server, attribution);
            }
            KernelEvent::Closed { socket, time } => {
                let done = self.assembler.on_close(socket, time);
                self.export(done);
                self.export_failed_connects();
                self.code.socket_closed(socket);
            }
            KernelEvent::FunctionEntered(entry) => self.on_function_entered(entry),
            KernelEvent::FunctionReturned { pid, span_id, time, outcome } => {
                self.on_function_returned(pid, span_id, time, outcome)
            }
            KernelEvent::SdkSpanActivated(activation) => self.merger.on_sdk_activation(&activation),
            KernelEvent::NativeSpanSeen { pid } => self.follow_native_sdk_spans(pid),
        }
    }

    /// `pid` made a native SDK's span current: the kernel reads such spans once the build's
    /// layout is known.
    fn follow_native_sdk_spans(&mut self, pid: u32) {
        match discovery::native_sdk::span_layout_of(pid) {
            Ok((layout, build)) => {
                tracing::info!(pid, build = build.package, "nesting a native SDK's spans with the agent's");
                self.probes.read_native_sdk_spans(pid, layout);
            }
            Err(error) => {
                // An unknown build is worth a warning once per build, not once per process.
                let first_of_build = match &error {
                    discovery::native_sdk::NativeSdkError::UnknownBuild { build_id, .. } => {
                        self.unknown_native_builds.insert(build_id.clone())
                    }
                    _ => false,
                };
                if first_of_build {
                    tracing::warn!(pid, %error, "native SDK spans stay as the SDK made them");
                } else {
                    tracing::debug!(pid, %error, "native SDK spans stay as the SDK made them");
                }
            }
        }
    }

    fn on_function_returned(&mut self, pid: u32, span_id: [u8; 8], time: u64, outcome: CallOutcome) {
        let how = match outcome {
            CallOutcome::Returned => CallEnd::Returned,
            CallOutcome::Raised { exception_type } => CallEnd::Raised(
                (exception_type != 0).then(|| self.stacks.exception_name(pid, exception_type)).flatten(),
            ),
            CallOutcome::Evicted => {
                self.functions.evicted(SpanId(span_id));
                return;
            }
        };
        if let Some(span) = self.functions.returned(SpanId(span_id), time, how) {
            self.submit(span);
        }
    }

    /// A selected (or undecided) function started: decide about its code object once, tell
    /// the kernel, and open its span if it is selected.
    fn on_function_entered(&mut self, entry: FunctionEntry) {
        let pid = entry.pid;
        let decision = self.decide_function(pid, entry.code, entry.identity, entry.globals);
        let context = entry.context;
        let parent = SpanId(context.parent_span_id);
        let parent = parent.is_valid().then_some(parent);
        let Decision::Selected { function, arguments } = decision else {
            if entry.tentative {
                self.functions.not_selected(SpanId(context.span_id), parent);
            }
            return;
        };
        let captured = entry
            .arguments
            .iter()
            .filter_map(|raw| {
                let (_, name) = arguments.iter().find(|(slot, _)| *slot == raw.slot)?;
                Some((name.clone(), self.stacks.argument_value(pid, &raw.bytes)?))
            })
            .collect();
        let resource = self.resource_of(pid);
        self.functions.started(StartedCall {
            pid,
            trace_id: TraceId(context.trace_id),
            span_id: SpanId(context.span_id),
            parent_span_id: parent,
            trace_flags: context.flags,
            start: entry.time,
            function,
            arguments: captured,
            resource,
        });
    }

    /// Whether `pid`'s code object `code` is selected (decided once, and told to the kernel).
    fn decide_function(&mut self, pid: u32, code: u64, identity: u64, globals: u64) -> Decision {
        // An address decided about before holds another code object if its identity changed
        // (the first was freed).
        if let Some((_, known)) = self.decisions.get(&(pid, code)).filter(|(decided, _)| *decided == identity) {
            return known.clone();
        }
        let service = self.processes.get(&pid).map(|p| p.service_name.clone()).unwrap_or_default();
        let called = self.stacks.called_function(pid, code, globals, LOCAL_NAMES_READ);
        let decision = match called {
            Some(called) => match self.config.functions.select(&service, &called.module, &called.code.qualname) {
                Some(wanted) => {
                    let arguments = argument_slots(&called, &wanted);
                    Decision::Selected { function: Arc::new(called), arguments }
                }
                None => Decision::Ignored,
            },
            None => {
                tracing::debug!(pid, code, "code object unreadable; its calls are ignored");
                Decision::Ignored
            }
        };
        if let Decision::Selected { function, .. } = &decision {
            tracing::debug!(pid, code, module = %function.module, qualname = %function.code.qualname, "function selected");
        }
        self.probes.set_code_verdict(pid, code, decision.for_kernel(identity));
        if self.decisions.len() >= MAX_DECISIONS {
            self.decisions.clear();
        }
        self.decisions.insert((pid, code), (identity, decision.clone()));
        decision
    }

    /// Reports `pid`'s calls if the user selected functions its service may have; on 3.11+
    /// this sets the evaluator hook, undone when the agent lets go of the process.
    fn trace_functions(&mut self, pid: u32, layout: &CheckedLayout) {
        let Some(process) = self.processes.get(&pid) else { return };
        if !self.config.functions.applies_to(&process.service_name) {
            match eval_hook::remove_leftover(pid, layout) {
                Ok(true) => tracing::info!(pid, "removed an evaluator hook left by an agent that did not stop cleanly"),
                Ok(false) => {}
                Err(error) => tracing::debug!(pid, %error, "no leftover evaluator hook check"),
            }
            return;
        }
        if self.probes.traces_calls(pid) {
            return;
        }
        let interpreter = process.interpreter_file();
        let version = process.version;
        let hook = match eval_hook::install(pid, layout) {
            Ok(hook) => hook,
            Err(error) => {
                tracing::warn!(pid, %version, %error, "python functions are not traced in this process");
                return;
            }
        };
        if let Err(error) = self.probes.trace_calls(pid, &interpreter, version.minor, layout.version.for_calls(), hook)
        {
            tracing::warn!(pid, %version, %error, "python functions are not traced in this process");
            if let Some(hook) = hook {
                let _ = hook.remove();
            }
            return;
        }
        tracing::info!(pid, %version, hooked = hook.is_some(), "tracing python functions");
    }

    /// Stops reporting `pid`'s calls; `restore` writes the evaluator hook back (the process
    /// lives on), otherwise the process is gone or its image replaced.
    fn untrace_functions(&mut self, pid: u32, restore: bool) {
        let hook = self.probes.untrace_calls(pid);
        self.decisions.retain(|(owner, _), _| *owner != pid);
        self.functions.process_exited(pid);
        if let (true, Some(hook)) = (restore, hook) {
            match hook.remove() {
                Ok(()) => tracing::info!(pid, "python functions no longer traced; evaluator hook removed"),
                Err(error) => tracing::warn!(pid, %error, "could not remove the evaluator hook"),
            }
        }
    }

    fn on_fork(&mut self, parent: u32, child: u32) {
        // The kernel tracks every task a tracked process creates; threads share the parent's
        // entry (lookups are by process id), so theirs are removed again, as are tasks that are
        // already gone (a short-lived thread may exit before this runs).
        if !discovery::is_process(child) {
            if !self.processes.contains_key(&child) {
                self.probes.untrack(child);
            }
            return;
        }
        let Some(process) = self.processes.get(&parent).map(|p| p.forked(child)) else { return };
        tracing::info!(pid = child, parent, version = %process.version, service = %process.service_name, "tracking python process (forked)");
        self.follow_sdk_contexts(&process);
        self.processes.insert(child, process);
        self.publish_traced_pids();
        // A fork's memory is its parent's image: the same layout and thread-state slot.
        if let Some(layout) = self.stacks.layout_of(parent) {
            self.read_stacks(child, layout);
        }
    }

    /// The kernel reads which span an in-process SDK made current in `process`.
    fn follow_sdk_contexts(&mut self, process: &PythonProcess) {
        if let Some(layout) = VersionLayout::for_minor(process.version.minor) {
            self.probes.track_sdk_contexts(process.pid, &process.interpreter_file(), layout.for_objects());
        }
    }

    fn on_exit(&mut self, pid: u32) {
        let done = self.assembler.on_process_exit(pid, self.clock.unix_now());
        self.export(done);
        self.export_failed_connects();
        if self.processes.remove(&pid).is_some() {
            tracing::info!(pid, "python process exited");
            self.publish_traced_pids();
        }
        self.listener_ports.retain(|(owner, _), _| *owner != pid);
        self.stop_reading_stacks(pid);
        self.probes.forget_sdk_contexts(pid);
        self.code.process_exited(pid);
        for waiting in self.awaiting_pods.values_mut() {
            waiting.retain(|process| process.pid != pid);
        }
        self.awaiting_pods.retain(|_, waiting| !waiting.is_empty());
    }

    fn decide(
        &mut self,
        inspection: Inspection,
        result: Result<PythonProcess, Skip>,
        retry: Option<&mpsc::UnboundedSender<InspectionResult>>,
    ) {
        let pid = inspection.pid;
        match result {
            Ok(process) => self.admit(process),
            Err(skip @ (Skip::NotPython | Skip::Gone)) => {
                // An exec can turn a traced Python process into something else.
                if self.processes.remove(&pid).is_some() {
                    self.probes.untrack(pid);
                    self.stop_reading_stacks(pid);
                    tracing::info!(pid, "process is no longer python; stopped tracing it");
                }
                if matches!(skip, Skip::NotPython) {
                    self.remember_untraced(pid);
                }
            }
            Err(Skip::UnknownVersion(error)) if inspection.attempt < INSPECTION_RETRIES => {
                if let Some(inspections) = retry {
                    let next = Inspection { pid, attempt: inspection.attempt + 1 };
                    let delay = Duration::from_millis(50 * u64::from(next.attempt));
                    tracing::debug!(pid, %error, attempt = next.attempt, "retrying inspection");
                    spawn_inspection(next, delay, inspections);
                }
            }
            Err(skip) => {
                if self.remember_untraced(pid) {
                    tracing::warn!(pid, reason = %skip, "not tracing this python process");
                }
            }
        }
    }

    /// Records that `pid` is left alone; true unless it already was, running the same executable.
    fn remember_untraced(&mut self, pid: u32) -> bool {
        self.untraced.remember(pid, discovery::executable(pid))
    }

    /// A Python process found: tracked, named and described with its pod's metadata if the
    /// process rules select it; left alone if they do not; kept aside while that depends on
    /// metadata of its pod not received yet.
    fn admit(&mut self, mut process: PythonProcess) {
        let pid = process.pid;
        match self.selection_of(&process) {
            Selection::Excluded => {
                tracing::info!(pid, executable = %process.executable.display(), "not traced: left out by the process rules");
                self.remember_untraced(pid);
            }
            Selection::AwaitingPod(uid) => {
                tracing::info!(pid, pod_uid = %uid, "waiting for the pod's metadata to apply the process rules");
                self.awaiting_pods.entry(uid).or_default().push(process);
            }
            Selection::Selected { rule_name, pod } => {
                describe(&mut process, rule_name.as_deref(), pod.as_deref());
                self.track(process);
            }
        }
    }

    /// What the process rules say of `process`, with its pod's metadata if known.
    fn selection_of(&self, process: &PythonProcess) -> Selection {
        let pod = self.pod_of(process);
        let rules = &self.config.process_rules;
        let ports = if rules.ask_ports() { discovery::sockets::listening_ports(process.pid) } else { Vec::new() };
        let container_id = process.container.as_ref().map(|container| container.id.as_str());
        let container = pod.as_deref().zip(container_id).and_then(|(pod, id)| pod.container_name(id));
        let pod_facts = match (&pod, &process.pod_uid) {
            (Some(pod), _) => PodFacts::Known { namespace: &pod.namespace, labels: &pod.labels, container },
            (None, Some(_)) if self.pods.is_some() => PodFacts::Pending,
            _ => PodFacts::None,
        };
        let facts = ProcessFacts { executable: &process.executable, ports: &ports, pod: pod_facts };
        let awaiting = || Selection::AwaitingPod(process.pod_uid.clone().unwrap_or_default());
        match (rules.selects(&facts), rules.service_name(&facts)) {
            (Verdict::No, _) => Selection::Excluded,
            (Verdict::Unknown, _) | (_, Err(())) => awaiting(),
            (Verdict::Yes, Ok(rule_name)) => Selection::Selected { rule_name: rule_name.map(str::to_owned), pod },
        }
    }

    /// The pod `process` runs in, if its metadata is known.
    fn pod_of(&self, process: &PythonProcess) -> Option<Arc<PodMetadata>> {
        let pods = self.pods.as_ref()?;
        let by_container = process.container.as_ref().and_then(|container| pods.by_container_id(&container.id));
        by_container.or_else(|| pods.by_uid(process.pod_uid.as_deref()?))
    }

    /// A pod of this node was added, changed or deleted: the processes waiting for it are
    /// decided, and the traced ones in it described anew.
    fn on_pod_change(&mut self, change: PodChange) {
        for process in self.awaiting_pods.remove(&change.uid).unwrap_or_default() {
            if discovery::is_process(process.pid) {
                self.admit(process);
            }
        }
        let in_pod: Vec<u32> = self
            .processes
            .values()
            .filter(|p| p.pod_uid.as_deref() == Some(change.uid.as_str()))
            .map(|p| p.pid)
            .collect();
        for pid in in_pod {
            let Some(mut process) = self.processes.get(&pid).cloned() else { continue };
            if let Selection::Selected { rule_name, pod } = self.selection_of(&process) {
                describe(&mut process, rule_name.as_deref(), pod.as_deref());
                self.processes.insert(pid, process);
            }
        }
    }

    /// The connections `pid` opened before it was tracked (a warm pool) join those the kernel
    /// inserts `traceparent` into.
    fn join_open_connections(&mut self, pid: u32) {
        let fds = discovery::sockets::client_connections(pid);
        match self.probes.join_connections(pid, &fds) {
            Ok(0) => {}
            Ok(joined) => {
                tracing::info!(pid, connections = joined, "open connections joined for traceparent insertion")
            }
            Err(error) => tracing::warn!(
                pid,
                %error,
                "requests on connections opened before tracking carry no traceparent"
            ),
        }
    }

    fn track(&mut self, process: PythonProcess) {
        let pid = process.pid;
        if !self.config.pids.is_empty() && !self.config.pids.contains(&pid) {
            self.remember_untraced(pid);
            return;
        }
        if let Err(error) = self.probes.track(pid) {
            tracing::warn!(pid, %error, "cannot track process (tracked-process map full?)");
            return;
        }
        self.join_open_connections(pid);
        let is_new = self.processes.get(&pid).is_none_or(|known| known.executable != process.executable);
        if is_new {
            tracing::info!(
                pid,
                version = %process.version,
                service = %process.service_name,
                interpreter = %process.interpreter_binary.display(),
                "tracking python process"
            );
            self.probes.track_asyncio(&discovery::asyncio::module_of(&process));
            self.probes.track_contexts(&process.interpreter_file());
            self.follow_sdk_contexts(&process);
            // An exec replaced the memory image: the old layout must not read the new one.
            self.stop_reading_stacks(pid);
            if self.probes.reads_stacks() {
                spawn_layout_check(process.clone(), 0, Duration::ZERO, &self.layout_checks);
            }
        }
        // On every inspection, not only the first: the maps may show a libssl the files did not.
        for library in discovery::libssl::libraries_of(&process) {
            self.probes.track_tls(&library);
        }
        self.untraced.forget(pid);
        self.processes.insert(pid, process);
        if is_new {
            self.publish_traced_pids();
        }
    }

    fn publish_traced_pids(&self) {
        if let Ok(mut pids) = self.traced_pids.write() {
            *pids = self.processes.keys().copied().collect();
        }
    }

    /// A layout check finished: the kernel reads the process's stacks, or the agent says why
    /// not (and tries again while the interpreter is still starting).
    fn on_layout(&mut self, process: PythonProcess, attempt: usize, result: Result<CheckedLayout, LayoutError>) {
        let pid = process.pid;
        if self.processes.get(&pid).is_none_or(|known| known.executable != process.executable) {
            return;
        }
        match result {
            Ok(layout) => {
                tracing::info!(pid, version = %process.version, "reading python stacks");
                self.read_stacks(pid, layout);
            }
            Err(error) if error.is_transient() && attempt < LAYOUT_RETRY_DELAYS_MS.len() => {
                let delay = Duration::from_millis(LAYOUT_RETRY_DELAYS_MS[attempt]);
                spawn_layout_check(process, attempt + 1, delay, &self.layout_checks);
            }
            Err(error) => {
                tracing::warn!(pid, version = %process.version, %error, "python stacks unavailable for this process; its spans have no code.* attributes");
            }
        }
    }

    fn read_stacks(&mut self, pid: u32, layout: CheckedLayout) {
        if let Err(error) = self.stacks.add(pid, layout) {
            tracing::warn!(pid, %error, "cannot read the process's memory; its spans have no code.* attributes");
            return;
        }
        if let Err(error) = self.probes.read_stacks(pid, layout.kernel) {
            tracing::warn!(pid, %error, "cannot hand the process's layout to the kernel");
            self.stacks.remove(pid);
            return;
        }
        self.trace_functions(pid, &layout);
    }

    /// Stops reading `pid`'s stacks and calls: it exited, is no longer Python, or an exec
    /// replaced its image (there is no hook left to undo in any of these).
    fn stop_reading_stacks(&mut self, pid: u32) {
        self.untrace_functions(pid, false);
        self.stacks.remove(pid);
        self.probes.forget_stacks(pid);
    }

    fn listener_port(&mut self, pid: u32, listener: u64) -> Option<u16> {
        let fd = u32::try_from(listener).ok()?;
        *self.listener_ports.entry((pid, fd)).or_insert_with(|| discovery::sockets::local_port(pid, fd))
    }

    fn export(&mut self, done: Vec<CompletedExchange>) {
        for exchange in done {
            // An SDK exporting to the agent is the agent's own plumbing: a span per export
            // would be exported in turn, and so on.
            if self.is_sent_to_a_receiver(&exchange) {
                continue;
            }
            let resource = self.resource_of(exchange.socket.pid);
            let mut span = span_from_exchange(&exchange, resource, &self.config.routes);
            self.code.apply(exchange.socket.pid, &mut span);
            self.functions.reparent(&mut span);
            // The process wrote the request's trace context itself (an SDK did): the SDK will
            // report this call too.
            let context_from_the_process =
                exchange.role == Role::Client && propagation::extract(&exchange.request.fields).is_some();
            if let Some(span) = self.merger.on_agent_span(span, context_from_the_process, Instant::now()) {
                self.export_span(span);
            }
        }
    }

    fn is_sent_to_a_receiver(&self, exchange: &CompletedExchange) -> bool {
        match exchange.peer {
            Peer::Ip { addr, port } => exchange.role == Role::Client && self.config.receivers.is_receiver(addr, port),
            Peer::Unix | Peer::Unknown => false,
        }
    }

    /// A span of the agent's own: a child of a dropped tentative call gets that call's parent.
    fn submit(&mut self, mut span: Span) {
        self.functions.reparent(&mut span);
        if let Some(span) = self.merger.on_agent_span(span, false, Instant::now()) {
            self.export_span(span);
        }
    }

    /// SDK spans a receiver accepted: attributed to their process, merged with their twins.
    fn on_sdk_batch(&mut self, batch: SdkBatch) {
        let processes = &self.processes;
        let spans =
            self.merger.on_sdk_batch(batch, |pid| processes.get(&pid).map(|process| Arc::clone(&process.resource)));
        for span in spans {
            self.export_span(span);
        }
    }

    /// To the sinks, with the configured tags.
    fn export_span(&mut self, mut span: Span) {
        tracing::debug!(trace_id = %span.trace_id, name = %span.name, "span finished");
        self.config.tags.apply(&mut span);
        self.exporter.submit(span);
    }

    fn export_failed_connects(&mut self) {
        for failed in self.assembler.take_failed_connects() {
            let resource = self.resource_of(failed.socket.pid);
            self.submit(span_from_failed_connect(&failed, resource));
        }
    }

    /// The process's resource; a minimal one if the process was forgotten meanwhile.
    fn resource_of(&self, pid: u32) -> Arc<Resource> {
        match self.processes.get(&pid) {
            Some(process) => Arc::clone(&process.resource),
            None => {
                let mut resource = Resource::default();
                resource.attributes.insert("process.pid".into(), AttributeValue::from(pid));
                resource.attributes.insert("service.name".into(), "unknown_service:python".into());
                Arc::new(resource)
            }
        }
    }

    fn expire_and_report(&mut self) {
        self.status.tick();
        self.status.processes_attached.store(self.processes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let done = self.assembler.expire(self.clock.unix_now(), RESPONSE_IDLE, CONNECTION_FORGET);
        self.export(done);
        for span in self.merger.expired(Instant::now()) {
            self.export_span(span);
        }
        self.report_kernel_drops();
    }

    fn report_kernel_drops(&mut self) {
        let counters = self.probes.kernel_counters();
        if counters != self.last_kernel_counters {
            let named: Vec<(&'static str, u64)> = scouter_ebpf::counter::NAMES.into_iter().zip(counters).collect();
            let listed: Vec<String> = named.iter().map(|(name, count)| format!("{name}={count}")).collect();
            tracing::warn!(counters = %listed.join(" "), "kernel-side drops and skipped propagation (cumulative)");
            self.last_kernel_counters = counters;
            *self.status.kernel_drops.lock().unwrap_or_else(|e| e.into_inner()) = named;
        }
    }

    fn shutdown(mut self) {
        let done = self.assembler.finish_all();
        self.export(done);
        for pid in self.probes.call_traced_processes() {
            self.untrace_functions(pid, true);
        }
        for span in self.merger.drain() {
            self.export_span(span);
        }
        let stats = self.assembler.stats();
        drop(self.probes);
        tracing::info!("probes detached");
        let counters = self.exporter.counters();
        self.exporter.shutdown();
        tracing::info!(
            spans = counters.produced.load(std::sync::atomic::Ordering::Relaxed),
            sampled_out = counters.sampled_out.load(std::sync::atomic::Ordering::Relaxed),
            not_http = stats.not_http,
            unanswered = stats.unanswered,
            lost_sync = stats.lost_sync,
            decode_errors = self.decode_errors,
            "agent stopped; spans flushed"
        );
    }
}

/// Decisions about code objects remembered (host-wide) before starting over.
const MAX_DECISIONS: usize = 262_144;
/// Local slot names read per function: the captured arguments are found among them.
const LOCAL_NAMES_READ: usize = 64;

/// The agent's decision about one code object.
#[derive(Clone, Debug)]
enum Decision {
    /// Its calls are spans; these (slot, name) arguments are captured. Shared: every call's
    /// span names the same function.
    Selected {
        function: Arc<CalledFunction>,
        arguments: Vec<(u8, String)>,
    },
    Ignored,
}

impl Decision {
    fn for_kernel(&self, identity: u64) -> scouter_ebpf::FunctionVerdict {
        let mut verdict = scouter_ebpf::FunctionVerdict {
            verdict: scouter_ebpf::verdict::IGNORED,
            arguments: [scouter_ebpf::NO_ARGUMENT; scouter_ebpf::MAX_CAPTURED_ARGUMENTS],
            _pad: [0; 1],
            identity,
        };
        if let Decision::Selected { arguments, .. } = self {
            verdict.verdict = scouter_ebpf::verdict::SELECTED;
            for (slot, (index, _)) in verdict.arguments.iter_mut().zip(arguments) {
                *slot = *index;
            }
        }
        verdict
    }
}

/// The local slots of the wanted arguments (those the function has), in the function's order,
/// as many as the kernel captures.
fn argument_slots(called: &CalledFunction, wanted: &[String]) -> Vec<(u8, String)> {
    called
        .code
        .local_names
        .iter()
        .enumerate()
        .filter(|(_, name)| wanted.contains(name))
        .filter_map(|(slot, name)| Some((u8::try_from(slot).ok()?, name.clone())))
        .take(scouter_ebpf::MAX_CAPTURED_ARGUMENTS)
        .collect()
}

fn spawn_inspection(inspection: Inspection, delay: Duration, results: &mpsc::UnboundedSender<InspectionResult>) {
    let results = results.clone();
    tokio::spawn(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let pid = inspection.pid;
        if let Ok(result) = tokio::task::spawn_blocking(move || discovery::inspect(pid)).await {
            let _ = results.send((inspection, result));
        }
    });
}

fn spawn_layout_check(
    process: PythonProcess,
    attempt: usize,
    delay: Duration,
    results: &mpsc::UnboundedSender<LayoutResult>,
) {
    let results = results.clone();
    tokio::spawn(async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let checked = process.clone();
        if let Ok(result) = tokio::task::spawn_blocking(move || layouts::check(&checked)).await {
            let _ = results.send((process, attempt, result));
        }
    });
}
