//! `cargo xtask run -- ARGS`: set up, build the tracer, and become it.

use std::{ffi::OsString, os::unix::process::CommandExt as _, process::Command, process::ExitCode};

use anyhow::{Context as _, Result};

use crate::{build, cmd, setup};

/// Options of `cargo xtask run`.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Build and run the debug tracer instead of the release one.
    #[arg(long)]
    pub debug: bool,
    /// Arguments for the tracer, after `--` (e.g. `-- --port 8080`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "TRACER_ARGS"
    )]
    pub args: Vec<OsString>,
}

/// Replaces this process with the tracer, so signals (Ctrl-C) reach it
/// directly and its exit code is ours. Returns only on failure.
pub fn run(opts: Options) -> Result<ExitCode> {
    setup::setup(&setup::Options::default())?;
    let tracer = build::tracer(!opts.debug)?;
    let mut command = Command::new(&tracer);
    command.args(&opts.args);
    eprintln!("xtask: $ {}", cmd::display(&command));
    let err = command.exec();
    Err(err).with_context(|| format!("could not execute {}", tracer.display()))
}
