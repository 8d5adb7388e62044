//! `cargo xtask build`: set up, then build the workspace.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::{cmd, setup, workspace};

/// Options of `cargo xtask build`.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

/// The eBPF crate only builds for `bpfel-unknown-none`, through the tracer's
/// build script (aya-build); built for the host it would fail to link.
pub const EXCLUDE_EBPF: [&str; 3] = ["--workspace", "--exclude", "tracer-ebpf"];

/// Runs the base set-up, then builds every host crate; the tracer's build
/// script builds the eBPF object with nightly and bpf-linker.
pub fn build(opts: &Options) -> Result<()> {
    setup::setup(&setup::Options::default())?;
    let mut build = cmd::cargo();
    build.arg("build").args(EXCLUDE_EBPF);
    if opts.release {
        build.arg("--release");
    }
    cmd::run(&mut build)
}

/// Builds the tracer binary alone and returns its absolute path.
pub fn tracer(release: bool) -> Result<PathBuf> {
    let mut build = cmd::cargo();
    build.args(["build", "--package", "tracer"]);
    if release {
        build.arg("--release");
    }
    cmd::run(&mut build)?;
    let profile = if release { "release" } else { "debug" };
    let bin = workspace::target_dir().join(profile).join("tracer");
    if !bin.is_file() {
        bail!("cargo built the tracer but {} is not there", bin.display());
    }
    Ok(bin)
}
