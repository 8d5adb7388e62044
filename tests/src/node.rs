//! A Kubernetes node without Kubernetes, for the `--pod` tests.
//!
//! The tracer resolves `--pod NAMESPACE/NAME` from what kubelet and the
//! container runtime leave on a node (tracer/src/pods.rs), all read below a
//! node root: `var/log/pods/<ns>_<name>_<uid>/`, the pod cgroups under
//! `sys/fs/cgroup/.../kubepods.slice`, and `proc/<pid>/ns/net`. A [`Node`]
//! builds exactly that:
//!
//! - the root is a temporary directory with `var/log/pods/` (one directory
//!   per pod, one sub-directory per container, as kubelet makes them) and
//!   `proc -> /proc`, so the resolver reads the real processes' namespaces;
//! - the pod cgroups are **real** cgroups when this machine allows it: a
//!   subtree `t502-<pid>-<seq>-node/` made in a cgroup hierarchy, laid out
//!   like kubelet's systemd driver (`kubepods.slice/kubepods-burstable.slice/
//!   kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`), with the
//!   pods' processes moved in by writing their pids to `cgroup.procs`; the
//!   node root's `sys/fs/cgroup` (pure cgroup v2), `sys/fs/cgroup/unified`
//!   (hybrid: systemd's cgroup v2 next to the v1 controllers) or
//!   `sys/fs/cgroup/pids` (v1 only) is a symlink to that subtree, so the
//!   resolver finds `kubepods.slice` where kubelet would have made it;
//! - when no cgroup hierarchy is writable (or `T502_FAKE_CGROUPS=1`), it
//!   says so on stderr and falls back to plain directories whose
//!   `cgroup.procs` files it writes itself ([`CgroupMode::Fake`]): the
//!   resolver only reads files, so it cannot tell, but the kernel then does
//!   not vouch for the pid lists.
//!
//! Pods are started by the tests: a network namespace per pod sandbox
//! ([`crate::Netns`]), a pause process holding it ([`Pod::pause`]), and the
//! workloads (nginx, Node.js backends) adopted into container cgroups with
//! [`Pod::add_container`]. Everything is removed on drop: real cgroups are
//! emptied (left-over processes moved back to the hierarchy's root cgroup)
//! and removed bottom-up; subtrees left behind by test processes that died
//! without unwinding are removed by the next run.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::netns::Netns;
use crate::proc::Proc;
use crate::util::{next_seq, require_root, TempDir, NAME_PREFIX};

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;

/// How the node's pod cgroups are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupMode {
    /// Real cgroup v2, `/sys/fs/cgroup` is cgroup2 (unified mode); the node
    /// root's `sys/fs/cgroup` links to our subtree.
    Unified,
    /// Real cgroup v2 at `/sys/fs/cgroup/unified` (hybrid mode: v1
    /// controllers plus systemd's v2 tree); the node root's
    /// `sys/fs/cgroup/unified` links to our subtree.
    Hybrid,
    /// Real cgroup v1 `pids` hierarchy; the node root's
    /// `sys/fs/cgroup/pids` links to our subtree.
    V1Pids,
    /// Plain directories with `cgroup.procs` files written by the test.
    Fake,
}

impl CgroupMode {
    /// Whether the kernel maintains the pid lists.
    pub fn is_real(self) -> bool {
        self != CgroupMode::Fake
    }
}

impl fmt::Display for CgroupMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CgroupMode::Unified => "real cgroup v2 (/sys/fs/cgroup)",
            CgroupMode::Hybrid => "real cgroup v2 (/sys/fs/cgroup/unified, hybrid mode)",
            CgroupMode::V1Pids => "real cgroup v1 (/sys/fs/cgroup/pids)",
            CgroupMode::Fake => {
                "FAKE cgroups (plain directories, cgroup.procs written by the test)"
            }
        })
    }
}

/// A pod's QoS class: where kubelet puts its cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos {
    /// Directly under `kubepods.slice`.
    Guaranteed,
    /// Under `kubepods-burstable.slice`.
    Burstable,
    /// Under `kubepods-besteffort.slice`.
    BestEffort,
}

/// The cgroup subtree of a node.
#[derive(Debug)]
struct Cgroups {
    mode: CgroupMode,
    /// The directory that plays the hierarchy root for the resolver (holds
    /// `kubepods.slice`): our real subtree, or a plain directory.
    top: PathBuf,
    /// The real hierarchy's root `cgroup.procs`, where processes still in
    /// our subtree go before it is removed (None when fake).
    evacuate_to: Option<PathBuf>,
}

impl Cgroups {
    /// Creates the cgroup directory `dir` (and parents below `top`).
    fn mkdir(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("mkdir {}", dir.display()))
    }

    /// Puts `pid` into the cgroup `dir`.
    fn adopt(&self, dir: &Path, pid: u32) -> Result<()> {
        let procs = dir.join("cgroup.procs");
        let mut f = OpenOptions::new()
            .append(!self.mode.is_real())
            .create(!self.mode.is_real())
            .write(true)
            .open(&procs)
            .with_context(|| format!("open {}", procs.display()))?;
        // A real cgroup.procs takes one pid per write(2).
        f.write_all(format!("{pid}\n").as_bytes())
            .with_context(|| format!("write {pid} to {}", procs.display()))
    }

    /// Removes the cgroup `dir` and everything below it.
    fn remove(&self, dir: &Path) {
        match &self.evacuate_to {
            Some(to) => remove_real_tree(dir, to),
            None => {
                let _ = fs::remove_dir_all(dir);
            }
        }
    }
}

/// A fake node root with real (or, failing that, fake) pod cgroups.
#[derive(Debug)]
pub struct Node {
    cgroups: Arc<Cgroups>,
    /// Our real cgroup subtree to remove on drop (None when fake: it is
    /// inside `root`).
    real_base: Option<PathBuf>,
    root: TempDir,
}

static CLEANUP: Once = Once::new();

impl Node {
    /// An empty node: `var/log/pods/`, `proc -> /proc` and the cgroup tree.
    pub fn new() -> Result<Node> {
        require_root();
        CLEANUP.call_once(cleanup_stale);
        let root = TempDir::new("node")?;
        fs::create_dir_all(root.join("var/log/pods"))?;
        std::os::unix::fs::symlink("/proc", root.join("proc")).context("symlink proc")?;
        let sys_cgroup = root.join("sys/fs/cgroup");
        let forced_fake = std::env::var_os("T502_FAKE_CGROUPS").is_some_and(|v| v == "1");
        let real = if forced_fake {
            eprintln!("T502_FAKE_CGROUPS=1: using fake cgroups");
            None
        } else {
            match make_real_subtree() {
                Ok(r) => Some(r),
                Err(e) => {
                    eprintln!(
                        "WARNING: cannot make real cgroups here ({e:#}); FALLING BACK TO FAKE \
                         CGROUPS: plain directories whose cgroup.procs the test writes itself"
                    );
                    None
                }
            }
        };
        let (cgroups, real_base) = match real {
            Some((mode, hierarchy, base)) => {
                // The resolver must see `kubepods.slice` at the top of the
                // hierarchy it reads: link that hierarchy to our subtree.
                let link = match mode {
                    CgroupMode::Unified => sys_cgroup.clone(),
                    CgroupMode::Hybrid => sys_cgroup.join("unified"),
                    _ => sys_cgroup.join("pids"),
                };
                fs::create_dir_all(link.parent().expect("has a parent"))?;
                std::os::unix::fs::symlink(&base, &link)
                    .with_context(|| format!("symlink {}", link.display()))?;
                let cgroups = Cgroups {
                    mode,
                    top: base.clone(),
                    evacuate_to: Some(hierarchy.join("cgroup.procs")),
                };
                (cgroups, Some(base))
            }
            None => {
                fs::create_dir_all(&sys_cgroup)?;
                let cgroups = Cgroups {
                    mode: CgroupMode::Fake,
                    top: sys_cgroup,
                    evacuate_to: None,
                };
                (cgroups, None)
            }
        };
        Ok(Node {
            cgroups: Arc::new(cgroups),
            real_base,
            root,
        })
    }

    /// The node root (what `--node-root` takes).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The node root as a string, for command lines.
    pub fn root_arg(&self) -> String {
        self.root().to_string_lossy().into_owned()
    }

    pub fn mode(&self) -> CgroupMode {
        self.cgroups.mode
    }

    /// The real directory that plays the cgroup hierarchy root.
    pub fn cgroup_top(&self) -> &Path {
        &self.cgroups.top
    }

    /// A pod kubelet has admitted: its log directory exists (with a fresh
    /// uid), its cgroup is made with its first container.
    pub fn add_pod(&self, namespace: &str, name: &str, qos: Qos) -> Result<Pod> {
        let uid = random_uuid()?;
        let log_dir = self
            .root
            .join("var/log/pods")
            .join(format!("{namespace}_{name}_{uid}"));
        fs::create_dir_all(&log_dir).with_context(|| format!("mkdir {}", log_dir.display()))?;
        let escaped = uid.replace('-', "_");
        let kubepods = self.cgroups.top.join("kubepods.slice");
        let cgroup = match qos {
            Qos::Guaranteed => kubepods.join(format!("kubepods-pod{escaped}.slice")),
            Qos::Burstable => kubepods
                .join("kubepods-burstable.slice")
                .join(format!("kubepods-burstable-pod{escaped}.slice")),
            Qos::BestEffort => kubepods
                .join("kubepods-besteffort.slice")
                .join(format!("kubepods-besteffort-pod{escaped}.slice")),
        };
        Ok(Pod {
            namespace: namespace.into(),
            name: name.into(),
            uid,
            log_dir,
            cgroup,
            cgroups: self.cgroups.clone(),
        })
    }

    /// Everything the resolver would read, for assertion messages: the pod
    /// log directories and every cgroup below `kubepods.slice` with its
    /// processes and their network namespaces.
    pub fn describe(&self) -> String {
        let mut s = format!("node {} ({})\n", self.root().display(), self.mode());
        let mut logs: Vec<String> = fs::read_dir(self.root.join("var/log/pods"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        logs.sort();
        for l in logs {
            s.push_str(&format!("  var/log/pods/{l}\n"));
        }
        let mut stack = vec![self.cgroups.top.join("kubepods.slice")];
        while let Some(dir) = stack.pop() {
            let pids = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            let pids: Vec<String> = pids
                .split_whitespace()
                .map(|p| {
                    let ns = fs::read_link(format!("/proc/{p}/ns/net"))
                        .map(|t| t.display().to_string())
                        .unwrap_or_else(|_| "gone".into());
                    format!("{p}({ns})")
                })
                .collect();
            let rel = dir.strip_prefix(&self.cgroups.top).unwrap_or(&dir);
            s.push_str(&format!("  cgroup {}: {}\n", rel.display(), pids.join(" ")));
            let mut subs = subdirs(&dir);
            subs.sort();
            subs.reverse();
            stack.extend(subs);
        }
        s
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(base) = &self.real_base {
            self.cgroups.remove(base);
        }
        // The TempDir (log dirs, links, fake cgroups) goes with `root`.
    }
}

/// A pod on a [`Node`].
#[derive(Debug)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    /// The pod uid, with dashes (as in its log directory).
    pub uid: String,
    log_dir: PathBuf,
    /// The pod cgroup (`...-pod<uid>.slice`), made with the first container.
    cgroup: PathBuf,
    cgroups: Arc<Cgroups>,
}

/// A container of a [`Pod`]: its cgroup and its log directory.
#[derive(Debug, Clone)]
pub struct Container {
    pub name: String,
    pub id: String,
    /// `cri-containerd-<id>.scope` below the pod cgroup.
    pub scope: PathBuf,
}

impl Pod {
    /// `namespace/name`, what `--pod` takes.
    pub fn reference(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// How the tracer prints this pod: `{"namespace":..,"name":..}`.
    pub fn json(&self) -> Value {
        json!({"namespace": self.namespace, "name": self.name})
    }

    /// The pod's log directory under the node's `var/log/pods`.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Starts a container: its log directory and its cgroup scope, with
    /// `pids` moved in (all processes of the workload: nginx's master and
    /// workers, say).
    pub fn add_container(&self, name: &str, pids: &[u32]) -> Result<Container> {
        fs::create_dir_all(self.log_dir.join(name))?;
        let log = self.log_dir.join(name).join("0.log");
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("create {}", log.display()))?;
        let id = random_hex(32)?;
        let scope = self.cgroup.join(format!("cri-containerd-{id}.scope"));
        self.cgroups.mkdir(&scope)?;
        let c = Container {
            name: name.into(),
            id,
            scope,
        };
        self.adopt(&c, pids)?;
        Ok(c)
    }

    /// Moves more processes into a container's cgroup.
    pub fn adopt(&self, c: &Container, pids: &[u32]) -> Result<()> {
        for &pid in pids {
            self.cgroups
                .adopt(&c.scope, pid)
                .with_context(|| format!("pod {}: container {}", self.reference(), c.name))?;
        }
        Ok(())
    }

    /// Removes a container's cgroup (its processes should be gone; any
    /// left are moved out first).
    pub fn remove_container(&self, c: &Container) {
        self.cgroups.remove(&c.scope);
    }

    /// The sandbox's pause container: a `sleep` in `netns`, adopted into
    /// a `pause` container of this pod. Killed when the [`Proc`] drops.
    pub fn pause(&self, netns: &Netns) -> Result<(Proc, Container)> {
        fs::create_dir_all(self.log_dir.join("pause"))?;
        let p = netns.spawn("pause", &["sleep", "3600"], &self.log_dir.join("pause"))?;
        let c = self.add_container("pause", &[p.pid()])?;
        Ok((p, c))
    }

    /// The processes in the pod cgroup now (read back from `cgroup.procs`).
    pub fn pids(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let mut stack = vec![self.cgroup.clone()];
        while let Some(dir) = stack.pop() {
            if let Ok(s) = fs::read_to_string(dir.join("cgroup.procs")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
            stack.extend(subdirs(&dir));
        }
        out.sort_unstable();
        out
    }

    /// The pod cgroup directory.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }
}

/// Finds a writable cgroup hierarchy, makes `t502-<pid>-<seq>-node` in it
/// and checks that a process can really be moved in. Returns the mode, the
/// hierarchy root and the new subtree.
fn make_real_subtree() -> Result<(CgroupMode, PathBuf, PathBuf)> {
    let candidates = [
        (CgroupMode::Unified, "/sys/fs/cgroup", CGROUP2_SUPER_MAGIC),
        (
            CgroupMode::Hybrid,
            "/sys/fs/cgroup/unified",
            CGROUP2_SUPER_MAGIC,
        ),
        (
            CgroupMode::V1Pids,
            "/sys/fs/cgroup/pids",
            CGROUP_SUPER_MAGIC,
        ),
    ];
    let mut why = Vec::new();
    for (mode, path, magic) in candidates {
        let hierarchy = PathBuf::from(path);
        match fs_magic(&hierarchy) {
            Some(m) if m == magic => {}
            Some(m) => {
                why.push(format!("{path} is not that cgroup type (fs magic {m:#x})"));
                continue;
            }
            None => {
                why.push(format!("{path} is missing"));
                continue;
            }
        }
        let base = hierarchy.join(format!(
            "{NAME_PREFIX}-{}-{}-node",
            std::process::id(),
            next_seq()
        ));
        match probe(&base, &hierarchy) {
            Ok(()) => return Ok((mode, hierarchy, base)),
            Err(e) => {
                remove_real_tree(&base, &hierarchy.join("cgroup.procs"));
                why.push(format!("{path}: {e:#}"));
            }
        }
    }
    bail!("{}", why.join("; "))
}

/// Makes `base` and proves a process can be moved into a cgroup below it.
fn probe(base: &Path, hierarchy: &Path) -> Result<()> {
    fs::create_dir(base).with_context(|| format!("mkdir {}", base.display()))?;
    let probe = base.join("probe");
    fs::create_dir(&probe).with_context(|| format!("mkdir {}", probe.display()))?;
    let mut child = Command::new("sleep")
        .arg("10")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn the probe process")?;
    let pid = child.id();
    let moved = fs::write(probe.join("cgroup.procs"), format!("{pid}\n"))
        .with_context(|| format!("move a process into {}", probe.display()))
        .and_then(|()| {
            let listed = fs::read_to_string(probe.join("cgroup.procs"))?;
            if listed.split_whitespace().any(|p| p == pid.to_string()) {
                Ok(())
            } else {
                bail!("{} does not list the moved process", probe.display())
            }
        });
    let _ = child.kill();
    let _ = child.wait();
    moved?;
    remove_real_tree(&probe, &hierarchy.join("cgroup.procs"));
    if probe.exists() {
        bail!("cannot remove {}", probe.display());
    }
    Ok(())
}

/// Removes a real cgroup subtree bottom-up; processes still inside are
/// moved to `evacuate_to` first. Bounded: a cgroup whose last process is
/// still exiting is retried for up to 3 s.
fn remove_real_tree(dir: &Path, evacuate_to: &Path) {
    for sub in subdirs(dir) {
        remove_real_tree(&sub, evacuate_to);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Ok(s) = fs::read_to_string(dir.join("cgroup.procs")) {
            for pid in s.split_whitespace() {
                let _ = fs::write(evacuate_to, format!("{pid}\n"));
            }
        }
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if Instant::now() >= deadline => {
                eprintln!("warning: cannot remove cgroup {}: {e}", dir.display());
                return;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Removes `t502-<pid>-...` cgroup subtrees of test processes that are gone
/// (killed without unwinding). Their processes were killed with their
/// namespaces ([`crate::Netns`] does that) or are moved to the root cgroup.
fn cleanup_stale() {
    for hierarchy in [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup/pids",
    ] {
        let hierarchy = Path::new(hierarchy);
        for dir in subdirs(hierarchy) {
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
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
            remove_real_tree(&dir, &hierarchy.join("cgroup.procs"));
            eprintln!("removed stale cgroup {}", dir.display());
        }
    }
}

/// Sub-directories of `dir` (not following symlinks); empty if unreadable.
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// The filesystem type (`statfs.f_type`) at `path`.
fn fs_magic(path: &Path) -> Option<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: a zeroed statfs is a valid out-parameter.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut sfs) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs by target
    Some(sfs.f_type as i64)
}

/// `n` random bytes as lowercase hex.
fn random_hex(n: usize) -> Result<String> {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("read /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// A random (version 4) UUID, as Kubernetes gives pods.
fn random_uuid() -> Result<String> {
    let h = random_hex(16)?;
    Ok(format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    ))
}
