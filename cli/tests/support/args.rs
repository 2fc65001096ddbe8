//! Command lines of deployment files (compose, Kubernetes) read as text and checked against the
//! programs' own `--help`.

use std::collections::{BTreeMap, BTreeSet};

/// `--flag=value` and `--flag value` arguments as a map (flags without a value map to "").
pub fn flags(args: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut i = 0;
    while i < args.len() {
        if let Some(flag) = args[i].strip_prefix("--") {
            if let Some((k, v)) = flag.split_once('=') {
                out.insert(k.to_owned(), v.to_owned());
            } else if args.get(i + 1).is_some_and(|n| !n.starts_with("--")) {
                out.insert(flag.to_owned(), args[i + 1].clone());
                i += 1;
            } else {
                out.insert(flag.to_owned(), String::new());
            }
        }
        i += 1;
    }
    out
}

/// What `program args` prints, stdout then stderr.
pub fn help(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .expect("help runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The CLI's subcommands, from the "Commands:" section of `<cli> --help`.
pub fn cli_subcommands(cli: &str) -> BTreeSet<String> {
    help(cli, &["--help"])
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// The environment variables the mesh server's arguments read.
pub fn mesh_env_names() -> BTreeSet<String> {
    use clap::CommandFactory;
    darkrift_etcd_mesh::MeshArgs::command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}
