//! What the loaded programs can do on this kernel, feature by feature.
//!
//! Only the core (following processes and their sockets' bytes) is required: without it there
//! is nothing to trace, and the agent refuses to start. Every other feature has programs of its
//! own, and a kernel that refuses one of them (a verifier that rejects it, a hook it lacks)
//! turns that feature off and nothing else: the agent logs one line naming the feature, the
//! program and the kernel's reason, `/metrics` shows `scouter_agent_feature_enabled{feature}`
//! at 0, and `scouter-agent check` reports it. Spans that lose a feature say less, never
//! something false: without asyncio task probes, for example, a client call's parent is left
//! out rather than guessed from the thread.

use std::fmt;

use super::IoCapture;

/// A capability of the agent that has programs of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Feature {
    /// Process tracking and socket I/O spans: required.
    Core,
    /// Spans for selected Python functions (`--function`).
    FunctionSpans,
    /// Nesting with in-process SDKs' spans (the SDK's current span, per thread or task).
    SdkContexts,
    /// Which request each asyncio task works for.
    AsyncioTasks,
    /// Requests carried to pool threads in a copied `contextvars.Context`.
    ContextThreads,
    /// The Python code that made a request (`code.*` attributes).
    PythonStacks,
    /// HTTPS plaintext from libssl.
    Tls,
    /// `traceparent` inserted into outgoing plain-HTTP requests.
    HeaderInsertion,
    /// Trace context carried across TLS hops in a TCP header option.
    TcpOption,
}

impl Feature {
    pub const ALL: [Feature; 9] = [
        Feature::Core,
        Feature::FunctionSpans,
        Feature::SdkContexts,
        Feature::AsyncioTasks,
        Feature::ContextThreads,
        Feature::PythonStacks,
        Feature::Tls,
        Feature::HeaderInsertion,
        Feature::TcpOption,
    ];

    /// The name in logs, metrics and `check`.
    pub fn name(self) -> &'static str {
        match self {
            Feature::Core => "core",
            Feature::FunctionSpans => "function_spans",
            Feature::SdkContexts => "sdk_contexts",
            Feature::AsyncioTasks => "asyncio_tasks",
            Feature::ContextThreads => "context_threads",
            Feature::PythonStacks => "python_stacks",
            Feature::Tls => "tls",
            Feature::HeaderInsertion => "header_insertion",
            Feature::TcpOption => "tcp_option",
        }
    }

    /// The programs it needs with socket I/O captured by `capture`: a feature works when they
    /// all load (and attach). Python stacks are read by the I/O programs themselves (a
    /// subprogram of theirs), and only need the kernel's thread-pointer offset.
    pub fn programs(self, capture: IoCapture) -> Vec<&'static str> {
        use super::{asyncio, contextvars, propagation, python_calls, sdk_context, tls};
        match self {
            Feature::Core => capture.core_programs(),
            Feature::FunctionSpans => python_calls::PROGRAMS.to_vec(),
            Feature::SdkContexts => sdk_context::PROGRAMS.to_vec(),
            Feature::AsyncioTasks => asyncio::PROGRAMS.to_vec(),
            Feature::ContextThreads => contextvars::PROGRAMS.to_vec(),
            Feature::PythonStacks => Vec::new(),
            Feature::Tls => tls::PROGRAMS.to_vec(),
            Feature::HeaderInsertion => propagation::HEADER_PROGRAMS.to_vec(),
            Feature::TcpOption => propagation::OPTION_PROGRAMS.to_vec(),
        }
    }

    /// What a user loses without it.
    pub fn without(self) -> &'static str {
        match self {
            Feature::Core => "nothing can be traced",
            Feature::FunctionSpans => "no spans for selected Python functions",
            Feature::SdkContexts => "in-process SDK spans are forwarded but not nested with the agent's",
            Feature::AsyncioTasks => "client calls of asyncio tasks get no parent",
            Feature::ContextThreads => "calls run on pool threads (asyncio.to_thread) start traces of their own",
            Feature::PythonStacks => "spans carry no code.* attributes",
            Feature::Tls => "HTTPS is not traced",
            Feature::HeaderInsertion => "outgoing plain-HTTP requests carry no traceparent",
            Feature::TcpOption => "trace context does not cross TLS hops",
        }
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether a feature works here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeatureState {
    Enabled,
    /// Works, with less than it could (the reason says what).
    Degraded(String),
    /// Turned off by configuration.
    Off(String),
    /// The kernel cannot run it (the reason says why).
    Unavailable(String),
}

impl fmt::Display for FeatureState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FeatureState::Enabled => f.write_str("on"),
            FeatureState::Degraded(why) => write!(f, "degraded ({why})"),
            FeatureState::Off(why) => write!(f, "off ({why})"),
            FeatureState::Unavailable(why) => write!(f, "unavailable ({why})"),
        }
    }
}

impl FeatureState {
    /// Whether its programs run.
    pub fn is_enabled(&self) -> bool {
        matches!(self, FeatureState::Enabled | FeatureState::Degraded(_))
    }
}

/// The state of every feature, as found when the programs were loaded with socket I/O
/// captured by `capture`.
#[derive(Clone, Debug)]
pub struct FeatureStates {
    capture: IoCapture,
    states: Vec<(Feature, FeatureState)>,
}

impl FeatureStates {
    /// Every feature enabled, until loading says otherwise.
    pub fn new(capture: IoCapture) -> Self {
        Self { capture, states: Feature::ALL.iter().map(|feature| (*feature, FeatureState::Enabled)).collect() }
    }

    /// [`Feature::programs`] with this capture.
    pub fn programs_of(&self, feature: Feature) -> Vec<&'static str> {
        feature.programs(self.capture)
    }

    pub fn get(&self, feature: Feature) -> &FeatureState {
        &self.states.iter().find(|(known, _)| *known == feature).expect("every feature has a state").1
    }

    pub fn is_enabled(&self, feature: Feature) -> bool {
        self.get(feature).is_enabled()
    }

    pub fn set(&mut self, feature: Feature, state: FeatureState) {
        if let Some(slot) = self.states.iter_mut().find(|(known, _)| *known == feature) {
            slot.1 = state;
        }
    }

    /// Marks `feature` unavailable for `reason`, logged once as the agent's one line about it
    /// (a feature already unavailable keeps its first reason).
    pub fn unavailable(&mut self, feature: Feature, reason: String) {
        if matches!(self.get(feature), FeatureState::Unavailable(_)) {
            return;
        }
        tracing::warn!(feature = feature.name(), %reason, "feature unavailable on this kernel: {}", feature.without());
        self.set(feature, FeatureState::Unavailable(reason));
    }

    /// Runs `load` for `feature`'s programs; on failure the feature is unavailable (and
    /// `None` returned), the agent carries on.
    pub fn load<T, E: std::error::Error>(
        &mut self,
        feature: Feature,
        load: impl FnOnce() -> Result<T, E>,
    ) -> Option<T> {
        if !self.is_enabled(feature) {
            return None;
        }
        match load() {
            Ok(loaded) => Some(loaded),
            Err(error) => {
                self.unavailable(feature, crate::errors::with_causes(&error));
                None
            }
        }
    }

    /// Every program the enabled features need, each once.
    pub fn wanted_programs(&self) -> Vec<&'static str> {
        let mut wanted: Vec<&'static str> = Vec::new();
        for (feature, state) in &self.states {
            if state.is_enabled() {
                for program in feature.programs(self.capture) {
                    if !wanted.contains(&program) {
                        wanted.push(program);
                    }
                }
            }
        }
        wanted
    }

    pub fn iter(&self) -> impl Iterator<Item = (Feature, &FeatureState)> {
        self.states.iter().map(|(feature, state)| (*feature, state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("the kernel verifier rejected program ssl_write: R1 invalid mem access")]
    struct Refused;

    #[test]
    fn a_refused_program_turns_off_its_feature_and_no_other() {
        let mut states = FeatureStates::new(IoCapture::SocketFunctions);
        let loaded: Option<()> = states.load(Feature::Tls, || Err(Refused));
        assert!(loaded.is_none());
        assert_eq!(
            states.get(Feature::Tls),
            &FeatureState::Unavailable("the kernel verifier rejected program ssl_write: R1 invalid mem access".into())
        );
        assert!(Feature::ALL.iter().filter(|f| **f != Feature::Tls).all(|f| states.is_enabled(*f)));
    }

    #[test]
    fn a_feature_turned_off_is_not_loaded() {
        let mut states = FeatureStates::new(IoCapture::SocketFunctions);
        states.set(Feature::HeaderInsertion, FeatureState::Off("--no-propagate".into()));
        let loaded = states.load(Feature::HeaderInsertion, || -> Result<(), Refused> { panic!("loaded anyway") });
        assert!(loaded.is_none());
        assert_eq!(states.get(Feature::HeaderInsertion), &FeatureState::Off("--no-propagate".into()));
    }
}
