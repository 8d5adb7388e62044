//! `cargo xtask demo`: the tracer explaining real 502s, in well under a
//! minute (about 15 s once the tracer is built).
//!
//! Three network namespaces joined by veth pairs, all created here and
//! deleted at the end (also on error and on Ctrl-C):
//!
//! ```text
//! demo-client-PID          demo-proxy-PID                       demo-backend-PID
//!   curl 10.233.1.2 ──veth── 10.233.1.1:8080 nginx 10.233.2.1 ──veth── 10.233.2.2 node
//!                                                                         :9000 /ok /reset /close
//!                                                                         :9001 keep-alive, FIN dropped
//!                                                                         :9009 nothing listens (/down)
//! ```
//!
//! The tracer watches the proxy's and the backend's namespaces; the client
//! sends a few requests per route, and every `bad_gateway` line the tracer
//! prints is shown next to the request that caused it. The demo fails if a
//! 502 the client saw did not get exactly one `bad_gateway` line.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs::{self, File},
    io::{BufRead as _, BufReader, Read, Write as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, ExitCode, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{build, setup, workspace};

/// nginx's configuration, with `@NAME@` placeholders.
const NGINX_CONF: &str = include_str!("../demo/nginx.conf");
/// The misbehaving Node.js backend.
const BACKEND_JS: &str = include_str!("../demo/backend.js");

const CLIENT_IP: &str = "10.233.1.2";
/// nginx's address on the client side.
const PROXY_IP: &str = "10.233.1.1";
/// nginx's address on the backend side.
const PROXY_UPSTREAM_IP: &str = "10.233.2.1";
const BACKEND_IP: &str = "10.233.2.2";
const PROXY_PORT: u16 = 8080;
/// The backend's `/ok`, `/reset` and `/close`.
const ROUTES_PORT: u16 = 9000;
/// The backend server that closes idle keep-alive connections after 1 s.
const KEEPALIVE_PORT: u16 = 9001;
/// Where `/down` goes: nothing listens there.
const DOWN_PORT: u16 = 9009;

/// Time between two requests, so a person can follow.
const PACE: Duration = Duration::from_millis(500);
/// The keep-alive race: longer than the backend's keep-alive timeout. That
/// is `server.keepAliveTimeout = 1000`, but Node.js 20.20 (like the newer
/// lines) closes an idle connection 1 s later than that, so 2.5 s it is.
const IDLE_PAUSE: Duration = Duration::from_millis(2500);
/// Requests per route.
const ROUNDS: usize = 3;
/// Rounds of the keep-alive race (GET, pause, POST).
const KEEPALIVE_ROUNDS: usize = 2;

/// Set by SIGINT, SIGTERM or SIGHUP; every wait checks it.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    // An atomic store is async-signal-safe.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// The error a wait returns once Ctrl-C was pressed.
#[derive(Debug)]
struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err(Interrupted.into());
    }
    Ok(())
}

/// Runs the demo; the exit code says whether every 502 was explained.
pub fn demo() -> ExitCode {
    let started = Instant::now();
    let result = run();
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(true) => {
            println!("demo: done in {secs:.0} s");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            eprintln!("demo: FAILED after {secs:.0} s (see above)");
            ExitCode::FAILURE
        }
        Err(err) if err.is::<Interrupted>() => {
            eprintln!("demo: interrupted; everything it started is stopped and removed");
            ExitCode::from(130)
        }
        Err(err) => {
            eprintln!("demo: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Everything after set-up; `Ok(false)` when a 502 went unexplained. The
/// guards are declared in the order things start, so they drop (stop,
/// delete) in the reverse order, whichever way this returns.
fn run() -> Result<bool> {
    setup::setup(&setup::Options {
        test: true,
        ..Default::default()
    })?;
    let tracer_bin = build::tracer(true)?;
    let nginx_bin = workspace::find_program("nginx").context("nginx is not on PATH")?;
    let node_bin = workspace::find_program("node").context("node is not on PATH")?;
    let curl_bin = workspace::find_program("curl").context("curl is not on PATH")?;

    let out_dir = workspace::target_dir().join("demo");
    fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let out_dir = out_dir.canonicalize()?;

    // From here on, Ctrl-C only sets a flag: the waits below notice it and
    // return, and the guards clean up. Children get their own process
    // group so the terminal's Ctrl-C does not kill them behind our back.
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let handler = on_signal as extern "C" fn(libc::c_int);
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }

    remove_stale_namespaces();
    let suffix = std::process::id().to_string();
    let net = Namespaces::create(&suffix)?;
    println!();
    println!("demo: network namespaces, joined by veth pairs:");
    println!(
        "demo:   {} {CLIENT_IP} (curl) -- {} {PROXY_IP}:{PROXY_PORT} (nginx) {PROXY_UPSTREAM_IP} -- {} {BACKEND_IP} (node)",
        net.client, net.proxy, net.backend
    );

    let mut backend = start_backend(&net, &out_dir, &node_bin)?;
    let mut nginx = start_nginx(&net, &out_dir, &nginx_bin)?;
    backend.wait_listening(&[ROUTES_PORT, KEEPALIVE_PORT])?;
    nginx.wait_listening(&[PROXY_PORT])?;
    println!(
        "demo: nginx (pid {}) and node (pid {}) are up; proxy_next_upstream off, so every upstream failure is one 502",
        nginx.pid(),
        backend.pid()
    );

    // The tracer, on the proxy's and the backend's namespaces.
    let ndjson_path = out_dir.join("tracer.ndjson");
    let mut tracer = Tracer::start(&tracer_bin, &[&net.proxy, &net.backend], &ndjson_path)?;
    tracer.wait_started()?;

    let client = Client {
        curl: curl_bin,
        netns: net.client.clone(),
    };
    let requests = send_traffic(&client, &mut tracer)?;

    // Give the tracer a moment for the last lines, then stop it.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && !unexplained(&requests, &tracer.bad_gateways).is_empty() {
        tracer.watch(Duration::from_millis(100))?;
    }
    println!("demo: traffic done; stopping the tracer (SIGINT)");
    let status = tracer.stop()?;
    if !status.success() {
        eprintln!("demo: warning: the tracer exited with {status}");
    }
    print_stats(tracer.final_stats.as_ref());
    drop(nginx);
    drop(backend);
    drop(net);
    println!("demo: nginx, node and the namespaces are gone");

    let ok = summary(&requests, &tracer);
    println!(
        "demo: the tracer's raw NDJSON is in {} ({} lines)",
        ndjson_path.display(),
        tracer.lines
    );
    println!(
        "demo: nginx's and node's configs and logs are in {}",
        out_dir.display()
    );
    Ok(ok)
}

/// The FIN-dropping firewall rule and the Node.js backend, in the backend's
/// namespace.
fn start_backend(net: &Namespaces, out_dir: &Path, node: &Path) -> Result<Proc> {
    net.exec(
        &net.backend,
        "iptables",
        &[
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "--sport",
            &KEEPALIVE_PORT.to_string(),
            "--tcp-flags",
            "FIN",
            "FIN",
            "-j",
            "DROP",
        ],
    )?;
    let script = out_dir.join("backend.js");
    fs::write(&script, BACKEND_JS).with_context(|| format!("cannot write {}", script.display()))?;
    Proc::spawn_in(
        "node backend",
        &net.backend,
        node,
        &[
            path_str(&script)?,
            BACKEND_IP,
            &ROUTES_PORT.to_string(),
            &KEEPALIVE_PORT.to_string(),
        ],
        &out_dir.join("backend.log"),
        libc::SIGTERM,
    )
}

/// nginx in the proxy's namespace, in the foreground, files in `out_dir`.
fn start_nginx(net: &Namespaces, out_dir: &Path, nginx: &Path) -> Result<Proc> {
    let conf = NGINX_CONF
        .replace("@RUN_DIR@", path_str(out_dir)?)
        .replace("@PROXY_IP@", PROXY_IP)
        .replace("@PROXY_PORT@", &PROXY_PORT.to_string())
        .replace("@BACKEND_IP@", BACKEND_IP)
        .replace("@ROUTES_PORT@", &ROUTES_PORT.to_string())
        .replace("@KEEPALIVE_PORT@", &KEEPALIVE_PORT.to_string())
        .replace("@DOWN_PORT@", &DOWN_PORT.to_string());
    let conf_path = out_dir.join("nginx.conf");
    fs::write(&conf_path, conf).with_context(|| format!("cannot write {}", conf_path.display()))?;
    let error_log = out_dir.join("nginx-error.log");
    let _ = fs::remove_file(&error_log);
    let mut proc = Proc::spawn_in(
        "nginx",
        &net.proxy,
        nginx,
        &[
            "-p",
            path_str(out_dir)?,
            "-e",
            path_str(&error_log)?,
            "-c",
            path_str(&conf_path)?,
        ],
        &out_dir.join("nginx.out"),
        // nginx's fast shutdown; the master stops its worker.
        libc::SIGTERM,
    )?;
    proc.log_also = Some(error_log);
    Ok(proc)
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// The requests, paced, with the tracer's lines shown as they arrive.
fn send_traffic(client: &Client, tracer: &mut Tracer) -> Result<Vec<Request>> {
    println!(
        "demo: below, each `client:` line is one curl request; the `tracer:` lines after it are \
         what the tracer printed (each bad_gateway in full, each conn_end on one line)"
    );
    println!();
    let mut requests = Vec::new();
    for route in ["/ok", "/reset", "/close", "/down"] {
        println!("== GET {route}: {}", describe(route));
        for _ in 0..ROUNDS {
            requests.push(client.send("GET", route, route)?);
            tracer.watch(PACE)?;
        }
        println!();
    }
    println!(
        "== keep-alive race: nginx pools connections to {BACKEND_IP}:{KEEPALIVE_PORT}; that server \
         closes them when idle (keepAliveTimeout 1 s, plus the 1 s Node.js adds), but its FIN is \
         dropped (iptables), so nginx never learns; a GET, a {:.1} s pause, then a POST (never \
         retried) on the same pooled connection",
        IDLE_PAUSE.as_secs_f64()
    );
    for _ in 0..KEEPALIVE_ROUNDS {
        requests.push(client.send("GET", "/keepalive", "GET /keepalive")?);
        println!(
            "client: (pause {:.1} s: the pooled connection goes idle, the backend closes it)",
            IDLE_PAUSE.as_secs_f64()
        );
        tracer.watch(IDLE_PAUSE)?;
        requests.push(client.send("POST", "/keepalive", "POST /keepalive after idle")?);
        tracer.watch(PACE)?;
    }
    println!();
    Ok(requests)
}

/// What a route's backend does, for the heading.
fn describe(route: &str) -> &'static str {
    match route {
        "/ok" => "the backend answers 200",
        "/reset" => "the backend reads the request, then resets the connection (RST)",
        "/close" => {
            "the backend reads the request, then closes the connection (FIN) without answering"
        }
        "/down" => "nginx proxies to a port where nothing listens",
        _ => "",
    }
}

/// The cause DESIGN.md gives for a route's 502s.
fn expected_cause(label: &str) -> Option<&'static str> {
    match label {
        "/reset" => Some("backend_reset"),
        "/close" => Some("backend_closed_before_response"),
        "/down" => Some("connection_refused"),
        "POST /keepalive after idle" => Some("backend_closed_idle_keepalive"),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Network namespaces

/// The three namespaces and their veths; deleted on drop, after killing
/// whatever still runs inside them.
struct Namespaces {
    client: String,
    proxy: String,
    backend: String,
    /// The ones that exist, in creation order.
    created: Vec<String>,
}

impl Namespaces {
    fn create(suffix: &str) -> Result<Self> {
        let mut net = Self {
            client: format!("demo-client-{suffix}"),
            proxy: format!("demo-proxy-{suffix}"),
            backend: format!("demo-backend-{suffix}"),
            created: Vec::new(),
        };
        for name in [net.client.clone(), net.proxy.clone(), net.backend.clone()] {
            ip(&["netns", "add", &name])?;
            net.created.push(name.clone());
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
        }
        let links = [
            (
                &net.client,
                "to-proxy",
                CLIENT_IP,
                &net.proxy,
                "to-client",
                PROXY_IP,
            ),
            (
                &net.proxy,
                "to-backend",
                PROXY_UPSTREAM_IP,
                &net.backend,
                "to-proxy",
                BACKEND_IP,
            ),
        ];
        for (a, a_dev, a_ip, b, b_dev, b_ip) in links {
            // Both ends are created inside their namespaces: no name or
            // address ever appears in the host's namespace.
            ip(&[
                "-n", a, "link", "add", a_dev, "type", "veth", "peer", "name", b_dev, "netns", b,
            ])?;
            for (ns, dev, addr) in [(a, a_dev, a_ip), (b, b_dev, b_ip)] {
                ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
                ip(&["-n", ns, "link", "set", dev, "up"])?;
            }
        }
        Ok(net)
    }

    /// Runs a short command inside `ns` to completion.
    fn exec(&self, ns: &str, program: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["netns", "exec", ns, program];
        all.extend_from_slice(args);
        sh("ip", &all)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in self.created.iter().rev() {
            kill_all_in(name);
            if let Err(err) = ip(&["netns", "del", name]) {
                eprintln!("demo: warning: {err:#}");
            }
        }
    }
}

/// SIGKILLs every process left inside a namespace this demo created.
fn kill_all_in(netns: &str) {
    let Ok(pids) = sh("ip", &["netns", "pids", netns]) else {
        return;
    };
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        if pid > 1 {
            // SAFETY: kill has no memory-safety preconditions; the pid is
            // inside a namespace only this demo uses.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Deletes namespaces an earlier demo left when it was killed outright
/// (`demo-{client,proxy,backend}-PID` whose PID is gone).
fn remove_stale_namespaces() {
    let Ok(dir) = fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = ["demo-client-", "demo-proxy-", "demo-backend-"]
            .iter()
            .find_map(|p| name.strip_prefix(p))
        else {
            continue;
        };
        let Ok(pid) = rest.parse::<u32>() else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_all_in(&name);
        if ip(&["netns", "del", &name]).is_ok() {
            println!("demo: removed {name}, left behind by an earlier demo");
        }
    }
}

fn ip(args: &[&str]) -> Result<String> {
    sh("ip", args)
}

/// Runs a quick command to completion; its stdout, or an error with stderr.
fn sh(program: &str, args: &[&str]) -> Result<String> {
    let shown = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---------------------------------------------------------------------------
// Long-running processes

/// A child process, stopped (signal, then SIGKILL) on drop.
struct Proc {
    name: &'static str,
    child: Child,
    stop_signal: libc::c_int,
    log: PathBuf,
    /// Another file worth showing when it fails (nginx's error log).
    log_also: Option<PathBuf>,
}

impl Proc {
    /// Starts `program args` inside `netns` (`ip netns exec` execs it, so
    /// the child's pid is the program's), output to `log`.
    fn spawn_in(
        name: &'static str,
        netns: &str,
        program: &Path,
        args: &[&str],
        log: &Path,
        stop_signal: libc::c_int,
    ) -> Result<Self> {
        let out = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("could not start {name}"))?;
        Ok(Self {
            name,
            child,
            stop_signal,
            log: log.to_owned(),
            log_also: None,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the process listens on every port (its namespace's
    /// /proc/PID/net/tcp), without sending it any traffic.
    fn wait_listening(&mut self, ports: &[u16]) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            check_interrupted()?;
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited at start ({status}){}", self.name, self.logs());
            }
            let table =
                fs::read_to_string(format!("/proc/{}/net/tcp", self.pid())).unwrap_or_default();
            if ports.iter().all(|&p| listening(&table, p)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} does not listen on port(s) {ports:?} after 10 s{}",
                    self.name,
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The tail of its logs, for an error message.
    fn logs(&self) -> String {
        let mut s = String::new();
        for path in std::iter::once(&self.log).chain(&self.log_also) {
            let text = fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            if lines.is_empty() {
                continue;
            }
            let _ = write!(s, "\n--- {} (last lines)", path.display());
            for line in &lines[lines.len().saturating_sub(15)..] {
                let _ = write!(s, "\n{line}");
            }
        }
        s
    }

    /// Sends `signal`, waits up to `patience`, then SIGKILLs.
    fn stop_with(&mut self, signal: libc::c_int, patience: Duration) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let pid = self.pid() as libc::pid_t;
        // SAFETY: kill has no memory-safety preconditions; pid is our own
        // child, not yet reaped, so it cannot have been reused.
        unsafe { libc::kill(pid, signal) };
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "demo: warning: {} (pid {pid}) did not stop within {} s; killing it",
            self.name,
            patience.as_secs()
        );
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop_with(self.stop_signal, Duration::from_secs(5));
    }
}

/// Whether /proc/net/tcp text has a listening socket on `port`.
fn listening(table: &str, port: u16) -> bool {
    let suffix = format!(":{port:04X}");
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1).unwrap_or("");
        let state = fields.nth(1).unwrap_or("");
        local.ends_with(&suffix) && state == "0A"
    })
}

// ---------------------------------------------------------------------------
// The client

struct Client {
    curl: PathBuf,
    netns: String,
}

/// One request the client sent and what it saw.
struct Request {
    /// The route as the summary groups it (`/reset`, `GET /keepalive`, ...).
    label: String,
    /// HTTP status, `None` if curl got no response.
    status: Option<u16>,
    /// curl's local port: the `client` of a `bad_gateway` line.
    client_port: Option<u16>,
}

impl Client {
    /// Sends one request with curl from the client namespace (at most 5 s)
    /// and prints what came back.
    fn send(&self, method: &str, path: &str, label: &str) -> Result<Request> {
        check_interrupted()?;
        let url = format!("http://{PROXY_IP}:{PROXY_PORT}{path}");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns])
            .arg(&self.curl)
            .args(["-sS", "-o", "/dev/null", "--max-time", "5", "-X", method])
            .args(["-w", "%{http_code} %{local_port}"]);
        if method == "POST" {
            cmd.args(["--data", "order=42"]);
        }
        let mut child = cmd
            .arg(&url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .context("could not start curl")?;
        // curl is bounded by --max-time; poll so Ctrl-C is noticed.
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if INTERRUPTED.load(Ordering::SeqCst) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Interrupted.into());
            }
            thread::sleep(Duration::from_millis(10));
        };
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut s) = child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        if let Some(mut s) = child.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        let mut words = out.split_whitespace();
        let code = words.next().and_then(|w| w.parse::<u16>().ok());
        let port = words.next().and_then(|w| w.parse::<u16>().ok());
        let http_status = code.filter(|&c| c != 0);
        match http_status {
            Some(code) => println!(
                "client: {method} {path} -> {code} (from {CLIENT_IP}:{})",
                port.unwrap_or(0)
            ),
            None => println!(
                "client: {method} {path} -> no response ({status}: {})",
                err.trim()
            ),
        }
        Ok(Request {
            label: label.to_owned(),
            status: http_status,
            client_port: port.filter(|&p| p != 0),
        })
    }
}

// ---------------------------------------------------------------------------
// The tracer

struct Tracer {
    proc: Proc,
    /// Parsed lines of its stdout, from the reader thread.
    rx: Receiver<Json>,
    reader: Option<thread::JoinHandle<()>>,
    bad_gateways: Vec<Json>,
    conn_ends: Vec<Json>,
    final_stats: Option<Json>,
    started: bool,
    /// Lines read, any event.
    lines: usize,
}

impl Tracer {
    fn start(bin: &Path, netns: &[&str], ndjson: &Path) -> Result<Self> {
        let mut cmd = Command::new(bin);
        for ns in netns {
            cmd.arg("--netns").arg(format!("/run/netns/{ns}"));
        }
        println!(
            "demo: starting the tracer: {} {}",
            bin.display(),
            cmd.get_args()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let raw =
            File::create(ndjson).with_context(|| format!("cannot create {}", ndjson.display()))?;
        let stderr_log = ndjson.with_extension("stderr");
        let stderr = File::create(&stderr_log)
            .with_context(|| format!("cannot create {}", stderr_log.display()))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .with_context(|| format!("could not start {}", bin.display()))?;
        let stdout = child.stdout.take().context("tracer stdout")?;
        let proc = Proc {
            name: "tracer",
            child,
            stop_signal: libc::SIGINT,
            log: stderr_log,
            log_also: None,
        };
        let (tx, rx) = mpsc::channel();
        let reader = thread::spawn(move || read_lines(stdout, raw, &tx));
        Ok(Self {
            proc,
            rx,
            reader: Some(reader),
            bad_gateways: Vec::new(),
            conn_ends: Vec::new(),
            final_stats: None,
            started: false,
            lines: 0,
        })
    }

    /// Waits for the tracer's `start` line: its programs are attached.
    fn wait_started(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.started {
            if Instant::now() >= deadline {
                bail!(
                    "the tracer printed no `start` line in 60 s{}",
                    self.proc.logs()
                );
            }
            if !self.show_until(Instant::now() + Duration::from_millis(100))? {
                let status = self.proc.child.wait()?;
                bail!("the tracer exited at start ({status}){}", self.proc.logs());
            }
        }
        Ok(())
    }

    /// Shows the tracer's lines as they arrive until `deadline`; `false`
    /// if its output ended.
    fn show_until(&mut self, deadline: Instant) -> Result<bool> {
        loop {
            check_interrupted()?;
            let now = Instant::now();
            if now >= deadline {
                return Ok(true);
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            match self.rx.recv_timeout(wait) {
                Ok(event) => self.show(event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(false),
            }
        }
    }

    /// Shows the tracer's lines for `duration`; an error if it stopped.
    fn watch(&mut self, duration: Duration) -> Result<()> {
        if !self.show_until(Instant::now() + duration)? {
            let status = self.proc.child.wait()?;
            bail!(
                "the tracer stopped in the middle of the demo ({status}){}",
                self.proc.logs()
            );
        }
        Ok(())
    }

    fn show(&mut self, event: Json) {
        self.lines += 1;
        match event.get("event").str() {
            Some("start") => {
                self.started = true;
                let hooks = event.get("hooks").items();
                let attached = hooks
                    .iter()
                    .filter(|h| h.get("attached") == &Json::Bool(true))
                    .count();
                println!(
                    "demo: tracer attached (pid {}, {attached}/{} hooks, kernel {}, ready in {} ms)",
                    event.get("pid"),
                    hooks.len(),
                    event.get("kernel"),
                    event.get("startup_ms")
                );
            }
            Some("bad_gateway") => {
                print!("{}", render_bad_gateway(&event));
                self.bad_gateways.push(event);
            }
            Some("conn_end") => {
                println!("{}", render_conn_end(&event));
                self.conn_ends.push(event);
            }
            Some("stats") if event.get("final") == &Json::Bool(true) => {
                self.final_stats = Some(event);
            }
            Some("unparsed") => {
                println!("tracer: (not JSON) {}", event.get("line"));
            }
            _ => {}
        }
    }

    /// SIGINT, then shows what it printed while stopping.
    fn stop(&mut self) -> Result<ExitStatus> {
        let status = self
            .proc
            .stop_with(libc::SIGINT, Duration::from_secs(10))
            .context("could not wait for the tracer")?;
        // The reader thread ends at EOF; show what is left.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.show_until(Instant::now() + Duration::from_millis(100))? {
            if Instant::now() >= deadline {
                break;
            }
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        while let Ok(event) = self.rx.try_recv() {
            self.show(event);
        }
        let stderr = fs::read_to_string(&self.proc.log).unwrap_or_default();
        for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
            println!("tracer (stderr): {line}");
        }
        Ok(status)
    }
}

/// The reader thread: copies every line to the raw file and sends it on,
/// parsed.
fn read_lines(stdout: ChildStdout, mut raw: File, tx: &mpsc::Sender<Json>) {
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let _ = writeln!(raw, "{line}");
        let event = Json::parse(&line).unwrap_or_else(|_| {
            Json::Obj(vec![
                ("event".into(), Json::Str("unparsed".into())),
                ("line".into(), Json::Str(line.clone())),
            ])
        });
        if tx.send(event).is_err() {
            break;
        }
    }
    let _ = raw.flush();
}

/// A `bad_gateway` line as a short block.
fn render_bad_gateway(e: &Json) -> String {
    let up = e.get("upstream");
    let proxy = e.get("proxy");
    let mut s = String::new();
    let _ = writeln!(
        s,
        "tracer: {} bad_gateway  client {}  ->  {} (pid {})  ->  upstream {}",
        e.get("status"),
        e.get("client"),
        proxy.get("comm"),
        proxy.get("pid"),
        up.get("dst"),
    );
    let _ = writeln!(s, "          cause        {}", e.get("cause"));
    let _ = writeln!(
        s,
        "          closed_by    {}, how {}, rst_reason {}, error {}",
        e.get("closed_by"),
        e.get("how"),
        e.get("rst_reason"),
        e.get("error")
    );
    let idle = match e.get("idle_ms") {
        Json::Null => "-".to_owned(),
        v => format!("{v} ms"),
    };
    let _ = writeln!(s, "          idle         {idle}");
    let _ = writeln!(s, "          explanation  {}", e.get("explanation"));
    let steps = e.get("timeline").items();
    if !steps.is_empty() {
        let _ = writeln!(s, "          timeline (ms before the 502)");
        for step in steps {
            let t = step.get("t_ms").num().unwrap_or(0.0);
            let _ = writeln!(
                s,
                "            {t:>9.1}  {:<8} {}",
                step.get("side").to_string(),
                step.get("what")
            );
        }
    }
    s
}

/// A `conn_end` line as one line.
fn render_conn_end(e: &Json) -> String {
    let cause = match e.get("cause") {
        Json::Null => String::new(),
        c => format!(", cause {c}"),
    };
    format!(
        "tracer: conn_end  {} {} (pid {}) {} <-> {}: closed_by {}, how {}, rst_reason {}, idle {} ms{cause}",
        e.get("role"),
        e.get("comm"),
        e.get("pid"),
        e.get("src"),
        e.get("dst"),
        e.get("closed_by"),
        e.get("how"),
        e.get("rst_reason"),
        e.get("idle_ms"),
    )
}

fn print_stats(stats: Option<&Json>) {
    let Some(s) = stats else {
        println!("tracer: no final `stats` line (did it stop cleanly?)");
        return;
    };
    let emitted = s.get("emitted");
    let lost = s.get("lost");
    println!(
        "tracer: final stats: {} kernel records read, {} bad_gateway, {} conn_end, {} 5xx status lines seen; \
         lost {} (ring buffer full {}, socket map full {}, malformed {})",
        emitted.get("records_read"),
        emitted.get("bad_gateway"),
        emitted.get("conn_end"),
        emitted.get("http_5xx_seen"),
        lost.get("total"),
        lost.get("ring_buffer_full"),
        lost.get("socket_map_full"),
        lost.get("malformed_records"),
    );
}

// ---------------------------------------------------------------------------
// Checking and summing up

/// The client port of a `bad_gateway`'s `client` address.
fn client_port(e: &Json) -> Option<u16> {
    let client = e.get("client").str()?;
    let (ip, port) = client.rsplit_once(':')?;
    (ip == CLIENT_IP).then_some(())?;
    port.parse().ok()
}

/// The 502s without exactly one `bad_gateway` line.
fn unexplained<'a>(requests: &'a [Request], lines: &[Json]) -> Vec<(&'a Request, usize)> {
    requests
        .iter()
        .filter(|r| r.status == Some(502))
        .map(|r| {
            let n = lines
                .iter()
                .filter(|e| r.client_port.is_some() && client_port(e) == r.client_port)
                .count();
            (r, n)
        })
        .filter(|&(_, n)| n != 1)
        .collect()
}

/// `3× 502, 1× 200`.
fn tally<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut order = Vec::new();
    for item in items {
        let n = counts.entry(item).or_insert(0);
        if *n == 0 {
            order.push(item);
        }
        *n += 1;
    }
    if order.is_empty() {
        return "-".into();
    }
    order
        .iter()
        .map(|item| format!("{}x {item}", counts[item]))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints the per-route table and the verdict; `true` if every 502 got
/// exactly one `bad_gateway` line and no line was spurious.
fn summary(requests: &[Request], tracer: &Tracer) -> bool {
    println!();
    println!("summary: what the client saw, and what the tracer said");
    let mut labels: Vec<&str> = Vec::new();
    for r in requests {
        if !labels.contains(&r.label.as_str()) {
            labels.push(&r.label);
        }
    }
    let width = labels.iter().map(|l| l.len()).max().unwrap_or(0);
    for label in &labels {
        let mine: Vec<&Request> = requests.iter().filter(|r| r.label == *label).collect();
        let statuses: Vec<String> = mine
            .iter()
            .map(|r| r.status.map_or("no response".into(), |s| s.to_string()))
            .collect();
        let lines: Vec<&Json> = tracer
            .bad_gateways
            .iter()
            .filter(|e| {
                client_port(e).is_some() && mine.iter().any(|r| r.client_port == client_port(e))
            })
            .collect();
        let verdicts: Vec<String> = lines
            .iter()
            .map(|e| {
                format!(
                    "{} (closed_by {}, how {})",
                    e.get("cause"),
                    e.get("closed_by"),
                    e.get("how")
                )
            })
            .collect();
        let said = if verdicts.is_empty() {
            "no bad_gateway".to_owned()
        } else {
            tally(verdicts.iter().map(String::as_str))
        };
        let note = match expected_cause(label) {
            Some(want) if lines.iter().any(|e| e.get("cause").str() != Some(want)) => {
                format!("   <- DESIGN.md says {want}")
            }
            _ => String::new(),
        };
        println!(
            "  {label:<width$}  client: {:<10}  tracer: {said}{note}",
            tally(statuses.iter().map(String::as_str))
        );
    }

    let mut ok = true;
    let seen_502 = requests.iter().filter(|r| r.status == Some(502)).count();
    for (r, n) in unexplained(requests, &tracer.bad_gateways) {
        ok = false;
        println!(
            "demo: FAIL: {} from {CLIENT_IP}:{} got 502 but {n} bad_gateway lines (expected exactly 1)",
            r.label,
            r.client_port.unwrap_or(0)
        );
    }
    let spurious: Vec<&Json> = tracer
        .bad_gateways
        .iter()
        .filter(|e| {
            !requests.iter().any(|r| {
                r.status == Some(502) && r.client_port.is_some() && r.client_port == client_port(e)
            })
        })
        .collect();
    for e in &spurious {
        ok = false;
        println!(
            "demo: FAIL: a bad_gateway line for client {}, which saw no 502",
            e.get("client")
        );
    }
    if ok {
        println!(
            "demo: OK: each of the {seen_502} 502s the client saw got exactly one bad_gateway line"
        );
    }
    ok
}

// ---------------------------------------------------------------------------
// A small JSON reader: the tracer's lines are parsed here because xtask has
// no JSON dependency.

#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

static NULL: Json = Json::Null;

impl Json {
    fn parse(text: &str) -> Result<Json, String> {
        let mut p = JsonParser {
            s: text.as_bytes(),
            i: 0,
        };
        let value = p.value(0)?;
        p.skip_ws();
        if p.i != p.s.len() {
            return Err(format!("trailing characters at byte {}", p.i));
        }
        Ok(value)
    }

    /// The member `key` of an object; `Null` if absent or not an object.
    fn get(&self, key: &str) -> &Json {
        match self {
            Json::Obj(members) => members
                .iter()
                .find(|(k, _)| k == key)
                .map_or(&NULL, |(_, v)| v),
            _ => &NULL,
        }
    }

    fn str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    fn num(&self) -> Option<f64> {
        match self {
            Json::Num(n) => Some(*n),
            _ => None,
        }
    }

    fn items(&self) -> &[Json] {
        match self {
            Json::Arr(items) => items,
            _ => &[],
        }
    }
}

/// For reading: strings bare, `null` as `-`, whole numbers without `.0`.
impl std::fmt::Display for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Json::Null => f.write_str("-"),
            Json::Bool(b) => write!(f, "{b}"),
            Json::Num(n) if n.fract() == 0.0 && n.abs() < 1e15 => write!(f, "{}", *n as i64),
            Json::Num(n) => write!(f, "{n}"),
            Json::Str(s) => f.write_str(s),
            Json::Arr(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            Json::Obj(members) => {
                f.write_str("{")?;
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                f.write_str("}")
            }
        }
    }
}

struct JsonParser<'a> {
    s: &'a [u8],
    i: usize,
}

impl JsonParser<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("{what} at byte {}", self.i))
    }

    fn eat(&mut self, literal: &str) -> bool {
        if self.s[self.i..].starts_with(literal.as_bytes()) {
            self.i += literal.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, String> {
        if depth > 64 {
            return self.err("nested too deeply");
        }
        self.skip_ws();
        match self.s.get(self.i) {
            None => self.err("unexpected end"),
            Some(b'{') => {
                self.i += 1;
                let mut members = Vec::new();
                self.skip_ws();
                if self.eat("}") {
                    return Ok(Json::Obj(members));
                }
                loop {
                    self.skip_ws();
                    if self.s.get(self.i) != Some(&b'"') {
                        return self.err("expected a key");
                    }
                    let key = self.string()?;
                    self.skip_ws();
                    if !self.eat(":") {
                        return self.err("expected ':'");
                    }
                    let value = self.value(depth + 1)?;
                    members.push((key, value));
                    self.skip_ws();
                    if self.eat("}") {
                        return Ok(Json::Obj(members));
                    }
                    if !self.eat(",") {
                        return self.err("expected ',' or '}'");
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.skip_ws();
                if self.eat("]") {
                    return Ok(Json::Arr(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.skip_ws();
                    if self.eat("]") {
                        return Ok(Json::Arr(items));
                    }
                    if !self.eat(",") {
                        return self.err("expected ',' or ']'");
                    }
                }
            }
            Some(b'"') => self.string().map(Json::Str),
            Some(b't') if self.eat("true") => Ok(Json::Bool(true)),
            Some(b'f') if self.eat("false") => Ok(Json::Bool(false)),
            Some(b'n') if self.eat("null") => Ok(Json::Null),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
                match text.parse::<f64>() {
                    Ok(n) => Ok(Json::Num(n)),
                    Err(_) => self.err("bad number"),
                }
            }
            Some(_) => self.err("unexpected character"),
        }
    }

    /// A string starting at the opening quote.
    fn string(&mut self) -> Result<String, String> {
        self.i += 1;
        let mut out = String::new();
        loop {
            let start = self.i;
            while self.i < self.s.len() && !matches!(self.s[self.i], b'"' | b'\\') {
                self.i += 1;
            }
            // The input is a &str and the run stops at an ASCII byte, so
            // the run is valid UTF-8.
            out.push_str(std::str::from_utf8(&self.s[start..self.i]).unwrap_or("\u{fffd}"));
            match self.s.get(self.i) {
                None => return self.err("unterminated string"),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(_) => {
                    self.i += 1;
                    let Some(&escape) = self.s.get(self.i) else {
                        return self.err("unterminated escape");
                    };
                    self.i += 1;
                    match escape {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let high = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&high) && self.eat("\\u") {
                                let low = self.hex4()?;
                                0x10000
                                    + ((high - 0xD800) << 10)
                                    + (low.wrapping_sub(0xDC00) & 0x3FF)
                            } else {
                                high
                            };
                            out.push(char::from_u32(code).unwrap_or('\u{fffd}'));
                        }
                        _ => return self.err("bad escape"),
                    }
                }
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self
            .s
            .get(self.i..self.i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u32::from_str_radix(d, 16).ok());
        match digits {
            Some(n) => {
                self.i += 4;
                Ok(n)
            }
            None => self.err("bad \\u escape"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_bad_gateway_line() {
        let line = r#"{"ts":"2026-05-20T09:14:03.512981007Z","event":"bad_gateway","status":502,
            "proxy":{"pid":812,"comm":"nginx","pod":null},"client":"10.233.1.2:51544",
            "idle_ms":null,"ok":true,"timeline":[{"t_ms":-5003.1,"what":"a \"b\" \u00e9 \ud83d\ude00 ü"}]}"#;
        let v = Json::parse(line).unwrap();
        assert_eq!(v.get("event").str(), Some("bad_gateway"));
        assert_eq!(v.get("status").to_string(), "502");
        assert_eq!(v.get("proxy").get("comm").str(), Some("nginx"));
        assert_eq!(v.get("idle_ms"), &Json::Null);
        assert_eq!(v.get("ok"), &Json::Bool(true));
        assert_eq!(v.get("missing").get("deeper"), &Json::Null);
        let step = &v.get("timeline").items()[0];
        assert_eq!(step.get("t_ms").num(), Some(-5003.1));
        assert_eq!(step.get("what").str(), Some("a \"b\" é 😀 ü"));
        assert_eq!(client_port(&v), Some(51544));
    }

    #[test]
    fn rejects_broken_json() {
        for bad in ["", "{", "{\"a\":}", "[1,]", "\"abc", "{\"a\":1} x", "tru"] {
            assert!(Json::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Json::parse(" [ ] ").unwrap(), Json::Arr(vec![]));
    }

    #[test]
    fn reads_listening_sockets() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
                     0: 0201E90A:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n   \
                     1: 0201E90A:2329 0101E90A:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0\n";
        assert!(listening(table, 8080));
        assert!(!listening(table, 9001));
    }

    #[test]
    fn tallies_in_first_seen_order() {
        assert_eq!(tally(["502", "200", "502"]), "2x 502, 1x 200");
        assert_eq!(tally([]), "-");
    }
}
