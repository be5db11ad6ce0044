//! What the library probes (`asyncio`, `tls`) share: programs (loaded once, with the others) attached by symbol to
//! a file for every process that maps it (the kernel side filters untracked processes), and
//! each file instrumented once, whatever path or mount namespace it is reached through.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeScope};
use aya::programs::UProbe;
use aya::Ebpf;

use super::ProbeError;

/// Attaches `program` to `symbol` in the ELF file at `path`, for every process; dropping the
/// link detaches it.
pub fn attach(
    ebpf: &mut Ebpf,
    program: &'static str,
    symbol: &'static str,
    path: &Path,
) -> Result<UProbeLink, ProbeError> {
    attach_scoped(ebpf, program, symbol, path, UProbeScope::AllProcesses)
}

/// Attaches each `(program, symbol)` to the ELF file at `path`, for every process: all of them
/// or, at the first failure, none (those already attached are detached again, so a later try
/// on the same file does not attach them twice).
pub fn attach_all_or_none(
    ebpf: &mut Ebpf,
    probes: &[(&'static str, &'static str)],
    path: &Path,
) -> Result<Vec<UProbeLink>, ProbeError> {
    probes.iter().map(|(program, symbol)| attach(ebpf, program, symbol, path)).collect()
}

/// Attaches `program` to `symbol` in the ELF file at `path`, for process `pid` only: the
/// kernel plants its breakpoint in that process's memory and no other's.
pub fn attach_to_process(
    ebpf: &mut Ebpf,
    program: &'static str,
    symbol: &'static str,
    path: &Path,
    pid: NonZeroU32,
) -> Result<UProbeLink, ProbeError> {
    attach_scoped(ebpf, program, symbol, path, UProbeScope::OneProcess(pid))
}

fn attach_scoped(
    ebpf: &mut Ebpf,
    program: &'static str,
    symbol: &'static str,
    path: &Path,
    scope: UProbeScope,
) -> Result<UProbeLink, ProbeError> {
    let point = UProbeAttachPoint { location: UProbeAttachLocation::Symbol(symbol), cookie: None };
    let probe = uprobe(ebpf, program)?;
    let attach_error = |source| ProbeError::AttachProgram { program, source };
    let id = probe.attach(point, path, scope).map_err(attach_error)?;
    probe.take_link(id).map_err(attach_error)
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
    /// The probes attached to them, detached when dropped.
    links: Vec<UProbeLink>,
}

impl InstrumentedFiles {
    /// Runs `instrument` the first time `path`'s file is seen; returns (and remembers) whether
    /// it succeeded, keeping the links it made. A file that cannot be read is not
    /// instrumented, and not remembered.
    ///
    /// A failure is not remembered when the path is gone afterwards: the path runs through
    /// the process's `/proc/<pid>/root`, and a short-lived process (a version check by the same
    /// interpreter) that exits during the attach must not leave the file uninstrumented for the
    /// long-lived ones.
    pub fn once(&mut self, path: &Path, instrument: impl FnOnce() -> Option<Vec<UProbeLink>>) -> bool {
        let Ok(meta) = std::fs::metadata(path) else { return false };
        let key = (meta.dev(), meta.ino());
        if let Some(done) = self.files.get(&key) {
            return *done;
        }
        let links = instrument();
        let done = links.is_some();
        self.links.extend(links.into_iter().flatten());
        if done || std::fs::metadata(path).is_ok() {
            self.files.insert(key, done);
        }
        done
    }

    /// The links made so far, for detaching them all at once.
    pub fn take_links(&mut self) -> Vec<UProbeLink> {
        std::mem::take(&mut self.links)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_remembered_unless_the_path_vanished_meanwhile() {
        let dir = std::env::temp_dir().join(format!("scouter-instrumented-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (kept, vanishing) = (dir.join("kept.so"), dir.join("vanishing.so"));
        std::fs::write(&kept, b"x").unwrap();
        std::fs::write(&vanishing, b"y").unwrap();
        let mut files = InstrumentedFiles::default();
        assert!(!files.once(&kept, || None));
        assert!(!files.once(&kept, || panic!("a failure on a file still there is final")));
        // The process whose /proc/<pid>/root led to the file exited during the attach.
        let other = dir.join("other-path.so");
        std::fs::hard_link(&vanishing, &other).unwrap();
        assert!(!files.once(&vanishing, || std::fs::remove_file(&vanishing).err().map(|_| Vec::new())));
        assert!(files.once(&other, || Some(Vec::new())), "the same file through a live path is tried again");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
