//! `tcp:tcp_send_reset` and `tcp:tcp_receive_reset`: RST direction, and the
//! kernel's `sk_rst_reason` on 6.10+.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::*;

use crate::{
    conf,
    sock::{
        count, header, lookup_or_midlife, netns_of, now_ns, passes, ports_of, reported,
        tp_sockaddr, tpread, tuple_of,
    },
    state::BPF_RB_NO_WAKEUP,
    EVENTS, SOCKS,
};

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    match try_receive_reset(&ctx) {
        Ok(v) | Err(v) => v as u32,
    }
}

fn try_receive_reset(ctx: &TracePointContext) -> Result<i64, i64> {
    count(C_RESET_SEEN);
    let sk: u64 = tpread(ctx, conf!(rr_skaddr))?;
    if sk == 0 {
        return Ok(0);
    }
    let now = now_ns();
    let Some(st) = lookup_or_midlife(sk, || ports_of(sk), now) else {
        return Ok(0);
    };
    // SAFETY: map value pointer.
    let s = unsafe { &mut *st };
    s.flags |= F_RST_RECEIVED;
    if s.rst_ns == 0 {
        s.rst_ns = now;
    }
    Ok(0)
}

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    match try_send_reset(&ctx) {
        Ok(v) | Err(v) => v as u32,
    }
}

fn try_send_reset(ctx: &TracePointContext) -> Result<i64, i64> {
    count(C_RESET_SEEN);
    // A reset answering a segment that matched no socket (e.g. a SYN to a
    // closed port) has no socket: the connecting side reports "refused".
    let sk: u64 = tpread(ctx, conf!(sr_skaddr))?;
    if sk == 0 {
        return Ok(0);
    }
    let reason_plus1 = match tpread::<u32>(ctx, conf!(sr_reason)) {
        Ok(r) => r.wrapping_add(1),
        Err(_) => 0,
    };
    let now = now_ns();
    if let Some(st) = SOCKS.get_ptr_mut(sk) {
        // SAFETY: map value pointer.
        let s = unsafe { &mut *st };
        if s.flags & F_IGNORED != 0 {
            return Ok(0);
        }
        if !reported(st) {
            s.flags |= F_RST_SENT;
            s.rst_reason_plus1 = reason_plus1;
            if s.rst_ns == 0 {
                s.rst_ns = now;
            }
            return Ok(0);
        }
    }
    // Already reported, destroyed, or a time-wait socket: a separate record,
    // joined in userspace by socket address and then by addresses.
    let mut tuple = tuple_of(sk);
    if conf!(sr_saddr) != ABSENT && conf!(sr_daddr) != ABSENT {
        let (family, sport) = tp_sockaddr(ctx, conf!(sr_saddr), &mut tuple.saddr);
        let (_, dport) = tp_sockaddr(ctx, conf!(sr_daddr), &mut tuple.daddr);
        if family != 0 {
            tuple.family = family;
            tuple.sport = sport;
            tuple.dport = dport;
        }
    }
    let netns = netns_of(sk);
    if !passes(netns, tuple.sport, tuple.dport) {
        return Ok(0);
    }
    let state: i32 = tpread(ctx, conf!(sr_state)).unwrap_or(0);
    let Some(mut entry) = EVENTS.reserve::<ResetRecord>(0) else {
        count(C_LOST_RINGBUF);
        return Ok(0);
    };
    entry.write(ResetRecord {
        hdr: header(KIND_RESET, sk, now),
        tuple,
        reason_plus1,
        state: state as u32,
    });
    entry.submit(BPF_RB_NO_WAKEUP);
    count(C_EMITTED);
    Ok(0)
}
