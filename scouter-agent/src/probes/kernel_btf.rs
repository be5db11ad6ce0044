//! kernel_btf: member offsets of kernel structures, read from the running kernel's BTF.
//!
//! The eBPF programs are written in Rust with aya-ebpf, which has no CO-RE: nothing rewrites a
//! field access to match the running kernel's layout the way libbpf does for C programs with
//! `preserve_access_index`. One program reads `current->thread.fsbase` (the x86-64 FS base,
//! which glibc points at the thread's `struct pthread`) with `bpf_probe_read_kernel` from
//! `bpf_get_current_task()`, and `struct task_struct` changes layout with every kernel version
//! and configuration. So userspace looks the offset up in `/sys/kernel/btf/vmlinux` and hands
//! it to the program as a global.
//!
//! aya parses BTF too, but keeps struct members crate-private, hence this small reader. It
//! knows only what a member lookup needs: the header, the size of every kind's record (to walk
//! the type section), struct and union members, and the modifier kinds that sit between a
//! member and its struct. The input is treated as untrusted: every read is bounds-checked, and
//! type chains and anonymous-member nesting are capped so a malformed or cyclic blob yields an
//! error instead of a panic or a hang.
//!
//! Format: Documentation/bpf/btf.rst and include/uapi/linux/btf.h in the kernel tree.

use std::collections::HashSet;
use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// Where the kernel exposes its own BTF (CONFIG_DEBUG_INFO_BTF).
pub const VMLINUX_BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

const BTF_MAGIC: u16 = 0xEB9F;
const BTF_VERSION: u8 = 1;
/// Size of `struct btf_header` as of version 1; `hdr_len` may announce a longer one.
const HEADER_LEN: usize = 24;
/// Size of `struct btf_type`, the common prefix of every type record.
const TYPE_RECORD_LEN: usize = 12;
/// Size of `struct btf_member`.
const MEMBER_LEN: usize = 12;
/// Longest typedef/const/volatile/... chain followed. Real kernels need a handful of links;
/// the cap is what turns a cyclic chain into an error.
const MAX_TYPE_CHAIN: usize = 64;
/// Deepest nesting of anonymous struct/union members searched. Real kernels nest a few levels;
/// the cap bounds recursion (and so the stack) on malformed input.
const MAX_ANONYMOUS_NESTING: usize = 32;

/// BTF kinds (`BTF_KIND_*`).
mod kind {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const UNION: u32 = 5;
    pub const ENUM: u32 = 6;
    pub const FWD: u32 = 7;
    pub const TYPEDEF: u32 = 8;
    pub const VOLATILE: u32 = 9;
    pub const CONST: u32 = 10;
    pub const RESTRICT: u32 = 11;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;
    pub const FLOAT: u32 = 16;
    pub const DECL_TAG: u32 = 17;
    pub const TYPE_TAG: u32 = 18;
    pub const ENUM64: u32 = 19;
}

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("cannot read BTF from {path}: {source} (the kernel needs CONFIG_DEBUG_INFO_BTF)")]
    Io { path: PathBuf, source: io::Error },

    #[error("BTF blob is {len} bytes, shorter than the {HEADER_LEN}-byte header")]
    ShortHeader { len: usize },

    #[error("bad BTF magic {0:#06x} (expected {BTF_MAGIC:#06x})")]
    BadMagic(u16),

    #[error("BTF is big-endian; only little-endian BTF is supported")]
    BigEndian,

    #[error("unsupported BTF version {0} (expected {BTF_VERSION})")]
    UnsupportedVersion(u8),

    #[error("bad BTF header: {0}")]
    BadHeader(&'static str),

    #[error("BTF type section is truncated: type {type_id} at byte {offset} runs past its end ({len} bytes)")]
    Truncated { type_id: u32, offset: usize, len: usize },

    #[error("BTF type {type_id} has unknown kind {kind}, so its record size is unknown")]
    UnknownKind { type_id: u32, kind: u32 },

    #[error("BTF name offset {0} is outside the string section or not NUL-terminated")]
    BadName(u32),

    #[error("BTF refers to type {id}, but it has only {count} types")]
    BadTypeId { id: u32, count: usize },

    #[error("no struct or union named `{0}` with members in BTF")]
    StructNotFound(String),

    #[error("enumerator `{name}` of enum `{enumeration}` not found in BTF")]
    EnumeratorNotFound { enumeration: String, name: String },

    #[error("member `{member}` not found in `{within}`")]
    MemberNotFound { within: String, member: String },

    #[error("`{path}` is {kind}, not a struct or union, so it has no member `{next}`")]
    NotComposite { path: String, kind: &'static str, next: String },

    #[error("`{path}` is a bitfield, which has no byte offset")]
    Bitfield { path: String },

    #[error("`{path}` starts at bit offset {bits}, not on a byte boundary")]
    Unaligned { path: String, bits: u32 },

    #[error("BTF type chain starting at type {0} is longer than {MAX_TYPE_CHAIN} links (cyclic?)")]
    TypeChainTooLong(u32),

    #[error("anonymous members inside `{0}` nest deeper than {MAX_ANONYMOUS_NESTING} levels")]
    NestingTooDeep(String),

    #[error("the member path is empty")]
    EmptyPath,

    #[error("offset of `{0}` does not fit in 32 bits")]
    Overflow(String),
}

#[cfg(test)]
/// Byte offset of a (possibly nested) member: `member_offset(&btf_bytes, "task_struct",
/// &["thread", "fsbase"])`.
///
/// Each member's type is followed through typedef/const/volatile/restrict/type_tag to the
/// struct or union that holds the next name. Members of anonymous struct/union members are
/// found by name, as in C, with the anonymous member's offset added. Bitfields and offsets that
/// are not whole bytes are errors: a byte offset is what the eBPF program reads from.
/// Pointers are not followed (that would take a second read in the program).
pub fn member_offset(btf: &[u8], structure: &str, path: &[&str]) -> Result<u32, BtfError> {
    Btf::parse(btf)?.member_offset(structure, path)
}

/// The running kernel's BTF, read once for the several lookups of [`KernelLayout`](scouter_ebpf::KernelLayout).
pub struct KernelBtf {
    bytes: Vec<u8>,
}

impl KernelBtf {
    pub fn read() -> Result<Self, BtfError> {
        let bytes = std::fs::read(VMLINUX_BTF_PATH)
            .map_err(|source| BtfError::Io { path: PathBuf::from(VMLINUX_BTF_PATH), source })?;
        Ok(Self { bytes })
    }

    /// The parsed view lookups run on (parsing indexes every type, so it is done once).
    pub fn view(&self) -> Result<BtfView<'_>, BtfError> {
        Ok(BtfView(Btf::parse(&self.bytes)?))
    }
}

/// Lookups on a parsed BTF blob.
pub struct BtfView<'a>(Btf<'a>);

impl BtfView<'_> {
    /// [`member_offset`], on this blob.
    pub fn member_offset(&self, structure: &str, path: &[&str]) -> Result<u32, BtfError> {
        self.0.member_offset(structure, path)
    }

    /// The offset of `thread.fsbase` in `task_struct` (x86-64 only: other architectures have
    /// no `fsbase`, and the lookup fails with `MemberNotFound`).
    pub fn task_fsbase_offset(&self) -> Result<u32, BtfError> {
        self.member_offset("task_struct", &["thread", "fsbase"])
    }

    /// The value of enumerator `name` of enum `enumeration`.
    pub fn enum_value(&self, enumeration: &str, name: &str) -> Result<u64, BtfError> {
        self.0.enum_value(enumeration, name)
    }
}

impl Btf<'_> {
    fn member_offset(&self, structure: &str, path: &[&str]) -> Result<u32, BtfError> {
        if path.is_empty() {
            return Err(BtfError::EmptyPath);
        }
        let btf = self;
        let mut container = btf.find_composite(structure)?;
        let mut within = structure.to_string();
        let mut bits: u64 = 0;
        let mut member_type = 0;
        for (i, name) in path.iter().enumerate() {
            if i > 0 {
                container = btf.composite_of(member_type, &within, name)?;
            }
            let found = btf.find_member(container, name, &within)?;
            let (member_bits, found_type) =
                found.ok_or_else(|| BtfError::MemberNotFound { within: within.clone(), member: name.to_string() })?;
            within = format!("{within}.{name}");
            bits += u64::from(member_bits);
            member_type = found_type;
        }
        btf.reject_int_bitfield(member_type, &within)?;
        // Every step is byte-aligned (checked in find_member), so the sum is too.
        u32::try_from(bits / 8).map_err(|_| BtfError::Overflow(within))
    }

    fn enum_value(&self, enumeration: &str, name: &str) -> Result<u64, BtfError> {
        let not_found = || BtfError::EnumeratorNotFound { enumeration: enumeration.into(), name: name.into() };
        for id in self.ids() {
            let record = self.record(id)?;
            let width = match record.kind() {
                kind::ENUM => 8,
                kind::ENUM64 => 12,
                _ => continue,
            };
            if self.name(record.name_off)? != enumeration.as_bytes() {
                continue;
            }
            for i in 0..record.vlen() {
                let at = record.data + i * width;
                let truncated = || BtfError::Truncated { type_id: id, offset: at, len: self.types.len() };
                let name_off = read_u32(self.types, at).ok_or_else(truncated)?;
                if self.name(name_off)? != name.as_bytes() {
                    continue;
                }
                let low = read_u32(self.types, at + 4).ok_or_else(truncated)?;
                let high = if width == 12 { read_u32(self.types, at + 8).ok_or_else(truncated)? } else { 0 };
                return Ok(u64::from(high) << 32 | u64::from(low));
            }
            return Err(not_found());
        }
        Err(not_found())
    }
}

/// A parsed view of a BTF blob: the two sections and where each type's record starts.
struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Byte offset of each type record in `types`; type id `n` is at index `n - 1`.
    records: Vec<usize>,
}

/// The common prefix of a type record (`struct btf_type`).
#[derive(Clone, Copy, Debug)]
struct TypeRecord {
    name_off: u32,
    info: u32,
    /// `size` for INT/STRUCT/UNION/ENUM..., `type` for PTR/TYPEDEF/modifiers/...
    size_or_type: u32,
    /// Offset in the type section of the kind-specific data that follows the prefix.
    data: usize,
}

impl TypeRecord {
    fn kind(&self) -> u32 {
        (self.info >> 24) & 0x1f
    }

    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }

    fn kind_flag(&self) -> bool {
        self.info >> 31 == 1
    }

    fn is_composite(&self) -> bool {
        matches!(self.kind(), kind::STRUCT | kind::UNION)
    }
}

/// `struct btf_member`.
#[derive(Clone, Copy, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    offset: u32,
}

impl Member {
    /// The member's bit offset, or `None` for a bitfield. With `kind_flag` set on the struct,
    /// `offset` packs the bitfield size in its top 8 bits; without it, it is all bit offset.
    fn bit_offset(&self, kind_flag: bool) -> Option<u32> {
        if !kind_flag {
            return Some(self.offset);
        }
        let bitfield_size = self.offset >> 24;
        (bitfield_size == 0).then_some(self.offset & 0x00ff_ffff)
    }
}

impl<'a> Btf<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, BtfError> {
        if bytes.len() < HEADER_LEN {
            return Err(BtfError::ShortHeader { len: bytes.len() });
        }
        check_magic_and_version(bytes)?;
        let field = |at| read_u32(bytes, at).ok_or(BtfError::ShortHeader { len: bytes.len() });
        let hdr_len = field(4)? as usize;
        if hdr_len < HEADER_LEN {
            return Err(BtfError::BadHeader("hdr_len is smaller than the header"));
        }
        let types = section(bytes, hdr_len, field(8)?, field(12)?)
            .ok_or(BtfError::BadHeader("type section lies outside the blob"))?;
        let strings = section(bytes, hdr_len, field(16)?, field(20)?)
            .ok_or(BtfError::BadHeader("string section lies outside the blob"))?;
        let records = index_types(types)?;
        Ok(Btf { types, strings, records })
    }

    fn record(&self, id: u32) -> Result<TypeRecord, BtfError> {
        let bad = || BtfError::BadTypeId { id, count: self.records.len() };
        // Type 0 is `void`, which has no record and no members.
        let index = (id as usize).checked_sub(1).ok_or_else(bad)?;
        let at = *self.records.get(index).ok_or_else(bad)?;
        // index_types already checked that the whole record is in bounds.
        read_type_record(self.types, at).ok_or(BtfError::Truncated { type_id: id, offset: at, len: self.types.len() })
    }

    /// The `i`th member of a struct or union record.
    fn member(&self, record: &TypeRecord, id: u32, i: usize) -> Result<Member, BtfError> {
        let at = i.checked_mul(MEMBER_LEN).and_then(|offset| record.data.checked_add(offset));
        let member = at.and_then(|at| {
            Some(Member {
                name_off: read_u32(self.types, at)?,
                type_id: read_u32(self.types, at.checked_add(4)?)?,
                offset: read_u32(self.types, at.checked_add(8)?)?,
            })
        });
        member.ok_or(BtfError::Truncated { type_id: id, offset: record.data, len: self.types.len() })
    }

    /// A name from the string section, as bytes: names are compared, never displayed, so
    /// there is no need to insist on UTF-8.
    fn name(&self, name_off: u32) -> Result<&'a [u8], BtfError> {
        let rest = self.strings.get(name_off as usize..).ok_or(BtfError::BadName(name_off))?;
        let end = rest.iter().position(|&b| b == 0).ok_or(BtfError::BadName(name_off))?;
        Ok(&rest[..end])
    }

    /// The struct or union called `name` that has members. Forward declarations and empty
    /// duplicates are skipped: they carry no layout.
    fn find_composite(&self, name: &str) -> Result<u32, BtfError> {
        for id in self.ids() {
            let record = self.record(id)?;
            if record.is_composite() && record.vlen() > 0 && self.name(record.name_off)? == name.as_bytes() {
                return Ok(id);
            }
        }
        Err(BtfError::StructNotFound(name.to_string()))
    }

    fn ids(&self) -> impl Iterator<Item = u32> {
        // The type section is at most u32::MAX bytes of 12-byte records, so ids fit in u32.
        (1..=self.records.len()).map(|id| id as u32)
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn resolve(&self, id: u32) -> Result<(u32, TypeRecord), BtfError> {
        let mut current = id;
        for _ in 0..MAX_TYPE_CHAIN {
            let record = self.record(current)?;
            match record.kind() {
                kind::TYPEDEF | kind::VOLATILE | kind::CONST | kind::RESTRICT | kind::TYPE_TAG => {
                    current = record.size_or_type;
                }
                _ => return Ok((current, record)),
            }
        }
        Err(BtfError::TypeChainTooLong(id))
    }

    /// The struct or union that member `path` (of type `id`) is, so `next` can be looked up in it.
    fn composite_of(&self, id: u32, path: &str, next: &str) -> Result<u32, BtfError> {
        let not_composite = |kind| BtfError::NotComposite { path: path.to_string(), kind, next: next.to_string() };
        if id == 0 {
            return Err(not_composite("void"));
        }
        let (resolved, record) = self.resolve(id)?;
        if record.is_composite() {
            Ok(resolved)
        } else {
            Err(not_composite(kind_name(record.kind())))
        }
    }

    /// Finds member `name` in struct/union `id` (named `within` for messages), searching
    /// anonymous members too. Returns its bit offset from the start of `id` and its type.
    fn find_member(&self, id: u32, name: &str, within: &str) -> Result<Option<(u32, u32)>, BtfError> {
        let mut searched = HashSet::new();
        self.find_member_in(id, name, within, 0, &mut searched)
    }

    fn find_member_in(
        &self,
        id: u32,
        name: &str,
        within: &str,
        depth: usize,
        searched: &mut HashSet<u32>,
    ) -> Result<Option<(u32, u32)>, BtfError> {
        if depth > MAX_ANONYMOUS_NESTING {
            return Err(BtfError::NestingTooDeep(within.to_string()));
        }
        // A struct already searched for this name cannot hold it now; remembering that keeps
        // cyclic or heavily shared anonymous members from looping or exploding.
        if !searched.insert(id) {
            return Ok(None);
        }
        let record = self.record(id)?;
        for i in 0..record.vlen() {
            let member = self.member(&record, id, i)?;
            let member_name = self.name(member.name_off)?;
            let found = if member_name == name.as_bytes() {
                Some((0, member.type_id))
            } else if member_name.is_empty() {
                self.find_in_anonymous(member.type_id, name, within, depth, searched)?
            } else {
                None
            };
            if let Some((inner_bits, type_id)) = found {
                let bits = self.aligned_offset(&record, &member, within, name)?;
                let total =
                    bits.checked_add(inner_bits).ok_or_else(|| BtfError::Overflow(format!("{within}.{name}")))?;
                return Ok(Some((total, type_id)));
            }
        }
        Ok(None)
    }

    /// Searches an anonymous member for `name`, if the member is a struct or union (unnamed
    /// padding bitfields are anonymous too, and hold nothing).
    fn find_in_anonymous(
        &self,
        type_id: u32,
        name: &str,
        within: &str,
        depth: usize,
        searched: &mut HashSet<u32>,
    ) -> Result<Option<(u32, u32)>, BtfError> {
        if type_id == 0 {
            return Ok(None);
        }
        let (resolved, record) = self.resolve(type_id)?;
        if !record.is_composite() {
            return Ok(None);
        }
        self.find_member_in(resolved, name, within, depth + 1, searched)
    }

    /// The bit offset of `member` (on the way to `within.name`), which must be a whole byte.
    fn aligned_offset(&self, record: &TypeRecord, member: &Member, within: &str, name: &str) -> Result<u32, BtfError> {
        let path = || format!("{within}.{name}");
        let bits = member.bit_offset(record.kind_flag()).ok_or_else(|| BtfError::Bitfield { path: path() })?;
        if bits % 8 != 0 {
            return Err(BtfError::Unaligned { path: path(), bits });
        }
        Ok(bits)
    }

    /// Rejects an old-style bitfield: without `kind_flag`, a bitfield member points at an INT
    /// whose bit count is smaller than its size (or that starts at a bit offset), and its
    /// member offset can be byte-aligned, so the offset check alone would not catch it.
    fn reject_int_bitfield(&self, type_id: u32, path: &str) -> Result<(), BtfError> {
        if type_id == 0 {
            return Ok(());
        }
        let (resolved, record) = self.resolve(type_id)?;
        if record.kind() != kind::INT {
            return Ok(());
        }
        let encoding = read_u32(self.types, record.data).ok_or(BtfError::Truncated {
            type_id: resolved,
            offset: record.data,
            len: self.types.len(),
        })?;
        let bit_count = u64::from(encoding & 0xff);
        let bit_offset = (encoding >> 16) & 0xff;
        if bit_offset != 0 || bit_count != u64::from(record.size_or_type) * 8 {
            return Err(BtfError::Bitfield { path: path.to_string() });
        }
        Ok(())
    }
}

fn check_magic_and_version(bytes: &[u8]) -> Result<(), BtfError> {
    let magic = u16::from_le_bytes([bytes[0], bytes[1]]);
    if magic == BTF_MAGIC.swap_bytes() {
        return Err(BtfError::BigEndian);
    }
    if magic != BTF_MAGIC {
        return Err(BtfError::BadMagic(magic));
    }
    if bytes[2] != BTF_VERSION {
        return Err(BtfError::UnsupportedVersion(bytes[2]));
    }
    Ok(())
}

/// A section `len` bytes long at `off` bytes past the header, if it lies inside `bytes`.
fn section(bytes: &[u8], hdr_len: usize, off: u32, len: u32) -> Option<&[u8]> {
    let start = hdr_len.checked_add(off as usize)?;
    let end = start.checked_add(len as usize)?;
    bytes.get(start..end)
}

/// Walks the type section once, recording where each type starts. Records have no length
/// field, so each kind's size must be known: an unknown kind stops the walk with an error.
fn index_types(types: &[u8]) -> Result<Vec<usize>, BtfError> {
    let mut records = Vec::new();
    let mut at = 0;
    while at < types.len() {
        // At most u32::MAX / 12 records fit in the section, so the id fits in u32.
        let type_id = records.len() as u32 + 1;
        let truncated = BtfError::Truncated { type_id, offset: at, len: types.len() };
        let Some(record) = read_type_record(types, at) else {
            return Err(truncated);
        };
        let kind = record.kind();
        let data_len = kind_data_len(kind, record.vlen()).ok_or(BtfError::UnknownKind { type_id, kind })?;
        let end = record.data.checked_add(data_len).filter(|&end| end <= types.len()).ok_or(truncated)?;
        records.push(at);
        at = end;
    }
    Ok(records)
}

/// Size of the kind-specific data that follows a type record's common prefix.
fn kind_data_len(kind: u32, vlen: usize) -> Option<usize> {
    let (fixed, per_item) = match kind {
        kind::INT | kind::VAR | kind::DECL_TAG => (4, 0),
        kind::ARRAY => (12, 0),
        kind::STRUCT | kind::UNION | kind::DATASEC | kind::ENUM64 => (0, 12),
        kind::ENUM | kind::FUNC_PROTO => (0, 8),
        kind::PTR
        | kind::FWD
        | kind::TYPEDEF
        | kind::VOLATILE
        | kind::CONST
        | kind::RESTRICT
        | kind::FUNC
        | kind::FLOAT
        | kind::TYPE_TAG => (0, 0),
        _ => return None,
    };
    Some(fixed + per_item * vlen)
}

fn kind_name(kind: u32) -> &'static str {
    match kind {
        kind::INT => "an integer",
        kind::PTR => "a pointer",
        kind::ARRAY => "an array",
        kind::STRUCT => "a struct",
        kind::UNION => "a union",
        kind::ENUM | kind::ENUM64 => "an enum",
        kind::FWD => "a forward declaration",
        kind::FUNC | kind::FUNC_PROTO => "a function",
        kind::FLOAT => "a float",
        _ => "not a data type",
    }
}

fn read_type_record(types: &[u8], at: usize) -> Option<TypeRecord> {
    Some(TypeRecord {
        name_off: read_u32(types, at)?,
        info: read_u32(types, at.checked_add(4)?)?,
        size_or_type: read_u32(types, at.checked_add(8)?)?,
        data: at.checked_add(TYPE_RECORD_LEN)?,
    })
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let raw = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(raw.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::*;

    const BPFTOOL: &str = "/usr/sbin/bpftool";

    /// Builds little-endian BTF blobs type by type. Ids are handed out in order from 1, so a
    /// test can refer to a type before adding it (`builder.next_id() + 1`) to make cycles.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        count: u32,
    }

    impl Builder {
        fn new() -> Self {
            // String offset 0 must be the empty name.
            Builder { types: Vec::new(), strings: vec![0], count: 0 }
        }

        fn next_id(&self) -> u32 {
            self.count + 1
        }

        fn string(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }

        fn words(&mut self, words: &[u32]) {
            for word in words {
                self.types.extend_from_slice(&word.to_le_bytes());
            }
        }

        fn record(&mut self, name: &str, kind: u32, kind_flag: bool, vlen: u32, size_or_type: u32) -> u32 {
            let name_off = self.string(name);
            let info = (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
            self.words(&[name_off, info, size_or_type]);
            self.count += 1;
            self.count
        }

        fn int(&mut self, name: &str, size: u32) -> u32 {
            self.int_bits(name, size, size * 8)
        }

        fn int_bits(&mut self, name: &str, size: u32, bits: u32) -> u32 {
            let id = self.record(name, kind::INT, false, 0, size);
            self.words(&[bits]);
            id
        }

        /// `members` are (name, type, raw offset): bits, or with `kind_flag` bitfield size << 24 | bits.
        fn composite(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            kind_flag: bool,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let id = self.record(name, kind, kind_flag, members.len() as u32, size);
            for &(member, type_id, offset) in members {
                let name_off = self.string(member);
                self.words(&[name_off, type_id, offset]);
            }
            id
        }

        fn structure(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            self.composite(kind::STRUCT, name, size, false, members)
        }

        fn union(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            self.composite(kind::UNION, name, size, false, members)
        }

        fn modifier(&mut self, kind: u32, name: &str, target: u32) -> u32 {
            self.record(name, kind, false, 0, target)
        }

        fn build(&self) -> Vec<u8> {
            let mut blob = Vec::new();
            blob.extend_from_slice(&BTF_MAGIC.to_le_bytes());
            blob.push(BTF_VERSION);
            blob.push(0);
            let types_len = self.types.len() as u32;
            for word in [HEADER_LEN as u32, 0, types_len, types_len, self.strings.len() as u32] {
                blob.extend_from_slice(&word.to_le_bytes());
            }
            blob.extend_from_slice(&self.types);
            blob.extend_from_slice(&self.strings);
            blob
        }
    }

    /// struct inner { int x; long y; }; typedef struct inner inner_t;
    /// struct outer { int pad; inner_t in; };
    fn typedef_blob() -> Vec<u8> {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let long = b.int("long", 8);
        let inner = b.structure("inner", 16, &[("x", int, 0), ("y", long, 64)]);
        let inner_t = b.modifier(kind::TYPEDEF, "inner_t", inner);
        b.structure("outer", 24, &[("pad", int, 0), ("in", inner_t, 64)]);
        b.build()
    }

    #[test]
    fn finds_top_level_and_typedefd_nested_members() {
        let blob = typedef_blob();
        assert_eq!(member_offset(&blob, "outer", &["pad"]).unwrap(), 0);
        assert_eq!(member_offset(&blob, "outer", &["in"]).unwrap(), 8);
        assert_eq!(member_offset(&blob, "outer", &["in", "y"]).unwrap(), 16);
        assert_eq!(member_offset(&blob, "inner", &["y"]).unwrap(), 8);
    }

    #[test]
    fn searches_nested_anonymous_union_and_struct() {
        // struct outer { int a; union { int b; struct { int c; int d; }; }; int e; };
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let anon_struct = b.structure("", 8, &[("c", int, 0), ("d", int, 32)]);
        let anon_union = b.union("", 8, &[("b", int, 0), ("", anon_struct, 0)]);
        b.structure("outer", 24, &[("a", int, 0), ("", anon_union, 64), ("e", int, 128)]);
        let blob = b.build();
        assert_eq!(member_offset(&blob, "outer", &["b"]).unwrap(), 8);
        assert_eq!(member_offset(&blob, "outer", &["c"]).unwrap(), 8);
        assert_eq!(member_offset(&blob, "outer", &["d"]).unwrap(), 12);
        assert_eq!(member_offset(&blob, "outer", &["e"]).unwrap(), 16);
    }

    #[test]
    fn follows_qualifier_chain_to_struct() {
        // struct holder { long pad; const volatile inner_t2 (typedef of const struct inner) m; }
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let inner = b.structure("inner", 8, &[("x", int, 0), ("y", int, 32)]);
        let const_inner = b.modifier(kind::CONST, "", inner);
        let tagged = b.modifier(kind::TYPE_TAG, "user", const_inner);
        let typedef = b.modifier(kind::TYPEDEF, "inner_t2", tagged);
        let volatile = b.modifier(kind::VOLATILE, "", typedef);
        let restrict = b.modifier(kind::RESTRICT, "", volatile);
        let outer_const = b.modifier(kind::CONST, "", restrict);
        b.structure("holder", 16, &[("pad", int, 0), ("m", outer_const, 64)]);
        assert_eq!(member_offset(&b.build(), "holder", &["m", "y"]).unwrap(), 12);
    }

    #[test]
    fn skips_forward_declaration_and_empty_duplicate() {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        b.record("task", kind::FWD, false, 0, 0);
        b.structure("task", 0, &[]);
        b.structure("task", 8, &[("a", int, 0), ("b", int, 32)]);
        assert_eq!(member_offset(&b.build(), "task", &["b"]).unwrap(), 4);
    }

    #[test]
    fn kind_flag_struct_allows_plain_members_and_rejects_bitfields() {
        // struct flags { unsigned int on:1; unsigned int off:3; long value; } with kind_flag.
        let mut b = Builder::new();
        let uint = b.int("unsigned int", 4);
        let long = b.int("long", 8);
        b.composite(
            kind::STRUCT,
            "flags",
            16,
            true,
            &[("on", uint, 1 << 24), ("off", uint, (3 << 24) | 1), ("value", long, 64)],
        );
        let blob = b.build();
        assert_eq!(member_offset(&blob, "flags", &["value"]).unwrap(), 8);
        let err = member_offset(&blob, "flags", &["on"]).unwrap_err();
        assert!(matches!(&err, BtfError::Bitfield { path } if path == "flags.on"), "{err}");
        let err = member_offset(&blob, "flags", &["off"]).unwrap_err();
        assert!(matches!(&err, BtfError::Bitfield { path } if path == "flags.off"), "{err}");
    }

    #[test]
    fn rejects_legacy_int_bitfield_and_unaligned_offset() {
        // Without kind_flag, a bitfield is a narrow INT, possibly at a byte-aligned offset.
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let narrow = b.int_bits("", 4, 3);
        b.structure("old", 8, &[("flag", narrow, 0), ("odd", int, 4)]);
        let blob = b.build();
        let err = member_offset(&blob, "old", &["flag"]).unwrap_err();
        assert!(matches!(&err, BtfError::Bitfield { path } if path == "old.flag"), "{err}");
        let err = member_offset(&blob, "old", &["odd"]).unwrap_err();
        assert!(matches!(&err, BtfError::Unaligned { bits: 4, .. }), "{err}");
    }

    #[test]
    fn missing_struct_member_and_path_errors_name_what_is_missing() {
        let blob = typedef_blob();
        let err = member_offset(&blob, "outer", &["in", "z"]).unwrap_err();
        assert!(
            matches!(&err, BtfError::MemberNotFound { within, member } if within == "outer.in" && member == "z"),
            "{err}"
        );
        assert_eq!(err.to_string(), "member `z` not found in `outer.in`");
        let err = member_offset(&blob, "nothing", &["x"]).unwrap_err();
        assert!(matches!(&err, BtfError::StructNotFound(name) if name == "nothing"), "{err}");
        let err = member_offset(&blob, "outer", &["pad", "x"]).unwrap_err();
        assert!(matches!(&err, BtfError::NotComposite { kind: "an integer", .. }), "{err}");
        assert!(matches!(member_offset(&blob, "outer", &[]), Err(BtfError::EmptyPath)));
    }

    #[test]
    fn does_not_follow_pointers() {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let inner = b.structure("inner", 4, &[("x", int, 0)]);
        let ptr = b.modifier(kind::PTR, "", inner);
        b.structure("outer", 8, &[("p", ptr, 0)]);
        let err = member_offset(&b.build(), "outer", &["p", "x"]).unwrap_err();
        assert!(matches!(&err, BtfError::NotComposite { kind: "a pointer", .. }), "{err}");
    }

    #[test]
    fn truncated_blobs_are_errors() {
        let blob = typedef_blob();
        // Cut into the string section, into the type section, and into the header.
        for len in [blob.len() - 1, HEADER_LEN + 30, HEADER_LEN - 1, 0] {
            let err = member_offset(&blob[..len], "outer", &["pad"]).unwrap_err();
            assert!(matches!(err, BtfError::ShortHeader { .. } | BtfError::BadHeader(_)), "len {len}: {err}");
        }
        // A header that agrees with the data, but a record whose members run past the section.
        let mut b = Builder::new();
        let int = b.int("int", 4);
        b.structure("s", 8, &[("a", int, 0), ("b", int, 32)]);
        b.types.truncate(b.types.len() - 4);
        let err = member_offset(&b.build(), "s", &["a"]).unwrap_err();
        assert!(matches!(err, BtfError::Truncated { type_id: 2, .. }), "{err}");
        // A record prefix cut short.
        let mut b = Builder::new();
        b.int("int", 4);
        b.words(&[0, 0]);
        let err = member_offset(&b.build(), "s", &["a"]).unwrap_err();
        assert!(matches!(err, BtfError::Truncated { type_id: 2, .. }), "{err}");
    }

    #[test]
    fn bad_magic_endianness_version_and_kind_are_errors() {
        let blob = typedef_blob();
        let mut bad = blob.clone();
        bad[0] = 0x00;
        assert!(matches!(member_offset(&bad, "outer", &["pad"]), Err(BtfError::BadMagic(_))));
        let mut swapped = blob.clone();
        swapped.swap(0, 1);
        assert!(matches!(member_offset(&swapped, "outer", &["pad"]), Err(BtfError::BigEndian)));
        let mut version = blob.clone();
        version[2] = 2;
        assert!(matches!(member_offset(&version, "outer", &["pad"]), Err(BtfError::UnsupportedVersion(2))));
        let mut b = Builder::new();
        b.int("int", 4);
        b.record("mystery", 25, false, 0, 0);
        let err = member_offset(&b.build(), "s", &["a"]).unwrap_err();
        assert!(matches!(err, BtfError::UnknownKind { type_id: 2, kind: 25 }), "{err}");
    }

    #[test]
    fn bad_type_ids_and_names_are_errors() {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        b.structure("s", 8, &[("a", 99, 0), ("b", int, 32)]);
        let blob = b.build();
        // Member `b` is found without looking at `a`'s type.
        assert_eq!(member_offset(&blob, "s", &["b"]).unwrap(), 4);
        let err = member_offset(&blob, "s", &["a", "x"]).unwrap_err();
        assert!(matches!(err, BtfError::BadTypeId { id: 99, count: 2 }), "{err}");
        let mut b = Builder::new();
        b.int("int", 4);
        b.words(&[0xffff, (kind::STRUCT << 24) | 1, 4, 0, 1, 0]);
        b.count += 1;
        let err = member_offset(&b.build(), "s", &["a"]).unwrap_err();
        assert!(matches!(err, BtfError::BadName(0xffff)), "{err}");
    }

    #[test]
    fn cyclic_typedefs_are_an_error_not_a_hang() {
        // typedef a_t -> b_t -> a_t, used as a struct member and as an anonymous member.
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let a = b.next_id();
        b.modifier(kind::TYPEDEF, "a_t", a + 1);
        b.modifier(kind::TYPEDEF, "b_t", a);
        b.structure("s", 8, &[("x", a, 0), ("", a, 0), ("y", int, 32)]);
        let blob = b.build();
        let err = member_offset(&blob, "s", &["x", "z"]).unwrap_err();
        assert!(matches!(err, BtfError::TypeChainTooLong(_)), "{err}");
        let err = member_offset(&blob, "s", &["y"]).unwrap_err();
        assert!(matches!(err, BtfError::TypeChainTooLong(_)), "{err}");
    }

    #[test]
    fn self_containing_anonymous_members_terminate() {
        // struct s { struct s; struct s; } (impossible in C): neither a loop nor 2^n searches.
        let mut b = Builder::new();
        let s = b.next_id();
        b.structure("s", 8, &[("", s, 0), ("", s, 0)]);
        let err = member_offset(&b.build(), "s", &["z"]).unwrap_err();
        assert!(matches!(err, BtfError::MemberNotFound { .. }), "{err}");
        // A long chain of distinct anonymous structs hits the nesting cap.
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let mut inner = b.structure("", 4, &[("deep", int, 0)]);
        for _ in 0..(MAX_ANONYMOUS_NESTING + 2) {
            inner = b.structure("", 4, &[("", inner, 0)]);
        }
        b.structure("top", 4, &[("", inner, 0)]);
        let err = member_offset(&b.build(), "top", &["deep"]).unwrap_err();
        assert!(matches!(err, BtfError::NestingTooDeep(_)), "{err}");
    }

    /// The bit offset of `member` in the first `STRUCT '<structure>'` with members, from
    /// `bpftool btf dump ... format raw` output.
    fn bpftool_bits_offset(dump: &str, structure: &str, member: &str) -> u64 {
        let header = format!("STRUCT '{structure}' ");
        let mut lines = dump.lines();
        while let Some(line) = lines.next() {
            if !(line.starts_with('[') && line.contains(&header)) || line.ends_with("vlen=0") {
                continue;
            }
            let wanted = format!("'{member}' ");
            for member_line in lines.by_ref().take_while(|l| l.starts_with('\t')) {
                let member_line = member_line.trim();
                if let Some(rest) = member_line.strip_prefix(&wanted) {
                    let bits = rest.split_whitespace().find_map(|f| f.strip_prefix("bits_offset="));
                    return bits.expect("bits_offset field").parse().expect("numeric bits_offset");
                }
            }
            panic!("bpftool: no member {member} in struct {structure}");
        }
        panic!("bpftool: no struct {structure}");
    }

    #[test]
    fn running_kernel_task_fsbase_offset_matches_bpftool() {
        let btf = KernelBtf::read().expect("/sys/kernel/btf/vmlinux");
        let offset = btf.view().unwrap().task_fsbase_offset().expect("thread.fsbase offset");
        assert!(offset > 1000 && offset < 16384 && offset.is_multiple_of(8), "implausible offset {offset}");

        // bpftool is part of this machine's set-up, so its absence is a failure, not a skip.
        assert!(Path::new(BPFTOOL).exists(), "{BPFTOOL} is missing; it is needed to cross-check the BTF reader");
        let output = Command::new(BPFTOOL)
            .args(["btf", "dump", "file", VMLINUX_BTF_PATH, "format", "raw"])
            .output()
            .expect("run bpftool");
        assert!(output.status.success(), "bpftool failed: {}", String::from_utf8_lossy(&output.stderr));
        let dump = String::from_utf8(output.stdout).expect("bpftool output is UTF-8");
        let thread = bpftool_bits_offset(&dump, "task_struct", "thread");
        let fsbase = bpftool_bits_offset(&dump, "thread_struct", "fsbase");
        assert_eq!((thread + fsbase) % 8, 0);
        assert_eq!(u64::from(offset), (thread + fsbase) / 8, "bpftool says thread={thread} fsbase={fsbase} bits");
        eprintln!("task_struct.thread.fsbase is at byte {offset}");
    }
}
