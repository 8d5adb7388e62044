//! Child processes that never outlive the test, and readiness checks.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::netns::Netns;
use crate::util::tail_file;

/// A spawned child process.
///
/// The child runs in its own process group (so helpers it forks, such as
/// nginx workers, are killed with it) and gets `PR_SET_PDEATHSIG(SIGKILL)` as
/// a safety net if the test process dies without unwinding. On drop the whole
/// group gets SIGKILL and the child is reaped; if the thread is panicking the
/// tail of its stdout/stderr is printed first (libtest shows it with the
/// failure).
pub struct Proc {
    label: String,
    child: Child,
    status: Option<ExitStatus>,
    stdout_path: Option<PathBuf>,
    stderr_path: PathBuf,
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proc")
            .field("label", &self.label)
            .field("pid", &self.child.id())
            .finish()
    }
}

fn prepare(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe functions (setpgid, prctl, getppid).
    unsafe {
        cmd.pre_exec(|| {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl Proc {
    /// Spawn `cmd` with stdout and stderr captured to `<dir>/<label>.stdout`
    /// and `<dir>/<label>.stderr`. stdin is /dev/null.
    pub fn spawn(label: &str, mut cmd: Command, dir: &Path) -> Result<Proc> {
        let stdout_path = dir.join(format!("{label}.stdout"));
        let stderr_path = dir.join(format!("{label}.stderr"));
        let out = File::create(&stdout_path)?;
        let err = File::create(&stderr_path)?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        prepare(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {label}: {cmd:?}"))?;
        Ok(Proc {
            label: label.to_string(),
            child,
            status: None,
            stdout_path: Some(stdout_path),
            stderr_path,
        })
    }

    /// Spawn `cmd` with stdout as a pipe (returned) and stderr captured to
    /// `<dir>/<label>.stderr`.
    pub fn spawn_piped(label: &str, mut cmd: Command, dir: &Path) -> Result<(Proc, ChildStdout)> {
        let stderr_path = dir.join(format!("{label}.stderr"));
        let err = File::create(&stderr_path)?;
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(err);
        prepare(&mut cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawn {label}: {cmd:?}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        Ok((
            Proc {
                label: label.to_string(),
                child,
                status: None,
                stdout_path: None,
                stderr_path,
            },
            stdout,
        ))
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Exit status if the child has exited (reaps it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Wait up to `timeout` for the child to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Send `sig` to the child only (not its group), if it still runs.
    pub fn signal(&mut self, sig: i32) {
        if self.try_wait().is_none() {
            // SAFETY: kill(2) on our own unreaped child's pid.
            unsafe { libc::kill(self.child.id() as i32, sig) };
        }
    }

    /// SIGKILL the child's whole process group and reap the child.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let pid = self.child.id() as i32;
        // The group id equals the child's pid (setpgid(0, 0) before exec).
        // Helpers in the group (nginx workers) may outlive the leader, so the
        // group is signalled even when the leader has already exited.
        // SAFETY: kill(2) on the process group we created for this child.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        if self.status.is_none() {
            // SAFETY: as above, the child itself (not yet reaped).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            self.status = self.child.wait().ok();
        }
        self.status
    }

    /// Everything the child wrote to stdout so far ("" when stdout is piped).
    pub fn stdout(&self) -> String {
        self.stdout_path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn stdout_path(&self) -> Option<&Path> {
        self.stdout_path.as_deref()
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// A short diagnostic: tails of stdout and stderr.
    pub fn diagnostics(&self, lines: usize) -> String {
        let mut s = format!("--- {} (pid {})", self.label, self.child.id());
        if let Some(p) = &self.stdout_path {
            s.push_str(&format!("\n[stdout]\n{}", tail_file(p, lines)));
        }
        s.push_str(&format!(
            "\n[stderr]\n{}",
            tail_file(&self.stderr_path, lines)
        ));
        s
    }

    /// Wait until something accepts TCP connections at `ip:port` inside
    /// `netns`, failing early (with diagnostics) if this process exits.
    pub fn wait_ready(
        &mut self,
        netns: &Netns,
        ip: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<()> {
        let addr: SocketAddr = format!("{ip}:{port}").parse()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                bail!(
                    "{} exited ({st}) before listening on {addr}\n{}",
                    self.label,
                    self.diagnostics(30)
                );
            }
            if connect_in_netns(netns, addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not listening on {addr} in {} after {timeout:?}\n{}",
                    self.label,
                    netns.name(),
                    self.diagnostics(30)
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics(40));
        }
        self.kill();
    }
}

/// Open a TCP connection from inside `netns` (a short-lived thread enters the
/// namespace with setns(2); the socket stays in that namespace).
pub fn connect_in_netns(netns: &Netns, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
    let path = netns.path();
    std::thread::spawn(move || -> Result<TcpStream> {
        let f = File::open(&path).with_context(|| format!("open {}", path.display()))?;
        use std::os::fd::AsRawFd;
        // SAFETY: setns(2) on a valid namespace fd; it only affects this
        // freshly spawned thread, which exits right after connecting.
        let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(anyhow!(
                "setns {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(TcpStream::connect_timeout(&addr, timeout)?)
    })
    .join()
    .map_err(|_| anyhow!("connect thread panicked"))?
}

/// Wait (bounded by `timeout`) until `ip:port` accepts connections from
/// inside `netns`.
pub fn wait_port(netns: &Netns, ip: &str, port: u16, timeout: Duration) -> Result<()> {
    let addr: SocketAddr = format!("{ip}:{port}").parse()?;
    let deadline = Instant::now() + timeout;
    loop {
        match connect_in_netns(netns, addr, Duration::from_millis(200)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                bail!(
                    "{addr} in {} not ready after {timeout:?}: {e}",
                    netns.name()
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(25)),
        }
    }
}
