//! `cargo xtask bench`: not written yet.

use std::process::ExitCode;

/// Placeholder until the benchmark exists.
pub fn bench() -> ExitCode {
    eprintln!("xtask bench: not implemented yet");
    ExitCode::from(2)
}
