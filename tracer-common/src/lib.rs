//! Wire types shared by the eBPF programs (`tracer-ebpf`) and userspace (`tracer`).
//!
//! Every type here is `#[repr(C)]`, built from fixed-width integers with explicit
//! padding, and checked for size at compile time: the kernel writes these bytes
//! and userspace reads them back with `read_unaligned`, so their layout is the
//! contract between the two halves. No `bool`, enums or `Option`: userspace
//! converts the raw integers with `TryFrom`.
#![no_std]

use core::mem::size_of;

/// Name of the ring buffer map.
pub const MAP_EVENTS: &str = "EVENTS";
/// Names of the per-socket table (hot path: a set-associative array): the
/// sockets of each set, and their states.
pub const MAP_SOCK_KEYS: &str = "SOCK_KEYS";
pub const MAP_SOCK_STATES: &str = "SOCK_STATES";
/// Name of the per-socket LRU map that takes the sockets the table has no
/// room for.
pub const MAP_SOCKS: &str = "SOCKS";
/// Name of the per-CPU counters map.
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Name of the port filter set: a bitmap of [`PORT_WORDS`] words
/// ([`port_bit`]).
pub const MAP_PORTS: &str = "PORTS";
/// Words of the `PORTS` bitmap: one bit per port.
pub const PORT_WORDS: u32 = 65_536 / 64;

/// Where port `p` sits in the `PORTS` bitmap: word index and bit mask.
#[inline(always)]
pub const fn port_bit(p: u16) -> (u32, u64) {
    ((p >> 6) as u32, 1 << (p & 63))
}
/// Name of the network-namespace filter set.
pub const MAP_NETNS: &str = "NETNS";
/// Name of the listener-owner map.
pub const MAP_LISTENERS: &str = "LISTENERS";
/// Name of the load-time configuration global.
pub const GLOBAL_CONFIG: &str = "CONFIG";

/// Default number of sockets the kernel tracks at once (LRU beyond that).
pub const DEFAULT_MAX_SOCKS: u32 = 131_072;
/// Slots per set of the socket table: a socket lives in one of the four slots
/// its address hashes to.
pub const SOCK_WAYS: u32 = 4;
/// Ring buffer size in bytes (power of two, multiple of the page size).
/// Steady loads need little (one record per abnormal close, drained every
/// 10 ms); the size is for bursts: a listener aborting its queue or a mass
/// close emits ≈ 4 records per connection faster than any reader drains
/// them. With the early wake-up (past half full), 8 MiB (≈ 36,000 records)
/// took 30,000 connections aborted at once without loss (4 MiB lost 18 % of
/// that burst; 16 MiB also none, but the reader's RSS peaked at 67 MiB
/// against 50 MiB).
pub const RING_BYTES: u32 = 8 << 20;

/// Length of a task's `comm`.
pub const COMM_LEN: usize = 16;
/// Bytes of a send the 5xx sniffer reads: `HTTP/1.1 502` is 12.
pub const SNIFF_LEN: usize = 16;

/// Offset value meaning "this field does not exist on this kernel".
pub const ABSENT: u32 = u32::MAX;

// TCP states, from include/net/tcp_states.h (stable since 2.6).
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_SYN_RECV: u8 = 3;
pub const TCP_FIN_WAIT1: u8 = 4;
pub const TCP_FIN_WAIT2: u8 = 5;
pub const TCP_TIME_WAIT: u8 = 6;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_CLOSE_WAIT: u8 = 8;
pub const TCP_LAST_ACK: u8 = 9;
pub const TCP_LISTEN: u8 = 10;
pub const TCP_CLOSING: u8 = 11;
pub const TCP_NEW_SYN_RECV: u8 = 12;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// `PF_EXITING` from include/linux/sched.h: the task is in `do_exit`.
pub const PF_EXITING: u32 = 0x0000_0004;

// Record kinds (first byte of every ring-buffer record).
/// A socket reached `TCP_CLOSE`: its whole life in one [`ConnRecord`].
pub const KIND_CLOSE: u8 = 1;
/// A thread touched (closed) an upstream socket that had failed: [`ConnRecord`].
pub const KIND_OBSERVE: u8 = 2;
/// An RST sent on a socket the tracer had already reported: [`ResetRecord`].
pub const KIND_RESET: u8 = 3;
/// `inet_sk_error_report`: [`ErrorRecord`].
pub const KIND_ERROR: u8 = 4;
/// A process wrote an HTTP/1.x 5xx status line to a TCP socket: [`HttpRecord`].
pub const KIND_HTTP5XX: u8 = 5;

// Socket flags (`SockState::flags`, `ConnRecord::flags`).
/// The socket was connected by a local process (SYN_SENT seen).
pub const F_ROLE_CLIENT: u32 = 1 << 0;
/// The socket was accepted (SYN_RECV seen).
pub const F_ROLE_SERVER: u32 = 1 << 1;
/// This side closed first (FIN_WAIT1 from ESTABLISHED, or an abortive close).
pub const F_LOCAL_CLOSE_FIRST: u32 = 1 << 2;
/// The peer closed first (CLOSE_WAIT from ESTABLISHED).
pub const F_PEER_FIN_FIRST: u32 = 1 << 3;
/// An RST arrived (`tcp_receive_reset`).
pub const F_RST_RECEIVED: u32 = 1 << 4;
/// An RST was sent (`tcp_send_reset`).
pub const F_RST_SENT: u32 = 1 << 5;
/// The local close ran in a task that was exiting (crash, kill, OOM).
pub const F_EXITING_CLOSE: u32 = 1 << 6;
/// A request was in flight (sent, no response byte yet) when the close began.
pub const F_INFLIGHT_AT_CLOSE: u32 = 1 << 7;
/// The connection never got past the handshake (SYN_SENT -> CLOSE).
pub const F_CONNECT_FAILED: u32 = 1 << 8;
/// Data the application had not read was pending when the local close began.
pub const F_UNREAD_AT_CLOSE: u32 = 1 << 9;
/// The record was produced in the context of the task that caused it
/// (`tid`/`tgid`/`comm` are the actor, not an interrupted bystander).
pub const F_TASK_CTX: u32 = 1 << 10;
/// Data arrived after this side had closed (the keep-alive race, server side).
pub const F_DATA_AFTER_CLOSE: u32 = 1 << 11;
/// The socket existed before the tracer started (birth unknown).
pub const F_MIDLIFE: u32 = 1 << 12;
/// A `KIND_CLOSE` for this socket was already emitted.
pub const F_REPORTED: u32 = 1 << 13;
/// Reserved (was: data unacknowledged at the local close; no verdict used it).
pub const F_UNACKED_AT_CLOSE: u32 = 1 << 14;

/// The socket failed the filters; kept in the map so that hot paths decide
/// with one lookup. Never emitted.
pub const F_IGNORED: u32 = 1 << 31;

/// Flags that make a close worth reporting without `--all`.
pub const F_ABNORMAL: u32 = F_RST_RECEIVED
    | F_RST_SENT
    | F_EXITING_CLOSE
    | F_INFLIGHT_AT_CLOSE
    | F_CONNECT_FAILED
    | F_UNREAD_AT_CLOSE
    | F_DATA_AFTER_CLOSE;

// Counter indexes in the per-CPU `COUNTERS` array.
pub const C_STATE_SEEN: u32 = 0;
pub const C_RESET_SEEN: u32 = 1;
pub const C_DESTROY_SEEN: u32 = 2;
pub const C_ERROR_SEEN: u32 = 3;
pub const C_SEND_SEEN: u32 = 4;
pub const C_EMITTED: u32 = 5;
pub const C_LOST_RINGBUF: u32 = 6;
pub const C_LOST_MAP_FULL: u32 = 7;
pub const C_FILTERED: u32 = 8;
pub const C_SNIFFED: u32 = 9;
pub const C_READ_FAILED: u32 = 10;
/// Sockets given a slot in `SOCK_TABLE`, and slots given back: the
/// difference is the number tracked there.
pub const C_TABLE_IN: u32 = 11;
pub const C_TABLE_OUT: u32 = 12;
/// Sockets that found their set full and went to the `SOCKS` LRU map.
pub const C_OVERFLOW_IN: u32 = 13;
pub const N_COUNTERS: u32 = 14;

/// Load-time configuration: tracepoint field offsets (from tracefs `format`
/// files) and kernel struct member offsets (from BTF), plus switches.
/// Offsets are bytes; [`ABSENT`] marks a field this kernel lacks.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    // Switches.
    /// 1: report every close, not only abnormal ones.
    pub report_all: u32,
    /// 1: only sockets with a port set in `PORTS`.
    pub filter_ports: u32,
    /// 1: only sockets whose netns inode is in `NETNS`.
    pub filter_netns: u32,
    /// The tracer's own tgid, ignored.
    pub self_tgid: u32,
    /// 1: sniff HTTP status lines in `tcp_sendmsg_locked`.
    pub sniff_http: u32,
    /// Kernel HZ, to turn jiffies into time.
    pub hz: u32,
    /// Sets in `SOCK_KEYS` minus one (the set count is a power of two).
    pub sock_set_mask: u32,
    /// log2 of the largest power of two not above `sizeof(struct
    /// tcp_sock)`: two sockets' addresses differ at least in the bits from
    /// here up, so `address >> sock_shift` numbers the objects of a slab.
    pub sock_shift: u32,

    // sock:inet_sock_set_state
    pub ss_skaddr: u32,
    pub ss_oldstate: u32,
    pub ss_newstate: u32,
    pub ss_sport: u32,
    pub ss_dport: u32,
    pub ss_family: u32,
    pub ss_protocol: u32,
    /// Size of `protocol`: 1 on kernels before 5.6's widening, 2 after.
    pub ss_protocol_size: u32,
    pub ss_saddr: u32,
    pub ss_daddr: u32,
    pub ss_saddr_v6: u32,
    pub ss_daddr_v6: u32,

    // tcp:tcp_send_reset
    pub sr_skaddr: u32,
    pub sr_state: u32,
    /// `reason` (kernel 6.10+), else ABSENT.
    pub sr_reason: u32,
    /// `saddr`/`daddr` as `struct sockaddr_in6`-sized buffers holding a
    /// sockaddr_in or sockaddr_in6, local end first (6.10+), else ABSENT.
    pub sr_saddr: u32,
    pub sr_daddr: u32,

    // tcp:tcp_receive_reset
    pub rr_skaddr: u32,

    // tcp:tcp_destroy_sock
    pub ds_skaddr: u32,

    // sock:inet_sk_error_report
    pub er_error: u32,
    pub er_sport: u32,
    pub er_dport: u32,
    pub er_family: u32,
    pub er_protocol: u32,
    pub er_protocol_size: u32,
    pub er_saddr: u32,
    pub er_daddr: u32,
    pub er_saddr_v6: u32,
    pub er_daddr_v6: u32,

    // struct sock / sock_common (BTF)
    pub sk_net: u32,
    pub net_inum: u32,
    pub sk_err: u32,
    pub sk_state: u32,
    pub sk_daddr: u32,
    pub sk_rcv_saddr: u32,
    pub sk_dport: u32,
    pub sk_num: u32,
    /// `struct inet_sock.inet_sport`: unlike `skc_num`, which
    /// `inet_put_port()` zeroes when the socket closes, it survives to the end.
    pub sk_inet_sport: u32,
    /// `struct sock.sk_protocol` (a u16 since 5.6; ABSENT before, when it
    /// was a bitfield): the raw tracepoint has no `protocol` argument.
    pub sk_protocol: u32,
    pub sk_family: u32,
    pub sk_v6_daddr: u32,
    pub sk_v6_rcv_saddr: u32,

    // struct tcp_sock / inet_connection_sock (BTF)
    pub tp_bytes_received: u32,
    pub tp_bytes_acked: u32,
    pub tp_lsndtime: u32,
    pub tp_rcv_nxt: u32,
    pub tp_copied_seq: u32,
    pub tp_write_seq: u32,
    pub tp_snd_una: u32,
    pub icsk_lrcvtime: u32,

    // struct task_struct (BTF)
    pub task_flags: u32,

    // struct msghdr / iov_iter (BTF)
    pub msg_iter: u32,
    pub iter_type: u32,
    pub iter_iov_offset: u32,
    /// Offset of the `ubuf` / `__iov` union inside `iov_iter`.
    pub iter_ptr: u32,
    pub iter_ubuf_value: u32,
    pub iter_iovec_value: u32,
}

impl Config {
    /// All offsets absent, all switches off.
    pub const fn empty() -> Self {
        Self {
            report_all: 0,
            filter_ports: 0,
            filter_netns: 0,
            self_tgid: 0,
            sniff_http: 0,
            hz: 250,
            sock_set_mask: 0,
            sock_shift: 11,
            ss_skaddr: ABSENT,
            ss_oldstate: ABSENT,
            ss_newstate: ABSENT,
            ss_sport: ABSENT,
            ss_dport: ABSENT,
            ss_family: ABSENT,
            ss_protocol: ABSENT,
            ss_protocol_size: 2,
            ss_saddr: ABSENT,
            ss_daddr: ABSENT,
            ss_saddr_v6: ABSENT,
            ss_daddr_v6: ABSENT,
            sr_skaddr: ABSENT,
            sr_state: ABSENT,
            sr_reason: ABSENT,
            sr_saddr: ABSENT,
            sr_daddr: ABSENT,
            rr_skaddr: ABSENT,
            ds_skaddr: ABSENT,
            er_error: ABSENT,
            er_sport: ABSENT,
            er_dport: ABSENT,
            er_family: ABSENT,
            er_protocol: ABSENT,
            er_protocol_size: 2,
            er_saddr: ABSENT,
            er_daddr: ABSENT,
            er_saddr_v6: ABSENT,
            er_daddr_v6: ABSENT,
            sk_net: ABSENT,
            net_inum: ABSENT,
            sk_err: ABSENT,
            sk_state: ABSENT,
            sk_daddr: ABSENT,
            sk_rcv_saddr: ABSENT,
            sk_dport: ABSENT,
            sk_num: ABSENT,
            sk_inet_sport: ABSENT,
            sk_protocol: ABSENT,
            sk_family: ABSENT,
            sk_v6_daddr: ABSENT,
            sk_v6_rcv_saddr: ABSENT,
            tp_bytes_received: ABSENT,
            tp_bytes_acked: ABSENT,
            tp_lsndtime: ABSENT,
            tp_rcv_nxt: ABSENT,
            tp_copied_seq: ABSENT,
            tp_write_seq: ABSENT,
            tp_snd_una: ABSENT,
            icsk_lrcvtime: ABSENT,
            task_flags: ABSENT,
            msg_iter: ABSENT,
            iter_type: ABSENT,
            iter_iov_offset: ABSENT,
            iter_ptr: ABSENT,
            iter_ubuf_value: ABSENT,
            iter_iovec_value: ABSENT,
        }
    }
}

const _: () = assert!(size_of::<Config>() == 65 * 4);

/// Per-socket state the kernel keeps for each socket (in `SOCK_STATES`, or
/// in the `SOCKS` LRU map when its set is full), keyed by the socket's
/// kernel address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockState {
    /// When the tracer first saw the socket (SYN_SENT/SYN_RECV, or mid-life).
    pub birth_ns: u64,
    /// When the close began (first state change out of ESTABLISHED, or RST).
    pub close_start_ns: u64,
    /// Last `tcp_sendmsg` on this socket.
    pub last_send_ns: u64,
    /// First send of the current request/response (the current "message").
    pub msg_start_ns: u64,
    /// When an RST was received or sent.
    pub rst_ns: u64,
    /// `tcp_sock.bytes_received` at the start of the current message: a later
    /// value shows the peer answered.
    pub rcvd_at_msg: u64,
    /// Idle time (ms) before the current message, from jiffies.
    pub idle_before_msg_ms: u32,
    /// Idle time (ms) before the close began, from jiffies.
    pub idle_at_close_ms: u32,
    /// Messages this side started (requests for a client, responses for a server).
    pub messages: u32,
    pub flags: u32,
    pub owner_tgid: u32,
    pub owner_tid: u32,
    /// Thread that began the local close (0: not a local close / unknown).
    pub closer_tid: u32,
    pub netns: u32,
    /// `sk_rst_reason` of the RST this side sent, +1 (0: none).
    pub rst_reason_plus1: u32,
    /// State when the close began, and the state it went to.
    pub close_from: u8,
    pub close_to: u8,
    pub _pad: [u8; 2],
    pub comm: [u8; COMM_LEN],
}

const _: () = assert!(size_of::<SockState>() == 6 * 8 + 9 * 4 + 4 + COMM_LEN);

/// One set of `SOCK_KEYS`: the kernel addresses of the sockets in its
/// slots (0: free); slot `i` of set `n` has its state at `i * sets + n` in
/// `SOCK_STATES` (way-major: the first slots of neighbouring sets, where
/// nearly every socket lives, are neighbours too). Kept apart from the
/// states so that a lookup reads one cache line to find a socket, or to
/// find it absent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockSet {
    pub keys: [u64; SOCK_WAYS as usize],
}

const _: () = assert!(size_of::<SockSet>() == 32);

/// Address block shared by all records. Addresses are in network byte order
/// as the kernel stores them; IPv4 in the first 4 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Host byte order.
    pub sport: u16,
    /// Host byte order.
    pub dport: u16,
    pub family: u16,
    pub _pad: u16,
}

const _: () = assert!(size_of::<Tuple>() == 40);

impl Tuple {
    /// No addresses yet (filled field by field in the kernel).
    pub const EMPTY: Tuple = Tuple {
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        family: 0,
        _pad: 0,
    };
}

/// Common header of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub _pad: [u8; 3],
    /// Current task when the record was made.
    pub tid: u32,
    pub tgid: u32,
    pub cpu: u32,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// Kernel address of the socket (identity while it lives).
    pub skaddr: u64,
}

const _: () = assert!(size_of::<Header>() == 32);

/// `KIND_CLOSE` / `KIND_OBSERVE`: a socket's whole life at its end (or at the
/// moment a thread touched it after it failed).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnRecord {
    pub hdr: Header,
    pub tuple: Tuple,
    pub state: SockState,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// `sk_err` at close (ECONNREFUSED, ETIMEDOUT, ...), 0 if none.
    pub sk_err: i32,
    /// Current comm (the actor) when `F_TASK_CTX` is set.
    pub cur_comm: [u8; COMM_LEN],
    pub _pad: u32,
}

const _: () =
    assert!(size_of::<ConnRecord>() == 32 + 40 + size_of::<SockState>() + 16 + 4 + 16 + 4);

/// `KIND_RESET`: an RST sent after the socket was reported (e.g. data arriving
/// on a socket already closed: `TCP_ABORT_ON_DATA`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetRecord {
    pub hdr: Header,
    pub tuple: Tuple,
    /// `sk_rst_reason` + 1, 0 when the kernel does not report one.
    pub reason_plus1: u32,
    pub state: u32,
}

const _: () = assert!(size_of::<ResetRecord>() == 32 + 40 + 8);

/// `KIND_ERROR`: `inet_sk_error_report`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorRecord {
    pub hdr: Header,
    pub tuple: Tuple,
    pub error: i32,
    pub _pad: u32,
}

const _: () = assert!(size_of::<ErrorRecord>() == 32 + 40 + 8);

/// `KIND_HTTP5XX`: a task wrote an HTTP/1.x 5xx status line to a TCP socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpRecord {
    pub hdr: Header,
    /// The socket written to: src = local (proxy), dst = client.
    pub tuple: Tuple,
    pub status: u16,
    /// TCP state of that socket when the status line was written
    /// (CLOSE_WAIT: the client had already sent FIN).
    pub sk_state: u8,
    pub _pad: u8,
    pub netns: u32,
    pub sock_flags: u32,
    pub _pad2: u32,
    pub comm: [u8; COMM_LEN],
}

const _: () = assert!(size_of::<HttpRecord>() == 32 + 40 + 16 + COMM_LEN);

/// Entries of the `SNIFF_GATE` array, indexed by tgid modulo its size.
pub const SNIFF_GATE_ENTRIES: u32 = 16_384;
/// After an upstream failure of a process, its responses are checked for a
/// 5xx status line for this long: the proxy's 5xx follows the failure
/// within its retry logic.
pub const SNIFF_AFTER_FAILURE_NS: u64 = 10_000_000_000;
/// After a process wrote a 5xx (with or without a failure: no live
/// upstreams), for this long.
pub const SNIFF_AFTER_5XX_NS: u64 = 60_000_000_000;
/// Otherwise one response per process in this interval: a 5xx written with
/// no upstream failure at all (servers marked `down`, no endpoints) opens
/// the window at the first one sampled.
pub const SNIFF_SAMPLE_NS: u64 = 20_000_000;

/// When a process's responses are read (`SNIFF_GATE`). Two processes that
/// share an entry take it over from each other; a takeover always reads the
/// response, so sharing costs reads, never misses a 5xx.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SniffGate {
    pub tgid: u32,
    pub _pad: u32,
    /// Every response until then.
    pub open_until_ns: u64,
    /// The last sampled response.
    pub last_sample_ns: u64,
}

const _: () = assert!(size_of::<SniffGate>() == 24);

/// Owner of a listening socket, keyed by [`ListenKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenOwner {
    pub tgid: u32,
    pub tid: u32,
    pub comm: [u8; COMM_LEN],
}

const _: () = assert!(size_of::<ListenOwner>() == 24);

/// Key of the listener map: network namespace and local port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenKey {
    pub netns: u32,
    pub port: u16,
    pub _pad: u16,
}

const _: () = assert!(size_of::<ListenKey>() == 8);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all types are repr(C), made of plain integers, with explicit
    // padding fields and no implicit padding (sizes asserted above).
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for SockState {}
    unsafe impl aya::Pod for ListenOwner {}
    unsafe impl aya::Pod for ListenKey {}
}
