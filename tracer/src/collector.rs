//! The collector loop: drain the ring buffer on a timer (the kernel does not
//! wake us, `BPF_RB_NO_WAKEUP`, unless the ring is past half full), decode,
//! feed the engine, write reports, keep pod filters current, and report loss.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::Receiver,
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::json;
use tracer_common::*;

use crate::{
    cli::Cli,
    engine::{model::Report, Engine, EngineConfig},
    events::decode,
    loader::{self, Loaded},
    output::{monotonic_ns, Output},
    pods::{self, PodIndex, PodResolver, PodUpdate},
};

/// How often the ring buffer is drained. Bounds the delay from a 5xx to its
/// line together with the engine's grace period.
const DRAIN_EVERY: Duration = Duration::from_millis(10);
/// How often pods are re-scanned.
const POD_RESCAN: Duration = Duration::from_secs(2);

/// Resolved namespace and pod filters.
pub struct Filters {
    /// Inodes from `--netns`.
    netns: Vec<u32>,
    /// `--pod` given.
    pods_wanted: Vec<pods::PodRef>,
    /// Inodes of the wanted pods.
    pod_netns: Vec<u32>,
    /// Pids of wanted host-network pods (filtered in userspace).
    pod_pids: Vec<u32>,
    /// The host's netns, traced only for `pod_pids` when a wanted pod uses it.
    host_netns: Option<u32>,
    resolver: PodResolver,
    index: PodIndex,
}

impl Filters {
    /// Resolves `--netns` paths and `--pod` names; bad input is an error.
    pub fn resolve(cli: &Cli) -> anyhow::Result<Self> {
        let mut netns = Vec::new();
        for p in &cli.netns {
            netns.push(netns_inode(p)?);
        }
        let resolver = PodResolver::from_env_or(cli.node_root.clone());
        let mut pod_netns = Vec::new();
        let mut pod_pids = Vec::new();
        let mut index = PodIndex::build(&[], None);
        if !cli.pods.is_empty() {
            let found = resolver.resolve(&cli.pods)?;
            for p in &found {
                match (p.netns, p.host_network) {
                    (_, true) => {
                        log::warn!(
                            "pod {} uses the host network: filtering by its processes {:?} instead of a network namespace",
                            p.pod, p.pids
                        );
                        pod_pids.extend(&p.pids);
                    }
                    (Some(ns), false) => pod_netns.push(ns as u32),
                    (None, false) => log::warn!(
                        "pod {} has no running processes yet; it is picked up when it starts",
                        p.pod
                    ),
                }
            }
        }
        let host_netns = if pod_pids.is_empty() {
            None
        } else {
            resolver.host_netns().map(|n| n as u32)
        };
        if resolver.root().join("var/log/pods").is_dir() {
            if let Ok(all) = resolver.scan() {
                index = PodIndex::build(&all, resolver.host_netns());
            }
        }
        Ok(Self {
            netns,
            pods_wanted: cli.pods.clone(),
            pod_netns,
            pod_pids,
            host_netns,
            resolver,
            index,
        })
    }

    /// The kernel's namespace filter, or `None` for no filter.
    pub fn kernel_netns(&self) -> Option<Vec<u32>> {
        if self.netns.is_empty() && self.pods_wanted.is_empty() {
            return None;
        }
        let mut v = self.netns.clone();
        v.extend(&self.pod_netns);
        v.extend(self.host_netns);
        Some(v)
    }
}

/// The inode of a network-namespace file, checked to be one.
fn netns_inode(path: &Path) -> anyhow::Result<u32> {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .with_context(|| format!("--netns {}: bad path", path.display()))?;
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut sfs) } != 0 {
        let e = std::io::Error::last_os_error();
        anyhow::bail!("--netns {}: {e}", path.display());
    }
    if sfs.f_type as i64 != NSFS_MAGIC {
        anyhow::bail!(
            "--netns {}: not a network namespace (expected e.g. /run/netns/NAME or /proc/PID/ns/net)",
            path.display()
        );
    }
    loader::netns_inode(path).with_context(|| format!("--netns {}", path.display()))
}

/// Runs until SIGINT/SIGTERM or `--duration`, then flushes and reports.
pub fn run(cli: Cli, filters: Filters, mut loaded: Loaded, mut out: Output) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("install signal handler")?;
    }
    let mut ring = loader::take_ring(&mut loaded.ebpf).context("open the ring buffer")?;
    let waker = Waker::new(&ring)?;

    let mut engine = Engine::new(EngineConfig {
        report_all: cli.all,
        proxy_comms: cli.proxy_comms.clone(),
        pids: cli.pids.clone(),
        host_netns: filters.host_netns,
        host_pids: filters.pod_pids.clone(),
        comms: cli.comms.clone(),
        rst_names: loaded.rst_names.clone(),
        ..Default::default()
    });
    let mut index = filters.index.clone();
    let pod_updates: Option<Receiver<PodUpdate>> = if !filters.pods_wanted.is_empty()
        || filters.resolver.root().join("var/log/pods").is_dir()
    {
        Some(pods::spawn_watcher(
            filters.resolver.clone(),
            filters.pods_wanted.clone(),
            POD_RESCAN,
        )?)
    } else {
        None
    };

    write_start(&mut out, &cli, &filters, &loaded)?;
    out.flush()?;

    let started = Instant::now();
    let deadline = cli.duration.map(|s| started + Duration::from_secs(s));
    let stats_every = Duration::from_secs(cli.stats_interval);
    let mut next_stats = started + stats_every;
    let mut stats = Stats::default();
    loop {
        let stopping =
            stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d);
        while let Some(item) = ring.next() {
            stats.records += 1;
            match decode(&item) {
                Ok(ev) => {
                    log::trace!("{ev:?}");
                    stats.count_kind(&ev);
                    engine.ingest(ev);
                }
                Err(e) => {
                    stats.decode_errors += 1;
                    log::warn!("dropping a malformed kernel record: {e}");
                }
            }
        }
        let reports = if stopping {
            engine.finish()
        } else {
            engine.tick(monotonic_ns())
        };
        for mut r in reports {
            annotate(&mut r, &index);
            out.report(&r)?;
        }
        if let Some(rx) = &pod_updates {
            while let Ok(u) = rx.try_recv() {
                if !filters.pods_wanted.is_empty() {
                    let mut ns: Vec<u32> = filters.netns.clone();
                    ns.extend(u.netns.iter().map(|&n| n as u32));
                    ns.extend(filters.host_netns);
                    loader::set_netns(&mut loaded.ebpf, &ns)?;
                    engine.set_host_pids(&u.host_pids);
                }
                index = u.index;
            }
        }
        if stopping || Instant::now() >= next_stats {
            write_stats(&mut out, &loaded, &engine, &mut stats, stopping)?;
            out.resync_clock();
            next_stats = Instant::now() + stats_every;
        }
        out.flush()?;
        if stopping {
            break;
        }
        waker.wait(DRAIN_EVERY);
    }
    loaded.detach();
    Ok(())
}

/// Sleeps until the next drain: the timer, or earlier when the kernel forces
/// a wake-up because the ring is filling (`BPF_RB_FORCE_WAKEUP`). Edge
/// triggered on purpose: a level-triggered poll of a ring buffer is ready as
/// soon as one record is in it, which would turn the timed drain into a busy
/// loop under load.
struct Waker {
    epoll: std::os::fd::OwnedFd,
}

impl Waker {
    fn new(ring: &impl std::os::fd::AsFd) -> anyhow::Result<Self> {
        use std::os::fd::{AsRawFd as _, FromRawFd as _};
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("epoll_create1");
        }
        // SAFETY: a new descriptor nobody else owns.
        let epoll = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLET) as u32,
            u64: 0,
        };
        // SAFETY: valid descriptors and event.
        let rc = unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                ring.as_fd().as_raw_fd(),
                &mut ev,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("epoll_ctl on the ring buffer");
        }
        Ok(Self { epoll })
    }

    fn wait(&self, timeout: Duration) {
        use std::os::fd::AsRawFd as _;
        let mut ev = [libc::epoll_event { events: 0, u64: 0 }];
        // SAFETY: valid descriptor and buffer. EINTR (a signal) just ends
        // the wait early, like a wake-up.
        unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                ev.as_mut_ptr(),
                1,
                timeout.as_millis() as i32,
            )
        };
    }
}

/// Adds pod names to every local end the index can attribute.
fn annotate(r: &mut Report, index: &PodIndex) {
    match r {
        Report::ConnEnd(c) => {
            c.pod = index.attribute(c.netns as u64, c.pid.unwrap_or(0)).cloned();
        }
        Report::BadGateway(b) => {
            b.proxy.pod = index.attribute(b.netns as u64, b.proxy.pid).cloned();
            if let Some(u) = &mut b.upstream {
                // The backend's own socket when it was traced, else the pod
                // on this node that owns the upstream address.
                u.pod = u
                    .backend_netns
                    .and_then(|n| index.by_netns(n as u64))
                    .or_else(|| {
                        let ip = u.dst.parse::<std::net::SocketAddr>().ok()?.ip();
                        index.by_ip(ip)
                    })
                    .cloned();
            }
        }
    }
}

#[derive(Default)]
struct Stats {
    records: u64,
    decode_errors: u64,
    last_lost: u64,
    /// Records read, by kind: close, observe, reset, error, http_5xx.
    kinds: [u64; 5],
}

impl Stats {
    fn count_kind(&mut self, ev: &crate::events::Event) {
        use crate::events::Event;
        let i = match ev {
            Event::Conn(c) if !c.observe => 0,
            Event::Conn(_) => 1,
            Event::Reset(_) => 2,
            Event::Error(_) => 3,
            Event::Http5xx(_) => 4,
        };
        self.kinds[i] += 1;
    }
}

fn write_start(
    out: &mut Output,
    cli: &Cli,
    filters: &Filters,
    loaded: &Loaded,
) -> anyhow::Result<()> {
    let hooks: Vec<_> = loaded
        .hooks
        .iter()
        .map(|h| json!({"name": h.name, "attached": h.available, "reason": h.reason}))
        .collect();
    let disabled: Vec<_> = loaded
        .disabled
        .iter()
        .map(|(f, r)| json!({"feature": f, "reason": r}))
        .collect();
    let body = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "kernel": crate::kernel_release(),
        "pid": std::process::id(),
        "hooks": hooks,
        "disabled": disabled,
        "filters": {
            "ports": cli.ports,
            "netns": filters.kernel_netns(),
            "pods": filters.pods_wanted.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "pids": cli.pids,
            "comms": cli.comms,
            "all": cli.all,
        },
        "state_hook": loaded.state_hook,
        "hz": loaded.config.hz,
        "max_conns": cli.max_conns,
        "startup_ms": loaded.startup_ms,
    });
    out.event(monotonic_ns(), "start", &body)?;
    Ok(())
}

fn write_stats(
    out: &mut Output,
    loaded: &Loaded,
    engine: &Engine,
    stats: &mut Stats,
    final_: bool,
) -> anyhow::Result<()> {
    let k = loader::counters(&loaded.ebpf);
    let c = |i: u32| k.get(i as usize).copied().unwrap_or(0);
    let lost = c(C_LOST_RINGBUF) + c(C_LOST_MAP_FULL);
    if lost > stats.last_lost {
        log::warn!(
            "lost {} kernel events (ring buffer full: {}, no room for socket state: {})",
            lost - stats.last_lost,
            c(C_LOST_RINGBUF),
            c(C_LOST_MAP_FULL)
        );
        stats.last_lost = lost;
    }
    let e = engine.stats();
    let body = json!({
        "final": final_,
        "seen": {
            "state_changes": c(C_STATE_SEEN),
            "resets": c(C_RESET_SEEN),
            "destroys": c(C_DESTROY_SEEN),
            "errors": c(C_ERROR_SEEN),
            "sends": c(C_SEND_SEEN),
            "status_lines_checked": c(C_SNIFFED),
            "filtered_out": c(C_FILTERED),
        },
        "emitted": {
            "kernel_records": c(C_EMITTED),
            "records_read": stats.records,
            "records_by_kind": {
                "close": stats.kinds[0],
                "observe": stats.kinds[1],
                "reset": stats.kinds[2],
                "error": stats.kinds[3],
                "http_5xx": stats.kinds[4],
            },
            "conn_end": e.conn_end,
            "bad_gateway": e.bad_gateway,
            "http_5xx_seen": e.http_5xx,
            "not_gateway_5xx": e.not_gateway_5xx,
        },
        "lost": {
            "total": lost + stats.decode_errors,
            "ring_buffer_full": c(C_LOST_RINGBUF),
            "socket_map_full": c(C_LOST_MAP_FULL),
            "malformed_records": stats.decode_errors,
            "user_memory_unreadable": c(C_READ_FAILED),
        },
        // Sockets with state in the kernel now: in the table, and how many
        // ever went to the LRU map beside it (their set was full).
        "tracked": {
            "table": c(C_TABLE_IN).saturating_sub(c(C_TABLE_OUT)),
            "overflowed": c(C_OVERFLOW_IN),
        },
        "unmatched_records": e.unmatched,
        "backlog": engine.backlog(),
        "rss_kib": rss_kib(),
    });
    out.event(monotonic_ns(), "stats", &body)?;
    Ok(())
}

/// Resident memory of this process.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
