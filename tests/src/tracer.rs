//! The tracer binary under test, with its NDJSON output collected.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::Value;

use crate::proc::Proc;
use crate::util::{require_root, tail_file, TempDir};

/// How long a tracer may take to exit after SIGINT before it is killed
/// (and the test fails).
pub const STOP_GRACE: Duration = Duration::from_secs(15);

/// The tracer binary: `$TRACER_BIN` (set by `cargo xtask test`), else
/// `<workspace>/target/release/tracer` (or `$CARGO_TARGET_DIR/release/tracer`)
/// if it exists; panics otherwise.
pub fn tracer_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("TRACER_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "TRACER_BIN={} does not exist; run `cargo xtask test`",
            p.display()
        );
        return p;
    }
    let mut candidates = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(t).join("release/tracer"));
    }
    candidates.push(crate::util::workspace_root().join("target/release/tracer"));
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "tracer binary not found: TRACER_BIN is unset and {} does not exist; \
                 build and run the end-to-end tests with `cargo xtask test`",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" / ")
            )
        })
}

#[derive(Default)]
struct Shared {
    lines: Vec<Value>,
    /// Lines that were not JSON (kept for diagnostics).
    garbage: Vec<String>,
    eof: bool,
}

/// A running tracer. Its stdout is read line by line on a background thread
/// into a shared list of JSON values. Killed on drop.
pub struct Tracer {
    proc: Proc,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    reader: Option<std::thread::JoinHandle<()>>,
    stopped: Arc<AtomicBool>,
    _dir: TempDir,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("pid", &self.proc.pid())
            .finish()
    }
}

/// How long [`Tracer::start`] waits for the `"event":"start"` line.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

impl Tracer {
    /// Start [`tracer_bin`] with `args` (e.g. `["--netns", "/run/netns/X",
    /// "--port", "8080", "--all"]`) and wait until it prints its
    /// `"event":"start"` line (≤ 20 s; panics with its stderr otherwise).
    pub fn start(args: &[&str]) -> Tracer {
        require_root();
        Self::start_with(&tracer_bin(), args)
    }

    /// Like [`Tracer::start`] with an explicit binary (used by the harness
    /// self-test with a fake tracer).
    pub fn start_with(bin: &Path, args: &[&str]) -> Tracer {
        Self::start_with_timeout(bin, args, START_TIMEOUT)
    }

    /// Like [`Tracer::start_with`] with a custom wait for the start line.
    pub fn start_with_timeout(bin: &Path, args: &[&str], timeout: Duration) -> Tracer {
        let t = Self::spawn(bin, args).unwrap_or_else(|e| panic!("start tracer: {e:#}"));
        t.wait_started(timeout);
        t
    }

    /// Spawn without waiting for the start line.
    pub fn spawn(bin: &Path, args: &[&str]) -> Result<Tracer> {
        let dir = TempDir::new("tracer")?;
        let mut cmd = Command::new(bin);
        cmd.args(args);
        let (proc, stdout) = Proc::spawn_piped("tracer", cmd, dir.path())?;
        let shared: Arc<(Mutex<Shared>, Condvar)> = Arc::default();
        let sh = shared.clone();
        let reader = std::thread::spawn(move || {
            let r = BufReader::new(stdout);
            for line in r.lines() {
                let Ok(line) = line else { break };
                let (m, cv) = &*sh;
                let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => g.lines.push(v),
                    Err(_) => g.garbage.push(line),
                }
                cv.notify_all();
            }
            let (m, cv) = &*sh;
            m.lock().unwrap_or_else(|e| e.into_inner()).eof = true;
            cv.notify_all();
        });
        Ok(Tracer {
            proc,
            shared,
            reader: Some(reader),
            stopped: Arc::new(AtomicBool::new(false)),
            _dir: dir,
        })
    }

    fn wait_started(&self, timeout: Duration) {
        let found = self.wait_until(timeout, |v| v.get("event") == Some(&Value::from("start")));
        if found.is_none() {
            panic!(
                "tracer printed no {{\"event\":\"start\"}} line within {timeout:?}\n\
                 stdout lines: {}\nnon-JSON stdout: {:?}\nstderr:\n{}",
                self.lines()
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
                self.garbage(),
                tail_file(self.proc.stderr_path(), 60)
            );
        }
    }

    /// First line (in output order) matching `pred`, waiting up to `timeout`;
    /// None on timeout or if the tracer's stdout ended first.
    pub fn wait_until(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.shared;
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(v) = g.lines.iter().find(|v| pred(v)) {
                return Some(v.clone());
            }
            let now = Instant::now();
            if g.eof || now >= deadline {
                return None;
            }
            g = cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Like [`Tracer::wait_until`] but panics, listing every line seen and
    /// the tracer's stderr, if nothing matches within `timeout`.
    pub fn wait_for(&self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Value {
        match self.wait_until(timeout, pred) {
            Some(v) => v,
            None => panic!(
                "no matching tracer line within {timeout:?}; lines seen:\n{}\nstderr:\n{}",
                self.lines()
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
                tail_file(self.proc.stderr_path(), 40)
            ),
        }
    }

    /// All JSON lines so far.
    pub fn lines(&self) -> Vec<Value> {
        let (m, _) = &*self.shared;
        m.lock().unwrap_or_else(|e| e.into_inner()).lines.clone()
    }

    /// Lines with `"event": kind`.
    pub fn events(&self, kind: &str) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|v| v.get("event").and_then(Value::as_str) == Some(kind))
            .collect()
    }

    /// stdout lines that were not valid JSON (should be none).
    pub fn garbage(&self) -> Vec<String> {
        let (m, _) = &*self.shared;
        m.lock().unwrap_or_else(|e| e.into_inner()).garbage.clone()
    }

    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// SIGINT, wait ≤ 5 s for exit (then SIGKILL), wait ≤ 2 s for stdout to
    /// drain; returns the exit status and every JSON line (including the
    /// final `stats`).
    pub fn stop(mut self) -> (ExitStatus, Vec<Value>) {
        self.stopped.store(true, Ordering::Relaxed);
        self.proc.signal(libc::SIGINT);
        // The final `stats` line comes at once; the exit waits for the
        // kernel to detach every program (an RCU grace period each, taken
        // one at a time by the kernel: ≈ 0.1–0.4 s here, and once over 5 s
        // in a CI run on a busy machine).
        let status = match self.proc.wait_timeout(STOP_GRACE) {
            Some(st) => st,
            None => {
                eprintln!(
                    "tracer did not exit within {} s of SIGINT; sending SIGKILL",
                    STOP_GRACE.as_secs()
                );
                self.proc.kill().expect("tracer reaped after SIGKILL")
            }
        };
        {
            let (m, cv) = &*self.shared;
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
            while !g.eof && Instant::now() < deadline {
                g = cv
                    .wait_timeout(g, Duration::from_millis(50))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        if let Some(r) = self.reader.take() {
            if r.is_finished() {
                let _ = r.join();
            }
        }
        (status, self.lines())
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.stopped.load(Ordering::Relaxed) {
            eprintln!(
                "--- tracer stdout ({} lines, last 30)\n{}",
                self.lines().len(),
                self.lines()
                    .iter()
                    .rev()
                    .take(30)
                    .rev()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        // Proc's own drop kills the process group and reaps; the reader
        // thread then sees EOF and ends by itself.
    }
}
