//! nginx as a reverse proxy inside a namespace.
//!
//! Runs `nginx -p DIR -e DIR/error.log -c DIR/nginx.conf -g 'daemon off;
//! master_process on;'`: a master plus `worker_processes` workers, as in
//! production. The workers are the processes that talk to clients and
//! upstreams (and so write the 502s the tracer must see); the master only
//! forks and supervises. The master is the leader of its own process group,
//! so dropping [`Nginx`] kills the workers too.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::netns::Netns;
use crate::proc::Proc;
use crate::util::{child_pids, poll, require_bin, tail_file, TempDir};

/// One `server` line of an upstream block.
#[derive(Clone, Debug)]
pub struct UpstreamServer {
    pub addr: String,
    pub down: bool,
    /// `max_fails=` (nginx default 1; 0 disables failure accounting so round
    /// robin keeps choosing a failing server).
    pub max_fails: Option<u32>,
    pub fail_timeout_s: Option<u32>,
}

/// An `upstream NAME { ... }` block.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub name: String,
    pub servers: Vec<UpstreamServer>,
    /// `keepalive N` (idle connection cache per worker).
    pub keepalive: Option<u32>,
    pub keepalive_timeout_ms: Option<u64>,
    pub keepalive_requests: Option<u32>,
}

impl Upstream {
    pub fn new(name: &str) -> Upstream {
        Upstream {
            name: name.into(),
            servers: Vec::new(),
            keepalive: None,
            keepalive_timeout_ms: None,
            keepalive_requests: None,
        }
    }

    pub fn server(mut self, addr: &str) -> Self {
        self.servers.push(UpstreamServer {
            addr: addr.into(),
            down: false,
            max_fails: None,
            fail_timeout_s: None,
        });
        self
    }

    /// A server with `max_fails=0` (never marked unavailable).
    pub fn server_no_fail_accounting(mut self, addr: &str) -> Self {
        self.servers.push(UpstreamServer {
            addr: addr.into(),
            down: false,
            max_fails: Some(0),
            fail_timeout_s: None,
        });
        self
    }

    /// A server marked `down`.
    pub fn server_down(mut self, addr: &str) -> Self {
        self.servers.push(UpstreamServer {
            addr: addr.into(),
            down: true,
            max_fails: None,
            fail_timeout_s: None,
        });
        self
    }

    /// `keepalive N` plus, on the location, `proxy_http_version 1.1;
    /// proxy_set_header Connection "";` (added automatically).
    pub fn keepalive(mut self, n: u32) -> Self {
        self.keepalive = Some(n);
        self
    }

    pub fn keepalive_timeout_ms(mut self, ms: u64) -> Self {
        self.keepalive_timeout_ms = Some(ms);
        self
    }

    pub fn keepalive_requests(mut self, n: u32) -> Self {
        self.keepalive_requests = Some(n);
        self
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "    upstream {} {{", self.name);
        for s in &self.servers {
            let _ = write!(out, "        server {}", s.addr);
            if let Some(m) = s.max_fails {
                let _ = write!(out, " max_fails={m}");
            }
            if let Some(t) = s.fail_timeout_s {
                let _ = write!(out, " fail_timeout={t}s");
            }
            if s.down {
                out.push_str(" down");
            }
            out.push_str(";\n");
        }
        if let Some(k) = self.keepalive {
            let _ = writeln!(out, "        keepalive {k};");
        }
        if let Some(t) = self.keepalive_timeout_ms {
            let _ = writeln!(out, "        keepalive_timeout {t}ms;");
        }
        if let Some(r) = self.keepalive_requests {
            let _ = writeln!(out, "        keepalive_requests {r};");
        }
        out.push_str("    }\n");
    }
}

/// nginx configuration builder. `location /` proxies to the first upstream;
/// further `location /<name>/` blocks proxy to the others.
#[derive(Clone, Debug)]
pub struct NginxConfig {
    pub listen: String,
    pub worker_processes: u32,
    pub upstreams: Vec<Upstream>,
    /// `proxy_next_upstream` value; `None` omits the directive (nginx
    /// default `error timeout`). Default here: `Some("off")`, so failures
    /// are not hidden by retries.
    pub next_upstream: Option<String>,
    pub connect_timeout_ms: Option<u64>,
    pub read_timeout_ms: Option<u64>,
    pub send_timeout_ms: Option<u64>,
    pub ignore_client_abort: bool,
    /// Client-side `keepalive_timeout` (nginx default 75 s).
    pub client_keepalive_timeout_s: Option<u32>,
    /// Raw text appended inside `http { }` / the proxied `location / { }`.
    pub extra_http: String,
    pub extra_location: String,
}

impl NginxConfig {
    /// Listen on `ip:port`, 1 worker, `proxy_next_upstream off`.
    pub fn new(listen: &str) -> NginxConfig {
        NginxConfig {
            listen: listen.into(),
            worker_processes: 1,
            upstreams: Vec::new(),
            next_upstream: Some("off".into()),
            connect_timeout_ms: None,
            read_timeout_ms: None,
            send_timeout_ms: None,
            ignore_client_abort: false,
            client_keepalive_timeout_s: None,
            extra_http: String::new(),
            extra_location: String::new(),
        }
    }

    pub fn upstream(mut self, u: Upstream) -> Self {
        self.upstreams.push(u);
        self
    }

    pub fn worker_processes(mut self, n: u32) -> Self {
        self.worker_processes = n;
        self
    }

    /// `proxy_next_upstream VALUE` (e.g. "error timeout"), or None for
    /// nginx's default.
    pub fn next_upstream(mut self, v: Option<&str>) -> Self {
        self.next_upstream = v.map(str::to_string);
        self
    }

    pub fn connect_timeout_ms(mut self, ms: u64) -> Self {
        self.connect_timeout_ms = Some(ms);
        self
    }

    pub fn read_timeout_ms(mut self, ms: u64) -> Self {
        self.read_timeout_ms = Some(ms);
        self
    }

    pub fn send_timeout_ms(mut self, ms: u64) -> Self {
        self.send_timeout_ms = Some(ms);
        self
    }

    pub fn ignore_client_abort(mut self, on: bool) -> Self {
        self.ignore_client_abort = on;
        self
    }

    pub fn extra_location(mut self, raw: &str) -> Self {
        self.extra_location.push_str(raw);
        self.extra_location.push('\n');
        self
    }

    pub fn extra_http(mut self, raw: &str) -> Self {
        self.extra_http.push_str(raw);
        self.extra_http.push('\n');
        self
    }

    fn render_location(&self, out: &mut String, path: &str, up: &Upstream) {
        let _ = writeln!(out, "        location {path} {{");
        let _ = writeln!(out, "            proxy_pass http://{};", up.name);
        if up.keepalive.is_some() {
            out.push_str("            proxy_http_version 1.1;\n");
            out.push_str("            proxy_set_header Connection \"\";\n");
        }
        if let Some(v) = &self.next_upstream {
            let _ = writeln!(out, "            proxy_next_upstream {v};");
        }
        if let Some(t) = self.connect_timeout_ms {
            let _ = writeln!(out, "            proxy_connect_timeout {t}ms;");
        }
        if let Some(t) = self.read_timeout_ms {
            let _ = writeln!(out, "            proxy_read_timeout {t}ms;");
        }
        if let Some(t) = self.send_timeout_ms {
            let _ = writeln!(out, "            proxy_send_timeout {t}ms;");
        }
        if self.ignore_client_abort {
            out.push_str("            proxy_ignore_client_abort on;\n");
        }
        out.push_str(&self.extra_location);
        out.push_str("        }\n");
    }

    /// The full nginx.conf text for prefix directory `dir`.
    pub fn render(&self, dir: &std::path::Path) -> String {
        let d = dir.display();
        let mut out = String::new();
        // Workers as root: they must write the temp dirs under DIR.
        let _ = writeln!(out, "user root;");
        let _ = writeln!(out, "worker_processes {};", self.worker_processes);
        let _ = writeln!(out, "worker_rlimit_nofile 16384;");
        let _ = writeln!(out, "pid {d}/nginx.pid;");
        let _ = writeln!(out, "error_log {d}/error.log info;");
        out.push_str("events {\n    worker_connections 4096;\n}\n");
        out.push_str("http {\n");
        // Fields separated by '|': $upstream_addr can hold "a, b" lists.
        out.push_str(
            "    log_format t502 '$status|$upstream_addr|$remote_addr:$remote_port|$request_time\
             |$upstream_status|$msec|$connection|$request';\n",
        );
        let _ = writeln!(out, "    access_log {d}/access.log t502;");
        for (k, sub) in [
            ("client_body_temp_path", "client_body"),
            ("proxy_temp_path", "proxy"),
            ("fastcgi_temp_path", "fastcgi"),
            ("uwsgi_temp_path", "uwsgi"),
            ("scgi_temp_path", "scgi"),
        ] {
            let _ = writeln!(out, "    {k} {d}/{sub};");
        }
        if let Some(t) = self.client_keepalive_timeout_s {
            let _ = writeln!(out, "    keepalive_timeout {t}s;");
        }
        out.push_str(&self.extra_http);
        for u in &self.upstreams {
            u.render(&mut out);
        }
        out.push_str("    server {\n");
        let _ = writeln!(out, "        listen {};", self.listen);
        if let Some(first) = self.upstreams.first() {
            self.render_location(&mut out, "/", first);
        }
        for u in self.upstreams.iter().skip(1) {
            self.render_location(&mut out, &format!("/{}/", u.name), u);
        }
        out.push_str("    }\n}\n");
        out
    }
}

/// One access-log line.
#[derive(Clone, Debug, PartialEq)]
pub struct AccessEntry {
    pub status: u16,
    /// `$upstream_addr` ("-" if none, "a, b" after retries).
    pub upstream_addr: String,
    /// `$remote_addr:$remote_port` — the client's address as nginx saw it.
    pub client: String,
    pub request_time_s: f64,
    pub upstream_status: String,
    /// `$msec`: Unix time (s, ms resolution) when the log line was written.
    pub msec: f64,
    pub connection: u64,
    pub request: String,
}

impl AccessEntry {
    pub fn parse(line: &str) -> Option<AccessEntry> {
        let mut it = line.splitn(8, '|');
        Some(AccessEntry {
            status: it.next()?.parse().ok()?,
            upstream_addr: it.next()?.to_string(),
            client: it.next()?.to_string(),
            request_time_s: it.next()?.parse().ok()?,
            upstream_status: it.next()?.to_string(),
            msec: it.next()?.parse().ok()?,
            connection: it.next()?.parse().ok()?,
            request: it.next()?.to_string(),
        })
    }
}

/// A running nginx (master + workers) in a namespace.
#[derive(Debug)]
pub struct Nginx {
    proc: Proc,
    netns: Netns,
    config: NginxConfig,
    dir: TempDir,
}

impl Nginx {
    /// Write the config, start nginx and wait (≤ 10 s) until it listens and
    /// all workers are up. Fails with the error log if it does not start.
    pub fn start(netns: &Netns, config: NginxConfig) -> Result<Nginx> {
        let bin = require_bin("nginx");
        let dir = TempDir::new("nginx")?;
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, config.render(dir.path()))?;
        let mut cmd = netns.command(&bin.to_string_lossy());
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off; master_process on;"]);
        let proc = Proc::spawn("nginx", cmd, dir.path())?;
        let mut n = Nginx {
            proc,
            netns: netns.clone(),
            config,
            dir,
        };
        let (ip, port) = n.listen_ip_port()?;
        let ns = n.netns.clone();
        n.proc
            .wait_ready(&ns, &ip, port, Duration::from_secs(10))
            .with_context(|| format!("nginx error log:\n{}", n.error_log()))?;
        let want = n.config.worker_processes as usize;
        if poll(Duration::from_secs(5), Duration::from_millis(20), || {
            (n.worker_pids().len() >= want).then_some(())
        })
        .is_none()
        {
            bail!(
                "nginx workers did not start\n{}",
                tail_file(&n.dir.join("error.log"), 30)
            );
        }
        Ok(n)
    }

    fn listen_ip_port(&self) -> Result<(String, u16)> {
        let (ip, port) = self
            .config
            .listen
            .rsplit_once(':')
            .context("listen must be ip:port")?;
        Ok((ip.to_string(), port.parse()?))
    }

    /// `ip:port` nginx listens on.
    pub fn addr(&self) -> &str {
        &self.config.listen
    }

    pub fn master_pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Pids of the worker processes (children of the master).
    pub fn worker_pids(&self) -> Vec<u32> {
        child_pids(self.proc.pid())
    }

    pub fn config(&self) -> &NginxConfig {
        &self.config
    }

    /// The rendered nginx.conf.
    pub fn config_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("nginx.conf")).unwrap_or_default()
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    /// Error-log lines at level `[error]` (upstream failures and timeouts
    /// are logged at that level; client closes at `[info]`).
    pub fn error_lines(&self) -> Vec<String> {
        self.error_log()
            .lines()
            .filter(|l| l.contains("[error]"))
            .map(str::to_string)
            .collect()
    }

    pub fn access_log(&self) -> Vec<AccessEntry> {
        std::fs::read_to_string(self.dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(AccessEntry::parse)
            .collect()
    }

    /// Wait (bounded) until the access log has at least `n` entries: nginx
    /// writes the line when it finalizes a request, which can be a moment
    /// after the client got the response.
    pub fn wait_access_entries(&self, n: usize, timeout: Duration) -> Vec<AccessEntry> {
        poll(timeout, Duration::from_millis(20), || {
            let v = self.access_log();
            (v.len() >= n).then_some(v)
        })
        .unwrap_or_else(|| self.access_log())
    }

    /// The access-log entry for a client address `ip:port`.
    pub fn access_for(&self, client: &str) -> Option<AccessEntry> {
        self.access_log().into_iter().find(|e| e.client == client)
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- nginx error.log (tail)\n{}\n--- nginx access.log (tail)\n{}",
                tail_file(&self.dir.join("error.log"), 40),
                tail_file(&self.dir.join("access.log"), 20)
            );
        }
        // Fast shutdown first (SIGTERM: the master stops and reaps its
        // workers, so none is left as an orphan), then SIGKILL the whole
        // process group in any case.
        self.proc.signal(libc::SIGTERM);
        self.proc.wait_timeout(Duration::from_secs(2));
        self.proc.kill();
    }
}
