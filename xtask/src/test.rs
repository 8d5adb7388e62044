//! `cargo xtask test`: set up for tests, build the tracer, and run the unit
//! and end-to-end tests in one `cargo test`, then print one summary line.

use std::{
    io::{BufRead as _, BufReader},
    process::{ExitCode, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result};

use crate::{build, cmd, setup};

/// Options of `cargo xtask test`.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// Run only the unit tests (`--lib --bins`), without the end-to-end
    /// set-up and tests.
    #[arg(long)]
    pub unit: bool,
}

/// Runs the tests; the exit code is non-zero if any failed or none could run.
pub fn test(opts: &Options) -> Result<ExitCode> {
    let started = Instant::now();
    let mut test = cmd::cargo();
    test.arg("test")
        .args(build::EXCLUDE_EBPF)
        // Run every test binary even when an earlier one fails, so the
        // summary counts them all.
        .args(["--release", "--no-fail-fast"]);
    if opts.unit {
        setup::setup(&setup::Options::default())?;
        test.args(["--lib", "--bins"]);
    } else {
        setup::setup(&setup::Options {
            test: true,
            ..Default::default()
        })?;
        // The end-to-end tests in `tests/` run this binary.
        let tracer = build::tracer(true)?;
        test.env("TRACER_BIN", &tracer);
        // They share ports, namespaces and iptables rules: one at a time.
        test.args(["--", "--test-threads=1"]);
    }

    let shown = cmd::display(&test);
    eprintln!("xtask: $ {shown}");
    let mut child = test
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let mut counts = Counts::default();
    // Pass the test output through, counting as it goes.
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        counts.add(&line);
    }
    let status = child.wait().context("waiting for cargo test")?;
    let secs = started.elapsed().as_secs_f64();

    if counts.binaries == 0 {
        eprintln!("xtask: cargo test ran no test binary ({status}); see the errors above");
        return Ok(ExitCode::FAILURE);
    }
    // The closing line, in the plain "N passed, N failed" form.
    println!(
        "summary: {} passed, {} failed, {} skipped",
        counts.passed, counts.failed, counts.ignored
    );
    if status.success() && counts.failed == 0 {
        eprintln!(
            "xtask: tests passed in {secs:.0} s ({} test binaries)",
            counts.binaries
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("xtask: tests FAILED in {secs:.0} s (cargo test: {status})");
        Ok(ExitCode::FAILURE)
    }
}

/// Totals over libtest's `test result:` lines.
#[derive(Debug, Default, PartialEq)]
struct Counts {
    binaries: u32,
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Counts {
    /// Adds one line of output if it is a libtest result line, e.g.
    /// `test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s`.
    fn add(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        let Some((_, fields)) = rest.split_once(". ") else {
            return;
        };
        self.binaries += 1;
        for field in fields.split(';') {
            let mut words = field.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else {
                continue;
            };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Counts;

    #[test]
    fn counts_libtest_result_lines() {
        let mut counts = Counts::default();
        for line in [
            "running 3 tests",
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 5.20s",
            "test something ... ok",
        ] {
            counts.add(line);
        }
        assert_eq!(
            counts,
            Counts {
                binaries: 2,
                passed: 5,
                failed: 1,
                ignored: 1
            }
        );
    }
}
