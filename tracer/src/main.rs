//! `tracer`: explains HTTP 502s from kernel TCP events.
//!
//! Wiring only: parse options, check privileges, open the output, resolve
//! filters, load the eBPF programs, then run the collector loop.

mod btf;
mod cli;
mod collector;
mod engine;
mod events;
mod layout;
mod loader;
mod output;
mod pods;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;

/// Exit status for bad input (flags, paths, pods), like clap's usage errors.
const EXIT_USAGE: u8 = 2;
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    let cli = cli::Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, err }) => {
            eprintln!("tracer: {err:#}");
            ExitCode::from(code)
        }
    }
}

struct Failure {
    code: u8,
    err: anyhow::Error,
}

trait Code<T> {
    fn code(self, code: u8) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> Code<T> for Result<T, E> {
    fn code(self, code: u8) -> Result<T, Failure> {
        self.map_err(|e| Failure {
            code,
            err: e.into(),
        })
    }
}

fn run(cli: cli::Cli) -> Result<(), Failure> {
    check_privileges().code(EXIT_FAILURE)?;
    let host = cli.host.clone().unwrap_or_else(hostname);
    let out = output::Output::open(cli.output.as_deref(), host, cli.text)
        .with_context(|| match &cli.output {
            Some(p) => format!("cannot write --output {}", p.display()),
            None => "cannot write to stdout".to_string(),
        })
        .code(EXIT_USAGE)?;

    let filters = collector::Filters::resolve(&cli).code(EXIT_USAGE)?;
    let opts = loader::LoadOptions {
        report_all: cli.all,
        ports: cli.ports.clone(),
        netns: filters.kernel_netns(),
        max_conns: cli.max_conns,
        state_hook: cli.state_hook,
    };
    let loaded = loader::load(&opts)
        .context("cannot start tracing")
        .code(EXIT_FAILURE)?;
    collector::run(cli, filters, loaded, out).code(EXIT_FAILURE)
}

/// Root, or CAP_BPF + CAP_PERFMON, or CAP_SYS_ADMIN.
fn check_privileges() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |bit: u32| cap_eff & (1u64 << bit) != 0;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    anyhow::bail!(
        "tracing needs root (or CAP_BPF and CAP_PERFMON); run it as root, e.g. `cargo xtask run -- ARGS`"
    )
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Kernel release, for the `start` line.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
