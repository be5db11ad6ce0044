//! What a function span needs from the process, read when the kernel reports a call: the
//! function's module (its globals' `__name__`), names and argument names, the captured
//! argument values, and the type of an exception that left it.

use super::code::FunctionCode;
use super::objects::{self, ArgumentValue};
use super::ProcessStacks;

/// Types remembered per host before the cache starts over.
const MAX_TYPES: usize = 4096;
/// Modules remembered per host before the cache starts over.
const MAX_MODULES: usize = 16_384;

/// A called function, as a function span describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CalledFunction {
    pub module: String,
    pub code: FunctionCode,
}

impl ProcessStacks {
    /// The function `code` runs, in the module whose globals are `globals`, with the names of
    /// its first `slots` locals; `None` when the process's memory does not read back sane.
    pub fn called_function(&mut self, pid: u32, code: u64, globals: u64, slots: usize) -> Option<CalledFunction> {
        let module = self.module_name(pid, globals)?;
        let reader = self.readers.get_mut(&pid)?;
        let code = reader.function(code, slots, &mut self.qualnames)?;
        Some(CalledFunction { module, code })
    }

    fn module_name(&mut self, pid: u32, globals: u64) -> Option<String> {
        if let Some(known) = self.modules.get(&(pid, globals)) {
            return Some(known.clone());
        }
        let reader = self.readers.get(&pid)?;
        let version = reader.layout().version;
        let memory = reader.memory();
        let name = objects::dict_get_str(memory, version.minor, globals, "__name__").ok()??;
        let module = memory.unicode(name, version.unicode_ascii_data, version.unicode_compact_data).ok()?;
        if self.modules.len() >= MAX_MODULES {
            self.modules.clear();
        }
        self.modules.insert((pid, globals), module.clone());
        Some(module)
    }

    /// A captured argument's value, from the bytes the kernel copied at the object's start.
    pub fn argument_value(&mut self, pid: u32, raw: &[u8]) -> Option<ArgumentValue> {
        let type_object = u64::from_le_bytes(raw.get(OB_TYPE..OB_TYPE + 8)?.try_into().ok()?);
        let minor = self.readers.get(&pid)?.layout().version.minor;
        let type_name = self.cached_type_name(pid, type_object, false)?;
        Some(objects::decode_argument(minor, &type_name, raw))
    }

    /// The name an exception type is known by (`ValueError`, `shop.orders.OutOfStock`).
    pub fn exception_name(&mut self, pid: u32, type_object: u64) -> Option<String> {
        self.cached_type_name(pid, type_object, true)
    }

    fn cached_type_name(&mut self, pid: u32, type_object: u64, qualified: bool) -> Option<String> {
        let key = (pid, type_object, qualified);
        if let Some(known) = self.types.get(&key) {
            return Some(known.clone());
        }
        let reader = self.readers.get(&pid)?;
        let memory = reader.memory();
        let name = if qualified {
            objects::qualified_type_name(memory, reader.layout().version.minor, type_object)
        } else {
            objects::type_name(memory, type_object)
        }
        .ok()?;
        if self.types.len() >= MAX_TYPES {
            self.types.clear();
        }
        self.types.insert(key, name.clone());
        Some(name)
    }
}

/// `PyObject.ob_type`.
const OB_TYPE: usize = 8;
