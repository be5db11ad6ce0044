//! The evaluator hook: on CPython 3.11+, Python-to-Python calls are run inline by the
//! interpreter loop and never reach `_PyEval_EvalFrameDefault`, where function spans see calls,
//! unless the interpreter's PEP 523 hook `interp->eval_frame` is set. The agent sets it to
//! `_PyEval_EvalFrameDefault` itself, so the process behaves as before except that every call
//! goes through the evaluator (about 20% slower on call-heavy code without any probe, and a C
//! stack that grows with Python recursion), and writes NULL back when it lets go of the process.
//!
//! This is the only write the agent makes into a traced process's memory. The interpreter reads
//! the field once per call into a register before testing and calling it (checked in the
//! disassembly of 3.11–3.13), and both values run the same evaluator, so either value is fine
//! at any moment; what must never be seen is a half-written pointer. A write through
//! /proc/PID/mem is a kernel `memcpy`, which promises no single store, so the process's threads
//! are held in a ptrace stop (`PTRACE_SEIZE` + `PTRACE_INTERRUPT`, no signal is sent; blocked
//! system calls resume as if nothing happened) for the few microseconds of the write.
//!
//! A hook already set by someone else (a debugger, a JIT) is left alone. A hook left by an
//! agent that was killed before it could undo it is removed by the next agent when it traces no
//! functions in that process ([`remove_leftover`]).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use crate::frames::attach::CheckedLayout;
use crate::frames::memory::{MemoryError, ProcessMemory};

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("cannot write the memory of process {pid}: {source}")]
    Write { pid: u32, source: std::io::Error },
    #[error("the interpreter already has an evaluation hook of its own ({0:#x}); it is left alone")]
    Foreign(u64),
    #[error("the interpreter's state is not initialised")]
    NoInterpreter,
}

/// A hook the agent set (or adopted from its predecessor) and must undo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvalHook {
    pid: u32,
    /// `&interp->eval_frame` in the process.
    field: u64,
    evaluator: u64,
}

/// Sets `pid`'s hook if its version needs one (`Ok(None)`: 3.8–3.10 call the evaluator anyway).
pub fn install(pid: u32, layout: &CheckedLayout) -> Result<Option<EvalHook>, HookError> {
    let memory = ProcessMemory::open(pid)?;
    let Some(field) = hook_field(&memory, layout)? else { return Ok(None) };
    let hook = EvalHook { pid, field, evaluator: layout.evaluator };
    match memory.u64(field)? {
        0 => write(pid, field, layout.evaluator)?,
        // Set by an earlier agent that did not stop cleanly: this one undoes it in the end.
        current if current == layout.evaluator => {}
        foreign => return Err(HookError::Foreign(foreign)),
    }
    Ok(Some(hook))
}

impl EvalHook {
    /// Writes NULL back, unless something else replaced the hook meanwhile.
    pub fn remove(&self) -> Result<(), HookError> {
        if ProcessMemory::open(self.pid)?.u64(self.field)? == self.evaluator {
            write(self.pid, self.field, 0)?;
        }
        Ok(())
    }
}

/// Removes a hook that points at the evaluator in a process where this agent traces no
/// functions: only an agent sets that value, and this one did not. Returns whether it did.
pub fn remove_leftover(pid: u32, layout: &CheckedLayout) -> Result<bool, HookError> {
    let memory = ProcessMemory::open(pid)?;
    let Some(field) = hook_field(&memory, layout)? else { return Ok(false) };
    if memory.u64(field)? != layout.evaluator {
        return Ok(false);
    }
    write(pid, field, 0)?;
    Ok(true)
}

/// `&interp->eval_frame` of the main interpreter, on versions that have the field and need it.
fn hook_field(memory: &ProcessMemory, layout: &CheckedLayout) -> Result<Option<u64>, HookError> {
    let Some(offset) = layout.version.calls.interpreter_eval_frame else { return Ok(None) };
    let interpreter = memory.u64(layout.runtime + layout.version.runtime_interpreters_head)?;
    if interpreter == 0 {
        return Err(HookError::NoInterpreter);
    }
    Ok(Some(interpreter + offset))
}

/// Writes the 8-byte `value` at `field` while every thread of `pid` is stopped.
fn write(pid: u32, field: u64, value: u64) -> Result<(), HookError> {
    let stopped = StoppedProcess::stop(pid)?;
    let written = write_word(pid, field, value);
    drop(stopped);
    written
}

fn write_word(pid: u32, field: u64, value: u64) -> Result<(), HookError> {
    let file = OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .map_err(|source| HookError::Write { pid, source })?;
    let written = file.write_at(&value.to_le_bytes(), field).map_err(|source| HookError::Write { pid, source })?;
    if written != 8 {
        return Err(HookError::Write { pid, source: std::io::Error::other("short write") });
    }
    Ok(())
}

/// Every thread of a process held in a ptrace stop until dropped. ptrace binds a tracee to the
/// tracing thread, so this lives and dies on one thread (it is not `Send`).
struct StoppedProcess {
    pid: u32,
    /// Each stopped thread, with the signal it was stopped delivering (0 for none), which it
    /// gets back when it resumes.
    threads: Vec<(libc::pid_t, libc::c_int)>,
    _same_thread: std::marker::PhantomData<*const ()>,
}

/// Rounds of listing the threads, for a process that keeps starting new ones.
const STOP_ROUNDS: usize = 8;

impl StoppedProcess {
    fn stop(pid: u32) -> Result<Self, HookError> {
        let mut stopped = Self { pid, threads: Vec::new(), _same_thread: std::marker::PhantomData };
        for _ in 0..STOP_ROUNDS {
            let new: Vec<libc::pid_t> =
                threads_of(pid)?.into_iter().filter(|tid| !stopped.threads.iter().any(|(t, _)| t == tid)).collect();
            if new.is_empty() {
                return Ok(stopped);
            }
            for tid in new {
                if let Some(signal) = stopped.seize(tid)? {
                    stopped.threads.push((tid, signal));
                }
            }
        }
        Err(HookError::Write { pid, source: std::io::Error::other("its threads kept changing while being stopped") })
    }

    /// Seizes and interrupts `tid`, waiting until it is stopped; `None` if it exited meanwhile,
    /// else the signal it was about to receive, if it stopped for one rather than for the
    /// interrupt.
    fn seize(&self, tid: libc::pid_t) -> Result<Option<libc::c_int>, HookError> {
        // SAFETY: plain ptrace requests on a thread id; no memory is passed.
        if unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::ESRCH) {
                return Ok(None);
            }
            return Err(HookError::Write { pid: self.pid, source: error });
        }
        // SAFETY: as above, on a thread this thread now traces.
        unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) };
        let mut status = 0;
        // SAFETY: waits for this tracer's own tracee; `status` is a valid out pointer.
        let waited = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        if waited != tid || !libc::WIFSTOPPED(status) {
            return Ok(None);
        }
        let signal = libc::WSTOPSIG(status);
        Ok(Some(if signal == libc::SIGTRAP && status >> 16 == libc::PTRACE_EVENT_STOP { 0 } else { signal }))
    }
}

impl Drop for StoppedProcess {
    fn drop(&mut self) {
        for &(tid, signal) in &self.threads {
            // SAFETY: detaching a thread this thread traces; it resumes where it was, with the
            // signal it was stopped delivering.
            unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0, signal as libc::c_long) };
        }
    }
}

fn threads_of(pid: u32) -> Result<Vec<libc::pid_t>, HookError> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|source| HookError::Write { pid, source })?;
    Ok(tasks.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok()).collect())
}
