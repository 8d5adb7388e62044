//! Node.js HTTP backend (`tests/fixtures/backend.js`) inside a namespace.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::netns::Netns;
use crate::proc::Proc;
use crate::util::{fixture, require_bin, TempDir};

/// Path of Node.js (Node 20 ships at /usr/bin/node here).
pub fn node_bin() -> String {
    let p = "/usr/bin/node";
    if std::path::Path::new(p).exists() {
        p.to_string()
    } else {
        require_bin("node").to_string_lossy().into_owned()
    }
}

/// Options for [`Backend::start`].
#[derive(Clone, Debug, Default)]
pub struct BackendOpts {
    /// `server.keepAliveTimeout` in ms (Node's default is 5000).
    pub keep_alive_timeout_ms: Option<u64>,
    /// Force one behaviour for every path: `ok`, `close`, `reset`, `slow`,
    /// `exit`, `status` (query parameters still apply). None: by path.
    pub mode: Option<String>,
}

impl BackendOpts {
    pub fn keep_alive_timeout_ms(mut self, ms: u64) -> Self {
        self.keep_alive_timeout_ms = Some(ms);
        self
    }

    pub fn mode(mut self, mode: &str) -> Self {
        self.mode = Some(mode.to_string());
        self
    }
}

/// A running backend listening on `ip:port` in `netns`. Paths select the
/// behaviour (see `backend.js`): `/ok`, `/close?delay_ms=N`, `/reset`,
/// `/slow?ms=N`, `/exit`, `/status?code=N`, `/info`.
#[derive(Debug)]
pub struct Backend {
    proc: Proc,
    netns: Netns,
    ip: String,
    port: u16,
    opts: BackendOpts,
    restarts: u32,
    dir: TempDir,
}

impl Backend {
    /// Start and wait (≤ 10 s) until it accepts connections.
    pub fn start(netns: &Netns, ip: &str, port: u16, opts: BackendOpts) -> Result<Backend> {
        let dir = TempDir::new("backend")?;
        let proc = Self::spawn(netns, ip, port, &opts, &dir, 0)?;
        let mut b = Backend {
            proc,
            netns: netns.clone(),
            ip: ip.to_string(),
            port,
            opts,
            restarts: 0,
            dir,
        };
        b.wait_ready()?;
        Ok(b)
    }

    fn spawn(
        netns: &Netns,
        ip: &str,
        port: u16,
        opts: &BackendOpts,
        dir: &TempDir,
        gen: u32,
    ) -> Result<Proc> {
        let node = node_bin();
        let script = fixture("backend.js");
        let mut cmd = netns.command(&node);
        cmd.arg(&script)
            .args(["--host", ip, "--port", &port.to_string()])
            .args(["--name", &format!("{ip}:{port}")]);
        if let Some(ms) = opts.keep_alive_timeout_ms {
            cmd.args(["--keep-alive-timeout-ms", &ms.to_string()]);
        }
        if let Some(m) = &opts.mode {
            cmd.args(["--mode", m]);
        }
        Proc::spawn(&format!("backend-{port}-{gen}"), cmd, dir.path()).context("start node backend")
    }

    fn wait_ready(&mut self) -> Result<()> {
        let (ns, ip, port) = (self.netns.clone(), self.ip.clone(), self.port);
        self.proc
            .wait_ready(&ns, &ip, port, Duration::from_secs(10))
    }

    /// `ip:port` it listens on.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    pub fn ip(&self) -> &str {
        &self.ip
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// Wait (bounded) for the process to exit, e.g. after `/exit`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.proc.wait_timeout(timeout)
    }

    /// Kill the current process (if any), start a new one with the same
    /// options and wait until it listens.
    pub fn restart(&mut self) -> Result<()> {
        self.proc.kill();
        self.restarts += 1;
        let new = Self::spawn(
            &self.netns,
            &self.ip,
            self.port,
            &self.opts,
            &self.dir,
            self.restarts,
        )?;
        // The old Proc is dropped here (already killed and reaped).
        self.proc = new;
        self.wait_ready()
    }

    /// The backend's stdout (one line per non-/ok request) and stderr.
    pub fn log(&self) -> String {
        format!("{}{}", self.proc.stdout(), self.proc.stderr())
    }

    pub fn netns(&self) -> &Netns {
        &self.netns
    }
}
