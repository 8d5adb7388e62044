//! Small shared helpers: preconditions, temporary directories, bounded
//! command execution, unique names.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// Hint printed when a required binary is missing.
pub const INSTALL_HINT: &str = "install the test dependencies with \
`apt-get update && apt-get install -y nginx-light haproxy iptables iproute2 curl wrk` \
(Node.js 20 must be at /usr/bin/node)";

/// Default time limit for helper commands (`ip`, `iptables`, ...).
pub const CMD_TIMEOUT: Duration = Duration::from_secs(10);

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A number unique within this process (used for names of namespaces,
/// directories, subnets).
pub fn next_seq() -> u32 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// Prefix of everything the harness names on the host (namespaces, temp dirs).
pub const NAME_PREFIX: &str = "t502";

/// Panic unless running as root (effective uid 0).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "these end-to-end tests need root (network namespaces, iptables, eBPF); \
         run them with `cargo xtask test` as root (euid is {euid})"
    );
}

/// Find `name` on PATH (plus /usr/sbin and /sbin, where Debian puts nginx,
/// haproxy, ip and iptables); panic with an install hint if it is missing.
pub fn require_bin(name: &str) -> PathBuf {
    find_bin(name).unwrap_or_else(|| {
        panic!("required binary `{name}` not found on PATH or in /usr/sbin, /sbin; {INSTALL_HINT}")
    })
}

/// Find `name` on PATH (plus /usr/sbin, /sbin, /usr/local/bin).
pub fn find_bin(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = ["/usr/sbin", "/sbin", "/usr/bin", "/usr/local/bin"]
        .iter()
        .map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(extra)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Root of the cargo workspace (parent of the `tests` crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent directory")
        .to_path_buf()
}

/// Path of a file in `tests/fixtures/`, panicking if it does not exist.
pub fn fixture(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    assert!(p.exists(), "fixture {} is missing", p.display());
    p
}

/// A temporary directory, removed on drop unless `T502_KEEP=1` is set (then
/// its path is printed so the logs inside can be inspected).
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Create `$TMPDIR/t502-<pid>-<seq>-<label>`.
    pub fn new(label: &str) -> Result<TempDir> {
        let path = std::env::temp_dir().join(format!(
            "{NAME_PREFIX}-{}-{}-{label}",
            std::process::id(),
            next_seq()
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("T502_KEEP").is_some_and(|v| v == "1") {
            eprintln!("T502_KEEP=1: keeping {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Output of a finished helper command.
#[derive(Debug)]
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Run `cmd` to completion with a time limit; on timeout the command is
/// killed (SIGKILL, by pid) and an error returned. Does not check the status.
pub fn run_output(mut cmd: Command, timeout: Duration) -> Result<CmdOutput> {
    let desc = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawn {desc}"))?;
    let pid = child.id() as i32;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(timeout) {
        Ok(st) => st.with_context(|| format!("wait {desc}"))?,
        Err(_) => {
            // SAFETY: plain kill(2) on the pid of the child we spawned and
            // have not reaped yet (the waiter thread still owns it).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = waiter.join();
            bail!("{desc} did not finish within {timeout:?} (killed)");
        }
    };
    let _ = waiter.join();
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    Ok(CmdOutput {
        status,
        stdout,
        stderr,
    })
}

/// Run `cmd` with a time limit and require exit status 0; returns stdout.
pub fn run(cmd: Command, timeout: Duration) -> Result<String> {
    let desc = format!("{cmd:?}");
    let out = run_output(cmd, timeout)?;
    if !out.status.success() {
        return Err(anyhow!(
            "{desc} failed ({}): {}{}",
            out.status,
            out.stderr.trim(),
            if out.stdout.trim().is_empty() {
                String::new()
            } else {
                format!(" / stdout: {}", out.stdout.trim())
            }
        ));
    }
    Ok(out.stdout)
}

/// Convenience: run `program args...` (bounded by [`CMD_TIMEOUT`]), require success.
pub fn sh(program: &str, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    run(cmd, CMD_TIMEOUT)
}

/// The last `n` lines of a file (empty string if unreadable).
pub fn tail_file(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// Poll `f` every `every` until it returns `Some` or `timeout` elapses.
pub fn poll<T>(timeout: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Pids of the direct children of `ppid` (scans /proc; bounded by the number
/// of processes).
pub fn child_pids(ppid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the last ')' : state ppid ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut it = rest.split_whitespace();
        let _state = it.next();
        if it.next().and_then(|p| p.parse::<u32>().ok()) == Some(ppid) {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

/// Milliseconds since the Unix epoch (float), the clock the client script uses.
pub fn now_epoch_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}
