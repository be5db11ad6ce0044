//! Checking a process's layout before the kernel reads its stacks.
//!
//! The version table says where fields should be; this module proves it on the running
//! process: it finds `_PyRuntime` in the interpreter's memory, follows interpreter → thread
//! states, finds the glibc thread-specific slot that holds each thread's state (by looking for
//! the state's address in the thread's `struct pthread`, so no glibc layout is assumed), and
//! walks a thread's frames until a code object whose type is `PyCode_Type` and whose name reads
//! back as an identifier. On 3.13+ it first compares the table with the interpreter's own
//! `_Py_DebugOffsets` ([`super::debug_offsets`]). Anything else is reported and the process
//! gets no stacks: no blind reads, no garbage names.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use object::{Object, ObjectSegment, ObjectSymbol};
use scouter_ebpf::{PythonLayout, FRAME_OWNED_BY_CSTACK, NO_OFFSET};

use super::debug_offsets::{self, DebugOffsets, DebugOffsetsError};
use super::layout::VersionLayout;
use super::memory::{MemoryError, ProcessMemory};
use crate::discovery::file_cache::{self, FileCache};
use crate::discovery::PythonProcess;

/// How far into a `struct pthread` the thread-specific slot is looked for.
const PTHREAD_SCAN: usize = 4096;
/// Thread states and frames looked at before giving up.
const MAX_THREADS: usize = 256;
const MAX_FRAMES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("no struct layout is known for Python 3.{0}")]
    UnknownVersion(u8),
    #[error("cannot read {path}: {source}")]
    File { path: String, source: std::io::Error },
    #[error("{path} is not an ELF file the agent can read: {source}")]
    Elf { path: String, source: object::Error },
    #[error("{path} has no symbol {symbol}")]
    MissingSymbol { path: String, symbol: &'static str },
    #[error("the interpreter is not mapped in the process yet")]
    NotMapped,
    #[error("the interpreter is not initialised yet")]
    NotInitialised,
    #[error("no thread's state was found in its thread-specific data (not glibc?)")]
    NoThreadSlot,
    #[error("the layout does not match the process: {0}")]
    Mismatch(&'static str),
    #[error("no frame's code object reads back as code")]
    NoSaneFrame,
    #[error(transparent)]
    DebugOffsets(#[from] DebugOffsetsError),
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

impl LayoutError {
    /// Worth trying again later: the process is still starting, or its threads moved while
    /// they were being read (the check races with the running interpreter: a frame popped
    /// mid-walk reads as garbage or faults). One that keeps failing is reported.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::NotMapped | Self::NotInitialised | Self::NoSaneFrame | Self::Memory(_))
    }
}

/// A process's layout, checked.
#[derive(Clone, Copy, Debug)]
pub struct CheckedLayout {
    pub version: &'static VersionLayout,
    pub kernel: PythonLayout,
    /// `PyCode_Type` in the process: what a code object's type pointer must be.
    pub code_type: u64,
    /// `_PyRuntime` in the process.
    pub runtime: u64,
    /// `_PyEval_EvalFrameDefault` in the process: the evaluator function spans probe.
    pub evaluator: u64,
}

/// Finds and checks `process`'s layout.
pub fn check(process: &PythonProcess) -> Result<CheckedLayout, LayoutError> {
    let minor = process.version.minor;
    let version = VersionLayout::for_minor(minor).ok_or(LayoutError::UnknownVersion(minor))?;
    let symbols = InterpreterSymbols::read(&process.interpreter_file())?;
    let bias = load_bias(process.pid, &process.interpreter_file(), symbols.first_load)?;
    let memory = ProcessMemory::open(process.pid)?;
    let runtime = symbols.runtime + bias;
    if minor >= 13 {
        let table = memory.bytes(runtime, debug_offsets::TABLE_BYTES)?;
        DebugOffsets::parse(&table)?.verify(process.version, version)?;
    }
    let code_type = symbols.code_type + bias;
    let key = tss_key(&memory, runtime + version.runtime_tss_key)?;
    let threads = thread_states(&memory, version, runtime)?;
    let tstate_slot = thread_slot(&memory, version, &threads, key)?;
    let kernel = version.for_kernel(tstate_slot);
    check_frames(&memory, version, &kernel, &threads, code_type)?;
    Ok(CheckedLayout { version, kernel, code_type, runtime, evaluator: symbols.evaluator + bias })
}

/// What the agent needs from the interpreter's symbol table (link-time addresses).
#[derive(Clone, Copy)]
struct InterpreterSymbols {
    runtime: u64,
    code_type: u64,
    evaluator: u64,
    /// The lowest loadable address, which the file's first mapping starts at (page-aligned).
    first_load: u64,
}

impl InterpreterSymbols {
    /// Read once per interpreter file: every process of it finds the same symbols.
    fn read(path: &Path) -> Result<Self, LayoutError> {
        static CACHE: FileCache<InterpreterSymbols> = FileCache::new();
        let shown = path.display().to_string();
        let file = file_cache::identity(path).map_err(|source| LayoutError::File { path: shown.clone(), source })?;
        if let Some(known) = CACHE.get(file) {
            return Ok(known);
        }
        let symbols = Self::read_file(path)?;
        CACHE.insert(file, symbols);
        Ok(symbols)
    }

    fn read_file(path: &Path) -> Result<Self, LayoutError> {
        let shown = path.display().to_string();
        let bytes = fs::read(path).map_err(|source| LayoutError::File { path: shown.clone(), source })?;
        let elf = object::File::parse(&*bytes).map_err(|source| LayoutError::Elf { path: shown.clone(), source })?;
        let symbol = |name: &'static str| {
            elf.dynamic_symbols()
                .chain(elf.symbols())
                .find(|symbol| symbol.name() == Ok(name))
                .map(|symbol| symbol.address())
                .ok_or(LayoutError::MissingSymbol { path: shown.clone(), symbol: name })
        };
        let first_load = elf.segments().map(|segment| segment.address()).min().unwrap_or(0) & !0xfff;
        Ok(Self {
            runtime: symbol("_PyRuntime")?,
            code_type: symbol("PyCode_Type")?,
            evaluator: symbol("_PyEval_EvalFrameDefault")?,
            first_load,
        })
    }
}

/// Where the interpreter file was loaded, minus where it asked to be: found in the process's
/// maps by the file's device and inode (its path may differ across mount namespaces).
fn load_bias(pid: u32, file: &Path, first_load: u64) -> Result<u64, LayoutError> {
    let shown = file.display().to_string();
    let meta = fs::metadata(file).map_err(|source| LayoutError::File { path: shown.clone(), source })?;
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|source| LayoutError::File { path: format!("/proc/{pid}/maps"), source })?;
    maps.lines()
        .find_map(|line| mapping_start_of(line, meta.ino(), 0))
        .map(|start| start.wrapping_sub(first_load))
        .ok_or(LayoutError::NotMapped)
}

/// The start address of a maps line for inode `inode` at file offset `offset`.
fn mapping_start_of(line: &str, inode: u64, offset: u64) -> Option<u64> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let _perms = fields.next()?;
    let file_offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let _device = fields.next()?;
    let line_inode: u64 = fields.next()?.parse().ok()?;
    if line_inode != inode || file_offset != offset {
        return None;
    }
    u64::from_str_radix(range.split('-').next()?, 16).ok()
}

/// `autoTSSkey`'s `pthread_key_t`, once the runtime has created it.
fn tss_key(memory: &ProcessMemory, at: u64) -> Result<u32, LayoutError> {
    if memory.u32(at)? == 0 {
        return Err(LayoutError::NotInitialised);
    }
    Ok(memory.u32(at + 4)?)
}

/// The main interpreter's thread states.
fn thread_states(memory: &ProcessMemory, version: &VersionLayout, runtime: u64) -> Result<Vec<u64>, LayoutError> {
    let interpreter = memory.u64(runtime + version.runtime_interpreters_head)?;
    if interpreter == 0 {
        return Err(LayoutError::NotInitialised);
    }
    let mut threads = Vec::new();
    let mut tstate = memory.u64(interpreter + version.interpreter_threads_head)?;
    while tstate != 0 && threads.len() < MAX_THREADS {
        threads.push(tstate);
        tstate = memory.u64(tstate + version.tstate_next)?;
    }
    if threads.is_empty() {
        return Err(LayoutError::NotInitialised);
    }
    Ok(threads)
}

/// The offset, from a thread's pointer, of the slot holding its thread state: where glibc's
/// `pthread_getspecific(key)` finds it. The key's slot sits at `base + key * 16 + 8` for a
/// fixed `base`; every thread found must agree on it.
fn thread_slot(memory: &ProcessMemory, version: &VersionLayout, threads: &[u64], key: u32) -> Result<u32, LayoutError> {
    if key >= 32 {
        // Keys past glibc's first block live in second-level arrays the kernel does not follow.
        return Err(LayoutError::Mismatch("the thread-state key is not in glibc's first block"));
    }
    let mut found: Option<u32> = None;
    for &tstate in threads {
        let thread_pointer = memory.u64(tstate + version.tstate_thread_id)?;
        let Ok(block) = memory.bytes_until_unmapped(thread_pointer, PTHREAD_SCAN) else { continue };
        let Some(offset) = block
            .chunks_exact(8)
            .position(|word| u64::from_le_bytes(word.try_into().expect("8 bytes")) == tstate)
            .map(|index| (index * 8) as u32)
        else {
            continue;
        };
        match found {
            Some(previous) if previous != offset => {
                return Err(LayoutError::Mismatch("threads disagree on their slot"))
            }
            _ => found = Some(offset),
        }
    }
    let slot = found.ok_or(LayoutError::NoThreadSlot)?;
    if slot < 8 + key * 16 {
        return Err(LayoutError::Mismatch("the thread-state slot is not where a specific-data slot can be"));
    }
    Ok(slot)
}

/// Walks the threads' frames as the kernel will, until a code object reads back sane.
fn check_frames(
    memory: &ProcessMemory,
    version: &VersionLayout,
    kernel: &PythonLayout,
    threads: &[u64],
    code_type: u64,
) -> Result<(), LayoutError> {
    let mut saw_frame = false;
    for &tstate in threads {
        let mut frame = memory.u64(tstate + kernel.tstate_frame as u64)?;
        if kernel.cframe_frame != NO_OFFSET && frame != 0 {
            frame = memory.u64(frame + kernel.cframe_frame as u64)?;
        }
        for _ in 0..MAX_FRAMES {
            if frame == 0 {
                break;
            }
            saw_frame = true;
            let shim = kernel.frame_owner != NO_OFFSET
                && memory.bytes(frame + kernel.frame_owner as u64, 1)?[0] == FRAME_OWNED_BY_CSTACK;
            if !shim && is_sane_code(memory, version, memory.u64(frame + kernel.frame_code as u64)?, code_type) {
                return Ok(());
            }
            frame = memory.u64(frame + kernel.frame_previous as u64)?;
        }
    }
    if saw_frame {
        Err(LayoutError::NoSaneFrame)
    } else {
        Err(LayoutError::NotInitialised)
    }
}

/// Whether `code` is a code object whose name is an identifier (or `<module>`-like).
pub fn is_sane_code(memory: &ProcessMemory, version: &VersionLayout, code: u64, code_type: u64) -> bool {
    if code == 0 || memory.u64(code + OBJECT_TYPE).ok() != Some(code_type) {
        return false;
    }
    let Ok(name_object) = memory.u64(code + version.code_name) else { return false };
    memory
        .unicode(name_object, version.unicode_ascii_data, version.unicode_compact_data)
        .is_ok_and(|name| is_code_name(&name))
}

/// `ob_type` in every object header.
pub const OBJECT_TYPE: u64 = 8;

fn is_code_name(name: &str) -> bool {
    let inner = name.strip_prefix('<').and_then(|rest| rest.strip_suffix('>')).unwrap_or(name);
    !inner.is_empty() && inner.chars().all(|c| c.is_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_maps_line_gives_its_start_for_the_file_at_offset_zero() {
        let line = "7f1c2a000000-7f1c2a1a3000 r--p 00000000 fe:01 1234567    /usr/lib/libpython3.12.so.1.0";
        assert_eq!(mapping_start_of(line, 1234567, 0), Some(0x7f1c2a000000));
        assert_eq!(mapping_start_of(line, 7654321, 0), None);
        let later = "7f1c2a1a3000-7f1c2a400000 r-xp 001a3000 fe:01 1234567    /usr/lib/libpython3.12.so.1.0";
        assert_eq!(mapping_start_of(later, 1234567, 0), None);
    }

    #[test]
    fn a_check_that_raced_the_interpreter_is_tried_again_and_a_wrong_layout_is_not() {
        let moved = MemoryError::Short { address: 0x10 };
        assert!(LayoutError::NoSaneFrame.is_transient());
        assert!(LayoutError::Memory(moved).is_transient());
        assert!(LayoutError::NotInitialised.is_transient());
        assert!(!LayoutError::Mismatch("threads disagree on their slot").is_transient());
        assert!(!LayoutError::UnknownVersion(7).is_transient());
    }

    #[test]
    fn code_names_are_identifiers_or_bracketed() {
        for name in ["handler", "_private", "<module>", "<lambda>", "café"] {
            assert!(is_code_name(name), "{name}");
        }
        for name in ["", "<>", "a b", "\u{0}x"] {
            assert!(!is_code_name(name), "{name:?}");
        }
    }
}
