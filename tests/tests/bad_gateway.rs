//! Every 5xx a real proxy writes gets exactly one `bad_gateway` line with the
//! right cause, and healthy traffic gets none. Real nginx / HAProxy / Node.js
//! processes in network namespaces, real 502s, the real tracer.
//!
//! Run as root, one test at a time (`cargo xtask test` does):
//! `TRACER_BIN=target/release/tracer cargo test -p tests --test bad_gateway -- --test-threads=1`

use std::{collections::HashMap, time::Duration};

use serde_json::Value;
use tests::{
    scenarios::{self, Scenario, Topology, MIXED_REQUESTS},
    Tracer,
};

/// The tracer, watching the proxy's and the backend's namespaces.
fn tracer(t: &Topology) -> Tracer {
    let proxy = t.proxy.path();
    let backend = t.backend.path();
    Tracer::start(&[
        "--netns",
        proxy.to_str().expect("utf-8 path"),
        "--netns",
        backend.to_str().expect("utf-8 path"),
    ])
}

const WAIT: Duration = Duration::from_secs(10);

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

/// Waits for the key request's `bad_gateway`, stops the tracer, checks that
/// there is exactly one for that client and that the tracer exited cleanly.
fn verdict(s: Scenario<Tracer>) -> (Value, Scenario<()>) {
    let client = s
        .key_client()
        .unwrap_or_else(|| panic!("client address unknown\n{}", s.describe()))
        .to_string();
    assert_eq!(
        s.key_result().status,
        s.expected_status,
        "client status\n{}",
        s.describe()
    );
    let Scenario {
        name,
        hook: tracer,
        results,
        requests,
        key,
        expected_status,
        proxy,
        proxy_pids,
        proxy_addr,
        upstream_addr,
        backends,
        rules,
        topo,
    } = s;
    let s = Scenario {
        name,
        hook: (),
        results,
        requests,
        key,
        expected_status,
        proxy,
        proxy_pids,
        proxy_addr,
        upstream_addr,
        backends,
        rules,
        topo,
    };
    let found = tracer.wait_until(WAIT, |l| {
        l["event"] == "bad_gateway" && l["client"].as_str() == Some(client.as_str())
    });
    let (status, lines) = tracer.stop();
    let Some(found) = found else {
        panic!(
            "no bad_gateway for client {client}\n{}\ntracer lines:\n{}",
            s.describe(),
            lines
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
    };
    assert!(status.success(), "tracer exit status {status:?}");
    let same: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "bad_gateway" && l["client"].as_str() == Some(client.as_str()))
        .collect();
    assert_eq!(
        same.len(),
        1,
        "exactly one bad_gateway for {client}: {same:#?}"
    );
    let last = lines.last().expect("lines");
    assert_eq!(last["event"], "stats", "final line is stats: {last}");
    assert_eq!(last["final"], true);
    assert_eq!(last["lost"]["total"], 0, "no loss: {last}");
    println!("{}", serde_json::to_string_pretty(&found).expect("json"));
    (found, s)
}

/// Checks cause/closed_by/how/status and the proxy, client and upstream.
fn expect(v: &Value, s: &Scenario<()>, cause: &str, closed_by: &str, how: &str) {
    let ctx = || {
        format!(
            "{}\n{}",
            serde_json::to_string_pretty(v).expect("json"),
            s.describe()
        )
    };
    assert_eq!(v["cause"], cause, "cause\n{}", ctx());
    assert_eq!(v["closed_by"], closed_by, "closed_by\n{}", ctx());
    assert_eq!(v["how"], how, "how\n{}", ctx());
    assert_eq!(
        v["status"].as_u64(),
        s.expected_status.map(u64::from),
        "status\n{}",
        ctx()
    );
    let pid = v["proxy"]["pid"].as_u64().expect("proxy.pid") as u32;
    assert!(
        s.proxy_pids.contains(&pid),
        "proxy pid {pid} not in {:?}\n{}",
        s.proxy_pids,
        ctx()
    );
    assert_eq!(v["proxy"]["comm"], s.proxy.comm(), "proxy comm\n{}", ctx());
    assert!(
        v["explanation"].as_str().is_some_and(|e| e.len() > 20),
        "explanation\n{}",
        ctx()
    );
    let tl = v["timeline"].as_array().expect("timeline");
    assert!(!tl.is_empty(), "timeline\n{}", ctx());
    assert_eq!(
        tl.last().expect("step")["t_ms"],
        0.0,
        "timeline ends at the 5xx\n{}",
        ctx()
    );
    if cause != "no_upstream_connection" {
        assert_eq!(
            str_at(v, &["upstream", "dst"]),
            Some(s.upstream_addr.as_str()),
            "upstream.dst\n{}",
            ctx()
        );
        assert!(
            str_at(v, &["upstream", "src"])
                .is_some_and(|a| a.starts_with(s.topo.proxy_upstream_ip())),
            "upstream.src is the proxy's address toward the backend\n{}",
            ctx()
        );
    }
}

fn within(v: &Value, want_ms: f64, pct: f64) -> bool {
    v.as_f64()
        .is_some_and(|x| (x - want_ms).abs() <= want_ms * pct / 100.0)
}

#[test]
fn keepalive_race_seed_001() {
    let (v, s) = verdict(scenarios::keepalive_race(tracer));
    expect(&v, &s, "backend_closed_idle_keepalive", "backend", "rst");
    assert_eq!(
        v["rst_reason"], "TCP_ABORT_ON_DATA",
        "the backend's kernel named the RST"
    );
    assert_eq!(
        v["requests_on_conn"], 2,
        "the POST was the 2nd request on the pooled connection"
    );
    // Node closes an idle keep-alive connection keepAliveTimeout + 1 s after
    // the last response (its fixed buffer): 2,000 ms here.
    let want = (scenarios::RACE_KEEPALIVE_TIMEOUT_MS + scenarios::NODE_KEEPALIVE_BUFFER_MS) as f64;
    assert!(
        within(&v["idle_ms"], want, 10.0),
        "idle_ms {} not within 10% of {want}",
        v["idle_ms"]
    );
    assert_eq!(v["error"], "ECONNRESET");
}

/// The same race with `--port` filters instead of namespaces: the proxy's
/// sends on the two listed ports pass the send hook's filter check (the
/// request count and the 5xx come from them), others stop there.
#[test]
fn keepalive_race_with_port_filter() {
    let (v, s) = verdict(scenarios::keepalive_race(|_| {
        Tracer::start(&[
            "--port",
            &scenarios::PROXY_PORT.to_string(),
            "--port",
            &scenarios::BACKEND_PORT.to_string(),
        ])
    }));
    expect(&v, &s, "backend_closed_idle_keepalive", "backend", "rst");
    assert_eq!(v["requests_on_conn"], 2);
}

#[test]
fn backend_closed_before_response() {
    let (v, s) = verdict(scenarios::closed_before_response(tracer));
    expect(&v, &s, "backend_closed_before_response", "backend", "fin");
}

#[test]
fn backend_reset_mid_request() {
    let (v, s) = verdict(scenarios::backend_reset(tracer));
    expect(&v, &s, "backend_reset", "backend", "rst");
    assert_eq!(v["error"], "ECONNRESET");
    // Node's resetAndDestroy() is SO_LINGER 0: tcp_disconnect() sends the RST.
    assert_eq!(v["rst_reason"], "TCP_STATE");
}

#[test]
fn backend_process_exited() {
    let (v, s) = verdict(scenarios::process_exited(tracer));
    expect(&v, &s, "backend_process_exited", "backend", "fin");
    assert!(
        v["explanation"].as_str().expect("text").contains("node"),
        "names the process"
    );
}

#[test]
fn connection_refused() {
    let (v, s) = verdict(scenarios::connection_refused(tracer));
    expect(&v, &s, "connection_refused", "backend", "refused");
    assert_eq!(v["error"], "ECONNREFUSED");
    assert_eq!(v["idle_ms"], Value::Null);
}

#[test]
fn connect_timeout() {
    let (v, s) = verdict(scenarios::connect_timeout(tracer));
    expect(&v, &s, "connect_timeout", "none", "timeout");
}

#[test]
fn proxy_timeout() {
    let (v, s) = verdict(scenarios::proxy_timeout(tracer));
    expect(&v, &s, "proxy_timeout", "proxy", "timeout");
}

#[test]
fn client_aborted() {
    let (v, s) = verdict(scenarios::client_aborted(true, tracer));
    expect(&v, &s, "client_aborted", "client", "fin");
}

/// nginx's default answer to a client that leaves is a 499 with nothing
/// written: no 5xx, so no bad_gateway.
#[test]
fn client_aborted_default_writes_nothing() {
    let s = scenarios::client_aborted(false, tracer);
    std::thread::sleep(Duration::from_secs(1));
    let (status, lines) = s.hook.stop();
    assert!(status.success());
    let bad: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "bad_gateway")
        .collect();
    assert!(bad.is_empty(), "no 5xx was written: {bad:#?}");
}

#[test]
fn no_upstream_connection() {
    let (v, s) = verdict(scenarios::no_upstream_connection(tracer));
    expect(&v, &s, "no_upstream_connection", "none", "none");
    assert_eq!(v["upstream"], Value::Null);
}

#[test]
fn haproxy_connection_refused() {
    let (v, s) = verdict(scenarios::haproxy_refused(tracer));
    expect(&v, &s, "connection_refused", "backend", "refused");
}

#[test]
fn haproxy_backend_reset() {
    let (v, s) = verdict(scenarios::haproxy_reset(tracer));
    expect(&v, &s, "backend_reset", "backend", "rst");
}

#[test]
fn haproxy_backend_closed_before_response() {
    let (v, s) = verdict(scenarios::haproxy_closed_before_response(tracer));
    expect(&v, &s, "backend_closed_before_response", "backend", "fin");
}

/// 400 requests, 200 in flight, across a healthy and a resetting backend:
/// every 502 a client saw has exactly one bad_gateway naming that client and
/// the faulty backend; no 2xx has one (counted per client address, which a
/// later request may reuse).
#[test]
fn mixed_load_joins_each_502_to_its_own_upstream() {
    let s = scenarios::mixed_load(tracer);
    let failed: Vec<String> = s
        .results
        .iter()
        .filter(|r| r.status == Some(502))
        .filter_map(|r| r.local.clone())
        .collect();
    let ok: Vec<String> = s
        .results
        .iter()
        .filter(|r| r.status == Some(200))
        .filter_map(|r| r.local.clone())
        .collect();
    assert_eq!(
        failed.len() + ok.len(),
        MIXED_REQUESTS as usize,
        "{}",
        s.describe()
    );
    assert!(
        failed.len() >= 50,
        "enough 502s to mean something: {}",
        failed.len()
    );
    let n = failed.len();
    let deadline = std::time::Instant::now() + WAIT;
    while s.hook.events("bad_gateway").len() < n && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, lines) = s.hook.stop();
    assert!(status.success());
    let gateways: Vec<&Value> = lines
        .iter()
        .filter(|l| l["event"] == "bad_gateway")
        .collect();
    // A client port can come back in a later request: nginx closes first,
    // so the client's end keeps no TIME_WAIT and connect() may pick the
    // port again. So count per address: as many lines as 502s there.
    let mut want: HashMap<&str, usize> = HashMap::new();
    for client in failed.iter().chain(&ok) {
        want.entry(client).or_default();
    }
    for client in &failed {
        *want.entry(client).or_default() += 1;
    }
    for (client, n) in want {
        let mine: Vec<_> = gateways
            .iter()
            .filter(|g| g["client"].as_str() == Some(client))
            .collect();
        assert_eq!(mine.len(), n, "bad_gateway lines for client {client}");
        for g in mine {
            assert_eq!(
                str_at(g, &["upstream", "dst"]),
                Some(s.upstream_addr.as_str()),
                "{g}"
            );
            assert_eq!(g["status"], 502);
            assert_eq!(g["cause"], "backend_reset", "{g}");
        }
    }
    assert_eq!(gateways.len(), failed.len(), "no extra bad_gateway lines");
    let last = lines.last().expect("stats");
    assert_eq!(last["lost"]["total"], 0, "{last}");
}

/// 5,000 healthy requests with keep-alive churn: no bad_gateway, and no
/// connection end is given a cause.
#[test]
fn healthy_control_has_no_false_verdict() {
    let s = scenarios::healthy_control(tracer);
    assert!(
        s.results.iter().all(|r| r.status == Some(200)),
        "{}",
        s.describe()
    );
    std::thread::sleep(Duration::from_millis(500));
    let (status, lines) = s.hook.stop();
    assert!(status.success());
    let bad: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "bad_gateway")
        .collect();
    assert!(bad.is_empty(), "false bad_gateway: {bad:#?}");
    let caused: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "conn_end" && !l["cause"].is_null())
        .collect();
    assert!(
        caused.is_empty(),
        "false cause on a healthy connection: {caused:#?}"
    );
    let last = lines.last().expect("stats");
    assert_eq!(last["lost"]["total"], 0, "{last}");
    assert!(
        last["seen"]["state_changes"].as_u64().unwrap_or(0) > 1000,
        "the tracer saw the traffic: {last}"
    );
    // With nothing failing, responses are only sampled for a status line
    // (one per process per 20 ms), not all read: the proxy and the backend
    // wrote 5,000 responses each.
    let checked = last["seen"]["status_lines_checked"].as_u64().unwrap_or(0);
    let responses = 2 * u64::from(scenarios::HEALTHY_REQUESTS);
    assert!(
        checked > 0 && checked * 5 < responses,
        "{checked} of {responses} responses read on healthy traffic: {last}"
    );
    // Closed sockets give their table slot back: what is left is the few
    // connections still open (nginx's idle upstream pool), not the ≈ 1,000
    // sockets this run opened and closed.
    let tracked = &last["tracked"];
    let in_table = tracked["table"].as_u64().expect("tracked.table");
    assert!(in_table < 200, "socket table not emptied: {last}");
    assert_eq!(tracked["overflowed"], 0, "{last}");
}
