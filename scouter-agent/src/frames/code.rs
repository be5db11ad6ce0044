//! Code objects to code locations: a frame the kernel captured (a code object's address and an
//! instruction position) becomes a qualified name, a file and a line, read from the process's
//! memory and cached per code object.
//!
//! The cache entry is checked on every use against the object's current file and name
//! pointers (one read): a code object freed and another allocated at its address is read anew.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use scouter_ebpf::FrameRef;

use super::attach::{is_sane_code, CheckedLayout};
use super::lines::line_at;
use super::memory::{MemoryError, ProcessMemory};
use super::source::SourceQualnames;

/// Where a frame was: what `code.function.name`, `code.file.path` and `code.line.number` say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeLocation {
    pub function: String,
    pub file: Arc<str>,
    pub line: Option<u32>,
}

/// What a function span says about the code it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionCode {
    pub qualname: String,
    pub name: String,
    pub file: Arc<str>,
    /// `co_firstlineno`: the `def` line, or the first decorator's.
    pub line: u32,
    pub flags: u32,
    /// The names of the first local slots (arguments come first), as many as were asked for.
    pub local_names: Vec<String>,
}

/// Code objects of one process held at most, before the cache starts over.
const MAX_CODE_OBJECTS: usize = 16_384;
/// `PyTupleObject`: `ob_size`, then the items.
const TUPLE_SIZE: u64 = 16;
const TUPLE_ITEMS: u64 = 24;
/// Largest line table read.
const MAX_LINE_TABLE: usize = 1 << 20;

/// What stays true of a code object while it lives.
#[derive(Debug)]
struct CodeObject {
    /// The file and name objects' addresses: the identity check.
    identity: [u64; 2],
    function: String,
    name: String,
    file: Arc<str>,
    first_line: u32,
    line_table: Vec<u8>,
}

/// Reads one process's code objects.
pub struct CodeReader {
    memory: ProcessMemory,
    layout: CheckedLayout,
    /// The process's root, under which its source files are opened (3.8–3.10 qualified names).
    root: PathBuf,
    objects: HashMap<u64, Arc<CodeObject>>,
}

impl CodeReader {
    pub fn new(pid: u32, layout: &CheckedLayout) -> Result<Self, MemoryError> {
        Ok(Self {
            memory: ProcessMemory::open(pid)?,
            layout: *layout,
            root: PathBuf::from(format!("/proc/{pid}/root")),
            objects: HashMap::new(),
        })
    }

    pub fn memory(&self) -> &ProcessMemory {
        &self.memory
    }

    /// The layout it reads with (a fork's child shares it).
    pub fn layout(&self) -> &CheckedLayout {
        &self.layout
    }

    /// The location of a captured frame; `None` when its code object cannot be read.
    pub fn locate(&mut self, frame: &FrameRef, qualnames: &mut SourceQualnames) -> Option<CodeLocation> {
        let code = self.code_object(frame.code, qualnames)?;
        let line = self
            .instruction_offset(frame)
            .and_then(|offset| line_at(self.layout.version.line_format(), &code.line_table, code.first_line, offset));
        Some(CodeLocation { function: code.function.clone(), file: code.file.clone(), line })
    }

    /// The function a code object belongs to, with the names of its first `slots` locals.
    pub fn function(&mut self, address: u64, slots: usize, qualnames: &mut SourceQualnames) -> Option<FunctionCode> {
        let code = self.code_object(address, qualnames)?;
        let calls = &self.layout.version.calls;
        let flags = self.memory.u32(address + calls.code_flags as u64).ok()?;
        let names = self.memory.u64(address + calls.code_local_names).ok()?;
        Some(FunctionCode {
            qualname: code.function.clone(),
            name: code.name.clone(),
            file: code.file.clone(),
            line: code.first_line,
            flags,
            local_names: self.tuple_of_strings(names, slots),
        })
    }

    /// The first `limit` items of a tuple of `str`, stopping at the first that cannot be read.
    fn tuple_of_strings(&self, tuple: u64, limit: usize) -> Vec<String> {
        let version = self.layout.version;
        let Ok(size) = self.memory.u64(tuple + TUPLE_SIZE) else { return Vec::new() };
        (0..(size as usize).min(limit))
            .map_while(|index| {
                let item = self.memory.u64(tuple + TUPLE_ITEMS + 8 * index as u64).ok()?;
                self.memory.unicode(item, version.unicode_ascii_data, version.unicode_compact_data).ok()
            })
            .collect()
    }

    fn code_object(&mut self, address: u64, qualnames: &mut SourceQualnames) -> Option<Arc<CodeObject>> {
        let identity = self.identity(address)?;
        if let Some(known) = self.objects.get(&address).filter(|known| known.identity == identity) {
            return Some(known.clone());
        }
        if !is_sane_code(&self.memory, self.layout.version, address, self.layout.code_type) {
            return None;
        }
        let read = Arc::new(self.read_code(address, identity, qualnames)?);
        if self.objects.len() >= MAX_CODE_OBJECTS {
            self.objects.clear();
        }
        self.objects.insert(address, read.clone());
        Some(read)
    }

    /// `co_filename` and `co_name`'s addresses, adjacent in every supported version.
    fn identity(&self, code: u64) -> Option<[u64; 2]> {
        let bytes = self.memory.bytes(code + self.layout.version.code_filename, 16).ok()?;
        Some([u64::from_le_bytes(bytes[..8].try_into().ok()?), u64::from_le_bytes(bytes[8..].try_into().ok()?)])
    }

    fn read_code(&self, code: u64, identity: [u64; 2], qualnames: &mut SourceQualnames) -> Option<CodeObject> {
        let version = self.layout.version;
        let string =
            |object: u64| self.memory.unicode(object, version.unicode_ascii_data, version.unicode_compact_data);
        let file: Arc<str> = string(identity[0]).ok()?.into();
        let name = string(identity[1]).ok()?;
        let first_line = self.memory.u32(code + version.code_firstlineno).ok()?;
        let function = match version.code_qualname {
            Some(offset) => string(self.memory.u64(code + offset).ok()?).ok()?,
            None => qualnames.qualname(&self.source_path(&file), first_line, &name),
        };
        let table_object = self.memory.u64(code + version.code_linetable).ok()?;
        let line_table = self.memory.bytes_object(table_object, MAX_LINE_TABLE).unwrap_or_default();
        Some(CodeObject { identity, function, name, file, first_line, line_table })
    }

    /// A source file as the agent opens it (through the process's root).
    fn source_path(&self, file: &str) -> PathBuf {
        self.root.join(file.trim_start_matches('/'))
    }

    /// The frame's instruction as a byte offset into its bytecode.
    fn instruction_offset(&self, frame: &FrameRef) -> Option<u32> {
        if let Some(adaptive) = self.layout.version.code_adaptive {
            let start = frame.code + adaptive;
            return u32::try_from(frame.instruction.checked_sub(start)?).ok();
        }
        let lasti = frame.instruction as u32 as i32;
        if lasti < 0 {
            return None;
        }
        let units = if self.layout.version.lasti_in_code_units { 2 } else { 1 };
        (lasti as u32).checked_mul(units)
    }
}
