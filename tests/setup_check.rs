//! The machine running the suite has everything the build and the tests need, checked the way
//! `scripts/setup.sh` checks it: by *using* each need (protoc compiling a file that imports
//! `google/protobuf/descriptor.proto`, each etcd printing its version, cargo fmt and clippy
//! running). A machine that lacks something fails here, loudly, with the package to install,
//! instead of in a build script or a launcher far away from the cause.

use std::process::Command;

#[test]
fn setup_checks_pass_on_this_machine() {
    let root = env!("CARGO_MANIFEST_DIR");
    let output = Command::new("bash")
        .arg(format!("{root}/scripts/setup.sh"))
        .arg("--check")
        .output()
        .expect("bash runs scripts/setup.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "this machine lacks what the build or the tests need; run `bash scripts/setup.sh` or \
         install the packages named here:\n{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.trim().is_empty(),
        "a passing check prints nothing on stdout, got: {stdout}"
    );
}

#[test]
fn setup_check_names_the_package_for_a_broken_protoc() {
    // A protoc that exists but cannot import the well-known types (Debian's protobuf-compiler
    // without libprotobuf-dev) must be reported with the package that repairs it. Stand one up
    // in front of PATH: a wrapper that fails exactly like the half-installed one.
    let dir = tempfile::tempdir().expect("temp dir");
    let fake = dir.path().join("protoc");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'google/protobuf/descriptor.proto: File not found.' >&2\nexit 1\n",
    )
    .expect("write fake protoc");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755))
            .expect("chmod fake protoc");
    }
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let root = env!("CARGO_MANIFEST_DIR");
    let output = Command::new("bash")
        .arg(format!("{root}/scripts/setup.sh"))
        .arg("--check")
        .env("PATH", path)
        .output()
        .expect("bash runs scripts/setup.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "stdout: {stdout}");
    assert!(
        stdout.contains("libprotobuf-dev"),
        "the missing package is named: {stdout}"
    );
}
