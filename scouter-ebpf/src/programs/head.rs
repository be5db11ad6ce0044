//! Request heads as the kernel sees them: does a buffer start an HTTP/1.x request, where does
//! its request line end, and which trace context headers does it carry.
//!
//! This is deliberately not an HTTP parser (the agent has the real one): it copies at most
//! [`HEAD_SCAN`] bytes into a per-CPU scratch buffer and walks them once with `bpf_loop`,
//! recording offsets. `bpf_loop` keeps verification cost independent of the scan length.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_probe_read_user, generated},
    macros::map,
    maps::PerCpuArray,
};
use scouter_ebpf::HEAD_SCAN;

use crate::maps::{scratch, HeadScratch, HEAD_SCRATCH, NOT_FOUND};

/// Longest byte run compared at one position (`traceparent:` plus two bytes of slack).
const WINDOW: usize = 16;

/// Whether the first bytes at `src` begin a request line (`METHOD SP`). Reads 8 bytes; a
/// shorter buffer cannot hold a request line worth tracing.
#[inline(always)]
pub fn starts_request(src: u64, available: u64) -> bool {
    if available < 8 {
        return false;
    }
    // SAFETY: the helper validates the user pointer.
    unsafe { bpf_probe_read_user(src as *const [u8; 8]) }.is_ok_and(|first| is_request_line(&first))
}

/// Whether `first` (a buffer's first 8 bytes) begin a request line: `METHOD SP`.
#[inline(always)]
pub fn is_request_line(first: &[u8; 8]) -> bool {
    let is = |method: &[u8]| first.starts_with(method) && first.get(method.len()) == Some(&b' ');
    is(b"GET") || is(b"POST") || is(b"PUT") || is(b"DELETE") || is(b"HEAD") || is(b"PATCH") || is(b"OPTIONS")
}

/// Copies the head's first bytes from user memory and scans them. `None` when the copy fails.
#[inline(always)]
pub fn load(src: u64, available: u64) -> Option<&'static HeadScratch> {
    load_from(src, available, false)
}

/// [`load`] from kernel memory (a message the sk_msg program sees). `None` when the copy
/// fails or the bytes do not start a request line.
#[inline(always)]
pub fn load_request_from_kernel(src: u64, available: u64) -> Option<&'static HeadScratch> {
    let head = load_from(src, available, true)?;
    let first = bytes_at::<8>(head, 0)?;
    is_request_line(first).then_some(head)
}

#[inline(always)]
fn load_from(src: u64, available: u64, kernel: bool) -> Option<&'static HeadScratch> {
    let scratch = HEAD_SCRATCH.get_ptr_mut(0)?;
    let mut len = available as usize;
    if len > HEAD_SCAN {
        len = HEAD_SCAN;
    }
    if len == 0 {
        return None;
    }
    // SAFETY: `len` is in 1..=HEAD_SCAN, the destination's size; the helpers validate `src`.
    let rc = unsafe {
        let dst = (*scratch).bytes.as_mut_ptr() as *mut _;
        if kernel {
            generated::bpf_probe_read_kernel(dst, len as u32, src as *const _)
        } else {
            generated::bpf_probe_read_user(dst, len as u32, src as *const _)
        }
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: per-CPU scratch, exclusively ours while this program runs.
    unsafe {
        (*scratch).len = len as u32;
        (*scratch).line_end = 0;
        (*scratch).head_end = 0;
        (*scratch).traceparent_at = NOT_FOUND;
        (*scratch).trace_id_at = NOT_FOUND;
        (*scratch).span_id_at = NOT_FOUND;
        (*scratch).is_sampled_at = NOT_FOUND;
        generated::bpf_loop(len as u32, scan_byte as *mut c_void, core::ptr::null_mut(), 0);
        Some(&*scratch)
    }
}

/// `bpf_loop` callback: looks at byte `index`; returns 1 to stop at the end of the head.
#[inline(never)]
extern "C" fn scan_byte(index: u64, _ctx: *mut c_void) -> i64 {
    let Some(scratch) = HEAD_SCRATCH.get_ptr_mut(0) else { return 1 };
    let i = index as usize;
    if i >= HEAD_SCAN - WINDOW {
        return 1;
    }
    // SAFETY: per-CPU scratch; every index below is under `i + WINDOW < HEAD_SCAN`.
    let s = unsafe { &mut *scratch };
    if s.bytes[i] != b'\n' {
        return 0;
    }
    let next = i + 1;
    if s.line_end == 0 {
        s.line_end = next as u32;
    }
    // Bytes past `len` are a previous head's: never read meaning into them.
    let len = s.len as usize;
    if next < len && s.bytes[next] == b'\n' {
        s.head_end = (next + 1) as u32;
        return 1;
    }
    if next + 1 < len && s.bytes[next] == b'\r' && s.bytes[next + 1] == b'\n' {
        s.head_end = (next + 2) as u32;
        return 1;
    }
    if next + WINDOW > len {
        // Too close to the end for any header whose value would fit.
        return 0;
    }
    if let Some(at) = value_after(s, next, b"traceparent:") {
        s.traceparent_at = at;
    } else if let Some(at) = value_after(s, next, b"trace_id:") {
        s.trace_id_at = at;
    } else if let Some(at) = value_after(s, next, b"span_id:") {
        s.span_id_at = at;
    } else if let Some(at) = value_after(s, next, b"is_sampled:") {
        s.is_sampled_at = at;
    }
    0
}

/// If the line at `at` is header `name` (lowercase, with its colon), the offset of its value
/// (after at most one space or tab).
#[inline(always)]
fn value_after<const N: usize>(s: &HeadScratch, at: usize, name: &[u8; N]) -> Option<u32> {
    for (k, &expected) in name.iter().enumerate() {
        let found = s.bytes[at + k];
        let folded = if found.is_ascii_uppercase() { found | 0x20 } else { found };
        if folded != expected {
            return None;
        }
    }
    let value = at + N;
    let skip = matches!(s.bytes[value], b' ' | b'\t') as usize;
    Some((value + skip) as u32)
}

/// Longest header value the kernel reads (a `traceparent`'s, rounded up).
const VALUE_BYTES: usize = 64;

/// A header value copied out of the head to be parsed (too large for the stack).
#[map]
static VALUE_SCRATCH: PerCpuArray<[u8; VALUE_BYTES]> = PerCpuArray::with_max_entries(1, 0);

/// Copies `N` bytes of the head from `at` (a recorded offset) into this CPU's value buffer,
/// or `None` when they run past the bytes scanned.
#[inline(always)]
pub fn bytes_at<const N: usize>(s: &HeadScratch, at: u32) -> Option<&'static [u8; N]> {
    const { assert!(N <= VALUE_BYTES) };
    let at = at as usize;
    if at >= HEAD_SCAN || at + N > s.len as usize || at + N > HEAD_SCAN {
        return None;
    }
    let out = scratch(&VALUE_SCRATCH)?;
    // Masked so the verifier sees the bound it needs.
    let start = at & (HEAD_SCAN - 1);
    let mut k = 0;
    while k < N {
        out[k] = s.bytes[(start + k) & (HEAD_SCAN - 1)];
        k += 1;
    }
    // SAFETY: `N <= VALUE_BYTES`: the first `N` bytes of the buffer, as an array.
    Some(unsafe { &*(out.as_ptr() as *const [u8; N]) })
}

/// The byte at `at`, or 0 past the bytes scanned. Not inlined: inlined, the compiler checks a
/// caller's `x + k` through `x` and indexes with the sum, whose bound older verifiers (6.1) do
/// not derive; here the index checked is the index used.
#[inline(never)]
pub fn byte_at(s: &HeadScratch, at: usize) -> u8 {
    if at >= s.len as usize || at >= HEAD_SCAN {
        return 0;
    }
    s.bytes[at & (HEAD_SCAN - 1)]
}
