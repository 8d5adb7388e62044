//! `sock:inet_sock_set_state`: every TCP state change. Births set the role
//! and owner, the first change out of ESTABLISHED says who closed first, and
//! `TCP_CLOSE` emits the socket's whole life as one record.

use aya_ebpf::{
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use tracer_common::*;

use crate::{
    conf,
    send::open_sniff_window,
    sock::{
        born, count, current_comm, filtering, filters_pass, header, idle_ms, lookup_or_midlife,
        netns_of, now_ns, ports_of, tcp_sock, tuple_of, Clock, Direct, Probed, Rec, SockAccess,
        F_IGNORED,
    },
    EVENTS, LISTENERS,
};

const ETIMEDOUT: i32 = 110;

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    match try_classic(&ctx) {
        Ok(v) | Err(v) => v as u32,
    }
}

/// The same hook as a BTF raw tracepoint, `inet_sock_set_state(sk, oldstate,
/// newstate)` (include/trace/events/sock.h): the kernel calls the program
/// with the arguments, without building the classic record first. Preferred
/// when the kernel allows it; the classic one is the fallback.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: BtfTracePointContext) -> i32 {
    match try_raw(&ctx) {
        Ok(v) | Err(v) => v as i32,
    }
}

/// Where a state change's addresses come from.
pub trait Source {
    fn tuple(&self, t: &mut Tuple);
}

/// The classic tracepoint's record.
struct Classic<'a>(&'a Rec);

impl Source for Classic<'_> {
    #[inline(always)]
    fn tuple(&self, t: &mut Tuple) {
        let rec = self.0;
        t.sport = rec.get(conf!(ss_sport)).unwrap_or(0);
        t.dport = rec.get(conf!(ss_dport)).unwrap_or(0);
        t.family = rec.get(conf!(ss_family)).unwrap_or(0);
        if t.family == AF_INET6 {
            t.saddr = rec.get(conf!(ss_saddr_v6)).unwrap_or([0; 16]);
            t.daddr = rec.get(conf!(ss_daddr_v6)).unwrap_or([0; 16]);
        } else {
            let s4: [u8; 4] = rec.get(conf!(ss_saddr)).unwrap_or([0; 4]);
            let d4: [u8; 4] = rec.get(conf!(ss_daddr)).unwrap_or([0; 4]);
            t.saddr[..4].copy_from_slice(&s4);
            t.daddr[..4].copy_from_slice(&d4);
        }
    }
}

/// The socket itself (raw tracepoint).
struct Raw(u64);

impl Source for Raw {
    #[inline(always)]
    fn tuple(&self, t: &mut Tuple) {
        *t = tuple_of::<Direct>(self.0);
    }
}

/// Half of a connection's ten state changes say nothing a verdict uses
/// (SYN_SENT/SYN_RECV -> ESTABLISHED, FIN_WAIT1 -> FIN_WAIT2, ...): they
/// leave before any map work. A listener closing is not a connection either
/// (but LISTEN -> SYN_RECV is how an accepted socket is born:
/// inet_csk_clone_lock()).
#[inline(always)]
fn wanted(old: u8, new: u8) -> bool {
    let useful = matches!(new, TCP_SYN_SENT | TCP_SYN_RECV | TCP_LISTEN | TCP_CLOSE)
        || old == TCP_ESTABLISHED
        || old == TCP_CLOSE_WAIT;
    useful && !(old == TCP_LISTEN && new != TCP_SYN_RECV)
}

fn try_classic(ctx: &TracePointContext) -> Result<i64, i64> {
    count(C_STATE_SEEN);
    let rec = Rec::read(ctx)?;
    let old = rec.get::<i32>(conf!(ss_oldstate))? as u8;
    let new = rec.get::<i32>(conf!(ss_newstate))? as u8;
    if !wanted(old, new) {
        return Ok(0);
    }
    if rec.proto(conf!(ss_protocol), conf!(ss_protocol_size))? != IPPROTO_TCP {
        return Ok(0);
    }
    let sk: u64 = rec.get(conf!(ss_skaddr))?;
    let sport: u16 = rec.get(conf!(ss_sport))?;
    let dport: u16 = rec.get(conf!(ss_dport))?;
    on_change::<_, Probed>(&Classic(&rec), sk, old, new, || (sport, dport))
}

fn try_raw(ctx: &BtfTracePointContext) -> Result<i64, i64> {
    count(C_STATE_SEEN);
    let sk: u64 = ctx.arg(0);
    let old = ctx.arg::<u64>(1) as u8;
    let new = ctx.arg::<u64>(2) as u8;
    if !wanted(old, new) {
        return Ok(0);
    }
    // Not TCP (MPTCP and SCTP use this tracepoint too): nothing to do.
    let Some(sk) = tcp_sock(sk) else {
        return Ok(0);
    };
    // Like the classic record (TP_STORE_ADDR_PORTS): inet_sport, inet_dport,
    // read only when a socket is new to the map.
    on_change::<_, Direct>(&Raw(sk), sk, old, new, || ports_of::<Direct>(sk))
}

/// Everything after the decoding, shared by both hooks.
#[inline(always)]
fn on_change<S: Source, M: SockAccess>(
    src: &S,
    sk: u64,
    old: u8,
    new: u8,
    ports: impl Fn() -> (u16, u16),
) -> Result<i64, i64> {
    // With `--port`/`--netns`/`--pod`, a socket the filters turn away is
    // neither born into the table nor looked up at its later changes: the
    // same test from its fields each time (cheaper than a lookup, and a
    // namespace added to the filter later is followed from then on).
    if filtering() && !filters_pass(|| netns_of::<M>(sk), &ports) {
        if matches!(new, TCP_SYN_SENT | TCP_SYN_RECV | TCP_LISTEN) {
            count(C_FILTERED);
        }
        return Ok(0);
    }
    match new {
        // Births: the filters were tested above.
        TCP_SYN_SENT => return on_connect::<M>(sk, now_ns()),
        TCP_SYN_RECV => return on_accept_birth::<M>(sk, ports().0, now_ns()),
        TCP_LISTEN => return on_listen::<M>(sk, ports().0),
        _ => {}
    }
    let mut clock = Clock::new();
    let st = if old == TCP_ESTABLISHED || new == TCP_CLOSE {
        match lookup_or_midlife::<M>(sk, ports, &mut clock) {
            Some(st) => st,
            None => {
                if new == TCP_CLOSE {
                    M::forget(sk);
                }
                return Ok(0);
            }
        }
    } else {
        match M::get(sk) {
            // SAFETY: map value pointer.
            Some(st) if unsafe { (*st).flags } & F_IGNORED == 0 => st,
            _ => return Ok(0),
        }
    };
    // SAFETY: map value pointer, valid for this program run.
    let s = unsafe { &mut *st };

    let id = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    let tid = id as u32;

    if s.close_start_ns == 0
        && (old == TCP_ESTABLISHED || (old == TCP_SYN_RECV && new == TCP_CLOSE))
    {
        // The close begins here: who went first, and how idle was it.
        s.close_start_ns = clock.now();
        s.close_from = old;
        s.close_to = new;
        s.idle_at_close_ms = idle_ms::<M>(sk);
        // `bytes_received` advances with rcv_nxt, and a FIN takes one
        // sequence number (tcp_rcv_nxt_update(), net/ipv4/tcp_input.c): on a
        // peer FIN, "no response byte" is one more than at the request.
        let fin = (new == TCP_CLOSE_WAIT) as u64;
        let inflight = s.flags & F_ROLE_CLIENT != 0 && s.messages > 0 && {
            let rcvd: u64 = M::read(sk, conf!(tp_bytes_received)).unwrap_or(0);
            rcvd == s.rcvd_at_msg + fin
        };
        if inflight {
            s.flags |= F_INFLIGHT_AT_CLOSE;
        }
        match new {
            // tcp_close()/tcp_shutdown() run in the closing task
            // (net/ipv4/tcp.c): the current task is the actor.
            TCP_FIN_WAIT1 => {
                s.flags |= F_LOCAL_CLOSE_FIRST;
                local_close::<M>(s, sk, tid, false);
            }
            TCP_CLOSE_WAIT => s.flags |= F_PEER_FIN_FIRST,
            TCP_CLOSE if s.flags & F_RST_RECEIVED == 0 => {
                // ESTABLISHED -> CLOSE without an RST received is an abortive
                // close by the application (SO_LINGER 0, or unread data):
                // tcp_disconnect()/__tcp_close() set CLOSE, then send the RST.
                s.flags |= F_LOCAL_CLOSE_FIRST | F_RST_SENT;
                local_close::<M>(s, sk, tid, true);
            }
            _ => {}
        }
        if inflight && new == TCP_FIN_WAIT1 {
            // The proxy gave up on a request in flight (its read timeout, or
            // its client left): let userspace join the 5xx that follows.
            emit_conn::<S, M>(KIND_OBSERVE, sk, s, src, clock.now(), true);
        } else if inflight && new == TCP_CLOSE_WAIT {
            // The backend's FIN answered a request: a failure now, although
            // the socket may close only after the proxy has written its 5xx
            // (HAProxy answers first, then closes). Softirq: no actor.
            emit_conn::<S, M>(KIND_OBSERVE, sk, s, src, clock.now(), false);
        }
    } else if old == TCP_CLOSE_WAIT
        && (new == TCP_LAST_ACK || (new == TCP_CLOSE && s.flags & F_RST_RECEIVED == 0))
    {
        // The application closes after the peer's FIN (an RST arriving in
        // CLOSE_WAIT is not a close by the application): the current task is
        // the one that observed it (e.g. nginx's "upstream prematurely closed").
        s.closer_tid = tid;
        if new == TCP_CLOSE {
            s.flags |= F_RST_SENT;
        }
        if s.flags & F_INFLIGHT_AT_CLOSE != 0 {
            emit_conn::<S, M>(KIND_OBSERVE, sk, s, src, clock.now(), true);
        }
    } else if old == TCP_SYN_SENT && new == TCP_CLOSE {
        s.flags |= F_CONNECT_FAILED;
        s.close_start_ns = clock.now();
        s.close_from = old;
        s.close_to = new;
        let err: i32 = M::read(sk, conf!(sk_err)).unwrap_or(0);
        if s.flags & F_RST_RECEIVED == 0 && err != ETIMEDOUT {
            // No RST and no kernel timeout: the application abandoned the
            // connect (a proxy's connect timeout), in its own context.
            s.closer_tid = tid;
            s.flags |= F_LOCAL_CLOSE_FIRST;
        }
    } else if (old == TCP_FIN_WAIT1 || old == TCP_FIN_WAIT2)
        && new == TCP_CLOSE
        && s.flags & F_RST_RECEIVED != 0
    {
        // tcp_rcv_state_process() calls tcp_reset() (which fires
        // tcp_receive_reset) when data arrives after we closed, then sends an
        // RST with TCP_ABORT_ON_DATA (net/ipv4/tcp_input.c). Userspace
        // confirms with the RST reason that follows.
        s.flags |= F_DATA_AFTER_CLOSE;
    }

    if new == TCP_CLOSE {
        on_close::<S, M>(src, sk, st, &mut clock);
    }
    Ok(0)
}

/// Records the closing task, and whether it was exiting (crash, kill, OOM).
#[inline(always)]
fn local_close<M: SockAccess>(s: &mut SockState, sk: u64, tid: u32, abortive: bool) {
    s.closer_tid = tid;
    if M::current_task_flags().is_some_and(|f| f & PF_EXITING != 0) {
        s.flags |= F_EXITING_CLOSE;
    }
    // Unread data turns close() into an abort (__tcp_close() sends an RST
    // and goes straight to CLOSE), so only an abortive close can have it.
    if abortive {
        let rcv_nxt: u32 = M::read(sk, conf!(tp_rcv_nxt)).unwrap_or(0);
        let copied: u32 = M::read(sk, conf!(tp_copied_seq)).unwrap_or(0);
        if rcv_nxt != copied {
            s.flags |= F_UNREAD_AT_CLOSE;
        }
    }
    if s.owner_tgid == 0 {
        let id = aya_ebpf::helpers::bpf_get_current_pid_tgid();
        s.owner_tgid = (id >> 32) as u32;
        s.owner_tid = id as u32;
        s.comm = current_comm();
    }
}

/// `TCP_CLOSE`: emit the socket's life if it ended abnormally (or always,
/// with `--all`). Reported sockets stay in the map until `tcp_destroy_sock`
/// so a late RST or the application's close can still be joined.
#[inline(always)]
fn on_close<S: Source, M: SockAccess>(src: &S, sk: u64, st: *mut SockState, clock: &mut Clock) {
    // SAFETY: map value pointer.
    let s = unsafe { &mut *st };
    if s.flags & F_REPORTED != 0 {
        return;
    }
    if s.close_start_ns == 0 {
        s.close_start_ns = clock.now();
    }
    let err: i32 = M::read(sk, conf!(sk_err)).unwrap_or(0);
    let abnormal = s.flags & F_ABNORMAL != 0 || err != 0;
    if abnormal || conf!(report_all) != 0 {
        s.flags |= F_REPORTED;
        emit_conn::<S, M>(KIND_CLOSE, sk, s, src, clock.now(), false);
    } else {
        M::forget(sk);
    }
}

/// Writes a [`ConnRecord`] for this socket straight into the ring buffer.
#[inline(always)]
pub fn emit_conn<S: Source, M: SockAccess>(
    kind: u8,
    sk: u64,
    s: &SockState,
    src: &S,
    now: u64,
    task_ctx: bool,
) {
    emit_conn_tuple::<M>(kind, sk, s, now, task_ctx, |t| src.tuple(t));
}

/// Shared by every [`ConnRecord`] producer; `fill` writes the addresses.
#[inline(always)]
pub fn emit_conn_tuple<M: SockAccess>(
    kind: u8,
    sk: u64,
    s: &SockState,
    now: u64,
    task_ctx: bool,
    fill: impl FnOnce(&mut Tuple),
) {
    let Some(mut entry) = EVENTS.reserve::<ConnRecord>(0) else {
        count(C_LOST_RINGBUF);
        return;
    };
    let bytes_sent = M::read(sk, conf!(tp_bytes_acked)).unwrap_or(0);
    let bytes_received = M::read(sk, conf!(tp_bytes_received)).unwrap_or(0);
    let sk_err = M::read(sk, conf!(sk_err)).unwrap_or(0);
    let rec = entry.as_mut_ptr();
    // SAFETY: `rec` points to reserved ring-buffer memory of the right size;
    // every field is written before submit.
    unsafe {
        (*rec).hdr = header(kind, sk, now);
        (*rec).tuple = Tuple::EMPTY;
        fill(&mut (*rec).tuple);
        (*rec).state = *s;
        if task_ctx {
            (*rec).state.flags |= F_TASK_CTX;
        }
        (*rec).bytes_sent = bytes_sent;
        (*rec).bytes_received = bytes_received;
        (*rec).sk_err = sk_err;
        (*rec).cur_comm = if task_ctx {
            current_comm()
        } else {
            [0; COMM_LEN]
        };
        (*rec)._pad = 0;
    }
    entry.submit(submit_flags());
    count(C_EMITTED);
    if kind == KIND_OBSERVE || s.flags & F_ABNORMAL != 0 || sk_err != 0 {
        // Its owner may answer a client with a 5xx next.
        open_sniff_window(s.owner_tgid, now, SNIFF_AFTER_FAILURE_NS);
    }
}

/// `bpf_ringbuf_submit` flag: userspace drains on a timer, so no wake-up
/// (each wake-up is an IPI in a VM: see PERFORMANCE.md).
const BPF_RB_NO_WAKEUP: u64 = 1;
/// `bpf_ringbuf_submit` flag: wake the reader now.
const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// `bpf_ringbuf_query` flag: bytes not yet consumed.
const BPF_RB_AVAIL_DATA: u64 = 0;

/// How to submit a record: without a wake-up, unless the ring is more than
/// half full (a burst: a listener aborting its queue, thousands of sockets
/// closing at once), when the reader is woken so it drains before the ring
/// fills rather than at its next 10 ms tick.
#[inline(always)]
pub fn submit_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) > RING_BYTES as u64 / 2 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// `connect()`: CLOSE -> SYN_SENT runs in the connecting task.
#[inline(always)]
fn on_connect<M: SockAccess>(sk: u64, now: u64) -> Result<i64, i64> {
    let id = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    let netns = netns_of::<M>(sk);
    if tgid == conf!(self_tgid) {
        let _ = M::put(sk, born(now, netns, F_IGNORED));
        return Ok(0);
    }
    let _ = M::put(sk, |st| {
        born(now, netns, F_ROLE_CLIENT)(st);
        st.owner_tgid = tgid;
        st.owner_tid = id as u32;
        st.comm = current_comm();
    });
    Ok(0)
}

/// A passive open: the child socket is created in SYN_RECV (softirq); its
/// owner is the listener's until the application touches it.
#[inline(always)]
fn on_accept_birth<M: SockAccess>(sk: u64, sport: u16, now: u64) -> Result<i64, i64> {
    let netns = netns_of::<M>(sk);
    let key = ListenKey {
        netns,
        port: sport,
        _pad: 0,
    };
    // SAFETY: map value, copied out at once.
    let owner = unsafe { LISTENERS.get(key) }.copied();
    let _ = M::put(sk, |st| {
        born(now, netns, F_ROLE_SERVER)(st);
        if let Some(owner) = owner {
            st.owner_tgid = owner.tgid;
            st.owner_tid = owner.tid;
            st.comm = owner.comm;
        }
    });
    Ok(0)
}

/// `listen()` runs in the listening task: remember it as the owner of the
/// connections it will accept.
#[inline(always)]
fn on_listen<M: SockAccess>(sk: u64, sport: u16) -> Result<i64, i64> {
    let netns = netns_of::<M>(sk);
    let id = aya_ebpf::helpers::bpf_get_current_pid_tgid();
    let owner = ListenOwner {
        tgid: (id >> 32) as u32,
        tid: id as u32,
        comm: current_comm(),
    };
    let key = ListenKey {
        netns,
        port: sport,
        _pad: 0,
    };
    let _ = LISTENERS.insert(key, owner, 0);
    Ok(0)
}
