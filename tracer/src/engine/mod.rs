//! The verdict engine: a stream of decoded kernel events in, `conn_end` and
//! `bad_gateway` reports out. Pure: no kernel, no clock of its own (callers
//! pass the monotonic time), so it is tested and replayed on synthetic
//! streams.
//!
//! Records about one socket arrive in pieces (an RST's reason can follow the
//! close; the error report follows it too), so every item waits a short
//! grace period before it is final.

pub mod classify;
mod explain;
pub mod model;

use std::collections::{HashMap, VecDeque};

use tracer_common::{F_ROLE_CLIENT, F_RST_SENT, F_TASK_CTX, TCP_CLOSE_WAIT};

use self::{
    classify::{errno_name, upstream_verdict, Facts, RstNames},
    model::{BadGateway, Cause, ClosedBy, ConnEnd, How, Proxy, Report, Upstream},
};
use crate::events::{Event, Http5xx, Reset, SockError};

/// Processes whose 5xx are gateway errors even when no upstream failure was
/// seen (they answered without trying a backend).
pub const KNOWN_PROXIES: &[&str] = &[
    "nginx",
    "haproxy",
    "envoy",
    "traefik",
    "caddy",
    "httpd",
    "apache2",
    "varnishd",
    "squid",
    "openresty",
    "pingora",
    "kong",
    "contour",
    "ingress",
];

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Report every close, not only abnormal ones.
    pub report_all: bool,
    /// How long an item waits for late pieces before it is final.
    pub grace_ns: u64,
    /// How far back a 5xx looks for the upstream failure it answers.
    pub join_window_ns: u64,
    /// Extra process names to treat as proxies.
    pub proxy_comms: Vec<String>,
    /// Only report sockets owned by these pids (empty: all).
    pub pids: Vec<u32>,
    /// Only report sockets owned by these comms (empty: all).
    pub comms: Vec<String>,
    /// `sk_rst_reason` names of this kernel.
    pub rst_names: RstNames,
    /// Host-network pods: sockets in this namespace (the host's) are only
    /// reported when one of `host_pids` owns them.
    pub host_netns: Option<u32>,
    pub host_pids: Vec<u32>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            report_all: false,
            grace_ns: 25_000_000,
            join_window_ns: 2_000_000_000,
            proxy_comms: Vec::new(),
            pids: Vec::new(),
            comms: Vec::new(),
            rst_names: RstNames::default(),
            host_netns: None,
            host_pids: Vec::new(),
        }
    }
}

/// Counters of what the engine did, for `stats` lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub closes: u64,
    pub observations: u64,
    pub resets: u64,
    pub errors: u64,
    pub http_5xx: u64,
    pub conn_end: u64,
    pub bad_gateway: u64,
    /// 5xx written by processes that are not proxies (a backend's own 5xx).
    pub not_gateway_5xx: u64,
    /// RST/error records that matched no traced connection.
    pub unmatched: u64,
}

struct Pending {
    facts: Facts,
    due_ns: u64,
}

struct Pending5xx {
    h: Http5xx,
    due_ns: u64,
}

/// See the module documentation.
pub struct Engine {
    cfg: EngineConfig,
    pending: VecDeque<Pending>,
    /// Final abnormal closes, kept for `join_window_ns` for joins.
    recent: VecDeque<Facts>,
    /// Upstream sockets a thread touched after they failed.
    observations: VecDeque<Facts>,
    pending_5xx: VecDeque<Pending5xx>,
    /// (socket address, birth) of failures already joined to a 5xx.
    /// ... with when they were joined, pruned with the join window.
    consumed: HashMap<(u64, u64), u64>,
    stats: EngineStats,
}

impl Engine {
    pub fn new(cfg: EngineConfig) -> Self {
        Self {
            cfg,
            pending: VecDeque::new(),
            recent: VecDeque::new(),
            observations: VecDeque::new(),
            pending_5xx: VecDeque::new(),
            consumed: HashMap::new(),
            stats: EngineStats::default(),
        }
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Items waiting for their grace period or join window.
    pub fn backlog(&self) -> usize {
        self.pending.len()
            + self.recent.len()
            + self.observations.len()
            + self.pending_5xx.len()
            + self.consumed.len()
    }

    /// Takes one decoded event.
    pub fn ingest(&mut self, ev: Event) {
        match ev {
            Event::Conn(c) if c.observe => {
                self.stats.observations += 1;
                self.observations.push_back(Facts::new(c));
            }
            Event::Conn(c) => {
                self.stats.closes += 1;
                let due_ns = c.meta.ts_ns + self.cfg.grace_ns;
                self.pending.push_back(Pending {
                    facts: Facts::new(c),
                    due_ns,
                });
            }
            Event::Reset(r) => {
                self.stats.resets += 1;
                self.attach_reset(&r);
            }
            Event::Error(e) => {
                self.stats.errors += 1;
                self.attach_error(&e);
            }
            Event::Http5xx(h) => {
                self.stats.http_5xx += 1;
                let due_ns = h.meta.ts_ns + self.cfg.grace_ns;
                self.pending_5xx.push_back(Pending5xx { h, due_ns });
            }
        }
    }

    /// Finalizes everything due at `now_ns` (CLOCK_MONOTONIC).
    pub fn tick(&mut self, now_ns: u64) -> Vec<Report> {
        let mut out = Vec::new();
        while self.pending.front().is_some_and(|p| p.due_ns <= now_ns) {
            let p = self.pending.pop_front().expect("front checked");
            self.finish_conn(p.facts, &mut out);
        }
        while self.pending_5xx.front().is_some_and(|p| p.due_ns <= now_ns) {
            let p = self.pending_5xx.pop_front().expect("front checked");
            self.finish_5xx(&p.h, &mut out);
        }
        let horizon = now_ns.saturating_sub(self.cfg.join_window_ns + self.cfg.grace_ns);
        while self
            .recent
            .front()
            .is_some_and(|f| f.conn.meta.ts_ns < horizon)
        {
            self.recent.pop_front();
        }
        while self
            .observations
            .front()
            .is_some_and(|f| f.conn.meta.ts_ns < horizon)
        {
            self.observations.pop_front();
        }
        // A joined failure can only be seen again while its records are
        // still in the window.
        self.consumed.retain(|_, joined_ns| *joined_ns >= horizon);
        out
    }

    /// Finalizes everything (at exit).
    pub fn finish(&mut self) -> Vec<Report> {
        self.tick(u64::MAX)
    }

    fn attach_reset(&mut self, r: &Reset) {
        let target = self
            .pending
            .iter_mut()
            .rev()
            .map(|p| &mut p.facts)
            .find(|f| f.conn.meta.sk == r.meta.sk || f.conn.ends == r.ends);
        match target {
            Some(f) => {
                f.conn.state.flags |= F_RST_SENT;
                if f.rst_reason.is_none() {
                    f.rst_reason = r.reason;
                }
                if f.conn.state.rst_ns == 0 {
                    f.conn.state.rst_ns = r.meta.ts_ns;
                }
            }
            None => self.stats.unmatched += 1,
        }
    }

    fn attach_error(&mut self, e: &SockError) {
        let target = self
            .pending
            .iter_mut()
            .rev()
            .map(|p| &mut p.facts)
            .find(|f| f.conn.ends == e.ends)
            .or_else(|| self.recent.iter_mut().rev().find(|f| f.conn.ends == e.ends));
        match target {
            Some(f) => {
                if f.error.is_none() {
                    f.error = Some(e.error);
                }
            }
            None => self.stats.unmatched += 1,
        }
    }

    /// Replaces the processes of wanted host-network pods.
    pub fn set_host_pids(&mut self, pids: &[u32]) {
        self.cfg.host_pids = pids.to_vec();
    }

    fn wanted(&self, f: &Facts) -> bool {
        let s = &f.conn.state;
        if self.cfg.host_netns == Some(s.netns) && !self.cfg.host_pids.contains(&s.owner_tgid) {
            return false;
        }
        self.owner_wanted(s.owner_tgid, &crate::events::comm(&s.comm))
    }

    /// `--pid` / `--comm`: no filter, or this process matches.
    fn owner_wanted(&self, pid: u32, comm: &str) -> bool {
        (self.cfg.pids.is_empty() || self.cfg.pids.contains(&pid))
            && (self.cfg.comms.is_empty() || self.cfg.comms.iter().any(|c| c == comm))
    }

    fn finish_conn(&mut self, facts: Facts, out: &mut Vec<Report>) {
        let abnormal = facts.abnormal();
        if (abnormal || self.cfg.report_all) && self.wanted(&facts) {
            self.stats.conn_end += 1;
            out.push(Report::ConnEnd(Box::new(self.conn_end(&facts))));
        }
        if abnormal {
            self.recent.push_back(facts);
        }
    }

    fn conn_end(&self, f: &Facts) -> ConnEnd {
        let names = &self.cfg.rst_names;
        let s = &f.conn.state;
        let (closed_by, how) = f.ending(names);
        let cause = f.conn_cause(names);
        let owner = (s.owner_tgid != 0).then_some(s.owner_tgid);
        ConnEnd {
            ts_ns: f.conn.meta.ts_ns,
            src: fmt_addr(f.conn.ends.local),
            dst: fmt_addr(f.conn.ends.remote),
            role: f.role(),
            pid: owner,
            comm: owner.map(|_| crate::events::comm(&s.comm)),
            netns: s.netns,
            pod: None,
            closed_by,
            how,
            rst_reason: f.rst_reason.and_then(|r| names.name(r)).map(str::to_string),
            // After the keep-alive race the kernel stores ECONNRESET on a
            // socket its application had already closed: nobody saw it.
            error: f
                .error
                .filter(|_| !f.data_after_close(names))
                .map(errno_name),
            idle_ms: explain::conn_idle_ms(f),
            age_ms: (!f.has(tracer_common::F_MIDLIFE))
                .then(|| ms(f.conn.meta.ts_ns.saturating_sub(s.birth_ns))),
            bytes_sent: f.conn.bytes_sent,
            bytes_received: f.conn.bytes_received,
            requests: s.messages,
            cause,
            explanation: cause.map(|c| explain::conn_sentence(f, c, closed_by, how)),
        }
    }

    fn is_proxy(&self, comm: &str) -> bool {
        KNOWN_PROXIES.iter().any(|p| comm.starts_with(p))
            || self.cfg.proxy_comms.iter().any(|p| p == comm)
    }

    /// The upstream failure a 5xx answers: what the writing thread itself
    /// touched last, else its process, else the most recent failure of a
    /// connection its process had opened. Each failure answers one 5xx.
    fn find_upstream(&self, h: &Http5xx) -> Option<Facts> {
        let t = h.meta.ts_ns;
        let lo = t.saturating_sub(self.cfg.join_window_ns);
        let unused = |f: &Facts| {
            !self
                .consumed
                .contains_key(&(f.conn.meta.sk, f.conn.state.birth_ns))
        };
        // An observation counts if it was made before the 5xx ...
        let fresh = |f: &&Facts| {
            let ts = f.conn.meta.ts_ns;
            ts >= lo && ts <= t && unused(f)
        };
        // ... a failure if it happened before the 5xx, even when its record
        // (the close) arrives after it.
        let failed_before = |f: &&Facts| {
            let s = &f.conn.state;
            let ts = if s.close_start_ns != 0 {
                s.close_start_ns
            } else {
                f.conn.meta.ts_ns
            };
            ts >= lo && ts <= t && unused(f)
        };
        let by_tid = self
            .observations
            .iter()
            .rev()
            .filter(fresh)
            .find(|f| f.conn.meta.tid == h.meta.tid && f.has(F_TASK_CTX));
        let by_tgid = || {
            self.observations
                .iter()
                .rev()
                .filter(fresh)
                .find(|f| f.conn.meta.tgid == h.meta.tgid && f.has(F_TASK_CTX))
        };
        // Proxies that write the 5xx before closing the upstream (HAProxy):
        // the failures of connections this process opened, the writing
        // thread's own first (streams stay on the thread that connected),
        // oldest first (failures are answered in the order they happen).
        let owned = |by_thread: bool| {
            self.recent
                .iter()
                .chain(self.pending.iter().map(|p| &p.facts))
                .chain(self.observations.iter())
                .filter(failed_before)
                .filter(|f| f.has(F_ROLE_CLIENT) && f.conn.state.owner_tgid == h.meta.tgid)
                .filter(|f| !by_thread || f.conn.state.owner_tid == h.meta.tid)
                .min_by_key(|f| f.conn.meta.ts_ns)
        };
        let found = by_tid
            .or_else(by_tgid)
            .or_else(|| owned(true))
            .or_else(|| owned(false))?;
        // Prefer the socket's final close record when it has arrived.
        let key = (found.conn.meta.sk, found.conn.state.birth_ns);
        let closed = self
            .pending
            .iter()
            .map(|p| &p.facts)
            .chain(self.recent.iter())
            .find(|f| (f.conn.meta.sk, f.conn.state.birth_ns) == key);
        Some(closed.unwrap_or(found).clone())
    }

    /// The backend's own socket for this upstream connection, when the
    /// backend runs on this node and was traced.
    fn backend_side(&self, up: &Facts) -> Option<Facts> {
        let want = up.conn.ends.reversed();
        self.pending
            .iter()
            .map(|p| &p.facts)
            .chain(self.recent.iter())
            .filter(|f| f.conn.ends == want && !f.has(F_ROLE_CLIENT))
            .max_by_key(|f| f.conn.meta.ts_ns)
            .cloned()
    }

    fn finish_5xx(&mut self, h: &Http5xx, out: &mut Vec<Report>) {
        if !matches!(h.status, 502..=504) {
            // 500/501/505…: the proxy relayed or made an application error.
            self.stats.not_gateway_5xx += 1;
            return;
        }
        let upstream = self.find_upstream(h);
        if upstream.is_none() && !self.is_proxy(&h.comm) {
            self.stats.not_gateway_5xx += 1;
            return;
        }
        let names = self.cfg.rst_names.clone();
        let backend = upstream.as_ref().and_then(|u| self.backend_side(u));
        let client_left = h.sk_state == TCP_CLOSE_WAIT;
        let (mut cause, mut closed_by, mut how) = match &upstream {
            Some(u) => upstream_verdict(u, backend.as_ref(), &names),
            None => (Cause::NoUpstreamConnection, ClosedBy::None, How::None),
        };
        if client_left
            && matches!(
                cause,
                Cause::ProxyTimeout | Cause::NoUpstreamConnection | Cause::Unknown
            )
        {
            (cause, closed_by, how) = (Cause::ClientAborted, ClosedBy::Client, How::Fin);
        }
        if let Some(u) = &upstream {
            self.consumed
                .insert((u.conn.meta.sk, u.conn.state.birth_ns), h.meta.ts_ns);
        }
        let rst_reason = backend
            .as_ref()
            .and_then(|b| b.rst_reason)
            .or_else(|| upstream.as_ref().and_then(|u| u.rst_reason))
            .and_then(|r| names.name(r))
            .map(str::to_string);
        let up_state = upstream.as_ref().map(|u| u.conn.state);
        let idle_ms = upstream
            .as_ref()
            .and_then(|u| explain::request_idle_ms(u, backend.as_ref()));
        let bg = BadGateway {
            ts_ns: h.meta.ts_ns,
            netns: h.netns,
            status: h.status,
            proxy: Proxy {
                pid: h.meta.tgid,
                tid: h.meta.tid,
                comm: h.comm.clone(),
                pod: None,
            },
            client: fmt_addr(h.ends.remote),
            upstream: upstream.as_ref().map(|u| Upstream {
                src: fmt_addr(u.conn.ends.local),
                dst: fmt_addr(u.conn.ends.remote),
                pod: None,
                bytes_sent: u.conn.bytes_sent,
                bytes_received: u.conn.bytes_received,
                backend_netns: backend.as_ref().map(|b| b.conn.state.netns),
            }),
            cause,
            closed_by,
            how,
            rst_reason,
            error: upstream.as_ref().and_then(|u| u.error).map(errno_name),
            idle_ms,
            requests_on_conn: up_state.map(|s| s.messages),
            explanation: explain::bad_gateway_sentence(
                h,
                upstream.as_ref(),
                backend.as_ref(),
                cause,
                idle_ms,
            ),
            timeline: explain::timeline(h, upstream.as_ref(), backend.as_ref()),
        };
        // `--pid` / `--comm` select the proxy, or the local backend it failed on.
        let backend_wanted = backend.as_ref().is_some_and(|b| {
            let s = &b.conn.state;
            self.owner_wanted(s.owner_tgid, &crate::events::comm(&s.comm))
        });
        if !self.owner_wanted(h.meta.tgid, &h.comm) && !backend_wanted {
            return;
        }
        self.stats.bad_gateway += 1;
        out.push(Report::BadGateway(Box::new(bg)));
    }
}

/// `ip:port`, IPv6 as `[ip]:port`.
pub fn fmt_addr(a: std::net::SocketAddr) -> String {
    a.to_string()
}

fn ms(ns: u64) -> u64 {
    ns / 1_000_000
}

/// Builds synthetic event streams for tests.
#[cfg(test)]
pub(crate) mod fixtures;

#[cfg(test)]
mod tests;
