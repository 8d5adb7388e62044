//! Loading and attaching the eBPF programs, and talking to their maps.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Instant,
};

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};
use tracer_common::{
    port_bit, Config, GLOBAL_CONFIG, MAP_COUNTERS, MAP_EVENTS, MAP_NETNS, MAP_PORTS, MAP_SOCKS,
    MAP_SOCK_KEYS, MAP_SOCK_STATES, N_COUNTERS, SOCK_WAYS,
};

use crate::{
    btf::Btf,
    engine::classify::RstNames,
    layout::{self, HookStatus},
};

/// Where tracefs lives on current kernels.
pub const TRACEFS: &str = "/sys/kernel/tracing";
/// Kernel BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Why loading failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("tracefs is not mounted at {path} and mounting it failed: {source}")]
    MountTracefs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel BTF at {path}: {source} (the kernel needs CONFIG_DEBUG_INFO_BTF)")]
    Btf {
        path: PathBuf,
        #[source]
        source: crate::btf::BtfError,
    },
    #[error("{0}")]
    Layout(#[from] layout::LayoutError),
    #[error("this binary was built without its eBPF object (AYA_BUILD_SKIP was set); rebuild with `cargo xtask build`")]
    NoObject,
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("{what}: {source}")]
    Program {
        what: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// What to load.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub report_all: bool,
    pub ports: Vec<u16>,
    /// Network-namespace inodes to trace; `None`: no namespace filter.
    pub netns: Option<Vec<u32>>,
    pub max_conns: u32,
    pub state_hook: crate::cli::StateHook,
}

/// The loaded programs and what could not be attached.
pub struct Loaded {
    pub ebpf: Ebpf,
    pub hooks: Vec<HookStatus>,
    pub disabled: Vec<(String, String)>,
    pub rst_names: RstNames,
    pub config: Config,
    /// How long start-up (layout, load, verify, attach) took.
    pub startup_ms: u64,
    /// `tp_btf` or `tracepoint`: how `sock:inet_sock_set_state` (and the
    /// other hooks that keep per-socket state) are attached.
    pub state_hook: &'static str,
    /// The attachments, owned here rather than by their programs so that
    /// [`Loaded::detach`] can let go of them all at once.
    links: Vec<Attachment>,
}

/// One attached program (a link, or a perf event for a classic
/// tracepoint): detached when dropped.
type Attachment = Box<dyn Send>;

impl Loaded {
    /// Detaches every program, all at the same time, after the final
    /// `stats` line. Each detach waits for an RCU grace period in the kernel
    /// (`close()` of a link 60–80 ms on an idle machine here, more under
    /// load; a classic tracepoint's perf event also synchronises), and the
    /// kernel still takes them one at a time under its own lock, but
    /// without this process's turn between them: SIGINT to exit 0.35–0.85 s
    /// → 0.22–0.41 s with the classic state hook.
    pub fn detach(&mut self) {
        let started = Instant::now();
        let n = self.links.len();
        std::thread::scope(|s| {
            for link in self.links.drain(..) {
                s.spawn(move || drop(link));
            }
        });
        log::debug!(
            "detached {n} programs in {} ms",
            started.elapsed().as_millis()
        );
    }
}

/// Mounts tracefs when it is missing (fresh machines here do not mount it).
pub fn ensure_tracefs() -> Result<PathBuf, LoadError> {
    let path = PathBuf::from(TRACEFS);
    if path.join("events").is_dir() {
        return Ok(path);
    }
    log::info!("tracefs is not mounted; mounting it at {TRACEFS}");
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL in constant");
    let (src, target, fstype) = (c("tracefs"), c(TRACEFS), c("tracefs"));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(LoadError::MountTracefs {
            path,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(path)
}

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// The hooks that keep per-socket state, as (classic program, BTF program,
/// group, event). The first is required. Both sets run the same code and
/// find a socket's state in the same table slot (tracer-ebpf/src/table.rs);
/// one set or the other is attached, never a mix.
const STATE_HOOKS: &[(&str, &str, &str, &str)] = &[
    (
        "inet_sock_set_state",
        "inet_sock_set_state_btf",
        "sock",
        "inet_sock_set_state",
    ),
    (
        "tcp_send_reset",
        "tcp_send_reset_btf",
        "tcp",
        "tcp_send_reset",
    ),
    (
        "tcp_receive_reset",
        "tcp_receive_reset_btf",
        "tcp",
        "tcp_receive_reset",
    ),
    (
        "tcp_destroy_sock",
        "tcp_destroy_sock_btf",
        "tcp",
        "tcp_destroy_sock",
    ),
];

/// Classic tracepoints that keep no state, attached in either case.
const STATELESS_HOOKS: &[(&str, &str, &str)] =
    &[("inet_sk_error_report", "sock", "inet_sk_error_report")];

/// Loads, configures and attaches everything this kernel supports.
/// Sizes of the kernel's per-socket maps for `--max-conns N`: a table of at
/// least N slots in a power-of-two number of sets, and an LRU map of N/4
/// (at least 1,024) for the sockets whose set is full. With N sockets
/// spread over N slots in sets of four, about 10 % find their set full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockTableSizes {
    pub sets: u32,
    pub overflow: u32,
}

impl SockTableSizes {
    pub fn for_max_conns(max_conns: u32) -> Self {
        Self {
            sets: max_conns.div_ceil(SOCK_WAYS).next_power_of_two(),
            overflow: (max_conns / 4).max(1024),
        }
    }
}

pub fn load(opts: &LoadOptions) -> Result<Loaded, LoadError> {
    let started = Instant::now();
    if OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    let tracefs = ensure_tracefs()?;
    let btf = Btf::from_file(VMLINUX_BTF).map_err(|source| LoadError::Btf {
        path: VMLINUX_BTF.into(),
        source,
    })?;
    let resolved = layout::build_config(&tracefs, &btf)?;
    let mut config = resolved.config;
    let mut hooks = resolved.hooks;
    let mut disabled = resolved.disabled;
    config.report_all = opts.report_all as u32;
    config.filter_ports = !opts.ports.is_empty() as u32;
    config.filter_netns = opts.netns.is_some() as u32;
    config.self_tgid = std::process::id();
    config.hz = match layout::detect_hz() {
        Ok(hz) => hz,
        Err(e) => {
            disabled.push(("exact_idle_ms".into(), format!("{e}; assuming HZ=250")));
            250
        }
    };
    config.sniff_http = !disabled.iter().any(|(f, _)| f == "http_status_sniffing") as u32;
    let sizes = SockTableSizes::for_max_conns(opts.max_conns);
    config.sock_set_mask = sizes.sets - 1;
    config.sock_shift = match btf.struct_size("tcp_sock") {
        Ok(size) if size >= 64 => size.ilog2(),
        _ => config.sock_shift,
    };
    let rst_names = rst_names(&btf);
    log::debug!(
        "load-time config: {config:?}; {} RST reason names",
        rst_names.0.len()
    );

    let aya_btf = aya::Btf::from_sys_fs().ok();
    let mut ebpf = EbpfLoader::new()
        .btf(aya_btf.as_ref())
        .override_global(GLOBAL_CONFIG, &config, true)
        .map_max_entries(MAP_SOCK_KEYS, sizes.sets)
        .map_max_entries(MAP_SOCK_STATES, sizes.sets * SOCK_WAYS)
        .map_max_entries(MAP_SOCKS, sizes.overflow)
        .load(OBJECT)?;
    fill_filters(&mut ebpf, opts)?;
    let available = |event: &str, hooks: &[HookStatus]| {
        hooks
            .iter()
            .find(|h| h.name == event)
            .is_none_or(|h| h.available)
    };

    // The state hook runs ten times per connection: as BTF programs the
    // kernel skips building the classic record, and socket fields are plain
    // loads instead of helper calls. The classic tracepoints are the
    // fallback (older kernels, no BTF). Both sets share the socket map; a
    // set that fails to load is simply not attached.
    use crate::cli::StateHook;
    let state_hook = match opts.state_hook {
        StateHook::Tracepoint => "tracepoint",
        wanted => {
            let loaded = STATE_HOOKS
                .iter()
                .enumerate()
                .filter(|(i, (.., group, event))| {
                    *i == 0 || available(&format!("{group}:{event}"), &hooks)
                })
                .try_for_each(|(_, (_, prog, _, event))| {
                    load_btf(&mut ebpf, prog, event, aya_btf.as_ref())
                });
            match loaded {
                Ok(()) => "tp_btf",
                Err(e) if wanted == StateHook::TpBtf => return Err(e),
                Err(e) => {
                    log::info!("{e}; using the classic tracepoints for state changes");
                    "tracepoint"
                }
            }
        }
    };

    let mut links = Vec::new();
    for (i, (classic, btf_prog, group, event)) in STATE_HOOKS.iter().enumerate() {
        let name = format!("{group}:{event}");
        if i != 0 && !available(&name, &hooks) {
            continue;
        }
        let result = if state_hook == "tp_btf" {
            attach_loaded_btf(&mut ebpf, btf_prog, event)
        } else {
            attach_tracepoint(&mut ebpf, classic, group, event)
        };
        note_attach(&mut hooks, &name, result.map(|l| links.push(l)), i == 0)?;
    }
    for (prog, group, event) in STATELESS_HOOKS {
        let name = format!("{group}:{event}");
        if available(&name, &hooks) {
            let result = attach_tracepoint(&mut ebpf, prog, group, event);
            note_attach(&mut hooks, &name, result.map(|l| links.push(l)), false)?;
        }
    }
    // The only per-send hook: owner attribution of accepted sockets, request
    // counting and the 5xx status line. Optional: without it conn_end works.
    let send = "btf:tcp_sendmsg_locked".to_string();
    let send_prog = "tcp_sendmsg_locked";
    match load_btf(&mut ebpf, send_prog, "tcp_sendmsg_locked", aya_btf.as_ref())
        .and_then(|()| attach_loaded_btf(&mut ebpf, send_prog, "tcp_sendmsg_locked"))
    {
        Ok(link) => {
            links.push(link);
            hooks.push(HookStatus {
                name: send,
                available: true,
                reason: None,
            });
        }
        Err(e) => {
            log::warn!("{e}; 5xx detection is off");
            disabled.push(("http_status_sniffing".into(), e.to_string()));
            hooks.push(HookStatus {
                name: send,
                available: false,
                reason: Some(e.to_string()),
            });
        }
    }
    Ok(Loaded {
        ebpf,
        hooks,
        disabled,
        rst_names,
        config,
        startup_ms: started.elapsed().as_millis() as u64,
        state_hook,
        links,
    })
}

/// Records an attach result in the hook list: a required hook's failure is
/// the caller's error, an optional one's a warning.
fn note_attach(
    hooks: &mut [HookStatus],
    name: &str,
    result: Result<(), LoadError>,
    required: bool,
) -> Result<(), LoadError> {
    match result {
        Ok(()) => Ok(()),
        Err(e) if required => Err(e),
        Err(e) => {
            log::warn!("{e}; continuing without it");
            if let Some(h) = hooks.iter_mut().find(|h| h.name == name) {
                h.available = false;
                h.reason = Some(e.to_string());
            }
            Ok(())
        }
    }
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    prog: &str,
    group: &str,
    event: &str,
) -> Result<Attachment, LoadError> {
    let what = format!("tracepoint {group}:{event}");
    let p: &mut TracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| LoadError::Program {
            what: what.clone(),
            source: aya::programs::ProgramError::UnexpectedProgramType,
        })?
        .try_into()
        .map_err(|source| LoadError::Program {
            what: what.clone(),
            source,
        })?;
    p.load().map_err(|source| LoadError::Program {
        what: what.clone(),
        source,
    })?;
    let err = |source| LoadError::Program {
        what: what.clone(),
        source,
    };
    let id = p.attach(group, event).map_err(err)?;
    Ok(Box::new(p.take_link(id).map_err(err)?))
}

/// Loads (verifies) a BTF tracepoint program for `tracepoint`.
fn load_btf(
    ebpf: &mut Ebpf,
    prog: &str,
    tracepoint: &str,
    btf: Option<&aya::Btf>,
) -> Result<(), LoadError> {
    let what = format!("BTF tracepoint {tracepoint}");
    let err = |source| LoadError::Program {
        what: what.clone(),
        source,
    };
    let btf = btf.ok_or_else(|| err(aya::programs::ProgramError::UnexpectedProgramType))?;
    btf_program(ebpf, prog)
        .map_err(err)?
        .load(tracepoint, btf)
        .map_err(err)
}

/// Attaches a BTF tracepoint program loaded by [`load_btf`].
fn attach_loaded_btf(
    ebpf: &mut Ebpf,
    prog: &str,
    tracepoint: &str,
) -> Result<Attachment, LoadError> {
    let err = |source| LoadError::Program {
        what: format!("BTF tracepoint {tracepoint}"),
        source,
    };
    let p = btf_program(ebpf, prog).map_err(err)?;
    let id = p.attach().map_err(err)?;
    Ok(Box::new(p.take_link(id).map_err(err)?))
}

fn btf_program<'a>(
    ebpf: &'a mut Ebpf,
    prog: &str,
) -> Result<&'a mut BtfTracePoint, aya::programs::ProgramError> {
    ebpf.program_mut(prog)
        .ok_or(aya::programs::ProgramError::UnexpectedProgramType)?
        .try_into()
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> LoadError {
    move |source| LoadError::Map { name, source }
}

fn fill_filters(ebpf: &mut Ebpf, opts: &LoadOptions) -> Result<(), LoadError> {
    let map = ebpf.map_mut(MAP_PORTS).ok_or(LoadError::Map {
        name: MAP_PORTS,
        source: aya::maps::MapError::InvalidName {
            name: MAP_PORTS.into(),
        },
    })?;
    let mut bits: Array<_, u64> = Array::try_from(map).map_err(map_err(MAP_PORTS))?;
    for (word, value) in port_words(&opts.ports) {
        bits.set(word, value, 0).map_err(map_err(MAP_PORTS))?;
    }
    if let Some(ns) = &opts.netns {
        set_netns(ebpf, ns)?;
    }
    Ok(())
}

/// Replaces the set of traced network namespaces (pods come and go).
/// The non-zero words of the `PORTS` bitmap for these ports, by index.
fn port_words(ports: &[u16]) -> BTreeMap<u32, u64> {
    let mut words = BTreeMap::new();
    for &p in ports {
        let (word, bit) = port_bit(p);
        *words.entry(word).or_insert(0) |= bit;
    }
    words
}

pub fn set_netns(ebpf: &mut Ebpf, inodes: &[u32]) -> Result<(), LoadError> {
    let map = ebpf.map_mut(MAP_NETNS).ok_or(LoadError::Map {
        name: MAP_NETNS,
        source: aya::maps::MapError::InvalidName {
            name: MAP_NETNS.into(),
        },
    })?;
    let mut set: BpfHashMap<_, u32, u8> = BpfHashMap::try_from(map).map_err(map_err(MAP_NETNS))?;
    let old: Vec<u32> = set.keys().filter_map(Result::ok).collect();
    for k in old.iter().filter(|k| !inodes.contains(k)) {
        let _ = set.remove(k);
    }
    for k in inodes {
        set.insert(k, 1, 0).map_err(map_err(MAP_NETNS))?;
    }
    Ok(())
}

/// The ring buffer, taken out of the object for the reader.
pub fn take_ring(ebpf: &mut Ebpf) -> Result<RingBuf<MapData>, LoadError> {
    let map = ebpf.take_map(MAP_EVENTS).ok_or(LoadError::Map {
        name: MAP_EVENTS,
        source: aya::maps::MapError::InvalidName {
            name: MAP_EVENTS.into(),
        },
    })?;
    RingBuf::try_from(map).map_err(map_err(MAP_EVENTS))
}

/// Kernel counters summed over CPUs, indexed by `tracer_common::C_*`.
pub fn counters(ebpf: &Ebpf) -> Vec<u64> {
    let Some(map) = ebpf.map(MAP_COUNTERS) else {
        return vec![0; N_COUNTERS as usize];
    };
    let Ok(arr) = PerCpuArray::<_, u64>::try_from(map) else {
        return vec![0; N_COUNTERS as usize];
    };
    (0..N_COUNTERS)
        .map(|i| arr.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0))
        .collect()
}

/// Variant names of `enum sk_rst_reason` (include/net/rstreason.h, 6.10+).
/// Their values differ across kernels, so each is looked up in BTF.
const RST_REASONS: &[&str] = &[
    "NOT_SPECIFIED",
    "NO_SOCKET",
    "TCP_INVALID_ACK_SEQUENCE",
    "TCP_RFC7323_PAWS",
    "TCP_TOO_OLD_ACK",
    "TCP_ACK_UNSENT_DATA",
    "TCP_FLAGS",
    "TCP_OLD_ACK",
    "TCP_ABORT_ON_DATA",
    "TCP_TIMEWAIT_SOCKET",
    "INVALID_SYN",
    "TCP_ABORT_ON_CLOSE",
    "TCP_ABORT_ON_LINGER",
    "TCP_ABORT_ON_MEMORY",
    "TCP_STATE",
    "TCP_KEEPALIVE_TIMEOUT",
    "TCP_DISCONNECT_WITH_DATA",
    "MPTCP_RST_EUNSPEC",
    "MPTCP_RST_EMPTCP",
    "MPTCP_RST_ERESOURCE",
    "MPTCP_RST_EPROHIBIT",
    "MPTCP_RST_EWQ2BIG",
    "MPTCP_RST_EBADPERF",
    "MPTCP_RST_EMIDDLEBOX",
    "ERROR",
];

/// `enum sk_rst_reason` names by value, from this kernel's BTF; empty on
/// kernels without RST reasons.
fn rst_names(btf: &Btf) -> RstNames {
    let names = RST_REASONS
        .iter()
        .filter_map(|n| {
            let v = btf
                .enum_value("sk_rst_reason", &format!("SK_RST_REASON_{n}"))
                .ok()?;
            Some((u32::try_from(v).ok()?, n.to_string()))
        })
        .collect();
    RstNames(names)
}

/// The inode of a network-namespace file (`/run/netns/X`, `/proc/PID/ns/net`).
pub fn netns_inode(path: &Path) -> std::io::Result<u32> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path)?;
    Ok(md.ino() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::PORT_WORDS;

    #[test]
    fn port_filter_bitmap_sets_one_bit_per_port() {
        let words = port_words(&[0, 63, 64, 8080, 8081, 65_535, 8080]);
        assert_eq!(
            words.into_iter().collect::<Vec<_>>(),
            vec![
                (0, 1 | 1 << 63),
                (1, 1),
                (126, 1 << 16 | 1 << 17),
                (PORT_WORDS - 1, 1 << 63),
            ]
        );
        assert!(port_words(&[]).is_empty());
    }

    #[test]
    fn socket_table_holds_at_least_max_conns() {
        for n in [1024, 100_000, 131_072, 262_144, 4_194_304] {
            let s = SockTableSizes::for_max_conns(n);
            assert!(s.sets.is_power_of_two(), "{n}: {s:?}");
            assert!(s.sets * SOCK_WAYS >= n, "{n}: {s:?}");
            assert!(s.sets * SOCK_WAYS < 2 * n, "{n}: {s:?}");
        }
        assert_eq!(
            SockTableSizes::for_max_conns(131_072),
            SockTableSizes {
                sets: 32_768,
                overflow: 32_768
            }
        );
        assert_eq!(SockTableSizes::for_max_conns(1024).overflow, 1024);
    }
}
