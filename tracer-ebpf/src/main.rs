//! Kernel half of the tracer: tracepoint programs that keep per-socket state
//! in a bounded table and emit one compact record per socket that ends
//! abnormally (or per socket, with `--all`) to a single ring buffer.
//!
//! Field offsets are never hard-coded: userspace parses tracefs `format`
//! files and BTF at start-up and hands them over in [`CONFIG`].
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod lifecycle;
mod reset;
mod send;
mod sock;
mod state;
mod table;

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{
    Config, ListenKey, ListenOwner, SniffGate, SockSet, SockState, DEFAULT_MAX_SOCKS, N_COUNTERS,
    PORT_WORDS, RING_BYTES, SNIFF_GATE_ENTRIES, SOCK_WAYS,
};

/// Load-time configuration, overridden by the loader (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static CONFIG: Config = Config::empty();

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Per-socket state, in the slots of the set the socket's address hashes
/// to (`table.rs`): which sockets each set holds, and their states. Sized
/// by the loader (`--max-conns`).
#[map]
static SOCK_KEYS: Array<SockSet> = Array::with_max_entries(DEFAULT_MAX_SOCKS / SOCK_WAYS, 0);
#[map]
static SOCK_STATES: Array<SockState> = Array::with_max_entries(DEFAULT_MAX_SOCKS, 0);

/// Per-socket state of the sockets whose set in `SOCK_TABLE` was full,
/// keyed by the socket's address. Sized by the loader.
#[map]
static SOCKS: LruHashMap<u64, SockState> = LruHashMap::with_max_entries(DEFAULT_MAX_SOCKS / 4, 0);

/// A fixed kernel address socket addresses are measured from (`sock.rs`,
/// `SockAccess::addr`).
#[map]
static ANCHOR: Array<u64> = Array::with_max_entries(1, 0);

/// Set to 1 once `SOCKS` has been used (`table.rs`).
#[map]
static OVERFLOWED: Array<u32> = Array::with_max_entries(1, 0);

/// Per process (by tgid modulo the size): when its responses are read for a
/// 5xx status line (`send.rs`).
#[map]
static SNIFF_GATE: Array<SniffGate> = Array::with_max_entries(SNIFF_GATE_ENTRIES, 0);

#[map]
static LISTENERS: LruHashMap<ListenKey, ListenOwner> = LruHashMap::with_max_entries(4096, 0);

/// `--port` filter: one bit per port (`tracer_common::port_bit`), so the
/// check is two array loads.
#[map]
static PORTS: Array<u64> = Array::with_max_entries(PORT_WORDS, 0);

#[map]
static NETNS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(N_COUNTERS, 0);

/// Reads one field of [`CONFIG`] without letting the compiler fold it to the
/// default (the loader rewrites `.rodata` before the program is verified).
macro_rules! conf {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&$crate::CONFIG.$field) }
    };
}
pub(crate) use conf;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
