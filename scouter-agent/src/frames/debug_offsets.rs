//! `_Py_DebugOffsets` (3.13+): the table CPython keeps at the start of `_PyRuntime` for
//! debuggers and profilers outside the process.
//!
//! The agent still drives its reads from its own [`VersionLayout`] entry (the table lacks what
//! the kernel needs most: the thread-state slot, `eval_frame`, `co_flags`), but on 3.13+ it
//! checks that entry field by field against the table of the running process, and the version
//! the table names against the one read from the binary. A build that moved a field (a patch
//! release, a distribution's patch, a free-threaded build) is reported and left alone instead
//! of being read blindly. The table's shape changes between minor versions (3.14 adds fields),
//! so each minor the agent knows has a [`Schema`]: adding 3.14 is one more schema.

use crate::discovery::PythonVersion;

use super::layout::VersionLayout;
use super::{memory, objects};

/// The table's first 8 bytes.
const COOKIE: &[u8; 8] = b"xdebugpy";

/// The table's groups of offsets, in order, each a list of field names whose first is the
/// struct's size.
type Schema = &'static [(&'static str, &'static [&'static str])];

/// CPython 3.13's `_Py_DebugOffsets`, up to the groups the agent compares.
const SCHEMA_3_13: Schema = &[
    ("runtime_state", &["size", "finalizing", "interpreters_head"]),
    (
        "interpreter_state",
        &[
            "size",
            "id",
            "next",
            "threads_head",
            "gc",
            "imports_modules",
            "sysdict",
            "builtins",
            "ceval_gil",
            "gil_runtime_state",
            "gil_runtime_state_enabled",
            "gil_runtime_state_locked",
            "gil_runtime_state_holder",
        ],
    ),
    (
        "thread_state",
        &[
            "size",
            "prev",
            "next",
            "interp",
            "current_frame",
            "thread_id",
            "native_thread_id",
            "datastack_chunk",
            "status",
        ],
    ),
    ("interpreter_frame", &["size", "previous", "executable", "instr_ptr", "localsplus", "owner"]),
    (
        "code_object",
        &[
            "size",
            "filename",
            "name",
            "qualname",
            "linetable",
            "firstlineno",
            "argcount",
            "localsplusnames",
            "localspluskinds",
            "co_code_adaptive",
        ],
    ),
    ("pyobject", &["size", "ob_type"]),
    ("type_object", &["size", "tp_name", "tp_repr", "tp_flags"]),
    ("tuple_object", &["size", "ob_item", "ob_size"]),
    ("list_object", &["size", "ob_item", "ob_size"]),
    ("dict_object", &["size", "ma_keys", "ma_values"]),
    ("float_object", &["size", "ob_fval"]),
    ("long_object", &["size", "lv_tag", "ob_digit"]),
    ("bytes_object", &["size", "ob_size", "ob_sval"]),
    ("unicode_object", &["size", "state", "length", "asciiobject_size"]),
];

/// Bytes of `_PyRuntime` to read to parse any known schema.
pub const TABLE_BYTES: usize = 8 * 96;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DebugOffsetsError {
    #[error("_PyRuntime does not start with the _Py_DebugOffsets cookie")]
    NoCookie,
    #[error("_Py_DebugOffsets is shorter than its schema")]
    Truncated,
    #[error("_Py_DebugOffsets says Python {0}, but the binary says {1}")]
    VersionDisagrees(PythonVersion, PythonVersion),
    #[error("a free-threaded build (its objects are laid out differently); not supported")]
    FreeThreaded,
    #[error("no _Py_DebugOffsets schema is known for Python 3.{0}")]
    UnknownSchema(u8),
    #[error("the layout for Python 3.{minor} disagrees with the interpreter's _Py_DebugOffsets: {fields}")]
    Disagrees { minor: u8, fields: String },
}

/// A parsed table: the version it names and every offset by "group.field".
#[derive(Debug)]
pub struct DebugOffsets {
    pub version: PythonVersion,
    offsets: Vec<(String, u64)>,
}

impl DebugOffsets {
    /// Parses the table at the start of `table` (little-endian u64s after the cookie).
    pub fn parse(table: &[u8]) -> Result<Self, DebugOffsetsError> {
        if table.get(..COOKIE.len()) != Some(COOKIE.as_slice()) {
            return Err(DebugOffsetsError::NoCookie);
        }
        let mut words = table[COOKIE.len()..].chunks_exact(8).map(|word| u64::from_le_bytes(word.try_into().unwrap()));
        let version = PythonVersion::from_hex(words.next().ok_or(DebugOffsetsError::Truncated)? as u32);
        if words.next().ok_or(DebugOffsetsError::Truncated)? != 0 {
            return Err(DebugOffsetsError::FreeThreaded);
        }
        let schema = schema_for(version.minor).ok_or(DebugOffsetsError::UnknownSchema(version.minor))?;
        let mut offsets = Vec::new();
        for (group, fields) in schema {
            for field in *fields {
                let value = words.next().ok_or(DebugOffsetsError::Truncated)?;
                offsets.push((format!("{group}.{field}"), value));
            }
        }
        Ok(Self { version, offsets })
    }

    pub fn get(&self, name: &str) -> Option<u64> {
        self.offsets.iter().find(|(known, _)| known == name).map(|(_, value)| *value)
    }

    /// Checks the table against the version read from the binary and against `layout`.
    pub fn verify(&self, binary_version: PythonVersion, layout: &VersionLayout) -> Result<(), DebugOffsetsError> {
        if self.version != binary_version {
            return Err(DebugOffsetsError::VersionDisagrees(self.version, binary_version));
        }
        let fields: Vec<String> = expectations(layout)
            .into_iter()
            .filter_map(|(name, ours)| {
                let theirs = self.get(name);
                (theirs != Some(ours)).then(|| match theirs {
                    Some(theirs) => format!("{name} is {theirs}, the agent's table says {ours}"),
                    None => format!("{name} is missing"),
                })
            })
            .collect();
        if fields.is_empty() {
            Ok(())
        } else {
            Err(DebugOffsetsError::Disagrees { minor: layout.minor, fields: fields.join("; ") })
        }
    }
}

fn schema_for(minor: u8) -> Option<Schema> {
    match minor {
        13 => Some(SCHEMA_3_13),
        _ => None,
    }
}

/// Every offset the agent reads that the table also records, by the table's name for it: the
/// version's layout, and the object offsets argument capture assumes in every version.
fn expectations(layout: &VersionLayout) -> Vec<(&'static str, u64)> {
    let mut expected = vec![
        ("dict_object.ma_keys", objects::DICT_KEYS as u64),
        ("dict_object.ma_values", objects::DICT_VALUES as u64),
        ("type_object.tp_name", objects::TYPE_NAME),
        ("type_object.tp_flags", objects::TYPE_FLAGS),
        ("long_object.lv_tag", objects::LONG_SIZE as u64),
        ("long_object.ob_digit", objects::LONG_DIGITS as u64),
        ("float_object.ob_fval", objects::FLOAT_VALUE as u64),
        ("bytes_object.ob_size", memory::BYTES_SIZE),
        ("bytes_object.ob_sval", memory::BYTES_DATA),
        ("unicode_object.state", memory::UNICODE_STATE),
        ("unicode_object.length", memory::UNICODE_LENGTH),
        ("runtime_state.interpreters_head", layout.runtime_interpreters_head),
        ("interpreter_state.threads_head", layout.interpreter_threads_head),
        ("thread_state.next", layout.tstate_next),
        ("thread_state.thread_id", layout.tstate_thread_id),
        ("thread_state.current_frame", u64::from(layout.tstate_frame)),
        ("interpreter_frame.previous", u64::from(layout.frame_previous)),
        ("interpreter_frame.executable", u64::from(layout.frame_code)),
        ("interpreter_frame.instr_ptr", u64::from(layout.frame_instruction)),
        ("interpreter_frame.owner", u64::from(layout.frame_owner)),
        ("interpreter_frame.localsplus", u64::from(layout.calls.frame_localsplus)),
        ("code_object.filename", layout.code_filename),
        ("code_object.name", layout.code_name),
        ("code_object.linetable", layout.code_linetable),
        ("code_object.firstlineno", layout.code_firstlineno),
        ("code_object.localsplusnames", layout.calls.code_local_names),
        ("unicode_object.asciiobject_size", layout.unicode_ascii_data),
    ];
    if let Some(qualname) = layout.code_qualname {
        expected.push(("code_object.qualname", qualname));
    }
    if let Some(adaptive) = layout.code_adaptive {
        expected.push(("code_object.co_code_adaptive", adaptive));
    }
    expected
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table of pyenv's 3.13.0 (`libpython3.13.so.1.0`), as read from the file.
    const PYENV_3_13_0: [u64; 57] = [
        0x30d00f0, 0, 283320, 608, 632, 194968, 7272, 7264, 7344, 7400, 7656, 7640, 7648, 16, 7752, 0, 7768, 7760, 304,
        0, 8, 16, 72, 152, 160, 232, 32, 80, 8, 0, 56, 72, 70, 208, 112, 120, 128, 136, 68, 52, 96, 104, 200, 16, 8,
        416, 24, 88, 168, 32, 24, 16, 40, 24, 16, 48, 32,
    ];

    fn table(words: &[u64]) -> Vec<u8> {
        let mut bytes = COOKIE.to_vec();
        for word in words {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        // The rest of the schema (floats, longs, bytes, strings), as in 3.13.0.
        for word in [40u64, 24, 16, 32, 16, 24, 40, 16, 32, 64, 32, 16, 40] {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        bytes
    }

    fn v3_13_0() -> PythonVersion {
        PythonVersion { major: 3, minor: 13, micro: 0 }
    }

    #[test]
    fn the_agents_3_13_table_agrees_with_the_interpreters() {
        let offsets = DebugOffsets::parse(&table(&PYENV_3_13_0)).unwrap();
        assert_eq!(offsets.version, v3_13_0());
        assert_eq!(offsets.get("thread_state.current_frame"), Some(72));
        assert_eq!(offsets.get("unicode_object.asciiobject_size"), Some(40));
        offsets.verify(v3_13_0(), VersionLayout::for_minor(13).unwrap()).unwrap();
    }

    #[test]
    fn a_moved_field_is_named() {
        let mut words = PYENV_3_13_0;
        words[22] = 80; // thread_state.current_frame
        let offsets = DebugOffsets::parse(&table(&words)).unwrap();
        let error = offsets.verify(v3_13_0(), VersionLayout::for_minor(13).unwrap()).unwrap_err();
        assert!(error.to_string().contains("thread_state.current_frame is 80, the agent's table says 72"), "{error}");
    }

    #[test]
    fn the_object_offsets_argument_capture_assumes_are_checked_too() {
        let mut words = PYENV_3_13_0;
        words[56] = 24; // dict_object.ma_keys
        let offsets = DebugOffsets::parse(&table(&words)).unwrap();
        let error = offsets.verify(v3_13_0(), VersionLayout::for_minor(13).unwrap()).unwrap_err();
        assert!(error.to_string().contains("dict_object.ma_keys is 24, the agent's table says 32"), "{error}");
    }

    #[test]
    fn the_version_must_be_the_binarys() {
        let offsets = DebugOffsets::parse(&table(&PYENV_3_13_0)).unwrap();
        let other = PythonVersion { major: 3, minor: 13, micro: 1 };
        assert_eq!(
            offsets.verify(other, VersionLayout::for_minor(13).unwrap()),
            Err(DebugOffsetsError::VersionDisagrees(v3_13_0(), other))
        );
    }

    #[test]
    fn bad_tables_are_refused() {
        assert_eq!(DebugOffsets::parse(b"notdebug").unwrap_err(), DebugOffsetsError::NoCookie);
        let mut free_threaded = PYENV_3_13_0;
        free_threaded[1] = 1;
        assert_eq!(DebugOffsets::parse(&table(&free_threaded)).unwrap_err(), DebugOffsetsError::FreeThreaded);
        let mut future = PYENV_3_13_0;
        future[0] = 0x30e00f0;
        assert_eq!(DebugOffsets::parse(&table(&future)).unwrap_err(), DebugOffsetsError::UnknownSchema(14));
        assert_eq!(DebugOffsets::parse(&table(&PYENV_3_13_0)[..100]).unwrap_err(), DebugOffsetsError::Truncated);
    }
}
