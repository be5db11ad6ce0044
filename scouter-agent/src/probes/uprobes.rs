//! What the library probes (`asyncio`, `tls`) share: programs loaded once, attached by symbol to
//! a file for every process that maps it (the kernel side filters untracked processes), and
//! each file instrumented once, whatever path or mount namespace it is reached through.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope};
use aya::programs::UProbe;
use aya::Ebpf;

use super::{load_error, ProbeError};

/// Loads `programs`; attaching waits for the first process of each file.
pub fn load(ebpf: &mut Ebpf, programs: impl IntoIterator<Item = &'static str>) -> Result<(), ProbeError> {
    for program in programs {
        uprobe(ebpf, program)?.load().map_err(|source| load_error(program, source))?;
    }
    Ok(())
}

/// Attaches `program` to `symbol` in the ELF file at `path`, for every process.
pub fn attach(
    ebpf: &mut Ebpf,
    program: &'static str,
    symbol: &'static str,
    path: &Path,
) -> Result<UProbeLinkId, ProbeError> {
    attach_scoped(ebpf, program, symbol, path, UProbeScope::AllProcesses)
}

/// Attaches `program` to `symbol` in the ELF file at `path`, for process `pid` only: the
/// kernel plants its breakpoint in that process's memory and no other's.
pub fn attach_to_process(
    ebpf: &mut Ebpf,
    program: &'static str,
    symbol: &'static str,
    path: &Path,
    pid: NonZeroU32,
) -> Result<UProbeLinkId, ProbeError> {
    attach_scoped(ebpf, program, symbol, path, UProbeScope::OneProcess(pid))
}

fn attach_scoped(
    ebpf: &mut Ebpf,
    program: &'static str,
    symbol: &'static str,
    path: &Path,
    scope: UProbeScope,
) -> Result<UProbeLinkId, ProbeError> {
    let point = UProbeAttachPoint { location: UProbeAttachLocation::Symbol(symbol), cookie: None };
    uprobe(ebpf, program)?.attach(point, path, scope).map_err(|source| ProbeError::AttachProgram { program, source })
}

/// Detaches links made by [`attach`] (undoing a file's partial instrumentation).
pub fn detach(ebpf: &mut Ebpf, links: Vec<(&'static str, UProbeLinkId)>) {
    for (program, link) in links {
        if let Ok(probe) = uprobe(ebpf, program) {
            let _ = probe.detach(link);
        }
    }
}

fn uprobe<'a>(ebpf: &'a mut Ebpf, program: &'static str) -> Result<&'a mut UProbe, ProbeError> {
    ebpf.program_mut(program)
        .ok_or(ProbeError::MissingProgram(program))?
        .try_into()
        .map_err(|source| ProbeError::ProgramLoad { program, source })
}

/// Files already instrumented, by (device, inode), and whether that worked.
#[derive(Default)]
pub struct InstrumentedFiles {
    files: HashMap<(u64, u64), bool>,
}

impl InstrumentedFiles {
    /// Runs `instrument` the first time `path`'s file is seen; returns (and remembers) whether
    /// it succeeded. A file that cannot be read is not instrumented, and not remembered.
    pub fn once(&mut self, path: &Path, instrument: impl FnOnce() -> bool) -> bool {
        let Ok(meta) = std::fs::metadata(path) else { return false };
        *self.files.entry((meta.dev(), meta.ino())).or_insert_with(instrument)
    }
}
