//! Every way a TCP connection ends, produced for real in a network namespace
//! the test creates, and the tracer's `conn_end` for each end: who closed,
//! how, the RST reason, the error, the cause and the idle time. Plus the
//! kernel filters and bad input.
//!
//! Run as root, one test at a time (`cargo xtask test` does):
//! `TRACER_BIN=target/release/tracer cargo test -p tests --test conn_end -- --test-threads=1`

use std::{
    process::Command,
    sync::atomic::{AtomicU16, Ordering},
    time::Duration,
};

use serde_json::Value;
use tests::{
    backend::{Backend, BackendOpts},
    iptables::IptablesRule,
    netns::Netns,
    tracer::tracer_bin,
    util::fixture,
    Tracer,
};

/// Idle time each scenario leaves before its close.
const IDLE_MS: u64 = 400;
const WAIT: Duration = Duration::from_secs(10);

/// A fresh port per scenario, so lines never mix.
fn port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    47_100 + (std::process::id() % 200) as u16 * 10 + NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Runs the socket choreography in `ns` and returns what it printed.
fn choreo(ns: &Netns, mode: &str, port: u16, idle_ms: u64) -> Value {
    let script = fixture("sockets.py");
    let out = ns
        .command("python3")
        .arg(script)
        .args([mode, &port.to_string(), &idle_ms.to_string()])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

fn start(args: &[&str]) -> Tracer {
    Tracer::start(args)
}

/// A tracer filtered on `ns`, with `extra` options.
fn trace_ns(ns: &Netns, extra: &[&str]) -> Tracer {
    let path = ns.path();
    let mut args = vec!["--netns", path.to_str().expect("utf-8")];
    args.extend_from_slice(extra);
    Tracer::start(&args)
}

/// The `conn_end` whose local end is `src` (waits for it).
fn end_of(t: &Tracer, src: &str) -> Value {
    t.wait_for(
        |l| l["event"] == "conn_end" && l["src"].as_str() == Some(src),
        WAIT,
    )
}

fn within(v: &Value, want: u64, pct: u64) -> bool {
    v.as_u64()
        .is_some_and(|x| x.abs_diff(want) * 100 <= want * pct)
}

fn check(
    v: &Value,
    closed_by: &str,
    how: &str,
    rst_reason: Option<&str>,
    error: Option<&str>,
    cause: Option<&str>,
) {
    let ctx = serde_json::to_string_pretty(v).expect("json");
    assert_eq!(v["closed_by"], closed_by, "closed_by\n{ctx}");
    assert_eq!(v["how"], how, "how\n{ctx}");
    assert_eq!(v["rst_reason"].as_str(), rst_reason, "rst_reason\n{ctx}");
    assert_eq!(v["error"].as_str(), error, "error\n{ctx}");
    assert_eq!(v["cause"].as_str(), cause, "cause\n{ctx}");
}

/// Stops the tracer: exit 0 on SIGINT, a final `stats` line, no loss.
fn stop(t: Tracer) -> Vec<Value> {
    let (status, lines) = t.stop();
    assert!(status.success(), "tracer exit on SIGINT: {status:?}");
    let last = lines.last().expect("lines");
    assert_eq!(last["event"], "stats", "{last}");
    assert_eq!(last["final"], true, "{last}");
    assert_eq!(last["lost"]["total"], 0, "{last}");
    lines
}

#[test]
fn start_line_lists_hooks() {
    let ns = Netns::new("start").expect("netns");
    let t = trace_ns(&ns, &[]);
    let first = t.lines()[0].clone();
    assert_eq!(first["event"], "start");
    assert!(
        first["version"].is_string() && first["kernel"].is_string(),
        "{first}"
    );
    let hooks: Vec<&str> = first["hooks"]
        .as_array()
        .expect("hooks")
        .iter()
        .filter(|h| h["attached"] == true)
        .filter_map(|h| h["name"].as_str())
        .collect();
    for h in [
        "sock:inet_sock_set_state",
        "tcp:tcp_send_reset",
        "tcp:tcp_receive_reset",
        "tcp:tcp_destroy_sock",
        "sock:inet_sk_error_report",
    ] {
        assert!(hooks.contains(&h), "{h} attached: {first}");
    }
    assert!(
        first["ts"].as_str().is_some_and(|s| s.ends_with('Z')),
        "{first}"
    );
    stop(t);
}

/// Local FIN on one end is a peer FIN on the other; both idle ~400 ms.
/// Normal ends are reported with --all only.
#[test]
fn local_fin_and_peer_fin() {
    let ns = Netns::new("fin").expect("netns");
    let t = trace_ns(&ns, &["--all"]);
    let r = choreo(&ns, "local_fin", port(), IDLE_MS);
    let client = end_of(&t, r["client"].as_str().expect("client"));
    let server = end_of(&t, r["server"].as_str().expect("server"));
    check(&client, "local", "fin", None, None, None);
    check(&server, "peer", "fin", None, None, None);
    assert_eq!(client["role"], "client");
    assert_eq!(server["role"], "server");
    assert_eq!(client["comm"], "python3");
    assert_eq!(client["dst"], server["src"]);
    assert_eq!(client["netns"].as_u64(), Some(ns.inode()));
    assert!(
        within(&client["idle_ms"], IDLE_MS, 10),
        "idle {}",
        client["idle_ms"]
    );
    assert!(
        within(&server["idle_ms"], IDLE_MS, 10),
        "idle {}",
        server["idle_ms"]
    );
    assert!(
        client["age_ms"].as_u64().is_some_and(|a| a >= IDLE_MS),
        "{client}"
    );
    assert!(
        client["bytes_sent"].as_u64() >= Some(20) && client["bytes_received"].as_u64() >= Some(20),
        "{client}"
    );
    stop(t);
}

/// Without --all a graceful close is not reported.
#[test]
fn graceful_close_is_quiet_by_default() {
    let ns = Netns::new("quiet").expect("netns");
    let t = trace_ns(&ns, &[]);
    let r = choreo(&ns, "local_fin", port(), 50);
    let rst = choreo(&ns, "local_rst", port(), 50);
    end_of(&t, rst["client"].as_str().expect("client"));
    let lines = stop(t);
    let quiet = r["client"].as_str().expect("client");
    assert!(
        !lines
            .iter()
            .any(|l| l["event"] == "conn_end" && l["src"].as_str() == Some(quiet)),
        "graceful close reported without --all"
    );
}

/// SO_LINGER 0: a local RST (the kernel names it TCP_STATE), seen by the
/// other end as a peer RST with ECONNRESET.
#[test]
fn local_rst_and_peer_rst() {
    let ns = Netns::new("rst").expect("netns");
    let t = trace_ns(&ns, &[]);
    let r = choreo(&ns, "local_rst", port(), IDLE_MS);
    let client = end_of(&t, r["client"].as_str().expect("client"));
    let server = end_of(&t, r["server"].as_str().expect("server"));
    check(&client, "local", "rst", Some("TCP_STATE"), None, None);
    check(&server, "peer", "rst", None, Some("ECONNRESET"), None);
    assert!(
        within(&client["idle_ms"], IDLE_MS, 10),
        "idle {}",
        client["idle_ms"]
    );
    assert!(
        within(&server["idle_ms"], IDLE_MS, 10),
        "idle {}",
        server["idle_ms"]
    );
    assert_eq!(r["error"], 104, "the server application saw ECONNRESET");
    stop(t);
}

#[test]
fn connection_refused() {
    let ns = Netns::new("refused").expect("netns");
    let t = trace_ns(&ns, &[]);
    let r = choreo(&ns, "refused", port(), 0);
    assert_eq!(r["error"], 111);
    let client = end_of(&t, r["client"].as_str().expect("client"));
    check(
        &client,
        "peer",
        "refused",
        None,
        Some("ECONNREFUSED"),
        Some("connection_refused"),
    );
    assert_eq!(client["dst"], r["server"]);
    assert_eq!(
        client["idle_ms"],
        Value::Null,
        "never connected: no idle time"
    );
    stop(t);
}

/// SYNs dropped by iptables; the kernel gives up (tcp_syn_retries=1 in the
/// test's namespace) with ETIMEDOUT.
#[test]
fn connect_timeout() {
    let ns = Netns::new("timeout").expect("netns");
    let p = port();
    let _rule = IptablesRule::drop_incoming_syn(&ns, p).expect("iptables");
    ns.exec(&["sysctl", "-qw", "net.ipv4.tcp_syn_retries=1"])
        .expect("sysctl");
    let t = trace_ns(&ns, &[]);
    let r = choreo(&ns, "timeout", p, 0);
    assert_eq!(r["error"], 110, "{r}");
    let client = end_of(&t, r["client"].as_str().expect("client"));
    check(
        &client,
        "local",
        "timeout",
        None,
        Some("ETIMEDOUT"),
        Some("connect_timeout"),
    );
    let age = client["age_ms"].as_u64().expect("age");
    let elapsed = r["elapsed_ms"].as_u64().expect("elapsed");
    assert!(
        age.abs_diff(elapsed) * 10 <= elapsed,
        "age {age} vs connect time {elapsed}"
    );
    stop(t);
}

/// The server closes with a request it never read: the kernel resets
/// (TCP_ABORT_ON_CLOSE); the client had that request in flight.
#[test]
fn close_with_unread_data() {
    let ns = Netns::new("unread").expect("netns");
    let t = trace_ns(&ns, &[]);
    let r = choreo(&ns, "unread", port(), IDLE_MS);
    let client = end_of(&t, r["client"].as_str().expect("client"));
    let server = end_of(&t, r["server"].as_str().expect("server"));
    check(
        &server,
        "local",
        "rst",
        Some("TCP_ABORT_ON_CLOSE"),
        None,
        None,
    );
    check(
        &client,
        "peer",
        "rst",
        None,
        Some("ECONNRESET"),
        Some("backend_reset"),
    );
    assert!(
        within(&server["idle_ms"], IDLE_MS, 10),
        "idle {}",
        server["idle_ms"]
    );
    assert_eq!(client["requests"], 2);
    stop(t);
}

/// Seed 001 from the backend's side with a real Node.js `http` server:
/// it closes the idle keep-alive connection (its FIN dropped by iptables so
/// the client does not learn of it), the client sends the next request,
/// the kernel answers with RST (TCP_ABORT_ON_DATA).
#[test]
fn server_side_keepalive_race_with_node() {
    let ns = Netns::new("race").expect("netns");
    let p = port();
    let keep_alive_ms = 1000;
    // Node closes keepAliveTimeout + 1 s after the last response (its
    // fixed buffer in _http_server.js).
    let node_idle_ms = keep_alive_ms + 1000;
    let backend = Backend::start(
        &ns,
        "127.0.0.1",
        p,
        BackendOpts::default().keep_alive_timeout_ms(keep_alive_ms),
    )
    .expect("node backend");
    let _rule = IptablesRule::drop_outgoing_fin(&ns, p).expect("iptables");
    let t = trace_ns(&ns, &[]);
    let r = choreo(&ns, "keepalive_race", p, node_idle_ms + 800);
    let client = r["client"].as_str().expect("client");
    let server = t.wait_for(
        |l| l["event"] == "conn_end" && l["dst"].as_str() == Some(client),
        WAIT,
    );
    check(
        &server,
        "local",
        "rst",
        Some("TCP_ABORT_ON_DATA"),
        None,
        Some("backend_closed_idle_keepalive"),
    );
    assert_eq!(server["role"], "server");
    assert_eq!(server["comm"], "node");
    assert_eq!(server["pid"].as_u64(), Some(backend.pid() as u64));
    assert!(
        within(&server["idle_ms"], node_idle_ms, 10),
        "idle {} vs {node_idle_ms}",
        server["idle_ms"]
    );
    assert!(
        server["explanation"]
            .as_str()
            .is_some_and(|e| e.contains("keep-alive")),
        "{server}"
    );
    let client_end = end_of(&t, client);
    check(
        &client_end,
        "peer",
        "rst",
        None,
        Some("ECONNRESET"),
        Some("backend_closed_idle_keepalive"),
    );
    stop(t);
}

/// `--port` filters in the kernel: resets on another port are not reported.
#[test]
fn port_filter() {
    let ns = Netns::new("port").expect("netns");
    let (wanted, other) = (port(), port());
    let t = start(&["--port", &wanted.to_string()]);
    let a = choreo(&ns, "local_rst", wanted, 50);
    let b = choreo(&ns, "local_rst", other, 50);
    end_of(&t, a["client"].as_str().expect("client"));
    std::thread::sleep(Duration::from_millis(300));
    let lines = stop(t);
    let ends: Vec<&Value> = lines.iter().filter(|l| l["event"] == "conn_end").collect();
    let other_s = other.to_string();
    assert!(
        !ends.iter().any(|l| [&l["src"], &l["dst"]].iter().any(|a| a
            .as_str()
            .is_some_and(|a| a.ends_with(&format!(":{other_s}"))))),
        "port {other} reported: {ends:#?}"
    );
    assert!(
        ends.iter().all(|l| [&l["src"], &l["dst"]].iter().any(|a| a
            .as_str()
            .is_some_and(|a| a.ends_with(&format!(":{wanted}"))))),
        "{ends:#?}"
    );
    let _ = b;
}

/// `--netns` filters in the kernel by namespace inode.
#[test]
fn netns_filter() {
    let (a, b) = (
        Netns::new("nsa").expect("netns"),
        Netns::new("nsb").expect("netns"),
    );
    let t = trace_ns(&a, &[]);
    let ra = choreo(&a, "local_rst", port(), 50);
    choreo(&b, "local_rst", port(), 50);
    end_of(&t, ra["client"].as_str().expect("client"));
    std::thread::sleep(Duration::from_millis(300));
    let lines = stop(t);
    let ends: Vec<&Value> = lines.iter().filter(|l| l["event"] == "conn_end").collect();
    assert!(!ends.is_empty());
    assert!(
        ends.iter().all(|l| l["netns"].as_u64() == Some(a.inode())),
        "other namespace reported: {ends:#?}"
    );
}

fn run_tracer(args: &[&str]) -> std::process::Output {
    Command::new(tracer_bin())
        .args(args)
        .output()
        .expect("run tracer")
}

#[test]
fn bad_flags_exit_2_with_usage() {
    for args in [
        &["--bogus"][..],
        &["--port", "0"],
        &["--port", "http"],
        &["--duration", "-1"],
        &["--pod", "noslash"],
    ] {
        let out = run_tracer(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("Usage") || err.contains("usage") || err.contains("error"),
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
    }
}

#[test]
fn unwritable_output_fails_before_attaching() {
    let out = run_tracer(&["--output", "/nonexistent-dir/x.ndjson", "--duration", "1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--output") && err.contains("/nonexistent-dir/x.ndjson"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn netns_path_that_is_not_a_namespace() {
    let out = run_tracer(&["--netns", "/etc/hostname", "--duration", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a network namespace"));
}

/// Without root (or CAP_BPF + CAP_PERFMON): one sentence, exit 1.
#[test]
fn unprivileged_exits_1() {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(tracer_bin())
        .args(["--duration", "1"])
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs root"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
}

/// `--output` gets the same lines; `--duration` stops by itself with exit 0.
#[test]
fn output_file_and_duration() {
    let dir = std::env::temp_dir().join(format!("t502-out-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("events.ndjson");
    let out = run_tracer(&[
        "--output",
        path.to_str().expect("utf-8"),
        "--duration",
        "1",
        "--stats-interval",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&path).expect("output file");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines[0]["event"], "start");
    assert_eq!(lines.last().expect("last")["event"], "stats");
    assert_eq!(lines.last().expect("last")["final"], true);
    std::fs::remove_dir_all(&dir).ok();
}

/// The classic tracepoint stays the fallback for kernels without BTF raw
/// tracepoints: forced here, the same verdicts come out, and the `start`
/// line says which hook is in use.
#[test]
fn classic_state_tracepoint_fallback() {
    let ns = Netns::new("classic").expect("netns");
    let t = trace_ns(&ns, &["--state-hook", "tracepoint", "--all"]);
    assert_eq!(t.lines()[0]["state_hook"], "tracepoint", "{}", t.lines()[0]);
    let fin = choreo(&ns, "local_fin", port(), IDLE_MS);
    let rst = choreo(&ns, "local_rst", port(), 50);
    let refused = choreo(&ns, "refused", port(), 0);
    let f = end_of(&t, fin["client"].as_str().expect("client"));
    check(&f, "local", "fin", None, None, None);
    assert!(within(&f["idle_ms"], IDLE_MS, 10), "idle {}", f["idle_ms"]);
    assert_eq!(f["role"], "client");
    let s = end_of(&t, fin["server"].as_str().expect("server"));
    assert_eq!(s["role"], "server");
    let r = end_of(&t, rst["client"].as_str().expect("client"));
    check(&r, "local", "rst", Some("TCP_STATE"), None, None);
    let c = end_of(&t, refused["client"].as_str().expect("client"));
    check(
        &c,
        "peer",
        "refused",
        None,
        Some("ECONNREFUSED"),
        Some("connection_refused"),
    );
    stop(t);
}

/// By default this kernel takes the cheaper BTF tracepoints.
#[test]
fn raw_state_tracepoint_by_default() {
    let ns = Netns::new("raw").expect("netns");
    let t = trace_ns(&ns, &[]);
    assert_eq!(t.lines()[0]["state_hook"], "tp_btf", "{}", t.lines()[0]);
    stop(t);
}
