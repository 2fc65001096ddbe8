//! `darkrift-etcd`: the operator CLI of the registry.
//!
//! stdout carries only data (JSON lines, tables); logs go to stderr (`RUST_LOG`,
//! `--log-format`). Settings come from one place, `darkrift_etcd::config::layers`: defaults <
//! `--config` TOML < `DARKRIFT_ETCD_*` variables < flags. Exit codes: see [`fail::Exit`] and
//! docs/cli.md.

mod agent;
mod fail;
mod follow;
mod inspect;
mod log;
mod out;
mod settings;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::fail::Failure;

/// DarkRift server registry on etcd: register a server, watch the cluster, inspect, evict.
#[derive(Debug, Parser)]
#[command(
    name = "darkrift-etcd",
    version,
    about,
    after_help = "Examples:\n  darkrift-etcd --endpoints http://etcd:2379 ls\n  \
                  darkrift-etcd register --group game --host 10.0.0.5 --port 4296 --ttl 10s\n  \
                  darkrift-etcd watch --group game | jq .\n\n\
                  Exit codes: 0 ok, 1 other error, 2 usage or configuration, 3 etcd unreachable, \
                  4 not found, 5 no id (id space exhausted, registration stopped)."
)]
struct Cli {
    /// Settings file (TOML, the fields of `ConnectorConfig`); variables and flags override it.
    #[arg(long, global = true, env = "DARKRIFT_ETCD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format on stderr (colour only on a terminal).
    #[arg(long, global = true, env = "DARKRIFT_ETCD_LOG_FORMAT", value_enum, default_value_t = log::Format::Text)]
    log_format: log::Format,
    #[command(subcommand)]
    command: Command,
}

/// `-o` of `ls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ListFormat {
    /// ID, GROUP, HOST, PORT, AGE, TTL LEFT.
    Table,
    /// The table and PROPERTIES.
    Wide,
    /// One JSON line `{revision, servers:[…]}`.
    Json,
}

/// `-o` of `get`, `evict`, `config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OneFormat {
    /// For people.
    Text,
    /// One JSON line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register a server (group, host, port from flags or `DARKRIFT_ETCD_GROUP`/`HOST`/`PORT`),
    /// print the cluster's joins and leaves as JSON lines, deregister on SIGINT or SIGTERM.
    #[command(
        after_help = "Example:\n  darkrift-etcd register --group game --host 10.0.0.5 --port 4296 --property region=eu --ttl 10s\n  \
                      # on Kubernetes: env DARKRIFT_ETCD_HOST from the pod IP, no --host"
    )]
    Register {
        /// Serve Prometheus `/metrics` and `/healthz` (200 while registered and the view is
        /// fresh) on HOST:PORT (`:PORT` for every interface; a host name is resolved).
        #[arg(long, env = "DARKRIFT_ETCD_METRICS_ADDR", value_name = "HOST:PORT", value_parser = parse_metrics_addr)]
        metrics_addr: Option<SocketAddr>,
        /// When peers are told: `immediate` (at once), or `probe` (the id is reserved at once,
        /// a `reserved` line printed, and the server announced when a TCP connect to its
        /// host:port succeeds, or after --ready-bound).
        #[arg(long, value_enum, env = "DARKRIFT_ETCD_READINESS", default_value_t = follow::Readiness::Immediate)]
        readiness: follow::Readiness,
        /// With `--readiness probe`: announce anyway after this long (the id is in use).
        #[arg(long, value_parser = agent::duration, default_value = "30s", value_name = "DURATION")]
        ready_bound: std::time::Duration,
    },
    /// Serve any number of game servers (a DarkRift plugin, or any HTTP client) through a local
    /// API over one etcd connection and one watch (docs/agent-api.md).
    #[command(
        after_help = "Examples:\n  darkrift-etcd agent --listen 127.0.0.1:7600\n  \
                      darkrift-etcd agent --listen unix:/run/darkrift/agent.sock\n  \
                      darkrift-etcd agent --listen 127.0.0.1:0 --exit-with-stdin   # a plugin's child"
    )]
    Agent(agent::AgentArgs),
    /// Print the cluster's joins and leaves as JSON lines, without registering.
    #[command(after_help = "Example:\n  darkrift-etcd watch --group game | head -1")]
    Watch {
        /// Only this group's servers.
        #[arg(long)]
        group: Option<String>,
        /// Serve Prometheus `/metrics` and `/healthz` (200 while the view is fresh) on
        /// HOST:PORT (`:PORT` for every interface; a host name is resolved).
        #[arg(long, env = "DARKRIFT_ETCD_METRICS_ADDR", value_name = "HOST:PORT", value_parser = parse_metrics_addr)]
        metrics_addr: Option<SocketAddr>,
    },
    /// List the live servers.
    #[command(
        after_help = "Examples:\n  darkrift-etcd ls -o wide\n  darkrift-etcd ls --group game -o json | jq '.servers[].id'"
    )]
    Ls {
        /// Only this group's servers.
        #[arg(long)]
        group: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = ListFormat::Table)]
        output: ListFormat,
        /// Same as `-o json` (kept for scripts written against earlier versions).
        #[arg(long, hide = true)]
        json: bool,
    },
    /// Show one server: record, lease, TTL left, create revision, age. Exit 4 if the id is
    /// not registered.
    #[command(after_help = "Example:\n  darkrift-etcd get 7 -o json")]
    Get {
        /// Server id.
        #[arg(value_parser = clap::value_parser!(u16).range(1..))]
        id: u16,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = OneFormat::Text)]
        output: OneFormat,
    },
    /// Remove a registration now and revoke its lease (guarded: a newer holder of the id is
    /// never deleted). Asks on a terminal unless --yes. A holder still running follows its
    /// `on_key_removed` policy (restore: it re-registers; stop: it stops).
    #[command(after_help = "Example:\n  darkrift-etcd evict 7 --yes")]
    Evict {
        /// Server id.
        #[arg(value_parser = clap::value_parser!(u16).range(1..))]
        id: u16,
        /// Do not ask (needed when stdin is not a terminal).
        #[arg(long, short)]
        yes: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = OneFormat::Text)]
        output: OneFormat,
    },
    /// Check the effective settings and print each with where it came from (default, file,
    /// env, flag); secrets masked. Exit 2, naming the setting and its source, if one is invalid.
    #[command(
        after_help = "Examples:\n  DARKRIFT_ETCD_LEASE_TTL=5s darkrift-etcd config --ttl 7\n  \
                      darkrift-etcd config -o json | jq -r '.settings[] | select(.key == \"endpoints\").value'"
    )]
    Config {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = OneFormat::Text)]
        output: OneFormat,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Example:\n  darkrift-etcd completions bash > /etc/bash_completion.d/darkrift-etcd"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// A clap error as one line and a hint; help and version go to stdout as usual.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        // A closed stdout is not worth a panic.
        let _ = out::text(e.render().to_string().trim_end());
        return ExitCode::SUCCESS;
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = e.print();
        return fail::Exit::Usage.into();
    }
    Failure::usage(clap_message(&e.render().to_string()))
        .hint("see `darkrift-etcd --help` (or `darkrift-etcd <command> --help`)")
        .report()
}

/// clap's error text as one line: the error and what clap adds to it (`[possible values: …]`,
/// `tip: …`), without the usage line and the "For more information" line.
fn clap_message(text: &str) -> String {
    let parts: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let Some((first, more)) = parts.split_first() else {
        return "invalid usage".to_owned();
    };
    let mut line = first.trim_start_matches("error: ").to_owned();
    for part in more {
        line.push_str(if part.starts_with('[') { " " } else { "; " });
        line.push_str(part);
    }
    line
}

/// `--metrics-addr`: `HOST:PORT` with an IP address or a host name (`localhost:9100`, resolved
/// now, the first address taken), or `:PORT` for every interface (IPv4, as `0.0.0.0:PORT`).
fn parse_metrics_addr(text: &str) -> Result<SocketAddr, String> {
    if let Some(port) = text.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{text:?}: {port:?} is not a port (0..=65535)"))?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    if text
        .rsplit_once(':')
        .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
    {
        return Err(format!("{text:?} is not HOST:PORT or :PORT"));
    }
    text.to_socket_addrs()
        .map_err(|e| format!("{text:?}: cannot resolve the host: {e}"))?
        .next()
        .ok_or_else(|| format!("{text:?}: the host has no address"))
}

/// `clap_complete`'s bash script, for a binary name with a hyphen, names each subcommand's case
/// `darkrift__subcmd__etcd__subcmd__ls` while its word loop sets `darkrift__etcd__subcmd__ls`,
/// so nothing after the subcommand completed (clap-rs/clap#6421). Renaming the cases to what
/// the loop sets fixes it; once `clap_complete` is fixed this replaces nothing. Tested by driving
/// bash's completion function (tests/cli.rs).
fn bash_completion_fix(script: &str) -> String {
    script.replace("darkrift__subcmd__etcd", "darkrift__etcd")
}

#[tokio::main]
async fn main() -> ExitCode {
    let command = settings::command();
    let matches = match command.clone().try_get_matches() {
        Ok(m) => m,
        Err(e) => {
            fail::set_json(log::json_requested(std::env::args_os()));
            return usage_error(&e);
        }
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => {
            fail::set_json(log::json_requested(std::env::args_os()));
            return usage_error(&e);
        }
    };
    fail::set_json(cli.log_format == log::Format::Json);
    let repeats = log::init(cli.log_format);
    match run(&cli, &command, &matches, &repeats).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.report(),
    }
}

async fn run(
    cli: &Cli,
    command: &clap::Command,
    matches: &clap::ArgMatches,
    repeats: &log::Repeats,
) -> Result<(), Failure> {
    if let Command::Completions { shell } = &cli.command {
        let mut script = Vec::new();
        clap_complete::generate(*shell, &mut command.clone(), "darkrift-etcd", &mut script);
        let mut script = String::from_utf8_lossy(&script).into_owned();
        if *shell == clap_complete::Shell::Bash {
            script = bash_completion_fix(&script);
        }
        let _ = out::text(script.trim_end());
        return Ok(());
    }
    let layered = settings::resolve(cli.config.clone(), command, matches)?;
    for unknown in &layered.unknown_vars {
        tracing::warn!(target: log::TARGET, "{unknown}");
    }
    match &cli.command {
        Command::Register {
            metrics_addr,
            readiness,
            ready_bound,
        } => {
            let ready = follow::Ready {
                mode: *readiness,
                bound: *ready_bound,
            };
            follow::register(&layered, repeats, *metrics_addr, ready).await
        }
        Command::Watch {
            group,
            metrics_addr,
        } => follow::watch(&layered, group.as_deref(), repeats, *metrics_addr).await,
        Command::Ls {
            group,
            output,
            json,
        } => {
            let output = if *json { ListFormat::Json } else { *output };
            inspect::ls(&layered, group.as_deref(), output).await
        }
        Command::Get { id, output } => inspect::get(&layered, *id, *output).await,
        Command::Evict { id, yes, output } => inspect::evict(&layered, *id, *yes, *output).await,
        Command::Config { output } => inspect::config(&layered, cli.config.as_deref(), *output),
        Command::Agent(args) => agent::run(&layered, args).await,
        Command::Completions { .. } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_addresses_take_every_interface_and_host_names() {
        assert_eq!(
            parse_metrics_addr(":9100"),
            Ok(SocketAddr::from(([0, 0, 0, 0], 9100)))
        );
        assert_eq!(
            parse_metrics_addr("127.0.0.1:9100"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 9100)))
        );
        assert_eq!(
            parse_metrics_addr("[::1]:9100"),
            Ok("[::1]:9100".parse().unwrap())
        );
        let local = parse_metrics_addr("localhost:9100").expect("localhost resolves");
        assert!(local.ip().is_loopback() && local.port() == 9100, "{local}");
        for bad in [":", ":x", "9100", "localhost", "localhost:x", ":70000"] {
            assert!(parse_metrics_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_usage_error_keeps_the_possible_values() {
        let err = settings::command()
            .try_get_matches_from(["darkrift-etcd", "ls", "-o", "yaml"])
            .unwrap_err();
        let msg = clap_message(&err.render().to_string());
        assert_eq!(
            msg,
            "invalid value 'yaml' for '--output <OUTPUT>' [possible values: table, wide, json]"
        );
    }
}
