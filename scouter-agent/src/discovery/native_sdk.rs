//! Native SDKs: where a compiled in-process SDK keeps the ids of the span it makes current.
//!
//! Scouter's SDK (`scouter-ml`) is a Rust extension, pyo3 over the OpenTelemetry Rust SDK. Its
//! current span lives in `ContextVar("_otel_current_span")` as a pyo3 object (`ActiveSpan`)
//! that points at shared state holding the span as a trait object, whose span context holds the
//! ids. Rust lays structs out as each build's compiler chose and the extension ships without
//! debug information, so the offsets are known per build: [`KNOWN_BUILDS`] lists the builds
//! measured, by GNU build id, each with what `tests/python/native_span_layout.py` found in a
//! live span's memory. Nothing is guessed: a build not listed keeps its spans as the SDK made
//! them (forwarded, attributed, not nested; the kernel counts its activations as opaque), and
//! the kernel reads ids only from a span whose trait object has the listed type's vtable.
//!
//! The kernel asks for a process's layout the first time it sees it make such a span current
//! (the extension is usually imported after the agent inspected the process).

use std::fs::File;
use std::path::{Path, PathBuf};

use object::read::elf::{ElfFile64, ProgramHeader};
use object::read::ReadCache;
use object::{Endianness, Object};
use scouter_ebpf::NativeSpanLayout;

use super::file_cache::{self, FileCache};
use super::procfs::{in_process_root, mapped_file_starts};

/// One measured build of a native SDK's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownBuild {
    /// What the build is, for logs.
    pub package: &'static str,
    /// The extension's file name, as mapped.
    pub extension: &'static str,
    /// Its GNU build id, in hex.
    pub build_id: &'static str,
    /// The offsets, with the span type's vtable as an address of the ELF (before relocation).
    pub layout: NativeSpanLayout,
}

/// The builds whose layout is known. To add one, run `tests/python/native_span_layout.py`
/// with an interpreter that has the build installed; it prints the entry.
pub const KNOWN_BUILDS: &[KnownBuild] = &[KnownBuild {
    package: "scouter-ml 0.25.0 (x86_64)",
    extension: "_scouter.abi3.so",
    build_id: "2c702e7faa52bfdc53e3171c990d09f9d244e2c0",
    layout: NativeSpanLayout {
        span_vtable: 0x3167818,
        state: 16,
        span: 56,
        span_vtable_at: 64,
        trace_id: 32,
        span_id: 48,
        _pad: [0; 3],
    },
}];

#[derive(Debug, thiserror::Error)]
pub enum NativeSdkError {
    #[error("no native SDK extension the agent knows of is mapped")]
    NotMapped,
    #[error("{path}: cannot read its ELF headers and build id")]
    Unreadable { path: PathBuf },
    #[error(
        "{path} is a build the agent has not measured (build id {build_id}): its spans are forwarded but not nested \
         with the agent's; see tests/python/native_span_layout.py"
    )]
    UnknownBuild { path: PathBuf, build_id: String },
}

/// The layout of the native SDK span objects of process `pid`, with the vtable address where
/// the process loaded the extension.
pub fn span_layout_of(pid: u32) -> Result<(NativeSpanLayout, &'static KnownBuild), NativeSdkError> {
    let mapped = mapped_file_starts(pid).unwrap_or_default();
    let (path, start) = mapped.iter().find(|(path, _)| is_known_extension(path)).ok_or(NativeSdkError::NotMapped)?;
    let file = in_process_root(pid, path);
    let elf = elf_facts(&file).ok_or_else(|| NativeSdkError::Unreadable { path: path.clone() })?;
    let build_id = hex::encode(&elf.build_id);
    let known = KNOWN_BUILDS
        .iter()
        .find(|build| build.build_id == build_id)
        .ok_or_else(|| NativeSdkError::UnknownBuild { path: path.clone(), build_id })?;
    let load_bias =
        start.checked_sub(elf.first_load_address).ok_or_else(|| NativeSdkError::Unreadable { path: path.clone() })?;
    Ok((layout_at(known, load_bias), known))
}

/// `build`'s layout in a process that loaded it `load_bias` bytes above its ELF addresses.
pub fn layout_at(build: &KnownBuild, load_bias: u64) -> NativeSpanLayout {
    NativeSpanLayout { span_vtable: load_bias + build.layout.span_vtable, ..build.layout }
}

fn is_known_extension(path: &Path) -> bool {
    let name = path.file_name().and_then(|name| name.to_str());
    name.is_some_and(|name| KNOWN_BUILDS.iter().any(|build| build.extension == name))
}

/// What identifies an ELF and places it in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ElfFacts {
    build_id: Vec<u8>,
    /// The page-aligned address of the segment loaded from the file's start: a mapping of
    /// offset 0 at address A means the ELF's addresses are shifted by A minus this.
    first_load_address: u64,
}

/// [`ElfFacts`] of the file at `path`, reading only its headers and notes (extensions weigh
/// tens of megabytes), cached by file identity.
fn elf_facts(path: &Path) -> Option<ElfFacts> {
    static CACHE: FileCache<ElfFacts> = FileCache::new();
    let identity = file_cache::identity(path).ok()?;
    if let Some(facts) = CACHE.get(identity) {
        return Some(facts);
    }
    let cache = ReadCache::new(File::open(path).ok()?);
    let elf = ElfFile64::<Endianness, _>::parse(&cache).ok()?;
    let build_id = elf.build_id().ok()??.to_vec();
    let endian = elf.endian();
    let first = elf
        .elf_program_headers()
        .iter()
        .find(|header| header.p_type(endian) == object::elf::PT_LOAD && header.p_offset(endian) == 0)?;
    let facts = ElfFacts { build_id, first_load_address: first.p_vaddr(endian) & !0xfff };
    CACHE.insert(identity, facts.clone());
    Some(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_builds_have_well_formed_entries() {
        for build in KNOWN_BUILDS {
            assert_eq!(build.build_id.len(), 40, "{}: a GNU build id is 20 bytes", build.package);
            assert!(hex::decode(build.build_id).is_ok(), "{}", build.package);
            assert!(build.layout.span_vtable != 0 && build.layout.span_vtable % 8 == 0, "{}", build.package);
            assert_ne!(build.layout.span, build.layout.span_vtable_at, "{}", build.package);
        }
    }

    #[test]
    fn the_vtable_moves_with_the_load_address() {
        let build = &KNOWN_BUILDS[0];
        let layout = layout_at(build, 0x7f00_0000_0000);
        assert_eq!(layout.span_vtable, 0x7f00_0000_0000 + build.layout.span_vtable);
        assert_eq!(
            (layout.state, layout.span, layout.trace_id),
            (build.layout.state, build.layout.span, build.layout.trace_id)
        );
    }

    #[test]
    fn reads_the_build_id_and_load_address_of_a_library_this_process_maps() {
        let me = std::process::id();
        let (libc, _) = mapped_file_starts(me)
            .unwrap()
            .into_iter()
            .find(|(path, _)| path.to_string_lossy().contains("libc.so"))
            .expect("this test links libc");
        let facts = elf_facts(&libc).expect("Debian's libc has a build id");
        assert_eq!(facts.build_id.len(), 20);
        assert_eq!(facts.first_load_address, 0, "shared objects are linked at 0");
        assert_eq!(elf_facts(&libc), Some(facts), "cached answer");
    }

    #[test]
    fn a_process_without_the_extension_has_no_layout() {
        assert!(matches!(span_layout_of(std::process::id()), Err(NativeSdkError::NotMapped)));
        assert!(is_known_extension(Path::new("/venv/lib/python3.12/site-packages/scouter/_scouter.abi3.so")));
        assert!(!is_known_extension(Path::new("/usr/lib/libscouter.so")));
    }
}
