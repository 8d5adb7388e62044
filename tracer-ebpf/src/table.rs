//! Per-socket state: a set-associative table in an array map, with the
//! `SOCKS` LRU hash map for the sockets whose set is full.
//!
//! Under connection churn every socket is born, looked up a few times and
//! forgotten within milliseconds, so the map's insert and delete are on the
//! hot path. In the LRU hash map an insert pops a free element, updates the
//! LRU lists and takes a bucket lock, and a delete does the reverse; in an
//! array map a lookup is inlined by the verifier into an address
//! computation, and claiming a free slot is one compare-and-swap.
//! docs/BENCHMARKS.md has the figures.
//!
//! A socket lives in one of the [`SOCK_WAYS`] slots of the set its address
//! hashes to: `SOCK_KEYS` says which sockets a set holds (one cache line),
//! `SOCK_STATES` has their states. A full set sends the socket to the LRU
//! map, which keeps the old behaviour at capacity: the least recently used
//! socket is evicted there, nothing is refused. The LRU map is consulted
//! only once it has been used ([`overflowed`]), so until then a miss reads
//! one cache line.

use core::intrinsics::{atomic_cxchg, AtomicOrdering};

use tracer_common::{
    SockSet, SockState, C_LOST_MAP_FULL, C_OVERFLOW_IN, C_TABLE_IN, C_TABLE_OUT, SOCK_WAYS,
};

use crate::{
    conf,
    sock::{count, zero_in_place, SockAccess},
    OVERFLOWED, SOCKS, SOCK_KEYS, SOCK_STATES,
};

/// log2 of the sockets numbered together in one block of sets.
const BLOCK_BITS: u32 = 4;

/// The set of the socket at address `addr` (see [`SockAccess::addr`]).
///
/// Sockets are slab objects: `addr >> sock_shift` numbers them, and one slab
/// of the TCP cache (32 KiB, 13 sockets) is one block of 16 numbers. The
/// objects of a block get neighbouring sets, and (way-major, [`state_at`])
/// neighbouring states, so the few slabs a busy node cycles through touch a
/// few pages of the table. Hashing every address to a random set made each
/// lookup walk its own page of a 14 MiB table: the first load from the set
/// and from the state were a third of the state hook's samples in `perf`
/// and more than half of the send hook's (TLB and cache misses).
/// Blocks are spread over the table by Fibonacci hashing.
#[inline(always)]
fn set_of(addr: u64) -> u32 {
    let obj = addr >> conf!(sock_shift);
    let block = ((obj >> BLOCK_BITS).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32;
    ((block << BLOCK_BITS) | (obj as u32 & ((1 << BLOCK_BITS) - 1))) & conf!(sock_set_mask)
}

/// Whether a socket was ever sent to the LRU map (never reset: stale
/// entries are possible until they are forgotten or evicted).
#[inline(always)]
fn overflowed() -> bool {
    OVERFLOWED
        .get(0)
        .is_some_and(|v| unsafe { core::ptr::read_volatile(v) } != 0)
}

/// The socket's set and its slot there, if it has one.
#[inline(always)]
fn slot_of<M: SockAccess>(sk: u64) -> Option<(*mut SockSet, u32, u32)> {
    let set = set_of(M::addr(sk));
    let keys = SOCK_KEYS.get_ptr_mut(set)?;
    for way in 0..SOCK_WAYS {
        // SAFETY: array map value, valid for this program run.
        if unsafe { (*keys).keys[way as usize] } == sk {
            return Some((keys, set, way));
        }
    }
    None
}

/// The state of slot `way` of set `set`: way-major, so the first slots of
/// neighbouring sets, where nearly every socket lives, are neighbours too.
#[inline(always)]
fn state_at(set: u32, way: u32) -> Option<*mut SockState> {
    SOCK_STATES.get_ptr_mut(way * (conf!(sock_set_mask) + 1) + set)
}

/// The socket's state, if it has one.
#[inline(always)]
pub fn get<M: SockAccess>(sk: u64) -> Option<*mut SockState> {
    if let Some((_, set, way)) = slot_of::<M>(sk) {
        return state_at(set, way);
    }
    if overflowed() {
        return SOCKS.get_ptr_mut(sk);
    }
    None
}

/// Gives the socket a new state, replacing any earlier one: zeroed, then
/// filled in place by `init`. Returns where it lives now (`None`: no room
/// anywhere, counted).
#[inline(always)]
pub fn put<M: SockAccess>(sk: u64, init: impl FnOnce(&mut SockState)) -> Option<*mut SockState> {
    let set = set_of(M::addr(sk));
    let keys = SOCK_KEYS.get_ptr_mut(set)?;
    let mut free = SOCK_WAYS;
    for way in 0..SOCK_WAYS {
        // SAFETY: array map value, valid for this program run.
        let owner = unsafe { (*keys).keys[way as usize] };
        if owner == sk {
            return fill(state_at(set, way)?, init);
        }
        if owner == 0 && free == SOCK_WAYS {
            free = way;
        }
    }
    if free < SOCK_WAYS {
        // Another CPU may be claiming the same free slot for another socket
        // of this set: only one compare-and-swap wins.
        // SAFETY: array map value; `free` is a valid way, keys are 8-aligned.
        if unsafe { claim(&raw mut (*keys).keys[free as usize], sk) } {
            count(C_TABLE_IN);
            return fill(state_at(set, free)?, init);
        }
    }
    // SAFETY: a SockState is plain integers and byte arrays; the stack
    // copy is only for this rare path.
    let mut st = core::mem::MaybeUninit::<SockState>::uninit();
    let st = unsafe {
        zero_in_place(st.as_mut_ptr());
        init(&mut *st.as_mut_ptr());
        st.assume_init_ref()
    };
    if SOCKS.insert(sk, st, 0).is_err() {
        count(C_LOST_MAP_FULL);
        return None;
    }
    count(C_OVERFLOW_IN);
    if let Some(flag) = OVERFLOWED.get_ptr_mut(0) {
        // SAFETY: array map value; every writer stores the same 1.
        unsafe { core::ptr::write_volatile(flag, 1) };
    }
    SOCKS.get_ptr_mut(sk)
}

/// Zeroes the state at `p` and lets `init` fill it.
#[inline(always)]
fn fill(p: *mut SockState, init: impl FnOnce(&mut SockState)) -> Option<*mut SockState> {
    // SAFETY: array map value of a slot this socket owns now.
    unsafe {
        zero_in_place(p);
        init(&mut *p);
    }
    Some(p)
}

/// Sets `*owner` from 0 to `sk` in one compare-and-swap (BPF_CMPXCHG, kernel
/// 5.12+); false if it was not 0. Through the intrinsic: the BPF target
/// declares no compare-and-swap (`atomic-cas: false`), so `AtomicU64` has
/// none, but the kernel and LLVM's v3 instruction set do.
///
/// # Safety
/// `owner` points into a map value, 8-byte aligned.
#[inline(always)]
unsafe fn claim(owner: *mut u64, sk: u64) -> bool {
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(owner, 0, sk)
    }
    .1
}

/// The socket is done with: later hooks must not find it.
#[inline(always)]
pub fn forget<M: SockAccess>(sk: u64) {
    if let Some((keys, _, way)) = slot_of::<M>(sk) {
        // SAFETY: array map value; a free slot is one whose key is 0.
        unsafe { core::ptr::write_volatile(&raw mut (*keys).keys[way as usize], 0) };
        count(C_TABLE_OUT);
    }
    // The socket may also have an older entry there (its set was full when
    // it was put before): one lookup more, only once the map was used.
    if overflowed() {
        let _ = SOCKS.remove(sk);
    }
}
