//! The CLI's security options: TLS, mutual TLS and authentication from flags, variables and a
//! password file, and the password never printed.

// The integration tests' shared helpers, at the repository root.
#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/common/security.rs"]
mod pki;

use std::time::Duration;

use common::*;
use pki::{enable_auth, tls_etcd, Pki, PASSWORD};

/// Runs the CLI with `args` and `env` (the caller's `DARKRIFT_ETCD_*` removed), bounded.
async fn cli(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_darkrift-etcd"));
    command.args(args).kill_on_drop(true);
    for (key, _) in std::env::vars() {
        if key.starts_with("DARKRIFT_ETCD_") {
            command.env_remove(key);
        }
    }
    command.envs(env.iter().copied());
    let out = tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("the CLI finishes")
        .expect("the CLI runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `--help` documents every security option with its environment variable, and shows no
/// password taken from the environment.
#[tokio::test]
async fn cli_help_documents_the_security_options_and_hides_the_password() {
    let secret = "env-password-must-not-show";
    for args in [&["--help"][..], &["ls", "--help"], &["register", "--help"]] {
        let (ok, stdout, stderr) = cli(
            args,
            &[
                ("DARKRIFT_ETCD_PASSWORD", secret),
                ("DARKRIFT_ETCD_USER", "darkrift"),
            ],
        )
        .await;
        assert!(ok, "{args:?}: {stderr}");
        for option in [
            "--ca-cert",
            "--cert",
            "--key",
            "--user",
            "--password",
            "--password-file",
            "DARKRIFT_ETCD_CA_CERT",
            "DARKRIFT_ETCD_CERT",
            "DARKRIFT_ETCD_KEY",
            "DARKRIFT_ETCD_USER",
            "DARKRIFT_ETCD_PASSWORD",
            "DARKRIFT_ETCD_PASSWORD_FILE",
        ] {
            assert!(
                stdout.contains(option),
                "{args:?} does not document {option}"
            );
        }
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{args:?} shows the password"
        );
    }
}

/// The CLI over mutual TLS with authentication: `ls` works with a password file; a wrong
/// password fails with a clear message, and neither the message nor trace-level logs
/// contain the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_uses_tls_and_auth_and_never_prints_the_password() {
    let pki = Pki::generate();
    let etcd = tls_etcd(&pki, true).await;
    let prefix = prefix();
    enable_auth(&etcd, &prefix).await;
    let password_file = pki.path("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("write");
    let ca = pki.path("ca.pem");
    let cert = pki.path("client.pem");
    let key = pki.path("client-key.pem");
    let endpoint = etcd.endpoint(0);
    let base = [
        "--endpoints",
        endpoint.as_str(),
        "--prefix",
        prefix.as_str(),
        "--ca-cert",
        ca.to_str().expect("utf-8"),
        "--cert",
        cert.to_str().expect("utf-8"),
        "--key",
        key.to_str().expect("utf-8"),
        "--user",
        "darkrift",
    ];

    let file = password_file.to_str().expect("utf-8");
    let args: Vec<&str> = base
        .iter()
        .copied()
        .chain(["--password-file", file, "ls", "-o", "json"])
        .collect();
    let (ok, stdout, stderr) = cli(&args, &[]).await;
    assert!(ok, "ls with TLS and a password file: {stderr}");
    let listed: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON line");
    assert_eq!(listed["servers"], serde_json::json!([]));

    // The same through the environment.
    let args: Vec<&str> = base.iter().copied().chain(["ls", "-o", "json"]).collect();
    let (ok, _, stderr) = cli(&args, &[("DARKRIFT_ETCD_PASSWORD", PASSWORD)]).await;
    assert!(ok, "ls with the password in the environment: {stderr}");

    let wrong = "wrong-password-must-not-show";
    for env in [
        vec![("DARKRIFT_ETCD_PASSWORD", wrong), ("RUST_LOG", "trace")],
        vec![("RUST_LOG", "trace")],
    ] {
        let mut args: Vec<&str> = base.to_vec();
        if env.len() == 1 {
            args.extend(["--password", wrong]);
        }
        args.extend(["ls"]);
        let (ok, stdout, stderr) = cli(&args, &env).await;
        assert!(!ok, "a wrong password fails");
        assert!(
            stderr.contains("authentication as user \"darkrift\" failed"),
            "clear message: {stderr}"
        );
        assert!(
            !stdout.contains(wrong) && !stderr.contains(wrong),
            "the password leaked:\n{stderr}"
        );
    }
}

/// A certificate path that cannot be read, or a key given as the certificate, is a usage error
/// (exit code 2) naming the field. The files are read when the CLI connects, before any
/// network attempt: the endpoint has no listener, and trying it would report "unreachable".
#[tokio::test]
async fn a_bad_certificate_file_is_a_usage_error_before_connecting() {
    let pki = Pki::generate();
    let ca = pki.path("ca.pem");
    let cert = pki.path("client.pem");
    let key = pki.path("client-key.pem");
    let missing = pki.path("no-such-ca.pem");
    let port = darkrift_etcd_testing::free_port().expect("a free port");
    let endpoint = format!("https://127.0.0.1:{port}");
    for (tls, field, why) in [
        (
            vec!["--ca-cert", missing.to_str().expect("utf-8")],
            "tls.ca_cert",
            "cannot read",
        ),
        (
            vec![
                "--ca-cert",
                ca.to_str().expect("utf-8"),
                "--cert",
                key.to_str().expect("utf-8"),
                "--key",
                cert.to_str().expect("utf-8"),
            ],
            "tls.cert",
            "is not a PEM file",
        ),
    ] {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_darkrift-etcd"));
        command
            .args(["--endpoints", endpoint.as_str()])
            .args(&tls)
            .arg("ls")
            .kill_on_drop(true);
        for (name, _) in std::env::vars() {
            if name.starts_with("DARKRIFT_ETCD_") {
                command.env_remove(name);
            }
        }
        let out = tokio::time::timeout(Duration::from_secs(30), command.output())
            .await
            .expect("the CLI finishes")
            .expect("the CLI runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{tls:?}: {stderr}");
        assert!(
            stderr.contains(field) && stderr.contains(why),
            "{tls:?}: {stderr}"
        );
        assert!(!stderr.contains("unreachable"), "{tls:?}: {stderr}");
    }
}
