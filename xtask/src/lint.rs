//! `cargo xtask lint`: formatting and clippy, warnings denied.

use std::process::Command;

use anyhow::Result;

use crate::{build, cmd, setup, workspace};

/// `cargo fmt --check`, clippy on the host crates, then clippy on the eBPF
/// crate for its own target with nightly.
pub fn lint() -> Result<()> {
    cmd::run(cmd::cargo().args(["fmt", "--all", "--", "--check"]))?;
    // The eBPF object is not needed to lint the host crates.
    cmd::run(
        cmd::cargo()
            .env("AYA_BUILD_SKIP", "1")
            .arg("clippy")
            .args(build::EXCLUDE_EBPF)
            .args(["--all-targets", "--", "-D", "warnings"]),
    )?;
    setup::check_nightly()?;
    cmd::run(
        Command::new("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--package",
                "tracer-ebpf",
            ])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .args(["--", "-D", "warnings"])
            .current_dir(workspace::root()),
    )
}
