//! Builders for synthetic kernel event streams.

use std::net::SocketAddr;

use tracer_common::*;

use crate::events::{Conn, Ends, Event, Http5xx, Meta, Reset, SockError};

pub const MS: u64 = 1_000_000;

pub fn ends(local: &str, remote: &str) -> Ends {
    Ends {
        local: local.parse::<SocketAddr>().unwrap(),
        remote: remote.parse::<SocketAddr>().unwrap(),
    }
}

/// A socket's state, built up step by step.
#[derive(Clone)]
pub struct Sock {
    pub sk: u64,
    pub ends: Ends,
    pub st: SockState,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub sk_err: i32,
}

impl Sock {
    pub fn new(
        sk: u64,
        local: &str,
        remote: &str,
        role: u32,
        owner: u32,
        comm: &str,
        birth_ns: u64,
    ) -> Self {
        let mut c = [0u8; COMM_LEN];
        c[..comm.len()].copy_from_slice(comm.as_bytes());
        Self {
            sk,
            ends: ends(local, remote),
            st: SockState {
                birth_ns,
                close_start_ns: 0,
                last_send_ns: 0,
                msg_start_ns: 0,
                rst_ns: 0,
                rcvd_at_msg: 0,
                idle_before_msg_ms: 0,
                idle_at_close_ms: 0,
                messages: 0,
                flags: role,
                owner_tgid: owner,
                owner_tid: owner,
                closer_tid: 0,
                netns: 4026532000,
                rst_reason_plus1: 0,
                close_from: 0,
                close_to: 0,
                _pad: [0; 2],
                comm: c,
            },
            bytes_sent: 100,
            bytes_received: 200,
            sk_err: 0,
        }
    }

    pub fn flags(mut self, f: u32) -> Self {
        self.st.flags |= f;
        self
    }

    pub fn request(mut self, n: u32, at_ns: u64, idle_before_ms: u32) -> Self {
        self.st.messages = n;
        self.st.msg_start_ns = at_ns;
        self.st.idle_before_msg_ms = idle_before_ms;
        self
    }

    pub fn close_start(mut self, at_ns: u64, from: u8, to: u8, idle_ms: u32) -> Self {
        self.st.close_start_ns = at_ns;
        self.st.close_from = from;
        self.st.close_to = to;
        self.st.idle_at_close_ms = idle_ms;
        self
    }

    pub fn rst_at(mut self, at_ns: u64) -> Self {
        self.st.rst_ns = at_ns;
        self
    }

    pub fn err(mut self, e: i32) -> Self {
        self.sk_err = e;
        self
    }

    fn conn(&self, ts_ns: u64, tid: u32, tgid: u32, observe: bool) -> Event {
        let mut state = self.st;
        if observe {
            state.flags |= F_TASK_CTX;
        }
        Event::Conn(Conn {
            meta: Meta {
                ts_ns,
                tid,
                tgid,
                sk: self.sk,
            },
            observe,
            ends: self.ends,
            state,
            bytes_sent: self.bytes_sent,
            bytes_received: self.bytes_received,
            sk_err: self.sk_err,
            actor_comm: None,
        })
    }

    /// `KIND_CLOSE` at `ts_ns` (softirq: no actor).
    pub fn close(&self, ts_ns: u64) -> Event {
        self.conn(ts_ns, 0, 0, false)
    }

    /// `KIND_OBSERVE`: thread `tid` of `tgid` touched the failed socket.
    pub fn observe(&self, ts_ns: u64, tid: u32, tgid: u32) -> Event {
        self.conn(ts_ns, tid, tgid, true)
    }

    pub fn late_reset(&self, ts_ns: u64, reason: u32) -> Event {
        Event::Reset(Reset {
            meta: Meta {
                ts_ns,
                tid: 0,
                tgid: 0,
                sk: self.sk,
            },
            ends: self.ends,
            reason: Some(reason),
            state: 7,
        })
    }

    pub fn error(&self, ts_ns: u64, error: i32) -> Event {
        Event::Error(SockError {
            meta: Meta {
                ts_ns,
                tid: 0,
                tgid: 0,
                sk: 0,
            },
            ends: self.ends,
            error,
        })
    }
}

/// A proxy thread writing a 5xx to its client.
#[expect(
    clippy::too_many_arguments,
    reason = "a test builder mirroring the record's fields"
)]
pub fn http(
    ts_ns: u64,
    tid: u32,
    tgid: u32,
    comm: &str,
    local: &str,
    client: &str,
    status: u16,
    sk_state: u8,
) -> Event {
    Event::Http5xx(Http5xx {
        meta: Meta {
            ts_ns,
            tid,
            tgid,
            sk: 0xdead,
        },
        ends: ends(local, client),
        status,
        sk_state,
        netns: 4026532000,
        sock_flags: F_ROLE_SERVER,
        comm: comm.to_string(),
    })
}
