//! Command-line options.

use std::path::PathBuf;

use clap::Parser;

/// Explains HTTP 502s from kernel TCP events: for every 5xx a proxy on this
/// node writes, which side ended the proxy-to-backend connection, how, when
/// and why — one JSON line each.
#[derive(Debug, Parser)]
#[command(name = "tracer", version, about, long_about = None)]
pub struct Cli {
    /// Only connections with this local or remote port (repeatable; filtered in the kernel).
    #[arg(long = "port", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Only connections in this network namespace, e.g. /run/netns/NAME or
    /// /proc/PID/ns/net (repeatable; filtered in the kernel).
    #[arg(long = "netns", value_name = "PATH")]
    pub netns: Vec<PathBuf>,

    /// Only connections of this Kubernetes pod, resolved on this node
    /// (repeatable; filtered in the kernel by its network namespace).
    #[arg(long = "pod", value_name = "NAMESPACE/NAME")]
    pub pods: Vec<crate::pods::PodRef>,

    /// Root of the node's filesystem for pod resolution (/var/log/pods,
    /// /sys/fs/cgroup, /proc); default $TRACER_NODE_ROOT or /.
    #[arg(long = "node-root", value_name = "PATH")]
    pub node_root: Option<PathBuf>,

    /// Only connections owned by this process id (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Only connections owned by a process with this name (repeatable).
    #[arg(long = "comm", value_name = "NAME")]
    pub comms: Vec<String>,

    /// Treat this process name as a reverse proxy, in addition to nginx,
    /// haproxy, envoy and the other well-known ones (repeatable).
    #[arg(long = "proxy-comm", value_name = "NAME")]
    pub proxy_comms: Vec<String>,

    /// Report every connection end, not only abnormal ones.
    #[arg(long)]
    pub all: bool,

    /// Write events here instead of stdout (created or truncated).
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,

    /// Seconds between `stats` lines.
    #[arg(long = "stats-interval", value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub stats_interval: u64,

    /// Sockets tracked in the kernel at once: a table of this many slots,
    /// and an LRU map of a quarter of it for sockets whose slots are taken
    /// (the least recently used of those is evicted when it is full).
    #[arg(long = "max-conns", value_name = "N", default_value_t = tracer_common::DEFAULT_MAX_SOCKS,
          value_parser = clap::value_parser!(u32).range(1024..=4_194_304))]
    pub max_conns: u32,

    /// How to attach the state-change hook: `auto` prefers the BTF raw
    /// tracepoint (cheaper) and falls back to the classic tracepoint.
    #[arg(long = "state-hook", value_enum, default_value_t = StateHook::Auto)]
    pub state_hook: StateHook,

    /// Human-readable lines instead of NDJSON.
    #[arg(long)]
    pub text: bool,

    /// Host name to put in every line (default: this machine's).
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
}

/// `--state-hook`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum StateHook {
    #[default]
    Auto,
    #[value(name = "tp_btf")]
    TpBtf,
    Tracepoint,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_repeatable_filters() {
        let c = Cli::try_parse_from([
            "tracer",
            "--port",
            "80",
            "--port",
            "8080",
            "--pod",
            "shop/api-1",
            "--all",
            "--duration",
            "3",
        ])
        .unwrap();
        assert_eq!(c.ports, vec![80, 8080]);
        assert_eq!(c.pods.len(), 1);
        assert!(c.all);
        assert_eq!(c.duration, Some(3));
    }

    #[test]
    fn rejects_bad_values() {
        for args in [
            vec!["tracer", "--port", "0"],
            vec!["tracer", "--port", "70000"],
            vec!["tracer", "--port", "http"],
            vec!["tracer", "--pod", "no-slash"],
            vec!["tracer", "--bogus"],
            vec!["tracer", "--stats-interval", "0"],
        ] {
            let err = Cli::try_parse_from(&args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }
}
