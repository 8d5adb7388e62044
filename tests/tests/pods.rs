//! Acceptance tests for `--pod` (issue 4) on a node built in the test.
//!
//! Each test builds a Kubernetes node without Kubernetes ([`Node`]): a node
//! root with kubelet's `var/log/pods/<ns>_<name>_<uid>/` directories and
//! `proc -> /proc`, one network namespace per pod sandbox with a pause
//! process in it, real workloads (nginx, Node.js backends) started inside
//! those namespaces, and every pod process (nginx's master and workers
//! included) moved into a kubelet-style pod cgroup (systemd driver:
//! `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/
//! cri-containerd-<id>.scope`). The cgroups are real where the machine
//! allows it — a subtree of the cgroup v2 hierarchy (`/sys/fs/cgroup`, or
//! `/sys/fs/cgroup/unified` on hybrid hosts), else the v1 `pids` hierarchy,
//! with the kernel keeping `cgroup.procs` — and the node root's cgroup
//! directory links to that subtree. Only when no hierarchy is writable (or
//! with `T502_FAKE_CGROUPS=1`) do they fall back to plain directories whose
//! `cgroup.procs` the test writes; every test prints which mode it used.
//!
//! The tracer is the real binary, given `--node-root <node root>`:
//!
//! 1. `--pod shop/ingress-7f9` reports only that pod's connections, while a
//!    second tracer on `other/noise-1` proves the noise was there to see;
//! 2. with both the proxy's and the backend's pod asked for, both ends of an
//!    upstream connection and both sides of a real 502 carry their pod;
//! 3. a pod that has no processes at start is picked up when it starts,
//!    followed into a new network namespace when its sandbox is recreated,
//!    and into its next incarnation when it is recreated under a new uid;
//! 4. a misspelt pod is an error (exit 2) that lists the node's pods.
//!
//! Run as root, one test at a time:
//! `TRACER_BIN=target/release/tracer cargo test -p tests --release --test pods -- --test-threads=1`

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::node::{Container, Node, Pod, Qos};
use tests::util::run_output;
use tests::{
    require_bin, tracer_bin, Backend, BackendOpts, Client, Link, Netns, Nginx, NginxConfig, Plan,
    Proc, Step, Tracer, Upstream,
};

const PROXY_PORT: u16 = 8080;
const BACKEND_PORT: u16 = 9000;
/// The tracer re-scans pods every 2 s (collector.rs, `POD_RESCAN`).
const RESCAN: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(10);

fn must<T>(r: anyhow::Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

fn preflight() {
    for b in ["ip", "nginx", "sleep"] {
        require_bin(b);
    }
    tests::backend::node_bin();
}

/// Starts the tracer with `--node-root` and `args`.
fn tracer(node: &Node, args: &[&str]) -> Tracer {
    let root = node.root_arg();
    let mut all: Vec<&str> = vec!["--node-root", &root];
    all.extend_from_slice(args);
    Tracer::start(&all)
}

fn event_is(v: &Value, kind: &str) -> bool {
    v.get("event").and_then(Value::as_str) == Some(kind)
}

fn conn_ends(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|v| event_is(v, "conn_end")).collect()
}

fn netns_of(v: &Value) -> Option<u64> {
    v.get("netns").and_then(Value::as_u64)
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn dump(lines: &[&Value]) -> String {
    lines
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `filters.netns` of the start line.
fn start_netns(t: &Tracer) -> Value {
    let start = t.wait_for(|v| event_is(v, "start"), WAIT);
    start["filters"]["netns"].clone()
}

/// `count` requests for `/ok`, one connection each; all must get 200.
fn ok_traffic(client: &Client, count: u32, what: &str) {
    let results = must(
        client.run(&Plan::new().step(Step::get("/ok").count(count).keep_alive(false))),
        what,
    );
    assert_eq!(results.len(), count as usize, "{what}: {results:?}");
    for r in &results {
        assert_eq!(r.status, Some(200), "{what}: {r:?}");
    }
}

/// The shop: an ingress nginx pod in front of an API pod, and an unrelated
/// pod with its own traffic, on one node.
///
/// ```text
///  ext netns (outside)        shop/ingress-7f9 (A)          shop/api-5d8 (B)
///  10.231.F.2  ──veth──  10.231.F.1:8080 nginx
///                        10.231.K.1            ──veth──  10.231.K.2:9000 node
///  other/noise-1 (C): node on 127.0.0.1:9000, clients inside C
/// ```
///
/// Fields drop in order: processes first, then links and namespaces, the
/// node (cgroups, log dirs) last.
struct Shop {
    nginx: Nginx,
    api: Backend,
    noise_backend: Backend,
    pauses: Vec<Proc>,
    front: Link,
    back: Link,
    ext: Netns,
    ingress_ns: Netns,
    api_ns: Netns,
    noise_ns: Netns,
    ingress: Pod,
    api_pod: Pod,
    noise: Pod,
    node: Node,
}

impl Shop {
    fn new() -> Shop {
        preflight();
        let node = must(Node::new(), "node");
        eprintln!("cgroup mode: {}", node.mode());
        let ingress = must(
            node.add_pod("shop", "ingress-7f9", Qos::Guaranteed),
            "ingress pod",
        );
        let api_pod = must(node.add_pod("shop", "api-5d8", Qos::Burstable), "api pod");
        let noise = must(
            node.add_pod("other", "noise-1", Qos::BestEffort),
            "noise pod",
        );
        let ext = must(Netns::new("ext"), "netns");
        let ingress_ns = must(Netns::new("ingress"), "netns");
        let api_ns = must(Netns::new("api"), "netns");
        let noise_ns = must(Netns::new("noise"), "netns");
        let front = must(Link::new(&ingress_ns, &ext), "front link");
        let back = must(Link::new(&ingress_ns, &api_ns), "back link");

        let mut pauses = Vec::new();
        for (pod, ns) in [
            (&ingress, &ingress_ns),
            (&api_pod, &api_ns),
            (&noise, &noise_ns),
        ] {
            pauses.push(must(pod.pause(ns), "pause").0);
        }
        let api = must(
            Backend::start(&api_ns, &back.b_ip, BACKEND_PORT, BackendOpts::default()),
            "api backend",
        );
        must(api_pod.add_container("api", &[api.pid()]), "api container");
        let cfg = NginxConfig::new(&format!("{}:{PROXY_PORT}", front.a_ip))
            .worker_processes(2)
            .upstream(Upstream::new("api").server(&api.addr()));
        let nginx = must(Nginx::start(&ingress_ns, cfg), "nginx");
        let mut nginx_pids = vec![nginx.master_pid()];
        nginx_pids.extend(nginx.worker_pids());
        must(
            ingress.add_container("nginx", &nginx_pids),
            "nginx container",
        );
        let noise_backend = must(
            Backend::start(&noise_ns, "127.0.0.1", BACKEND_PORT, BackendOpts::default()),
            "noise backend",
        );
        must(
            noise.add_container("noise", &[noise_backend.pid()]),
            "noise container",
        );

        // The kernel (or, with fake cgroups, the test) lists every process.
        let shop = Shop {
            nginx,
            api,
            noise_backend,
            pauses,
            front,
            back,
            ext,
            ingress_ns,
            api_ns,
            noise_ns,
            ingress,
            api_pod,
            noise,
            node,
        };
        for pid in &nginx_pids {
            assert!(
                shop.ingress.pids().contains(pid),
                "nginx pid {pid} not in the ingress pod cgroup\n{}",
                shop.node.describe()
            );
        }
        assert!(shop.api_pod.pids().contains(&shop.api.pid()));
        assert!(shop.noise.pids().contains(&shop.noise_backend.pid()));
        shop
    }

    /// A client outside the node, aimed at the ingress.
    fn ingress_client(&self) -> Client {
        Client::new(&self.ext, &self.front.a_ip, PROXY_PORT)
    }

    /// A client inside the noise pod, aimed at its own backend.
    fn noise_client(&self) -> Client {
        Client::new(&self.noise_ns, "127.0.0.1", BACKEND_PORT)
    }

    fn ingress_addr(&self) -> String {
        format!("{}:{PROXY_PORT}", self.front.a_ip)
    }

    fn describe(&self) -> String {
        format!(
            "ingress netns {} (nginx {} + workers {:?}, upstream side {}), api netns {} ({} pid {}), noise netns {}, ext netns {}, pause pids {:?}\n{}",
            self.ingress_ns.inode(),
            self.nginx.master_pid(),
            self.nginx.worker_pids(),
            self.back.a_ip,
            self.api_ns.inode(),
            self.api.addr(),
            self.api.pid(),
            self.noise_ns.inode(),
            self.ext.inode(),
            self.pauses.iter().map(Proc::pid).collect::<Vec<_>>(),
            self.node.describe()
        )
    }
}

/// `--pod shop/ingress-7f9` reports the ingress pod's connections, all of
/// them and only them, named after it. A second tracer, on `other/noise-1`,
/// runs at the same time and must see the noise: so its absence from the
/// first one is the filter's doing.
#[test]
fn pod_filter_reports_only_that_pods_connections() {
    let shop = Shop::new();
    let ingress_ns = shop.ingress_ns.inode();
    let noise_ns = shop.noise_ns.inode();
    let t = tracer(&shop.node, &["--pod", "shop/ingress-7f9", "--all"]);
    let control = tracer(&shop.node, &["--pod", "other/noise-1", "--all"]);
    assert_eq!(
        start_netns(&t),
        serde_json::json!([ingress_ns]),
        "kernel filter = the ingress pod's netns\n{}",
        shop.describe()
    );
    assert_eq!(start_netns(&control), serde_json::json!([noise_ns]));

    ok_traffic(&shop.ingress_client(), 5, "client -> ingress -> api");
    ok_traffic(&shop.noise_client(), 5, "noise client -> noise backend");
    t.wait_for(
        |v| event_is(v, "conn_end") && netns_of(v) == Some(ingress_ns),
        WAIT,
    );
    control.wait_for(
        |v| event_is(v, "conn_end") && netns_of(v) == Some(noise_ns),
        WAIT,
    );
    // Let in-flight records of the last connections arrive; `stop` flushes.
    std::thread::sleep(Duration::from_millis(300));
    let (status, lines) = t.stop();
    let (_, control_lines) = control.stop();
    assert!(status.success(), "tracer exit {status}");

    let ends = conn_ends(&lines);
    let context = || format!("{}\nconn_end lines:\n{}", shop.describe(), dump(&ends));
    let stray: Vec<&&Value> = ends
        .iter()
        .filter(|v| netns_of(v) != Some(ingress_ns) || v["pod"] != shop.ingress.json())
        .collect();
    assert!(
        stray.is_empty(),
        "lines not in the ingress pod's netns or not named after it:\n{}\n{}",
        dump(&stray.into_iter().copied().collect::<Vec<_>>()),
        context()
    );
    let from_outside = ends
        .iter()
        .filter(|v| str_of(v, "role") == "server" && str_of(v, "src") == shop.ingress_addr())
        .count();
    let upstream = ends
        .iter()
        .filter(|v| str_of(v, "role") == "client" && str_of(v, "dst") == shop.api.addr())
        .count();
    println!(
        "ingress tracer: {} conn_end ({from_outside} client connections to nginx, {upstream} upstream to the api)",
        ends.len()
    );
    assert!(
        from_outside >= 1,
        "no client->nginx connection\n{}",
        context()
    );
    assert!(upstream >= 1, "no nginx->api connection\n{}", context());
    for v in &ends {
        if !str_of(v, "comm").is_empty() {
            assert_eq!(str_of(v, "comm"), "nginx", "{v}");
        }
    }
    assert!(
        lines.iter().all(|v| !event_is(v, "bad_gateway")),
        "no 502 happened\n{}",
        context()
    );

    // The control saw the noise, named after its pod, and nothing else.
    let noise_ends = conn_ends(&control_lines);
    println!("noise tracer: {} conn_end", noise_ends.len());
    assert!(!noise_ends.is_empty());
    for v in &noise_ends {
        assert_eq!(netns_of(v), Some(noise_ns), "{v}\n{}", shop.describe());
        assert_eq!(v["pod"], shop.noise.json(), "{v}\n{}", shop.describe());
    }
}

/// With both the proxy's and the backend's pod asked for, each end of the
/// same upstream connection carries its own pod, and a real 502 (the API
/// resets the request) names the ingress as proxy and the API as upstream.
#[test]
fn both_local_ends_carry_their_pod_names() {
    let shop = Shop::new();
    let (a, b) = (shop.ingress_ns.inode(), shop.api_ns.inode());
    let t = tracer(
        &shop.node,
        &[
            "--pod",
            "shop/ingress-7f9",
            "--pod",
            "shop/api-5d8",
            "--all",
        ],
    );
    let filter = start_netns(&t);
    let mut filter: Vec<u64> = filter
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    filter.sort_unstable();
    let mut want = vec![a, b];
    want.sort_unstable();
    assert_eq!(filter, want, "kernel filter\n{}", shop.describe());

    let results = must(
        shop.ingress_client().run(
            &Plan::new()
                .step(Step::get("/ok").keep_alive(false))
                .step(Step::get("/reset").keep_alive(false)),
        ),
        "client",
    );
    let statuses: Vec<Option<u16>> = results.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(200), Some(502)], "{results:?}");
    let bg = t.wait_for(|v| event_is(v, "bad_gateway"), WAIT);
    t.wait_for(
        |v| event_is(v, "conn_end") && netns_of(v) == Some(b) && str_of(v, "role") == "server",
        WAIT,
    );
    std::thread::sleep(Duration::from_millis(300));
    let (status, lines) = t.stop();
    assert!(status.success(), "tracer exit {status}");
    let ends = conn_ends(&lines);
    let context = || format!("{}\nconn_end lines:\n{}", shop.describe(), dump(&ends));

    for v in &ends {
        let want = match netns_of(v) {
            Some(n) if n == a => shop.ingress.json(),
            Some(n) if n == b => shop.api_pod.json(),
            _ => panic!("line from outside both pods: {v}\n{}", context()),
        };
        assert_eq!(v["pod"], want, "wrong pod on {v}\n{}", context());
    }
    // The same upstream connections, seen from both ends.
    let proxy_side: Vec<&&Value> = ends
        .iter()
        .filter(|v| {
            netns_of(v) == Some(a)
                && str_of(v, "role") == "client"
                && str_of(v, "dst") == shop.api.addr()
        })
        .collect();
    let backend_side: Vec<&&Value> = ends
        .iter()
        .filter(|v| {
            netns_of(v) == Some(b)
                && str_of(v, "role") == "server"
                && str_of(v, "src") == shop.api.addr()
        })
        .collect();
    let pairs = proxy_side
        .iter()
        .filter(|p| {
            backend_side.iter().any(|s| {
                str_of(s, "dst") == str_of(p, "src") && str_of(s, "src") == str_of(p, "dst")
            })
        })
        .count();
    println!(
        "{} conn_end: {} upstream seen from the ingress, {} from the api, {pairs} matched pairs",
        ends.len(),
        proxy_side.len(),
        backend_side.len()
    );
    assert!(
        pairs >= 1,
        "no upstream connection seen from both ends\n{}",
        context()
    );
    for p in &proxy_side {
        assert_eq!(p["pod"], shop.ingress.json(), "{p}");
    }
    for s in &backend_side {
        assert_eq!(s["pod"], shop.api_pod.json(), "{s}");
    }

    println!("bad_gateway: {bg}");
    assert_eq!(bg["status"], 502, "{bg}");
    assert_eq!(str_of(&bg["proxy"], "comm"), "nginx", "{bg}");
    assert_eq!(
        bg["proxy"]["pod"],
        shop.ingress.json(),
        "proxy.pod\n{bg}\n{}",
        context()
    );
    assert_eq!(
        str_of(&bg["upstream"], "dst"),
        shop.api.addr(),
        "upstream.dst\n{bg}"
    );
    assert_eq!(
        bg["upstream"]["pod"],
        shop.api_pod.json(),
        "upstream.pod\n{bg}\n{}",
        context()
    );
    assert_eq!(
        lines.iter().filter(|v| event_is(v, "bad_gateway")).count(),
        1,
        "one 502, one bad_gateway\n{}",
        context()
    );
}

/// A running generation of the late pod: its sandbox netns (linked to the
/// outside), pause and backend processes, and their containers.
struct LateGen {
    backend: Backend,
    pause: Proc,
    containers: Vec<Container>,
    link: Link,
    netns: Netns,
}

impl LateGen {
    fn start(pod: &Pod, ext: &Netns, label: &str) -> LateGen {
        let netns = must(Netns::new(label), "netns");
        let link = must(Link::new(&netns, ext), "link");
        let (pause, pause_c) = must(pod.pause(&netns), "pause");
        let backend = must(
            Backend::start(&netns, &link.a_ip, BACKEND_PORT, BackendOpts::default()),
            "late backend",
        );
        let app = must(pod.add_container("app", &[backend.pid()]), "app container");
        LateGen {
            backend,
            pause,
            containers: vec![pause_c, app],
            link,
            netns,
        }
    }

    fn client(&self, ext: &Netns) -> Client {
        Client::new(ext, &self.link.a_ip, BACKEND_PORT)
    }

    /// Kills the processes and removes the containers, as kubelet tears a
    /// sandbox down; the namespace and link stay (returned).
    fn stop(self, pod: &Pod) -> (Netns, Link) {
        let LateGen {
            backend,
            pause,
            containers,
            link,
            netns,
        } = self;
        drop(backend);
        drop(pause);
        for c in &containers {
            pod.remove_container(c);
        }
        (netns, link)
    }
}

/// Sends traffic to a pod generation until the tracer reports a connection
/// in its netns (rounds of 2 requests, each waited on ≤ 1.5 s, in all ≤
/// 15 s). Returns the line and the number of rounds it took.
fn traffic_until_seen(t: &Tracer, client: &Client, netns: u64, what: &str) -> (Value, u32) {
    let t0 = Instant::now();
    let mut round = 0;
    loop {
        round += 1;
        ok_traffic(client, 2, what);
        if let Some(v) = t.wait_until(Duration::from_millis(1500), |v| {
            event_is(v, "conn_end") && netns_of(v) == Some(netns)
        }) {
            return (v, round);
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "{what}: no conn_end in netns {netns} after {round} rounds ({:?}); tracer stderr:\n{}\nlines:\n{}",
            t0.elapsed(),
            t.stderr(),
            dump(&t.lines().iter().collect::<Vec<_>>())
        );
    }
}

/// `--pod shop/late-1` for a pod kubelet has admitted (log directory) but
/// not started: the tracer starts, warns, traces nothing yet; once the pod
/// runs (after a rescan) its connections are reported under its name; when
/// its sandbox is recreated in a new network namespace, the new one is
/// traced and the old one no longer; when the pod is deleted and created
/// again under the same name (new uid, the old log directory lingering),
/// the new incarnation is traced under that name.
#[test]
fn pod_started_after_the_tracer_is_picked_up_and_followed_across_a_restart() {
    preflight();
    let node = must(Node::new(), "node");
    eprintln!("cgroup mode: {}", node.mode());
    let late = must(node.add_pod("shop", "late-1", Qos::Burstable), "late pod");
    let noise = must(
        node.add_pod("other", "noise-1", Qos::BestEffort),
        "noise pod",
    );
    let ext = must(Netns::new("ext"), "netns");
    let noise_ns = must(Netns::new("noise"), "netns");
    let (_noise_pause, _) = must(noise.pause(&noise_ns), "noise pause");
    let noise_backend = must(
        Backend::start(&noise_ns, "127.0.0.1", BACKEND_PORT, BackendOpts::default()),
        "noise backend",
    );
    must(
        noise.add_container("noise", &[noise_backend.pid()]),
        "noise container",
    );
    let noise_client = Client::new(&noise_ns, "127.0.0.1", BACKEND_PORT);

    let t = tracer(&node, &["--pod", "shop/late-1", "--all"]);
    assert_eq!(
        start_netns(&t),
        serde_json::json!([]),
        "nothing to trace yet\n{}",
        node.describe()
    );
    let stderr = t.stderr();
    assert!(
        stderr.contains("shop/late-1") && stderr.contains("no running processes yet"),
        "expected a warning about shop/late-1 not running yet, stderr:\n{stderr}"
    );
    // An empty pod filter traces nothing (it is not "no filter").
    ok_traffic(&noise_client, 3, "noise before the pod starts");

    // The pod starts.
    let gen1 = LateGen::start(&late, &ext, "late1");
    let ns1 = gen1.netns.inode();
    let started = Instant::now();
    std::thread::sleep(RESCAN + Duration::from_millis(500));
    let (v, rounds) = traffic_until_seen(&t, &gen1.client(&ext), ns1, "late pod, first sandbox");
    println!(
        "first sandbox (netns {ns1}) reported {:?} after start, {rounds} round(s): {v}",
        started.elapsed()
    );
    assert_eq!(v["pod"], late.json(), "{v}\n{}", node.describe());
    assert_eq!(str_of(&v, "role"), "server", "{v}");

    // The pod is recreated: new sandbox netns, new processes, new containers.
    // The old netns is kept (so its inode cannot be reused) but emptied.
    let (old_ns, old_link) = gen1.stop(&late);
    let gen2 = LateGen::start(&late, &ext, "late2");
    let ns2 = gen2.netns.inode();
    assert_ne!(ns1, ns2, "a new sandbox has a new netns");
    let restarted = Instant::now();
    std::thread::sleep(RESCAN + Duration::from_millis(500));
    let (v, rounds) = traffic_until_seen(&t, &gen2.client(&ext), ns2, "late pod, second sandbox");
    println!(
        "second sandbox (netns {ns2}) reported {:?} after restart, {rounds} round(s): {v}",
        restarted.elapsed()
    );
    assert_eq!(v["pod"], late.json(), "{v}\n{}", node.describe());

    // The old sandbox's netns left the filter with the update that brought
    // the new one in: a process there now (in no pod) is not traced.
    let stray_port = BACKEND_PORT + 100;
    let stray = must(
        Backend::start(&old_ns, &old_link.a_ip, stray_port, BackendOpts::default()),
        "stray backend in the old netns",
    );
    ok_traffic(
        &Client::new(&ext, &old_link.a_ip, stray_port),
        3,
        "old netns after the restart",
    );
    ok_traffic(&noise_client, 3, "noise after the pod started");

    // The pod is deleted and created again under the same name (a
    // StatefulSet pod): a new uid, while the old uid's log directory
    // lingers until kubelet's garbage collection.
    let (_ns2, _link2) = gen2.stop(&late);
    let late_again = must(
        node.add_pod("shop", "late-1", Qos::Burstable),
        "late pod again",
    );
    assert_ne!(late_again.uid, late.uid);
    let gen3 = LateGen::start(&late_again, &ext, "late3");
    let ns3 = gen3.netns.inode();
    let recreated = Instant::now();
    std::thread::sleep(RESCAN + Duration::from_millis(500));
    let (v, rounds) = traffic_until_seen(&t, &gen3.client(&ext), ns3, "late pod, new uid");
    println!(
        "recreated pod (new uid, netns {ns3}) reported {:?} after start, {rounds} round(s): {v}",
        recreated.elapsed()
    );
    assert_eq!(v["pod"], late.json(), "{v}\n{}", node.describe());

    std::thread::sleep(Duration::from_millis(300));
    let (status, lines) = t.stop();
    assert!(status.success(), "tracer exit {status}");
    let ends = conn_ends(&lines);
    let context = || format!("{}\nconn_end lines:\n{}", node.describe(), dump(&ends));
    let stray_port = format!(":{stray_port}");
    for v in &ends {
        let n = netns_of(v);
        assert!(
            n == Some(ns1) || n == Some(ns2) || n == Some(ns3),
            "line outside the late pod's sandboxes: {v}\n{}",
            context()
        );
        assert_eq!(v["pod"], late.json(), "{v}\n{}", context());
        assert!(
            !(str_of(v, "src").ends_with(&stray_port) || str_of(v, "dst").ends_with(&stray_port)),
            "old netns still traced after the restart: {v}\n{}",
            context()
        );
    }
    let in1 = ends.iter().filter(|v| netns_of(v) == Some(ns1)).count();
    let in2 = ends.iter().filter(|v| netns_of(v) == Some(ns2)).count();
    let in3 = ends.iter().filter(|v| netns_of(v) == Some(ns3)).count();
    println!(
        "{} conn_end: {in1} in the first sandbox, {in2} in the second, {in3} after the recreation",
        ends.len()
    );
    drop(stray);
    drop(gen3);
}

/// A misspelt `--pod` is a usage error (exit 2) naming the pod and listing
/// the pods on the node — from `--node-root` or `$TRACER_NODE_ROOT` — and
/// nothing is traced.
#[test]
fn misspelt_pod_is_an_error_listing_the_nodes_pods() {
    let node = must(Node::new(), "node");
    eprintln!("cgroup mode: {}", node.mode());
    let mut names = Vec::new();
    for (ns, name, qos) in [
        ("shop", "ingress-7f9", Qos::Guaranteed),
        ("shop", "api-5d8", Qos::Burstable),
        ("other", "noise-1", Qos::BestEffort),
    ] {
        names.push(must(node.add_pod(ns, name, qos), "pod").reference());
    }
    let bin = tracer_bin();
    let root = node.root_arg();
    let by_flag = {
        let mut c = Command::new(&bin);
        c.args(["--pod", "shop/ingres-7f9", "--node-root", &root]);
        c
    };
    let by_env = {
        let mut c = Command::new(&bin);
        c.args(["--pod", "shop/ingres-7f9"])
            .env("TRACER_NODE_ROOT", &root);
        c
    };
    for (how, cmd) in [("--node-root", by_flag), ("TRACER_NODE_ROOT", by_env)] {
        let t0 = Instant::now();
        let out = must(run_output(cmd, Duration::from_secs(20)), "run tracer");
        println!(
            "{how}: exit {} after {:?}, stderr: {}",
            out.status,
            t0.elapsed(),
            out.stderr.trim()
        );
        assert_eq!(out.status.code(), Some(2), "{how}: {out:?}");
        assert!(
            out.stderr.contains("shop/ingres-7f9"),
            "{how}: names the pod asked for: {}",
            out.stderr
        );
        for n in &names {
            assert!(
                out.stderr.contains(n.as_str()),
                "{how}: stderr lists {n}: {}",
                out.stderr
            );
        }
        assert!(
            !out.stdout.contains("\"start\""),
            "{how}: nothing traced: {}",
            out.stdout
        );
    }
}

/// Only the proxy's pod is traced, yet the backend it failed to reach runs
/// on this node: `upstream.pod` still names it (by the pod's own address).
#[test]
fn upstream_pod_named_when_only_the_proxy_is_traced() {
    let shop = Shop::new();
    let t = tracer(&shop.node, &["--pod", "shop/ingress-7f9"]);
    let results = must(
        shop.ingress_client()
            .run(&Plan::new().step(Step::get("/reset").keep_alive(false))),
        "client",
    );
    assert_eq!(results[0].status, Some(502), "{results:?}");
    let bg = t.wait_for(|v| event_is(v, "bad_gateway"), WAIT);
    let (status, _) = t.stop();
    assert!(status.success());
    assert_eq!(bg["proxy"]["pod"], shop.ingress.json(), "{bg}");
    assert_eq!(bg["upstream"]["pod"], shop.api_pod.json(), "{bg}");
    assert_eq!(bg["cause"], "backend_reset", "{bg}");
}
