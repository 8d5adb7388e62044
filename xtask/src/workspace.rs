//! Where things are: the workspace root, the target directory, cargo's bin
//! directory, and programs on PATH.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
};

/// The workspace root (the parent of this crate's manifest directory).
pub fn root() -> PathBuf {
    let xtask_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask_dir
        .parent()
        .expect("xtask sits inside the workspace")
        .to_path_buf()
}

/// Cargo's target directory; child cargo commands run in [`root`], so a
/// relative `CARGO_TARGET_DIR` is relative to it.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root().join(dir),
        None => root().join("target"),
    }
}

/// `$CARGO_HOME/bin`, where `cargo install` puts bpf-linker.
pub fn cargo_bin_dir() -> PathBuf {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin")
}

/// Puts [`cargo_bin_dir`] first on this process's PATH so every child finds
/// what `cargo install` put there. Call before any thread is spawned.
pub fn add_cargo_bin_to_path() {
    let bin = cargo_bin_dir();
    let old = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&old).any(|p| p == bin) {
        return;
    }
    let new = prepend_path(&bin, &old);
    env::set_var("PATH", new);
}

/// `dir` followed by the entries of `path`, as a PATH value.
pub fn prepend_path(dir: &Path, path: &OsString) -> OsString {
    let entries = std::iter::once(dir.to_path_buf()).chain(env::split_paths(path));
    env::join_paths(entries).unwrap_or_else(|_| path.clone())
}

/// The first executable called `name` on PATH, or in the sbin directories a
/// non-login root shell may leave out (nginx and iptables live there).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
