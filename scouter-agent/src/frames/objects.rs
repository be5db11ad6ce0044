//! Python objects in a traced process's memory: finding a `str` key in a dict (a module's
//! globals, a type's dict), the names of types, and function arguments reduced to what a span
//! attribute can hold.
//!
//! Dicts and types are read through [`ProcessMemory`]; arguments are decoded from the bytes the
//! kernel copied from the start of each object, so they never cost a read. Layouts were taken from
//! the pyenv builds' debug information (`ptype /o`) for 3.8–3.13 on x86-64.

use super::attach::OBJECT_TYPE;
use super::layout::VersionLayout;
use super::memory::{self, compact_str, decode, MemoryError, ProcessMemory};

/// A Python value captured from a function's argument slot, reduced to what a span attribute can hold.
#[derive(Clone, Debug, PartialEq)]
pub enum ArgumentValue {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str { text: String, truncated: bool },
    Other { type_name: String },
}

/// Characters of a `str` argument kept; the rest is cut and the value flagged truncated.
pub const MAX_ARGUMENT_CHARS: usize = 64;

/// Entries of a dict looked at before giving up: module and type dicts hold far fewer, and a
/// key past this many is reported missing rather than read for ever.
const MAX_ENTRIES: usize = 65_536;
/// Longest type name read (`tp_name` is a C string with no stored length).
const MAX_TYPE_NAME: usize = 256;

/// `PyDictObject`: `ma_keys`, `ma_values` (the same in every supported version).
pub(super) const DICT_KEYS: usize = 32;
pub(super) const DICT_VALUES: usize = 40;
const DICT_HEADER: usize = 48;
/// `PyDictKeysObject` up to its indices: 40 bytes on 3.8–3.10, 32 from 3.11.
const KEYS_HEADER: usize = 40;
/// `PyTypeObject`: `tp_name`, `tp_flags`, `tp_dict` (the same in every supported version).
pub(super) const TYPE_NAME: u64 = 24;
pub(super) const TYPE_FLAGS: u64 = 168;
const TYPE_DICT: u64 = 264;
/// `Py_TPFLAGS_HEAPTYPE`: a class made at run time (a `class` statement, `PyType_FromSpec`).
const HEAP_TYPE: u64 = 1 << 9;
/// `PyASCIIObject.length` and `.state`; `PyLongObject`'s size (or 3.12+ tag) and first digit;
/// `PyFloatObject.ob_fval`.
const UNICODE_LENGTH: usize = memory::UNICODE_LENGTH as usize;
const UNICODE_STATE: usize = memory::UNICODE_STATE as usize;
pub(super) const LONG_SIZE: usize = 16;
pub(super) const LONG_DIGITS: usize = 24;
pub(super) const FLOAT_VALUE: usize = 16;
/// Bits in each `digit` of an int.
const DIGIT_BITS: u32 = 30;

/// `dict[key]` for a `str` key in a dict whose keys are strings (a module's globals, a type's dict).
///
/// A linear scan of the entries, comparing key strings: no hash is computed (CPython's string
/// hash is keyed per process). A table that does not read as one (a version the agent has no
/// layout for, or a dict resized while it was read) holds nothing to find.
pub fn dict_get_str(memory: &ProcessMemory, minor: u8, dict: u64, key: &str) -> Result<Option<u64>, MemoryError> {
    let Some(layout) = VersionLayout::for_minor(minor) else { return Ok(None) };
    let Some(table) = DictTable::read(memory, minor, dict)? else { return Ok(None) };
    let wanted_length = key.chars().count() as u64;
    for (entry_key, value) in table.entries(memory)? {
        // One small read rules out almost every other key before its text is read.
        if memory.u64(entry_key + UNICODE_LENGTH as u64)? != wanted_length {
            continue;
        }
        let Ok(text) = memory.unicode(entry_key, layout.unicode_ascii_data, layout.unicode_compact_data) else {
            continue;
        };
        if text == key && (!table.any_keys || type_name(memory, memory.u64(entry_key + OBJECT_TYPE)?)? == "str") {
            return Ok(Some(value));
        }
    }
    Ok(None)
}

/// A type object's `tp_name` (a C string pointer at offset 24 of PyTypeObject), bounded length.
pub fn type_name(memory: &ProcessMemory, type_object: u64) -> Result<String, MemoryError> {
    let name = memory.u64(type_object + TYPE_NAME)?;
    let bytes = memory.bytes_until_unmapped(name, MAX_TYPE_NAME)?;
    let end = bytes.iter().position(|&byte| byte == 0).unwrap_or(bytes.len());
    Ok(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

/// The name a class is known by where it was defined: `tp_name` for builtins ("ValueError"), `module.tp_name` for
/// heap types whose type dict has a `__module__` str other than "builtins" (e.g. "shop.orders.OutOfStock").
///
/// Static types carry their module in `tp_name` already ("re.Pattern" on 3.8), and so do
/// extension types made from a spec ("re.Pattern" on 3.10+, a heap type whose `__module__` is
/// "re"): a `tp_name` with a dot is kept as it is.
pub fn qualified_type_name(memory: &ProcessMemory, minor: u8, type_object: u64) -> Result<String, MemoryError> {
    let name = type_name(memory, type_object)?;
    if memory.u64(type_object + TYPE_FLAGS)? & HEAP_TYPE == 0 || name.contains('.') {
        return Ok(name);
    }
    match type_module(memory, minor, type_object)? {
        Some(module) if module != "builtins" => Ok(format!("{module}.{name}")),
        _ => Ok(name),
    }
}

/// A heap type's `__module__`, when it is a string.
fn type_module(memory: &ProcessMemory, minor: u8, type_object: u64) -> Result<Option<String>, MemoryError> {
    let Some(layout) = VersionLayout::for_minor(minor) else { return Ok(None) };
    let dict = memory.u64(type_object + TYPE_DICT)?;
    if dict == 0 {
        return Ok(None);
    }
    let Some(module) = dict_get_str(memory, minor, dict, "__module__")? else { return Ok(None) };
    Ok(memory.unicode(module, layout.unicode_ascii_data, layout.unicode_compact_data).ok())
}

/// Where a dict's entries are, as read from its header and its keys object.
struct DictTable {
    entries: u64,
    count: usize,
    entry_size: usize,
    key_offset: usize,
    value_offset: usize,
    /// Split tables keep values apart, one per entry, in this array.
    split_values: Option<u64>,
    /// Keys may be any object: a `str` key found must be checked to be a `str`. 3.11+ says when
    /// every key is an exact `str` (`dk_kind`); 3.8–3.10 only says so in a function pointer.
    any_keys: bool,
}

impl DictTable {
    fn read(memory: &ProcessMemory, minor: u8, dict: u64) -> Result<Option<Self>, MemoryError> {
        let header = memory.bytes(dict, DICT_HEADER)?;
        let keys = word(&header, DICT_KEYS).unwrap_or(0);
        let values = word(&header, DICT_VALUES).unwrap_or(0);
        if keys == 0 {
            return Ok(None);
        }
        let keys_header = memory.bytes(keys, KEYS_HEADER)?;
        let table =
            if minor >= 11 { Self::compact_keys(&keys_header, keys) } else { Self::sized_keys(&keys_header, keys) };
        let split_values = (values != 0).then(|| values + split_values_offset(minor));
        Ok(table.map(|table| Self { split_values, ..table }))
    }

    /// 3.8–3.10: `dk_size` slots of indices (1, 2, 4 or 8 bytes each, by size), then
    /// `{hash, key, value}` entries.
    fn sized_keys(header: &[u8], keys: u64) -> Option<Self> {
        let size = word(header, 8)?;
        let count = word(header, 32)?;
        if !size.is_power_of_two() || size > 1 << 40 || count > size {
            return None;
        }
        let index_width = match size {
            0..=0xff => 1,
            0x100..=0xffff => 2,
            0x1_0000..=0xffff_ffff => 4,
            _ => 8,
        };
        Some(Self {
            entries: keys.checked_add(40 + size * index_width)?,
            count: (count as usize).min(MAX_ENTRIES),
            entry_size: 24,
            key_offset: 8,
            value_offset: 16,
            split_values: None,
            any_keys: true,
        })
    }

    /// 3.11+: `1 << dk_log2_index_bytes` bytes of indices, then `{key, value}` entries for
    /// all-`str` kinds (unicode, split) or `{hash, key, value}` for the general kind.
    fn compact_keys(header: &[u8], keys: u64) -> Option<Self> {
        let log2_index_bytes = *header.get(9)?;
        let kind = *header.get(10)?;
        let count = word(header, 24)?;
        if log2_index_bytes > 40 || kind > 2 || count > 1 << 40 {
            return None;
        }
        let general = kind == 0;
        Some(Self {
            entries: keys.checked_add(32 + (1u64 << log2_index_bytes))?,
            count: (count as usize).min(MAX_ENTRIES),
            entry_size: if general { 24 } else { 16 },
            key_offset: if general { 8 } else { 0 },
            value_offset: if general { 16 } else { 8 },
            split_values: None,
            any_keys: general,
        })
    }

    /// The live `(key, value)` pairs: deleted entries (a NULL key or value) are skipped.
    fn entries(&self, memory: &ProcessMemory) -> Result<Vec<(u64, u64)>, MemoryError> {
        let raw = memory.bytes(self.entries, self.count * self.entry_size)?;
        let split = match self.split_values {
            Some(values) => Some(memory.bytes(values, self.count * 8)?),
            None => None,
        };
        let pairs = raw.chunks_exact(self.entry_size).enumerate().filter_map(|(index, entry)| {
            let key = word(entry, self.key_offset)?;
            let value = match &split {
                Some(values) => word(values, index * 8)?,
                None => word(entry, self.value_offset)?,
            };
            (key != 0 && value != 0).then_some((key, value))
        });
        Ok(pairs.collect())
    }
}

/// Where a split dict's value array starts in what `ma_values` points at: 3.13's
/// `PyDictValues` opens with 8 bytes of capacity, size and flags; before, it is the array.
fn split_values_offset(minor: u8) -> u64 {
    if minor >= 13 {
        8
    } else {
        0
    }
}

/// Decodes an argument object from the bytes the kernel copied from its start (`raw[0..]` = the object's first bytes:
/// refcount, type pointer, then the type's fields; `raw` may be shorter than the object), given its type's `tp_name`.
/// str/int/float/bool/NoneType are decoded; anything else, or bytes too short to decode, becomes `Other { type_name }`.
/// Strings longer than what `raw` holds, or longer than MAX_ARGUMENT_CHARS, come back truncated (flagged).
///
/// Only the exact builtin types are decoded (a subclass has its own `tp_name`); bytes that do not
/// read as their type (a freed object, a racing write) become `Other` too, never a panic.
pub fn decode_argument(minor: u8, type_name: &str, raw: &[u8]) -> ArgumentValue {
    let decoded = match type_name {
        "NoneType" => Some(ArgumentValue::None),
        "bool" => decode_int(minor, raw).map(|value| ArgumentValue::Bool(value != 0)),
        "int" => decode_int(minor, raw).map(ArgumentValue::Int),
        "float" => word(raw, FLOAT_VALUE).map(|bits| ArgumentValue::Float(f64::from_bits(bits))),
        "str" => decode_str(minor, raw),
        _ => None,
    };
    decoded.unwrap_or_else(|| ArgumentValue::Other { type_name: type_name.to_owned() })
}

/// A compact `str`'s first characters, as many as `raw` holds up to [`MAX_ARGUMENT_CHARS`].
fn decode_str(minor: u8, raw: &[u8]) -> Option<ArgumentValue> {
    let layout = VersionLayout::for_minor(minor)?;
    let length = usize::try_from(word(raw, UNICODE_LENGTH)?).ok()?;
    let state = u32::from_le_bytes(raw.get(UNICODE_STATE..UNICODE_STATE + 4)?.try_into().ok()?);
    let (kind, start) = compact_str(state, layout.unicode_ascii_data, layout.unicode_compact_data)?;
    let held = raw.get(start as usize..)?;
    let chars = length.min(MAX_ARGUMENT_CHARS).min(held.len() / kind as usize);
    let text = decode(&held[..chars * kind as usize], kind)?;
    Some(ArgumentValue::Str { text, truncated: chars < length })
}

/// An `int` (or `bool`) that fits an `i64`. Up to 3.11 the signed `ob_size` counts the digits;
/// from 3.12 `lv_tag` holds the count above 3 bits and the sign below (0 positive, 1 zero,
/// 2 negative).
fn decode_int(minor: u8, raw: &[u8]) -> Option<i64> {
    let size = word(raw, LONG_SIZE)?;
    let (digits, negative) = if minor >= 12 {
        match size & 0b11 {
            0 => (size >> 3, false),
            1 => return Some(0),
            2 => (size >> 3, true),
            _ => return None,
        }
    } else {
        let signed = size as i64;
        (signed.unsigned_abs(), signed < 0)
    };
    // Three digits are 90 bits: anything longer is no `i64` (CPython keeps no leading zero digit).
    if digits > 3 {
        return None;
    }
    let mut magnitude: u128 = 0;
    for index in (0..digits as usize).rev() {
        let at = LONG_DIGITS + index * 4;
        let digit = u32::from_le_bytes(raw.get(at..at + 4)?.try_into().ok()?);
        if digit >> DIGIT_BITS != 0 {
            return None;
        }
        magnitude = (magnitude << DIGIT_BITS) | digit as u128;
    }
    let signed = if negative { -(magnitude as i128) } else { magnitude as i128 };
    i64::try_from(signed).ok()
}

/// The little-endian `u64` at `offset`, if `raw` holds it.
fn word(raw: &[u8], offset: usize) -> Option<u64> {
    Some(u64::from_le_bytes(raw.get(offset..offset.checked_add(8)?)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};

    use super::*;

    /// Objects made by a real interpreter, whose addresses it prints, then waits on stdin.
    const SCRIPT: &str = r#"
import re, sys
g = globals()
g["__name__"] = "shop.orders"
class OutOfStock(Exception):
    pass
class Point:
    pass
p = Point()
p.x = 1
p.label = "north"
objects = {
    "globals": g, "out_of_stock": type(OutOfStock()), "value_error": ValueError,
    "pattern": type(re.compile("x")), "split": p.__dict__, "mixed": {1: "one", "a": 2},
    "forty_two": 42, "minus_seven": -7, "zero": 0, "two_62": 2**62, "i64_min": -2**63, "two_70": 2**70,
    "float": 3.5, "true": True, "false": False, "none": None,
    "abc": "abc", "empty": "", "cafe": "caf\u00e9", "cyrillic": "\u043b\u0438", "emoji": "\U0001f600",
    "long": "x" * 200, "dict": {"a": 1},
}
print(sys.version_info.minor)
for name, value in objects.items():
    print(name, id(value))
print("ready", flush=True)
sys.stdin.read()
"#;

    /// A running interpreter, killed when the test ends (or fails).
    struct Interpreter {
        child: Child,
        minor: u8,
        addresses: HashMap<String, u64>,
    }

    impl Interpreter {
        fn start(python: &Path) -> Self {
            let mut child = Command::new(python)
                .args(["-c", SCRIPT])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap_or_else(|error| panic!("{}: {error}", python.display()));
            let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
            let minor = lines.next().expect("a version line").unwrap().trim().parse().unwrap();
            let mut addresses = HashMap::new();
            for line in lines {
                let line = line.unwrap();
                if line == "ready" {
                    break;
                }
                let (name, address) = line.split_once(' ').expect("name and address");
                addresses.insert(name.to_owned(), address.parse().unwrap());
            }
            Self { child, minor, addresses }
        }

        fn address(&self, name: &str) -> u64 {
            self.addresses[name]
        }
    }

    impl Drop for Interpreter {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Every pyenv 3.8–3.13 build (there must be one), and Debian's 3.11 when installed.
    fn interpreters() -> Vec<PathBuf> {
        let root = std::env::var("PYENV_ROOT")
            .ok()
            .or_else(|| {
                let output = Command::new("pyenv").arg("root").output().ok()?;
                Some(String::from_utf8(output.stdout).ok()?.trim().to_owned()).filter(|root| !root.is_empty())
            })
            .unwrap_or_else(|| "/root/.pyenv".to_owned());
        let mut found: Vec<PathBuf> = std::fs::read_dir(Path::new(&root).join("versions"))
            .into_iter()
            .flatten()
            .filter_map(|entry| {
                let name = entry.ok()?.file_name().into_string().ok()?;
                let minor: u8 = name.strip_prefix("3.")?.split('.').next()?.parse().ok()?;
                let python = Path::new(&root).join("versions").join(&name).join("bin/python3");
                ((8..=13).contains(&minor) && python.exists()).then_some(python)
            })
            .collect();
        found.sort();
        assert!(!found.is_empty(), "no pyenv CPython 3.8–3.13 under {root}/versions");
        let debian = PathBuf::from("/usr/bin/python3.11");
        if debian.exists() {
            found.push(debian);
        }
        found
    }

    fn text(memory: &ProcessMemory, minor: u8, object: u64) -> String {
        let layout = VersionLayout::for_minor(minor).unwrap();
        memory.unicode(object, layout.unicode_ascii_data, layout.unicode_compact_data).unwrap()
    }

    fn argument(memory: &ProcessMemory, python: &Interpreter, name: &str) -> ArgumentValue {
        let address = python.address(name);
        let raw = memory.bytes_until_unmapped(address, 120).unwrap();
        let type_object = memory.u64(address + OBJECT_TYPE).unwrap();
        decode_argument(python.minor, &type_name(memory, type_object).unwrap(), &raw)
    }

    fn str_value(text: &str, truncated: bool) -> ArgumentValue {
        ArgumentValue::Str { text: text.to_owned(), truncated }
    }

    #[test]
    fn reads_dicts_type_names_and_arguments_of_every_interpreter() {
        for path in interpreters() {
            let python = Interpreter::start(&path);
            let minor = python.minor;
            let shown = format!("{} (3.{minor})", path.display());
            let memory = ProcessMemory::open(python.child.id()).unwrap();

            let globals = python.address("globals");
            let name = dict_get_str(&memory, minor, globals, "__name__").unwrap().expect("__name__");
            assert_eq!(text(&memory, minor, name), "shop.orders", "{shown}");
            assert_eq!(dict_get_str(&memory, minor, globals, "__nothing__").unwrap(), None, "{shown}");
            assert_eq!(dict_get_str(&memory, minor, globals, "g").unwrap(), Some(globals), "{shown}");

            let split = python.address("split");
            assert_ne!(memory.u64(split + DICT_VALUES as u64).unwrap(), 0, "{shown}: an instance dict is split");
            let label = dict_get_str(&memory, minor, split, "label").unwrap().expect("label");
            assert_eq!(text(&memory, minor, label), "north", "{shown}");
            assert_eq!(dict_get_str(&memory, minor, split, "y").unwrap(), None, "{shown}");

            let mixed = python.address("mixed");
            let two = dict_get_str(&memory, minor, mixed, "a").unwrap().expect("a in a general table");
            assert_eq!(decode_argument(minor, "int", &memory.bytes(two, 32).unwrap()), ArgumentValue::Int(2));

            for (object, plain, qualified) in [
                ("out_of_stock", "OutOfStock", "shop.orders.OutOfStock"),
                ("value_error", "ValueError", "ValueError"),
                ("pattern", "re.Pattern", "re.Pattern"),
            ] {
                let type_object = python.address(object);
                assert_eq!(type_name(&memory, type_object).unwrap(), plain, "{shown}");
                assert_eq!(qualified_type_name(&memory, minor, type_object).unwrap(), qualified, "{shown}");
            }

            let expected = [
                ("forty_two", ArgumentValue::Int(42)),
                ("minus_seven", ArgumentValue::Int(-7)),
                ("zero", ArgumentValue::Int(0)),
                ("two_62", ArgumentValue::Int(1 << 62)),
                ("i64_min", ArgumentValue::Int(i64::MIN)),
                ("two_70", ArgumentValue::Other { type_name: "int".into() }),
                ("float", ArgumentValue::Float(3.5)),
                ("true", ArgumentValue::Bool(true)),
                ("false", ArgumentValue::Bool(false)),
                ("none", ArgumentValue::None),
                ("abc", str_value("abc", false)),
                ("empty", str_value("", false)),
                ("cafe", str_value("café", false)),
                ("cyrillic", str_value("ли", false)),
                ("emoji", str_value("😀", false)),
                ("long", str_value(&"x".repeat(MAX_ARGUMENT_CHARS), true)),
                ("dict", ArgumentValue::Other { type_name: "dict".into() }),
            ];
            for (object, value) in expected {
                assert_eq!(argument(&memory, &python, object), value, "{shown}: {object}");
            }
        }
    }

    #[test]
    fn a_string_cut_short_by_the_copy_is_flagged() {
        // 3.12: a compact ASCII "hello" whose copy stops after three characters.
        let mut raw = vec![0u8; 40];
        raw[16] = 5;
        raw[32] = (1 << 2) | (1 << 5) | (1 << 6);
        raw.extend_from_slice(b"hel");
        assert_eq!(decode_argument(12, "str", &raw), str_value("hel", true));
        assert_eq!(decode_argument(12, "str", &raw[..30]), ArgumentValue::Other { type_name: "str".into() });
    }

    #[test]
    fn ints_by_version() {
        // -(2**31 + 5): two digits, 5 and 2.
        let mut old = vec![0u8; 32];
        old[16..24].copy_from_slice(&(-2i64).to_le_bytes());
        old[24..28].copy_from_slice(&5u32.to_le_bytes());
        old[28..32].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(decode_argument(11, "int", &old), ArgumentValue::Int(-(2i64 << 30) - 5));
        let mut tagged = old.clone();
        tagged[16..24].copy_from_slice(&((2u64 << 3) | 2).to_le_bytes());
        assert_eq!(decode_argument(12, "int", &tagged), ArgumentValue::Int(-(2i64 << 30) - 5));
        assert_eq!(decode_argument(11, "int", &old[..28]), ArgumentValue::Other { type_name: "int".into() });
        old[24..28].copy_from_slice(&(1u32 << 30).to_le_bytes());
        assert_eq!(decode_argument(11, "int", &old), ArgumentValue::Other { type_name: "int".into() });
    }

    #[test]
    fn garbage_never_panics() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let length = (next() % 160) as usize;
            let mut raw: Vec<u8> = (0..length).map(|_| next() as u8).collect();
            // Plausible headers as well as noise: small sizes and valid string states.
            if length >= 40 && next() % 2 == 0 {
                raw[16..24].copy_from_slice(&(next() % 300).to_le_bytes());
                raw[32] = (((next() % 8) << 2) | ((next() % 4) << 5)) as u8;
            }
            let minor = 7 + (next() % 8) as u8;
            for name in ["str", "int", "bool", "float", "NoneType", "list"] {
                if let ArgumentValue::Str { text, .. } = decode_argument(minor, name, &raw) {
                    assert!(text.chars().count() <= MAX_ARGUMENT_CHARS);
                }
            }
        }
    }
}
