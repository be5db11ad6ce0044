//! `traceparent` insertion into outgoing plain-HTTP requests.
//!
//! The kernel here refuses `bpf_probe_write_user`, so the header cannot be written into the
//! process's buffer; instead an sk_msg program inserts it into the message as the kernel sends
//! it (`bpf_msg_push_data`). sk_msg programs run on sockets in a sockhash, and only sockops
//! programs may add sockets to one, so:
//! - [`follow_client_socket`] (sockops on the cgroup v2 root) notes the cookie of a connection
//!   a tracked process opens (`TCP_CONNECT_CB` runs in its `connect()`), and adds the socket to
//!   [`CLIENT_SOCKETS`] once established. Nobody else's sockets are touched.
//! - [`insert_traceparent`] (sk_msg) inserts the line that [`super::context::client_request`]
//!   prepared for the writing thread, once, after the request line.

use aya_ebpf::{
    bindings::{sk_action::SK_PASS, BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_TCP_CONNECT_CB},
    helpers::{bpf_get_current_pid_tgid, bpf_get_socket_cookie, generated::bpf_msg_pull_data},
    macros::{sk_msg, sock_ops},
    programs::{SkMsgContext, SockOpsContext},
};
use scouter_ebpf::traceparent::LINE_LEN;

use super::current_ids;
use crate::maps::{injection_state, is_tracked, CLIENT_SOCKETS, CONNECTING_SOCKETS, PENDING_INJECTIONS};

#[sock_ops]
pub fn follow_client_socket(ctx: SockOpsContext) -> u32 {
    // SAFETY: the helper accepts the sock_ops context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut _) };
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            let (pid, _) = current_ids(bpf_get_current_pid_tgid());
            if is_tracked(pid) {
                let _ = CONNECTING_SOCKETS.insert(&cookie, &pid, 0);
            }
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            // SAFETY: presence check only.
            if unsafe { CONNECTING_SOCKETS.get(&cookie) }.is_some() {
                let _ = CONNECTING_SOCKETS.remove(&cookie);
                let mut key = cookie;
                // SAFETY: the context is a live `bpf_sock_ops`.
                let _ = CLIENT_SOCKETS.update(&mut key, unsafe { &mut *ctx.ops }, BPF_NOEXIST as u64);
            }
        }
        _ => {}
    }
    1
}

#[sk_msg]
pub fn insert_traceparent(ctx: SkMsgContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(pending) = PENDING_INJECTIONS.get_ptr_mut(&pid_tgid) else { return SK_PASS };
    // SAFETY: map value owned by this thread's syscall (keyed by its pid_tgid).
    let pending = unsafe { &mut *pending };
    if pending.state != injection_state::READY {
        return SK_PASS;
    }
    pending.state = if insert(&ctx, pending.offset, &pending.line) { injection_state::DONE } else { injection_state::FAILED };
    SK_PASS
}

/// Inserts `line` at `offset` of the message; on failure the message is left as it was.
#[inline(always)]
fn insert(ctx: &SkMsgContext, offset: u32, line: &[u8; LINE_LEN]) -> bool {
    if offset == 0 || offset > ctx.size() {
        return false;
    }
    if ctx.push_data(offset, LINE_LEN as u32, 0).is_err() {
        return false;
    }
    // SAFETY: the helper takes the program's own context.
    let pulled = unsafe { bpf_msg_pull_data(ctx.msg, offset, offset + LINE_LEN as u32, 0) } == 0;
    let data = ctx.data();
    if !pulled || data + LINE_LEN > ctx.data_end() {
        // Never send the uninitialised bytes just pushed.
        let _ = ctx.pop_data(offset, LINE_LEN as u32, 0);
        return false;
    }
    let out = data as *mut u8;
    for (k, &byte) in line.iter().enumerate() {
        // SAFETY: `data + LINE_LEN <= data_end` was checked above.
        unsafe { *out.add(k) = byte };
    }
    true
}
