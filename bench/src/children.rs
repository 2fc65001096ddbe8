//! Child processes of the figures: the workspace's release binaries (the CLI, the mesh
//! server), built on demand, and quiet spawning.

use crate::Res;

/// Spawns a child that prints JSON lines on stdout (piped), logs only errors (discarded), and
/// dies with the benchmark.
pub(crate) fn spawn_quiet(
    cmd: &mut tokio::process::Command,
) -> std::io::Result<tokio::process::Child> {
    cmd.env("RUST_LOG", "error")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
}

/// The repository root (this crate is bench/).
pub(crate) fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds `bin` of the workspace member `package` (release, a no-op when fresh) and returns its
/// path: a benchmark sees no other package's binaries.
pub(crate) fn release_binary(package: &str, bin: &str) -> Res<std::path::PathBuf> {
    let root = repo_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = std::process::Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--release", "-p", package, "--bin", bin])
        .status()?;
    if !status.success() {
        return Err(format!("building {bin} ({package}) failed").into());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), std::path::PathBuf::from);
    Ok(target.join("release").join(bin))
}
