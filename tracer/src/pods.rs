//! Kubernetes pods on this node, found without an API server.
//!
//! `--pod NAMESPACE/NAME` is resolved from what kubelet and the container
//! runtime leave on every node:
//!
//! 1. kubelet's pod log directories, `/var/log/pods/<namespace>_<name>_<uid>/`,
//!    name a pod and give its uid;
//! 2. the pod's cgroup under `kubepods` (cgroup v2 or v1, systemd or cgroupfs
//!    driver, any QoS class) lists its processes in `cgroup.procs`;
//! 3. `readlink /proc/<pid>/ns/net` of those processes gives the pod's network
//!    namespace inode, which the kernel filter matches.
//!
//! Every path is taken relative to a node root (`/` on the node itself,
//! `/host` in a DaemonSet that mounts the host there), so the same code runs
//! in both places and in the tests, which build fake node roots.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use log::{debug, info, warn};
use serde::Serialize;

/// Environment variable naming the node root when `--node-root` is not given.
pub const NODE_ROOT_ENV: &str = "TRACER_NODE_ROOT";

/// kubelet's pod log root (`podLogsRootDirectory`, pkg/kubelet/kubelet.go);
/// one directory per pod, named by `BuildPodLogsDirectory`
/// (pkg/kubelet/kuberuntime/helpers.go): `<namespace>_<name>_<uid>`.
const POD_LOGS: &str = "var/log/pods";
const CGROUP_FS: &str = "sys/fs/cgroup";
const PROC: &str = "proc";

/// Hierarchies under `/sys/fs/cgroup` that can hold kubelet's pod cgroups.
/// `""` is the unified (v2) root; the others are v1 mounts (a controller
/// kubelet always enables, or systemd's own hierarchies in hybrid mode). A
/// missing one costs one failed `read_dir`. `cpu` is left out: on v1 it is a
/// symlink to `cpu,cpuacct` on every common distribution.
const CGROUP_HIERARCHIES: &[&str] = &["", "unified", "pids", "memory", "cpu,cpuacct", "systemd"];

/// Where kubelet puts its `kubepods` cgroup inside a hierarchy: the systemd
/// and cgroupfs drivers' names, with and without `--cgroup-root=/kubelet`
/// (kind, some installers). pkg/kubelet/cm/cgroup_manager_linux.go.
const KUBEPODS_ROOTS: &[&str] = &[
    "kubepods.slice",
    "kubepods",
    "kubelet.slice/kubelet-kubepods.slice",
    "kubelet/kubepods",
];

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// A `--pod` argument is not `NAMESPACE/NAME` with valid Kubernetes names.
    #[error("bad pod {input:?}: {why} (expected NAMESPACE/NAME)")]
    BadPodRef { input: String, why: String },
    /// A wanted pod has no log directory on this node.
    #[error("pod {wanted} is not on this node; pods here: {}", list_or_none(.available))]
    UnknownPod {
        wanted: String,
        available: Vec<String>,
    },
    /// The pod log root could not be read: wrong node root, or not a node.
    #[error(
        "cannot read {} (is this a Kubernetes node? set --node-root or {NODE_ROOT_ENV} \
         to where the host's / is mounted)",
        path.display()
    )]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The background watcher thread could not be started.
    #[error("cannot start the pod watcher thread")]
    Watcher {
        #[source]
        source: io::Error,
    },
}

fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".to_owned()
    } else {
        names.join(", ")
    }
}

/// A pod as the user names it on the command line: `NAMESPACE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
}

impl PodRef {
    /// Whether `pod` is the pod this reference names.
    pub fn matches(&self, pod: &PodName) -> bool {
        self.namespace == pod.namespace && self.name == pod.name
    }
}

impl fmt::Display for PodRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl FromStr for PodRef {
    type Err = PodError;

    /// Parses `NAMESPACE/NAME`. A namespace is a DNS-1123 label; a pod name
    /// is a DNS-1123 subdomain (it may contain dots: static pods are named
    /// after the node) — k8s.io/apimachinery/pkg/util/validation.
    fn from_str(input: &str) -> Result<Self, PodError> {
        let bad = |why: String| PodError::BadPodRef {
            input: input.to_owned(),
            why,
        };
        let (namespace, name) = input
            .split_once('/')
            .ok_or_else(|| bad("missing '/'".to_owned()))?;
        check_dns1123(namespace, 63, false).map_err(|w| bad(format!("namespace {w}")))?;
        check_dns1123(name, 253, true).map_err(|w| bad(format!("name {w}")))?;
        Ok(PodRef {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// Checks a DNS-1123 label (`dots == false`) or subdomain (`dots == true`).
fn check_dns1123(s: &str, max: usize, dots: bool) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".to_owned());
    }
    if s.len() > max {
        return Err(format!("is longer than {max} characters"));
    }
    let allowed = if dots {
        "lowercase letters, digits, '-' and '.'"
    } else {
        "lowercase letters, digits and '-'"
    };
    if let Some(c) = s.chars().find(|&c| {
        !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.'))
    }) {
        return Err(format!("contains {c:?}; only {allowed} are allowed"));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    for part in s.split('.') {
        if !alnum(part.chars().next()) || !alnum(part.chars().last()) {
            return Err(if dots {
                "must start and end with a letter or digit, also around dots".to_owned()
            } else {
                "must start and end with a letter or digit".to_owned()
            });
        }
    }
    Ok(())
}

/// A pod's identity as it appears on events: `{"namespace":..,"name":..}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What one scan found out about one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodInfo {
    pub pod: PodName,
    /// The pod's uid, with dashes, as in its log directory.
    pub uid: String,
    /// The pod's own network namespace inode. `None` when it has no
    /// processes (yet), its `/proc` entries were unreadable, or it uses the
    /// host network (then see `host_network`). Never the host's netns when
    /// that is known (read, or inferred from pods sharing it), so putting it
    /// in the kernel filter does not mean "trace the whole node".
    pub netns: Option<u64>,
    /// The pod's processes live in the host network namespace
    /// (`hostNetwork: true`); filter by `pids` instead.
    pub host_network: bool,
    /// The pod's processes (pids in the node root's pid namespace), sorted.
    pub pids: Vec<u32>,
    /// The addresses of its own network namespace (not loopback), so the
    /// remote end of a connection to it can be named.
    pub ips: Vec<IpAddr>,
}

/// Finds pods, their processes and network namespaces under a node root.
#[derive(Debug, Clone)]
pub struct PodResolver {
    root: PathBuf,
}

impl PodResolver {
    /// A resolver reading `<root>/var/log/pods`, `<root>/sys/fs/cgroup` and
    /// `<root>/proc`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        PodResolver { root: root.into() }
    }

    /// The node root from `--node-root`, else `$TRACER_NODE_ROOT`, else `/`.
    pub fn from_env_or(root: Option<PathBuf>) -> Self {
        Self::new(pick_root(root, std::env::var_os(NODE_ROOT_ENV)))
    }

    /// The node root this resolver reads.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host's network namespace inode: that of `<root>/proc/1/ns/net`,
    /// or, when pid 1 is unreadable (an LSM or a sandbox guarding init:
    /// `/proc/<pid>/ns` needs ptrace read access, fs/proc/namespaces.c), that
    /// of kthreadd (pid 2). Kernel threads keep `init_nsproxy`, whose netns is
    /// `init_net` (kernel/nsproxy.c), the host's on any node not itself in a
    /// container.
    pub fn host_netns(&self) -> Option<u64> {
        let proc = self.root.join(PROC);
        let init = proc.join("1/ns/net");
        if let Some(inode) = netns_of_link(&init) {
            return Some(inode);
        }
        let kthreadd =
            fs::read_to_string(proc.join("2/comm")).is_ok_and(|c| c.trim_end() == "kthreadd");
        let inode = kthreadd
            .then(|| netns_of_link(&proc.join("2/ns/net")))
            .flatten();
        if inode.is_none() {
            debug!(
                "host netns unknown ({} unreadable, no kthreadd): host-network pods cannot be told apart",
                init.display()
            );
        }
        inode
    }

    /// Every pod on the node, sorted by namespace, name and uid, with its
    /// processes and network namespace where found.
    pub fn scan(&self) -> Result<Vec<PodInfo>, PodError> {
        Ok(self.scan_with_host()?.0)
    }

    /// The wanted pods, in the order asked (a pod asked twice is listed
    /// once). A wanted pod with no log directory on the node is an error
    /// listing every pod seen; one that exists but has no processes yet is
    /// returned with `netns: None`.
    pub fn resolve(&self, wanted: &[PodRef]) -> Result<Vec<PodInfo>, PodError> {
        let pods = self.scan()?;
        let mut out: Vec<PodInfo> = Vec::new();
        for w in wanted {
            let mut matching = pods.iter().filter(|p| w.matches(&p.pod)).peekable();
            if matching.peek().is_none() {
                let available: BTreeSet<String> = pods.iter().map(|p| p.pod.to_string()).collect();
                return Err(PodError::UnknownPod {
                    wanted: w.to_string(),
                    available: available.into_iter().collect(),
                });
            }
            for p in matching {
                if !out.iter().any(|o| o.uid == p.uid) {
                    out.push(p.clone());
                }
            }
        }
        Ok(out)
    }

    fn scan_with_host(&self) -> Result<(Vec<PodInfo>, Option<u64>), PodError> {
        let logs = self.pod_logs()?;
        let cgroups = self.pod_cgroups();
        let host = self.host_netns();
        for uid in cgroups.keys() {
            if !logs.iter().any(|(_, u)| u == uid) {
                debug!("pod cgroup {uid} has no log directory under {POD_LOGS}: skipped");
            }
        }
        let mut pods: Vec<PodInfo> = logs
            .into_iter()
            .map(|(pod, uid)| {
                let dirs = cgroups.get(&uid).map(Vec::as_slice).unwrap_or_default();
                self.inspect(pod, uid, dirs, host)
            })
            .collect();
        let host = host.or_else(|| infer_host_netns(&mut pods));
        pods.sort_by(|a, b| (&a.pod, &a.uid).cmp(&(&b.pod, &b.uid)));
        drop_stale(&mut pods);
        Ok((pods, host))
    }

    /// Pod log directories: `(pod, uid)`.
    fn pod_logs(&self) -> Result<Vec<(PodName, String)>, PodError> {
        let dir = self.root.join(POD_LOGS);
        let entries = fs::read_dir(&dir).map_err(|source| PodError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let file_name = entry.file_name();
            match file_name.to_str().and_then(parse_log_dir) {
                Some(found) => out.push(found),
                None => debug!("not a pod log directory: {}", entry.path().display()),
            }
        }
        Ok(out)
    }

    /// Pod cgroup directories by pod uid (dashed), across hierarchies. Only
    /// `kubepods` and its QoS children are listed, never the whole tree.
    fn pod_cgroups(&self) -> HashMap<String, Vec<PathBuf>> {
        let base = self.root.join(CGROUP_FS);
        let mut found: HashMap<String, Vec<PathBuf>> = HashMap::new();
        let mut add = |dir: PathBuf| {
            let uid = dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(pod_uid_from_cgroup);
            if let Some(uid) = uid {
                found.entry(uid).or_default().push(dir);
            }
        };
        for hierarchy in CGROUP_HIERARCHIES {
            let hierarchy = if hierarchy.is_empty() {
                base.clone()
            } else {
                base.join(hierarchy)
            };
            for kubepods in KUBEPODS_ROOTS {
                for child in subdirs(&hierarchy.join(kubepods)) {
                    // Guaranteed pods sit directly under kubepods; burstable
                    // and besteffort ones one level down, in their QoS cgroup
                    // (pkg/kubelet/cm/qos_container_manager_linux.go).
                    let qos = child
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(is_qos_dir);
                    if qos {
                        for pod in subdirs(&child) {
                            add(pod);
                        }
                    } else {
                        add(child);
                    }
                }
            }
        }
        found
    }

    fn inspect(&self, pod: PodName, uid: String, dirs: &[PathBuf], host: Option<u64>) -> PodInfo {
        if dirs.is_empty() {
            debug!("pod {pod} ({uid}): no cgroup under kubepods (not started yet, or gone)");
        }
        // Every hierarchy holding the pod lists the same processes: the first
        // one that lists any is enough.
        let mut pids = Vec::new();
        for dir in dirs {
            pids = pids_under(dir);
            if !pids.is_empty() {
                break;
            }
        }
        pids.sort_unstable();
        pids.dedup();

        // A pod's containers share one netns, but a runtime may also keep a
        // helper in the pod cgroup (CRI-O's conmon with conmon_cgroup="pod")
        // that stays in the host's: prefer any non-host netns.
        let mut census: HashMap<u64, usize> = HashMap::new();
        for &pid in &pids {
            let link = self.root.join(PROC).join(pid.to_string()).join("ns/net");
            if let Some(inode) = netns_of_link(&link) {
                *census.entry(inode).or_default() += 1;
            }
        }
        let own: Vec<(u64, usize)> = census
            .iter()
            .filter(|(inode, _)| Some(**inode) != host)
            .map(|(i, n)| (*i, *n))
            .collect();
        if own.len() > 1 {
            debug!("pod {pod} ({uid}): processes in several netns {own:?}; taking the most common");
        }
        let netns = own
            .iter()
            .max_by_key(|(inode, n)| (*n, Reverse(*inode)))
            .map(|(inode, _)| *inode);
        let host_network = netns.is_none() && host.is_some_and(|h| census.contains_key(&h));
        if pids.is_empty() && !dirs.is_empty() {
            debug!("pod {pod} ({uid}): no processes in its cgroup yet");
        } else if netns.is_none() && !host_network && !pids.is_empty() {
            debug!("pod {pod} ({uid}): netns of pids {pids:?} unreadable (exited?)");
        }
        // Its addresses, read through any of its processes in that netns.
        let ips = netns
            .and_then(|ns| {
                pids.iter().find(|&&pid| {
                    let link = self.root.join(PROC).join(pid.to_string()).join("ns/net");
                    netns_of_link(&link) == Some(ns)
                })
            })
            .map(|&pid| local_addrs(&self.root.join(PROC).join(pid.to_string()).join("net")))
            .unwrap_or_default();
        PodInfo {
            pod,
            uid,
            netns,
            host_network,
            pids,
            ips,
        }
    }
}

/// The local addresses of a network namespace, from `/proc/PID/net`:
/// IPv4 `/32 host LOCAL` entries of `fib_trie` and the `if_inet6` list,
/// without loopback and link-local ones.
fn local_addrs(net_dir: &Path) -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(trie) = fs::read_to_string(net_dir.join("fib_trie")) {
        out.extend(parse_fib_trie_locals(&trie));
    }
    if let Ok(v6) = fs::read_to_string(net_dir.join("if_inet6")) {
        out.extend(parse_if_inet6(&v6));
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// `fib_trie` lists `|-- ADDR` lines, each followed by its routes; a local
/// address has a `/32 host LOCAL` route (net/ipv4/fib_trie.c).
fn parse_fib_trie_locals(text: &str) -> Vec<IpAddr> {
    let mut last: Option<std::net::Ipv4Addr> = None;
    let mut out = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some(a) = t.strip_prefix("|-- ") {
            last = a.trim().parse().ok();
        } else if t.contains("/32 host LOCAL") {
            if let Some(a) = last.filter(|a| !a.is_loopback()) {
                out.push(IpAddr::V4(a));
            }
        }
    }
    out
}

/// `if_inet6`: 32 hex digits per address, then index, prefix, scope, flags, name.
fn parse_if_inet6(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|hex| u128::from_str_radix(hex, 16).ok())
        .map(std::net::Ipv6Addr::from)
        .filter(|a| !a.is_loopback() && (a.segments()[0] & 0xffc0) != 0xfe80)
        .map(IpAddr::V6)
        .collect()
}

fn pick_root(cli: Option<PathBuf>, env: Option<OsString>) -> PathBuf {
    cli.or_else(|| env.filter(|v| !v.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// With the host netns unreadable, a netns that several pods' processes
/// share can only be the host's: every other pod gets a sandbox netns of its
/// own (hostNetwork is the only way to share one). Flags those pods and
/// returns the inferred inode.
fn infer_host_netns(pods: &mut [PodInfo]) -> Option<u64> {
    let mut sharing: HashMap<u64, usize> = HashMap::new();
    for inode in pods.iter().filter_map(|p| p.netns) {
        *sharing.entry(inode).or_default() += 1;
    }
    let (host, n) = sharing
        .into_iter()
        .filter(|&(_, n)| n > 1)
        .max_by_key(|&(inode, n)| (n, Reverse(inode)))?;
    debug!("host netns inferred as {host}: shared by {n} pods");
    for p in pods.iter_mut().filter(|p| p.netns == Some(host)) {
        p.netns = None;
        p.host_network = true;
    }
    Some(host)
}

/// When kubelet recreates a pod under the same name (a StatefulSet pod), the
/// old uid's log directory lingers until garbage collection; drop entries
/// without processes when a namesake has some.
fn drop_stale(pods: &mut Vec<PodInfo>) {
    let live: HashSet<PodName> = pods
        .iter()
        .filter(|p| !p.pids.is_empty())
        .map(|p| p.pod.clone())
        .collect();
    pods.retain(|p| {
        let keep = !p.pids.is_empty() || !live.contains(&p.pod);
        if !keep {
            debug!(
                "pod {} ({}): stale log directory, a newer uid is running",
                p.pod, p.uid
            );
        }
        keep
    });
}

/// `<namespace>_<name>_<uid>`: namespaces and names cannot contain `_`, so
/// split from the left.
fn parse_log_dir(dir: &str) -> Option<(PodName, String)> {
    let mut parts = dir.splitn(3, '_');
    let namespace = parts.next().filter(|s| !s.is_empty())?;
    let name = parts.next().filter(|s| !s.is_empty())?;
    let uid = parts.next().filter(|s| !s.is_empty())?;
    Some((
        PodName {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        },
        uid.to_owned(),
    ))
}

/// A QoS-class cgroup: `burstable`/`besteffort` (cgroupfs driver) or
/// `kubepods-burstable.slice` (systemd driver, possibly `kubelet-` prefixed).
fn is_qos_dir(name: &str) -> bool {
    matches!(name, "burstable" | "besteffort")
        || name.ends_with("-burstable.slice")
        || name.ends_with("-besteffort.slice")
}

/// The pod uid (with dashes) from a pod cgroup directory name:
/// `pod<uid>` (cgroupfs driver) or `…-pod<uid with '_' for '-'>.slice`
/// (systemd driver, which escapes '-' as it separates slice levels;
/// pkg/kubelet/cm/cgroup_manager_linux.go, `escapeSystemdCgroupName`).
fn pod_uid_from_cgroup(name: &str) -> Option<String> {
    let uid = match name.strip_suffix(".slice") {
        Some(slice) => &slice[slice.rfind("-pod")? + "-pod".len()..],
        None => name.strip_prefix("pod")?,
    };
    let valid = !uid.is_empty()
        && uid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    valid.then(|| uid.replace('_', "-"))
}

/// The cgroup directories directly under `dir`, without following symlinks.
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            if !is_gone(&e) {
                debug!("cannot list {}: {e}", dir.display());
            }
            return Vec::new();
        }
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect()
}

/// The processes in the cgroup at `dir` and its descendants (containers and
/// any cgroups they made), from their `cgroup.procs` files.
fn pids_under(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let procs = dir.join("cgroup.procs");
        match fs::read_to_string(&procs) {
            // kernel/cgroup/cgroup.c, cgroup_procs_show(): one pid a line as
            // seen from the reader's pid namespace, 0 for a process outside
            // it (a tracer in a container without hostPID).
            Ok(text) => {
                let before = pids.len();
                pids.extend(
                    text.lines()
                        .filter_map(|l| l.trim().parse::<u32>().ok())
                        .filter(|&p| p != 0),
                );
                let listed = text.lines().filter(|l| !l.trim().is_empty()).count();
                if pids.len() - before < listed {
                    debug!(
                        "{}: pids outside our pid namespace (run with hostPID)",
                        procs.display()
                    );
                }
            }
            Err(e) if is_gone(&e) => {}
            Err(e) => debug!("cannot read {}: {e}", procs.display()),
        }
        stack.extend(subdirs(&dir));
    }
    pids
}

/// The inode of the network namespace a `/proc/<pid>/ns/net` link names.
fn netns_of_link(link: &Path) -> Option<u64> {
    match fs::read_link(link) {
        Ok(target) => {
            let inode = target.to_str().and_then(parse_netns_link);
            if inode.is_none() {
                debug!(
                    "{}: unexpected link target {}",
                    link.display(),
                    target.display()
                );
            }
            inode
        }
        Err(e) => {
            if !is_gone(&e) {
                debug!("cannot read {}: {e}", link.display());
            }
            None
        }
    }
}

/// `net:[4026532281]` → 4026532281. The format is `"%s:[%u]"` with the
/// namespace's `ns.inum` (fs/nsfs.c, `ns_get_name()`, since v3.19; before in
/// fs/proc/namespaces.c) — the same inode the kernel filter reads from
/// `sock_net(sk)->ns.inum`.
fn parse_netns_link(target: &str) -> Option<u64> {
    target
        .strip_prefix("net:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Races with exiting processes and removed cgroups, not errors: ENOENT, and
/// ESRCH/ENODEV from a process or cgroup that went away while being read.
fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || matches!(e.raw_os_error(), Some(libc::ESRCH) | Some(libc::ENODEV))
}

/// Attribution index: which pod a local socket end belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodIndex {
    netns: HashMap<u64, PodName>,
    pids: HashMap<u32, PodName>,
    ips: HashMap<IpAddr, PodName>,
}

impl PodIndex {
    /// Indexes pods by their own netns and by every pid. Host-network pods
    /// are indexed by pid only, never by the host netns (which every
    /// host process shares).
    pub fn build(pods: &[PodInfo], host_netns: Option<u64>) -> Self {
        let mut index = PodIndex::default();
        for p in pods {
            if let Some(inode) = p
                .netns
                .filter(|&i| !p.host_network && Some(i) != host_netns)
            {
                index.netns.insert(inode, p.pod.clone());
            }
            for &pid in &p.pids {
                index.pids.insert(pid, p.pod.clone());
            }
            if !p.host_network {
                for ip in &p.ips {
                    index.ips.insert(*ip, p.pod.clone());
                }
            }
        }
        index
    }

    /// The pod on this node that owns this address (its own netns).
    pub fn by_ip(&self, ip: IpAddr) -> Option<&PodName> {
        self.ips.get(&ip)
    }

    /// The pod whose own network namespace has this inode.
    pub fn by_netns(&self, inode: u64) -> Option<&PodName> {
        self.netns.get(&inode)
    }

    /// The pod this process belongs to.
    pub fn by_pid(&self, pid: u32) -> Option<&PodName> {
        self.pids.get(&pid)
    }

    /// By netns first (it covers sockets whose owner is unknown), else by pid
    /// (host-network pods).
    pub fn attribute(&self, netns: u64, pid: u32) -> Option<&PodName> {
        self.by_netns(netns).or_else(|| self.by_pid(pid))
    }
}

/// What a rescan hands the caller: the kernel filter's new contents and a
/// fresh attribution index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodUpdate {
    /// Netns inodes of the wanted pods, sorted, for the kernel netns filter.
    pub netns: Vec<u64>,
    /// Pids of wanted host-network pods, sorted, to filter by pid instead.
    pub host_pids: Vec<u32>,
    /// All pods on the node, for attribution.
    pub index: PodIndex,
}

/// Re-scans the node for wanted pods; reports only what changed. Driven by
/// [`spawn_watcher`], or by the caller's own loop.
#[derive(Debug)]
pub struct PodWatch {
    resolver: PodResolver,
    wanted: Vec<PodRef>,
    last: Option<PodUpdate>,
}

impl PodWatch {
    /// A watch with no previous state: the first `poll` always reports.
    /// Wanted pods that are not on the node (yet) are fine.
    pub fn new(resolver: PodResolver, wanted: Vec<PodRef>) -> Self {
        PodWatch {
            resolver,
            wanted,
            last: None,
        }
    }

    /// Scans once; `Some` if the wanted pods' netns or pids, or the index,
    /// differ from the last report.
    pub fn poll(&mut self) -> Result<Option<PodUpdate>, PodError> {
        let (pods, host) = self.resolver.scan_with_host()?;
        let mut netns = BTreeSet::new();
        let mut host_pids = BTreeSet::new();
        for w in &self.wanted {
            let mut seen = false;
            for p in pods.iter().filter(|p| w.matches(&p.pod)) {
                seen = true;
                if p.host_network {
                    host_pids.extend(p.pids.iter().copied());
                } else if let Some(inode) = p.netns {
                    netns.insert(inode);
                }
            }
            if !seen {
                debug!("pod {w} not on this node (yet)");
            }
        }
        let update = PodUpdate {
            netns: netns.into_iter().collect(),
            host_pids: host_pids.into_iter().collect(),
            index: PodIndex::build(&pods, host),
        };
        if self.last.as_ref() == Some(&update) {
            return Ok(None);
        }
        let filter_changed = self
            .last
            .as_ref()
            .is_none_or(|l| l.netns != update.netns || l.host_pids != update.host_pids);
        if filter_changed {
            info!(
                "pod filter: netns {:?}, host-network pids {:?}",
                update.netns, update.host_pids
            );
        }
        self.last = Some(update.clone());
        Ok(Some(update))
    }
}

/// Re-scans every `every` on a background thread, sending a [`PodUpdate`]
/// at once and then whenever something changed (a wanted pod appeared,
/// restarted with a new netns or went away; processes came or went). The
/// thread ends at the first update after the receiver is dropped. Scan
/// errors are logged, not sent: the next scan may succeed. A scan reads a
/// few files per pod and one link per process; every few seconds is cheap.
pub fn spawn_watcher(
    resolver: PodResolver,
    wanted: Vec<PodRef>,
    every: Duration,
) -> Result<mpsc::Receiver<PodUpdate>, PodError> {
    let (tx, rx) = mpsc::channel();
    let mut watch = PodWatch::new(resolver, wanted);
    thread::Builder::new()
        .name("pod-watcher".to_owned())
        .spawn(move || {
            let mut failing = false;
            loop {
                match watch.poll() {
                    Ok(update) => {
                        failing = false;
                        if let Some(update) = update {
                            if tx.send(update).is_err() {
                                return;
                            }
                        }
                    }
                    // Warn once per outage, not every few seconds.
                    Err(e) if !failing => {
                        failing = true;
                        warn!("pod rescan failed (will retry): {e}");
                    }
                    Err(e) => debug!("pod rescan failed again: {e}"),
                }
                thread::sleep(every);
            }
        })
        .map_err(|source| PodError::Watcher { source })?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt};
    use std::sync::atomic::{AtomicUsize, Ordering};

    const HOST: u64 = 4026531840;
    const U1: &str = "0b1c6a2e-4f5d-4c1b-9a7e-2d3c4b5a6f70";
    const U2: &str = "1c2d7b3f-5a6e-4d2c-8b8f-3e4d5c6b7a81";
    const U3: &str = "2d3e8c4a-6b7f-4e3d-9c9a-4f5e6d7c8b92";

    /// A fake node root in the temp directory, removed on drop.
    struct FakeNode {
        root: PathBuf,
    }

    impl FakeNode {
        fn new(tag: &str) -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let root = std::env::temp_dir().join(format!(
                "tracer-pods-{}-{tag}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(root.join(POD_LOGS)).unwrap();
            let node = FakeNode { root };
            node.netns(1, HOST);
            node
        }

        fn resolver(&self) -> PodResolver {
            PodResolver::new(&self.root)
        }

        fn log_dir(&self, ns: &str, name: &str, uid: &str) {
            let dir = self.root.join(POD_LOGS).join(format!("{ns}_{name}_{uid}"));
            fs::create_dir_all(dir.join("app")).unwrap();
        }

        /// A cgroup directory (relative to sys/fs/cgroup) holding `pids`.
        fn cgroup(&self, rel: &str, pids: &[u32]) {
            let dir = self.root.join(CGROUP_FS).join(rel);
            fs::create_dir_all(&dir).unwrap();
            let text: String = pids.iter().map(|p| format!("{p}\n")).collect();
            fs::write(dir.join("cgroup.procs"), text).unwrap();
        }

        /// `proc/<pid>/ns/net` as a (dangling) symlink to `net:[inode]`.
        fn netns(&self, pid: u32, inode: u64) {
            let dir = self.root.join(PROC).join(pid.to_string()).join("ns");
            fs::create_dir_all(&dir).unwrap();
            let _ = fs::remove_file(dir.join("net"));
            symlink(format!("net:[{inode}]"), dir.join("net")).unwrap();
        }

        /// A pod with a log dir, a container cgroup at `cgroup` and one
        /// process per pid, all in netns `inode`.
        fn pod(&self, ns: &str, name: &str, uid: &str, cgroup: &str, pids: &[u32], inode: u64) {
            self.log_dir(ns, name, uid);
            self.cgroup(cgroup, pids);
            for &pid in pids {
                self.netns(pid, inode);
            }
        }
    }

    impl Drop for FakeNode {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    fn r(s: &str) -> PodRef {
        s.parse().unwrap()
    }

    fn sys(uid: &str) -> String {
        uid.replace('-', "_")
    }

    fn one(node: &FakeNode, pod: &str) -> PodInfo {
        let mut found = node.resolver().resolve(&[r(pod)]).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        found.remove(0)
    }

    /// Three pods, one per QoS class, at the given container cgroups.
    fn check_layout(tag: &str, guaranteed: &str, burstable: &str, besteffort: &str) {
        let node = FakeNode::new(tag);
        node.pod(
            "shop",
            "ingress-7f9",
            U1,
            guaranteed,
            &[100, 101],
            4026532281,
        );
        node.pod("shop", "api-5c4", U2, burstable, &[200], 4026532282);
        node.pod(
            "batch",
            "job-x1",
            U3,
            besteffort,
            &[300, 301, 302],
            4026532283,
        );

        let p = one(&node, "shop/ingress-7f9");
        assert_eq!(p.uid, U1);
        assert_eq!(p.netns, Some(4026532281));
        assert!(!p.host_network);
        assert_eq!(p.pids, vec![100, 101]);
        assert_eq!(one(&node, "shop/api-5c4").netns, Some(4026532282));
        let b = one(&node, "batch/job-x1");
        assert_eq!(b.netns, Some(4026532283));
        assert_eq!(b.pids, vec![300, 301, 302]);
        assert_eq!(node.resolver().scan().unwrap().len(), 3);
    }

    #[test]
    fn cgroup_v2_systemd_driver() {
        check_layout(
            "v2-systemd",
            &format!("kubepods.slice/kubepods-pod{}.slice/cri-containerd-aa.scope", sys(U1)),
            &format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-bb.scope",
                sys(U2)
            ),
            &format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/crio-cc.scope",
                sys(U3)
            ),
        );
    }

    #[test]
    fn cgroup_v2_cgroupfs_driver() {
        check_layout(
            "v2-cgroupfs",
            &format!("kubepods/pod{U1}/0123abcd"),
            &format!("kubepods/burstable/pod{U2}/4567ef01"),
            &format!("kubepods/besteffort/pod{U3}/89abcdef"),
        );
    }

    #[test]
    fn cgroup_v1_controllers_and_drivers() {
        check_layout(
            "v1",
            &format!("cpu,cpuacct/kubepods/pod{U1}/0123abcd"),
            &format!("pids/kubepods/burstable/pod{U2}/4567ef01"),
            &format!(
                "memory/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/docker-cc.scope",
                sys(U3)
            ),
        );
    }

    #[test]
    fn kubelet_cgroup_root_as_in_kind() {
        check_layout(
            "kind",
            &format!(
                "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{}.slice/cri-containerd-aa.scope",
                sys(U1)
            ),
            &format!(
                "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{}.slice/cri-containerd-bb.scope",
                sys(U2)
            ),
            &format!("kubelet/kubepods/besteffort/pod{U3}/89abcdef"),
        );
    }

    #[test]
    fn processes_in_pod_cgroup_and_nested_cgroups_all_count() {
        let node = FakeNode::new("nested");
        let pod = format!("kubepods/burstable/pod{U1}");
        node.pod("shop", "web", U1, &pod, &[10], 4026532290);
        node.cgroup(&format!("{pod}/pause"), &[11]);
        node.cgroup(&format!("{pod}/app/init.scope"), &[12]);
        for pid in [11, 12] {
            node.netns(pid, 4026532290);
        }
        assert_eq!(one(&node, "shop/web").pids, vec![10, 11, 12]);
    }

    #[test]
    fn host_network_pod_is_flagged_and_has_no_netns() {
        let node = FakeNode::new("hostnet");
        node.pod(
            "kube-system",
            "kube-proxy-abcde",
            U1,
            &format!("kubepods/besteffort/pod{U1}/c1"),
            &[50, 51],
            HOST,
        );
        let p = one(&node, "kube-system/kube-proxy-abcde");
        assert!(p.host_network);
        assert_eq!(p.netns, None);
        assert_eq!(p.pids, vec![50, 51]);
    }

    #[test]
    fn host_netns_helper_in_pod_cgroup_does_not_make_it_host_network() {
        // CRI-O's conmon in the pod cgroup stays in the host netns.
        let node = FakeNode::new("conmon");
        let pod = format!("kubepods.slice/kubepods-pod{}.slice", sys(U1));
        node.pod(
            "shop",
            "web",
            U1,
            &format!("{pod}/crio-aa.scope"),
            &[60, 61],
            4026532300,
        );
        node.cgroup(&format!("{pod}/crio-conmon-aa.scope"), &[59]);
        node.netns(59, HOST);
        let p = one(&node, "shop/web");
        assert!(!p.host_network);
        assert_eq!(p.netns, Some(4026532300));
    }

    #[test]
    fn unknown_pod_lists_available_pods_sorted() {
        let node = FakeNode::new("unknown");
        node.pod(
            "shop",
            "web",
            U1,
            &format!("kubepods/pod{U1}/c"),
            &[10],
            4026532291,
        );
        node.pod(
            "batch",
            "job",
            U2,
            &format!("kubepods/pod{U2}/c"),
            &[20],
            4026532292,
        );
        let err = node
            .resolver()
            .resolve(&[r("shop/web"), r("shop/nope")])
            .unwrap_err();
        match &err {
            PodError::UnknownPod { wanted, available } => {
                assert_eq!(wanted, "shop/nope");
                assert_eq!(available, &["batch/job".to_owned(), "shop/web".to_owned()]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("batch/job, shop/web"), "{err}");
    }

    #[test]
    fn resolve_keeps_order_and_dedups() {
        let node = FakeNode::new("order");
        node.pod(
            "shop",
            "web",
            U1,
            &format!("kubepods/pod{U1}/c"),
            &[10],
            4026532291,
        );
        node.pod(
            "batch",
            "job",
            U2,
            &format!("kubepods/pod{U2}/c"),
            &[20],
            4026532292,
        );
        let found = node
            .resolver()
            .resolve(&[r("shop/web"), r("batch/job"), r("shop/web")])
            .unwrap();
        let names: Vec<String> = found.iter().map(|p| p.pod.to_string()).collect();
        assert_eq!(names, ["shop/web", "batch/job"]);
    }

    #[test]
    fn pod_without_cgroup_or_processes_has_no_netns() {
        let node = FakeNode::new("pending");
        node.log_dir("shop", "starting", U1);
        node.log_dir("shop", "empty", U2);
        node.cgroup(&format!("kubepods/burstable/pod{U2}"), &[]);
        for name in ["shop/starting", "shop/empty"] {
            let p = one(&node, name);
            assert_eq!(p.netns, None);
            assert!(!p.host_network);
            assert!(p.pids.is_empty());
        }
    }

    #[test]
    fn exited_processes_and_foreign_pids_are_ignored() {
        let node = FakeNode::new("race");
        let c = format!("kubepods/pod{U1}/c");
        node.pod("shop", "web", U1, &c, &[10], 4026532291);
        // 0: outside our pid namespace; 999: exited, no /proc entry.
        node.cgroup(&c, &[0, 999, 10]);
        let p = one(&node, "shop/web");
        assert_eq!(p.netns, Some(4026532291));
        assert_eq!(p.pids, vec![10, 999]);
    }

    #[test]
    fn stale_log_dir_of_a_recreated_pod_is_dropped() {
        let node = FakeNode::new("stale");
        node.log_dir("db", "pg-0", U1);
        node.pod(
            "db",
            "pg-0",
            U2,
            &format!("kubepods/pod{U2}/c"),
            &[10],
            4026532291,
        );
        let pods = node.resolver().scan().unwrap();
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].uid, U2);
    }

    #[test]
    fn stray_entries_are_skipped() {
        let node = FakeNode::new("stray");
        node.pod(
            "shop",
            "web",
            U1,
            &format!("kubepods/pod{U1}/c"),
            &[10],
            4026532291,
        );
        fs::create_dir_all(node.root.join(POD_LOGS).join("lost+found")).unwrap();
        fs::write(node.root.join(POD_LOGS).join("a_b_c"), "file").unwrap();
        node.cgroup("kubepods/besteffort/not-a-pod", &[20]);
        node.cgroup(&format!("kubepods/pod{U3}/c"), &[30]); // cgroup, no log dir
        let pods = node.resolver().scan().unwrap();
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].pod.to_string(), "shop/web");
    }

    #[test]
    fn missing_pod_log_root_is_an_error() {
        let node = FakeNode::new("noroot");
        fs::remove_dir_all(node.root.join(POD_LOGS)).unwrap();
        let err = node.resolver().scan().unwrap_err();
        assert!(matches!(err, PodError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains(NODE_ROOT_ENV), "{err}");
    }

    #[test]
    fn pod_ref_parsing() {
        assert_eq!(
            r("shop/ingress-7f9"),
            PodRef {
                namespace: "shop".into(),
                name: "ingress-7f9".into()
            }
        );
        assert_eq!(
            r("kube-system/etcd-node1.example.com").name,
            "etcd-node1.example.com"
        );
        for (input, why) in [
            ("shop", "missing '/'"),
            ("/web", "namespace is empty"),
            ("shop/", "name is empty"),
            ("Shop/web", "namespace contains 'S'"),
            ("shop/we_b", "name contains '_'"),
            ("shop/a/b", "name contains '/'"),
            ("my.ns/web", "namespace contains '.'"),
            ("-shop/web", "namespace must start and end"),
            ("shop/web-", "name must start and end"),
            ("shop/a..b", "name must start and end"),
        ] {
            match input.parse::<PodRef>() {
                Err(PodError::BadPodRef { input: i, why: w }) => {
                    assert_eq!(i, input);
                    assert!(w.starts_with(why), "{input}: {w}");
                }
                other => panic!("{input}: unexpected {other:?}"),
            }
        }
        let long = format!("{}/web", "a".repeat(64));
        assert!(long.parse::<PodRef>().is_err());
        assert!(format!("{}/web", "a".repeat(63)).parse::<PodRef>().is_ok());
    }

    #[test]
    fn name_parsers() {
        assert_eq!(parse_netns_link("net:[4026532281]"), Some(4026532281));
        assert_eq!(parse_netns_link("mnt:[4026532281]"), None);
        assert_eq!(parse_netns_link("net:[x]"), None);
        assert_eq!(
            pod_uid_from_cgroup(&format!("pod{U1}")).as_deref(),
            Some(U1)
        );
        assert_eq!(
            pod_uid_from_cgroup(&format!("kubepods-burstable-pod{}.slice", sys(U1))).as_deref(),
            Some(U1)
        );
        assert_eq!(pod_uid_from_cgroup("kubepods-burstable.slice"), None);
        assert_eq!(
            pod_uid_from_cgroup("kubelet-kubepods-besteffort.slice"),
            None
        );
        assert_eq!(pod_uid_from_cgroup("cri-containerd-abc.scope"), None);
        let (pod, uid) = parse_log_dir(&format!("shop_ingress-7f9_{U1}")).unwrap();
        assert_eq!(pod.to_string(), "shop/ingress-7f9");
        assert_eq!(uid, U1);
        assert_eq!(parse_log_dir("shop_web"), None);
        assert_eq!(parse_log_dir("shop__uid"), None);
    }

    #[test]
    fn index_attributes_by_netns_and_by_pid() {
        let node = FakeNode::new("index");
        node.pod(
            "shop",
            "web",
            U1,
            &format!("kubepods/pod{U1}/c"),
            &[10, 11],
            4026532291,
        );
        node.pod(
            "kube-system",
            "proxy",
            U2,
            &format!("kubepods/pod{U2}/c"),
            &[20],
            HOST,
        );
        let resolver = node.resolver();
        let index = PodIndex::build(&resolver.scan().unwrap(), resolver.host_netns());
        let web = index.by_netns(4026532291).unwrap();
        assert_eq!((web.namespace.as_str(), web.name.as_str()), ("shop", "web"));
        assert_eq!(index.by_pid(11), Some(web));
        assert_eq!(index.by_netns(HOST), None);
        assert_eq!(index.by_pid(20).unwrap().to_string(), "kube-system/proxy");
        assert_eq!(index.by_pid(30), None);
        assert_eq!(
            index.attribute(HOST, 20).unwrap().to_string(),
            "kube-system/proxy"
        );
        assert_eq!(
            index.attribute(4026532291, 99).unwrap().to_string(),
            "shop/web"
        );
        assert_eq!(
            serde_json::to_string(web).unwrap(),
            r#"{"namespace":"shop","name":"web"}"#
        );
    }

    #[test]
    fn local_addresses_from_proc_net() {
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 10.231.2.2\n        /32 host LOCAL\n     |-- 10.231.2.0\n        /24 link UNICAST\n     |-- 127.0.0.1\n        /32 host LOCAL\nLocal:\n     |-- 10.231.2.2\n        /32 host LOCAL\n";
        assert_eq!(
            parse_fib_trie_locals(trie),
            vec!["10.231.2.2".parse::<IpAddr>().unwrap(); 2]
        );
        let v6 = "00000000000000000000000000000001 01 80 10 80       lo\nfd000000000000000000000000000002 02 40 00 80     eth0\nfe80000000000000020000fffe000001 02 40 20 80     eth0\n";
        assert_eq!(
            parse_if_inet6(v6),
            vec!["fd00::2".parse::<IpAddr>().unwrap()]
        );
        let pod = PodInfo {
            pod: PodName {
                namespace: "shop".into(),
                name: "api".into(),
            },
            uid: U1.into(),
            netns: Some(42),
            host_network: false,
            pids: vec![9],
            ips: vec!["10.231.2.2".parse().unwrap()],
        };
        let index = PodIndex::build(&[pod], Some(HOST));
        assert_eq!(
            index
                .by_ip("10.231.2.2".parse().unwrap())
                .map(|p| p.name.as_str()),
            Some("api")
        );
        assert_eq!(index.by_ip("10.231.2.3".parse().unwrap()), None);
    }

    #[test]
    fn index_never_maps_the_host_netns() {
        let pod = PodInfo {
            pod: PodName {
                namespace: "a".into(),
                name: "b".into(),
            },
            uid: U1.into(),
            netns: Some(HOST),
            host_network: false,
            pids: vec![7],
            ips: vec![],
        };
        let index = PodIndex::build(&[pod], Some(HOST));
        assert_eq!(index.by_netns(HOST), None);
        assert!(index.by_pid(7).is_some());
    }

    #[test]
    fn watch_picks_up_a_pod_that_starts_later() {
        let node = FakeNode::new("later");
        node.pod(
            "shop",
            "api",
            U2,
            &format!("kubepods/pod{U2}/c"),
            &[20],
            4026532292,
        );
        let mut watch = PodWatch::new(node.resolver(), vec![r("shop/web")]);
        let first = watch.poll().unwrap().unwrap();
        assert!(first.netns.is_empty());
        assert_eq!(first.index.by_pid(20).unwrap().to_string(), "shop/api");
        assert_eq!(watch.poll().unwrap(), None);

        node.pod(
            "shop",
            "web",
            U1,
            &format!("kubepods/burstable/pod{U1}/c"),
            &[10],
            4026532291,
        );
        let second = watch.poll().unwrap().unwrap();
        assert_eq!(second.netns, vec![4026532291]);
        assert_eq!(
            second.index.by_netns(4026532291).unwrap().to_string(),
            "shop/web"
        );
    }

    #[test]
    fn watch_follows_a_restart_into_a_new_netns() {
        let node = FakeNode::new("restart");
        let pod = format!("kubepods/burstable/pod{U1}");
        node.pod("shop", "web", U1, &format!("{pod}/c1"), &[10], 4026532291);
        let mut watch = PodWatch::new(node.resolver(), vec![r("shop/web")]);
        assert_eq!(watch.poll().unwrap().unwrap().netns, vec![4026532291]);

        // Sandbox recreated: new containers, new processes, new netns.
        fs::remove_dir_all(node.root.join(CGROUP_FS).join(format!("{pod}/c1"))).unwrap();
        fs::remove_dir_all(node.root.join(PROC).join("10")).unwrap();
        node.pod("shop", "web", U1, &format!("{pod}/c2"), &[40], 4026532399);
        let update = watch.poll().unwrap().unwrap();
        assert_eq!(update.netns, vec![4026532399]);
        assert_eq!(update.index.by_netns(4026532291), None);
        assert_eq!(update.index.by_pid(40).unwrap().to_string(), "shop/web");
        assert_eq!(watch.poll().unwrap(), None);
    }

    #[test]
    fn watch_reports_host_network_pods_by_pid() {
        let node = FakeNode::new("watch-host");
        node.pod(
            "kube-system",
            "proxy",
            U1,
            &format!("kubepods/pod{U1}/c"),
            &[21, 20],
            HOST,
        );
        let mut watch = PodWatch::new(node.resolver(), vec![r("kube-system/proxy")]);
        let update = watch.poll().unwrap().unwrap();
        assert!(update.netns.is_empty());
        assert_eq!(update.host_pids, vec![20, 21]);
    }

    #[test]
    fn watcher_thread_sends_initial_state_and_changes() {
        let node = FakeNode::new("thread");
        let rx = spawn_watcher(
            node.resolver(),
            vec![r("shop/web")],
            Duration::from_millis(10),
        )
        .unwrap();
        let wait = Duration::from_secs(10);
        assert!(rx.recv_timeout(wait).unwrap().netns.is_empty());
        node.pod(
            "shop",
            "web",
            U1,
            &format!("kubepods/pod{U1}/c"),
            &[10],
            4026532291,
        );
        let update = rx.recv_timeout(wait).unwrap();
        assert_eq!(update.netns, vec![4026532291]);
    }

    #[test]
    fn node_root_precedence() {
        let cli = Some(PathBuf::from("/cli"));
        let env = Some(OsString::from("/host"));
        assert_eq!(pick_root(cli.clone(), env.clone()), PathBuf::from("/cli"));
        assert_eq!(pick_root(None, env), PathBuf::from("/host"));
        assert_eq!(pick_root(None, Some(OsString::new())), PathBuf::from("/"));
        assert_eq!(pick_root(None, None), PathBuf::from("/"));
        assert_eq!(PodResolver::from_env_or(cli).root(), Path::new("/cli"));
    }

    #[test]
    fn host_netns_inferred_from_pods_sharing_it() {
        let node = FakeNode::new("infer");
        fs::remove_dir_all(node.root.join(PROC).join("1")).unwrap();
        node.pod(
            "kube-system",
            "proxy",
            U1,
            &format!("kubepods/pod{U1}/c"),
            &[10],
            HOST,
        );
        node.pod(
            "kube-system",
            "cni",
            U2,
            &format!("kubepods/pod{U2}/c"),
            &[20],
            HOST,
        );
        node.pod(
            "shop",
            "web",
            U3,
            &format!("kubepods/pod{U3}/c"),
            &[30],
            4026532291,
        );
        let pods = node.resolver().scan().unwrap();
        let flags: Vec<(String, Option<u64>, bool)> = pods
            .iter()
            .map(|p| (p.pod.to_string(), p.netns, p.host_network))
            .collect();
        assert_eq!(
            flags,
            [
                ("kube-system/cni".to_owned(), None, true),
                ("kube-system/proxy".to_owned(), None, true),
                ("shop/web".to_owned(), Some(4026532291), false),
            ]
        );
        let update = PodWatch::new(node.resolver(), vec![r("kube-system/proxy")])
            .poll()
            .unwrap()
            .unwrap();
        assert!(update.netns.is_empty());
        assert_eq!(update.host_pids, vec![10]);
        assert_eq!(update.index.by_netns(HOST), None);
    }

    #[test]
    fn host_netns_falls_back_to_kthreadd() {
        let node = FakeNode::new("kthreadd");
        fs::remove_dir_all(node.root.join(PROC).join("1")).unwrap();
        assert_eq!(node.resolver().host_netns(), None);
        node.netns(2, HOST + 1);
        assert_eq!(node.resolver().host_netns(), None, "pid 2 is not kthreadd");
        fs::write(node.root.join(PROC).join("2/comm"), "kthreadd\n").unwrap();
        assert_eq!(node.resolver().host_netns(), Some(HOST + 1));
        node.netns(1, HOST);
        assert_eq!(node.resolver().host_netns(), Some(HOST));
    }

    #[test]
    fn real_host_netns_matches_proc_self() {
        let ours = fs::metadata("/proc/self/ns/net").unwrap().ino();
        assert_eq!(PodResolver::new("/").host_netns(), Some(ours));
    }
}
