//! BTF tracepoint `tcp_sendmsg_locked(sk, msg, skb, size_goal)`
//! (include/trace/events/tcp.h, 6.11+): fires only for TCP sends, in the
//! sending task. One table lookup decides; tracked sockets learn their
//! owner, count request/response "messages", and the first bytes of a
//! response are checked for an HTTP/1.x 5xx status line when the sending
//! process may have one to report ([`sniff_now`]). Payload is never copied
//! out.

use core::mem::MaybeUninit;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use tracer_common::*;

use crate::{
    conf,
    sock::{
        count, current_comm, filtering, filters_pass, header, idle_ms, kread, live_ports,
        lookup_or_midlife, netns_of, now_ns, ports_of, tcp_sock, tuple_of, Clock, Direct,
        SockAccess,
    },
    state::submit_flags,
    EVENTS, SNIFF_GATE,
};

#[btf_tracepoint(function = "tcp_sendmsg_locked")]
pub fn tcp_sendmsg_locked(ctx: BtfTracePointContext) -> i32 {
    let Some(sk) = tcp_sock(ctx.arg(0)) else {
        return 0;
    };
    match try_send::<Direct>(&ctx, sk) {
        Ok(v) | Err(v) => v as i32,
    }
}

#[inline(always)]
fn try_send<M: SockAccess>(ctx: &BtfTracePointContext, sk: u64) -> Result<i64, i64> {
    // With `--port`/`--pod`, the sends of sockets filtered out (on a busy
    // node, most of them) stop here: the same test as at the socket's birth,
    // from fields of the socket the kernel is using, costs less than finding
    // the socket's state in the table.
    if filtering() && !filters_pass(|| netns_of::<M>(sk), || live_ports::<M>(sk)) {
        return Ok(0);
    }
    let st = match M::get(sk) {
        Some(st) => {
            // SAFETY: map value pointer.
            if unsafe { (*st).flags } & F_IGNORED != 0 {
                return Ok(0);
            }
            st
        }
        None => match lookup_or_midlife::<M>(sk, || ports_of::<M>(sk), &mut Clock::new()) {
            Some(st) => st,
            None => return Ok(0),
        },
    };
    count(C_SEND_SEEN);
    // SAFETY: map value pointer, valid for this program run.
    let s = unsafe { &mut *st };
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if tgid == conf!(self_tgid) {
        return Ok(0);
    }
    if s.owner_tgid == 0 || s.flags & F_ROLE_CLIENT == 0 {
        // Accepted sockets belong to whoever serves them (the listener's
        // owner may have handed them to a worker).
        if s.owner_tgid != tgid {
            s.owner_tgid = tgid;
            s.owner_tid = id as u32;
            s.comm = current_comm();
        }
    }
    let rcvd: u64 = M::read(sk, conf!(tp_bytes_received)).unwrap_or(0);
    // A new message starts when the peer sent something since our last send
    // (a response for a client, a request for a server), or on the first send.
    // Later sends of the same message (the common case under load) stop
    // here: one map lookup and one read.
    let new_msg = s.messages == 0 || rcvd != s.rcvd_at_msg;
    if !new_msg {
        return Ok(0);
    }
    let now = now_ns();
    let client = s.flags & F_ROLE_CLIENT != 0;
    // The idle gap before a request on a reused upstream connection (the
    // keep-alive race); responses do not need it.
    s.idle_before_msg_ms = if client && s.messages != 0 {
        idle_ms::<M>(sk)
    } else {
        0
    };
    s.messages += 1;
    s.msg_start_ns = now;
    s.last_send_ns = now;
    s.rcvd_at_msg = rcvd;
    if !client
        && conf!(sniff_http) != 0
        && sniff_now(tgid, now)
        && sniff::<M>(sk, ctx.arg(1), s, now, id)
    {
        open_sniff_window(tgid, now, SNIFF_AFTER_5XX_NS);
    }
    Ok(0)
}

/// Whether to read this response of process `tgid`: reading user memory
/// costs more than everything else this hook does, and a 5xx matters only
/// from a proxy that has something to report. So: every response while the
/// process's window is open (an upstream failure of its own, or a 5xx it
/// wrote, not long ago), else one per [`SNIFF_SAMPLE_NS`].
#[inline(always)]
fn sniff_now(tgid: u32, now: u64) -> bool {
    let Some(g) = SNIFF_GATE.get_ptr_mut(tgid % SNIFF_GATE_ENTRIES) else {
        return true;
    };
    // SAFETY: array map value, valid for this program run; a race with
    // another CPU costs at most one read more or less of a sample.
    unsafe {
        if (*g).tgid != tgid {
            *g = SniffGate {
                tgid,
                _pad: 0,
                open_until_ns: 0,
                last_sample_ns: now,
            };
            return true;
        }
        if now < (*g).open_until_ns {
            return true;
        }
        if now.wrapping_sub((*g).last_sample_ns) >= SNIFF_SAMPLE_NS {
            (*g).last_sample_ns = now;
            return true;
        }
    }
    false
}

/// Reads every response of process `tgid` for the next `ns`.
#[inline(always)]
pub fn open_sniff_window(tgid: u32, now: u64, ns: u64) {
    if tgid == 0 {
        return;
    }
    let Some(g) = SNIFF_GATE.get_ptr_mut(tgid % SNIFF_GATE_ENTRIES) else {
        return;
    };
    let until = now + ns;
    // SAFETY: array map value, valid for this program run.
    unsafe {
        if (*g).tgid != tgid {
            *g = SniffGate {
                tgid,
                _pad: 0,
                open_until_ns: until,
                last_sample_ns: now,
            };
        } else if (*g).open_until_ns < until {
            (*g).open_until_ns = until;
        }
    }
}

/// Reads the first bytes of the message and emits a record when they are an
/// HTTP/1.x 5xx status line (then true).
#[inline(always)]
fn sniff<M: SockAccess>(sk: u64, msg: u64, s: &SockState, now: u64, id: u64) -> bool {
    let iter = msg + conf!(msg_iter) as u64;
    let Ok(ty) = M::read::<u8>(iter, conf!(iter_type)) else {
        return false;
    };
    let off: u64 = M::read(iter, conf!(iter_iov_offset)).unwrap_or(0);
    let Ok(ptr) = M::read::<u64>(iter, conf!(iter_ptr)) else {
        return false;
    };
    let base = if ty as u32 == conf!(iter_ubuf_value) {
        ptr
    } else if ty as u32 == conf!(iter_iovec_value) {
        // First `struct iovec { void __user *iov_base; size_t iov_len; }`.
        match kread::<u64>(ptr, 0) {
            Ok(b) => b,
            Err(_) => return false,
        }
    } else {
        return false;
    };
    let mut buf = MaybeUninit::<[u8; SNIFF_LEN]>::uninit();
    // SAFETY: bpf_probe_read_user validates the user address and writes all
    // SNIFF_LEN bytes (zeroes on failure). Not zeroed first: see
    // `sock::zero_in_place`.
    let buf = unsafe {
        if generated::bpf_probe_read_user(
            buf.as_mut_ptr().cast(),
            SNIFF_LEN as u32,
            (base + off) as *const core::ffi::c_void,
        ) != 0
        {
            count(C_READ_FAILED);
            return false;
        }
        buf.assume_init()
    };
    count(C_SNIFFED);
    let Some(status) = status_5xx(&buf) else {
        return false;
    };
    let Some(mut entry) = EVENTS.reserve::<HttpRecord>(0) else {
        count(C_LOST_RINGBUF);
        return true;
    };
    let mut hdr = header(KIND_HTTP5XX, sk, now);
    hdr.tid = id as u32;
    hdr.tgid = (id >> 32) as u32;
    entry.write(HttpRecord {
        hdr,
        tuple: tuple_of::<M>(sk),
        status,
        sk_state: M::read::<u8>(sk, conf!(sk_state)).unwrap_or(0),
        _pad: 0,
        netns: s.netns,
        sock_flags: s.flags,
        _pad2: 0,
        comm: current_comm(),
    });
    entry.submit(submit_flags());
    count(C_EMITTED);
    true
}

/// `HTTP/1.x 5dd ` → 5dd. The reason phrase is not checked.
#[inline(always)]
fn status_5xx(b: &[u8; SNIFF_LEN]) -> Option<u16> {
    if b[0] != b'H' || b[1] != b'T' || b[2] != b'T' || b[3] != b'P' || b[4] != b'/' {
        return None;
    }
    if b[5] != b'1' || b[6] != b'.' || b[8] != b' ' || b[9] != b'5' {
        return None;
    }
    let (d1, d2) = (b[10], b[11]);
    if !d1.is_ascii_digit() || !d2.is_ascii_digit() || (b[12] != b' ' && b[12] != b'\r') {
        return None;
    }
    Some(500 + (d1 - b'0') as u16 * 10 + (d2 - b'0') as u16)
}
