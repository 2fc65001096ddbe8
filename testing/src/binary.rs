//! Which etcd binary to launch: `ETCD_BIN`, else the first `etcd` on `PATH`.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::TestingError;

/// Environment variable naming the etcd binary to launch.
pub const ETCD_BIN_ENV: &str = "ETCD_BIN";

/// Returns the etcd binary to launch.
///
/// The `ETCD_BIN` environment variable wins if it is set and not empty: either a path, or a
/// bare name that is looked up on `PATH`. Otherwise the first executable `etcd` on `PATH` is
/// used.
///
/// # Errors
///
/// [`TestingError::BinaryNotFound`] if `ETCD_BIN` does not name an executable file, or if it
/// is unset and no `etcd` is on `PATH`.
pub fn etcd_binary() -> Result<PathBuf, TestingError> {
    resolve_binary(
        std::env::var_os(ETCD_BIN_ENV),
        std::env::var_os("PATH").as_deref(),
    )
}

/// [`etcd_binary`] with the environment passed in, so it can be tested without touching the
/// process environment.
fn resolve_binary(
    etcd_bin: Option<OsString>,
    path: Option<&OsStr>,
) -> Result<PathBuf, TestingError> {
    if let Some(value) = etcd_bin.filter(|v| !v.is_empty()) {
        let candidate = PathBuf::from(&value);
        if candidate.components().count() > 1 || candidate.is_absolute() {
            if is_executable_file(&candidate) {
                return Ok(candidate);
            }
            return Err(TestingError::BinaryNotFound(format!(
                "{ETCD_BIN_ENV}={} is not an executable file",
                candidate.display()
            )));
        }
        return search_path(&value, path).ok_or_else(|| {
            TestingError::BinaryNotFound(format!(
                "{ETCD_BIN_ENV}={} was not found on PATH",
                candidate.display()
            ))
        });
    }
    search_path(OsStr::new("etcd"), path).ok_or_else(|| {
        TestingError::BinaryNotFound(format!(
            "{ETCD_BIN_ENV} is not set and there is no executable `etcd` on PATH; install etcd \
             (e.g. `bash scripts/setup.sh`) or point {ETCD_BIN_ENV} at an etcd binary"
        ))
    })
}

fn search_path(name: &OsStr, path: Option<&OsStr>) -> Option<PathBuf> {
    let path = path?;
    std::env::split_paths(path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable_file(candidate))
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    fn fake_executable(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\n").expect("write fake binary");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod fake binary");
        path
    }

    #[test]
    fn etcd_bin_path_wins_over_path() {
        let dir = TempDir::new().expect("tempdir");
        let on_path = fake_executable(dir.path(), "etcd");
        let other = fake_executable(dir.path(), "etcd-3.4");
        let path = OsString::from(dir.path());
        let found = resolve_binary(Some(other.clone().into()), Some(&path)).expect("resolve");
        assert_eq!(found, other);
        let found = resolve_binary(None, Some(&path)).expect("resolve");
        assert_eq!(found, on_path);
        // Empty means unset.
        let found = resolve_binary(Some(OsString::new()), Some(&path)).expect("resolve");
        assert_eq!(found, on_path);
        // A bare name is looked up on PATH.
        let found = resolve_binary(Some("etcd-3.4".into()), Some(&path)).expect("resolve");
        assert_eq!(found, other);
    }

    #[test]
    fn missing_binaries_are_reported() {
        let dir = TempDir::new().expect("tempdir");
        let not_executable = dir.path().join("etcd");
        std::fs::write(&not_executable, "").expect("write");
        let path = OsString::from(dir.path());
        let err = resolve_binary(None, Some(&path)).expect_err("not executable");
        assert!(matches!(err, TestingError::BinaryNotFound(_)), "{err}");
        let err =
            resolve_binary(Some(dir.path().join("nope").into()), Some(&path)).expect_err("missing");
        assert!(err.to_string().contains("ETCD_BIN="), "{err}");
        let err = resolve_binary(None, None).expect_err("no PATH");
        assert!(matches!(err, TestingError::BinaryNotFound(_)), "{err}");
    }
}
