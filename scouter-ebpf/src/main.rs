//! Scouter's eBPF programs.
//!
//! Split by concern, like the maps they share:
//! - [`programs::process`]: which processes are traced (exec, fork, exit);
//! - [`programs::connection`]: which sockets of those processes are followed (accept, connect, close);
//! - [`programs::io`]: the bytes moved on followed sockets (read/write syscall families);
//! - [`programs::head`] and [`programs::context`]: a request's trace identity, decided at its
//!   first byte from the head's context headers and the request the thread is serving;
//! - [`programs::asyncio`]: which request each asyncio task works for (uprobes on `_asyncio`),
//!   and [`programs::contextvars`]: requests carried to pool threads in a copied `Context`;
//! - [`programs::sdk_context`]: the span an in-process SDK (OpenTelemetry) made current on each
//!   thread or task, read from its objects with [`programs::python_objects`];
//! - [`programs::python_stack`]: the thread's Python stack at the I/O events that tell which
//!   code works for a request (a program attached after the syscall exit program, or
//!   tail-called by the libssl return probe);
//! - [`programs::python_call`]: spans for the Python functions the user selected (a uprobe
//!   and return probe on the interpreter's frame evaluation, in those processes only);
//! - [`programs::inject`]: the `traceparent` inserted into outgoing requests (sockops + sk_msg);
//! - [`programs::tls`]: HTTPS plaintext from libssl uprobes, and [`programs::trace_option`]: the
//!   trace context TLS requests carry in a TCP header option instead of a header.
//!
//! Everything is filtered in the kernel by the tracked-process map, so untraced processes pay
//! one hash lookup per syscall of the families above and nothing else.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program in which a panic path is reachable.
    unsafe { core::hint::unreachable_unchecked() }
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

/// On the host this binary is only a placeholder; the real one is built for `bpfel-unknown-none`.
#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("scouter-ebpf is an eBPF object; build it with `cargo xtask build`");
}
