//! Network namespaces and veth links between them.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Once};

use anyhow::{Context, Result};

use crate::proc::Proc;
use crate::util::{self, next_seq, require_bin, require_root, run, CMD_TIMEOUT, NAME_PREFIX};

struct NetnsInner {
    name: String,
}

impl Drop for NetnsInner {
    fn drop(&mut self) {
        // Deleting the namespace also removes its veth ends and iptables rules.
        if let Err(e) = util::sh("ip", &["netns", "del", &self.name]) {
            eprintln!("warning: {e}");
        }
    }
}

/// A named network namespace (`ip netns add t502-<pid>-<seq>-<label>`) with
/// `lo` up. Cheap to clone; the namespace is deleted when the last clone is
/// dropped (actors that run inside it hold a clone, so it outlives them).
#[derive(Clone)]
pub struct Netns {
    inner: Arc<NetnsInner>,
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Netns({})", self.inner.name)
    }
}

static CLEANUP: Once = Once::new();

/// Remove namespaces left behind by earlier test processes that died without
/// unwinding (named `t502-<pid>-...` with that pid gone). Processes still
/// inside such a namespace were started by that harness run and are killed.
fn cleanup_stale() {
    let Ok(rd) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let mut parts = name.splitn(3, '-');
        if parts.next() != Some(NAME_PREFIX) {
            continue;
        }
        let Some(pid) = parts.next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(pids) = util::sh("ip", &["netns", "pids", &name]) {
            for p in pids
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                // SAFETY: kill(2) on a process inside a namespace that only
                // this harness creates, whose creating test process is gone.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        let _ = util::sh("ip", &["netns", "del", &name]);
        eprintln!("removed stale namespace {name}");
    }
}

impl Netns {
    /// Create a namespace; `label` is a short human hint (e.g. "proxy").
    pub fn new(label: &str) -> Result<Netns> {
        require_root();
        require_bin("ip");
        CLEANUP.call_once(cleanup_stale);
        let name = format!(
            "{NAME_PREFIX}-{}-{}-{label}",
            std::process::id(),
            next_seq()
        );
        util::sh("ip", &["netns", "add", &name])?;
        let ns = Netns {
            inner: Arc::new(NetnsInner { name }),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// `/run/netns/NAME` (what `--netns` takes).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.inner.name))
    }

    /// The namespace's inode number (st_ino of /run/netns/NAME), which is
    /// what the kernel reports as the netns id of sockets inside it.
    pub fn inode(&self) -> u64 {
        std::fs::metadata(self.path())
            .map(|m| m.ino())
            .unwrap_or_else(|e| panic!("stat {}: {e}", self.path().display()))
    }

    /// A `Command` running `program` inside this namespace
    /// (`ip netns exec NAME program`). `ip netns exec` execs the program
    /// directly, so the child's pid is the program's pid.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.name(), program]);
        c
    }

    /// Run `args[0] args[1..]` inside the namespace to completion (bounded
    /// by 10 s); error unless it exits 0. Returns stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let (prog, rest) = args.split_first().context("exec: empty command")?;
        let mut c = self.command(prog);
        c.args(rest);
        run(c, CMD_TIMEOUT)
    }

    /// Spawn `args` inside the namespace as a [`Proc`] (killed on drop),
    /// logging to `dir/<label>.stdout|stderr`.
    pub fn spawn(&self, label: &str, args: &[&str], dir: &Path) -> Result<Proc> {
        let (prog, rest) = args.split_first().context("spawn: empty command")?;
        let mut c = self.command(prog);
        c.args(rest);
        Proc::spawn(label, c, dir)
    }

    /// `ip -n NAME args...` (bounded, must succeed).
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name()];
        full.extend_from_slice(args);
        util::sh("ip", &full)
    }
}

static SUBNET: AtomicU32 = AtomicU32::new(0);

/// Which end of a [`Link`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The first namespace given to [`Link::new`] (host .1, e.g. the proxy).
    A,
    /// The second namespace (host .2, e.g. the backend or the client).
    B,
}

/// A veth pair between two namespaces on subnet `10.231.N.0/24`: side A gets
/// `10.231.N.1`, side B `10.231.N.2`. N is unique per link within the test
/// process, so one namespace can hold several links. Interfaces are named
/// `v<N>a` / `v<N>b` inside their namespaces (never in the host namespace).
/// Removed on drop (and anyway with either namespace).
#[derive(Debug)]
pub struct Link {
    pub n: u32,
    pub a: Netns,
    pub b: Netns,
    pub a_if: String,
    pub b_if: String,
    pub a_ip: String,
    pub b_ip: String,
}

impl Link {
    /// Create the pair, assign `.1` to `a` and `.2` to `b`, bring both up.
    pub fn new(a: &Netns, b: &Netns) -> Result<Link> {
        let n = SUBNET.fetch_add(1, Ordering::Relaxed) % 250 + 1;
        let a_if = format!("v{n}a");
        let b_if = format!("v{n}b");
        util::sh(
            "ip",
            &[
                "link",
                "add",
                &a_if,
                "netns",
                a.name(),
                "type",
                "veth",
                "peer",
                "name",
                &b_if,
                "netns",
                b.name(),
            ],
        )?;
        let link = Link {
            n,
            a: a.clone(),
            b: b.clone(),
            a_ip: format!("10.231.{n}.1"),
            b_ip: format!("10.231.{n}.2"),
            a_if,
            b_if,
        };
        a.ip(&[
            "addr",
            "add",
            &format!("{}/24", link.a_ip),
            "dev",
            &link.a_if,
        ])?;
        b.ip(&[
            "addr",
            "add",
            &format!("{}/24", link.b_ip),
            "dev",
            &link.b_if,
        ])?;
        a.ip(&["link", "set", &link.a_if, "up"])?;
        b.ip(&["link", "set", &link.b_if, "up"])?;
        Ok(link)
    }

    /// Add `10.231.N.<host>/24` to one side (e.g. a second backend address)
    /// and return the address.
    pub fn add_addr(&self, side: Side, host: u8) -> Result<String> {
        let ip = format!("10.231.{}.{host}", self.n);
        let (ns, dev) = match side {
            Side::A => (&self.a, &self.a_if),
            Side::B => (&self.b, &self.b_if),
        };
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", dev])?;
        Ok(ip)
    }

    /// Add several addresses (`hosts`) on one side; returns them in order.
    pub fn add_addrs(&self, side: Side, hosts: &[u8]) -> Result<Vec<String>> {
        hosts.iter().map(|h| self.add_addr(side, *h)).collect()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Best effort: the pair disappears with either namespace anyway.
        let _ = self.a.ip(&["link", "del", &self.a_if]);
    }
}
