//! Self-tests of the harness building blocks (namespaces, links, processes,
//! iptables guards, client features, the `Tracer` wrapper with a fake
//! tracer). Run as root: `cargo test -p tests --test harness -- --test-threads=1`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::backend::node_bin;
use tests::tracer::STOP_GRACE;
use tests::{
    fixture, wait_port, Backend, BackendOpts, Client, IptablesRule, Link, Netns, Plan, Side, Step,
    TempDir, Tracer,
};

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn netns_is_created_and_deleted() {
    let ns = Netns::new("h").expect("netns");
    let path: PathBuf = ns.path();
    assert!(path.exists());
    assert!(ns.inode() > 0);
    let out = ns.exec(&["ip", "-o", "link", "show", "lo"]).expect("exec");
    assert!(out.contains("UP") || out.contains("UNKNOWN"), "{out}");
    // The inode is the netns id the kernel reports for that namespace.
    let inside = ns
        .exec(&["readlink", "/proc/self/ns/net"])
        .expect("readlink");
    assert_eq!(inside.trim(), format!("net:[{}]", ns.inode()));
    drop(ns);
    assert!(!path.exists(), "namespace not deleted");
}

#[test]
fn link_connects_two_namespaces() {
    let a = Netns::new("a").expect("netns");
    let b = Netns::new("b").expect("netns");
    let link = Link::new(&a, &b).expect("link");
    assert_eq!(link.a_ip, format!("10.231.{}.1", link.n));
    let extra = link.add_addr(Side::B, 7).expect("addr");
    let backend = Backend::start(&b, &extra, 9100, BackendOpts::default()).expect("backend");
    wait_port(&a, &extra, 9100, Duration::from_secs(5)).expect("reachable from a");
    // Nothing of it is visible in the host namespace.
    let host = std::process::Command::new("ip")
        .args(["-o", "addr"])
        .output()
        .expect("ip addr");
    assert!(!String::from_utf8_lossy(&host.stdout).contains(&link.a_ip));
    drop(backend);
}

#[test]
fn proc_is_killed_on_drop_even_with_children() {
    let ns = Netns::new("p").expect("netns");
    let dir = TempDir::new("p").expect("tmp");
    let p = ns
        .spawn(
            "sh",
            &["sh", "-c", "sleep 30 & echo child $!; sleep 30"],
            dir.path(),
        )
        .expect("spawn");
    let pid = p.pid();
    let t0 = Instant::now();
    let child = loop {
        if let Some(c) = p.stdout().lines().find_map(|l| {
            l.strip_prefix("child ")
                .and_then(|x| x.trim().parse::<u32>().ok())
        }) {
            break c;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "no child pid");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(pid_alive(pid) && pid_alive(child));
    drop(p);
    std::thread::sleep(Duration::from_millis(100));
    assert!(!pid_alive(pid), "leader survived");
    assert!(!pid_alive(child), "group member survived");
}

#[test]
fn iptables_rule_removed_on_drop() {
    let ns = Netns::new("ipt").expect("netns");
    let rule = IptablesRule::drop_outgoing_fin(&ns, 9000).expect("rule");
    let list = ns.exec(&["iptables", "-S", "OUTPUT"]).expect("list");
    assert!(list.contains("--sport 9000"), "{list}");
    let syn = IptablesRule::drop_incoming_syn(&ns, 9000).expect("rule");
    assert!(ns
        .exec(&["iptables", "-S", "INPUT"])
        .expect("list")
        .contains("--dport 9000"));
    drop(rule);
    drop(syn);
    let list = ns.exec(&["iptables", "-S"]).expect("list");
    assert!(!list.contains("9000"), "{list}");
    // The host's rules are untouched by all of this.
    let host = std::process::Command::new("iptables")
        .args(["-S"])
        .output()
        .expect("iptables");
    assert!(!String::from_utf8_lossy(&host.stdout).contains("--sport 9000 --tcp-flags FIN FIN"));
}

#[test]
fn client_keep_alive_reuse_and_half_close() {
    let a = Netns::new("ca").expect("netns");
    let b = Netns::new("cb").expect("netns");
    let link = Link::new(&a, &b).expect("link");
    let _backend = Backend::start(&b, &link.b_ip, 9000, BackendOpts::default()).expect("backend");
    let client = Client::new(&a, &link.b_ip, 9000);
    let res = client
        .run(
            &Plan::new()
                .step(Step::get("/ok").count(5).keep_alive(true))
                .step(Step::get("/ok").keep_alive(true))
                .step(Step::get("/ok").half_close())
                .step(Step::post("/ok", "x=1").keep_alive(false))
                .step(Step::get("/status?code=503").keep_alive(false))
                .step(Step::get("/reset").keep_alive(false)),
        )
        .expect("client");
    assert_eq!(res.len(), 10);
    // Five sequential requests on one connection, and the next step reuses it.
    let conn0 = res[0].conn;
    for (k, r) in res[..6].iter().enumerate() {
        assert_eq!(r.status, Some(200), "{r:?}");
        assert_eq!(r.conn, conn0, "{r:?}");
        assert_eq!(r.req_on_conn, Some(k as u64 + 1));
        assert_eq!(r.local, res[0].local);
    }
    // Half-close (FIN right after the request) on the kept-alive connection:
    // the client still reads the response; the connection is then done.
    assert_eq!(res[6].status, Some(200), "{:?}", res[6]);
    assert_eq!(res[6].conn, conn0);
    assert_eq!(res[6].req_on_conn, Some(7));
    assert_eq!(res[7].status, Some(200));
    assert_ne!(res[7].conn, conn0);
    assert_eq!(res[8].status, Some(503));
    assert_eq!(res[9].status, None);
    assert_eq!(res[9].error.as_deref(), Some("ECONNRESET"), "{:?}", res[9]);
    assert!(res[0].local.as_deref().unwrap().starts_with(&link.a_ip));
}

#[test]
fn client_reports_refused() {
    let a = Netns::new("ra").expect("netns");
    let b = Netns::new("rb").expect("netns");
    let link = Link::new(&a, &b).expect("link");
    let res = Client::new(&a, &link.b_ip, 9000)
        .run(&Plan::new().step(Step::get("/ok")))
        .expect("client");
    assert_eq!(res[0].status, None);
    assert_eq!(res[0].error.as_deref(), Some("ECONNREFUSED"));
    assert_eq!(res[0].local, None);
}

#[test]
fn backend_keep_alive_timeout_and_restart() {
    let a = Netns::new("ka").expect("netns");
    let b = Netns::new("kb").expect("netns");
    let link = Link::new(&a, &b).expect("link");
    let mut backend = Backend::start(
        &b,
        &link.b_ip,
        9000,
        BackendOpts::default().keep_alive_timeout_ms(300),
    )
    .expect("backend");
    let client = Client::new(&a, &link.b_ip, 9000);
    // Node closes an idle connection after keepAliveTimeout + 1 s, so after
    // 1.6 s idle the client needs a new connection.
    let res = client
        .run(
            &Plan::new()
                .step(Step::get("/ok"))
                .step(Step::get("/ok").sleep_before_ms(1600)),
        )
        .expect("client");
    assert_eq!(res[1].status, Some(200));
    assert_ne!(res[0].conn, res[1].conn, "{res:?}");
    // /exit kills the backend; restart brings it back on the same address.
    let old = backend.pid();
    let res = client
        .run(&Plan::new().step(Step::get("/exit")))
        .expect("client");
    assert_eq!(res[0].status, None);
    assert!(backend.wait_exit(Duration::from_secs(5)).is_some());
    backend.restart().expect("restart");
    assert_ne!(backend.pid(), old);
    let res = client
        .run(&Plan::new().step(Step::get("/info")))
        .expect("client");
    assert_eq!(res[0].status, Some(200));
    assert!(res[0]
        .body
        .as_deref()
        .unwrap()
        .contains(&backend.pid().to_string()));
}

fn fake_tracer(extra: &[&str], timeout: Duration) -> Tracer {
    let script = fixture("fake_tracer.js");
    let mut args = vec![script.to_str().unwrap()];
    args.extend_from_slice(extra);
    Tracer::start_with_timeout(Path::new(&node_bin()), &args, timeout)
}

#[test]
fn tracer_wrapper_collects_lines_and_stops() {
    let t = fake_tracer(&["--events=3"], Duration::from_secs(10));
    let v = t.wait_for(
        |v| v["event"] == "conn_end" && v["seq"] == 2,
        Duration::from_secs(5),
    );
    assert_eq!(v["host"], "fake");
    assert!(t
        .wait_until(Duration::from_millis(100), |v| v["event"] == "nope")
        .is_none());
    let (status, lines) = t.stop();
    assert!(status.success(), "{status}");
    assert_eq!(lines.first().unwrap()["event"], "start");
    assert_eq!(lines.last().unwrap()["event"], "stats");
    assert_eq!(lines.iter().filter(|v| v["event"] == "conn_end").count(), 3);
    assert!(lines.iter().all(|v: &Value| v["ts"].is_string()));
}

#[test]
fn tracer_wrapper_sigkills_after_the_grace() {
    let t = fake_tracer(&["--ignore-sigint"], Duration::from_secs(10));
    let t0 = Instant::now();
    let (status, _) = t.stop();
    let took = t0.elapsed();
    assert!(!status.success());
    assert!(
        took >= STOP_GRACE && took < STOP_GRACE + Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
#[should_panic(expected = "tracer printed no {\"event\":\"start\"} line")]
fn tracer_wrapper_panics_without_start_line() {
    let _t = fake_tracer(&["--no-start"], Duration::from_secs(1));
}

#[test]
fn proxies_serve_200_with_logs() {
    use tests::scenarios::{Topology, BACKEND_PORT, PROXY_PORT};
    use tests::{Haproxy, HaproxyConfig, Nginx, NginxConfig, Upstream};
    let topo = Topology::new().expect("topology");
    let _b = Backend::start(
        &topo.backend,
        topo.backend_ip(),
        BACKEND_PORT,
        BackendOpts::default(),
    )
    .expect("backend");
    let plan = Plan::new().step(Step::get("/ok").count(4).concurrency(2));

    let nginx = Nginx::start(
        &topo.proxy,
        NginxConfig::new(&topo.proxy_addr())
            .worker_processes(2)
            .upstream(
                Upstream::new("backend")
                    .server(&topo.backend_addr())
                    .keepalive(2),
            ),
    )
    .expect("nginx");
    assert_eq!(nginx.worker_pids().len(), 2);
    let conf = nginx.config_text();
    for needle in [
        "keepalive 2;",
        "proxy_http_version 1.1;",
        "proxy_set_header Connection \"\";",
        "proxy_next_upstream off;",
    ] {
        assert!(conf.contains(needle), "{needle} missing:\n{conf}");
    }
    let res = topo.client().run(&plan).expect("client");
    assert!(res.iter().all(|r| r.status == Some(200)), "{res:?}");
    let log = nginx.wait_access_entries(4, Duration::from_secs(3));
    assert_eq!(log.len(), 4);
    assert!(log.iter().all(|e| e.upstream_addr == topo.backend_addr()));
    assert!(res
        .iter()
        .all(|r| nginx.access_for(r.local.as_deref().unwrap()).is_some()));
    drop(nginx);

    let h = Haproxy::start(
        &topo.proxy,
        HaproxyConfig::new(&topo.proxy_addr())
            .server(&topo.backend_addr())
            .keep_alive(false)
            .nbthread(1),
    )
    .expect("haproxy");
    let res = Client::new(&topo.client, topo.proxy_ip(), PROXY_PORT)
        .run(&plan)
        .expect("client");
    assert!(res.iter().all(|r| r.status == Some(200)), "{res:?}");
    let log = h.wait_log_entries(4, Duration::from_secs(3));
    assert_eq!(log.len(), 4, "{}", h.raw_log());
    assert!(log
        .iter()
        .all(|e| e.server_addr == topo.backend_addr() && e.termination == "----"));
}
