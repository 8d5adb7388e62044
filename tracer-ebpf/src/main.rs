//! Kernel half of the tracer: tracepoint programs that keep per-socket state
//! in a bounded LRU map and emit one compact record per socket that ends
//! abnormally (or per socket, with `--all`) to a single ring buffer.
//!
//! Field offsets are never hard-coded: userspace parses tracefs `format`
//! files and BTF at start-up and hands them over in [`CONFIG`].
#![no_std]
#![no_main]

mod lifecycle;
mod reset;
mod send;
mod sock;
mod state;

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{
    Config, ListenKey, ListenOwner, SockState, DEFAULT_MAX_SOCKS, N_COUNTERS, RING_BYTES,
};

/// Load-time configuration, overridden by the loader (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static CONFIG: Config = Config::empty();

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Per-socket state, keyed by the socket's address.
#[map]
static SOCKS: LruHashMap<u64, SockState> = LruHashMap::with_max_entries(DEFAULT_MAX_SOCKS, 0);

#[map]
static LISTENERS: LruHashMap<ListenKey, ListenOwner> = LruHashMap::with_max_entries(4096, 0);

#[map]
static PORTS: HashMap<u16, u8> = HashMap::with_max_entries(64, 0);

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
