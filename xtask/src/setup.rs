//! `cargo xtask setup`: check every prerequisite and install only what is
//! missing, saying which for each. Safe to run any number of times.
//!
//! What a fresh Debian 12 machine of ours lacks: the nightly `rust-src`
//! component, LLVM 22's development files (to build bpf-linker), bpf-linker
//! itself, a mounted tracefs, and, for tests and benchmarks, the real
//! proxies, servers and tools from Debian's packages.

use std::{
    collections::BTreeSet,
    env, fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{cmd, workspace};

/// The LLVM major version of both rustc toolchains here; bpf-linker must be
/// built against the same one.
const LLVM_MAJOR: &str = "22";

/// Where tracefs is mounted; the tracer reads tracepoint formats from it.
const TRACEFS: &str = "/sys/kernel/tracing";

/// Options of `cargo xtask setup`.
#[derive(clap::Args, Debug, Default)]
pub struct Options {
    /// Also install what the end-to-end tests use (nginx, haproxy,
    /// iptables, curl, wrk, Node.js) and stop Debian's nginx and haproxy
    /// services so the tests own the ports.
    #[arg(long)]
    pub test: bool,
    /// Also install what the benchmarks use (bpftrace, libbpf-tools,
    /// tshark, bpftool, wrk).
    #[arg(long)]
    pub bench: bool,
}

/// Something Debian's packages provide.
struct Requirement {
    /// What the progress line names.
    name: &'static str,
    /// The package installed when the requirement is not met.
    package: &'static str,
    /// When set, the requirement is met by this program on PATH (and its
    /// version is what the argument prints), whichever package put it there:
    /// Node.js is often preinstalled from elsewhere, nginx comes in flavours.
    program: Option<(&'static str, &'static str)>,
}

const fn package(name: &'static str) -> Requirement {
    Requirement {
        name,
        package: name,
        program: None,
    }
}

const fn program(
    name: &'static str,
    version_arg: &'static str,
    package: &'static str,
) -> Requirement {
    Requirement {
        name,
        package,
        program: Some((name, version_arg)),
    }
}

/// Always needed. bpf-linker links only `libLLVM.so` (checked with a real
/// `cargo install -vv` here: its build script emits `-l dylib=LLVM` from
/// /usr/lib/llvm-22/lib and nothing else), which `llvm-22-dev` provides
/// along with llvm-config; Polly, zstd and zlib development files are not
/// needed. iproute2 gives `ip netns`, for `--netns` and the tests.
const BASE: &[Requirement] = &[package("llvm-22-dev"), package("iproute2")];

/// `--test`: the real proxies, backends and clients of the end-to-end tests.
const TEST: &[Requirement] = &[
    program("nginx", "-v", "nginx-light"),
    package("haproxy"),
    package("iptables"),
    package("curl"),
    package("wrk"),
    program("node", "--version", "nodejs"),
    // The socket choreography of the conn_end tests; `setpriv` (util-linux)
    // runs the tracer unprivileged in one of them.
    program("python3", "--version", "python3"),
    program("setpriv", "--version", "util-linux"),
];

/// `--bench`: load generators and the tools we compare against.
const BENCH: &[Requirement] = &[
    package("bpftrace"),
    package("libbpf-tools"),
    package("tshark"),
    package("bpftool"),
    package("wrk"),
];

/// Debian services that start on install and would hold ports the tests
/// use, with the pid file their init scripts write.
const SERVICES: &[(&str, &str)] = &[("nginx", "/run/nginx.pid"), ("haproxy", "/run/haproxy.pid")];

/// Runs every check in order, installing what is missing.
pub fn setup(opts: &Options) -> Result<()> {
    let started = Instant::now();
    check_root()?;
    check_nightly().context("nightly toolchain")?;
    let installed = ensure_packages(&requirements(opts)).context("Debian packages")?;
    ensure_bpf_linker().context("bpf-linker")?;
    ensure_tracefs().context("tracefs")?;
    if opts.test {
        stop_system_services(&installed).context("stopping Debian's services")?;
    }
    eprintln!("setup: done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn say(thing: &str, what: impl std::fmt::Display) {
    eprintln!("setup: {thing}: {what}");
}

fn check_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "cargo xtask must run as root (effective uid is {euid}): \
             it installs packages, mounts tracefs and loads eBPF programs"
        );
    }
    say("root", "ok (uid 0)");
    Ok(())
}

/// The eBPF crate builds with `rustup run nightly cargo -Z build-std=core`,
/// which needs a nightly toolchain and its `rust-src` component.
pub fn check_nightly() -> Result<()> {
    let list = cmd::probe("rustup", ["toolchain", "list"])
        .context("`rustup toolchain list` failed; is rustup installed and on PATH?")?;
    // `nightly-<host>` is what `rustup run nightly` uses; a dated nightly
    // (`nightly-2026-05-19-<host>`) is not.
    let toolchain = list
        .stdout
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .find(|name| {
            name.strip_prefix("nightly-")
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
        });
    let Some(toolchain) = toolchain else {
        bail!(
            "the nightly Rust toolchain is not installed, and it cannot be downloaded \
             on this machine; the eBPF programs need it (elsewhere: \
             `rustup toolchain install nightly --component rust-src`)"
        );
    };
    let version = cmd::probe("rustup", ["run", "nightly", "rustc", "--version"])
        .with_context(|| format!("`rustup run nightly rustc --version` failed ({toolchain})"))?;
    let version = version.first_line();
    say(
        "nightly toolchain",
        format!("ok ({})", version.trim_start_matches("rustc ")),
    );

    let installed = cmd::probe(
        "rustup",
        ["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .context("`rustup component list --toolchain nightly --installed` failed")?;
    if installed.stdout.lines().any(|l| l.starts_with("rust-src")) {
        say("nightly rust-src", "ok (installed)");
        return Ok(());
    }
    say(
        "nightly rust-src",
        "installing (needed for -Z build-std=core)",
    );
    cmd::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

fn requirements(opts: &Options) -> Vec<&'static Requirement> {
    let mut all: Vec<&Requirement> = BASE.iter().collect();
    if opts.test {
        all.extend(TEST);
    }
    if opts.bench {
        all.extend(BENCH);
    }
    let mut seen = BTreeSet::new();
    all.retain(|r| seen.insert(r.name));
    all
}

/// The installed version, or why the requirement is not met.
fn check(req: &Requirement) -> Result<String, String> {
    match req.program {
        Some((program, version_arg)) => {
            let path =
                workspace::find_program(program).ok_or_else(|| format!("no {program} on PATH"))?;
            let out = cmd::probe(&path, [version_arg])
                .ok_or_else(|| format!("`{} {version_arg}` failed", path.display()))?;
            // "nginx version: nginx/1.22.1", "v20.20.2": the last word.
            let line = out.first_line();
            Ok(line.rsplit(' ').next().unwrap_or(line).to_owned())
        }
        None => package_version(req.package).ok_or_else(|| "package not installed".to_owned()),
    }
}

/// The version of a Debian package if it is fully installed.
fn package_version(package: &str) -> Option<String> {
    let out = cmd::probe("dpkg-query", ["-W", "-f=${Status}\t${Version}", package])?;
    let (status, version) = out.stdout.split_once('\t')?;
    (status == "install ok installed").then(|| version.to_owned())
}

/// Checks every requirement, installs the missing ones with one apt-get
/// call, and returns the packages it installed.
fn ensure_packages(reqs: &[&Requirement]) -> Result<Vec<&'static str>> {
    let mut missing = Vec::new();
    for req in reqs {
        match check(req) {
            Ok(version) => say(req.name, format!("ok ({version})")),
            Err(why) => {
                say(req.name, format!("installing {} ({why})", req.package));
                missing.push(*req);
            }
        }
    }
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let packages: Vec<&'static str> = missing.iter().map(|r| r.package).collect();
    apt_install(&packages)?;
    for req in missing {
        match check(req) {
            Ok(version) => say(req.name, format!("ok ({version}, just installed)")),
            Err(why) => bail!(
                "{} is still missing after installing {} ({why})",
                req.name,
                req.package
            ),
        }
    }
    Ok(packages)
}

fn apt_install(packages: &[&str]) -> Result<()> {
    // Debian starts nginx and haproxy as soon as they are installed; keep
    // them from starting at all rather than racing them for ports.
    let _no_services = NoServiceStart::new();
    let apt = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        c.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        c
    };
    cmd::run(&mut apt(&["update"]))?;
    let mut install = apt(&["install", "-y", "--no-install-recommends"]);
    install.args(packages);
    cmd::run(&mut install)
}

/// A `policy-rc.d` that tells `invoke-rc.d` not to start services, for as
/// long as this value lives (the mechanism Debian provides for chroots and
/// containers). One that is already there is left alone.
struct NoServiceStart {
    created: Option<PathBuf>,
}

impl NoServiceStart {
    const PATH: &'static str = "/usr/sbin/policy-rc.d";

    fn new() -> Self {
        let path = PathBuf::from(Self::PATH);
        if path.exists() {
            return Self { created: None };
        }
        let script = "#!/bin/sh\n# Written by `cargo xtask setup` for one apt-get run: \
                      do not start services on install.\nexit 101\n";
        let written = fs::write(&path, script)
            .and_then(|()| fs::set_permissions(&path, fs::Permissions::from_mode(0o755)));
        match written {
            Ok(()) => Self {
                created: Some(path),
            },
            Err(err) => {
                eprintln!("setup: warning: could not write {}: {err}", path.display());
                Self { created: None }
            }
        }
    }
}

impl Drop for NoServiceStart {
    fn drop(&mut self) {
        if let Some(path) = &self.created {
            if let Err(err) = fs::remove_file(path) {
                eprintln!("setup: warning: could not remove {}: {err}", path.display());
            }
        }
    }
}

fn bpf_linker_version() -> Option<String> {
    // main() put ~/.cargo/bin on PATH, so this looks there too.
    let path = workspace::find_program("bpf-linker")?;
    let out = cmd::probe(path, ["--version"])?;
    Some(
        out.first_line()
            .trim_start_matches("bpf-linker ")
            .to_owned(),
    )
}

/// aya-build links the eBPF object with bpf-linker, built here from
/// crates.io against Debian's LLVM (about a minute).
fn ensure_bpf_linker() -> Result<()> {
    if let Some(version) = bpf_linker_version() {
        say("bpf-linker", format!("ok ({version})"));
        return Ok(());
    }
    say(
        "bpf-linker",
        format!(
            "installing (not on PATH nor in {}; cargo install takes about a minute)",
            workspace::cargo_bin_dir().display()
        ),
    );
    let llvm_bin = PathBuf::from(format!("/usr/lib/llvm-{LLVM_MAJOR}/bin"));
    let path = workspace::prepend_path(&llvm_bin, &env::var_os("PATH").unwrap_or_default());
    let mut install = cmd::cargo();
    install
        .args(["install", "bpf-linker", "--version", "^0.13", "--locked"])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{LLVM_MAJOR}"),
        ])
        .env("PATH", path)
        // Outside the workspace, so its .cargo/config.toml cannot apply.
        .current_dir(env::temp_dir());
    eprintln!(
        "setup: bpf-linker: with {} first on PATH",
        llvm_bin.display()
    );
    cmd::run(&mut install)?;
    let version =
        bpf_linker_version().context("bpf-linker still does not run after cargo install")?;
    say("bpf-linker", format!("ok ({version}, just installed)"));
    Ok(())
}

/// The tracer parses tracepoint formats under tracefs, which a fresh
/// machine does not mount.
fn ensure_tracefs() -> Result<()> {
    let events = Path::new(TRACEFS).join("events");
    if events.is_dir() {
        say("tracefs", format!("ok (mounted at {TRACEFS})"));
        return Ok(());
    }
    say(
        "tracefs",
        format!("mounting ({} is missing)", events.display()),
    );
    cmd::run(Command::new("mount").args(["-t", "tracefs", "tracefs", TRACEFS]))?;
    if !events.is_dir() {
        bail!(
            "{} is still missing after mounting tracefs",
            events.display()
        );
    }
    say("tracefs", format!("ok (mounted at {TRACEFS})"));
    Ok(())
}

/// Stops Debian's own nginx and haproxy if they run, and keeps them from
/// starting at boot: the tests start their own, with their own configs.
fn stop_system_services(just_installed: &[&str]) -> Result<()> {
    for &(name, pid_file) in SERVICES {
        let thing = format!("{name} service");
        let fresh = just_installed.iter().any(|p| p.starts_with(name));
        let Some(pid) = running_pid(name, pid_file) else {
            if fresh {
                disable_service(name);
            }
            say(&thing, "ok (not running)");
            continue;
        };
        say(
            &thing,
            format!("stopping (Debian's {name} runs as pid {pid}; tests start their own)"),
        );
        quiet(Command::new("service").args([name, "stop"]));
        if running_pid(name, pid_file).is_some() {
            terminate(pid);
        }
        disable_service(name);
        if running_pid(name, pid_file).is_some() {
            bail!("could not stop {name} (pid {pid} from {pid_file})");
        }
        say(&thing, "ok (stopped and disabled)");
    }
    Ok(())
}

/// The pid in `pid_file` if that process is alive and is `name`.
fn running_pid(name: &str, pid_file: &str) -> Option<libc::pid_t> {
    let pid: libc::pid_t = fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    if pid <= 1 {
        // kill(0 or -1) would signal whole process groups; pid 1 is init.
        return None;
    }
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    (comm.trim().starts_with(name) && alive(pid)).then_some(pid)
}

/// Whether `pid` exists and is not a zombie waiting for its parent.
fn alive(pid: libc::pid_t) -> bool {
    // /proc/PID/stat is "PID (COMM) STATE ..."; COMM may hold spaces and
    // parentheses, so the state follows the last ')'.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace()
                .next()
                .map(|state| state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// SIGTERM, then SIGKILL after five seconds.
fn terminate(pid: libc::pid_t) {
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        // SAFETY: kill has no memory-safety preconditions; pid is a
        // positive pid read from the service's own pid file.
        unsafe { libc::kill(pid, signal) };
        for _ in 0..50 {
            if !alive(pid) {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Best effort: whichever of the two init systems' tools works.
fn disable_service(name: &str) {
    quiet(Command::new("update-rc.d").args([name, "disable"]));
    quiet(Command::new("systemctl").args(["disable", "--quiet", name]));
}

/// Runs a command that may legitimately fail, silently.
fn quiet(cmd: &mut Command) {
    let _ = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
