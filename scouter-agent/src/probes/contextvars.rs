//! Uprobes on the interpreter's `contextvars` (see `scouter-ebpf/src/programs/contextvars.rs`):
//! a request carried to a pool thread inside a copied `Context` (`asyncio.to_thread`).
//! Attached once per interpreter file (libpython, or the executable of a static build).
//!
//! `Context.run` is the static `context_run`, found in the symbol table only: stripped builds
//! (Debian's python3.11) keep just `.dynsym`, so there calls on pool threads are not linked to
//! the request that handed them over, and neither probe is attached. `Context.run` also runs
//! every event-loop callback, so its probe is an entry probe only (about 1.5 µs a callback).

use std::path::Path;

use aya::programs::uprobe::UProbeLink;
use aya::Ebpf;

use super::uprobes::{self, InstrumentedFiles};
use super::ProbeError;

/// (program, symbol).
const RUN: (&str, &str) = ("contextvars_run", "context_run");
const COPY_RETURN: (&str, &str) = ("contextvars_copy_return", "PyContext_CopyCurrent");

/// Loads the programs; attaching waits for the first process of each interpreter.
/// The feature's programs ([`super::Feature::ContextThreads`]).
pub const PROGRAMS: [&str; 2] = [RUN.0, COPY_RETURN.0];

/// Interpreter files already handled: whether contexts are followed in their processes.
#[derive(Default)]
pub struct ContextProbes {
    interpreters: InstrumentedFiles,
}

impl ContextProbes {
    /// Attaches to `interpreter` unless done before; returns whether contexts are followed.
    pub fn instrument(&mut self, ebpf: &mut Ebpf, interpreter: &Path) -> bool {
        self.interpreters.once(interpreter, || match attach_both(ebpf, interpreter) {
            Ok(links) => {
                tracing::info!(interpreter = %interpreter.display(), "following contexts handed to threads");
                Some(links)
            }
            Err(error) => {
                tracing::warn!(
                    interpreter = %interpreter.display(),
                    %error,
                    "calls this interpreter runs on pool threads (asyncio.to_thread) start traces of their own"
                );
                None
            }
        })
    }

    pub fn take_links(&mut self) -> Vec<UProbeLink> {
        self.interpreters.take_links()
    }
}

/// Both or neither: a copy probe without the run probe would only cost.
fn attach_both(ebpf: &mut Ebpf, interpreter: &Path) -> Result<Vec<UProbeLink>, ProbeError> {
    uprobes::attach_all_or_none(ebpf, &[RUN, COPY_RETURN], interpreter)
}
