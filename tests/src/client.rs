//! HTTP client (`tests/fixtures/client.js`) run inside a namespace.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::backend::node_bin;
use crate::netns::Netns;
use crate::proc::Proc;
use crate::util::{fixture, TempDir};

/// One step of a [`Plan`]: `count` identical requests, at most `concurrency`
/// in flight.
#[derive(Clone, Debug)]
pub struct Step {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    pub count: u32,
    pub concurrency: u32,
    pub keep_alive: bool,
    /// With keep_alive: close the connection after this many requests (0: never).
    pub requests_per_conn: u32,
    pub half_close_after_send: bool,
    pub sleep_before_ms: u64,
    pub timeout_ms: Option<u64>,
    pub tag: String,
}

impl Step {
    /// One `GET path`, keep-alive on.
    pub fn get(path: &str) -> Step {
        Step {
            method: "GET".into(),
            path: path.into(),
            headers: Vec::new(),
            body: None,
            count: 1,
            concurrency: 1,
            keep_alive: true,
            requests_per_conn: 0,
            half_close_after_send: false,
            sleep_before_ms: 0,
            timeout_ms: None,
            tag: String::new(),
        }
    }

    /// One `POST path` with `body` (nginx never retries it on another
    /// connection/server unless `proxy_next_upstream non_idempotent`).
    pub fn post(path: &str, body: &str) -> Step {
        Step {
            method: "POST".into(),
            body: Some(body.into()),
            ..Step::get(path)
        }
    }

    pub fn count(mut self, n: u32) -> Self {
        self.count = n;
        self
    }

    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }

    pub fn keep_alive(mut self, on: bool) -> Self {
        self.keep_alive = on;
        self
    }

    pub fn requests_per_conn(mut self, n: u32) -> Self {
        self.requests_per_conn = n;
        self
    }

    pub fn half_close(mut self) -> Self {
        self.half_close_after_send = true;
        self
    }

    pub fn sleep_before_ms(mut self, ms: u64) -> Self {
        self.sleep_before_ms = ms;
        self
    }

    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    pub fn tag(mut self, t: &str) -> Self {
        self.tag = t.into();
        self
    }

    fn to_json(&self) -> Value {
        let headers: serde_json::Map<String, Value> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        json!({
            "method": self.method,
            "path": self.path,
            "headers": headers,
            "body": self.body,
            "count": self.count,
            "concurrency": self.concurrency,
            "keep_alive": self.keep_alive,
            "requests_per_conn": self.requests_per_conn,
            "half_close_after_send": self.half_close_after_send,
            "sleep_before_ms": self.sleep_before_ms,
            "timeout_ms": self.timeout_ms,
            "tag": self.tag,
        })
    }
}

/// A sequence of [`Step`]s against one `host:port`.
#[derive(Clone, Debug)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Per-request timeout default (ms).
    pub timeout_ms: u64,
}

impl Plan {
    pub fn new() -> Plan {
        Plan {
            steps: Vec::new(),
            timeout_ms: 10_000,
        }
    }

    pub fn step(mut self, s: Step) -> Self {
        self.steps.push(s);
        self
    }

    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = ms;
        self
    }

    /// Upper bound on the run time, used for the script's own watchdog and
    /// the harness's wait: sleeps + per-request timeouts × sequential rounds.
    pub fn max_runtime(&self) -> Duration {
        let mut ms: u64 = 2_000;
        for s in &self.steps {
            let rounds = s.count.div_ceil(s.concurrency.max(1)) as u64;
            ms += s.sleep_before_ms + rounds * s.timeout_ms.unwrap_or(self.timeout_ms);
        }
        Duration::from_millis(ms.min(600_000))
    }

    fn to_json(&self, host: &str, port: u16) -> Value {
        json!({
            "host": host,
            "port": port,
            "timeout_ms": self.timeout_ms,
            "max_runtime_ms": self.max_runtime().as_millis() as u64,
            "steps": self.steps.iter().map(Step::to_json).collect::<Vec<_>>(),
        })
    }
}

impl Default for Plan {
    fn default() -> Self {
        Plan::new()
    }
}

/// What the client saw for one request.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientResult {
    pub step: usize,
    pub i: usize,
    pub tag: String,
    /// HTTP status, None if no response arrived (see `error`).
    pub status: Option<u16>,
    /// The client's own `ip:port` (what the proxy sees as the client).
    pub local: Option<String>,
    /// ECONNRESET, ECONNREFUSED, eof_before_response, timeout, ...
    pub error: Option<String>,
    /// Unix epoch milliseconds.
    pub t_start_ms: f64,
    pub t_sent_ms: Option<f64>,
    pub t_end_ms: f64,
    /// Connection number within the client run, and request count on it.
    pub conn: Option<u64>,
    pub req_on_conn: Option<u64>,
    pub body: Option<String>,
}

impl ClientResult {
    fn from_json(v: &Value) -> Result<ClientResult> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let f = |k: &str| v.get(k).and_then(Value::as_f64);
        let u = |k: &str| v.get(k).and_then(Value::as_u64);
        Ok(ClientResult {
            step: u("step").context("step")? as usize,
            i: u("i").context("i")? as usize,
            tag: s("tag").unwrap_or_default(),
            status: u("status").map(|x| x as u16),
            local: s("local"),
            error: s("error"),
            t_start_ms: f("t_start_ms").unwrap_or(0.0),
            t_sent_ms: f("t_sent_ms"),
            t_end_ms: f("t_end_ms").unwrap_or(0.0),
            conn: u("conn"),
            req_on_conn: u("req_on_conn"),
            body: s("body"),
        })
    }

    /// The client's local port.
    pub fn local_port(&self) -> Option<u16> {
        self.local
            .as_deref()
            .and_then(|l| l.rsplit_once(':'))
            .and_then(|(_, p)| p.parse().ok())
    }
}

/// Runs client plans from a namespace against `host:port`.
#[derive(Debug, Clone)]
pub struct Client {
    netns: Netns,
    host: String,
    port: u16,
}

impl Client {
    pub fn new(netns: &Netns, host: &str, port: u16) -> Client {
        Client {
            netns: netns.clone(),
            host: host.to_string(),
            port,
        }
    }

    /// Start the plan in the background.
    pub fn spawn(&self, plan: &Plan) -> Result<ClientRun> {
        let dir = TempDir::new("client")?;
        let plan_path = dir.join("plan.json");
        std::fs::write(
            &plan_path,
            serde_json::to_vec(&plan.to_json(&self.host, self.port))?,
        )?;
        let mut cmd = self.netns.command(&node_bin());
        cmd.arg(fixture("client.js")).arg(&plan_path);
        let proc = Proc::spawn("client", cmd, dir.path())?;
        Ok(ClientRun {
            proc,
            max_runtime: plan.max_runtime(),
            _dir: dir,
        })
    }

    /// Run the plan to completion (bounded by the plan's `max_runtime`).
    pub fn run(&self, plan: &Plan) -> Result<Vec<ClientResult>> {
        self.spawn(plan)?.wait()
    }
}

/// A client plan running in the background (killed on drop).
#[derive(Debug)]
pub struct ClientRun {
    proc: Proc,
    max_runtime: Duration,
    _dir: TempDir,
}

impl ClientRun {
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Wait for the script to finish (≤ the plan's max runtime + 5 s) and
    /// return one result per request, sorted by (step, i).
    pub fn wait(mut self) -> Result<Vec<ClientResult>> {
        let limit = self.max_runtime + Duration::from_secs(5);
        let t0 = Instant::now();
        let Some(st) = self.proc.wait_timeout(limit) else {
            bail!(
                "client did not finish within {limit:?}\n{}",
                self.proc.diagnostics(20)
            );
        };
        if !st.success() {
            bail!(
                "client exited with {st} after {:?}\n{}",
                t0.elapsed(),
                self.proc.diagnostics(20)
            );
        }
        let mut out = Vec::new();
        for line in self.proc.stdout().lines().filter(|l| !l.trim().is_empty()) {
            let v: Value =
                serde_json::from_str(line).with_context(|| format!("client line {line}"))?;
            out.push(ClientResult::from_json(&v)?);
        }
        out.sort_by_key(|r| (r.step, r.i));
        Ok(out)
    }
}
