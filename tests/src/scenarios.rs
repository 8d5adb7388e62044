//! Realistic set-ups that produce real 502/504s.
//!
//! Topology (one [`Topology`] per scenario, fresh namespaces every time):
//!
//! ```text
//!  client netns            proxy netns                      backend netns
//!  10.231.F.2  ──veth──  10.231.F.1:8080  (nginx/haproxy)
//!                        10.231.B.1       ──veth──  10.231.B.2:9000 (node backend.js)
//! ```
//!
//! Every scenario function takes a `hook` that runs once the proxy and
//! backends are listening (readiness probes done) and before the first
//! client request: that is where a test starts the tracer, e.g.
//! `|t| Tracer::start(&["--netns", t.proxy.path().to_str().unwrap(), "--all"])`.
//! Its return value is kept in [`Scenario::hook`].
//!
//! Scenario functions panic (with logs) if the set-up fails; they do not
//! assert the outcome — the tests in `tests/scenarios.rs` do.

use std::collections::HashMap;
use std::time::Duration;

use crate::backend::{Backend, BackendOpts};
use crate::client::{Client, ClientResult, Plan, Step};
use crate::haproxy::{Haproxy, HaproxyConfig};
use crate::iptables::IptablesRule;
use crate::netns::{Link, Netns, Side};
use crate::nginx::{Nginx, NginxConfig, Upstream};
use crate::util::{require_bin, require_root};

/// Port the proxy listens on (in the proxy namespace).
pub const PROXY_PORT: u16 = 8080;
/// Port backends listen on (in the backend namespace).
pub const BACKEND_PORT: u16 = 9000;

/// Three namespaces and two veth links: client ↔ proxy ↔ backend.
#[derive(Debug)]
pub struct Topology {
    pub front: Link,
    pub back: Link,
    pub client: Netns,
    pub proxy: Netns,
    pub backend: Netns,
}

impl Topology {
    pub fn new() -> anyhow::Result<Topology> {
        require_root();
        let client = Netns::new("client")?;
        let proxy = Netns::new("proxy")?;
        let backend = Netns::new("backend")?;
        let front = Link::new(&proxy, &client)?;
        let back = Link::new(&proxy, &backend)?;
        Ok(Topology {
            front,
            back,
            client,
            proxy,
            backend,
        })
    }

    /// Proxy address as clients see it (`10.231.F.1`).
    pub fn proxy_ip(&self) -> &str {
        &self.front.a_ip
    }

    /// `10.231.F.1:8080`.
    pub fn proxy_addr(&self) -> String {
        format!("{}:{PROXY_PORT}", self.front.a_ip)
    }

    pub fn client_ip(&self) -> &str {
        &self.front.b_ip
    }

    /// The proxy's own address on the backend link (`10.231.B.1`): the
    /// source address of its upstream connections.
    pub fn proxy_upstream_ip(&self) -> &str {
        &self.back.a_ip
    }

    /// Primary backend address (`10.231.B.2`).
    pub fn backend_ip(&self) -> &str {
        &self.back.b_ip
    }

    /// `10.231.B.2:9000`.
    pub fn backend_addr(&self) -> String {
        format!("{}:{BACKEND_PORT}", self.back.b_ip)
    }

    /// Add another backend address `10.231.B.<host>` in the backend netns.
    pub fn add_backend_ip(&self, host: u8) -> String {
        self.back
            .add_addr(Side::B, host)
            .unwrap_or_else(|e| panic!("add backend address: {e:#}"))
    }

    /// A client in the client netns aimed at the proxy.
    pub fn client(&self) -> Client {
        Client::new(&self.client, self.proxy_ip(), PROXY_PORT)
    }
}

/// The proxy of a scenario.
#[derive(Debug)]
pub enum Proxy {
    Nginx(Nginx),
    Haproxy(Haproxy),
}

impl Proxy {
    /// Processes that handle connections: nginx workers, or HAProxy itself.
    pub fn serving_pids(&self) -> Vec<u32> {
        match self {
            Proxy::Nginx(n) => n.worker_pids(),
            Proxy::Haproxy(h) => vec![h.pid()],
        }
    }

    /// The spawned process (nginx master, or HAProxy).
    pub fn main_pid(&self) -> u32 {
        match self {
            Proxy::Nginx(n) => n.master_pid(),
            Proxy::Haproxy(h) => h.pid(),
        }
    }

    pub fn comm(&self) -> &'static str {
        match self {
            Proxy::Nginx(_) => "nginx",
            Proxy::Haproxy(_) => "haproxy",
        }
    }

    /// nginx error.log, or everything HAProxy printed.
    pub fn error_log(&self) -> String {
        match self {
            Proxy::Nginx(n) => n.error_log(),
            Proxy::Haproxy(h) => h.raw_log(),
        }
    }
}

/// One client request joined with the proxy's log line for it.
#[derive(Clone, Debug)]
pub struct RequestView {
    pub result: ClientResult,
    /// Status the proxy logged (e.g. 499 when it wrote nothing).
    pub proxy_status: Option<i32>,
    /// Upstream the proxy used (`$upstream_addr` / HAProxy `%si:%sp`);
    /// None if not logged, "-" / ":0"-style values if it made no attempt.
    pub upstream_addr: Option<String>,
    /// HAProxy termination state (`%tsc`), e.g. "SH--".
    pub termination: Option<String>,
}

/// What a scenario did and what the client saw.
#[derive(Debug)]
pub struct Scenario<H> {
    pub name: &'static str,
    /// Whatever the hook returned (e.g. a running [`crate::Tracer`]).
    pub hook: H,
    /// Client results sorted by (step, i).
    pub results: Vec<ClientResult>,
    /// `results` joined with the proxy's access log (same order).
    pub requests: Vec<RequestView>,
    /// Index in `results` of the request the scenario is about.
    pub key: usize,
    /// Status the client should see for `results[key]` (None: no response).
    pub expected_status: Option<u16>,
    pub proxy: Proxy,
    /// Pids that write the 5xx (nginx workers / HAProxy).
    pub proxy_pids: Vec<u32>,
    /// `ip:port` clients connect to.
    pub proxy_addr: String,
    /// Upstream address involved in the failure (`ip:port`).
    pub upstream_addr: String,
    pub backends: Vec<Backend>,
    pub rules: Vec<IptablesRule>,
    pub topo: Topology,
}

impl<H> Scenario<H> {
    /// The client's view of the key request.
    pub fn key_result(&self) -> &ClientResult {
        &self.results[self.key]
    }

    /// The key request's client address (`ip:port`, as the proxy saw it).
    pub fn key_client(&self) -> Option<&str> {
        self.key_result().local.as_deref()
    }

    pub fn nginx(&self) -> Option<&Nginx> {
        match &self.proxy {
            Proxy::Nginx(n) => Some(n),
            _ => None,
        }
    }

    pub fn haproxy(&self) -> Option<&Haproxy> {
        match &self.proxy {
            Proxy::Haproxy(h) => Some(h),
            _ => None,
        }
    }

    /// Human summary for assertion messages.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "scenario {} (proxy {} pids {:?}, upstream {})\n",
            self.name, self.proxy_addr, self.proxy_pids, self.upstream_addr
        );
        for r in self.requests.iter().take(20) {
            s.push_str(&format!(
                "  step {} #{} {:?} local {:?} err {:?} proxy_status {:?} upstream {:?} {:?} ({:.1} ms)\n",
                r.result.step,
                r.result.i,
                r.result.status,
                r.result.local,
                r.result.error,
                r.proxy_status,
                r.upstream_addr,
                r.termination,
                r.result.t_end_ms - r.result.t_start_ms
            ));
        }
        s.push_str("--- proxy log tail\n");
        let log = self.proxy.error_log();
        let lines: Vec<&str> = log.lines().collect();
        s.push_str(&lines[lines.len().saturating_sub(15)..].join("\n"));
        s
    }
}

fn must<T>(r: anyhow::Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

fn preflight() {
    require_root();
    for b in ["ip", "iptables", "nginx", "haproxy"] {
        require_bin(b);
    }
    crate::backend::node_bin();
}

/// Pair client results with log entries `(client addr, status, upstream,
/// termination)` in log order per client address.
fn join(
    results: &[ClientResult],
    entries: Vec<(String, i32, String, Option<String>)>,
) -> Vec<RequestView> {
    let mut by_client: HashMap<String, std::collections::VecDeque<(i32, String, Option<String>)>> =
        HashMap::new();
    for (c, st, up, term) in entries {
        by_client.entry(c).or_default().push_back((st, up, term));
    }
    // Requests on the same client connection are served in order.
    let mut order: Vec<usize> = (0..results.len()).collect();
    order.sort_by(|a, b| results[*a].t_start_ms.total_cmp(&results[*b].t_start_ms));
    let mut views: Vec<Option<RequestView>> = vec![None; results.len()];
    for idx in order {
        let r = &results[idx];
        let e = r
            .local
            .as_ref()
            .and_then(|l| by_client.get_mut(l))
            .and_then(|q| q.pop_front());
        views[idx] = Some(RequestView {
            result: r.clone(),
            proxy_status: e.as_ref().map(|x| x.0),
            upstream_addr: e.as_ref().map(|x| x.1.clone()),
            termination: e.and_then(|x| x.2),
        });
    }
    views
        .into_iter()
        .map(|v| v.expect("every index set"))
        .collect()
}

/// Client results joined with nginx's access log. Waits (≤ 3 s) until the
/// log has a line for every request that reached nginx.
fn join_nginx(nginx: &Nginx, results: &[ClientResult]) -> Vec<RequestView> {
    let want = results.iter().filter(|r| r.local.is_some()).count();
    let entries = nginx.wait_access_entries(want, Duration::from_secs(3));
    join(
        results,
        entries
            .into_iter()
            .map(|e| (e.client, e.status as i32, e.upstream_addr, None))
            .collect(),
    )
}

fn join_haproxy(h: &Haproxy, results: &[ClientResult]) -> Vec<RequestView> {
    let want = results.iter().filter(|r| r.local.is_some()).count();
    let entries = h.wait_log_entries(want, Duration::from_secs(3));
    join(
        results,
        entries
            .into_iter()
            .map(|e| (e.client, e.status, e.server_addr, Some(e.termination)))
            .collect(),
    )
}

/// Common shape: one backend (or none), nginx with one upstream, a client
/// plan, optional iptables rules in the backend netns.
struct NginxCase {
    name: &'static str,
    backend: Option<BackendOpts>,
    upstream: fn(&str) -> Upstream,
    config: fn(NginxConfig) -> NginxConfig,
    rules: fn(&Topology) -> Vec<IptablesRule>,
    plan: Plan,
    key: usize,
    expected: Option<u16>,
}

fn no_rules(_: &Topology) -> Vec<IptablesRule> {
    Vec::new()
}

fn run_nginx_case<H>(case: NginxCase, hook: impl FnOnce(&Topology) -> H) -> Scenario<H> {
    preflight();
    let topo = must(Topology::new(), "topology");
    let backend_addr = topo.backend_addr();
    let mut backends = Vec::new();
    if let Some(opts) = case.backend {
        backends.push(must(
            Backend::start(&topo.backend, topo.backend_ip(), BACKEND_PORT, opts),
            "backend",
        ));
    }
    let rules = (case.rules)(&topo);
    let cfg = (case.config)(
        NginxConfig::new(&topo.proxy_addr()).upstream((case.upstream)(&backend_addr)),
    );
    let nginx = must(Nginx::start(&topo.proxy, cfg), "nginx");
    let hook = hook(&topo);
    let results = must(topo.client().run(&case.plan), "client");
    let requests = join_nginx(&nginx, &results);
    Scenario {
        name: case.name,
        hook,
        results,
        requests,
        key: case.key,
        expected_status: case.expected,
        proxy_pids: nginx.worker_pids(),
        proxy_addr: topo.proxy_addr(),
        upstream_addr: backend_addr,
        proxy: Proxy::Nginx(nginx),
        backends,
        rules,
        topo,
    }
}

/// `server.keepAliveTimeout` of the keep-alive race backend.
pub const RACE_KEEPALIVE_TIMEOUT_MS: u64 = 1000;
/// Node 20.20 closes an idle keep-alive socket only after
/// `keepAliveTimeout + 1000 ms` (`HTTP_SERVER_KEEP_ALIVE_TIMEOUT_BUFFER`
/// in `_http_server.js`; measured: 2.0 s for a 1000 ms setting).
pub const NODE_KEEPALIVE_BUFFER_MS: u64 = 1000;
/// Idle time before the racing request: 1 s after the backend's close
/// (margin for timer delays on a loaded machine).
pub const RACE_IDLE_MS: u64 = RACE_KEEPALIVE_TIMEOUT_MS + NODE_KEEPALIVE_BUFFER_MS + 1000;

/// Seed 001, the keep-alive race. nginx keeps an idle upstream connection
/// (`keepalive 4`) to a Node backend whose `keepAliveTimeout` is 1000 ms
/// (Node really closes after 2.0 s, see [`NODE_KEEPALIVE_BUFFER_MS`]);
/// the backend netns drops the backend's outgoing FIN (iptables), so when
/// Node closes the idle connection nginx never learns of it. Request 0:
/// `GET /ok` → 200 (creates the pooled connection). 3 s later request 1:
/// `POST /ok` on that dead connection → the backend's kernel (socket in
/// FIN_WAIT1, orphaned) answers the data with a bare RST (no ACK flag)
/// within 30 µs → nginx 502 ("recv() failed (104: Connection reset by
/// peer) while reading response header from upstream"). nginx runs with its
/// default `proxy_next_upstream error timeout` here: a POST is still not
/// retried (non-idempotent), which is how this race surfaces in production.
pub fn keepalive_race<H>(hook: impl FnOnce(&Topology) -> H) -> Scenario<H> {
    run_nginx_case(
        NginxCase {
            name: "keepalive_race",
            backend: Some(BackendOpts::default().keep_alive_timeout_ms(RACE_KEEPALIVE_TIMEOUT_MS)),
            upstream: |a| Upstream::new("backend").server(a).keepalive(4),
            config: |c| c.next_upstream(None),
            rules: |t| {
                vec![must(
                    IptablesRule::drop_outgoing_fin(&t.backend, BACKEND_PORT),
                    "iptables drop FIN",
                )]
            },
            plan: Plan::new().step(Step::get("/ok").tag("warm")).step(
                Step::post("/ok", "order=42")
                    .sleep_before_ms(RACE_IDLE_MS)
                    .tag("race"),
            ),
            key: 1,
            expected: Some(502),
        },
        hook,
    )
}

/// Backend reads the request, then closes (close(2) → FIN) after 200 ms
/// without a response byte → nginx sends its FIN back and answers 502
/// "upstream prematurely closed connection while reading response header
/// from upstream".
pub fn closed_before_response<H>(hook: impl FnOnce(&Topology) -> H) -> Scenario<H> {
    run_nginx_case(
        NginxCase {
            name: "closed_before_response",
            backend: Some(BackendOpts::default()),
            upstream: |a| Upstream::new("backend").server(a),
            config: |c| c,
            rules: no_rules,
            plan: Plan::new().step(Step::get("/close?delay_ms=200")),
            key: 0,
            expected: Some(502),
        },
        hook,
    )
}

/// Backend reads the request, then `socket.resetAndDestroy()` (RST|ACK
/// ~2 ms after the request) → nginx 502 "recv() failed (104: Connection
/// reset by peer) while reading response header from upstream".
pub fn backend_reset<H>(hook: impl FnOnce(&Topology) -> H) -> Scenario<H> {
    run_nginx_case(
        NginxCase {
            name: "backend_reset",
            backend: Some(BackendOpts::default()),
            upstream: |a| Upstream::new("backend").server(a),
            config: |c| c,
            rules: no_rules,
            plan: Plan::new().step(Step::get("/reset")),
            key: 0,
            expected: Some(502),
        },
        hook,
    )
}

/// The backend process SIGKILLs itself while the request is in flight;
/// the kernel closes its sockets. Node had already read the request, so the
/// kernel sends FIN (not RST) ~10 ms after the request: on the wire and in
/// nginx's log (`upstream prematurely closed connection while reading
/// response header from upstream`) this is identical to
/// [`closed_before_response`]; only the process exit tells them apart.
/// nginx 502. Afterwards the backend is restarted (its readiness probe is a
/// short connection inside the backend netns) and request 1 (`GET /ok`)
/// gets 200 over a new upstream connection.
pub fn process_exited<H>(hook: impl FnOnce(&Topology) -> H) -> Scenario<H> {
    preflight();
    let topo = must(Topology::new(), "topology");
    let backend_addr = topo.backend_addr();
    let mut backend = must(
        Backend::start(
            &topo.backend,
            topo.backend_ip(),
            BACKEND_PORT,
            BackendOpts::default(),
        ),
        "backend",
    );
    let cfg = NginxConfig::new(&topo.proxy_addr())
        .upstream(Upstream::new("backend").server(&backend_addr));
    let nginx = must(Nginx::start(&topo.proxy, cfg), "nginx");
    let hook = hook(&topo);
    let client = topo.client();
    let mut results = must(client.run(&Plan::new().step(Step::get("/exit"))), "client");
    let exit = backend.wait_exit(Duration::from_secs(5));
    assert!(exit.is_some(), "backend did not exit after /exit");
    must(backend.restart(), "restart backend");
    let mut after = must(client.run(&Plan::new().step(Step::get("/ok"))), "client");
    for r in &mut after {
        r.step = 1;
    }
    results.extend(after);
    let requests = join_nginx(&nginx, &results);
    Scenario {
        name: "process_exited",
        hook,
        results,
        requests,
        key: 0,
        expected_status: Some(502),
        proxy_pids: nginx.worker_pids(),
        proxy_addr: topo.proxy_addr(),
        upstream_addr: backend_addr,
        proxy: Proxy::Nginx(nginx),
        backends: vec![backend],
        rules: Vec::new(),
        topo,
    }
}

/// Nothing listens at the upstream address: the backend's kernel answers
/// the SYN with RST|ACK → nginx 502 "connect() failed (111: Connection
/// refused) while connecting to upstream".
pub fn connection_refused<H>(hook: impl FnOnce(&Topology) -> H) -> Scenario<H> {
    run_nginx_case(
        NginxCase {
            name: "connection_refused",
            backend: None,
            upstream: |a| Upstream::new("backend").server(a),
            config: |c| c,
            rules: no_rules,
            plan: Plan::new().step(Step::get("/ok")),
            key: 0,
            expected: Some(502),
        },
        hook,
    )
}

/// The backend netns drops incoming SYNs to the backend port (blackholed
/// host; the backend itself runs); `proxy_connect_timeout 1s` → one SYN, no
/// retransmission before nginx gives up at 1.0 s and closes the SYN_SENT
/// socket (no packet) → 504 "upstream timed out (110: Connection timed out)
/// while connecting to upstream".
pub fn connect_timeout<H>(hook: impl FnOnce(&Topology) -> H) -> Scenario<H> {
    run_nginx_case(
        NginxCase {
            name: "connect_timeout",
            backend: Some(BackendOpts::default()),
            upstream: |a| Upstream::new("backend").server(a),
            config: |c| c.connect_timeout_ms(1000),
            rules: |t| {
                vec![must(
                    IptablesRule::drop_incoming_syn(&t.backend, BACKEND_PORT),
                    "iptables drop SYN",
                )]
            },
            plan: Plan::new().step(Step::get("/ok")),
            key: 0,
            expected: Some(504),
        },
        hook,
    )
}

/// `/slow?ms=3000` with `proxy_read_timeout 1s`: after 1.0 s nginx sends
/// FIN upstream first (the backend answers with FIN, no response) → 504
/// "upstream timed out (110: Connection timed out) while reading response
/// header from upstream".
pub fn proxy_timeout<H>(hook: impl FnOnce(&Topology) -> H) -> Scenario<H> {
    run_nginx_case(
        NginxCase {
            name: "proxy_timeout",
            backend: Some(BackendOpts::default()),
            upstream: |a| Upstream::new("backend").server(a),
            config: |c| c.read_timeout_ms(1000),
            rules: no_rules,
            plan: Plan::new().step(Step::get("/slow?ms=3000")),
            key: 0,
            expected: Some(504),
        },
        hook,
    )
}

/// The client half-closes (FIN) right after sending `GET /slow?ms=2000`;
/// `proxy_read_timeout 1s`.
///
/// Verified on the wire (nginx 1.22.1):
///
/// - `ignore_client_abort = true` (`proxy_ignore_client_abort on`): nginx
///   does not watch the client. Client FIN arrives ~1 ms after the request;
///   nginx has already connected and sent the request upstream; after 1 s it
///   logs `[error] upstream timed out (110: Connection timed out) while
///   reading response header from upstream`, sends FIN upstream, then writes
///   `HTTP/1.1 504` to the client that had already sent FIN. The half-closed
///   client reads it: client 504, access log 504. The backend answers the
///   proxy's FIN with its own FIN at once (Node, no late response, no RST).
/// - `false` (nginx default): nginx sees the client's FIN immediately
///   (EPOLLRDHUP) and logs `[info] epoll_wait() reported that client
///   prematurely closed connection, so upstream connection is closed too
///   while sending request to upstream`; it has connected and sent the
///   request already, closes the upstream connection (FIN) and the client
///   connection (FIN) without writing a byte: the client sees EOF without a
///   response (`eof_before_response`), the access log says 499. Not a 5xx.
pub fn client_aborted<H>(
    ignore_client_abort: bool,
    hook: impl FnOnce(&Topology) -> H,
) -> Scenario<H> {
    let case = NginxCase {
        name: if ignore_client_abort {
            "client_aborted"
        } else {
            "client_aborted_default"
        },
        backend: Some(BackendOpts::default()),
        upstream: |a| Upstream::new("backend").server(a),
        config: if ignore_client_abort {
            |c: NginxConfig| c.read_timeout_ms(1000).ignore_client_abort(true)
        } else {
            |c: NginxConfig| c.read_timeout_ms(1000)
        },
        rules: no_rules,
        plan: Plan::new().step(Step::get("/slow?ms=2000").keep_alive(false).half_close()),
        key: 0,
        expected: if ignore_client_abort { Some(504) } else { None },
    };
    run_nginx_case(case, hook)
}

/// The only upstream server is marked `down`: nginx answers 502 without any
/// packet to the backend ("no live upstreams while connecting to
/// upstream"), although the backend itself is up. `$upstream_addr` is the
/// upstream group name, `backend`.
pub fn no_upstream_connection<H>(hook: impl FnOnce(&Topology) -> H) -> Scenario<H> {
    run_nginx_case(
        NginxCase {
            name: "no_upstream_connection",
            backend: Some(BackendOpts::default()),
            upstream: |a| Upstream::new("backend").server_down(a),
            config: |c| c,
            rules: no_rules,
            plan: Plan::new().step(Step::get("/ok")),
            key: 0,
            expected: Some(502),
        },
        hook,
    )
}

/// Number of requests and concurrency of [`mixed_load`].
pub const MIXED_REQUESTS: u32 = 400;
pub const MIXED_CONCURRENCY: u32 = 200;

/// Two backends behind nginx (round robin, `max_fails=0`, no upstream
/// keep-alive): `10.231.B.2:9000` healthy, `10.231.B.3:9000` resets every
/// request. 400 requests, 200 in flight, one fresh client connection each
/// (a client address may come back in a later request: nginx closes first,
/// so the client's port is free again at once). About half get 502;
/// `requests[i].upstream_addr` says which backend nginx used. `key` is the
/// first 502 (if any), `upstream_addr` the faulty backend.
pub fn mixed_load<H>(hook: impl FnOnce(&Topology) -> H) -> Scenario<H> {
    preflight();
    let topo = must(Topology::new(), "topology");
    let good_ip = topo.backend_ip().to_string();
    let bad_ip = topo.add_backend_ip(3);
    let good = must(
        Backend::start(
            &topo.backend,
            &good_ip,
            BACKEND_PORT,
            BackendOpts::default(),
        ),
        "healthy backend",
    );
    let bad = must(
        Backend::start(
            &topo.backend,
            &bad_ip,
            BACKEND_PORT,
            BackendOpts::default().mode("reset"),
        ),
        "faulty backend",
    );
    let cfg = NginxConfig::new(&topo.proxy_addr()).upstream(
        Upstream::new("backend")
            .server_no_fail_accounting(&good.addr())
            .server_no_fail_accounting(&bad.addr()),
    );
    let nginx = must(Nginx::start(&topo.proxy, cfg), "nginx");
    let hook = hook(&topo);
    let plan = Plan::new().step(
        Step::get("/ok")
            .count(MIXED_REQUESTS)
            .concurrency(MIXED_CONCURRENCY)
            .keep_alive(false),
    );
    let results = must(topo.client().run(&plan), "client");
    let requests = join_nginx(&nginx, &results);
    let key = results
        .iter()
        .position(|r| r.status == Some(502))
        .unwrap_or(0);
    Scenario {
        name: "mixed_load",
        hook,
        results,
        requests,
        key,
        expected_status: Some(502),
        proxy_pids: nginx.worker_pids(),
        proxy_addr: topo.proxy_addr(),
        upstream_addr: bad.addr(),
        proxy: Proxy::Nginx(nginx),
        backends: vec![good, bad],
        rules: Vec::new(),
        topo,
    }
}

/// Number of requests of [`healthy_control`].
pub const HEALTHY_REQUESTS: u32 = 5000;

/// 5,000 `GET /ok` through nginx to a healthy backend with keep-alive churn
/// on both sides: 50 client connections in flight, each closed after 20
/// requests (250 client connections in all); upstream `keepalive 8` with
/// `keepalive_requests 50`, so nginx also closes upstream connections both
/// when its idle pool overflows and after 50 requests. Everything must be
/// 200 and a tracer must report no 502.
pub fn healthy_control<H>(hook: impl FnOnce(&Topology) -> H) -> Scenario<H> {
    run_nginx_case(
        NginxCase {
            name: "healthy_control",
            backend: Some(BackendOpts::default()),
            upstream: |a| {
                Upstream::new("backend")
                    .server(a)
                    .keepalive(8)
                    .keepalive_requests(50)
            },
            config: |c| c,
            rules: no_rules,
            plan: Plan::new().step(
                Step::get("/ok")
                    .count(HEALTHY_REQUESTS)
                    .concurrency(50)
                    .keep_alive(true)
                    .requests_per_conn(20),
            ),
            key: 0,
            expected: Some(200),
        },
        hook,
    )
}

fn run_haproxy_case<H>(
    name: &'static str,
    backend: Option<BackendOpts>,
    path: &str,
    expected: u16,
    hook: impl FnOnce(&Topology) -> H,
) -> Scenario<H> {
    preflight();
    let topo = must(Topology::new(), "topology");
    let backend_addr = topo.backend_addr();
    let mut backends = Vec::new();
    if let Some(opts) = backend {
        backends.push(must(
            Backend::start(&topo.backend, topo.backend_ip(), BACKEND_PORT, opts),
            "backend",
        ));
    }
    let cfg = HaproxyConfig::new(&topo.proxy_addr()).server(&backend_addr);
    let h = must(Haproxy::start(&topo.proxy, cfg), "haproxy");
    let hook = hook(&topo);
    let results = must(
        topo.client().run(&Plan::new().step(Step::get(path))),
        "client",
    );
    let requests = join_haproxy(&h, &results);
    Scenario {
        name,
        hook,
        results,
        requests,
        key: 0,
        expected_status: Some(expected),
        proxy_pids: vec![h.pid()],
        proxy_addr: topo.proxy_addr(),
        upstream_addr: backend_addr,
        proxy: Proxy::Haproxy(h),
        backends,
        rules: Vec::new(),
        topo,
    }
}

/// HAProxy, nothing listening at the server address (SYN → RST|ACK). With
/// `retries 0` HAProxy answers **503** (not 502), termination state `SC--`.
pub fn haproxy_refused<H>(hook: impl FnOnce(&Topology) -> H) -> Scenario<H> {
    run_haproxy_case("haproxy_refused", None, "/ok", 503, hook)
}

/// HAProxy, backend resets mid-request (RST|ACK) → 502, termination state
/// `SH--`.
pub fn haproxy_reset<H>(hook: impl FnOnce(&Topology) -> H) -> Scenario<H> {
    run_haproxy_case(
        "haproxy_reset",
        Some(BackendOpts::default()),
        "/reset",
        502,
        hook,
    )
}

/// HAProxy, backend closes (FIN) 200 ms after the request, before any
/// response byte → 502, termination state `SH--` (same as a reset).
pub fn haproxy_closed_before_response<H>(hook: impl FnOnce(&Topology) -> H) -> Scenario<H> {
    run_haproxy_case(
        "haproxy_closed_before_response",
        Some(BackendOpts::default()),
        "/close?delay_ms=200",
        502,
        hook,
    )
}
