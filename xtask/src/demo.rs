//! `cargo xtask demo`: not written yet.

use std::process::ExitCode;

/// Placeholder until the demo exists.
pub fn demo() -> ExitCode {
    eprintln!("xtask demo: not implemented yet");
    ExitCode::from(2)
}
