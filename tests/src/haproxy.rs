//! HAProxy as a reverse proxy inside a namespace (`haproxy -f CFG -db`).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::netns::Netns;
use crate::proc::Proc;
use crate::util::{poll, require_bin, tail_file, TempDir};

/// HAProxy configuration: `mode http`, one frontend, one backend `be` with
/// servers `s0..`, `retries 0`, `no option redispatch`.
#[derive(Clone, Debug)]
pub struct HaproxyConfig {
    pub listen: String,
    pub servers: Vec<String>,
    /// true: `option http-keep-alive` (HAProxy's default; server
    /// connections are reused); false: `option http-server-close`.
    pub keep_alive: bool,
    pub timeout_connect_ms: u64,
    pub timeout_client_ms: u64,
    pub timeout_server_ms: u64,
    /// `nbthread` (None: HAProxy's default, one per CPU).
    pub nbthread: Option<u32>,
    pub extra_backend: String,
}

impl HaproxyConfig {
    pub fn new(listen: &str) -> HaproxyConfig {
        HaproxyConfig {
            listen: listen.into(),
            servers: Vec::new(),
            keep_alive: true,
            timeout_connect_ms: 1000,
            timeout_client_ms: 10_000,
            timeout_server_ms: 5000,
            nbthread: None,
            extra_backend: String::new(),
        }
    }

    pub fn server(mut self, addr: &str) -> Self {
        self.servers.push(addr.into());
        self
    }

    pub fn keep_alive(mut self, on: bool) -> Self {
        self.keep_alive = on;
        self
    }

    pub fn timeout_connect_ms(mut self, ms: u64) -> Self {
        self.timeout_connect_ms = ms;
        self
    }

    pub fn timeout_server_ms(mut self, ms: u64) -> Self {
        self.timeout_server_ms = ms;
        self
    }

    pub fn timeout_client_ms(mut self, ms: u64) -> Self {
        self.timeout_client_ms = ms;
        self
    }

    pub fn nbthread(mut self, n: u32) -> Self {
        self.nbthread = Some(n);
        self
    }

    pub fn extra_backend(mut self, raw: &str) -> Self {
        self.extra_backend.push_str(raw);
        self.extra_backend.push('\n');
        self
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("global\n");
        // Logs go to HAProxy's stdout (captured to a file by the harness).
        out.push_str("    log stdout format raw local0 info\n");
        out.push_str("    maxconn 8192\n");
        if let Some(n) = self.nbthread {
            let _ = writeln!(out, "    nbthread {n}");
        }
        out.push_str("defaults\n");
        // dontlognull: no log line for connections without a request (the
        // harness's readiness probe).
        out.push_str("    mode http\n    log global\n    option dontlognull\n");
        // Fields separated by '|': status, server address, client address,
        // total time, termination state, backend/server, request line.
        out.push_str("    log-format \"%ST|%si:%sp|%ci:%cp|%Tt|%tsc|%b/%s|%{+Q}r\"\n");
        out.push_str("    retries 0\n    no option redispatch\n");
        if self.keep_alive {
            out.push_str("    option http-keep-alive\n");
        } else {
            out.push_str("    option http-server-close\n");
        }
        let _ = writeln!(out, "    timeout connect {}ms", self.timeout_connect_ms);
        let _ = writeln!(out, "    timeout client {}ms", self.timeout_client_ms);
        let _ = writeln!(out, "    timeout server {}ms", self.timeout_server_ms);
        out.push_str("frontend fe\n");
        let _ = writeln!(out, "    bind {}", self.listen);
        out.push_str("    default_backend be\n");
        out.push_str("backend be\n");
        for (i, s) in self.servers.iter().enumerate() {
            let _ = writeln!(out, "    server s{i} {s}");
        }
        out.push_str(&self.extra_backend);
        out
    }
}

/// One HAProxy log line (see [`HaproxyConfig::render`] for the format).
#[derive(Clone, Debug, PartialEq)]
pub struct HaproxyLogEntry {
    pub status: i32,
    /// `%si:%sp`: server address.
    pub server_addr: String,
    /// `%ci:%cp`: the client's address as HAProxy saw it.
    pub client: String,
    pub total_ms: i64,
    /// `%tsc`: termination state + cookie flags, e.g. "SH--", "SC--", "----".
    pub termination: String,
    pub backend_server: String,
    pub request: String,
    pub raw: String,
}

impl HaproxyLogEntry {
    pub fn parse(line: &str) -> Option<HaproxyLogEntry> {
        let mut it = line.splitn(7, '|');
        Some(HaproxyLogEntry {
            status: it.next()?.trim().parse().ok()?,
            server_addr: it.next()?.to_string(),
            client: it.next()?.to_string(),
            total_ms: it.next()?.parse().ok()?,
            termination: it.next()?.to_string(),
            backend_server: it.next()?.to_string(),
            request: it.next()?.to_string(),
            raw: line.to_string(),
        })
    }
}

/// A running HAProxy (one process, possibly several threads).
#[derive(Debug)]
pub struct Haproxy {
    proc: Proc,
    netns: Netns,
    config: HaproxyConfig,
    dir: TempDir,
}

impl Haproxy {
    /// Write the config, start `haproxy -f CFG -db` and wait (≤ 10 s) until
    /// it listens.
    pub fn start(netns: &Netns, config: HaproxyConfig) -> Result<Haproxy> {
        let bin = require_bin("haproxy");
        let dir = TempDir::new("haproxy")?;
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config.render())?;
        let mut cmd = netns.command(&bin.to_string_lossy());
        cmd.arg("-f").arg(&cfg).arg("-db");
        let proc = Proc::spawn("haproxy", cmd, dir.path())?;
        let mut h = Haproxy {
            proc,
            netns: netns.clone(),
            config,
            dir,
        };
        let (ip, port) = h
            .config
            .listen
            .rsplit_once(':')
            .context("listen must be ip:port")?;
        let (ip, port) = (ip.to_string(), port.parse::<u16>()?);
        let ns = h.netns.clone();
        h.proc.wait_ready(&ns, &ip, port, Duration::from_secs(10))?;
        Ok(h)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn addr(&self) -> &str {
        &self.config.listen
    }

    pub fn config_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("haproxy.cfg")).unwrap_or_default()
    }

    /// Parsed request log lines.
    pub fn log(&self) -> Vec<HaproxyLogEntry> {
        self.proc
            .stdout()
            .lines()
            .filter_map(HaproxyLogEntry::parse)
            .collect()
    }

    /// Everything HAProxy printed (stdout log + stderr warnings).
    pub fn raw_log(&self) -> String {
        format!("{}{}", self.proc.stdout(), self.proc.stderr())
    }

    /// Wait (bounded) until at least `n` request log lines exist.
    pub fn wait_log_entries(&self, n: usize, timeout: Duration) -> Vec<HaproxyLogEntry> {
        poll(timeout, Duration::from_millis(20), || {
            let v = self.log();
            (v.len() >= n).then_some(v)
        })
        .unwrap_or_else(|| self.log())
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- haproxy config\n{}",
                tail_file(&self.dir.join("haproxy.cfg"), 60)
            );
        }
        self.proc.kill();
    }
}
