//! Classifying one socket's end from the kernel's facts about it.

use tracer_common::*;

use super::model::{Cause, ClosedBy, How, Role, Side};
use crate::events::Conn;

const ECONNREFUSED: i32 = 111;
const ETIMEDOUT: i32 = 110;

/// A socket's reported life, merged with what arrived for it afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub conn: Conn,
    /// A `KIND_CLOSE` was seen (not only an observation snapshot).
    pub closed: bool,
    /// `sk_rst_reason` of an RST this side sent.
    pub rst_reason: Option<u32>,
    /// The error the application was told.
    pub error: Option<i32>,
}

impl Facts {
    pub fn new(conn: Conn) -> Self {
        let rst_reason = conn.state.rst_reason_plus1.checked_sub(1);
        let error = (conn.sk_err != 0).then_some(conn.sk_err);
        let closed = !conn.observe;
        Self {
            conn,
            closed,
            rst_reason,
            error,
        }
    }

    pub fn flags(&self) -> u32 {
        self.conn.state.flags
    }

    pub fn has(&self, f: u32) -> bool {
        self.flags() & f != 0
    }

    pub fn role(&self) -> Option<Role> {
        if self.has(F_ROLE_CLIENT) {
            Some(Role::Client)
        } else if self.has(F_ROLE_SERVER) {
            Some(Role::Server)
        } else {
            None
        }
    }

    /// The backend closed first while idle and then got data (server side of
    /// the keep-alive race): a FIN close, then the kernel's quirk of firing
    /// `tcp_receive_reset` before it answers the data with an RST, confirmed
    /// by that RST's reason `TCP_ABORT_ON_DATA` where the kernel names it
    /// (net/ipv4/tcp_input.c, tcp_rcv_state_process).
    pub fn data_after_close(&self, names: &RstNames) -> bool {
        self.has(F_DATA_AFTER_CLOSE)
            && self.conn.state.close_to == TCP_FIN_WAIT1
            && (names.0.is_empty() || self.reason_is(names, "TCP_ABORT_ON_DATA"))
    }

    pub fn reason_is(&self, names: &RstNames, want: &str) -> bool {
        self.rst_reason
            .and_then(|r| names.name(r))
            .is_some_and(|n| n == want)
    }

    pub fn refused(&self) -> bool {
        self.has(F_CONNECT_FAILED) && (self.has(F_RST_RECEIVED) || self.error == Some(ECONNREFUSED))
    }

    /// Who ended the connection and how, from this socket's side.
    pub fn ending(&self, names: &RstNames) -> (Side, How) {
        if self.has(F_CONNECT_FAILED) {
            if self.refused() {
                return (Side::Peer, How::Refused);
            }
            return (Side::Local, How::Timeout);
        }
        if self.error == Some(ETIMEDOUT) && !self.has(F_RST_RECEIVED) {
            return (Side::Local, How::Timeout);
        }
        if self.data_after_close(names) {
            return (Side::Local, How::Rst);
        }
        if self.has(F_LOCAL_CLOSE_FIRST) {
            let how = if self.has(F_RST_SENT) {
                How::Rst
            } else {
                How::Fin
            };
            return (Side::Local, how);
        }
        if self.has(F_PEER_FIN_FIRST) {
            return (Side::Peer, How::Fin);
        }
        if self.has(F_RST_RECEIVED) {
            return (Side::Peer, How::Rst);
        }
        if self.has(F_RST_SENT) {
            return (Side::Local, How::Rst);
        }
        (Side::Local, How::Fin)
    }

    /// Worth a `conn_end` without `--all`: RST either way, refused, timed
    /// out, unread data, the keep-alive race, a request left unanswered, a
    /// dying process.
    pub fn abnormal(&self) -> bool {
        self.flags() & F_ABNORMAL != 0 || self.error.is_some()
    }

    /// The `cause` of a `conn_end`, where one of DESIGN.md's applies.
    pub fn conn_cause(&self, names: &RstNames) -> Option<Cause> {
        if self.has(F_ROLE_SERVER) || !self.has(F_ROLE_CLIENT) {
            if self.data_after_close(names) {
                return Some(Cause::BackendClosedIdleKeepalive);
            }
            if self.has(F_EXITING_CLOSE) {
                return Some(Cause::BackendProcessExited);
            }
            return None;
        }
        let (cause, _, _) = upstream_verdict(self, None, names);
        (cause != Cause::Unknown).then_some(cause)
    }
}

/// Names of the kernel's `enum sk_rst_reason`, read from BTF (they differ
/// across kernels).
#[derive(Debug, Clone, Default)]
pub struct RstNames(pub std::collections::HashMap<u32, String>);

impl RstNames {
    pub fn name(&self, v: u32) -> Option<&str> {
        self.0.get(&v).map(String::as_str)
    }
}

/// A reset arriving within this long after a request on a reused idle
/// connection is the keep-alive race, not a backend fault mid-request.
const RACE_WINDOW_NS: u64 = 20_000_000;

/// The verdict for a proxy's failed upstream connection, optionally helped
/// by the backend's own socket when the backend runs on this node.
pub fn upstream_verdict(
    up: &Facts,
    backend: Option<&Facts>,
    names: &RstNames,
) -> (Cause, ClosedBy, How) {
    let s = &up.conn.state;
    if up.has(F_CONNECT_FAILED) {
        if up.refused() {
            return (Cause::ConnectionRefused, ClosedBy::Backend, How::Refused);
        }
        return (Cause::ConnectTimeout, ClosedBy::None, How::Timeout);
    }
    if up.has(F_LOCAL_CLOSE_FIRST) {
        if up.has(F_INFLIGHT_AT_CLOSE) {
            return (Cause::ProxyTimeout, ClosedBy::Proxy, How::Timeout);
        }
        let how = if up.has(F_RST_SENT) {
            How::Rst
        } else {
            How::Fin
        };
        return (Cause::Unknown, ClosedBy::Proxy, how);
    }
    let how = if up.has(F_RST_RECEIVED) {
        How::Rst
    } else {
        How::Fin
    };
    if let Some(b) = backend {
        if b.has(F_EXITING_CLOSE) {
            return (Cause::BackendProcessExited, ClosedBy::Backend, how);
        }
        if b.data_after_close(names)
            || (b.has(F_LOCAL_CLOSE_FIRST) && b.conn.state.close_start_ns < s.msg_start_ns)
        {
            return (Cause::BackendClosedIdleKeepalive, ClosedBy::Backend, how);
        }
    }
    // The peer's FIN reached us before this request was even sent, or its
    // RST answered a request on a reused, idle connection at once.
    let fin_before_request =
        up.has(F_PEER_FIN_FIRST) && s.close_start_ns != 0 && s.close_start_ns <= s.msg_start_ns;
    let peer_end_ns = if s.rst_ns != 0 {
        s.rst_ns
    } else {
        s.close_start_ns
    };
    let quick = peer_end_ns >= s.msg_start_ns && peer_end_ns - s.msg_start_ns <= RACE_WINDOW_NS;
    let reused_idle = s.messages >= 2 && s.idle_before_msg_ms > 0;
    if fin_before_request || (reused_idle && quick && backend.is_none()) {
        return (Cause::BackendClosedIdleKeepalive, ClosedBy::Backend, how);
    }
    if up.has(F_INFLIGHT_AT_CLOSE) {
        if up.has(F_RST_RECEIVED) {
            return (Cause::BackendReset, ClosedBy::Backend, How::Rst);
        }
        return (
            Cause::BackendClosedBeforeResponse,
            ClosedBy::Backend,
            How::Fin,
        );
    }
    (Cause::Unknown, ClosedBy::Backend, how)
}

/// `ECONNRESET`-style name for an errno, or the number.
pub fn errno_name(e: i32) -> String {
    let e = e.abs();
    let name = match e {
        1 => "EPERM",
        11 => "EAGAIN",
        32 => "EPIPE",
        103 => "ECONNABORTED",
        104 => "ECONNRESET",
        110 => "ETIMEDOUT",
        111 => "ECONNREFUSED",
        112 => "EHOSTDOWN",
        113 => "EHOSTUNREACH",
        101 => "ENETUNREACH",
        100 => "ENETDOWN",
        _ => return format!("errno {e}"),
    };
    name.to_string()
}
