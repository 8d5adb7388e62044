//! `tcp:tcp_send_reset` and `tcp:tcp_receive_reset`: RST direction, and the
//! kernel's `sk_rst_reason` on 6.10+. Each comes as a classic tracepoint
//! and as a BTF tracepoint (plain loads instead of probe reads).

use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use tracer_common::*;

use crate::{
    conf,
    sock::{
        count, filtering, filters_pass, header, kread, lookup_or_midlife, netns_of, now_ns,
        ports_of, reported, tcp_sock, tp_sockaddr, tpread, tuple_of, tuple_of_any, Clock, Direct,
        NoState, Probed, SockAccess,
    },
    state::submit_flags,
    EVENTS,
};

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    count(C_RESET_SEEN);
    match tpread(&ctx, conf!(rr_skaddr)) {
        Ok(sk) => on_receive_reset::<Probed>(sk) as u32,
        Err(e) => e as u32,
    }
}

/// `tcp_receive_reset(sk)`.
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset_btf(ctx: BtfTracePointContext) -> i32 {
    count(C_RESET_SEEN);
    match tcp_sock(ctx.arg(0)) {
        Some(sk) => on_receive_reset::<Direct>(sk) as i32,
        None => 0,
    }
}

#[inline(always)]
fn on_receive_reset<M: SockAccess>(sk: u64) -> i64 {
    if sk == 0 {
        return 0;
    }
    // Filtered out: never in the table (see `state::on_change`).
    if filtering() && !filters_pass(|| netns_of::<M>(sk), || ports_of::<M>(sk)) {
        return 0;
    }
    let mut clock = Clock::new();
    let Some(st) = lookup_or_midlife::<M>(sk, || ports_of::<M>(sk), &mut clock) else {
        return 0;
    };
    let now = clock.now();
    // SAFETY: map value pointer.
    let s = unsafe { &mut *st };
    s.flags |= F_RST_RECEIVED;
    if s.rst_ns == 0 {
        s.rst_ns = now;
    }
    0
}

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    count(C_RESET_SEEN);
    let Ok(sk) = tpread::<u64>(&ctx, conf!(sr_skaddr)) else {
        return 0;
    };
    let reason_plus1 = match tpread::<u32>(&ctx, conf!(sr_reason)) {
        Ok(r) => r.wrapping_add(1),
        Err(_) => 0,
    };
    let state: i32 = tpread(&ctx, conf!(sr_state)).unwrap_or(0);
    on_send_reset::<Probed>(sk, reason_plus1, state as u32, |tuple| {
        // The record's own addresses: right for time-wait sockets too.
        *tuple = tuple_of::<Probed>(sk);
        if conf!(sr_saddr) != ABSENT && conf!(sr_daddr) != ABSENT {
            let mut t = *tuple;
            let (family, sport) = tp_sockaddr(&ctx, conf!(sr_saddr), &mut t.saddr);
            let (_, dport) = tp_sockaddr(&ctx, conf!(sr_daddr), &mut t.daddr);
            if family != 0 {
                t.family = family;
                t.sport = sport;
                t.dport = dport;
                *tuple = t;
            }
        }
    }) as u32
}

/// `tcp_send_reset(sk, skb[, reason])` (the reason is 6.10+; the classic
/// format says whether this kernel has it).
#[btf_tracepoint(function = "tcp_send_reset")]
pub fn tcp_send_reset_btf(ctx: BtfTracePointContext) -> i32 {
    count(C_RESET_SEEN);
    let sk: u64 = ctx.arg(0);
    let reason_plus1 = if conf!(sr_reason) != ABSENT {
        (ctx.arg::<u64>(2) as u32).wrapping_add(1)
    } else {
        0
    };
    let state = kread::<u8>(sk, conf!(sk_state)).unwrap_or(0) as u32;
    let r = match tcp_sock(sk) {
        Some(tp) => {
            on_send_reset::<Direct>(tp, reason_plus1, state, |t| *t = tuple_of::<Direct>(tp))
        }
        // A time-wait or request socket: no state, only a record.
        None => on_send_reset::<NoState>(sk, reason_plus1, state, |t| *t = tuple_of_any(sk)),
    };
    r as i32
}

#[inline(always)]
fn on_send_reset<M: SockAccess>(
    sk: u64,
    reason_plus1: u32,
    state: u32,
    addresses: impl FnOnce(&mut Tuple),
) -> i64 {
    // A reset answering a segment that matched no socket (e.g. a SYN to a
    // closed port) has no socket: the connecting side reports "refused".
    if sk == 0 {
        return 0;
    }
    let now = now_ns();
    if let Some(st) = M::get(sk) {
        // SAFETY: map value pointer.
        let s = unsafe { &mut *st };
        if s.flags & F_IGNORED != 0 {
            return 0;
        }
        if !reported(st) {
            s.flags |= F_RST_SENT;
            s.rst_reason_plus1 = reason_plus1;
            if s.rst_ns == 0 {
                s.rst_ns = now;
            }
            return 0;
        }
    }
    // Already reported, destroyed, or a time-wait socket: a separate record,
    // joined in userspace by socket address and then by addresses.
    let mut tuple = Tuple::EMPTY;
    addresses(&mut tuple);
    if !filters_pass(|| netns_of::<M>(sk), || (tuple.sport, tuple.dport)) {
        return 0;
    }
    let Some(mut entry) = EVENTS.reserve::<ResetRecord>(0) else {
        count(C_LOST_RINGBUF);
        return 0;
    };
    entry.write(ResetRecord {
        hdr: header(KIND_RESET, sk, now),
        tuple,
        reason_plus1,
        state,
    });
    entry.submit(submit_flags());
    count(C_EMITTED);
    0
}
