//! Kernel layouts the eBPF programs need, found at start-up rather than
//! hard-coded: tracepoint record offsets from tracefs `format` files, struct
//! member offsets from BTF, and the kernel's HZ. [`build_config`] combines them
//! into the load-time [`Config`].
//!
//! Format files are printed by `f_show()` in kernel/trace/trace_events.c:
//! `name:`, `ID:`, `format:`, then one `\tfield:<decl>;\toffset:N;\tsize:N;\tsigned:N;`
//! line per field (the `common_*` header fields of `struct trace_entry`
//! first, then a blank line, then the event's own), then `print fmt:`.
//! Arrays print as `__u8 saddr[4]`, dynamic arrays as `__data_loc char[] name`.
//! Offsets move between kernels (a field widened or inserted, or PREEMPT_RT's
//! extra `trace_entry` fields), which is why they are read here.

#![cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "parts of the API (Field::is_common, ...) are used only by tests so far"
    )
)]

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracer_common::{Config, ABSENT};

use crate::btf::{Btf, BtfError};

/// Errors from reading layouts.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("tracefs not mounted at {path} (try: mount -t tracefs tracefs {path})")]
    TracefsMissing { path: PathBuf },
    #[error("tracepoint {group}:{event} not found in tracefs")]
    MissingTracepoint { group: String, event: String },
    #[error("read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `line` is 1-based; 0 means the text as a whole (e.g. no `ID:` line).
    #[error("format text line {line}: {reason}")]
    Malformed { line: usize, reason: String },
    #[error("{path} line {line}: {reason}")]
    BadFormatFile {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("tracepoint {event} has no field `{field}`")]
    MissingField { event: String, field: String },
    #[error("tracepoint {event} field `{field}` is {size} bytes; the tracer reads {expected:?}")]
    FieldSize {
        event: String,
        field: String,
        size: u32,
        expected: &'static [u32],
    },
    #[error("kernel BTF: {source}")]
    Btf {
        #[source]
        source: BtfError,
    },
    #[error("kernel BTF: `{ty}.{path}` is {size} bytes; the tracer reads {expected}")]
    MemberSize {
        ty: &'static str,
        path: &'static str,
        size: u32,
        expected: u32,
    },
    #[error("kernel BTF: enum value `{name}` = {value} does not fit the tracer's u8 field")]
    EnumRange { name: &'static str, value: i64 },
    #[error("cannot determine the kernel's HZ: {reason}")]
    Hz { reason: String },
}

/// One field of a tracepoint record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    /// C type as printed, with any array suffix moved here: `"const void *"`,
    /// `"__u8[4]"`, `"enum sk_rst_reason"`, `"__data_loc char[]"`.
    pub c_type: String,
    /// Byte offset from the start of the record (including the common header).
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

impl Field {
    /// A `struct trace_entry` header field (`common_type`, `common_pid`, ...).
    pub fn is_common(&self) -> bool {
        self.name.starts_with("common_")
    }
}

/// A parsed tracefs `format` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Format {
    pub name: String,
    pub id: u32,
    /// All fields in file order, `common_*` ones included.
    pub fields: Vec<Field>,
}

impl Format {
    /// The field called `name` (common fields included: their names cannot
    /// clash with an event's own).
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

fn bad(line: usize, reason: impl Into<String>) -> LayoutError {
    LayoutError::Malformed {
        line,
        reason: reason.into(),
    }
}

/// Parses the text of a tracefs `events/<group>/<event>/format` file.
pub fn parse_format(text: &str) -> Result<Format, LayoutError> {
    let mut name = None;
    let mut id = None;
    let mut fields: Vec<Field> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line == "format:" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("name:") {
            name = Some(rest.trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("ID:") {
            let v = rest.trim();
            id = Some(v.parse().map_err(|_| bad(n, format!("bad ID `{v}`")))?);
        } else if line.starts_with("field:") {
            let field = parse_field(line).map_err(|reason| bad(n, reason))?;
            if fields.iter().any(|f| f.name == field.name) {
                return Err(bad(n, format!("duplicate field `{}`", field.name)));
            }
            fields.push(field);
        } else if line.starts_with("print fmt:") {
            // The last section; its text is free-form.
            break;
        } else {
            return Err(bad(
                n,
                format!(
                    "unexpected line `{}`",
                    line.chars().take(60).collect::<String>()
                ),
            ));
        }
    }
    let name = name
        .filter(|s| !s.is_empty())
        .ok_or_else(|| bad(0, "no `name:` line"))?;
    let id = id.ok_or_else(|| bad(0, "no `ID:` line"))?;
    if fields.is_empty() {
        return Err(bad(0, "no fields"));
    }
    Ok(Format { name, id, fields })
}

/// `field:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;`
fn parse_field(line: &str) -> Result<Field, String> {
    let (mut decl, mut offset, mut size, mut signed) = (None, None, None, None);
    for part in line.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part
            .split_once(':')
            .ok_or_else(|| format!("`{part}` is not key:value"))?;
        let number = || {
            value
                .trim()
                .parse::<u32>()
                .map_err(|_| format!("bad {key} `{value}`"))
        };
        match key.trim() {
            "field" => decl = Some(value.trim()),
            "offset" => offset = Some(number()?),
            "size" => size = Some(number()?),
            "signed" => {
                signed = Some(match value.trim() {
                    "0" => false,
                    "1" => true,
                    other => return Err(format!("bad signed `{other}`")),
                })
            }
            // Keys a future kernel might add.
            _ => {}
        }
    }
    let decl = decl.ok_or("no field declaration")?;
    let offset = offset.ok_or("no offset")?;
    let size = size.ok_or("no size")?;
    if offset.checked_add(size).is_none() {
        return Err(format!("offset {offset} + size {size} overflows"));
    }
    // The array suffix follows the name: `__u8 saddr[4]` -> `__u8[4]`, saddr.
    let (base, suffix) = match decl.strip_suffix(']') {
        Some(_) => {
            let at = decl.rfind('[').ok_or("unbalanced `]`")?;
            decl.split_at(at)
        }
        None => (decl, ""),
    };
    let base = base.trim_end();
    let name_start = base
        .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .map_or(0, |i| i + 1);
    let (c_type, name) = base.split_at(name_start);
    let c_type = c_type.trim();
    if name.is_empty() || c_type.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("cannot split `{decl}` into type and name"));
    }
    Ok(Field {
        name: name.to_owned(),
        c_type: format!("{c_type}{suffix}"),
        offset,
        size,
        // Very old kernels (before 2.6.31) printed no `signed:`.
        signed: signed.unwrap_or(false),
    })
}

/// Reads and parses `<tracefs>/events/<group>/<event>/format`.
pub fn read_format(tracefs: &Path, group: &str, event: &str) -> Result<Format, LayoutError> {
    let path = tracefs
        .join("events")
        .join(group)
        .join(event)
        .join("format");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(LayoutError::MissingTracepoint {
                group: group.to_owned(),
                event: event.to_owned(),
            })
        }
        Err(source) => return Err(LayoutError::Io { path, source }),
    };
    parse_format(&text).map_err(|e| match e {
        LayoutError::Malformed { line, reason } => {
            LayoutError::BadFormatFile { path, line, reason }
        }
        other => other,
    })
}

// ---------------------------------------------------------------------------
// HZ

/// The HZ values Kconfig offers (kernel/Kconfig.hz).
const HZ_CHOICES: [u32; 4] = [100, 250, 300, 1000];

/// `CONFIG_HZ=N` from the text of a kernel config.
pub fn parse_kconfig_hz(config: &str) -> Option<u32> {
    config
        .lines()
        .find_map(|l| l.trim().strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
        .filter(|hz| *hz > 0)
}

/// The global `jiffies: N` line of `/proc/timer_list` (not `.last_jiffies`),
/// printed by `timer_list_show_tickdevices_header()` in kernel/time/timer_list.c.
pub fn parse_timer_list_jiffies(timer_list: &str) -> Option<u64> {
    timer_list
        .lines()
        .find_map(|l| l.trim().strip_prefix("jiffies:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The Kconfig HZ nearest to `jiffies` ticks in `elapsed`, if within 15 %.
pub fn hz_from_rate(jiffies: u64, elapsed: Duration) -> Option<u32> {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return None;
    }
    let rate = jiffies as f64 / secs;
    let nearest = HZ_CHOICES.into_iter().min_by(|a, b| {
        (f64::from(*a) - rate)
            .abs()
            .total_cmp(&(f64::from(*b) - rate).abs())
    })?;
    ((f64::from(nearest) - rate).abs() <= f64::from(nearest) * 0.15).then_some(nearest)
}

fn hz_from_config_gz(path: &Path) -> Result<u32, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    parse_kconfig_hz(&text).ok_or_else(|| format!("{}: no CONFIG_HZ", path.display()))
}

fn hz_from_boot_config() -> Result<u32, String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_err(|e| format!("/proc/sys/kernel/osrelease: {e}"))?;
    let path = PathBuf::from(format!("/boot/config-{}", release.trim()));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_kconfig_hz(&text).ok_or_else(|| format!("{}: no CONFIG_HZ", path.display()))
}

fn hz_from_timer_list() -> Result<u32, String> {
    const PATH: &str = "/proc/timer_list";
    let sample = || -> Result<(u64, Instant), String> {
        let text = std::fs::read_to_string(PATH).map_err(|e| format!("{PATH}: {e}"))?;
        let at = Instant::now();
        let jiffies =
            parse_timer_list_jiffies(&text).ok_or_else(|| format!("{PATH}: no `jiffies:` line"))?;
        Ok((jiffies, at))
    };
    let (j0, t0) = sample()?;
    std::thread::sleep(Duration::from_millis(200));
    let (j1, t1) = sample()?;
    let delta = j1.wrapping_sub(j0);
    hz_from_rate(delta, t1 - t0).ok_or_else(|| {
        format!(
            "{delta} jiffies in {:?} is not near any of {HZ_CHOICES:?}",
            t1 - t0
        )
    })
}

/// The kernel's `CONFIG_HZ`, needed to turn jiffies (`lsndtime`, `lrcvtime`)
/// into time: from `/proc/config.gz`, else `/boot/config-$(uname -r)`, else
/// measured from `/proc/timer_list` over 200 ms.
pub fn detect_hz() -> Result<u32, LayoutError> {
    let mut tried = Vec::new();
    for attempt in [
        (|| hz_from_config_gz(Path::new("/proc/config.gz"))) as fn() -> Result<u32, String>,
        hz_from_boot_config,
        hz_from_timer_list,
    ] {
        match attempt() {
            Ok(hz) => return Ok(hz),
            Err(e) => tried.push(e),
        }
    }
    Err(LayoutError::Hz {
        reason: tried.join("; "),
    })
}

// ---------------------------------------------------------------------------
// Config

/// Whether one hook can be attached on this kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookStatus {
    /// `group:event`, e.g. `"sock:inet_sock_set_state"`.
    pub name: String,
    pub available: bool,
    /// Why not, when not available.
    pub reason: Option<String>,
}

/// The load-time configuration and what this kernel cannot do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub config: Config,
    pub hooks: Vec<HookStatus>,
    /// (feature, reason) for each feature turned off by a missing layout.
    pub disabled: Vec<(String, String)>,
}

/// Where in [`Config`] a value goes.
type Slot = fn(&mut Config) -> &mut u32;

/// Values resolved for a group of slots.
type Filled = Vec<(Slot, u32)>;

/// A tracepoint field the eBPF programs read, and the sizes they can read it at.
struct Want {
    field: &'static str,
    sizes: &'static [u32],
    /// The hook is unusable without it.
    required: bool,
    slot: Slot,
    /// Also record the field's size here (`protocol` is 1 or 2 bytes).
    size_slot: Option<Slot>,
    /// A field of another size is an older layout of the same name: leave it
    /// absent rather than disable the hook.
    other_size_is_absent: bool,
}

const PTR: &[u32] = &[8];
const INT: &[u32] = &[4];
const U16: &[u32] = &[2];
const PROTO: &[u32] = &[1, 2];
const V4: &[u32] = &[4];
const V6: &[u32] = &[16];
/// `__u8 saddr[sizeof(struct sockaddr_in6)]`.
const SOCKADDR: &[u32] = &[28];

const fn need(field: &'static str, sizes: &'static [u32], slot: Slot) -> Want {
    Want {
        field,
        sizes,
        required: true,
        slot,
        size_slot: None,
        other_size_is_absent: false,
    }
}

const fn maybe(field: &'static str, sizes: &'static [u32], slot: Slot) -> Want {
    Want {
        field,
        sizes,
        required: false,
        slot,
        size_slot: None,
        other_size_is_absent: false,
    }
}

const fn sized(field: &'static str, sizes: &'static [u32], slot: Slot, size_slot: Slot) -> Want {
    Want {
        field,
        sizes,
        required: true,
        slot,
        size_slot: Some(size_slot),
        other_size_is_absent: false,
    }
}

/// Optional, and only at these sizes: before 6.10 `tcp_send_reset` had
/// 4-byte `saddr`/`daddr` (IPv4 addresses), not sockaddr buffers.
const fn only_sized(field: &'static str, sizes: &'static [u32], slot: Slot) -> Want {
    Want {
        field,
        sizes,
        required: false,
        slot,
        size_slot: None,
        other_size_is_absent: true,
    }
}

struct Hook {
    group: &'static str,
    event: &'static str,
    /// The tracer cannot run without this hook.
    required: bool,
    wants: &'static [Want],
}

/// include/trace/events/sock.h, TRACE_EVENT(inet_sock_set_state), since v4.16.
/// `protocol` was `__u8` until v5.6 widened it to `__u16` (IPPROTO_MPTCP = 262),
/// shifting every later field by one byte.
const SET_STATE: &[Want] = &[
    need("skaddr", PTR, |c| &mut c.ss_skaddr),
    need("oldstate", INT, |c| &mut c.ss_oldstate),
    need("newstate", INT, |c| &mut c.ss_newstate),
    need("sport", U16, |c| &mut c.ss_sport),
    need("dport", U16, |c| &mut c.ss_dport),
    need("family", U16, |c| &mut c.ss_family),
    sized(
        "protocol",
        PROTO,
        |c| &mut c.ss_protocol,
        |c| &mut c.ss_protocol_size,
    ),
    need("saddr", V4, |c| &mut c.ss_saddr),
    need("daddr", V4, |c| &mut c.ss_daddr),
    need("saddr_v6", V6, |c| &mut c.ss_saddr_v6),
    need("daddr_v6", V6, |c| &mut c.ss_daddr_v6),
];

/// include/trace/events/tcp.h: `tcp_send_reset` was a `tcp_event_sk_skb`
/// (skbaddr, skaddr, sport, ...) from v4.15; v5.0 added `family` and `state`;
/// v6.10 made it its own TRACE_EVENT with `enum sk_rst_reason reason` and
/// sockaddr-sized `saddr`/`daddr`.
const SEND_RESET: &[Want] = &[
    need("skaddr", PTR, |c| &mut c.sr_skaddr),
    maybe("state", INT, |c| &mut c.sr_state),
    maybe("reason", INT, |c| &mut c.sr_reason),
    only_sized("saddr", SOCKADDR, |c| &mut c.sr_saddr),
    only_sized("daddr", SOCKADDR, |c| &mut c.sr_daddr),
];

/// include/trace/events/tcp.h, `tcp_event_sk` class, since v4.15.
const RECEIVE_RESET: &[Want] = &[need("skaddr", PTR, |c| &mut c.rr_skaddr)];
const DESTROY_SOCK: &[Want] = &[need("skaddr", PTR, |c| &mut c.ds_skaddr)];

/// include/trace/events/sock.h, TRACE_EVENT(inet_sk_error_report), since
/// v5.13. It carries no socket address: the tuple is how a record is matched,
/// so all of it is required.
const ERROR_REPORT: &[Want] = &[
    need("error", INT, |c| &mut c.er_error),
    need("sport", U16, |c| &mut c.er_sport),
    need("dport", U16, |c| &mut c.er_dport),
    need("family", U16, |c| &mut c.er_family),
    sized(
        "protocol",
        PROTO,
        |c| &mut c.er_protocol,
        |c| &mut c.er_protocol_size,
    ),
    need("saddr", V4, |c| &mut c.er_saddr),
    need("daddr", V4, |c| &mut c.er_daddr),
    need("saddr_v6", V6, |c| &mut c.er_saddr_v6),
    need("daddr_v6", V6, |c| &mut c.er_daddr_v6),
];

const HOOKS: &[Hook] = &[
    Hook {
        group: "sock",
        event: "inet_sock_set_state",
        required: true,
        wants: SET_STATE,
    },
    Hook {
        group: "tcp",
        event: "tcp_send_reset",
        required: false,
        wants: SEND_RESET,
    },
    Hook {
        group: "tcp",
        event: "tcp_receive_reset",
        required: false,
        wants: RECEIVE_RESET,
    },
    Hook {
        group: "tcp",
        event: "tcp_destroy_sock",
        required: false,
        wants: DESTROY_SOCK,
    },
    Hook {
        group: "sock",
        event: "inet_sk_error_report",
        required: false,
        wants: ERROR_REPORT,
    },
];

/// Checks every field first, then fills: a hook is either fully described in
/// `config` or not at all.
fn apply_hook(config: &mut Config, hook: &Hook, format: &Format) -> Result<(), LayoutError> {
    let event = format!("{}:{}", hook.group, hook.event);
    let mut found = Vec::with_capacity(hook.wants.len());
    for want in hook.wants {
        match format.field(want.field) {
            None if want.required => {
                return Err(LayoutError::MissingField {
                    event,
                    field: want.field.to_owned(),
                })
            }
            None => {}
            Some(f) if !want.sizes.contains(&f.size) && want.other_size_is_absent => {}
            Some(f) if !want.sizes.contains(&f.size) => {
                return Err(LayoutError::FieldSize {
                    event,
                    field: want.field.to_owned(),
                    size: f.size,
                    expected: want.sizes,
                })
            }
            Some(f) => found.push((want, f)),
        }
    }
    for (want, field) in found {
        *(want.slot)(config) = field.offset;
        if let Some(size_slot) = want.size_slot {
            *size_slot(config) = field.size;
        }
    }
    Ok(())
}

/// A struct member the eBPF programs read through a kernel pointer.
struct Member {
    ty: &'static str,
    path: &'static str,
    /// Size the eBPF programs read it at; `None`: not read, only an offset.
    size: Option<u32>,
    slot: Slot,
}

const fn member(ty: &'static str, path: &'static str, size: Option<u32>, slot: Slot) -> Member {
    Member {
        ty,
        path,
        size,
        slot,
    }
}

/// Members the tracer cannot run without. `tcp_sock` and
/// `inet_connection_sock` offsets are also offsets from the `struct sock`
/// pointer: `tcp_sock` begins with `inet_conn`, which begins with `icsk_inet`,
/// which begins with `sk` (include/linux/tcp.h, include/net/inet_connection_sock.h,
/// include/net/inet_sock.h; tcp_sk() and inet_csk() are casts).
const REQUIRED_MEMBERS: &[Member] = &[
    // include/net/sock.h `struct sock_common`: skc_net is a possible_net_t,
    // a typedef'd struct around `struct net *net` (include/net/net_namespace.h).
    member("sock", "__sk_common.skc_net.net", Some(8), |c| {
        &mut c.sk_net
    }),
    // include/net/net_namespace.h `struct net { ... struct ns_common ns; }`,
    // include/linux/ns_common.h `unsigned int inum` (the /proc/PID/ns/net inode).
    member("net", "ns.inum", Some(4), |c| &mut c.net_inum),
    // include/net/sock.h `int sk_err`.
    member("sock", "sk_err", Some(4), |c| &mut c.sk_err),
    // include/net/sock.h `struct sock_common`: skc_daddr/skc_rcv_saddr in the
    // skc_addrpair union, skc_dport/skc_num in the skc_portpair union.
    member("sock", "__sk_common.skc_state", Some(1), |c| {
        &mut c.sk_state
    }),
    member("sock", "__sk_common.skc_daddr", Some(4), |c| {
        &mut c.sk_daddr
    }),
    member("sock", "__sk_common.skc_rcv_saddr", Some(4), |c| {
        &mut c.sk_rcv_saddr
    }),
    member("sock", "__sk_common.skc_dport", Some(2), |c| {
        &mut c.sk_dport
    }),
    member("sock", "__sk_common.skc_num", Some(2), |c| &mut c.sk_num),
    // include/net/inet_sock.h `__be16 inet_sport`: still set after close,
    // when inet_put_port() has zeroed skc_num (net/ipv4/inet_hashtables.c).
    member("inet_sock", "inet_sport", Some(2), |c| &mut c.sk_inet_sport),
    member("sock", "__sk_common.skc_family", Some(2), |c| {
        &mut c.sk_family
    }),
    // include/linux/tcp.h `struct tcp_sock` (bytes_received/bytes_acked since v4.1).
    member("tcp_sock", "bytes_received", Some(8), |c| {
        &mut c.tp_bytes_received
    }),
    member("tcp_sock", "bytes_acked", Some(8), |c| {
        &mut c.tp_bytes_acked
    }),
    member("tcp_sock", "lsndtime", Some(4), |c| &mut c.tp_lsndtime),
    member("tcp_sock", "rcv_nxt", Some(4), |c| &mut c.tp_rcv_nxt),
    member("tcp_sock", "copied_seq", Some(4), |c| &mut c.tp_copied_seq),
    member("tcp_sock", "write_seq", Some(4), |c| &mut c.tp_write_seq),
    member("tcp_sock", "snd_una", Some(4), |c| &mut c.tp_snd_una),
    // include/net/inet_connection_sock.h `struct { ... u32 lrcvtime; } icsk_ack`.
    member("inet_connection_sock", "icsk_ack.lrcvtime", Some(4), |c| {
        &mut c.icsk_lrcvtime
    }),
];

/// include/net/sock.h: skc_v6_daddr/skc_v6_rcv_saddr exist only with CONFIG_IPV6.
const IPV6_MEMBERS: &[Member] = &[
    member("sock", "__sk_common.skc_v6_daddr", Some(16), |c| {
        &mut c.sk_v6_daddr
    }),
    member("sock", "__sk_common.skc_v6_rcv_saddr", Some(16), |c| {
        &mut c.sk_v6_rcv_saddr
    }),
];

/// include/net/sock.h `u16 sk_protocol` (since 5.6; a bitfield before): the
/// raw `inet_sock_set_state` tracepoint checks it, having no `protocol`.
const PROTOCOL_MEMBERS: &[Member] = &[member("sock", "sk_protocol", Some(2), |c| {
    &mut c.sk_protocol
})];

/// include/linux/sched.h `struct task_struct { ... unsigned int flags; }` (PF_EXITING).
const TASK_MEMBERS: &[Member] = &[member("task_struct", "flags", Some(4), |c| {
    &mut c.task_flags
})];

/// include/linux/socket.h `struct msghdr { ... struct iov_iter msg_iter; }`;
/// include/linux/uio.h `struct iov_iter`: `u8 iter_type` since v5.14, ITER_UBUF
/// and `ubuf` since v6.0, `ubuf` and `__iov` in one anonymous union since v6.4.
const SNIFF_MEMBERS: &[Member] = &[
    member("msghdr", "msg_iter", None, |c| &mut c.msg_iter),
    member("iov_iter", "iter_type", Some(1), |c| &mut c.iter_type),
    member("iov_iter", "iov_offset", Some(8), |c| {
        &mut c.iter_iov_offset
    }),
    member("iov_iter", "ubuf", Some(8), |c| &mut c.iter_ptr),
];

/// include/linux/uio.h `enum iter_type`.
const SNIFF_ENUMS: &[(&str, Slot)] = &[
    ("ITER_UBUF", |c| &mut c.iter_ubuf_value),
    ("ITER_IOVEC", |c| &mut c.iter_iovec_value),
];

/// Resolves a group of members all-or-nothing.
fn resolve_members(btf: &Btf, members: &[Member]) -> Result<Filled, LayoutError> {
    members
        .iter()
        .map(|m| {
            let found = btf
                .member(m.ty, m.path)
                .map_err(|source| LayoutError::Btf { source })?;
            match m.size {
                Some(expected) if expected != found.size => Err(LayoutError::MemberSize {
                    ty: m.ty,
                    path: m.path,
                    size: found.size,
                    expected,
                }),
                _ => Ok((m.slot, found.offset)),
            }
        })
        .collect()
}

fn resolve_sniffing(btf: &Btf) -> Result<Filled, LayoutError> {
    let mut values = resolve_members(btf, SNIFF_MEMBERS)?;
    for (name, slot) in SNIFF_ENUMS {
        let value = btf
            .enum_value("iter_type", name)
            .map_err(|source| LayoutError::Btf { source })?;
        // Compared with the u8 `iter_type`.
        let byte = u8::try_from(value).map_err(|_| LayoutError::EnumRange { name, value })?;
        values.push((*slot, u32::from(byte)));
    }
    Ok(values)
}

/// Builds the load-time [`Config`] for this kernel: tracepoint offsets from
/// `tracefs` (e.g. `/sys/kernel/tracing`) and struct offsets from `btf`.
/// Switches and `hz` keep their [`Config::empty`] values.
///
/// Errors when something the tracer cannot run without is missing:
/// `sock:inet_sock_set_state`, or the socket/`tcp_sock` members. Anything
/// else missing is reported in [`Resolved::hooks`] / [`Resolved::disabled`]
/// and its offsets stay [`ABSENT`].
pub fn build_config(tracefs: &Path, btf: &Btf) -> Result<Resolved, LayoutError> {
    if !tracefs.join("events").is_dir() {
        return Err(LayoutError::TracefsMissing {
            path: tracefs.to_owned(),
        });
    }
    let mut config = Config::empty();
    let mut hooks = Vec::new();
    let mut disabled = Vec::new();

    for hook in HOOKS {
        let result = read_format(tracefs, hook.group, hook.event)
            .and_then(|f| apply_hook(&mut config, hook, &f));
        let name = format!("{}:{}", hook.group, hook.event);
        match result {
            Ok(()) => hooks.push(HookStatus {
                name,
                available: true,
                reason: None,
            }),
            Err(e) if hook.required => return Err(e),
            Err(e) => hooks.push(HookStatus {
                name,
                available: false,
                reason: Some(e.to_string()),
            }),
        }
    }
    if hooks
        .iter()
        .any(|h| h.name == "tcp:tcp_send_reset" && h.available)
        && config.sr_reason == ABSENT
    {
        disabled.push((
            "rst_reason".to_owned(),
            "tcp:tcp_send_reset has no `reason` field (added in Linux 6.10)".to_owned(),
        ));
    }

    for (slot, offset) in resolve_members(btf, REQUIRED_MEMBERS)? {
        *slot(&mut config) = offset;
    }
    let optional: [(&str, Result<Filled, LayoutError>); 4] = [
        ("ipv6_socket_addresses", resolve_members(btf, IPV6_MEMBERS)),
        (
            "raw_state_tracepoint",
            resolve_members(btf, PROTOCOL_MEMBERS),
        ),
        ("process_exit_detection", resolve_members(btf, TASK_MEMBERS)),
        ("http_status_sniffing", resolve_sniffing(btf)),
    ];
    for (feature, result) in optional {
        match result {
            Ok(values) => {
                for (slot, value) in values {
                    *slot(&mut config) = value;
                }
            }
            Err(e) => disabled.push((feature.to_owned(), e.to_string())),
        }
    }
    Ok(Resolved {
        config,
        hooks,
        disabled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btf::builder::BtfBuilder;

    const V618_SET_STATE: &str =
        include_str!("../testdata/tracefs/linux-6.18/events/sock/inet_sock_set_state/format");
    const V618_SEND_RESET: &str =
        include_str!("../testdata/tracefs/linux-6.18/events/tcp/tcp_send_reset/format");
    const V419_SET_STATE: &str =
        include_str!("../testdata/tracefs/linux-4.19/events/sock/inet_sock_set_state/format");
    const V419_SEND_RESET: &str =
        include_str!("../testdata/tracefs/linux-4.19/events/tcp/tcp_send_reset/format");
    const RT_SET_STATE: &str =
        include_str!("../testdata/tracefs/linux-5.15-rt/events/sock/inet_sock_set_state/format");
    const RT_ERROR_REPORT: &str =
        include_str!("../testdata/tracefs/linux-5.15-rt/events/sock/inet_sk_error_report/format");

    fn tracefs(kernel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata/tracefs")
            .join(kernel)
    }

    fn at(format: &Format, name: &str) -> (u32, u32) {
        let f = format
            .field(name)
            .unwrap_or_else(|| panic!("no field {name}"));
        (f.offset, f.size)
    }

    #[test]
    fn parses_6_18_set_state() {
        let f = parse_format(V618_SET_STATE).unwrap();
        assert_eq!(f.name, "inet_sock_set_state");
        assert_eq!(f.id, 2287);
        assert_eq!(f.fields.len(), 4 + 11);
        assert_eq!(f.fields.iter().filter(|f| f.is_common()).count(), 4);
        let pid = f.field("common_pid").unwrap();
        assert_eq!(
            (pid.offset, pid.size, pid.signed, pid.c_type.as_str()),
            (4, 4, true, "int")
        );
        let skaddr = f.field("skaddr").unwrap();
        assert_eq!(
            (skaddr.offset, skaddr.size, skaddr.c_type.as_str()),
            (8, 8, "const void *")
        );
        assert_eq!(at(&f, "oldstate"), (16, 4));
        assert_eq!(at(&f, "newstate"), (20, 4));
        assert_eq!(at(&f, "sport"), (24, 2));
        assert_eq!(at(&f, "dport"), (26, 2));
        assert_eq!(at(&f, "family"), (28, 2));
        assert_eq!(at(&f, "protocol"), (30, 2));
        let saddr = f.field("saddr").unwrap();
        assert_eq!(
            (saddr.offset, saddr.size, saddr.c_type.as_str()),
            (32, 4, "__u8[4]")
        );
        assert_eq!(at(&f, "daddr"), (36, 4));
        assert_eq!(at(&f, "saddr_v6"), (40, 16));
        assert_eq!(f.field("daddr_v6").unwrap().c_type, "__u8[16]");
        assert_eq!(at(&f, "daddr_v6"), (56, 16));
    }

    #[test]
    fn parses_6_18_send_reset_with_reason() {
        let f = parse_format(V618_SEND_RESET).unwrap();
        assert_eq!(at(&f, "skbaddr"), (8, 8));
        assert_eq!(at(&f, "skaddr"), (16, 8));
        assert_eq!(at(&f, "state"), (24, 4));
        let reason = f.field("reason").unwrap();
        assert_eq!(
            (
                reason.offset,
                reason.size,
                reason.signed,
                reason.c_type.as_str()
            ),
            (28, 4, false, "enum sk_rst_reason")
        );
        assert_eq!(f.field("saddr").unwrap().c_type, "__u8[28]");
        assert!(f.field("sport").is_none());
    }

    #[test]
    fn parses_4_19_one_byte_protocol() {
        let f = parse_format(V419_SET_STATE).unwrap();
        assert_eq!(at(&f, "protocol"), (30, 1));
        // Everything after the one-byte protocol is unaligned, one byte earlier.
        assert_eq!(at(&f, "saddr"), (31, 4));
        assert_eq!(at(&f, "daddr"), (35, 4));
        assert_eq!(at(&f, "saddr_v6"), (39, 16));
        assert_eq!(at(&f, "daddr_v6"), (55, 16));
        let r = parse_format(V419_SEND_RESET).unwrap();
        assert_eq!(at(&r, "skaddr"), (16, 8));
        assert!(r.field("state").is_none());
        assert!(r.field("reason").is_none());
        assert!(r.field("family").is_none());
        assert_eq!(at(&r, "saddr"), (28, 4));
        assert_eq!(at(&r, "saddr_v6"), (36, 16));
    }

    #[test]
    fn parses_rt_common_fields() {
        let f = parse_format(RT_SET_STATE).unwrap();
        assert_eq!(f.fields.iter().filter(|f| f.is_common()).count(), 6);
        assert_eq!(at(&f, "common_migrate_disable"), (8, 1));
        assert_eq!(at(&f, "common_preempt_lazy_count"), (9, 1));
        assert_eq!(at(&f, "skaddr"), (16, 8));
        assert_eq!(at(&f, "protocol"), (38, 2));
        let e = parse_format(RT_ERROR_REPORT).unwrap();
        // A 4-byte-aligned first field moves by 4, not 8.
        assert_eq!(at(&e, "error"), (12, 4));
        assert_eq!(at(&e, "daddr_v6"), (48, 16));
    }

    #[test]
    fn parses_data_loc_and_pointer_types() {
        let text = "name: sched_process_exec\nID: 317\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\n\
            \tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n\
            \tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;\n\
            \tfield:struct sk_buff *skb;\toffset:16;\tsize:8;\tsigned:0;\n\
            \tfield:char comm[16];\toffset:24;\tsize:16;\tsigned:0;\n\n\
            print fmt: \"filename=%s\", __get_str(filename)\n";
        let f = parse_format(text).unwrap();
        let name = f.field("filename").unwrap();
        assert_eq!(
            (name.c_type.as_str(), name.offset, name.size),
            ("__data_loc char[]", 8, 4)
        );
        assert_eq!(f.field("skb").unwrap().c_type, "struct sk_buff *");
        assert_eq!(f.field("comm").unwrap().c_type, "char[16]");
        assert!(f.field("pid").unwrap().signed);
    }

    #[test]
    fn malformed_formats_are_errors() {
        let head = "name: x\nID: 1\nformat:\n";
        let cases = [
            String::new(),
            "garbage\n".to_owned(),
            head.to_owned(),
            "ID: 1\n\tfield:int a;\toffset:0;\tsize:4;\tsigned:1;\n".to_owned(),
            "name: x\n\tfield:int a;\toffset:0;\tsize:4;\tsigned:1;\n".to_owned(),
            "name: x\nID: one\n\tfield:int a;\toffset:0;\tsize:4;\tsigned:1;\n".to_owned(),
            format!("{head}\tfield:int a;\tsize:4;\tsigned:1;\n"),
            format!("{head}\tfield:int a;\toffset:0;\tsigned:1;\n"),
            format!("{head}\tfield:int a;\toffset:-1;\tsize:4;\tsigned:1;\n"),
            format!("{head}\tfield:int a;\toffset:0;\tsize:4x;\tsigned:1;\n"),
            format!("{head}\tfield:int a;\toffset:0;\tsize:4;\tsigned:2;\n"),
            format!("{head}\tfield:int a;\toffset:4294967295;\tsize:4;\tsigned:1;\n"),
            format!("{head}\tfield:a;\toffset:0;\tsize:4;\tsigned:1;\n"),
            format!("{head}\tfield:;\toffset:0;\tsize:4;\tsigned:1;\n"),
            format!("{head}\tfield:int a];\toffset:0;\tsize:4;\tsigned:1;\n"),
            format!("{head}\tfield:int [4];\toffset:0;\tsize:4;\tsigned:1;\n"),
            format!("{head}\tfield:int a;\toffset:0;\tsize:4;\tsigned:1;\n\tfield:int a;\toffset:4;\tsize:4;\tsigned:1;\n"),
            format!("{head}\tfield:int a\toffset:0\n"),
            format!("{head}\tfield:int a;\toffset:0;\tsize:4;\tsigned:1;\nsurprise\n"),
        ];
        for text in &cases {
            assert!(
                matches!(parse_format(text), Err(LayoutError::Malformed { .. })),
                "accepted: {text:?}"
            );
        }
        // No prefix of a real file may panic; the ones that cut a field line
        // short must fail.
        for end in 0..V618_SET_STATE.len() {
            if V618_SET_STATE.is_char_boundary(end) {
                let _ = parse_format(&V618_SET_STATE[..end]);
            }
        }
        assert!(parse_format(&V618_SET_STATE[..V618_SET_STATE.find("size:2").unwrap()]).is_err());
    }

    #[test]
    fn read_format_reports_missing_tracepoints() {
        let root = tracefs("linux-4.19");
        assert_eq!(
            read_format(&root, "sock", "inet_sock_set_state").unwrap(),
            parse_format(V419_SET_STATE).unwrap()
        );
        assert!(matches!(
            read_format(&root, "sock", "inet_sk_error_report"),
            Err(LayoutError::MissingTracepoint { group, event }) if group == "sock" && event == "inet_sk_error_report"
        ));
    }

    #[test]
    fn hz_parsing() {
        assert_eq!(
            parse_kconfig_hz("CONFIG_HZ_250=y\n# CONFIG_HZ_1000 is not set\nCONFIG_HZ=250\n"),
            Some(250)
        );
        assert_eq!(
            parse_kconfig_hz("CONFIG_HZ_1000=y\nCONFIG_HZ=1000"),
            Some(1000)
        );
        assert_eq!(parse_kconfig_hz("CONFIG_HZ_250=y\n"), None);
        assert_eq!(parse_kconfig_hz("CONFIG_HZ=zero\n"), None);
        assert_eq!(parse_kconfig_hz("CONFIG_HZ=0\n"), None);

        let timer_list = "Timer List Version: v0.10\ncpu: 0\n  .last_jiffies   : 4295010271\n\
            jiffies: 4295010282\n  .idle_jiffies   : 1\njiffies: 4295010290\n";
        assert_eq!(parse_timer_list_jiffies(timer_list), Some(4_295_010_282));
        assert_eq!(parse_timer_list_jiffies("  .last_jiffies   : 5\n"), None);
        assert_eq!(parse_timer_list_jiffies("jiffies: many\n"), None);

        let ms = Duration::from_millis;
        assert_eq!(hz_from_rate(50, ms(200)), Some(250));
        assert_eq!(hz_from_rate(51, ms(203)), Some(250));
        assert_eq!(hz_from_rate(60, ms(200)), Some(300));
        assert_eq!(hz_from_rate(20, ms(200)), Some(100));
        assert_eq!(hz_from_rate(201, ms(201)), Some(1000));
        assert_eq!(hz_from_rate(0, ms(200)), None);
        assert_eq!(hz_from_rate(10, ms(0)), None);
        assert_eq!(hz_from_rate(120, ms(200)), None); // 600 Hz: no such setting
    }

    #[test]
    fn detect_hz_on_this_machine() {
        match detect_hz() {
            Ok(hz) => assert!(HZ_CHOICES.contains(&hz), "{hz}"),
            Err(e) => eprintln!("SKIPPED: cannot detect HZ here: {e}"),
        }
    }

    /// A miniature kernel: every member `build_config` looks up, at made-up
    /// offsets. `drop` leaves out the named struct/enum variant.
    fn kernel_btf(drop: &[&str]) -> Btf {
        let keep = |name: &str| !drop.contains(&name);
        let mut b = BtfBuilder::new();
        let u8_ = b.int("unsigned char", 1);
        let u16_ = b.int("short unsigned int", 2);
        let u32_ = b.int("unsigned int", 4);
        let u64_ = b.int("long long unsigned int", 8);
        let int = b.int("int", 4);
        let void_ptr = b.ptr(0);
        let in6 = b.array(u8_, int, 16);

        let ns = b.struct_(
            "ns_common",
            32,
            &[("stashed", void_ptr, 0), ("inum", u32_, 128)],
        );
        b.struct_("net", 256, &[("passive", u32_, 0), ("ns", ns, 1024)]);
        let net_fwd = b.fwd("net");
        let net_ptr = b.ptr(net_fwd);
        let pnet_inner = b.struct_("", 8, &[("net", net_ptr, 0)]);
        let pnet = b.typedef("possible_net_t", pnet_inner);
        let addrs = b.struct_(
            "",
            8,
            &[("skc_daddr", u32_, 0), ("skc_rcv_saddr", u32_, 32)],
        );
        let addr_u = b.union_("", 8, &[("skc_addrpair", u64_, 0), ("", addrs, 0)]);
        let ports = b.struct_("", 4, &[("skc_dport", u16_, 0), ("skc_num", u16_, 16)]);
        let port_u = b.union_("", 4, &[("skc_portpair", u32_, 0), ("", ports, 0)]);
        let vstate = b.volatile(u8_);
        let mut common = vec![
            ("", addr_u, 0),
            ("", port_u, 96),
            ("skc_family", u16_, 128),
            ("skc_state", vstate, 144),
            ("skc_net", pnet, 192),
        ];
        if keep("ipv6") {
            common.extend([("skc_v6_daddr", in6, 256), ("skc_v6_rcv_saddr", in6, 384)]);
        }
        let sock_common = b.struct_("sock_common", 136, &common);
        b.struct_(
            "sock",
            760,
            &[
                ("__sk_common", sock_common, 0),
                ("sk_err", int, 2240),
                ("sk_protocol", u16_, 4000),
            ],
        );
        let ack = b.struct_("", 24, &[("pending", u8_, 0), ("lrcvtime", u32_, 96)]);
        b.struct_("inet_sock", 1000, &[("inet_sport", u16_, 7040)]);
        b.struct_("inet_connection_sock", 1400, &[("icsk_ack", ack, 9600)]);
        let mut tcp = vec![
            ("rcv_nxt", u32_, 13056),
            ("copied_seq", u32_, 13088),
            ("snd_una", u32_, 13120),
            ("lsndtime", u32_, 13152),
            ("write_seq", u32_, 13184),
            ("bytes_received", u64_, 13248),
        ];
        if keep("bytes_acked") {
            tcp.push(("bytes_acked", u64_, 13312));
        }
        b.struct_("tcp_sock", 2400, &tcp);
        if keep("task_struct") {
            b.struct_(
                "task_struct",
                9000,
                &[("__state", u32_, 192), ("flags", u32_, 352)],
            );
        }
        let iov_ptr = b.ptr(0);
        let ptrs = b.union_("", 8, &[("__iov", iov_ptr, 0), ("ubuf", void_ptr, 0)]);
        let ptr_struct = b.struct_("", 16, &[("", ptrs, 0), ("count", u64_, 64)]);
        let iov_union = b.union_(
            "",
            16,
            &[("__ubuf_iovec", ptr_struct, 0), ("", ptr_struct, 0)],
        );
        let iter = b.struct_(
            "iov_iter",
            40,
            &[
                ("iter_type", u8_, 0),
                ("nofault", u8_, 8),
                ("iov_offset", u64_, 64),
                ("", iov_union, 128),
            ],
        );
        b.struct_(
            "msghdr",
            96,
            &[("msg_name", void_ptr, 0), ("msg_iter", iter, 128)],
        );
        let mut variants = vec![("ITER_IOVEC", 1), ("ITER_KVEC", 3)];
        if keep("ITER_UBUF") {
            variants.insert(0, ("ITER_UBUF", 0));
        }
        b.enum_("iter_type", false, &variants);
        Btf::from_bytes(&b.build()).unwrap()
    }

    fn assert_btf_offsets(c: &Config) {
        assert_eq!(c.sk_net, 24);
        assert_eq!(c.net_inum, 144);
        assert_eq!(c.sk_err, 280);
        assert_eq!(
            (c.sk_daddr, c.sk_rcv_saddr, c.sk_dport, c.sk_num),
            (0, 4, 12, 14)
        );
        assert_eq!((c.sk_family, c.sk_state), (16, 18));
        assert_eq!((c.sk_v6_daddr, c.sk_v6_rcv_saddr), (32, 48));
        assert_eq!(
            (c.tp_rcv_nxt, c.tp_copied_seq, c.tp_snd_una),
            (1632, 1636, 1640)
        );
        assert_eq!((c.tp_lsndtime, c.tp_write_seq), (1644, 1648));
        assert_eq!((c.tp_bytes_received, c.tp_bytes_acked), (1656, 1664));
        assert_eq!(c.icsk_lrcvtime, 1212);
        assert_eq!(c.task_flags, 44);
        assert_eq!(
            (c.msg_iter, c.iter_type, c.iter_iov_offset, c.iter_ptr),
            (16, 0, 8, 16)
        );
        assert_eq!((c.iter_ubuf_value, c.iter_iovec_value), (0, 1));
    }

    fn hook<'a>(r: &'a Resolved, name: &str) -> &'a HookStatus {
        r.hooks.iter().find(|h| h.name == name).unwrap()
    }

    #[test]
    fn config_for_6_18() {
        let r = build_config(&tracefs("linux-6.18"), &kernel_btf(&[])).unwrap();
        assert!(
            r.hooks.iter().all(|h| h.available && h.reason.is_none()),
            "{:?}",
            r.hooks
        );
        assert_eq!(r.hooks.len(), 5);
        assert!(r.disabled.is_empty(), "{:?}", r.disabled);
        let c = r.config;
        assert_eq!((c.ss_skaddr, c.ss_oldstate, c.ss_newstate), (8, 16, 20));
        assert_eq!((c.ss_sport, c.ss_dport, c.ss_family), (24, 26, 28));
        assert_eq!((c.ss_protocol, c.ss_protocol_size), (30, 2));
        assert_eq!(
            (c.ss_saddr, c.ss_daddr, c.ss_saddr_v6, c.ss_daddr_v6),
            (32, 36, 40, 56)
        );
        assert_eq!((c.sr_skaddr, c.sr_state, c.sr_reason), (16, 24, 28));
        assert_eq!((c.rr_skaddr, c.ds_skaddr), (8, 8));
        assert_eq!(
            (c.er_error, c.er_sport, c.er_dport, c.er_family),
            (8, 12, 14, 16)
        );
        assert_eq!((c.er_protocol, c.er_protocol_size), (18, 2));
        assert_eq!(
            (c.er_saddr, c.er_daddr, c.er_saddr_v6, c.er_daddr_v6),
            (20, 24, 28, 44)
        );
        assert_btf_offsets(&c);
        // Left alone.
        let empty = Config::empty();
        assert_eq!(
            (c.hz, c.report_all, c.sniff_http, c.self_tgid),
            (empty.hz, 0, 0, 0)
        );
    }

    #[test]
    fn config_for_4_19() {
        let r = build_config(&tracefs("linux-4.19"), &kernel_btf(&[])).unwrap();
        let c = r.config;
        assert_eq!((c.ss_skaddr, c.ss_oldstate, c.ss_newstate), (8, 16, 20));
        assert_eq!((c.ss_protocol, c.ss_protocol_size), (30, 1));
        assert_eq!(
            (c.ss_saddr, c.ss_daddr, c.ss_saddr_v6, c.ss_daddr_v6),
            (31, 35, 39, 55)
        );
        assert!(hook(&r, "tcp:tcp_send_reset").available);
        assert_eq!((c.sr_skaddr, c.sr_state, c.sr_reason), (16, ABSENT, ABSENT));
        assert_eq!((c.rr_skaddr, c.ds_skaddr), (8, 8));
        let er = hook(&r, "sock:inet_sk_error_report");
        assert!(!er.available);
        assert!(
            er.reason.as_deref().unwrap().contains("not found"),
            "{er:?}"
        );
        assert_eq!(
            (c.er_error, c.er_sport, c.er_saddr_v6),
            (ABSENT, ABSENT, ABSENT)
        );
        assert_eq!(c.er_protocol_size, Config::empty().er_protocol_size);
        assert_eq!(r.disabled.len(), 1);
        assert_eq!(r.disabled[0].0, "rst_reason");
        assert_btf_offsets(&c);
    }

    #[test]
    fn config_for_rt() {
        let r = build_config(&tracefs("linux-5.15-rt"), &kernel_btf(&[])).unwrap();
        assert!(r.hooks.iter().all(|h| h.available), "{:?}", r.hooks);
        let c = r.config;
        assert_eq!((c.ss_skaddr, c.ss_oldstate, c.ss_newstate), (16, 24, 28));
        assert_eq!((c.ss_sport, c.ss_dport, c.ss_family), (32, 34, 36));
        assert_eq!((c.ss_protocol, c.ss_protocol_size), (38, 2));
        assert_eq!(
            (c.ss_saddr, c.ss_daddr, c.ss_saddr_v6, c.ss_daddr_v6),
            (40, 44, 48, 64)
        );
        assert_eq!((c.sr_skaddr, c.sr_state, c.sr_reason), (24, 32, ABSENT));
        assert_eq!((c.rr_skaddr, c.ds_skaddr), (16, 16));
        assert_eq!(
            (c.er_error, c.er_sport, c.er_dport, c.er_family),
            (12, 16, 18, 20)
        );
        assert_eq!((c.er_protocol, c.er_protocol_size), (22, 2));
        assert_eq!(
            (c.er_saddr, c.er_daddr, c.er_saddr_v6, c.er_daddr_v6),
            (24, 28, 32, 48)
        );
        assert_eq!(
            r.disabled,
            vec![(
                "rst_reason".to_owned(),
                "tcp:tcp_send_reset has no `reason` field (added in Linux 6.10)".to_owned()
            )]
        );
    }

    #[test]
    fn required_layouts_missing_are_errors() {
        assert!(matches!(
            build_config(&tracefs("no-such-kernel"), &kernel_btf(&[])),
            Err(LayoutError::TracefsMissing { .. })
        ));
        // A tracefs with the tcp events but no sock:inet_sock_set_state.
        let root = std::env::temp_dir().join(format!("tracer-layout-test-{}", std::process::id()));
        let events = root.join("events/tcp");
        std::fs::create_dir_all(&events).unwrap();
        for event in ["tcp_send_reset", "tcp_receive_reset", "tcp_destroy_sock"] {
            std::fs::create_dir_all(events.join(event)).unwrap();
            let from = tracefs("linux-6.18")
                .join("events/tcp")
                .join(event)
                .join("format");
            std::fs::copy(from, events.join(event).join("format")).unwrap();
        }
        let result = build_config(&root, &kernel_btf(&[]));
        std::fs::remove_dir_all(&root).unwrap();
        assert!(
            matches!(
                &result,
                Err(LayoutError::MissingTracepoint { group, event }) if group == "sock" && event == "inet_sock_set_state"
            ),
            "{result:?}"
        );
        // A required hook with a required field missing.
        let text = V419_SET_STATE.replace("oldstate", "old_state");
        let err = apply_hook(
            &mut Config::empty(),
            &HOOKS[0],
            &parse_format(&text).unwrap(),
        )
        .unwrap_err();
        assert!(
            matches!(err, LayoutError::MissingField { ref field, .. } if field == "oldstate"),
            "{err:?}"
        );
        assert!(matches!(
            build_config(&tracefs("linux-6.18"), &kernel_btf(&["bytes_acked"])),
            Err(LayoutError::Btf {
                source: BtfError::MissingMember { .. }
            })
        ));
    }

    #[test]
    fn optional_btf_missing_disables_features() {
        let r = build_config(
            &tracefs("linux-6.18"),
            &kernel_btf(&["task_struct", "ITER_UBUF", "ipv6"]),
        )
        .unwrap();
        let features: Vec<&str> = r.disabled.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            features,
            [
                "ipv6_socket_addresses",
                "process_exit_detection",
                "http_status_sniffing"
            ]
        );
        assert!(r.disabled[1].1.contains("task_struct"), "{:?}", r.disabled);
        assert!(r.disabled[2].1.contains("ITER_UBUF"), "{:?}", r.disabled);
        let c = r.config;
        assert_eq!(
            (c.sk_v6_daddr, c.sk_v6_rcv_saddr, c.task_flags),
            (ABSENT, ABSENT, ABSENT)
        );
        // All-or-nothing: no half-configured sniffer.
        assert_eq!(
            (
                c.msg_iter,
                c.iter_type,
                c.iter_iov_offset,
                c.iter_ptr,
                c.iter_ubuf_value,
                c.iter_iovec_value
            ),
            (ABSENT, ABSENT, ABSENT, ABSENT, ABSENT, ABSENT)
        );
        assert_eq!((c.sk_net, c.tp_bytes_acked), (24, 1664));
    }

    #[test]
    fn wrong_field_size_makes_optional_hook_unavailable() {
        let hook = &HOOKS[1];
        let text = V618_SEND_RESET.replace("offset:16;\tsize:8;", "offset:16;\tsize:4;");
        let format = parse_format(&text).unwrap();
        let mut config = Config::empty();
        let err = apply_hook(&mut config, hook, &format).unwrap_err();
        assert!(
            matches!(err, LayoutError::FieldSize { size: 4, .. }),
            "{err:?}"
        );
        // Nothing half-filled.
        assert_eq!(config, Config::empty());
    }

    /// The real kernel: tracefs and vmlinux BTF of the machine running the tests.
    #[test]
    fn config_for_running_kernel() {
        let root = Path::new("/sys/kernel/tracing");
        if !root.join("events").is_dir() || !Path::new(crate::btf::VMLINUX_PATH).exists() {
            eprintln!(
                "SKIPPED: no tracefs at /sys/kernel/tracing or no {}",
                crate::btf::VMLINUX_PATH
            );
            return;
        }
        let start = Instant::now();
        let btf = Btf::from_file(crate::btf::VMLINUX_PATH).unwrap();
        let r = build_config(root, &btf).unwrap();
        eprintln!("vmlinux BTF + tracefs -> Config in {:?}", start.elapsed());
        eprintln!(
            "hooks: {:?}\ndisabled: {:?}\n{:?}",
            r.hooks, r.disabled, r.config
        );
        let c = r.config;
        assert!(hook(&r, "sock:inet_sock_set_state").available);
        for (name, value) in [
            ("sk_net", c.sk_net),
            ("net_inum", c.net_inum),
            ("tp_bytes_received", c.tp_bytes_received),
            ("tp_bytes_acked", c.tp_bytes_acked),
            ("tp_lsndtime", c.tp_lsndtime),
            ("icsk_lrcvtime", c.icsk_lrcvtime),
        ] {
            assert_ne!(value, ABSENT, "{name}");
        }
        assert_eq!(
            (c.sk_daddr, c.sk_rcv_saddr, c.sk_dport, c.sk_num),
            (0, 4, 12, 14)
        );
    }
}
