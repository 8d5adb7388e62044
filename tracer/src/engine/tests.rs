use std::collections::HashMap;

use tracer_common::*;

use super::{
    classify::RstNames,
    fixtures::{http, Sock, MS},
    model::{BadGateway, Cause, ClosedBy, ConnEnd, How, Report, Side},
    Engine, EngineConfig,
};

const ABORT_ON_DATA: u32 = 8;
const ABORT_ON_CLOSE: u32 = 11;

fn engine(all: bool) -> Engine {
    let mut names = HashMap::new();
    names.insert(ABORT_ON_DATA, "TCP_ABORT_ON_DATA".to_string());
    names.insert(ABORT_ON_CLOSE, "TCP_ABORT_ON_CLOSE".to_string());
    Engine::new(EngineConfig {
        report_all: all,
        rst_names: RstNames(names),
        ..Default::default()
    })
}

fn run(e: &mut Engine, events: Vec<crate::events::Event>) -> Vec<Report> {
    for ev in events {
        e.ingest(ev);
    }
    e.finish()
}

fn gateways(r: &[Report]) -> Vec<&BadGateway> {
    r.iter()
        .filter_map(|r| {
            if let Report::BadGateway(b) = r {
                Some(&**b)
            } else {
                None
            }
        })
        .collect()
}

fn conn_ends(r: &[Report]) -> Vec<&ConnEnd> {
    r.iter()
        .filter_map(|r| {
            if let Report::ConnEnd(c) = r {
                Some(&**c)
            } else {
                None
            }
        })
        .collect()
}

const T: u64 = 1_000_000 * MS;
const PROXY: u32 = 812;

/// Seed 001 with the backend on this node: the backend closed the idle
/// keep-alive connection after 5 s; the proxy reused it; the backend
/// answered with RST (TCP_ABORT_ON_DATA); nginx wrote a 502.
#[test]
fn keepalive_race_with_local_backend() {
    let req = T + 5_000 * MS;
    let up = Sock::new(
        1,
        "10.0.0.2:40112",
        "10.0.1.9:8080",
        F_ROLE_CLIENT,
        PROXY,
        "nginx",
        T - 10 * MS,
    )
    .request(4, req, 5003)
    .flags(F_RST_RECEIVED | F_INFLIGHT_AT_CLOSE)
    .close_start(req + MS / 2, TCP_ESTABLISHED, TCP_CLOSE, 0)
    .rst_at(req + MS / 2)
    .err(104);
    let be = Sock::new(
        2,
        "10.0.1.9:8080",
        "10.0.0.2:40112",
        F_ROLE_SERVER,
        900,
        "node",
        T - 10 * MS,
    )
    .request(3, T - 3 * MS, 0)
    .flags(F_LOCAL_CLOSE_FIRST | F_RST_RECEIVED | F_DATA_AFTER_CLOSE)
    .close_start(req - MS * 4 / 10, TCP_ESTABLISHED, TCP_FIN_WAIT1, 5003)
    .err(104);
    let mut e = engine(false);
    let out = run(
        &mut e,
        vec![
            be.close(req + MS / 4),
            be.late_reset(req + MS / 4 + 1000, ABORT_ON_DATA),
            up.close(req + MS / 2),
            up.observe(req + MS, 77, PROXY),
            http(
                req + MS + 5000,
                77,
                PROXY,
                "nginx",
                "10.0.0.2:80",
                "10.0.0.7:51544",
                502,
                TCP_ESTABLISHED,
            ),
        ],
    );
    let g = gateways(&out);
    assert_eq!(g.len(), 1, "{out:#?}");
    let g = g[0];
    assert_eq!(g.cause, Cause::BackendClosedIdleKeepalive);
    assert_eq!(g.closed_by, ClosedBy::Backend);
    assert_eq!(g.how, How::Rst);
    assert_eq!(g.rst_reason.as_deref(), Some("TCP_ABORT_ON_DATA"));
    assert_eq!(g.idle_ms, Some(5003));
    assert_eq!(g.requests_on_conn, Some(4));
    assert_eq!(g.client, "10.0.0.7:51544");
    let up = g.upstream.as_ref().unwrap();
    assert_eq!(
        (up.src.as_str(), up.dst.as_str()),
        ("10.0.0.2:40112", "10.0.1.9:8080")
    );
    assert!(
        g.explanation.contains("after 5.0 s idle"),
        "{}",
        g.explanation
    );
    assert!(g.timeline.windows(2).all(|w| w[0].t_ms <= w[1].t_ms));
    assert_eq!(g.timeline.last().unwrap().t_ms, 0.0);

    // Both sockets also get a conn_end; the backend's names the race.
    let ce = conn_ends(&out);
    let backend_end = ce.iter().find(|c| c.src == "10.0.1.9:8080").unwrap();
    assert_eq!(backend_end.cause, Some(Cause::BackendClosedIdleKeepalive));
    assert_eq!(backend_end.closed_by, Side::Local);
    assert_eq!(backend_end.how, How::Rst);
    assert_eq!(backend_end.rst_reason.as_deref(), Some("TCP_ABORT_ON_DATA"));
    assert_eq!(backend_end.idle_ms, Some(5003));
    assert_eq!(backend_end.error, None, "no application saw an error");
    let proxy_end = ce.iter().find(|c| c.src == "10.0.0.2:40112").unwrap();
    assert_eq!(proxy_end.error.as_deref(), Some("ECONNRESET"));
    assert_eq!((proxy_end.closed_by, proxy_end.how), (Side::Peer, How::Rst));
}

/// Seed 001 with a remote backend (a cloud LB's view is the mirror image):
/// only the proxy side is seen; a reset answering a request on a reused idle
/// connection at once is the race.
#[test]
fn keepalive_race_remote_backend() {
    let req = T + 5_000 * MS;
    let up = Sock::new(
        1,
        "10.0.0.2:40112",
        "10.9.9.9:8080",
        F_ROLE_CLIENT,
        PROXY,
        "nginx",
        T,
    )
    .request(2, req, 5000)
    .flags(F_RST_RECEIVED | F_INFLIGHT_AT_CLOSE)
    .close_start(req + MS, TCP_ESTABLISHED, TCP_CLOSE, 0)
    .rst_at(req + MS);
    let out = run(
        &mut engine(false),
        vec![
            up.close(req + MS),
            up.observe(req + 2 * MS, 5, PROXY),
            http(
                req + 3 * MS,
                5,
                PROXY,
                "nginx",
                "10.0.0.2:80",
                "10.0.0.7:1",
                502,
                TCP_ESTABLISHED,
            ),
        ],
    );
    assert_eq!(gateways(&out)[0].cause, Cause::BackendClosedIdleKeepalive);
}

#[test]
fn backend_reset_mid_request() {
    let req = T;
    let up = Sock::new(
        1,
        "10.0.0.2:40000",
        "10.0.1.9:8080",
        F_ROLE_CLIENT,
        PROXY,
        "nginx",
        T - MS,
    )
    .request(1, req, 0)
    .flags(F_RST_RECEIVED | F_INFLIGHT_AT_CLOSE)
    .close_start(req + 300 * MS, TCP_ESTABLISHED, TCP_CLOSE, 300)
    .rst_at(req + 300 * MS);
    let out = run(
        &mut engine(false),
        vec![
            up.close(req + 300 * MS),
            up.observe(req + 301 * MS, 5, PROXY),
            http(
                req + 302 * MS,
                5,
                PROXY,
                "nginx",
                "10.0.0.2:80",
                "10.0.0.7:1",
                502,
                TCP_ESTABLISHED,
            ),
        ],
    );
    let g = gateways(&out)[0];
    assert_eq!(
        (g.cause, g.closed_by, g.how),
        (Cause::BackendReset, ClosedBy::Backend, How::Rst)
    );
}

#[test]
fn backend_fin_before_response() {
    let up = Sock::new(
        1,
        "10.0.0.2:40000",
        "10.0.1.9:8080",
        F_ROLE_CLIENT,
        PROXY,
        "nginx",
        T - MS,
    )
    .request(1, T, 0)
    .flags(F_PEER_FIN_FIRST | F_INFLIGHT_AT_CLOSE)
    .close_start(T + 2_000 * MS, TCP_ESTABLISHED, TCP_CLOSE_WAIT, 2000);
    // nginx closes in CLOSE_WAIT (observe) and writes the 502 before the
    // socket's final CLOSE arrives.
    let out = run(
        &mut engine(false),
        vec![
            up.observe(T + 2_001 * MS, 5, PROXY),
            http(
                T + 2_001 * MS + 10,
                5,
                PROXY,
                "nginx",
                "10.0.0.2:80",
                "10.0.0.7:1",
                502,
                TCP_ESTABLISHED,
            ),
            up.close(T + 2_002 * MS),
        ],
    );
    let g = gateways(&out)[0];
    assert_eq!(
        (g.cause, g.closed_by, g.how),
        (
            Cause::BackendClosedBeforeResponse,
            ClosedBy::Backend,
            How::Fin
        )
    );
    assert!(
        g.explanation.contains("2000.0 ms after the request"),
        "{}",
        g.explanation
    );
}

#[test]
fn backend_process_exited_seen_from_backend_socket() {
    let up = Sock::new(
        1,
        "10.0.0.2:40000",
        "10.0.1.9:8080",
        F_ROLE_CLIENT,
        PROXY,
        "nginx",
        T - MS,
    )
    .request(1, T, 0)
    .flags(F_PEER_FIN_FIRST | F_INFLIGHT_AT_CLOSE)
    .close_start(T + 50 * MS, TCP_ESTABLISHED, TCP_CLOSE_WAIT, 50);
    let be = Sock::new(
        2,
        "10.0.1.9:8080",
        "10.0.0.2:40000",
        F_ROLE_SERVER,
        900,
        "node",
        T - MS,
    )
    .flags(F_LOCAL_CLOSE_FIRST | F_EXITING_CLOSE)
    .close_start(T + 50 * MS, TCP_ESTABLISHED, TCP_FIN_WAIT1, 50);
    let out = run(
        &mut engine(false),
        vec![
            be.close(T + 51 * MS),
            up.observe(T + 52 * MS, 5, PROXY),
            http(
                T + 53 * MS,
                5,
                PROXY,
                "nginx",
                "10.0.0.2:80",
                "10.0.0.7:1",
                502,
                TCP_ESTABLISHED,
            ),
        ],
    );
    let g = gateways(&out)[0];
    assert_eq!(g.cause, Cause::BackendProcessExited);
    assert!(g.explanation.contains("node pid 900"), "{}", g.explanation);
    let be_end = conn_ends(&out)
        .into_iter()
        .find(|c| c.src == "10.0.1.9:8080")
        .unwrap();
    assert_eq!(be_end.cause, Some(Cause::BackendProcessExited));
}

#[test]
fn refused_and_connect_timeout() {
    let refused = Sock::new(
        1,
        "10.0.0.2:40000",
        "10.0.1.9:8081",
        F_ROLE_CLIENT,
        PROXY,
        "nginx",
        T,
    )
    .flags(F_CONNECT_FAILED | F_RST_RECEIVED)
    .close_start(T + MS, TCP_SYN_SENT, TCP_CLOSE, 0)
    .err(111);
    let timeout = Sock::new(
        2,
        "10.0.0.2:40001",
        "10.0.1.9:8082",
        F_ROLE_CLIENT,
        PROXY,
        "nginx",
        T,
    )
    .flags(F_CONNECT_FAILED | F_LOCAL_CLOSE_FIRST)
    .close_start(T + 1_000 * MS, TCP_SYN_SENT, TCP_CLOSE, 0);
    let out = run(
        &mut engine(false),
        vec![
            refused.close(T + MS),
            refused.observe(T + 2 * MS, 5, PROXY),
            http(
                T + 3 * MS,
                5,
                PROXY,
                "nginx",
                "10.0.0.2:80",
                "10.0.0.7:1",
                502,
                TCP_ESTABLISHED,
            ),
            // The proxy abandons the connect itself (its connect timeout), in
            // its own context: the close record is the observation.
            timeout.observe(T + 1_000 * MS, 6, PROXY),
            timeout.close(T + 1_000 * MS),
            http(
                T + 1_000 * MS + 10,
                6,
                PROXY,
                "nginx",
                "10.0.0.2:80",
                "10.0.0.7:2",
                504,
                TCP_ESTABLISHED,
            ),
        ],
    );
    let g = gateways(&out);
    assert_eq!(
        (g[0].cause, g[0].how, g[0].closed_by),
        (Cause::ConnectionRefused, How::Refused, ClosedBy::Backend)
    );
    assert_eq!(g[0].error.as_deref(), Some("ECONNREFUSED"));
    assert_eq!(
        (g[1].cause, g[1].how, g[1].closed_by),
        (Cause::ConnectTimeout, How::Timeout, ClosedBy::None)
    );
    let ce = conn_ends(&out);
    assert_eq!(
        ce.iter().find(|c| c.dst.ends_with(":8081")).unwrap().how,
        How::Refused
    );
    assert_eq!(
        ce.iter().find(|c| c.dst.ends_with(":8082")).unwrap().how,
        How::Timeout
    );
}

#[test]
fn proxy_timeout_and_client_aborted() {
    let slow = Sock::new(
        1,
        "10.0.0.2:40000",
        "10.0.1.9:8080",
        F_ROLE_CLIENT,
        PROXY,
        "nginx",
        T,
    )
    .request(1, T, 0)
    .flags(F_LOCAL_CLOSE_FIRST | F_INFLIGHT_AT_CLOSE)
    .close_start(T + 1_000 * MS, TCP_ESTABLISHED, TCP_FIN_WAIT1, 1000);
    let slow2 = Sock {
        sk: 2,
        ..slow.clone()
    };
    let out = run(
        &mut engine(false),
        vec![
            slow.observe(T + 1_000 * MS, 5, PROXY),
            http(
                T + 1_000 * MS + 10,
                5,
                PROXY,
                "nginx",
                "10.0.0.2:80",
                "10.0.0.7:1",
                504,
                TCP_ESTABLISHED,
            ),
            slow2.observe(T + 1_100 * MS, 5, PROXY),
            http(
                T + 1_100 * MS + 10,
                5,
                PROXY,
                "nginx",
                "10.0.0.2:80",
                "10.0.0.7:2",
                504,
                TCP_CLOSE_WAIT,
            ),
        ],
    );
    let g = gateways(&out);
    assert_eq!(
        (g[0].cause, g[0].closed_by, g[0].how),
        (Cause::ProxyTimeout, ClosedBy::Proxy, How::Timeout)
    );
    assert_eq!(
        (g[1].cause, g[1].closed_by),
        (Cause::ClientAborted, ClosedBy::Client)
    );
}

#[test]
fn no_upstream_only_for_proxies() {
    let out = run(
        &mut engine(false),
        vec![
            http(
                T,
                5,
                PROXY,
                "nginx",
                "10.0.0.2:80",
                "10.0.0.7:1",
                502,
                TCP_ESTABLISHED,
            ),
            // A backend's own 503 is not a gateway error.
            http(
                T,
                9,
                900,
                "node",
                "10.0.1.9:8080",
                "10.0.0.2:4000",
                503,
                TCP_ESTABLISHED,
            ),
            // A relayed 500 is not either.
            http(
                T,
                5,
                PROXY,
                "nginx",
                "10.0.0.2:80",
                "10.0.0.7:2",
                500,
                TCP_ESTABLISHED,
            ),
        ],
    );
    let g = gateways(&out);
    assert_eq!(g.len(), 1);
    assert_eq!(
        (g[0].cause, g[0].closed_by, g[0].how),
        (Cause::NoUpstreamConnection, ClosedBy::None, How::None)
    );
    assert!(g[0].upstream.is_none());
}

/// Many requests in flight: each 5xx joins the failure its own thread saw,
/// never a neighbour's, and each failure answers one 5xx.
#[test]
fn concurrent_failures_join_their_own_thread() {
    let mut ev = Vec::new();
    for i in 0..50u32 {
        let t = T + i as u64 * MS;
        let dst = if i % 2 == 0 {
            "10.0.1.9:8080"
        } else {
            "10.0.1.10:8080"
        };
        let up = Sock::new(
            100 + i as u64,
            &format!("10.0.0.2:{}", 40000 + i),
            dst,
            F_ROLE_CLIENT,
            PROXY,
            "haproxy",
            t,
        )
        .request(1, t, 0)
        .flags(F_RST_RECEIVED | F_INFLIGHT_AT_CLOSE)
        .close_start(t + 10, TCP_ESTABLISHED, TCP_CLOSE, 0)
        .rst_at(t + 10);
        ev.push(up.close(t + 10));
        ev.push(up.observe(t + 20, 1000 + i % 4, PROXY));
        ev.push(http(
            t + 30,
            1000 + i % 4,
            PROXY,
            "haproxy",
            "10.0.0.2:80",
            &format!("10.0.0.7:{}", 50000 + i),
            502,
            TCP_ESTABLISHED,
        ));
    }
    let out = run(&mut engine(false), ev);
    let g = gateways(&out);
    assert_eq!(g.len(), 50);
    for b in g {
        let i: u32 = b.client.rsplit(':').next().unwrap().parse::<u32>().unwrap() - 50000;
        let up = b.upstream.as_ref().unwrap();
        assert_eq!(up.src, format!("10.0.0.2:{}", 40000 + i));
        assert_eq!(b.cause, Cause::BackendReset);
    }
}

/// A failure the proxy hid by retrying elsewhere stays a conn_end.
#[test]
fn retried_failure_is_only_conn_end() {
    let up = Sock::new(
        1,
        "10.0.0.2:40000",
        "10.0.1.9:8080",
        F_ROLE_CLIENT,
        PROXY,
        "nginx",
        T,
    )
    .flags(F_CONNECT_FAILED | F_RST_RECEIVED)
    .close_start(T + MS, TCP_SYN_SENT, TCP_CLOSE, 0)
    .err(111);
    let out = run(
        &mut engine(false),
        vec![up.close(T + MS), up.observe(T + 2 * MS, 5, PROXY)],
    );
    assert!(gateways(&out).is_empty());
    assert_eq!(conn_ends(&out).len(), 1);
}

#[test]
fn healthy_close_reported_only_with_all() {
    let ok = Sock::new(
        1,
        "10.0.0.2:40000",
        "10.0.1.9:8080",
        F_ROLE_CLIENT,
        PROXY,
        "nginx",
        T,
    )
    .request(1, T, 0)
    .flags(F_LOCAL_CLOSE_FIRST)
    .close_start(T + 5 * MS, TCP_ESTABLISHED, TCP_FIN_WAIT1, 2);
    assert!(run(&mut engine(false), vec![ok.close(T + 10 * MS)]).is_empty());
    let out = run(&mut engine(true), vec![ok.close(T + 10 * MS)]);
    let c = conn_ends(&out)[0];
    assert_eq!((c.closed_by, c.how, c.cause), (Side::Local, How::Fin, None));
    assert_eq!(c.age_ms, Some(10));
    assert_eq!(c.idle_ms, Some(2));
}

#[test]
fn late_reset_and_error_merge_into_conn_end() {
    let s = Sock::new(
        1,
        "10.0.1.9:8080",
        "10.0.0.2:40000",
        F_ROLE_SERVER,
        900,
        "node",
        T,
    )
    .flags(F_LOCAL_CLOSE_FIRST | F_RST_SENT | F_UNREAD_AT_CLOSE)
    .close_start(T + MS, TCP_ESTABLISHED, TCP_CLOSE, 0);
    let out = run(
        &mut engine(false),
        vec![
            s.close(T + MS),
            s.late_reset(T + MS + 10, ABORT_ON_CLOSE),
            s.error(T + MS + 20, 104),
        ],
    );
    let c = conn_ends(&out)[0];
    assert_eq!((c.closed_by, c.how), (Side::Local, How::Rst));
    assert_eq!(c.rst_reason.as_deref(), Some("TCP_ABORT_ON_CLOSE"));
    assert_eq!(c.error.as_deref(), Some("ECONNRESET"));
}

#[test]
fn pid_filter_in_userspace() {
    let s = Sock::new(
        1,
        "10.0.1.9:8080",
        "10.0.0.2:40000",
        F_ROLE_SERVER,
        900,
        "node",
        T,
    )
    .flags(F_RST_RECEIVED)
    .close_start(T + MS, TCP_ESTABLISHED, TCP_CLOSE, 0);
    let mut e = Engine::new(EngineConfig {
        pids: vec![1],
        ..Default::default()
    });
    assert!(run(&mut e, vec![s.close(T + MS)]).is_empty());
    let mut e = Engine::new(EngineConfig {
        comms: vec!["node".into()],
        ..Default::default()
    });
    assert_eq!(run(&mut e, vec![s.close(T + MS)]).len(), 1);
}

#[test]
fn items_wait_for_grace_then_expire() {
    let mut e = engine(false);
    let s = Sock::new(
        1,
        "10.0.1.9:8080",
        "10.0.0.2:40000",
        F_ROLE_SERVER,
        900,
        "node",
        T,
    )
    .flags(F_RST_RECEIVED)
    .close_start(T + MS, TCP_ESTABLISHED, TCP_CLOSE, 0);
    e.ingest(s.close(T + MS));
    assert!(
        e.tick(T + 2 * MS).is_empty(),
        "reported before its grace period"
    );
    assert_eq!(e.tick(T + 100 * MS).len(), 1);
    // A joined failure is remembered only while the join window holds it.
    let up = Sock::new(
        3,
        "10.0.0.2:40000",
        "10.0.1.9:8080",
        F_ROLE_CLIENT,
        PROXY,
        "nginx",
        T,
    )
    .request(1, T, 0)
    .flags(F_RST_RECEIVED | F_INFLIGHT_AT_CLOSE)
    .close_start(T + 200 * MS, TCP_ESTABLISHED, TCP_CLOSE, 0)
    .rst_at(T + 200 * MS);
    e.ingest(up.close(T + 200 * MS));
    e.ingest(up.observe(T + 201 * MS, 5, PROXY));
    e.ingest(http(
        T + 202 * MS,
        5,
        PROXY,
        "nginx",
        "10.0.0.2:80",
        "10.0.0.7:1",
        502,
        TCP_ESTABLISHED,
    ));
    assert_eq!(gateways(&e.tick(T + 300 * MS)).len(), 1);
    e.tick(T + 10_000 * MS);
    assert_eq!(e.backlog(), 0, "join state must not grow without bound");
}

/// HAProxy writes the 5xx before closing the upstream: no observation, so
/// the join falls back to the failures of connections the writing thread
/// opened, oldest first.
#[test]
fn fallback_joins_by_owner_thread_fifo() {
    let mut ev = Vec::new();
    for (i, tid) in [(0u32, 11u32), (1, 12), (2, 11)] {
        let t = T + i as u64 * MS;
        let mut up = Sock::new(
            10 + i as u64,
            &format!("10.0.0.2:{}", 41000 + i),
            "10.0.1.9:8080",
            F_ROLE_CLIENT,
            PROXY,
            "haproxy",
            t,
        )
        .request(1, t, 0)
        .flags(F_RST_RECEIVED | F_INFLIGHT_AT_CLOSE)
        .close_start(t + 10, TCP_ESTABLISHED, TCP_CLOSE, 0)
        .rst_at(t + 10);
        up.st.owner_tid = tid;
        ev.push(up.close(t + 10));
    }
    // Thread 11 answers its two failures in order; thread 12 its one.
    ev.push(http(
        T + 5 * MS,
        11,
        PROXY,
        "haproxy",
        "10.0.0.2:80",
        "10.0.0.7:1",
        502,
        TCP_ESTABLISHED,
    ));
    ev.push(http(
        T + 6 * MS,
        12,
        PROXY,
        "haproxy",
        "10.0.0.2:80",
        "10.0.0.7:2",
        502,
        TCP_ESTABLISHED,
    ));
    ev.push(http(
        T + 7 * MS,
        11,
        PROXY,
        "haproxy",
        "10.0.0.2:80",
        "10.0.0.7:3",
        502,
        TCP_ESTABLISHED,
    ));
    let out = run(&mut engine(false), ev);
    let srcs: Vec<_> = gateways(&out)
        .iter()
        .map(|g| g.upstream.as_ref().unwrap().src.clone())
        .collect();
    assert_eq!(srcs, ["10.0.0.2:41000", "10.0.0.2:41001", "10.0.0.2:41002"]);
}

/// HAProxy answers a backend's FIN with a 502 first and closes the upstream
/// afterwards: the failure snapshot taken at the FIN (softirq, no actor)
/// joins, and the close record arriving after the 5xx still completes it.
#[test]
fn fin_failure_joins_when_the_close_comes_after_the_5xx() {
    let up = Sock::new(
        1,
        "10.0.0.2:40000",
        "10.0.1.9:8080",
        F_ROLE_CLIENT,
        PROXY,
        "haproxy",
        T,
    )
    .request(1, T, 0)
    .flags(F_PEER_FIN_FIRST | F_INFLIGHT_AT_CLOSE)
    .close_start(T + 200 * MS, TCP_ESTABLISHED, TCP_CLOSE_WAIT, 200);
    let mut snap = up.close(T + 200 * MS);
    if let crate::events::Event::Conn(c) = &mut snap {
        c.observe = true;
    }
    let out = run(
        &mut engine(false),
        vec![
            snap,
            http(
                T + 201 * MS,
                5,
                PROXY,
                "haproxy",
                "10.0.0.2:80",
                "10.0.0.7:1",
                502,
                TCP_ESTABLISHED,
            ),
            up.observe(T + 202 * MS, 5, PROXY),
            up.close(T + 203 * MS),
        ],
    );
    let g = gateways(&out);
    assert_eq!(g.len(), 1);
    assert_eq!(
        (g[0].cause, g[0].how),
        (Cause::BackendClosedBeforeResponse, How::Fin)
    );
}

/// `--comm` selects bad_gateway lines by the proxy or by the local backend.
#[test]
fn comm_filter_selects_gateways_by_proxy_or_backend() {
    let events = || {
        let up = Sock::new(
            1,
            "10.0.0.2:40000",
            "10.0.1.9:8080",
            F_ROLE_CLIENT,
            PROXY,
            "nginx",
            T,
        )
        .request(1, T, 0)
        .flags(F_RST_RECEIVED | F_INFLIGHT_AT_CLOSE)
        .close_start(T + MS, TCP_ESTABLISHED, TCP_CLOSE, 0)
        .rst_at(T + MS);
        let be = Sock::new(
            2,
            "10.0.1.9:8080",
            "10.0.0.2:40000",
            F_ROLE_SERVER,
            900,
            "node",
            T,
        )
        .flags(F_LOCAL_CLOSE_FIRST | F_RST_SENT)
        .close_start(T + MS, TCP_ESTABLISHED, TCP_CLOSE, 0);
        vec![
            be.close(T + MS),
            up.close(T + MS),
            up.observe(T + 2 * MS, 5, PROXY),
            http(
                T + 3 * MS,
                5,
                PROXY,
                "nginx",
                "10.0.0.2:80",
                "10.0.0.7:1",
                502,
                TCP_ESTABLISHED,
            ),
        ]
    };
    for (comm, want) in [("nginx", 1), ("node", 1), ("curl", 0)] {
        let mut e = Engine::new(EngineConfig {
            comms: vec![comm.into()],
            ..Default::default()
        });
        assert_eq!(
            gateways(&run(&mut e, events())).len(),
            want,
            "--comm {comm}"
        );
    }
}
