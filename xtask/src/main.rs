//! `cargo xtask`: set-up, build, run and test the 502 tracer.
//!
//! Every subcommand that needs tools installs what is missing first, so the
//! two commands in the README work on a fresh machine. This file is wiring
//! only; each job lives in its own module.

mod bench;
mod build;
mod cmd;
mod demo;
mod lint;
mod run;
mod setup;
mod test;
mod workspace;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Set up, build, run and test the 502 tracer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check the machine and install whatever is missing (idempotent).
    Setup(setup::Options),
    /// Build the workspace (the tracer's build script builds the eBPF object).
    Build(build::Options),
    /// Set up, build the tracer and run it with the given arguments.
    Run(run::Options),
    /// Set up for tests, build the tracer and run unit and end-to-end tests.
    Test(test::Options),
    /// Check formatting and run clippy with warnings denied.
    Lint,
    /// Show the tracer explaining real 502s (not implemented yet).
    Demo,
    /// Measure the tracer's overhead and capacity against no tracer,
    /// bpftrace, tcplife and tshark, in one run.
    Bench(bench::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // bpf-linker lives in ~/.cargo/bin, which a CI shell may not have on
    // PATH; every child we spawn (cargo, aya-build) must find it.
    workspace::add_cargo_bin_to_path();
    let result = match cli.command {
        Command::Setup(opts) => setup::setup(&opts).map(|()| ExitCode::SUCCESS),
        Command::Build(opts) => build::build(&opts).map(|()| ExitCode::SUCCESS),
        Command::Run(opts) => run::run(opts),
        Command::Test(opts) => test::test(&opts),
        Command::Lint => lint::lint().map(|()| ExitCode::SUCCESS),
        Command::Demo => Ok(demo::demo()),
        Command::Bench(opts) => bench::bench(&opts),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
