//! What the engine reports: one `conn_end` or `bad_gateway` per item, with
//! monotonic kernel timestamps (the output module turns them into RFC 3339).

use serde::Serialize;

use crate::pods::PodName;

/// `cause` values (DESIGN.md, "Output contract").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    BackendClosedIdleKeepalive,
    BackendClosedBeforeResponse,
    BackendReset,
    BackendProcessExited,
    ConnectionRefused,
    ConnectTimeout,
    ProxyTimeout,
    ClientAborted,
    NoUpstreamConnection,
    Unknown,
}

/// How the connection ended (`how`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum How {
    Fin,
    Rst,
    Refused,
    Timeout,
    None,
}

/// Which side of a connection ended it, seen from the traced socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Local,
    Peer,
}

/// Who ended the proxy-to-backend connection, for a `bad_gateway`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClosedBy {
    Backend,
    Proxy,
    Client,
    None,
}

/// Which end of the socket is ours: `client` connected, `server` accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Client,
    Server,
}

/// One traced connection that ended (`event: "conn_end"`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConnEnd {
    #[serde(skip)]
    pub ts_ns: u64,
    pub src: String,
    pub dst: String,
    pub role: Option<Role>,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub netns: u32,
    pub pod: Option<PodName>,
    pub closed_by: Side,
    pub how: How,
    pub rst_reason: Option<String>,
    pub error: Option<String>,
    pub idle_ms: Option<u64>,
    pub age_ms: Option<u64>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub requests: u32,
    pub cause: Option<Cause>,
    pub explanation: Option<String>,
}

/// The proxy that wrote a 5xx.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Proxy {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub pod: Option<PodName>,
}

/// The proxy's connection to the backend that failed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Upstream {
    pub src: String,
    pub dst: String,
    pub pod: Option<PodName>,
    /// Bytes the proxy sent and received on this connection in all.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    #[serde(skip)]
    pub backend_netns: Option<u32>,
}

/// One step of what happened, relative to the 5xx (`t_ms` < 0 is before).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub t_ms: f64,
    pub side: &'static str,
    pub what: String,
}

/// A proxy wrote a 5xx to a client (`event: "bad_gateway"`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BadGateway {
    #[serde(skip)]
    pub ts_ns: u64,
    #[serde(skip)]
    pub netns: u32,
    pub status: u16,
    pub proxy: Proxy,
    pub client: String,
    pub upstream: Option<Upstream>,
    pub cause: Cause,
    pub closed_by: ClosedBy,
    pub how: How,
    pub rst_reason: Option<String>,
    pub error: Option<String>,
    pub idle_ms: Option<u64>,
    pub requests_on_conn: Option<u32>,
    pub explanation: String,
    pub timeline: Vec<Step>,
}

/// Everything the engine reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    ConnEnd(Box<ConnEnd>),
    BadGateway(Box<BadGateway>),
}
