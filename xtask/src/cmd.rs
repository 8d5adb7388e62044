//! Running child processes: echo what runs, fail with context when it fails.

use std::{
    env,
    ffi::OsStr,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use crate::workspace;

/// A `cargo` command in the workspace root, using the cargo that runs us.
pub fn cargo() -> Command {
    let program = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace::root());
    cmd
}

/// The command line as a person would type it, with environment overrides
/// first. PATH is left out: it is long and only ever prepended to.
pub fn display(cmd: &Command) -> String {
    let mut words: Vec<String> = cmd
        .get_envs()
        .filter(|(key, _)| *key != OsStr::new("PATH"))
        .filter_map(|(key, value)| {
            value.map(|v| format!("{}={}", key.to_string_lossy(), v.to_string_lossy()))
        })
        .collect();
    let program = cmd.get_program().to_string_lossy();
    // Show `cargo`, not the toolchain's full path to it.
    let program = match program.rsplit_once('/') {
        Some((_, "cargo")) => "cargo".into(),
        _ => program.into_owned(),
    };
    words.push(program);
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

/// Runs `cmd` with inherited stdio; an error if it cannot start or fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    eprintln!("xtask: $ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs a probe quietly and returns its trimmed stdout and stderr if it
/// succeeded; `None` if it could not start or failed.
pub fn probe<I, S>(program: impl AsRef<OsStr>, args: I) -> Option<Probe>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status.success().then(|| Probe {
        stdout: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

/// What a successful probe printed.
pub struct Probe {
    pub stdout: String,
    pub stderr: String,
}

impl Probe {
    /// The first non-empty line of stdout, else of stderr (`nginx -v`
    /// prints its version on stderr).
    pub fn first_line(&self) -> &str {
        [&self.stdout, &self.stderr]
            .into_iter()
            .flat_map(|s| s.lines())
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("")
    }
}
