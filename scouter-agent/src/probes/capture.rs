//! How the kernel sees the sockets' bytes: on the socket layer, or at the syscalls.
//!
//! Three captures, tried in this order by default:
//! - [`IoCapture::SocketFunctions`] (`scouter-ebpf/src/programs/sockets.rs`): fentry/fexit
//!   programs on the protocol operations sockets send and receive through. File and pipe I/O
//!   never run a program; another process's socket call costs a trampoline and a lookup. Needs
//!   BTF trampolines, which some kernels refuse (a lockdown policy, no ftrace direct calls).
//! - [`IoCapture::SocketTracepoints`] (`socket_tracepoints.rs`): the socket layer's own
//!   tracepoints (`sock:sock_send_length`/`sock_recv_length`, 6.4+) as BTF tracepoints, which
//!   fire once per socket call and for nothing else. The call's buffer comes from the thread's
//!   saved syscall registers; a client request's identity is decided by the sk_msg program
//!   where a `traceparent` is inserted.
//! - [`IoCapture::Syscalls`] (`syscalls.rs`): tracepoints on the read/write syscalls. They work
//!   wherever tracepoints do, but every read and write on the host then takes the slow syscall
//!   path and runs a program.
//!
//! The socket-layer programs read the kernel's structures at offsets from BTF
//! ([`kernel_layout`]). The agent takes the first capture the kernel loads and attaches, and
//! says why it passed over the others.

use std::fmt;

use scouter_ebpf::{capture, KernelLayout};

use super::kernel_btf::{BtfError, BtfView};
use super::verifier;

/// Which capture to use (`--io-capture`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IoCaptureChoice {
    /// The first of the socket functions, the socket tracepoints and the syscall tracepoints
    /// that the kernel allows.
    #[default]
    Auto,
    /// fentry/fexit on the kernel's socket functions only.
    SocketFunctions,
    /// The socket layer's tracepoints only.
    SocketTracepoints,
    /// The syscall tracepoints (every read/write on the host runs a program).
    Syscalls,
}

/// A capture in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoCapture {
    SocketFunctions,
    SocketTracepoints,
    Syscalls,
}

impl IoCapture {
    /// The captures `choice` allows, in the order they are tried.
    pub fn candidates(choice: IoCaptureChoice) -> &'static [IoCapture] {
        match choice {
            IoCaptureChoice::Auto => &[IoCapture::SocketFunctions, IoCapture::SocketTracepoints, IoCapture::Syscalls],
            IoCaptureChoice::SocketFunctions => &[IoCapture::SocketFunctions],
            IoCaptureChoice::SocketTracepoints => &[IoCapture::SocketTracepoints],
            IoCaptureChoice::Syscalls => &[IoCapture::Syscalls],
        }
    }

    /// The value of the programs' `CAPTURE` global.
    pub fn global(self) -> u32 {
        match self {
            IoCapture::SocketFunctions => capture::SOCKET_FUNCTIONS,
            IoCapture::SocketTracepoints => capture::SOCKET_TRACEPOINTS,
            IoCapture::Syscalls => capture::SYSCALLS,
        }
    }

    /// Whether only socket I/O runs a program (untraced processes' file and pipe I/O run
    /// nothing).
    pub fn on_socket_layer(self) -> bool {
        self != IoCapture::Syscalls
    }

    /// The core's programs: process tracking, connection states and this capture's socket
    /// programs.
    pub fn core_programs(self) -> Vec<&'static str> {
        let processes = PROCESS_TRACEPOINTS
            .iter()
            .map(|(program, _, _)| *program)
            .chain(CONNECTION_TRACEPOINTS.iter().map(|(program, _)| *program));
        match self {
            IoCapture::SocketFunctions => {
                processes.chain(SOCKET_FUNCTIONS.iter().map(|function| function.program)).collect()
            }
            IoCapture::SocketTracepoints => {
                processes.chain(SOCKET_TRACEPOINTS.iter().map(|(program, _)| *program)).collect()
            }
            IoCapture::Syscalls => {
                processes.chain(SYSCALL_TRACEPOINTS.iter().map(|(program, _, _)| *program)).collect()
            }
        }
    }

    /// Why this kernel cannot have this capture, found without loading the agent's programs
    /// (a refusal is then cheap: the fallback does not wait for a whole object to load).
    pub fn unavailable(self, kernel_btf: &aya::Btf) -> Option<String> {
        match self {
            IoCapture::SocketFunctions => {
                let id = match kernel_btf.id_by_type_name_kind("inet_sendmsg", aya_obj::btf::BtfKind::Func) {
                    Ok(id) => id,
                    Err(error) => return Some(format!("inet_sendmsg is not in the kernel's BTF: {error}")),
                };
                verifier::fentry_allowed(id)
                    .err()
                    .map(|error| format!("the kernel refuses fentry programs before verifying them ({error})"))
            }
            IoCapture::SocketTracepoints => kernel_btf
                .id_by_type_name_kind("btf_trace_sock_send_length", aya_obj::btf::BtfKind::Typedef)
                .err()
                .map(|_| "the kernel has no sock:sock_send_length tracepoint (Linux 6.4 and later have it)".to_owned()),
            IoCapture::Syscalls => None,
        }
    }

    /// Whether the core can run without `program` (a hook only some kernels have).
    pub fn is_optional(program: &str) -> bool {
        SOCKET_FUNCTIONS.iter().any(|function| function.program == program && !function.required)
    }
}

impl fmt::Display for IoCapture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoCapture::SocketFunctions => "socket functions (fentry/fexit)",
            IoCapture::SocketTracepoints => "socket tracepoints (sock_send_length/sock_recv_length)",
            IoCapture::Syscalls => "syscall tracepoints",
        })
    }
}

/// (program, tracepoint category, tracepoint names), attached in this order: which processes
/// exist, whatever the capture.
pub const PROCESS_TRACEPOINTS: &[(&str, &str, &[&str])] = &[
    ("sched_process_exec", "sched", &["sched_process_exec"]),
    ("sched_process_fork", "sched", &["sched_process_fork"]),
    ("sched_process_exit", "sched", &["sched_process_exit"]),
];

/// The syscall exits of the I/O families.
const IO_EXITS: &[&str] = &[
    "sys_exit_read",
    "sys_exit_recvfrom",
    "sys_exit_readv",
    "sys_exit_recvmsg",
    "sys_exit_write",
    "sys_exit_sendto",
    "sys_exit_writev",
    "sys_exit_sendmsg",
];

/// The syscall capture's tracepoints, attached in this order (programs on one tracepoint run
/// in attach order).
pub const SYSCALL_TRACEPOINTS: &[(&str, &str, &[&str])] = &[
    ("accept_enter", "syscalls", &["sys_enter_accept", "sys_enter_accept4"]),
    ("accept_exit", "syscalls", &["sys_exit_accept", "sys_exit_accept4"]),
    ("connect_enter", "syscalls", &["sys_enter_connect"]),
    ("connect_exit", "syscalls", &["sys_exit_connect"]),
    ("close_enter", "syscalls", &["sys_enter_close"]),
    ("io_enter_read", "syscalls", &["sys_enter_read", "sys_enter_recvfrom"]),
    ("io_enter_readv", "syscalls", &["sys_enter_readv"]),
    ("io_enter_recvmsg", "syscalls", &["sys_enter_recvmsg"]),
    ("io_enter_write", "syscalls", &["sys_enter_write", "sys_enter_sendto"]),
    ("io_enter_writev", "syscalls", &["sys_enter_writev"]),
    ("io_enter_sendmsg", "syscalls", &["sys_enter_sendmsg"]),
    ("io_exit", "syscalls", IO_EXITS),
];

/// The socket tracepoints' programs and the tracepoints they attach to (as BTF tracepoints).
pub const SOCKET_TRACEPOINTS: &[(&str, &str)] =
    &[("sock_sent", "sock_send_length"), ("sock_received", "sock_recv_length")];

/// TCP state changes, as a BTF tracepoint, whatever the capture: where a connection is seen
/// with its process inside `connect()` (which the header insertion needs on every kernel), and
/// the socket tracepoints capture's connections.
pub const CONNECTION_TRACEPOINTS: &[(&str, &str)] = &[("inet_sock_set_state", "inet_sock_set_state")];

/// The tracepoint a BTF-tracepoint program attaches to.
pub fn btf_tracepoint(program: &str) -> Option<&'static str> {
    SOCKET_TRACEPOINTS
        .iter()
        .chain(CONNECTION_TRACEPOINTS)
        .find(|(name, _)| *name == program)
        .map(|(_, tracepoint)| *tracepoint)
}

/// A socket-layer program and the kernel function it is attached to.
pub struct SocketFunction {
    pub program: &'static str,
    pub function: &'static str,
    /// fexit (on the return) rather than fentry.
    pub on_return: bool,
    /// Every kernel the agent supports has it; `inet_sendpage` went in 6.5.
    pub required: bool,
}

const fn entry(program: &'static str, function: &'static str) -> SocketFunction {
    SocketFunction { program, function, on_return: false, required: true }
}

const fn exit(program: &'static str, function: &'static str) -> SocketFunction {
    SocketFunction { program, function, on_return: true, required: true }
}

/// The socket capture's programs (see `scouter-ebpf/src/programs/sockets.rs`).
pub const SOCKET_FUNCTIONS: &[SocketFunction] = &[
    entry("inet_sendmsg_entry", "inet_sendmsg"),
    exit("inet_sendmsg_exit", "inet_sendmsg"),
    entry("inet6_sendmsg_entry", "inet6_sendmsg"),
    exit("inet6_sendmsg_exit", "inet6_sendmsg"),
    entry("unix_stream_sendmsg_entry", "unix_stream_sendmsg"),
    exit("unix_stream_sendmsg_exit", "unix_stream_sendmsg"),
    entry("inet_recvmsg_entry", "inet_recvmsg"),
    exit("inet_recvmsg_exit", "inet_recvmsg"),
    entry("inet6_recvmsg_entry", "inet6_recvmsg"),
    exit("inet6_recvmsg_exit", "inet6_recvmsg"),
    entry("unix_stream_recvmsg_entry", "unix_stream_recvmsg"),
    exit("unix_stream_recvmsg_exit", "unix_stream_recvmsg"),
    SocketFunction { required: false, ..entry("inet_sendpage_entry", "inet_sendpage") },
    SocketFunction { required: false, ..exit("inet_sendpage_exit", "inet_sendpage") },
    exit("inet_stream_connect_exit", "inet_stream_connect"),
    entry("sock_close_entry", "sock_close"),
];

/// The kernel function a socket-layer program attaches to.
pub fn socket_function(program: &str) -> Option<&'static SocketFunction> {
    SOCKET_FUNCTIONS.iter().find(|function| function.program == program)
}

/// Where the socket-layer programs find what they read, in the running kernel.
pub fn kernel_layout(btf: &BtfView<'_>) -> Result<KernelLayout, BtfError> {
    let offset = |structure: &str, path: &[&str]| -> Result<u16, BtfError> {
        let offset = btf.member_offset(structure, path)?;
        u16::try_from(offset).map_err(|_| BtfError::Overflow(format!("{structure}.{}", path.join("."))))
    };
    let iter_kind = |name: &str| -> Result<u8, BtfError> {
        let value = btf.enum_value("iter_type", name)?;
        u8::try_from(value).map_err(|_| BtfError::Overflow(name.to_owned()))
    };
    Ok(KernelLayout {
        socket_sk: offset("socket", &["sk"])?,
        socket_type: offset("socket", &["type"])?,
        msghdr_iter: offset("msghdr", &["msg_iter"])?,
        iter_type: offset("iov_iter", &["iter_type"])?,
        iter_offset: offset("iov_iter", &["iov_offset"])?,
        iter_count: offset("iov_iter", &["count"])?,
        iter_pointer: offset("iov_iter", &["ubuf"])?,
        iter_ubuf: iter_kind("ITER_UBUF")?,
        iter_iovec: iter_kind("ITER_IOVEC")?,
        skc_family: offset("sock_common", &["skc_family"])?,
        skc_num: offset("sock_common", &["skc_num"])?,
        skc_dport: offset("sock_common", &["skc_dport"])?,
        skc_daddr: offset("sock_common", &["skc_daddr"])?,
        skc_rcv_saddr: offset("sock_common", &["skc_rcv_saddr"])?,
        skc_v6_daddr: offset("sock_common", &["skc_v6_daddr"])?,
        skc_v6_rcv_saddr: offset("sock_common", &["skc_v6_rcv_saddr"])?,
        file_private_data: offset("file", &["private_data"])?,
        sk_type: offset("sock", &["sk_type"])?,
        sk_err: offset("sock", &["sk_err"])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_tries_the_socket_layer_first_and_a_choice_only_itself() {
        assert_eq!(
            IoCapture::candidates(IoCaptureChoice::Auto),
            &[IoCapture::SocketFunctions, IoCapture::SocketTracepoints, IoCapture::Syscalls]
        );
        assert_eq!(IoCapture::candidates(IoCaptureChoice::SocketFunctions), &[IoCapture::SocketFunctions]);
        assert_eq!(IoCapture::candidates(IoCaptureChoice::SocketTracepoints), &[IoCapture::SocketTracepoints]);
        assert_eq!(IoCapture::candidates(IoCaptureChoice::Syscalls), &[IoCapture::Syscalls]);
    }

    #[test]
    fn each_capture_has_its_own_socket_programs_and_both_track_processes() {
        let functions = IoCapture::SocketFunctions.core_programs();
        let tracepoints = IoCapture::SocketTracepoints.core_programs();
        let syscalls = IoCapture::Syscalls.core_programs();
        for program in ["sched_process_exec", "sched_process_fork", "sched_process_exit"] {
            assert!(functions.contains(&program) && tracepoints.contains(&program) && syscalls.contains(&program));
        }
        assert!(functions.contains(&"inet_recvmsg_exit") && !syscalls.contains(&"inet_recvmsg_exit"));
        assert!(tracepoints.contains(&"sock_received") && !functions.contains(&"sock_received"));
        assert!(syscalls.contains(&"io_exit") && !functions.contains(&"io_exit") && !tracepoints.contains(&"io_exit"));
        assert!(IoCapture::is_optional("inet_sendpage_entry"));
        assert!(!IoCapture::is_optional("inet_sendmsg_entry"));
    }

    #[test]
    fn the_running_kernel_has_everything_the_socket_layer_reads() {
        let btf = super::super::kernel_btf::KernelBtf::read().unwrap();
        let layout = kernel_layout(&btf.view().unwrap()).unwrap();
        // `struct sock` starts with `struct sock_common`, whose first words are the addresses.
        assert_eq!(layout.skc_daddr, 0);
        assert_eq!(layout.skc_rcv_saddr, 4);
        assert_ne!(layout.iter_ubuf, layout.iter_iovec);
    }
}
