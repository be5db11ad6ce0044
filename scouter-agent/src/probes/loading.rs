//! Loading programs into the kernel: every program a feature needs, verified in parallel.
//!
//! Verification is CPU-bound and most of the agent's start-up: the kernel verifies each
//! program in the thread that loads it, so a few threads load them at once (the largest
//! take a few hundred milliseconds each on a 2-core machine). Attaching happens afterwards,
//! feature by feature, on the one thread that owns the object.
//!
//! A refusal is reported with the verifier's own reason: the object is loaded with the
//! statistics log level, so the log aya keeps on a failure is a few lines (the reason and the
//! figures) that no kernel truncates, whatever its log-overflow behaviour.

use std::sync::Mutex;

use aya::programs::{Program, ProgramError};
use aya::{Btf, Ebpf};

use super::{capture, verifier, ProbeError};

/// How many programs are verified at once, at most.
const MAX_LOADERS: usize = 4;
/// How many verifier log lines an error shows (the end, where the rejection is explained).
const VERIFIER_LOG_TAIL: usize = 25;

/// Loads each of `wanted` that the object holds; returns every wanted program's result.
/// fentry/fexit programs are loaded for their kernel function ([`capture::socket_function`]),
/// BTF tracepoints for their tracepoint, as `kernel_btf` describes them.
pub fn load_programs(
    ebpf: &mut Ebpf,
    wanted: &[&'static str],
    kernel_btf: &Btf,
) -> Vec<(&'static str, Result<(), ProbeError>)> {
    let mut results: Vec<(&'static str, Result<(), ProbeError>)> = Vec::with_capacity(wanted.len());
    let mut queue: Vec<(&'static str, &mut Program)> = Vec::with_capacity(wanted.len());
    for (name, program) in ebpf.programs_mut() {
        if let Some(wanted_name) = wanted.iter().copied().find(|wanted_name| *wanted_name == name) {
            queue.push((wanted_name, program));
        }
    }
    for missing in wanted.iter().copied().filter(|name| !queue.iter().any(|(queued, _)| queued == name)) {
        results.push((missing, Err(ProbeError::MissingProgram(missing))));
    }
    let loaders = std::thread::available_parallelism().map_or(1, usize::from).clamp(1, MAX_LOADERS);
    let queue = Mutex::new(queue);
    let loaded = Mutex::new(Vec::with_capacity(wanted.len()));
    std::thread::scope(|scope| {
        for _ in 0..loaders {
            scope.spawn(|| loop {
                let Some((name, program)) = lock(&queue).pop() else { break };
                let result = load_program(name, program, kernel_btf);
                lock(&loaded).push((name, result));
            });
        }
    });
    results.extend(loaded.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner()));
    results
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn load_program(name: &'static str, program: &mut Program, kernel_btf: &Btf) -> Result<(), ProbeError> {
    let traced = || -> Result<(&'static str, &Btf), ProbeError> {
        let function = capture::socket_function(name).ok_or(ProbeError::UnsupportedProgram(name))?;
        Ok((function.function, kernel_btf))
    };
    let result = match program {
        Program::TracePoint(program) => program.load(),
        Program::UProbe(program) => program.load(),
        Program::SockOps(program) => program.load(),
        Program::SkMsg(program) => program.load(),
        Program::FEntry(program) => {
            let (function, btf) = traced()?;
            program.load(function, btf)
        }
        Program::FExit(program) => {
            let (function, btf) = traced()?;
            program.load(function, btf)
        }
        Program::BtfTracePoint(program) => {
            let tracepoint = capture::btf_tracepoint(name).ok_or(ProbeError::UnsupportedProgram(name))?;
            program.load(tracepoint, kernel_btf)
        }
        _ => return Err(ProbeError::UnsupportedProgram(name)),
    };
    result.map_err(|source| load_error(name, source))
}

/// A verifier rejection shows the end of the verifier's log, where it explains itself.
pub fn load_error(program: &'static str, source: ProgramError) -> ProbeError {
    match &source {
        ProgramError::LoadError { verifier_log, io_error } => {
            let log = verifier_log.to_string();
            if log.trim().is_empty() {
                // Refused before the verifier said anything (a hook the kernel does not allow).
                return ProbeError::Refused {
                    program,
                    error: std::io::Error::from_raw_os_error(io_error.raw_os_error().unwrap_or(0)),
                };
            }
            let lines: Vec<&str> = log.lines().filter(|line| !verifier::is_btf_note(line)).collect();
            let tail = lines[lines.len().saturating_sub(VERIFIER_LOG_TAIL)..].join("\n");
            ProbeError::Verifier { program, log_tail: tail }
        }
        _ => ProbeError::ProgramLoad { program, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_rejections_show_the_program_and_the_end_of_the_log() {
        let log: String =
            (1..=100).map(|i| format!("line {i}\n")).collect::<String>() + "R1 invalid mem access 'scalar'\n";
        let error = ProgramError::LoadError {
            io_error: std::io::Error::from_raw_os_error(libc::EACCES),
            verifier_log: aya_obj::VerifierLog::new(log),
        };
        let message = load_error("io_exit", error).to_string();
        assert!(message.starts_with("the kernel verifier rejected program io_exit:"), "{message}");
        assert!(message.ends_with("R1 invalid mem access 'scalar'"), "{message}");
        assert!(message.contains("line 100") && !message.contains("line 50\n"), "{message}");
    }
}
