//! The version layer: where CPython keeps what the agent reads, per minor version (x86-64).
//!
//! One table entry per version; everything else (the kernel's walk, code-object reading, line
//! tables) is driven by it. Offsets were taken from the pyenv builds' debug information
//! (`ptype /o`) and are checked against the running process before use ([`super::attach`]).
//! Adding 3.14 is an entry here plus the end-to-end tests for it: its line table keeps the 3.11
//! format ([`LineTableFormat::for_minor`] already accepts it), and its frames hold a tagged
//! `_PyStackRef` in `f_executable`, for which the entry needs one more flag telling the kernel
//! to clear the tag bits before reading the code object.

use scouter_ebpf::{generator_state, instance_dict, CallLayout, ObjectLayout, PythonLayout, NO_OFFSET};

use super::lines::LineTableFormat;

/// Where one CPython minor version keeps the fields the agent reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionLayout {
    pub minor: u8,
    /// `_PyRuntime` → `interpreters.head`.
    pub runtime_interpreters_head: u64,
    /// `_PyRuntime` → `autoTSSkey` (`Py_tss_t`: `_is_initialized` then the `pthread_key_t`).
    pub runtime_tss_key: u64,
    /// `PyInterpreterState` → first thread state.
    pub interpreter_threads_head: u64,
    pub tstate_next: u64,
    /// `PyThreadState.thread_id`: the thread's `pthread_t`, i.e. its thread pointer.
    pub tstate_thread_id: u64,
    pub tstate_frame: u16,
    pub cframe_frame: u16,
    pub frame_code: u16,
    pub frame_previous: u16,
    pub frame_instruction: u16,
    pub frame_owner: u16,
    /// 3.11+: the instruction is a pointer into `co_code_adaptive`; before, `f_lasti`.
    pub instruction_is_pointer: bool,
    /// 3.10: `f_lasti` counts code units, not bytes.
    pub lasti_in_code_units: bool,
    pub code_filename: u64,
    pub code_name: u64,
    /// `co_qualname` (3.11+).
    pub code_qualname: Option<u64>,
    pub code_firstlineno: u64,
    pub code_linetable: u64,
    /// 3.11+: the bytecode inside the code object, where instruction pointers point.
    pub code_adaptive: Option<u64>,
    /// `sizeof(PyASCIIObject)`: compact ASCII data follows it.
    pub unicode_ascii_data: u64,
    /// `sizeof(PyCompactUnicodeObject)`: compact non-ASCII data follows it.
    pub unicode_compact_data: u64,
    pub calls: CallOffsets,
}

/// What reading a call needs beyond a stack walk (function spans).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallOffsets {
    pub frame_globals: u16,
    pub frame_localsplus: u16,
    /// `_PyInterpreterFrame.owner` (3.11+).
    pub frame_owner: u16,
    pub code_flags: u16,
    /// `co_varnames` (up to 3.10) or `co_localsplusnames` (3.11+): the local slots' names,
    /// arguments first.
    pub code_local_names: u64,
    /// `curexc_type` (up to 3.11) or `current_exception` (3.12+).
    pub tstate_exception: u16,
    pub exception_is_object: bool,
    /// See [`CallLayout::generator_state`].
    pub generator_state: i16,
    pub generator_state_kind: u8,
    /// `PyInterpreterState.eval_frame` on versions that inline Python-to-Python calls unless
    /// it is set (3.11+).
    pub interpreter_eval_frame: Option<u64>,
}

impl VersionLayout {
    /// The table entry of CPython 3.`minor`, if the agent knows it.
    pub fn for_minor(minor: u8) -> Option<&'static Self> {
        LAYOUTS.iter().find(|layout| layout.minor == minor)
    }

    pub fn line_format(&self) -> LineTableFormat {
        LineTableFormat::for_minor(self.minor).unwrap_or(LineTableFormat::Locations)
    }

    /// What the kernel needs, with the thread-state slot found in the running process.
    pub fn for_kernel(&self, tstate_slot: u32) -> PythonLayout {
        PythonLayout {
            tstate_slot,
            tstate_frame: self.tstate_frame,
            cframe_frame: self.cframe_frame,
            frame_code: self.frame_code,
            frame_previous: self.frame_previous,
            frame_instruction: self.frame_instruction,
            frame_owner: self.frame_owner,
            instruction_is_pointer: self.instruction_is_pointer as u8,
            _pad: [0; 3],
        }
    }

    /// What the kernel needs to read an in-process SDK's trace context: strings, ints, dicts
    /// and instance attributes. Checked with ctypes against each supported build.
    pub fn for_objects(&self) -> ObjectLayout {
        let minor = self.minor;
        // `sizeof(PyTypeObject)` grew by a slot in 3.8 only (tp_print, back for one release)
        // and by 8 bytes in 3.12; `PyAsyncMethods` gained `am_send` in 3.10. The cached keys
        // follow the five method tables and three pointers (name, slots, qualname).
        let type_size = match minor {
            8 | 12.. => 416,
            _ => 408,
        };
        let async_methods = if minor >= 10 { 32 } else { 24 };
        let heap_type_cached_keys = type_size + async_methods + 288 + 24 + 80 + 16 + 3 * 8;
        ObjectLayout {
            ascii_data: self.unicode_ascii_data as u16,
            heap_type_cached_keys,
            instance_dict: match minor {
                ..=10 => instance_dict::AT_DICT_OFFSET,
                11 => instance_dict::VALUES_BEFORE,
                12 => instance_dict::TAGGED_BEFORE,
                _ => instance_dict::INLINE_AFTER,
            },
            compact_dict_keys: (minor >= 11) as u8,
            long_tagged_size: (minor >= 12) as u8,
            _pad: 0,
        }
    }

    /// What the kernel needs to report calls (function spans).
    pub fn for_calls(&self) -> CallLayout {
        let calls = &self.calls;
        CallLayout {
            frame_code: self.frame_code,
            frame_globals: calls.frame_globals,
            frame_localsplus: calls.frame_localsplus,
            frame_owner: calls.frame_owner,
            code_flags: calls.code_flags,
            tstate_exception: calls.tstate_exception,
            generator_state: calls.generator_state,
            generator_state_kind: calls.generator_state_kind,
            exception_is_object: calls.exception_is_object as u8,
            code_identity: self.code_filename as u16,
            _pad: [0; 2],
        }
    }
}

/// 3.8–3.10: `PyFrameObject` (`f_back`, `f_code`, `f_lasti`), code fields before the 3.11 rework.
/// A finished generator is told by `f_stacktop` on 3.8/3.9 and by `f_state` on 3.10.
const fn frame_object_era(minor: u8, tss_key: u64, lasti: u16, linetable: u64) -> VersionLayout {
    let (localsplus, generator_state, generator_state_kind) =
        if minor == 10 { (352, 108, generator_state::STATE_BYTE) } else { (360, 72, generator_state::STACK_TOP) };
    VersionLayout {
        minor,
        runtime_interpreters_head: 32,
        runtime_tss_key: tss_key,
        interpreter_threads_head: 8,
        tstate_next: 8,
        tstate_thread_id: 176,
        tstate_frame: 24,
        cframe_frame: NO_OFFSET,
        frame_code: 32,
        frame_previous: 24,
        frame_instruction: lasti,
        frame_owner: NO_OFFSET,
        instruction_is_pointer: false,
        lasti_in_code_units: minor == 10,
        code_filename: 104,
        code_name: 112,
        code_qualname: None,
        code_firstlineno: 40,
        code_linetable: linetable,
        code_adaptive: None,
        unicode_ascii_data: 48,
        unicode_compact_data: 72,
        calls: CallOffsets {
            frame_globals: 48,
            frame_localsplus: localsplus,
            frame_owner: NO_OFFSET,
            code_flags: 36,
            code_local_names: 72,
            tstate_exception: 88,
            exception_is_object: false,
            generator_state,
            generator_state_kind,
            interpreter_eval_frame: None,
        },
    }
}

/// 3.11+: a generator's `gi_frame_state` sits 5 bytes before its embedded frame.
const GENERATOR_STATE_BEFORE_FRAME: i16 = -5;

const PY312: VersionLayout = VersionLayout {
    minor: 12,
    runtime_interpreters_head: 40,
    runtime_tss_key: 1544,
    interpreter_threads_head: 72,
    tstate_next: 8,
    tstate_thread_id: 136,
    tstate_frame: 56,
    cframe_frame: 0,
    frame_code: 0,
    frame_previous: 8,
    frame_instruction: 56,
    frame_owner: 70,
    instruction_is_pointer: true,
    lasti_in_code_units: false,
    code_filename: 112,
    code_name: 120,
    code_qualname: Some(128),
    code_firstlineno: 68,
    code_linetable: 136,
    code_adaptive: Some(192),
    unicode_ascii_data: 40,
    unicode_compact_data: 56,
    calls: CallOffsets {
        frame_globals: 24,
        frame_localsplus: 72,
        frame_owner: 70,
        code_flags: 48,
        code_local_names: 96,
        tstate_exception: 96,
        exception_is_object: true,
        generator_state: GENERATOR_STATE_BEFORE_FRAME,
        generator_state_kind: generator_state::STATE_BYTE,
        interpreter_eval_frame: Some(1744),
    },
};

static LAYOUTS: [VersionLayout; 6] = [
    frame_object_era(8, 1392, 104, 120),
    frame_object_era(9, 584, 104, 120),
    frame_object_era(10, 584, 96, 120),
    VersionLayout {
        minor: 11,
        runtime_interpreters_head: 40,
        runtime_tss_key: 592,
        interpreter_threads_head: 16,
        tstate_next: 8,
        tstate_thread_id: 152,
        tstate_frame: 56,
        cframe_frame: 8,
        frame_code: 32,
        frame_previous: 48,
        frame_instruction: 56,
        frame_owner: NO_OFFSET,
        instruction_is_pointer: true,
        lasti_in_code_units: false,
        code_filename: 112,
        code_name: 120,
        code_qualname: Some(128),
        code_firstlineno: 72,
        code_linetable: 136,
        code_adaptive: Some(184),
        unicode_ascii_data: 48,
        unicode_compact_data: 72,
        calls: CallOffsets {
            frame_globals: 8,
            frame_localsplus: 72,
            frame_owner: 69,
            code_flags: 48,
            code_local_names: 96,
            tstate_exception: 96,
            exception_is_object: false,
            generator_state: GENERATOR_STATE_BEFORE_FRAME,
            generator_state_kind: generator_state::STATE_BYTE,
            interpreter_eval_frame: Some(1424),
        },
    },
    PY312,
    // 3.13 moved the runtime and interpreter state around, dropped `_PyCFrame` and grew the
    // code object header; frames and strings are as in 3.12.
    VersionLayout {
        minor: 13,
        runtime_interpreters_head: 632,
        runtime_tss_key: 2160,
        interpreter_threads_head: 7344,
        tstate_thread_id: 152,
        tstate_frame: 72,
        cframe_frame: NO_OFFSET,
        code_adaptive: Some(200),
        calls: CallOffsets { tstate_exception: 112, interpreter_eval_frame: Some(8472), ..PY312.calls },
        ..PY312
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_objects_file_and_name_pointers_are_adjacent_in_every_version() {
        // The kernel reads both in one 16-byte read to tell a code object from a freed one.
        for minor in 8..=13 {
            let layout = VersionLayout::for_minor(minor).unwrap();
            assert_eq!(layout.code_name, layout.code_filename + 8, "3.{minor}");
            assert_eq!(layout.for_calls().code_identity as u64, layout.code_filename, "3.{minor}");
        }
    }

    #[test]
    fn every_supported_version_has_an_entry_and_nothing_else_does() {
        for minor in 8..=13 {
            assert_eq!(VersionLayout::for_minor(minor).map(|l| l.minor), Some(minor));
        }
        assert!(VersionLayout::for_minor(7).is_none());
        assert!(VersionLayout::for_minor(14).is_none());
    }

    #[test]
    fn only_versions_that_inline_calls_need_the_evaluator_hook() {
        for minor in 8..=13 {
            let layout = VersionLayout::for_minor(minor).unwrap();
            assert_eq!(layout.calls.interpreter_eval_frame.is_some(), minor >= 11, "3.{minor}");
            assert_eq!(layout.for_calls().frame_owner != NO_OFFSET, minor >= 11, "3.{minor}");
        }
    }

    #[test]
    fn heap_types_keep_their_instances_shared_keys_where_each_build_puts_them() {
        // Read with ctypes from each pyenv build: `id(cls) + offset` points at the keys
        // object whose entries are the attribute names in first-assignment order.
        let offsets: Vec<(u8, u16)> =
            LAYOUTS.iter().map(|layout| (layout.minor, layout.for_objects().heap_type_cached_keys)).collect();
        assert_eq!(offsets, [(8, 872), (9, 864), (10, 872), (11, 872), (12, 880), (13, 880)]);
    }

    #[test]
    fn the_kernel_walks_through_cframe_only_on_3_11_and_3_12() {
        for minor in 8..=13 {
            let layout = VersionLayout::for_minor(minor).unwrap().for_kernel(0);
            assert_eq!(layout.cframe_frame != NO_OFFSET, minor == 11 || minor == 12, "3.{minor}");
            assert_eq!(layout.instruction_is_pointer != 0, minor >= 11, "3.{minor}");
        }
    }
}
