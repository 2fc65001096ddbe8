//! `darkrift-etcd`: the operator CLI of the registry.
//!
//! stdout carries only data (JSON lines or the `ls` table); logs go to stderr through
//! `tracing` (`RUST_LOG` sets the filter).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use darkrift_etcd::config::{AuthConfig, Secret, TlsConfig};
use darkrift_etcd::{list_servers, Connector, ConnectorConfig, Event, ServerInfo};
use serde_json::json;

/// DarkRift server registry on etcd: register a server, watch the cluster, list servers.
#[derive(Debug, Parser)]
#[command(name = "darkrift-etcd", version, about)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// Connector settings file (TOML, see ConnectorConfig); options and DARKRIFT_ETCD_*
    /// variables override what it sets.
    #[arg(long, global = true, env = "DARKRIFT_ETCD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// etcd endpoints, comma-separated [default: http://127.0.0.1:2379].
    #[arg(
        long,
        global = true,
        env = "DARKRIFT_ETCD_ENDPOINTS",
        value_delimiter = ','
    )]
    endpoints: Option<Vec<String>>,
    /// Key prefix of the registry (several clusters can share one etcd) [default: /darkrift].
    #[arg(long, global = true, env = "DARKRIFT_ETCD_PREFIX")]
    prefix: Option<String>,
    /// Bound on reaching etcd, in seconds (e.g. `5`, `0.5`, `500ms`) [default: 5].
    #[arg(long, global = true, env = "DARKRIFT_ETCD_CONNECT_TIMEOUT", value_parser = parse_duration)]
    connect_timeout: Option<Duration>,
    /// Size of the id space (ids 1..=N); every server of a prefix must agree [default: 65535].
    #[arg(long, global = true, env = "DARKRIFT_ETCD_ID_SPACE")]
    id_space: Option<u16>,
    /// CA certificate (PEM) that signed etcd's server certificate. Turns TLS on: every
    /// endpoint must then be https://. Only this CA is trusted.
    #[arg(long, global = true, env = "DARKRIFT_ETCD_CA_CERT", value_name = "PEM")]
    ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs --key and --ca-cert.
    #[arg(long, global = true, env = "DARKRIFT_ETCD_CERT", value_name = "PEM")]
    cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, global = true, env = "DARKRIFT_ETCD_KEY", value_name = "PEM")]
    key: Option<PathBuf>,
    /// etcd user (etcd authentication); needs --password or --password-file.
    #[arg(long, global = true, env = "DARKRIFT_ETCD_USER")]
    user: Option<String>,
    /// Password of --user. Prefer --password-file or the environment variable: command-line
    /// arguments are visible to other local users. Never printed or logged.
    #[arg(
        long,
        global = true,
        env = "DARKRIFT_ETCD_PASSWORD",
        hide_env_values = true,
        value_parser = parse_secret
    )]
    password: Option<Secret>,
    /// File holding the password of --user (one trailing newline is ignored).
    #[arg(
        long,
        global = true,
        env = "DARKRIFT_ETCD_PASSWORD_FILE",
        value_name = "PATH"
    )]
    password_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register a server, print the cluster's joins and leaves as JSON lines, deregister on
    /// SIGINT or SIGTERM.
    Register {
        /// DarkRift group of this server.
        #[arg(long)]
        group: String,
        /// Host other servers dial.
        #[arg(long)]
        host: String,
        /// Port other servers dial (1..=65535).
        #[arg(long)]
        port: u16,
        /// A server property, `key=value`; repeatable.
        #[arg(long = "property", value_parser = parse_property)]
        properties: Vec<(String, String)>,
        /// Lease TTL in whole seconds: a crashed server leaves within about this long
        /// [default: 10, or lease_ttl of --config].
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Print the cluster's joins and leaves as JSON lines, without registering.
    Watch {
        /// Only this group's servers.
        #[arg(long)]
        group: Option<String>,
    },
    /// List the live servers.
    Ls {
        /// Only this group's servers.
        #[arg(long)]
        group: Option<String>,
        /// A JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, scale) = if let Some(ms) = s.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(secs) = s.strip_suffix('s') {
        (secs, 1.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration in seconds"))?;
    Duration::try_from_secs_f64(v * scale).map_err(|e| format!("{s:?}: {e}"))
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

fn parse_secret(s: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(s))
}

/// Reads a password file; the error names the file, never its content.
fn read_password_file(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--password-file {}: {e}", path.display()))?;
    let password = text
        .strip_suffix('\n')
        .map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
    if password.is_empty() {
        return Err(format!(
            "--password-file {}: the file is empty",
            path.display()
        ));
    }
    Ok(Secret::new(password))
}

/// The settings the options describe. The pairings of the security options are checked here
/// rather than with clap's `requires`, which misjudges global options set through the
/// environment.
fn config(global: &Global) -> Result<ConnectorConfig, String> {
    let tls = match (&global.ca_cert, &global.cert, &global.key) {
        (None, None, None) => None,
        (None, _, _) => return Err("--cert and --key need --ca-cert".into()),
        (Some(_), Some(_), None) => return Err("--cert needs --key".into()),
        (Some(_), None, Some(_)) => return Err("--key needs --cert".into()),
        (Some(ca), cert, key) => Some(TlsConfig {
            ca_cert: ca.clone(),
            cert: cert.clone(),
            key: key.clone(),
        }),
    };
    let auth = match (&global.user, &global.password, &global.password_file) {
        (None, None, None) => None,
        (None, _, _) => return Err("--password and --password-file need --user".into()),
        (Some(_), Some(_), Some(_)) => {
            return Err("give either --password or --password-file, not both".into());
        }
        (Some(user), Some(password), None) => Some(AuthConfig::new(user.clone(), password.clone())),
        (Some(user), None, Some(file)) => {
            Some(AuthConfig::new(user.clone(), read_password_file(file)?))
        }
        (Some(_), None, None) => {
            return Err("--user needs --password or --password-file".into());
        }
    };
    let mut cfg = match &global.config {
        Some(file) => ConnectorConfig::from_toml_file(file).map_err(|e| e.to_string())?,
        None => ConnectorConfig::default(),
    };
    if let Some(endpoints) = &global.endpoints {
        cfg.endpoints.clone_from(endpoints);
    }
    if let Some(prefix) = &global.prefix {
        cfg.prefix.clone_from(prefix);
    }
    if let Some(t) = global.connect_timeout {
        cfg.connect_timeout = t;
    }
    if let Some(n) = global.id_space {
        cfg.id_space = n;
    }
    if tls.is_some() {
        cfg.tls = tls;
    }
    if auth.is_some() {
        cfg.auth = auth;
    }
    Ok(cfg)
}

fn join_line(server: &ServerInfo, revision: i64) -> serde_json::Value {
    json!({
        "event": "join",
        "id": server.id,
        "group": server.group,
        "host": server.host,
        "port": server.port,
        "properties": server.properties,
        "revision": revision,
    })
}

/// The JSON line of an event, or `None` when `group` filters it out.
fn event_line(event: &Event, group: Option<&str>) -> Option<serde_json::Value> {
    match event {
        Event::Join { server, revision } => group
            .is_none_or(|g| g == server.group)
            .then(|| join_line(server, *revision)),
        Event::Leave {
            id,
            group: g,
            revision,
        } => group
            .is_none_or(|want| want == g)
            .then(|| json!({"event": "leave", "id": id, "revision": revision})),
        Event::Synced { .. } => Some(json!({"event": "synced"})),
        Event::LeaseLost { id, reason } => {
            Some(json!({"event": "lease_lost", "id": id, "reason": reason}))
        }
        Event::Reregistered {
            id,
            previous_id,
            revision,
        } => Some(
            json!({"event": "reregistered", "id": id, "previous_id": previous_id, "revision": revision}),
        ),
        Event::RegistrationStopped { id, reason } => {
            Some(json!({"event": "registration_stopped", "id": id, "reason": reason}))
        }
        Event::Stale { revision } => Some(json!({"event": "stale", "revision": revision})),
        Event::Fresh { revision } => Some(json!({"event": "fresh", "revision": revision})),
        _ => None,
    }
}

fn print(value: &serde_json::Value) {
    println!("{value}");
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,darkrift_etcd=info")),
        )
        .init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Register {
            group,
            host,
            port,
            properties,
            ttl,
        } => {
            let props: BTreeMap<String, String> = properties.iter().cloned().collect();
            register(&cli.global, group, host, *port, props, *ttl).await
        }
        Command::Watch { group } => watch(&cli.global, group.as_deref()).await,
        Command::Ls { group, json } => ls(&cli.global, group.as_deref(), *json).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("darkrift-etcd: error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn register(
    global: &Global,
    group: &str,
    host: &str,
    port: u16,
    properties: BTreeMap<String, String>,
    ttl: Option<u64>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = config(global)?;
    if let Some(ttl) = ttl {
        cfg = cfg.with_lease_ttl(Duration::from_secs(ttl));
    }
    // Validate the input before touching the network: bad input never reaches etcd.
    darkrift_etcd::Registration::new(group, host, port, properties.clone())?;
    let stop = tokio::spawn(darkrift_etcd::signal::shutdown_signal());
    let connector = Connector::connect(cfg).await?;
    let mut events = connector.events()?;
    let id = connector
        .register_server(group, host, port, properties)
        .await?;
    print(&json!({"event": "registered", "id": id, "group": group, "host": host, "port": port}));
    tokio::pin!(stop);
    loop {
        tokio::select! {
            signal = &mut stop => {
                if let Ok(Err(e)) = signal {
                    tracing::warn!(error = %e, "signal handling failed; deregistering");
                }
                break;
            }
            event = events.recv() => match event {
                Some(Event::RegistrationStopped { id, reason }) => {
                    print(&json!({"event": "registration_stopped", "id": id, "reason": reason}));
                    return Err(format!("registration of server {id} stopped: {reason}").into());
                }
                Some(event) => if let Some(line) = event_line(&event, None) { print(&line) },
                None => break,
            },
        }
    }
    connector.deregister_server().await?;
    print(&json!({"event": "deregistered", "id": id}));
    Ok(())
}

async fn watch(global: &Global, group: Option<&str>) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(g) = group {
        darkrift_etcd::record::validate_group(g)?;
    }
    let stop = tokio::spawn(darkrift_etcd::signal::shutdown_signal());
    let connector = Connector::connect(config(global)?).await?;
    let mut events = connector.events()?;
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            event = events.recv() => match event {
                Some(event) => if let Some(line) = event_line(&event, group) { print(&line) },
                None => return Ok(()),
            },
        }
    }
}

async fn ls(
    global: &Global,
    group: Option<&str>,
    as_json: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(g) = group {
        darkrift_etcd::record::validate_group(g)?;
    }
    let (_revision, servers, skipped) = list_servers(&config(global)?).await?;
    let servers: Vec<ServerInfo> = servers
        .into_iter()
        .filter(|s| group.is_none_or(|g| g == s.group))
        .collect();
    if skipped > 0 {
        tracing::warn!(skipped, "malformed records under the prefix were skipped");
    }
    if as_json {
        let rows: Vec<serde_json::Value> = servers
            .iter()
            .map(|s| json!({"id": s.id, "group": s.group, "host": s.host, "port": s.port, "properties": s.properties}))
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    let gw = servers
        .iter()
        .map(|s| s.group.len())
        .max()
        .unwrap_or(0)
        .max(5);
    let hw = servers
        .iter()
        .map(|s| s.host.len())
        .max()
        .unwrap_or(0)
        .max(4);
    println!(
        "{:>5}  {:gw$}  {:hw$}  {:>5}  PROPERTIES",
        "ID", "GROUP", "HOST", "PORT"
    );
    for s in &servers {
        let props: Vec<String> = s
            .properties
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "{:>5}  {:gw$}  {:hw$}  {:>5}  {}",
            s.id,
            s.group,
            s.host,
            s.port,
            props.join(",")
        );
    }
    Ok(())
}

#[cfg(test)]
mod security_tests {
    use super::*;

    fn cfg(args: &[&str]) -> Result<ConnectorConfig, String> {
        let mut argv = vec!["darkrift-etcd"];
        argv.extend_from_slice(args);
        argv.push("ls");
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        config(&cli.global)
    }

    #[test]
    fn security_options_pair_up() {
        let tls = cfg(&["--ca-cert", "ca", "--cert", "c", "--key", "k"]).unwrap();
        let tls = tls.tls.unwrap();
        assert_eq!(tls.ca_cert, PathBuf::from("ca"));
        assert_eq!(tls.key, Some(PathBuf::from("k")));
        assert!(cfg(&["--cert", "c", "--key", "k"]).is_err());
        assert!(cfg(&["--ca-cert", "ca", "--cert", "c"]).is_err());
        assert!(cfg(&["--ca-cert", "ca", "--key", "k"]).is_err());
        let auth = cfg(&["--user", "u", "--password", "pw"])
            .unwrap()
            .auth
            .unwrap();
        assert_eq!((auth.user.as_str(), auth.password.expose()), ("u", "pw"));
        assert!(cfg(&["--user", "u"]).is_err());
        assert!(cfg(&["--password", "pw"]).is_err());
        assert!(cfg(&["--user", "u", "--password", "pw", "--password-file", "f"]).is_err());
    }

    #[test]
    fn password_files_lose_one_newline_and_errors_hide_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        for (content, want) in [
            ("pw\n", "pw"),
            ("pw\r\n", "pw"),
            ("pw", "pw"),
            ("p w\n\n", "p w\n"),
        ] {
            std::fs::write(&path, content).unwrap();
            assert_eq!(read_password_file(&path).unwrap().expose(), want);
        }
        std::fs::write(&path, "\n").unwrap();
        assert!(read_password_file(&path).unwrap_err().contains("empty"));
        let missing = read_password_file(&dir.path().join("nope")).unwrap_err();
        assert!(missing.contains("--password-file"), "{missing}");
    }
}
