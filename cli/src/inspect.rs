//! `get`, `ls`, `evict` and `config`: read the registry once (or remove one registration).

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use darkrift_etcd::admin::{Admin, Entry, Eviction};
use darkrift_etcd::config::layers::{Layered, Scope, Source, SETTINGS};
use serde_json::{json, Value};

use crate::fail::{Exit, Failure};
use crate::out::{self, age, entry_fields};
use crate::{ListFormat, OneFormat};

/// Output ended early because the reader went away: not an error.
fn quietly(closed: out::Closed) -> Failure {
    Failure::closed(closed)
}

/// `45s`, `12m`, `5h`, `3d`: the AGE column, kubectl-style.
fn short(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn ttl(e: &Entry) -> String {
    e.ttl_left
        .map_or_else(|| "-".to_owned(), |t| format!("{}s", t.as_secs()))
}

fn properties(e: &Entry) -> String {
    e.server
        .properties
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

async fn admin(layered: &Layered) -> Result<Admin, Failure> {
    Ok(Admin::connect(&layered.settings.connector).await?)
}

fn not_found(id: u16, layered: &Layered) -> Failure {
    Failure::new(
        Exit::NotFound,
        format!(
            "server {id} is not registered under prefix {}",
            layered.settings.connector.prefix
        ),
    )
    .hint("`darkrift-etcd ls` lists the registered servers")
}

/// `darkrift-etcd get ID`.
pub(crate) async fn get(layered: &Layered, id: u16, output: OneFormat) -> Result<(), Failure> {
    let (revision, entry) = admin(layered).await?.get(id).await?;
    let Some(e) = entry else {
        return Err(not_found(id, layered));
    };
    match output {
        OneFormat::Json => {
            let mut fields = entry_fields(&e);
            fields["revision"] = json!(revision);
            out::line("server", fields).map_err(quietly)?;
        }
        OneFormat::Text => {
            let rows = [
                ("ID", e.server.id.to_string()),
                ("GROUP", e.server.group.clone()),
                ("HOST", e.server.host.clone()),
                ("PORT", e.server.port.to_string()),
                ("PROPERTIES", properties(&e)),
                ("LEASE", format!("{:x}", e.lease)),
                ("TTL LEFT", ttl(&e)),
                ("CREATE REVISION", e.create_revision.to_string()),
                ("AGE", short(age(e.server.registered_at_unix_ms))),
            ];
            for (k, v) in rows {
                out::text(&format!("{k:<16} {v}")).map_err(quietly)?;
            }
        }
    }
    Ok(())
}

/// `darkrift-etcd ls`.
pub(crate) async fn ls(
    layered: &Layered,
    group: Option<&str>,
    output: ListFormat,
) -> Result<(), Failure> {
    if let Some(g) = group {
        darkrift_etcd::record::validate_group(g).map_err(darkrift_etcd::Error::from)?;
    }
    let listing = admin(layered).await?.list().await?;
    if listing.skipped > 0 {
        tracing::warn!(
            skipped = listing.skipped,
            "malformed records under the prefix were skipped"
        );
    }
    let entries: Vec<&Entry> = listing
        .entries
        .iter()
        .filter(|e| group.is_none_or(|g| g == e.server.group))
        .collect();
    if output == ListFormat::Json {
        let servers: Vec<Value> = entries.iter().map(|e| entry_fields(e)).collect();
        return out::line(
            "list",
            json!({"revision": listing.revision, "servers": servers}),
        )
        .map_err(quietly);
    }
    let mut rows = vec![[
        "ID",
        "GROUP",
        "HOST",
        "PORT",
        "AGE",
        "TTL LEFT",
        "PROPERTIES",
    ]
    .map(String::from)];
    for e in &entries {
        rows.push([
            e.server.id.to_string(),
            e.server.group.clone(),
            e.server.host.clone(),
            e.server.port.to_string(),
            short(age(e.server.registered_at_unix_ms)),
            ttl(e),
            properties(e),
        ]);
    }
    let columns = if output == ListFormat::Wide { 7 } else { 6 };
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let cells: Vec<String> = (0..columns)
            .map(|c| format!("{:<w$}", row[c], w = widths[c]))
            .collect();
        out::text(cells.join("   ").trim_end()).map_err(quietly)?;
    }
    Ok(())
}

/// Asks on the terminal; true for yes.
fn confirm(question: &str) -> bool {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim(), "y" | "Y" | "yes")
}

/// `darkrift-etcd evict ID`.
pub(crate) async fn evict(
    layered: &Layered,
    id: u16,
    yes: bool,
    output: OneFormat,
) -> Result<(), Failure> {
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if !yes && !interactive {
        return Err(Failure::usage(
            "evict asks for confirmation, and there is no terminal to ask on",
        )
        .hint("pass --yes to evict without asking"));
    }
    let admin = admin(layered).await?;
    let (_, entry) = admin.get(id).await?;
    let Some(e) = entry else {
        return Err(not_found(id, layered));
    };
    let what = format!(
        "server {id} ({} {}:{}, lease {:x}, create revision {})",
        e.server.group, e.server.host, e.server.port, e.lease, e.create_revision
    );
    if !yes && !confirm(&format!("Evict {what}?")) {
        return Err(Failure::new(Exit::Other, "not evicted: not confirmed"));
    }
    match admin.evict(&e).await? {
        Eviction::Evicted { revision } => match output {
            OneFormat::Json => out::line(
                "evicted",
                json!({"id": id, "group": e.server.group, "host": e.server.host,
                       "port": e.server.port, "create_revision": e.create_revision,
                       "revision": revision}),
            )
            .map_err(quietly),
            OneFormat::Text => {
                out::text(&format!("evicted {what} at revision {revision}")).map_err(quietly)
            }
        },
        Eviction::Changed => Err(Failure::new(
            Exit::NotFound,
            format!("{what} changed before it could be evicted (it left, or the id was registered again); nothing deleted"),
        )),
    }
}

/// The first invalid setting, if any: the connector's rules (`ConnectorConfig::validate`) and
/// the server's identity as far as it is given; the error names where the value came from.
fn check(layered: &Layered) -> Result<(), Failure> {
    use darkrift_etcd::record;
    let s = &layered.settings;
    let (key, error) = match s.connector.validate() {
        Err(e @ darkrift_etcd::Error::InvalidConfig(_)) => {
            let text = e.to_string();
            let key = SETTINGS
                .iter()
                .map(|s| s.key)
                .filter(|k| text.contains(&format!("{k}:")))
                .max_by_key(|k| k.len());
            (key, Some(e))
        }
        Err(e) => (None, Some(e)),
        Ok(_) => {
            let server = [
                (
                    "group",
                    s.server.group.as_deref().map(record::validate_group),
                ),
                ("host", s.server.host.as_deref().map(record::validate_host)),
                (
                    "properties",
                    Some(record::validate_properties(&s.server.properties)),
                ),
            ];
            let port_zero = (s.server.port == Some(0)).then(|| {
                darkrift_etcd::Error::InvalidConfig(
                    "port: 0 is not a port peers can dial (1..=65535)".into(),
                )
            });
            server
                .into_iter()
                .find_map(|(k, r)| match r {
                    Some(Err(e)) => Some((Some(k), Some(darkrift_etcd::Error::from(e)))),
                    _ => None,
                })
                .unwrap_or((Some("port"), port_zero))
        }
    };
    let Some(error) = error else {
        return Ok(());
    };
    let origin = key
        .map(|k| layered.origin(k))
        .filter(|o| o.source != Source::Default);
    let message = match origin {
        Some(o) => format!("{error} (from {o})"),
        None => error.to_string(),
    };
    Err(Failure::usage(message).hint("fix the value where it comes from (file, variable or flag)"))
}

/// `darkrift-etcd config`: checks the settings (exit 2 naming the first invalid one), then
/// prints each with its source.
pub(crate) fn config(
    layered: &Layered,
    file: Option<&Path>,
    output: OneFormat,
) -> Result<(), Failure> {
    check(layered)?;
    let described = layered.describe(&[Scope::Connector, Scope::Server]);
    if output == OneFormat::Json {
        let settings: Vec<Value> = described
            .iter()
            .map(|d| {
                json!({
                    "key": d.setting.key,
                    "value": d.value,
                    "source": d.origin.source.to_string(),
                    "from": d.origin.name,
                    "secret": d.setting.secret,
                })
            })
            .collect();
        let file = file.map(|f| f.display().to_string());
        return out::line("config", json!({"file": file, "settings": settings})).map_err(quietly);
    }
    let mut rows = vec![(
        "config".to_owned(),
        file.map_or_else(|| "-".to_owned(), |f| f.display().to_string()),
        String::new(),
    )];
    for d in described {
        rows.push((
            d.setting.key.to_owned(),
            d.value.unwrap_or_else(|| "-".to_owned()),
            d.origin.to_string(),
        ));
    }
    let kw = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let vw = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    out::text(&format!("{:<kw$}   {:<vw$}   SOURCE", "SETTING", "VALUE")).map_err(quietly)?;
    for (k, v, o) in rows {
        out::text(format!("{k:<kw$}   {v:<vw$}   {o}").trim_end()).map_err(quietly)?;
    }
    Ok(())
}
