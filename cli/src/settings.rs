//! The CLI's side of the one configuration path: a flag for every setting of
//! `darkrift_etcd::config::layers::SETTINGS` (registry settings global, the server's identity
//! on `register`), and their values handed to the same resolution the library uses.

use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, CommandFactory};
use darkrift_etcd::config::layers::{Layered, Layers, Scope, Setting, SETTINGS};

use crate::fail::Failure;
use crate::Cli;

fn arg(s: &Setting) -> Arg {
    let action = if s.key == "properties" {
        ArgAction::Append
    } else {
        ArgAction::Set
    };
    let aliases = if s.env_aliases.is_empty() {
        String::new()
    } else {
        format!(", {}", s.env_aliases.join(", "))
    };
    let default = s
        .default_shown()
        .map(|v| format!(" [default: {v}]"))
        .unwrap_or_default();
    Arg::new(s.key)
        .long(s.flag)
        .value_name(s.value_name)
        .action(action)
        .help(format!(
            "{} [env: {}{aliases}]{default}",
            capitalise(s.about),
            s.env
        ))
}

fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map_or_else(String::new, |c| {
        c.to_uppercase().chain(chars).collect::<String>() + "."
    })
}

/// The whole command line: the derived commands plus a flag per setting.
pub(crate) fn command() -> clap::Command {
    let mut cmd = Cli::command();
    for s in SETTINGS.iter().filter(|s| s.scope == Scope::Connector) {
        cmd = cmd.arg(arg(s).global(true).help_heading("Registry settings"));
    }
    cmd.mut_subcommand("register", |mut sub| {
        for s in SETTINGS.iter().filter(|s| s.scope == Scope::Server) {
            sub = sub.arg(arg(s));
        }
        sub
    })
}

/// Resolves every setting from the file, the environment and the flags given.
pub(crate) fn resolve(
    file: Option<PathBuf>,
    command: &clap::Command,
    matches: &ArgMatches,
) -> Result<Layered, Failure> {
    // Global flags are propagated to the subcommand's matches, so they hold every flag.
    let sub = matches.subcommand().map_or(matches, |(_, m)| m);
    let mut flags = Vec::new();
    for s in SETTINGS {
        // `try_` first: asking about an argument this command lacks (`group` outside
        // `register`) is an error, not a panic.
        let Ok(Some(values)) = sub.try_get_many::<String>(s.key) else {
            continue;
        };
        if sub.value_source(s.key) == Some(clap::parser::ValueSource::CommandLine) {
            flags.extend(values.map(|v| (s.key, v.clone())));
        }
    }
    let mut layers = Layers::from_env();
    layers.file = file;
    layers.flags = flags;
    layers.also_known = command
        .get_arguments()
        .chain(
            command
                .get_subcommands()
                .flat_map(clap::Command::get_arguments),
        )
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect();
    layers.resolve().map_err(Failure::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Vec<(String, String)> {
        let mut argv = vec!["darkrift-etcd"];
        argv.extend_from_slice(args);
        let cmd = command();
        let m = cmd.clone().try_get_matches_from(argv).unwrap();
        let sub = m.subcommand().map_or(&m, |(_, s)| s);
        SETTINGS
            .iter()
            .filter_map(|s| {
                let v = sub.try_get_many::<String>(s.key).ok()??;
                Some(v.map(|v| (s.key.to_owned(), v.clone())).collect::<Vec<_>>())
            })
            .flatten()
            .collect()
    }

    #[test]
    fn every_setting_has_its_flag_before_or_after_the_command() {
        let got = flags(&["--prefix", "/p", "ls", "--request-timeout", "2s"]);
        assert!(got.contains(&("prefix".into(), "/p".into())), "{got:?}");
        assert!(
            got.contains(&("request_timeout".into(), "2s".into())),
            "{got:?}"
        );
        let got = flags(&[
            "register",
            "--group",
            "g",
            "--host",
            "h",
            "--port",
            "1",
            "--property",
            "a=1",
            "--property",
            "b=2",
            "--ttl",
            "5",
        ]);
        assert_eq!(got.iter().filter(|(k, _)| k == "properties").count(), 2);
        assert!(got.contains(&("lease_ttl".into(), "5".into())));
        command().debug_assert();
    }

    #[test]
    fn registry_flags_show_their_defaults_in_help() {
        let help = command().render_long_help().to_string();
        for want in [
            "[default: http://127.0.0.1:2379]",
            "[default: /darkrift]",
            "[default: 10s]",
            "[default: 65535]",
            "[default: fail-stop]",
        ] {
            assert!(help.contains(want), "{want}: {help}");
        }
        assert!(!help.contains("[default: ***]"), "{help}");
    }

    #[test]
    fn the_server_identity_is_only_a_register_flag() {
        let err = command()
            .try_get_matches_from(["darkrift-etcd", "ls", "--host", "h"])
            .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
    }
}
