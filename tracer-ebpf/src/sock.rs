//! Shared helpers: reading kernel memory at BTF offsets, filters, counters,
//! and filling record headers.

use core::mem::MaybeUninit;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_kernel, generated,
    },
    programs::TracePointContext,
    EbpfContext as _,
};
use tracer_common::{
    port_bit, Header, SockState, Tuple, ABSENT, AF_INET6, COMM_LEN, C_FILTERED, F_MIDLIFE,
    F_REPORTED, TCP_NEW_SYN_RECV, TCP_TIME_WAIT,
};

use crate::{conf, table, ANCHOR, COUNTERS, NETNS, PORTS};

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn count(idx: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *c += 1 };
    }
}

/// Reads a `T` at `base + off` in kernel memory; `ABSENT` offsets fail.
#[inline(always)]
pub fn kread<T>(base: u64, off: u32) -> Result<T, i64> {
    if off == ABSENT || base == 0 {
        return Err(0);
    }
    // SAFETY: bpf_probe_read_kernel validates the address.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.map_err(|e| e as i64)
}

/// Reads a `T` at `off` in the tracepoint record; `ABSENT` offsets fail.
#[inline(always)]
pub fn tpread<T>(ctx: &TracePointContext, off: u32) -> Result<T, i64> {
    if off == ABSENT {
        return Err(0);
    }
    // SAFETY: offsets come from this kernel's format file.
    unsafe { ctx.read_at::<T>(off as usize) }.map_err(|e| e as i64)
}

/// A tracepoint record copied to the stack with one helper call, instead of
/// one `bpf_probe_read_kernel` per field (the offsets are only known at load
/// time, and the verifier forbids variable offsets into the context).
pub struct Rec {
    buf: [u8; REC_LEN],
}

/// Covers `inet_sock_set_state` (72 bytes on 6.18, 80 with the RT kernels'
/// extra common fields). The record sits in the per-CPU perf trace buffer
/// (PERF_MAX_TRACE_SIZE, 8 KiB), so reading past its end stays inside it.
pub const REC_LEN: usize = 96;

impl Rec {
    #[inline(always)]
    pub fn read(ctx: &TracePointContext) -> Result<Self, i64> {
        let mut buf = [0u8; REC_LEN];
        // SAFETY: the context points into the perf trace buffer (see REC_LEN).
        unsafe {
            aya_ebpf::helpers::bpf_probe_read_kernel_buf(ctx.as_ptr() as *const u8, &mut buf)
        }
        .map_err(|e| e as i64)?;
        Ok(Self { buf })
    }

    /// The field at `off`; `ABSENT` or out-of-range offsets fail.
    #[inline(always)]
    pub fn get<T: Copy>(&self, off: u32) -> Result<T, i64> {
        let off = off as usize;
        if off > REC_LEN - core::mem::size_of::<T>() {
            return Err(0);
        }
        // SAFETY: bounds checked above; no alignment assumed.
        Ok(unsafe { core::ptr::read_unaligned(self.buf.as_ptr().add(off) as *const T) })
    }

    /// A 1- or 2-byte `protocol` field (its width changed in 5.6).
    #[inline(always)]
    pub fn proto(&self, off: u32, size: u32) -> Result<u16, i64> {
        if size == 1 {
            Ok(self.get::<u8>(off)? as u16)
        } else {
            self.get::<u16>(off)
        }
    }
}

/// Reads a 1- or 2-byte `protocol` field (its width changed in 5.6).
#[inline(always)]
pub fn tpread_proto(ctx: &TracePointContext, off: u32, size: u32) -> Result<u16, i64> {
    if size == 1 {
        Ok(tpread::<u8>(ctx, off)? as u16)
    } else {
        tpread::<u16>(ctx, off)
    }
}

/// Network-namespace inode of a socket: `sk->__sk_common.skc_net.net->ns.inum`.
#[inline(always)]
pub fn netns_of<M: SockAccess>(sk: u64) -> u32 {
    let net: u64 = match M::read(sk, conf!(sk_net)) {
        Ok(n) => n,
        Err(_) => return 0,
    };
    M::read::<u32>(net, conf!(net_inum)).unwrap_or(0)
}

/// Whether a socket with these ports in this namespace is of interest;
/// counts the ones that are not.
#[inline(always)]
pub fn passes(netns: u32, lport: u16, rport: u16) -> bool {
    let wanted = filters_pass(|| netns, || (lport, rport));
    if !wanted {
        count(C_FILTERED);
    }
    wanted
}

/// Whether a socket is of interest, given its namespace and its (local,
/// remote) ports, each computed only if a filter asks for it.
#[inline(always)]
pub fn filters_pass(netns: impl FnOnce() -> u32, ports: impl FnOnce() -> (u16, u16)) -> bool {
    if conf!(filter_netns) != 0 && unsafe { NETNS.get(netns()) }.is_none() {
        return false;
    }
    // The ports are read only when a port filter is set.
    conf!(filter_ports) == 0 || {
        let (lport, rport) = ports();
        ports_wanted(lport, rport)
    }
}

/// Whether one of these ports is in the `--port` filter (or none is set).
#[inline(always)]
pub fn ports_wanted(lport: u16, rport: u16) -> bool {
    conf!(filter_ports) == 0 || port_listed(lport) || port_listed(rport)
}

/// Whether any filter is set.
#[inline(always)]
pub fn filtering() -> bool {
    (conf!(filter_ports) | conf!(filter_netns)) != 0
}

#[inline(always)]
fn port_listed(p: u16) -> bool {
    let (word, bit) = port_bit(p);
    PORTS.get(word).is_some_and(|w| *w & bit != 0)
}

/// Fills a header for the current task and time.
#[inline(always)]
pub fn header(kind: u8, skaddr: u64, now: u64) -> Header {
    let id = bpf_get_current_pid_tgid();
    Header {
        kind,
        _pad: [0; 3],
        tid: id as u32,
        tgid: (id >> 32) as u32,
        // SAFETY: plain helper call.
        cpu: unsafe { bpf_get_smp_processor_id() },
        ts_ns: now,
        skaddr,
    }
}

/// `bpf_ktime_get_ns`, read at most once per program run and only if used
/// (most state changes of a healthy connection need no time).
pub struct Clock(u64);

impl Clock {
    #[inline(always)]
    pub fn new() -> Self {
        Self(0)
    }

    #[inline(always)]
    pub fn now(&mut self) -> u64 {
        if self.0 == 0 {
            self.0 = now_ns();
        }
        self.0
    }
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
}

/// The current task's name. Not aya's `bpf_get_current_comm()`, which
/// zeroes its buffer first: see [`zero_in_place`].
#[inline(always)]
pub fn current_comm() -> [u8; COMM_LEN] {
    let mut comm = MaybeUninit::<[u8; COMM_LEN]>::uninit();
    // SAFETY: the helper writes all COMM_LEN bytes, zeroes on failure
    // (bpf_get_current_comm, kernel/bpf/helpers.c).
    unsafe {
        generated::bpf_get_current_comm(comm.as_mut_ptr().cast(), COMM_LEN as u32);
        comm.assume_init()
    }
}

/// Sets every byte of `*p` to zero with 8-byte stores. A zeroed array or
/// run of zero fields in a struct literal becomes a `memset` call, which
/// the eBPF build links as a subprogram storing one byte per loop turn:
/// 68 turns for a fresh [`SockState`] built on the stack, then copied,
/// 13 % of the state hook's samples in `perf`.
///
/// # Safety
/// `p` is valid for writes, 8-aligned, and all-zero bytes are a valid `T`.
#[inline(always)]
pub unsafe fn zero_in_place<T>(p: *mut T) {
    const { assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>() >= 8) };
    let words = p.cast::<u64>();
    for i in 0..size_of::<T>() / 8 {
        // SAFETY: within `*p`; volatile, so not merged back into a memset.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}

/// Fills a zeroed per-socket state: a birth (or a socket first seen
/// mid-life) at `now`.
#[inline(always)]
pub fn born(now: u64, netns: u32, flags: u32) -> impl FnOnce(&mut SockState) {
    move |st| {
        st.birth_ns = now;
        st.netns = netns;
        st.flags = flags;
    }
}

/// The socket's own addresses from `struct sock_common`, valid for full and
/// time-wait sockets alike (both start with `sock_common`,
/// include/net/sock.h, include/net/inet_timewait_sock.h).
#[inline(always)]
pub fn tuple_of<M: SockAccess>(sk: u64) -> Tuple {
    let mut t = Tuple {
        sport: local_port::<M>(sk),
        dport: u16::from_be(M::read::<u16>(sk, conf!(sk_dport)).unwrap_or(0)),
        family: M::read::<u16>(sk, conf!(sk_family)).unwrap_or(0),
        ..Tuple::EMPTY
    };
    if t.family == AF_INET6 {
        t.saddr = M::read(sk, conf!(sk_v6_rcv_saddr)).unwrap_or([0; 16]);
        t.daddr = M::read(sk, conf!(sk_v6_daddr)).unwrap_or([0; 16]);
    } else {
        let s: [u8; 4] = M::read(sk, conf!(sk_rcv_saddr)).unwrap_or([0; 4]);
        let d: [u8; 4] = M::read(sk, conf!(sk_daddr)).unwrap_or([0; 4]);
        t.saddr[..4].copy_from_slice(&s);
        t.daddr[..4].copy_from_slice(&d);
    }
    t
}

/// Like [`tuple_of`], for any kind of socket (read with
/// `bpf_probe_read_kernel`): a time-wait or request socket has no
/// `inet_sock`, its local port is `skc_num` (kept while it is hashed).
#[inline(always)]
pub fn tuple_of_any(sk: u64) -> Tuple {
    let mut t = tuple_of::<Probed>(sk);
    let state: u8 = kread(sk, conf!(sk_state)).unwrap_or(0);
    if state == TCP_TIME_WAIT || state == TCP_NEW_SYN_RECV {
        t.sport = kread::<u16>(sk, conf!(sk_num)).unwrap_or(0);
    }
    t
}

/// (local, remote) ports of a bound socket: both from `sock_common`
/// (`skc_num`, `skc_dport`), which the kernel has just been using.
#[inline(always)]
pub fn live_ports<M: SockAccess>(sk: u64) -> (u16, u16) {
    (
        M::read::<u16>(sk, conf!(sk_num)).unwrap_or(0),
        u16::from_be(M::read::<u16>(sk, conf!(sk_dport)).unwrap_or(0)),
    )
}

/// (local, remote) ports of a socket, also after close.
#[inline(always)]
pub fn ports_of<M: SockAccess>(sk: u64) -> (u16, u16) {
    (
        local_port::<M>(sk),
        u16::from_be(M::read::<u16>(sk, conf!(sk_dport)).unwrap_or(0)),
    )
}

/// The local port, also after close (see `Config::sk_inet_sport`).
#[inline(always)]
pub fn local_port<M: SockAccess>(sk: u64) -> u16 {
    match M::read::<u16>(sk, conf!(sk_inet_sport)) {
        Ok(p) if p != 0 => u16::from_be(p),
        _ => M::read::<u16>(sk, conf!(sk_num)).unwrap_or(0),
    }
}

/// Reads a `struct sockaddr_in`/`sockaddr_in6` kept in a tracepoint record
/// (include/trace/events/net_probe_common.h `TP_STORE_ADDR_PORTS`):
/// family at 0, port (network order) at 2, IPv4 address at 4, IPv6 at 8.
#[inline(always)]
pub fn tp_sockaddr(ctx: &TracePointContext, off: u32, addr: &mut [u8; 16]) -> (u16, u16) {
    let family: u16 = tpread(ctx, off).unwrap_or(0);
    let port = u16::from_be(tpread::<u16>(ctx, off.wrapping_add(2)).unwrap_or(0));
    if family == AF_INET6 {
        *addr = tpread(ctx, off.wrapping_add(8)).unwrap_or([0; 16]);
    } else {
        let a: [u8; 4] = tpread(ctx, off.wrapping_add(4)).unwrap_or([0; 4]);
        addr[..4].copy_from_slice(&a);
    }
    (family, port)
}

/// Current jiffies, truncated like `tcp_jiffies32` (include/net/tcp.h).
#[inline(always)]
pub fn jiffies32() -> u32 {
    // SAFETY: plain helper call (kernel 5.5+).
    unsafe { aya_ebpf::helpers::generated::bpf_jiffies64() as u32 }
}

/// Milliseconds since the later of the socket's last data sent
/// (`tcp_sock.lsndtime`) and last data received (`icsk_ack.lrcvtime`).
#[inline(always)]
pub fn idle_ms<M: SockAccess>(sk: u64) -> u32 {
    let snd: u32 = M::read(sk, conf!(tp_lsndtime)).unwrap_or(0);
    let rcv: u32 = M::read(sk, conf!(icsk_lrcvtime)).unwrap_or(0);
    let last = if (snd.wrapping_sub(rcv) as i32) > 0 {
        snd
    } else {
        rcv
    };
    let d = jiffies32().wrapping_sub(last);
    if (d as i32) < 0 {
        return 0;
    }
    let hz = conf!(hz);
    if hz == 0 {
        return 0;
    }
    ((d as u64) * 1000 / hz as u64) as u32
}

/// The address of `cell`, the `ANCHOR` map value, as a number: the pointer stored in
/// the value itself and loaded back (the verifier does not follow pointers
/// through map memory). Every program stores the same address, so runs on
/// other CPUs cannot disturb it.
#[inline(always)]
fn anchor_at(cell: *mut u64) -> u64 {
    // SAFETY: `cell` is the array map value of 8 bytes.
    unsafe {
        core::ptr::write_volatile(cell, cell as u64);
        core::ptr::read_volatile(cell)
    }
}

/// How a program reaches a socket: its memory, and its state (`table`).
/// Two kinds of program, the same logic: classic tracepoints ([`Probed`]) and
/// BTF tracepoints ([`Direct`]); the loader attaches one set.
pub trait SockAccess: Sized {
    /// Reads a `T` at `base + off`: a field of the socket, or of a kernel
    /// object reached from it (its `struct net`). `ABSENT` offsets fail.
    fn read<T: Copy>(base: u64, off: u32) -> Result<T, i64>;

    /// The socket's address as a plain number, to hash (every kind of
    /// program must find a socket in the same place). `sk` is a number
    /// already here.
    #[inline(always)]
    fn addr(sk: u64) -> u64 {
        sk
    }

    /// `current->flags`.
    #[inline(always)]
    fn current_task_flags() -> Option<u32> {
        // SAFETY: plain helper call.
        let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() };
        kread(task, conf!(task_flags)).ok()
    }

    /// The socket's state, if it has one (ignored sockets included).
    #[inline(always)]
    fn get(sk: u64) -> Option<*mut SockState> {
        table::get::<Self>(sk)
    }

    /// Gives the socket a new state (a birth, or a socket first seen
    /// mid-life), replacing any earlier one: zeroed, then filled in place by
    /// `init`. Where it lives now, or `None` when there was no room.
    #[inline(always)]
    fn put(sk: u64, init: impl FnOnce(&mut SockState)) -> Option<*mut SockState> {
        table::put::<Self>(sk, init)
    }

    /// The socket is done with (closed normally, or destroyed): later hooks
    /// must not find it.
    #[inline(always)]
    fn forget(sk: u64) {
        table::forget::<Self>(sk)
    }
}

/// Classic tracepoints: fields read with `bpf_probe_read_kernel`.
pub struct Probed;

impl SockAccess for Probed {
    #[inline(always)]
    fn read<T: Copy>(base: u64, off: u32) -> Result<T, i64> {
        kread(base, off)
    }
}

/// A BTF program's socket argument as a `struct tcp_sock *` the verifier
/// knows (same address), or `None` for anything that is not a full TCP
/// socket (`bpf_skc_to_tcp_sock`: other protocols, time-wait and request
/// sockets). Every field offset in `Config` is from the start of the socket,
/// which is where `tcp_sock` starts too.
#[inline(always)]
pub fn tcp_sock(sk: u64) -> Option<u64> {
    // Some tracepoints pass NULL (a reset with no socket); the helper takes
    // only non-NULL pointers.
    if sk == 0 {
        return None;
    }
    // SAFETY: the helper checks the socket's kind itself.
    let tp =
        unsafe { aya_ebpf::helpers::generated::bpf_skc_to_tcp_sock(sk as *mut core::ffi::c_void) }
            as u64;
    (tp != 0).then_some(tp)
}

/// BTF tracepoints: socket fields read by plain loads.
///
/// Socket-local storage (`BPF_MAP_TYPE_SK_STORAGE`) was tried instead of
/// the map and measured slower under connection churn: creating a socket's
/// storage cost ≈ 1.3 µs against ≈ 0.5 µs for an LRU insert, and the kernel
/// frees it when the socket is freed, outside the program's own run time,
/// so that cost hid from `bpf_stats` and showed only as 20–25 % fewer
/// connections per second (docs/BENCHMARKS.md).
pub struct Direct;

impl SockAccess for Direct {
    /// A plain load: the socket is a BTF pointer (`struct tcp_sock *`, from
    /// [`tcp_sock`]) and the offset a constant the verifier reads from the
    /// frozen `.rodata`, so it checks the access against BTF and turns it
    /// into a fault-safe load (`PROBE_MEM`) instead of a helper call. A
    /// pointer read this way (`skc_net.net`) is a BTF pointer in its turn.
    #[inline(always)]
    fn read<T: Copy>(base: u64, off: u32) -> Result<T, i64> {
        if off == ABSENT || base == 0 {
            return Err(0);
        }
        // SAFETY: see above; the verifier rejects any access BTF does not
        // describe, and a faulting load yields zero.
        Ok(unsafe { core::ptr::read_volatile((base + off as u64) as *const T) })
    }

    /// `current->flags`, through the task's BTF pointer.
    #[inline(always)]
    fn current_task_flags() -> Option<u32> {
        // SAFETY: plain helper call; the task is a BTF pointer.
        let task = unsafe { aya_ebpf::helpers::generated::bpf_get_current_task_btf() } as u64;
        Self::read(task, conf!(task_flags)).ok()
    }

    /// The verifier allows no arithmetic on a BTF pointer but adding to it,
    /// and no partial copy of one; but one pointer minus another is a plain
    /// number to programs loaded with CAP_PERFMON (which the tracer needs
    /// anyway). So: the socket's distance from the `ANCHOR` map value, plus
    /// that value's own address as a number ([`anchor_at`]).
    #[inline(always)]
    fn addr(sk: u64) -> u64 {
        match ANCHOR.get_ptr_mut(0) {
            Some(cell) => sk.wrapping_sub(cell as u64).wrapping_add(anchor_at(cell)),
            None => 0,
        }
    }
}

/// Sockets that cannot have state (time-wait and request sockets): every
/// lookup misses; fields are read with `bpf_probe_read_kernel`.
pub struct NoState;

impl SockAccess for NoState {
    #[inline(always)]
    fn read<T: Copy>(base: u64, off: u32) -> Result<T, i64> {
        kread(base, off)
    }

    #[inline(always)]
    fn get(_sk: u64) -> Option<*mut SockState> {
        None
    }

    #[inline(always)]
    fn put(_sk: u64, _init: impl FnOnce(&mut SockState)) -> Option<*mut SockState> {
        None
    }

    #[inline(always)]
    fn forget(_sk: u64) {}
}

pub use tracer_common::F_IGNORED;

/// Looks a socket up, or starts tracking one first seen mid-life (it existed
/// before the tracer, or was evicted from the overflow map). Returns `None`
/// for sockets the filters exclude. `ports` (local, remote) is only called
/// for a socket new to the table.
#[inline(always)]
pub fn lookup_or_midlife<M: SockAccess>(
    sk: u64,
    ports: impl FnOnce() -> (u16, u16),
    clock: &mut Clock,
) -> Option<*mut SockState> {
    if let Some(st) = M::get(sk) {
        // SAFETY: map value pointer, valid for this program run.
        if unsafe { (*st).flags } & F_IGNORED != 0 {
            return None;
        }
        return Some(st);
    }
    let netns = netns_of::<M>(sk);
    let (lport, rport) = ports();
    if !passes(netns, lport, rport) {
        let _ = M::put(sk, born(0, netns, F_IGNORED));
        return None;
    }
    M::put(sk, born(clock.now(), netns, F_MIDLIFE))
}

/// True once a `KIND_CLOSE` was emitted for this socket.
#[inline(always)]
pub fn reported(st: *const SockState) -> bool {
    // SAFETY: map value pointer.
    unsafe { (*st).flags & F_REPORTED != 0 }
}
