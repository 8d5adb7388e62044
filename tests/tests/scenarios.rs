//! Harness self-tests: every scenario really produces the status it claims,
//! as seen by the client and logged by the proxy. No tracer involved.
//!
//! Run as root, one test at a time:
//! `cargo test -p tests --test scenarios -- --test-threads=1`

use tests::scenarios::{self, Scenario, HEALTHY_REQUESTS, MIXED_REQUESTS};

fn no_hook(_: &scenarios::Topology) {}

/// The key request got `expected_status`, and the proxy logged the same.
fn assert_key_status<H>(s: &Scenario<H>) {
    let r = s.key_result();
    assert_eq!(
        r.status,
        s.expected_status,
        "client status of the key request\n{}",
        s.describe()
    );
    assert!(
        r.local.is_some(),
        "client connected, so it knows its address\n{}",
        s.describe()
    );
    if let Some(st) = s.expected_status {
        assert_eq!(
            s.requests[s.key].proxy_status,
            Some(st as i32),
            "proxy logged the same status for that client address\n{}",
            s.describe()
        );
    }
}

fn assert_error_log_contains<H>(s: &Scenario<H>, needle: &str) {
    let log = s.proxy.error_log();
    assert!(
        log.contains(needle),
        "proxy log lacks {needle:?}\n{}",
        s.describe()
    );
}

#[test]
fn keepalive_race_gives_502_on_reused_connection() {
    let s = scenarios::keepalive_race(no_hook);
    println!("{}", s.describe());
    assert_eq!(s.results.len(), 2, "{}", s.describe());
    assert_eq!(s.results[0].status, Some(200), "warm-up\n{}", s.describe());
    assert_key_status(&s);
    // The backend's FIN was really dropped (the rule matched), and nginx
    // reports the failure on the reused connection as a reset.
    let dropped = s.rules[0].packets().expect("iptables counters");
    assert!(
        dropped >= 1,
        "FIN drop rule never matched\n{}",
        s.describe()
    );
    assert_error_log_contains(
        &s,
        "(104: Connection reset by peer) while reading response header from upstream",
    );
    // Both requests went to the backend over the same upstream address.
    assert_eq!(
        s.requests[1].upstream_addr.as_deref(),
        Some(s.upstream_addr.as_str())
    );
}

#[test]
fn closed_before_response_gives_502() {
    let s = scenarios::closed_before_response(no_hook);
    println!("{}", s.describe());
    assert_key_status(&s);
    assert_error_log_contains(
        &s,
        "upstream prematurely closed connection while reading response header from upstream",
    );
}

#[test]
fn backend_reset_gives_502() {
    let s = scenarios::backend_reset(no_hook);
    println!("{}", s.describe());
    assert_key_status(&s);
    assert_error_log_contains(
        &s,
        "recv() failed (104: Connection reset by peer) while reading response header from upstream",
    );
}

#[test]
fn process_exited_gives_502_then_recovers() {
    let s = scenarios::process_exited(no_hook);
    println!("{}", s.describe());
    assert_key_status(&s);
    assert_error_log_contains(&s, "while reading response header from upstream");
    assert_eq!(s.results.len(), 2, "{}", s.describe());
    assert_eq!(
        s.results[1].status,
        Some(200),
        "after restart\n{}",
        s.describe()
    );
}

#[test]
fn connection_refused_gives_502() {
    let s = scenarios::connection_refused(no_hook);
    println!("{}", s.describe());
    assert_key_status(&s);
    assert_error_log_contains(
        &s,
        "connect() failed (111: Connection refused) while connecting to upstream",
    );
}

#[test]
fn connect_timeout_gives_504() {
    let s = scenarios::connect_timeout(no_hook);
    println!("{}", s.describe());
    assert_key_status(&s);
    assert_error_log_contains(
        &s,
        "upstream timed out (110: Connection timed out) while connecting to upstream",
    );
    let r = s.key_result();
    let ms = r.t_end_ms - r.t_start_ms;
    assert!(
        (900.0..3000.0).contains(&ms),
        "took {ms} ms\n{}",
        s.describe()
    );
}

#[test]
fn proxy_timeout_gives_504() {
    let s = scenarios::proxy_timeout(no_hook);
    println!("{}", s.describe());
    assert_key_status(&s);
    assert_error_log_contains(
        &s,
        "upstream timed out (110: Connection timed out) while reading response header from upstream",
    );
    let r = s.key_result();
    let ms = r.t_end_ms - r.t_start_ms;
    assert!(
        (900.0..2500.0).contains(&ms),
        "took {ms} ms\n{}",
        s.describe()
    );
}

#[test]
fn client_aborted_half_close_with_ignore_client_abort_gets_504() {
    let s = scenarios::client_aborted(true, no_hook);
    println!("{}", s.describe());
    assert_key_status(&s);
    assert_error_log_contains(
        &s,
        "upstream timed out (110: Connection timed out) while reading response header from upstream",
    );
}

#[test]
fn client_aborted_half_close_default_is_499_without_response() {
    let s = scenarios::client_aborted(false, no_hook);
    println!("{}", s.describe());
    let r = s.key_result();
    assert_eq!(r.status, None, "{}", s.describe());
    assert_eq!(
        r.error.as_deref(),
        Some("eof_before_response"),
        "{}",
        s.describe()
    );
    assert_eq!(s.requests[0].proxy_status, Some(499), "{}", s.describe());
    assert_error_log_contains(&s, "client prematurely closed connection");
}

#[test]
fn no_upstream_connection_gives_502() {
    let s = scenarios::no_upstream_connection(no_hook);
    println!("{}", s.describe());
    assert_key_status(&s);
    assert_error_log_contains(&s, "no live upstreams while connecting to upstream");
    assert_eq!(
        s.requests[0].upstream_addr.as_deref(),
        Some("backend"),
        "nginx logs the upstream group name when no peer was tried\n{}",
        s.describe()
    );
}

#[test]
fn haproxy_refused_gives_503() {
    let s = scenarios::haproxy_refused(no_hook);
    println!("{}", s.describe());
    assert_key_status(&s);
    assert_eq!(
        s.requests[0].termination.as_deref(),
        Some("SC--"),
        "{}",
        s.describe()
    );
}

#[test]
fn haproxy_reset_gives_502() {
    let s = scenarios::haproxy_reset(no_hook);
    println!("{}", s.describe());
    assert_key_status(&s);
    assert_eq!(
        s.requests[0].termination.as_deref(),
        Some("SH--"),
        "{}",
        s.describe()
    );
}

#[test]
fn haproxy_closed_before_response_gives_502() {
    let s = scenarios::haproxy_closed_before_response(no_hook);
    println!("{}", s.describe());
    assert_key_status(&s);
    assert_eq!(
        s.requests[0].termination.as_deref(),
        Some("SH--"),
        "{}",
        s.describe()
    );
}

#[test]
fn mixed_load_502s_come_from_the_faulty_backend() {
    let s = scenarios::mixed_load(no_hook);
    println!("{}", s.describe());
    assert_eq!(s.results.len(), MIXED_REQUESTS as usize);
    let good = s.backends[0].addr();
    let bad = s.backends[1].addr();
    let (mut n200, mut n502) = (0, 0);
    for v in &s.requests {
        let up = v
            .upstream_addr
            .as_deref()
            .unwrap_or_else(|| panic!("no access-log line for {:?}\n{}", v.result, s.describe()));
        match v.result.status {
            Some(200) => {
                n200 += 1;
                assert_eq!(up, good, "{:?}", v.result);
            }
            Some(502) => {
                n502 += 1;
                assert_eq!(up, bad, "{:?}", v.result);
            }
            other => panic!(
                "unexpected status {other:?} {:?}\n{}",
                v.result,
                s.describe()
            ),
        }
        assert_eq!(v.proxy_status.map(|x| x as u16), v.result.status);
    }
    // Round robin over two servers: roughly half each.
    assert!(
        (150..=250).contains(&n502),
        "{n200} × 200, {n502} × 502\n{}",
        s.describe()
    );
    // Every request had its own client address.
    let mut locals: Vec<_> = s.results.iter().filter_map(|r| r.local.clone()).collect();
    locals.sort();
    locals.dedup();
    assert_eq!(locals.len(), MIXED_REQUESTS as usize);
    // Really ≥ 200 in flight at once: the 200th request started before the
    // first one ended.
    let mut starts: Vec<f64> = s.results.iter().map(|r| r.t_start_ms).collect();
    starts.sort_by(f64::total_cmp);
    let first_end = s
        .results
        .iter()
        .map(|r| r.t_end_ms)
        .fold(f64::INFINITY, f64::min);
    assert!(
        starts[199] < first_end,
        "fewer than 200 requests in flight at once"
    );
}

#[test]
fn healthy_control_all_200() {
    let s = scenarios::healthy_control(no_hook);
    println!("{}", s.describe());
    assert_eq!(s.results.len(), HEALTHY_REQUESTS as usize);
    let bad: Vec<_> = s
        .results
        .iter()
        .filter(|r| r.status != Some(200))
        .take(10)
        .collect();
    assert!(bad.is_empty(), "non-200: {bad:?}\n{}", s.describe());
    let conns: std::collections::HashSet<_> = s.results.iter().filter_map(|r| r.conn).collect();
    assert!(
        conns.len() >= 200,
        "keep-alive churn: only {} client connections",
        conns.len()
    );
    let log = s.nginx().expect("nginx").access_log();
    assert_eq!(log.len(), HEALTHY_REQUESTS as usize);
    assert!(log.iter().all(|e| e.status == 200));
    let errors = s.nginx().expect("nginx").error_lines();
    assert!(errors.is_empty(), "nginx errors: {errors:?}");
}
