//! `tcp:tcp_destroy_sock` (the end of a socket's memory) and
//! `sock:inet_sk_error_report` (the error the application is told).

use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use tracer_common::*;

use crate::{
    conf,
    sock::{
        count, header, now_ns, ports_wanted, reported, tcp_sock, tpread, tpread_proto, tuple_of,
        Direct, Probed, SockAccess,
    },
    state::{emit_conn_tuple, submit_flags},
    EVENTS,
};

#[tracepoint]
pub fn tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    count(C_DESTROY_SEEN);
    match tpread(&ctx, conf!(ds_skaddr)) {
        Ok(sk) => on_destroy::<Probed>(sk) as u32,
        Err(e) => e as u32,
    }
}

/// `tcp_destroy_sock(sk)`.
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy_sock_btf(ctx: BtfTracePointContext) -> i32 {
    count(C_DESTROY_SEEN);
    let sk: u64 = ctx.arg(0);
    // Most sockets were forgotten when they closed: look them up by address
    // first, and make the socket a `tcp_sock` to read it only when found.
    if sk == 0 || Direct::get(sk).is_none() {
        return 0;
    }
    match tcp_sock(sk) {
        Some(sk) => on_destroy::<Direct>(sk) as i32,
        None => 0,
    }
}

#[inline(always)]
fn on_destroy<M: SockAccess>(sk: u64) -> i64 {
    let Some(st) = M::get(sk) else {
        return 0;
    };
    // SAFETY: map value pointer.
    let s = unsafe { &*st };
    // A reported socket that no task had closed yet is being closed now by
    // its application, in its own context (__tcp_close() on a CLOSE socket
    // destroys it at once, net/ipv4/tcp.c): that task observed the failure.
    if reported(st) && s.closer_tid == 0 && s.flags & F_IGNORED == 0 {
        let mut copy = *s;
        let id = aya_ebpf::helpers::bpf_get_current_pid_tgid();
        copy.closer_tid = id as u32;
        emit_conn_tuple::<M>(KIND_OBSERVE, sk, &copy, now_ns(), true, |t| {
            *t = tuple_of::<M>(sk)
        });
    }
    M::forget(sk);
    0
}

#[tracepoint]
pub fn inet_sk_error_report(ctx: TracePointContext) -> u32 {
    match try_error(&ctx) {
        Ok(v) | Err(v) => v as u32,
    }
}

fn try_error(ctx: &TracePointContext) -> Result<i64, i64> {
    count(C_ERROR_SEEN);
    if tpread_proto(ctx, conf!(er_protocol), conf!(er_protocol_size))? != IPPROTO_TCP {
        return Ok(0);
    }
    let sport: u16 = tpread(ctx, conf!(er_sport))?;
    let dport: u16 = tpread(ctx, conf!(er_dport))?;
    // No socket pointer in this tracepoint: ports only; userspace joins it
    // to a reported connection by addresses and drops the rest.
    if !ports_wanted(sport, dport) {
        return Ok(0);
    }
    let mut tuple = Tuple {
        sport,
        dport,
        family: tpread(ctx, conf!(er_family)).unwrap_or(0),
        ..Tuple::EMPTY
    };
    if tuple.family == AF_INET6 {
        tuple.saddr = tpread(ctx, conf!(er_saddr_v6)).unwrap_or([0; 16]);
        tuple.daddr = tpread(ctx, conf!(er_daddr_v6)).unwrap_or([0; 16]);
    } else {
        let s4: [u8; 4] = tpread(ctx, conf!(er_saddr)).unwrap_or([0; 4]);
        let d4: [u8; 4] = tpread(ctx, conf!(er_daddr)).unwrap_or([0; 4]);
        tuple.saddr[..4].copy_from_slice(&s4);
        tuple.daddr[..4].copy_from_slice(&d4);
    }
    let error: i32 = tpread(ctx, conf!(er_error))?;
    let Some(mut entry) = EVENTS.reserve::<ErrorRecord>(0) else {
        count(C_LOST_RINGBUF);
        return Ok(0);
    };
    entry.write(ErrorRecord {
        hdr: header(KIND_ERROR, 0, now_ns()),
        tuple,
        error,
        _pad: 0,
    });
    entry.submit(submit_flags());
    count(C_EMITTED);
    Ok(0)
}
