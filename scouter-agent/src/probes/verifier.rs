//! The verifier's own account of each program: the stack of every frame, the combined stack of
//! the deepest call chain, the instructions it processed and the time it took.
//!
//! aya keeps the verifier's log only when a load fails, so this loads each program a second
//! time, by itself, with the statistics log level (`BPF_LOG_STATS`): the same instructions
//! (relocated against the maps of an object aya loaded with the same globals, so constant
//! folding of read-only data is the same), the same BTF, the same program type. The kernel
//! prints `processed N insns`, `verification time N usec` and `stack depth A+B+...` (one figure
//! per subprogram, in address order) at that level; on a rejection, the lines before them are
//! the verifier's reason, whatever the kernel's log-overflow behaviour, since a statistics log
//! is a few lines long.
//!
//! The combined stack is computed as the verifier checks it: along every call chain (bpf-to-bpf
//! calls and callbacks such as `bpf_loop`'s, which run on top of their caller's frame), each
//! frame rounded up to 32 bytes, as kernels up to 6.9 (and any kernel without the JIT) round
//! it. Newer JIT-ed kernels round to 16, so the figure is an upper bound everywhere.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use aya::maps::Map;
use aya::Ebpf;
use aya_obj::btf::{Btf, BtfFeatures, BtfKind};
use aya_obj::generated::{
    bpf_attach_type, bpf_attr, bpf_attr__bindgen_ty_9, bpf_cmd, bpf_func_info, bpf_insn, bpf_prog_info, bpf_prog_type,
    BPF_PSEUDO_CALL, BPF_PSEUDO_FUNC,
};
use aya_obj::{Features, Object, ProgramSection};

/// The verifier's complexity limit (`BPF_COMPLEXITY_LIMIT_INSNS`) since 5.2.
pub const INSTRUCTION_LIMIT: u64 = 1_000_000;
/// The kernel's stack limit for a whole call chain (`MAX_BPF_STACK`).
pub const STACK_LIMIT: u32 = 512;
/// The project's budget for a call chain's stack: three quarters of the limit, so a verifier
/// that counts a little more (another kernel, another compiler) still loads the program.
pub const STACK_BUDGET: u32 = STACK_LIMIT * 3 / 4;
/// The project's budget for the instructions the verifier processes: half its limit.
pub const INSTRUCTION_BUDGET: u64 = INSTRUCTION_LIMIT / 2;

/// Bytes of log a statistics-level load writes: a few lines, or a rejection's reason.
const LOG_BYTES: usize = 1 << 20;
/// Bytes of a verbose log kept for a refused program (its end explains the refusal).
const VERBOSE_LOG_BYTES: usize = 1 << 24;
/// `BPF_LOG_STATS`.
const LOG_LEVEL_STATS: u32 = 4;
/// `BPF_LOG_LEVEL1`: every instruction the verifier walks, with register states at branches.
const LOG_LEVEL_VERBOSE: u32 = 1;
/// How many lines of a verbose log's end a refusal shows.
const VERBOSE_TAIL_LINES: usize = 30;
/// Granularity the verifier rounds each frame to (the strictest kernels').
const FRAME_ROUNDING: u32 = 32;

/// What the verifier said about one program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramStats {
    pub program: String,
    /// Stack bytes of each subprogram, in address order (the program itself first).
    pub frames: Vec<u32>,
    /// Stack of the deepest call chain, each frame rounded up to [`FRAME_ROUNDING`].
    pub combined: u32,
    /// That chain, outermost first: each subprogram's name (from the object's functions) and
    /// frame, so a reader sees which function holds the stack.
    pub deepest: Vec<(String, u32)>,
    /// Instructions the verifier processed (its complexity measure).
    pub processed: u64,
    pub time: Duration,
    /// The verifier's reason when it refused the program.
    pub rejection: Option<String>,
    /// Why the program does not apply to this kernel (an attach target it lacks), when it
    /// was not loaded at all.
    pub not_applicable: Option<String>,
}

impl ProgramStats {
    /// Whether the program loaded within [`STACK_BUDGET`] and [`INSTRUCTION_BUDGET`] (a program
    /// that does not apply to this kernel is not counted against it).
    pub fn within_budget(&self) -> bool {
        self.not_applicable.is_some()
            || (self.rejection.is_none() && self.combined <= STACK_BUDGET && self.processed <= INSTRUCTION_BUDGET)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("parsing the eBPF object: {0}")]
    Parse(#[from] aya_obj::ParseError),
    #[error("preparing the object's BTF: {0}")]
    Btf(#[from] aya_obj::btf::BtfError),
    #[error("relocating the object: {0}")]
    Relocation(String),
    #[error("loading the object's BTF: {0}")]
    BtfLoad(std::io::Error),
    #[error("the loaded object has no map {0}")]
    MissingMap(String),
}

/// Loads every program of `object` with the statistics log, against the maps of `loaded` (the
/// same object, loaded by aya with the agent's globals). `attach_target` names the kernel
/// function of an fentry/fexit program. Programs are returned in name order.
pub fn program_stats(
    object: &[u8],
    loaded: &Ebpf,
    attach_target: impl Fn(&str) -> Option<&'static str>,
) -> Result<Vec<ProgramStats>, StatsError> {
    let mut obj = Object::parse(object)?;
    let btf_fd = load_object_btf(&mut obj)?;
    let map_fds = map_fds(loaded);
    let text_sections = obj.functions.keys().map(|(section, _)| *section).collect();
    let definitions: Vec<(String, aya_obj::Map)> =
        obj.maps.iter().map(|(name, map)| (name.clone(), map.clone())).collect();
    let mut relocatable = Vec::with_capacity(definitions.len());
    for (name, definition) in &definitions {
        let fd = map_fds
            .iter()
            .find(|(loaded_name, _)| loaded_name == name)
            .map(|(_, fd)| *fd)
            .ok_or_else(|| StatsError::MissingMap(name.clone()))?;
        relocatable.push((name.as_str(), fd, definition));
    }
    obj.relocate_maps(relocatable.into_iter(), &text_sections)
        .map_err(|error| StatsError::Relocation(error.to_string()))?;
    obj.relocate_calls(&text_sections).map_err(|error| StatsError::Relocation(error.to_string()))?;
    obj.sanitize_functions(&modern_features());
    let kernel_btf = Btf::from_sys_fs().ok();
    let named: Vec<(String, Vec<u8>)> =
        obj.functions.values().map(|function| (short_name(&function.name), opcodes(&function.instructions))).collect();
    let mut names: Vec<String> = obj.programs.keys().cloned().collect();
    names.sort();
    let mut stats = Vec::with_capacity(names.len());
    for name in names {
        let program = &obj.programs[&name];
        let function = &obj.functions[&program.function_key()];
        let kind = match ProgramKind::of(&name, &program.section, kernel_btf.as_ref(), &attach_target) {
            Ok(kind) => kind,
            Err(reason) => {
                stats.push(ProgramStats::not_applicable(&name, reason));
                continue;
            }
        };
        let btf = btf_fd.as_ref().map(|fd| fd.as_fd());
        let mut log = load_with_log(&name, &program.license, &kind, function, btf, LOG_LEVEL_STATS);
        if let Some(errno) = log.refused_unverified {
            // Not the verifier's doing: the kernel does not take this kind of program here
            // (fentry where trampolines are not allowed); the agent captures another way.
            stats
                .push(ProgramStats::not_applicable(&name, format!("the kernel refuses this kind of program: {errno}")));
            continue;
        }
        let live = log.live.as_deref().map(|types| live_starts(&function.func_info.func_info, types));
        let mut program_stats =
            parse_stats(&name, &function.instructions, live.as_deref(), &log.text, log.refused, &named);
        if log.refused {
            // The statistics log names the failing check but not the instruction: the verbose
            // log's end does (unless an older kernel's log overflows and keeps only its head).
            log = load_with_log(&name, &program.license, &kind, function, btf, LOG_LEVEL_VERBOSE | LOG_LEVEL_STATS);
            if let Some(end) = verbose_end(&log.text) {
                program_stats.rejection = Some(end);
            }
        }
        stats.push(program_stats);
    }
    Ok(stats)
}

/// The last path segment of a (mangled) Rust symbol: `…2io9call_ends` → `call_ends`.
fn short_name(symbol: &str) -> String {
    let mut rest = symbol.strip_prefix("_R").unwrap_or(symbol);
    let mut last = symbol;
    // v0 mangling: identifiers are `<length><bytes>`; the last one is the function's name.
    while let Some(at) = rest.find(|c: char| c.is_ascii_digit()) {
        let digits: String = rest[at..].chars().take_while(char::is_ascii_digit).collect();
        let Ok(length) = digits.parse::<usize>() else { break };
        let start = at + digits.len();
        let start = if rest[start..].starts_with('_') { start + 1 } else { start };
        let Some(identifier) = rest.get(start..start + length) else { break };
        last = identifier;
        rest = &rest[start + length..];
    }
    last.to_owned()
}

fn opcodes(instructions: &[bpf_insn]) -> Vec<u8> {
    instructions.iter().map(|insn| insn.code).collect()
}

/// Every BPF and BTF feature the object may use: the statistics are taken on kernels that have
/// them all (5.17+), like every kernel the agent supports.
fn modern_features() -> Features {
    Features::new(true, true, true, true, true, true, true, Some(modern_btf_features()))
}

fn modern_btf_features() -> BtfFeatures {
    BtfFeatures::new(true, true, true, true, true, true, true, true)
}

fn load_object_btf(obj: &mut Object) -> Result<Option<OwnedFd>, StatsError> {
    let Some(btf) = obj.fixup_and_sanitize_btf(&modern_btf_features())? else { return Ok(None) };
    let bytes = btf.to_bytes();
    // SAFETY: an all-zero bpf_attr is a valid (empty) argument for every command.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.__bindgen_anon_7.btf = bytes.as_ptr() as u64;
    attr.__bindgen_anon_7.btf_size = bytes.len() as u32;
    bpf(bpf_cmd::BPF_BTF_LOAD, &mut attr).map(Some).map_err(StatsError::BtfLoad)
}

/// The descriptors of `loaded`'s maps, by name.
fn map_fds(loaded: &Ebpf) -> Vec<(String, RawFd)> {
    loaded.maps().filter_map(|(name, map)| Some((name.to_owned(), map_data_fd(map)?))).collect()
}

/// The descriptor of a map of any of the kinds the agent's object defines.
fn map_data_fd(map: &Map) -> Option<RawFd> {
    let data = match map {
        Map::Array(data)
        | Map::HashMap(data)
        | Map::LruHashMap(data)
        | Map::PerCpuArray(data)
        | Map::PerCpuHashMap(data)
        | Map::ProgramArray(data)
        | Map::RingBuf(data)
        | Map::SockHash(data)
        | Map::SockMap(data)
        | Map::Unsupported(data) => data,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
}

/// Whether sockops programs may call `bpf_get_current_pid_tgid` on this kernel (added after
/// 6.1): a three-instruction program is loaded and dropped.
pub fn sock_ops_knows_thread() -> bool {
    const GET_CURRENT_PID_TGID: i32 = 14;
    let program = [instruction(CALL, GET_CURRENT_PID_TGID), instruction(MOV64_IMM, 1), instruction(EXIT, 0)];
    let kind = ProgramKind {
        prog_type: bpf_prog_type::BPF_PROG_TYPE_SOCK_OPS,
        expected_attach_type: None,
        attach_btf_id: None,
    };
    load_probe(&kind, &program).is_ok()
}

/// Whether the kernel takes an fentry program on `function` (whose BTF id is `btf_id`): some
/// refuse every trampoline (a lockdown policy, ftrace locked), before verifying anything.
pub fn fentry_allowed(btf_id: u32) -> Result<(), std::io::Error> {
    let program = [instruction(MOV64_IMM, 0), instruction(EXIT, 0)];
    let kind = ProgramKind {
        prog_type: bpf_prog_type::BPF_PROG_TYPE_TRACING,
        expected_attach_type: Some(bpf_attach_type::BPF_TRACE_FENTRY),
        attach_btf_id: Some(btf_id),
    };
    load_probe(&kind, &program)
}

const CALL: u8 = 0x85;
const MOV64_IMM: u8 = 0xb7;
const EXIT: u8 = 0x95;

/// An instruction on r0 (or none): all a feature probe needs.
fn instruction(code: u8, imm: i32) -> bpf_insn {
    // SAFETY: bpf_insn is plain data; registers stay r0.
    let mut insn: bpf_insn = unsafe { std::mem::zeroed() };
    insn.code = code;
    insn.imm = imm;
    insn
}

/// Loads (and drops) a tiny program of `kind`: can this kernel take it?
fn load_probe(kind: &ProgramKind, program: &[bpf_insn]) -> Result<(), std::io::Error> {
    let license = c"GPL";
    // SAFETY: an all-zero bpf_attr is a valid empty argument.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the BPF_PROG_LOAD member; the pointers outlive the call.
    unsafe {
        let u = &mut attr.__bindgen_anon_3;
        u.prog_type = kind.prog_type as u32;
        if let Some(attach_type) = kind.expected_attach_type {
            u.expected_attach_type = attach_type as u32;
        }
        if let Some(id) = kind.attach_btf_id {
            u.attach_btf_id = id;
        }
        u.insns = program.as_ptr() as u64;
        u.insn_cnt = program.len() as u32;
        u.license = license.as_ptr() as u64;
    }
    bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr).map(drop)
}

/// The program type and attach target BPF_PROG_LOAD needs.
struct ProgramKind {
    prog_type: bpf_prog_type,
    expected_attach_type: Option<bpf_attach_type>,
    attach_btf_id: Option<u32>,
}

impl ProgramKind {
    fn of(
        name: &str,
        section: &ProgramSection,
        kernel_btf: Option<&Btf>,
        attach_target: &impl Fn(&str) -> Option<&'static str>,
    ) -> Result<Self, String> {
        let plain = |prog_type| Ok(Self { prog_type, expected_attach_type: None, attach_btf_id: None });
        match section {
            ProgramSection::TracePoint => plain(bpf_prog_type::BPF_PROG_TYPE_TRACEPOINT),
            ProgramSection::UProbe { .. }
            | ProgramSection::URetProbe { .. }
            | ProgramSection::KProbe
            | ProgramSection::KRetProbe => plain(bpf_prog_type::BPF_PROG_TYPE_KPROBE),
            ProgramSection::SockOps => plain(bpf_prog_type::BPF_PROG_TYPE_SOCK_OPS),
            ProgramSection::SkMsg => plain(bpf_prog_type::BPF_PROG_TYPE_SK_MSG),
            ProgramSection::RawTracePoint => plain(bpf_prog_type::BPF_PROG_TYPE_RAW_TRACEPOINT),
            ProgramSection::BtfTracePoint => {
                let tracepoint = attach_target(name).ok_or("no tracepoint is known for it")?;
                let btf = kernel_btf.ok_or("the kernel has no BTF")?;
                let typedef = format!("btf_trace_{tracepoint}");
                let id = btf
                    .id_by_type_name_kind(&typedef, BtfKind::Typedef)
                    .map_err(|error| format!("tracepoint {tracepoint}: {error}"))?;
                Ok(Self {
                    prog_type: bpf_prog_type::BPF_PROG_TYPE_TRACING,
                    expected_attach_type: Some(bpf_attach_type::BPF_TRACE_RAW_TP),
                    attach_btf_id: Some(id),
                })
            }
            ProgramSection::FEntry { .. } | ProgramSection::FExit { .. } => {
                let attach_type = if matches!(section, ProgramSection::FEntry { .. }) {
                    bpf_attach_type::BPF_TRACE_FENTRY
                } else {
                    bpf_attach_type::BPF_TRACE_FEXIT
                };
                let target = attach_target(name).ok_or("no kernel function is known for it")?;
                let btf = kernel_btf.ok_or("the kernel has no BTF")?;
                let id = btf
                    .id_by_type_name_kind(target, BtfKind::Func)
                    .map_err(|error| format!("kernel function {target}: {error}"))?;
                Ok(Self {
                    prog_type: bpf_prog_type::BPF_PROG_TYPE_TRACING,
                    expected_attach_type: Some(attach_type),
                    attach_btf_id: Some(id),
                })
            }
            other => Err(format!("section {other:?} is not one the agent uses")),
        }
    }
}

struct VerifierLog {
    text: String,
    refused: bool,
    /// Refused before verification (an empty log), with the system call's error.
    refused_unverified: Option<String>,
    /// The BTF types of the subprograms the verifier kept, when the program loaded.
    live: Option<Vec<u32>>,
}

fn load_with_log(
    name: &str,
    license: &CString,
    kind: &ProgramKind,
    function: &aya_obj::Function,
    btf_fd: Option<BorrowedFd<'_>>,
    log_level: u32,
) -> VerifierLog {
    let mut log = vec![0u8; if log_level & LOG_LEVEL_VERBOSE != 0 { VERBOSE_LOG_BYTES } else { LOG_BYTES }];
    let func_info = function.func_info.func_info_bytes();
    let line_info = function.line_info.line_info_bytes();
    // SAFETY: an all-zero bpf_attr is a valid (empty) argument for every command.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    // SAFETY: writing the BPF_PROG_LOAD member of the union; every pointer outlives the call.
    unsafe {
        let u = &mut attr.__bindgen_anon_3;
        for (slot, byte) in u.prog_name.iter_mut().zip(name.bytes().take(15)) {
            *slot = byte as _;
        }
        u.prog_type = kind.prog_type as u32;
        if let Some(attach_type) = kind.expected_attach_type {
            u.expected_attach_type = attach_type as u32;
        }
        if let Some(id) = kind.attach_btf_id {
            u.attach_btf_id = id;
        }
        u.insns = function.instructions.as_ptr() as u64;
        u.insn_cnt = function.instructions.len() as u32;
        u.license = license.as_ptr() as u64;
        if let Some(btf) = btf_fd {
            u.prog_btf_fd = btf.as_raw_fd() as u32;
            if function.func_info_rec_size > 0 {
                u.func_info = func_info.as_ptr() as u64;
                u.func_info_cnt = function.func_info.len() as u32;
                u.func_info_rec_size = function.func_info_rec_size as u32;
            }
            if function.line_info_rec_size > 0 {
                u.line_info = line_info.as_ptr() as u64;
                u.line_info_cnt = function.line_info.len() as u32;
                u.line_info_rec_size = function.line_info_rec_size as u32;
            }
        }
        u.log_level = log_level;
        u.log_buf = log.as_mut_ptr() as u64;
        u.log_size = log.len() as u32;
    }
    let result = bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr);
    let end = log.iter().position(|byte| *byte == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]).into_owned();
    match result {
        Ok(fd) => {
            let live = live_function_types(fd.as_fd());
            VerifierLog { text, refused: false, refused_unverified: None, live }
        }
        Err(error) => {
            let refused_unverified = text.trim().is_empty().then(|| error.to_string());
            VerifierLog { text, refused: true, refused_unverified, live: None }
        }
    }
}

/// The end of a verbose log, where the verifier shows the instruction it refused and why
/// (its statistics lines and notes about BTF argument types left out), if the log reached
/// its end.
fn verbose_end(log: &str) -> Option<String> {
    let explaining = |line: &&str| {
        !line.trim().is_empty()
            && !is_btf_note(line)
            && !line.starts_with("verification time ")
            && !line.starts_with("stack depth ")
            && !line.starts_with("processed ")
    };
    if !log.lines().any(|line| line.starts_with("processed ")) {
        return None;
    }
    let lines: Vec<&str> = log.lines().filter(explaining).collect();
    let tail = &lines[lines.len().saturating_sub(VERBOSE_TAIL_LINES)..];
    (!tail.is_empty()).then(|| tail.join("\n"))
}

/// Whether a log line is one of the notes older verifiers print about the BTF types of a
/// subprogram's arguments (harmless for static functions), not part of a refusal's reason.
pub fn is_btf_note(line: &str) -> bool {
    line.starts_with("reg type unsupported for arg#") || (line.starts_with("func '") && line.contains(" has btf_id "))
}

/// The BTF type of each subprogram the loaded program kept, in address order. The verifier
/// removes subprograms it proved dead (a branch on a constant global) before it prints its
/// frames, so these, not the object's, are the subprograms the frames belong to.
fn live_function_types(program: BorrowedFd<'_>) -> Option<Vec<u32>> {
    let count = program_info(program, |_| {})?.nr_func_info as usize;
    let mut records = vec![bpf_func_info { insn_off: 0, type_id: 0 }; count];
    program_info(program, |info| {
        info.nr_func_info = count as u32;
        info.func_info_rec_size = std::mem::size_of::<bpf_func_info>() as u32;
        info.func_info = records.as_mut_ptr() as u64;
    })?;
    Some(records.iter().map(|record| record.type_id).collect())
}

/// `BPF_OBJ_GET_INFO_BY_FD` for a program, with the buffers `prepare` points the request at.
fn program_info(program: BorrowedFd<'_>, prepare: impl FnOnce(&mut bpf_prog_info)) -> Option<bpf_prog_info> {
    // SAFETY: bpf_prog_info and bpf_attr are plain data; all-zero is a valid empty request.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    prepare(&mut info);
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.info = bpf_attr__bindgen_ty_9 {
        bpf_fd: program.as_raw_fd() as u32,
        info_len: std::mem::size_of::<bpf_prog_info>() as u32,
        info: &mut info as *mut bpf_prog_info as u64,
    };
    // SAFETY: `attr` describes `info` (and the buffers `prepare` set), which outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_int,
            &mut attr as *mut bpf_attr,
            std::mem::size_of::<bpf_attr>(),
        )
    };
    (ret == 0).then_some(info)
}

/// The `bpf(2)` system call for a command that returns a new descriptor.
fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid bpf_attr for `cmd`, and its size is passed along.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, cmd as libc::c_int, attr as *mut bpf_attr, std::mem::size_of::<bpf_attr>())
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the command returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

impl ProgramStats {
    fn not_applicable(program: &str, reason: String) -> Self {
        ProgramStats {
            program: program.to_owned(),
            frames: Vec::new(),
            combined: 0,
            processed: 0,
            time: Duration::ZERO,
            rejection: None,
            not_applicable: Some(reason),
            deepest: Vec::new(),
        }
    }
}

/// Reads the statistics out of a log, and the stack of the deepest call chain out of the
/// program's instructions and the frame sizes the log gives.
fn parse_stats(
    program: &str,
    instructions: &[bpf_insn],
    live: Option<&[usize]>,
    log: &str,
    refused: bool,
    functions: &[(String, Vec<u8>)],
) -> ProgramStats {
    let mut frames = Vec::new();
    let mut processed = 0;
    let mut time = Duration::ZERO;
    let mut reason = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix("processed ") {
            processed = rest.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("verification time ") {
            let micros = rest.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
            time = Duration::from_micros(micros);
        } else if let Some(rest) = line.strip_prefix("stack depth ") {
            frames = rest.trim().split('+').filter_map(|n| n.parse().ok()).collect();
        } else if !line.trim().is_empty() && !is_btf_note(line) {
            reason.push(line.trim_end());
        }
    }
    let starts = subprogram_starts(instructions);
    let graph = call_graph(instructions, &starts);
    let kept: Vec<usize> = match live {
        Some(live) => live.iter().filter_map(|start| starts.binary_search(start).ok()).collect(),
        None => (0..starts.len()).collect(),
    };
    let (combined, chain) = deepest_chain(&kept_graph(&graph, &kept), &frames);
    let name_of = |index: usize| match kept[index] {
        0 => program.to_owned(),
        original => subprogram_name(instructions, &starts, original, functions),
    };
    let deepest = chain.into_iter().map(|index| (name_of(index), frames.get(index).copied().unwrap_or(0))).collect();
    let rejection = refused.then(|| {
        if reason.is_empty() {
            "refused without a reason in the statistics log".to_owned()
        } else {
            reason.join("\n")
        }
    });
    ProgramStats {
        program: program.to_owned(),
        frames,
        combined,
        deepest,
        processed,
        time,
        rejection,
        not_applicable: None,
    }
}

/// The name of the object's function whose instructions subprogram `index` is (matched by
/// opcodes, which relocation leaves alone), or `#index`.
fn subprogram_name(
    instructions: &[bpf_insn],
    starts: &[usize],
    index: usize,
    functions: &[(String, Vec<u8>)],
) -> String {
    let start = starts[index];
    let end = starts.get(index + 1).copied().unwrap_or(instructions.len());
    let body = opcodes(&instructions[start..end]);
    functions.iter().find(|(_, code)| *code == body).map_or_else(|| format!("#{index}"), |(name, _)| name.clone())
}

/// Where each subprogram starts: the program's first instruction and every call or callback
/// target, in address order (as the verifier numbers them).
fn subprogram_starts(instructions: &[bpf_insn]) -> Vec<usize> {
    let targets = instructions
        .iter()
        .enumerate()
        .filter_map(|(at, insn)| subprogram_reference(insn).map(|offset| (at as i64 + 1 + offset) as usize));
    let starts: BTreeSet<usize> = std::iter::once(0).chain(targets).collect();
    starts.into_iter().collect()
}

/// For each subprogram (in address order, as the verifier numbers them), the subprograms it
/// calls or passes as a callback.
fn call_graph(instructions: &[bpf_insn], starts: &[usize]) -> Vec<Vec<usize>> {
    let references: Vec<(usize, usize)> = instructions
        .iter()
        .enumerate()
        .filter_map(|(at, insn)| subprogram_reference(insn).map(|offset| (at, (at as i64 + 1 + offset) as usize)))
        .collect();
    let subprogram_of = |at: usize| starts.partition_point(|start| *start <= at) - 1;
    let mut graph = vec![Vec::new(); starts.len()];
    for (at, target) in references {
        let callee = starts.binary_search(&target).unwrap_or(0);
        let caller = &mut graph[subprogram_of(at)];
        if !caller.contains(&callee) {
            caller.push(callee);
        }
    }
    graph
}

/// Where each subprogram the verifier kept starts, from the object's function records (the
/// instruction each function starts at, and its BTF type) and the types the kernel kept.
fn live_starts(records: &[bpf_func_info], kept_types: &[u32]) -> Vec<usize> {
    let mut starts: Vec<usize> = records
        .iter()
        .filter(|record| kept_types.contains(&record.type_id))
        .map(|record| record.insn_off as usize)
        .collect();
    starts.sort_unstable();
    starts
}

/// The call graph among the kept subprograms only (`kept` holds their indices in `graph`),
/// renumbered as the verifier numbers them.
fn kept_graph(graph: &[Vec<usize>], kept: &[usize]) -> Vec<Vec<usize>> {
    kept.iter()
        .map(|original| graph[*original].iter().filter_map(|callee| kept.iter().position(|k| k == callee)).collect())
        .collect()
}

/// The relative target of a bpf-to-bpf call or of a callback's address load.
fn subprogram_reference(insn: &bpf_insn) -> Option<i64> {
    const CALL: u8 = 0x85;
    const LOAD_IMM64: u8 = 0x18;
    let src = insn.src_reg() as u32;
    let calls = insn.code == CALL && src == BPF_PSEUDO_CALL;
    let callback = insn.code == LOAD_IMM64 && src == BPF_PSEUDO_FUNC;
    (calls || callback).then_some(insn.imm as i64)
}

/// The largest sum of rounded frames along a call chain from the program's entry, and that
/// chain (subprogram indices, outermost first).
fn deepest_chain(graph: &[Vec<usize>], frames: &[u32]) -> (u32, Vec<usize>) {
    fn deepest(node: usize, graph: &[Vec<usize>], frames: &[u32], depth: usize) -> (u32, Vec<usize>) {
        let own = frames.get(node).copied().unwrap_or(0).max(1).div_ceil(FRAME_ROUNDING) * FRAME_ROUNDING;
        // The verifier refuses recursion and deeper chains than 8 frames; so does this.
        let below = if depth > 8 {
            (0, Vec::new())
        } else {
            graph
                .get(node)
                .and_then(|callees| {
                    callees
                        .iter()
                        .map(|callee| deepest(*callee, graph, frames, depth + 1))
                        .max_by_key(|(size, _)| *size)
                })
                .unwrap_or_default()
        };
        let mut chain = vec![node];
        chain.extend(below.1);
        (own + below.0, chain)
    }
    if graph.is_empty() {
        return (0, Vec::new());
    }
    deepest(0, graph, frames, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(code: u8, src: u8, imm: i32) -> bpf_insn {
        // SAFETY: bpf_insn is plain data.
        let mut insn: bpf_insn = unsafe { std::mem::zeroed() };
        insn.code = code;
        insn.set_src_reg(src);
        insn.imm = imm;
        insn
    }

    #[test]
    fn the_deepest_chain_sums_rounded_frames_through_calls_and_callbacks() {
        // 0: call +2 (-> 3), 1: ld_imm64 callback +4 (-> 6), 2: exit, 3..5: sub A, 6..: sub B.
        let exit = insn(0x95, 0, 0);
        let program = vec![insn(0x85, 1, 2), insn(0x18, 4, 4), exit, exit, exit, exit, exit];
        let starts = subprogram_starts(&program);
        assert_eq!(starts, vec![0, 3, 6]);
        let graph = call_graph(&program, &starts);
        assert_eq!(graph, vec![vec![1, 2], vec![], vec![]]);
        // 448 + max(round(8), round(80)) = 448 + 96, through the callback.
        assert_eq!(deepest_chain(&graph, &[448, 8, 80]), (544, vec![0, 2]));
        // An empty frame still takes one rounding unit.
        assert_eq!(deepest_chain(&graph, &[0, 0, 0]).0, 64);
    }

    #[test]
    fn frames_belong_to_the_subprograms_the_verifier_kept() {
        // Subprogram 1 (at 3) was dead: the kernel's frames are for 0 and 2 only.
        let exit = insn(0x95, 0, 0);
        let program = vec![insn(0x85, 1, 2), insn(0x18, 4, 4), exit, exit, exit, exit, exit];
        let records = [
            bpf_func_info { insn_off: 0, type_id: 10 },
            bpf_func_info { insn_off: 3, type_id: 11 },
            bpf_func_info { insn_off: 6, type_id: 12 },
        ];
        let live = live_starts(&records, &[10, 12]);
        assert_eq!(live, vec![0, 6]);
        let log = "stack depth 448+80\nprocessed 10 insns\n";
        let stats = parse_stats("p", &program, Some(&live), log, false, &[]);
        assert_eq!(stats.combined, 448 + 96);
        assert_eq!(stats.deepest, vec![("p".to_owned(), 448), ("#2".to_owned(), 80)]);
    }

    #[test]
    fn subprograms_are_named_after_the_function_with_their_instructions() {
        let exit = insn(0x95, 0, 0);
        let mov = insn(0xb7, 0, 0);
        let program = vec![insn(0x85, 1, 1), exit, mov, exit];
        let starts = subprogram_starts(&program);
        let functions = vec![("call_ends".to_owned(), vec![0xb7, 0x95])];
        assert_eq!(subprogram_name(&program, &starts, 1, &functions), "call_ends");
        assert_eq!(subprogram_name(&program, &starts, 1, &[]), "#1");
        let mangled = "_RNvNtNtCs6JfbDOVgpzV_12scouter_ebpf8programs2io9call_ends";
        assert_eq!(short_name(mangled), "call_ends");
        assert_eq!(short_name("plain"), "plain");
    }

    #[test]
    fn a_statistics_log_gives_frames_instructions_time_and_no_rejection() {
        let log = "func#0 @0\nverification time 923566 usec\nstack depth 448+0+8\n\
                   processed 130481 insns (limit 1000000) max_states_per_insn 27 total_states 3993\n";
        let stats = parse_stats("io_exit", &[insn(0x95, 0, 0)], None, log, false, &[]);
        assert_eq!(stats.frames, vec![448, 0, 8]);
        assert_eq!(stats.processed, 130_481);
        assert_eq!(stats.time, Duration::from_micros(923_566));
        assert_eq!(stats.rejection, None);
    }

    #[test]
    fn a_refusal_keeps_the_verifiers_reason() {
        let log = "combined stack size of 2 calls is 528. Too large\nverification time 9 usec\nstack depth 448+80\n";
        let stats = parse_stats("io_enter_write", &[insn(0x95, 0, 0)], None, log, true, &[]);
        assert_eq!(stats.rejection.as_deref(), Some("combined stack size of 2 calls is 528. Too large"));
    }

    #[test]
    fn a_verbose_logs_end_explains_a_refusal_without_the_btf_notes() {
        let log = "reg type unsupported for arg#0 function io_exit#176\n\
                   func 'inet6_sendmsg' arg1 has btf_id 916 type STRUCT 'msghdr'\n\
                   12: (71) r1 = *(u8 *)(r4 +0)\n\
                   R4 unbounded memory access, make sure to bounds check any such access\n\
                   verification time 9 usec\nstack depth 16\nprocessed 10 insns (limit 1000000)\n";
        assert_eq!(
            verbose_end(log).as_deref(),
            Some("12: (71) r1 = *(u8 *)(r4 +0)\nR4 unbounded memory access, make sure to bounds check any such access")
        );
        // A log that overflowed (an older kernel keeps its head) does not reach the reason.
        assert_eq!(verbose_end("0: (b7) r0 = 0\n1: (95) exit\n"), None);
    }
}
