//! Sentences a person can act on, idle times, and timelines.

use tracer_common::{F_MIDLIFE, F_PEER_FIN_FIRST, F_RST_RECEIVED};

use super::{
    classify::Facts,
    fmt_addr,
    model::{Cause, How, Side, Step},
};
use crate::events::Http5xx;

/// `idle_ms` of a `conn_end`: time since the last byte either way before the
/// close began.
pub fn conn_idle_ms(f: &Facts) -> Option<u64> {
    if f.has(tracer_common::F_CONNECT_FAILED) {
        return None;
    }
    (f.conn.state.close_start_ns != 0).then_some(f.conn.state.idle_at_close_ms as u64)
}

/// `idle_ms` of a `bad_gateway`: how long the connection sat idle before the
/// request that failed (the keep-alive race), else before its close began.
pub fn request_idle_ms(up: &Facts, backend: Option<&Facts>) -> Option<u64> {
    let s = &up.conn.state;
    if up.has(tracer_common::F_CONNECT_FAILED) {
        return None;
    }
    // The backend's own socket says how long it sat idle before it closed
    // (its keep-alive timeout); without it, the idle gap the proxy saw
    // before reusing the connection.
    if let Some(b) = backend.filter(|b| b.has(tracer_common::F_LOCAL_CLOSE_FIRST)) {
        return conn_idle_ms(b);
    }
    if s.messages >= 2 {
        return Some(s.idle_before_msg_ms as u64);
    }
    conn_idle_ms(up)
}

fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

fn ms_between(a_ns: u64, b_ns: u64) -> f64 {
    (b_ns as f64 - a_ns as f64) / 1e6
}

/// One sentence for a `conn_end` with a cause.
pub fn conn_sentence(f: &Facts, cause: Cause, closed_by: Side, how: How) -> String {
    let peer = fmt_addr(f.conn.ends.remote);
    let me = fmt_addr(f.conn.ends.local);
    let idle = secs(f.conn.state.idle_at_close_ms as u64);
    match cause {
        Cause::BackendClosedIdleKeepalive => format!(
            "{me} closed this keep-alive connection after {idle} idle, then {peer} sent data on it and was answered with RST"
        ),
        Cause::BackendProcessExited => {
            format!("the process serving {me} exited with the connection from {peer} open")
        }
        Cause::ConnectionRefused => format!("nothing listened at {peer}: the connection was refused (RST to SYN)"),
        Cause::ConnectTimeout => format!("{peer} never answered the SYN; the connect timed out"),
        Cause::BackendReset => format!("{peer} reset the connection while a request was in flight"),
        Cause::BackendClosedBeforeResponse => {
            format!("{peer} closed the connection (FIN) after the request and before any response byte")
        }
        Cause::ProxyTimeout => format!("this side ({me}) gave up on {peer} with a request in flight"),
        _ => format!("closed by {closed_by:?} with {how:?}").to_lowercase(),
    }
}

/// One sentence for a `bad_gateway`.
pub fn bad_gateway_sentence(
    h: &Http5xx,
    up: Option<&Facts>,
    backend: Option<&Facts>,
    cause: Cause,
    idle_ms: Option<u64>,
) -> String {
    let proxy = format!("{} (pid {})", h.comm, h.meta.tgid);
    let Some(u) = up else {
        return match cause {
            Cause::ClientAborted => format!(
                "the client {} closed its connection before {proxy} answered {}; no upstream failure was seen",
                fmt_addr(h.ends.remote),
                h.status
            ),
            _ => format!(
                "{proxy} answered {} without any upstream connection failing first: no live upstream (all marked down, none resolvable, or no endpoints)",
                h.status
            ),
        };
    };
    let dst = fmt_addr(u.conn.ends.remote);
    let s = &u.conn.state;
    let after_close = |t_ns: u64| -> String {
        let d = ms_between(t_ns, h.meta.ts_ns);
        format!("{d:.1} ms later")
    };
    match cause {
        Cause::BackendClosedIdleKeepalive => {
            let idle = idle_ms.map(secs).unwrap_or_else(|| "?".into());
            let gap = backend
                .map(|b| ms_between(b.conn.state.close_start_ns, s.msg_start_ns))
                .filter(|g| *g >= 0.0)
                .map(|g| format!(" {g:.1} ms later"))
                .unwrap_or_default();
            let answer = if u.has(F_RST_RECEIVED) { "answered with RST" } else { "closed it" };
            format!(
                "backend {dst} closed this keep-alive connection after {idle} idle; the proxy reused it{gap} and the backend {answer}"
            )
        }
        Cause::BackendClosedBeforeResponse => format!(
            "backend {dst} closed the connection (FIN) {:.1} ms after the request was sent, before any response byte (e.g. a write timeout shorter than the handler)",
            ms_between(s.msg_start_ns, s.close_start_ns).max(0.0)
        ),
        Cause::BackendReset => format!(
            "backend {dst} reset the connection (RST) {:.1} ms after the request was sent, before any response byte",
            ms_between(s.msg_start_ns, if s.rst_ns != 0 { s.rst_ns } else { s.close_start_ns }).max(0.0)
        ),
        Cause::BackendProcessExited => format!(
            "the backend process at {dst}{} exited (crash, kill or OOM) with this request in flight",
            backend
                .map(|b| format!(" ({} pid {})", crate::events::comm(&b.conn.state.comm), b.conn.state.owner_tgid))
                .unwrap_or_default()
        ),
        Cause::ConnectionRefused => format!(
            "nothing listened at {dst}: the connect was refused (RST to SYN); the backend is down or the address is stale"
        ),
        Cause::ConnectTimeout => format!(
            "{dst} never answered the SYN; the connect timed out after {:.0} ms (host gone or traffic dropped)",
            ms_between(s.birth_ns, s.close_start_ns).max(0.0)
        ),
        Cause::ProxyTimeout => format!(
            "{proxy} gave up waiting for {dst} and closed the connection {:.0} ms after sending the request; the backend had not answered",
            ms_between(s.msg_start_ns, s.close_start_ns).max(0.0)
        ),
        Cause::ClientAborted => format!(
            "the client {} had already closed its side; {proxy} then dropped the upstream {dst} and answered {}",
            fmt_addr(h.ends.remote),
            h.status
        ),
        Cause::NoUpstreamConnection | Cause::Unknown => format!(
            "the connection to {dst} ended ({}) {}; what was seen does not match a known cause",
            if u.has(F_PEER_FIN_FIRST) { "backend FIN" } else if u.has(F_RST_RECEIVED) { "backend RST" } else { "closed by the proxy" },
            after_close(u.conn.meta.ts_ns)
        ),
    }
}

/// The kernel events behind a `bad_gateway`, in time order, relative to the
/// 5xx.
pub fn timeline(h: &Http5xx, up: Option<&Facts>, backend: Option<&Facts>) -> Vec<Step> {
    let t0 = h.meta.ts_ns;
    let mut steps = Vec::new();
    let mut push = |ts: u64, side: &'static str, what: String| {
        if ts != 0 {
            steps.push(Step {
                t_ms: round(ms_between(t0, ts)),
                side,
                what,
            });
        }
    };
    if let Some(u) = up {
        let s = &u.conn.state;
        if !u.has(F_MIDLIFE) {
            push(
                s.birth_ns,
                "proxy",
                format!("connect to {}", fmt_addr(u.conn.ends.remote)),
            );
        }
        if s.messages >= 2 && s.idle_before_msg_ms > 0 {
            let last = s
                .msg_start_ns
                .saturating_sub(s.idle_before_msg_ms as u64 * 1_000_000);
            push(
                last,
                "backend",
                "last activity on the connection (previous response)".into(),
            );
        }
        if s.msg_start_ns != 0 {
            push(
                s.msg_start_ns,
                "proxy",
                format!("request #{} sent", s.messages),
            );
        }
        if let Some(b) = backend {
            let bs = &b.conn.state;
            if bs.close_start_ns != 0 && b.has(tracer_common::F_LOCAL_CLOSE_FIRST) {
                let what = if b.has(tracer_common::F_EXITING_CLOSE) {
                    "backend process exiting closed the connection"
                } else {
                    "backend closed the connection"
                };
                push(bs.close_start_ns, "backend", what.into());
            }
        }
        if u.has(F_PEER_FIN_FIRST) {
            push(
                s.close_start_ns,
                "backend",
                "FIN received by the proxy".into(),
            );
        }
        if u.has(tracer_common::F_CONNECT_FAILED) {
            if u.refused() {
                push(
                    s.close_start_ns,
                    "backend",
                    "SYN answered with RST: connection refused".into(),
                );
            } else if u.has(tracer_common::F_LOCAL_CLOSE_FIRST) {
                push(
                    s.close_start_ns,
                    "proxy",
                    "proxy gave up connecting (no SYN-ACK)".into(),
                );
            } else {
                push(
                    s.close_start_ns,
                    "proxy",
                    "kernel gave up connecting (SYN retries exhausted)".into(),
                );
            }
        } else {
            if u.has(F_RST_RECEIVED) {
                push(s.rst_ns, "backend", "RST received by the proxy".into());
            }
            if u.has(tracer_common::F_LOCAL_CLOSE_FIRST) {
                push(
                    s.close_start_ns,
                    "proxy",
                    "proxy closed the upstream connection".into(),
                );
            }
        }
    }
    push(
        t0,
        "proxy",
        format!("{} written to client {}", h.status, fmt_addr(h.ends.remote)),
    );
    steps.sort_by(|a, b| a.t_ms.total_cmp(&b.t_ms));
    steps
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}
