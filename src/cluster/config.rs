//! Cluster configuration: the groups of a DarkRift cluster, each group's visibility, and which
//! groups its servers dial (`connectsTo`).
//!
//! Two sources give the same [`ClusterConfig`]:
//!
//! - TOML, in the crate's own spelling:
//!   ```toml
//!   [[groups]]
//!   name = "lobby"
//!   visibility = "external"
//!   connects_to = ["game"]
//!
//!   [[groups]]
//!   name = "game"
//!   visibility = "internal"
//!   ```
//! - DarkRift's own `Cluster.config` XML (read only):
//!   ```xml
//!   <cluster>
//!     <groups>
//!       <group name="lobby" visibility="external"><connectsTo name="game"/></group>
//!       <group name="game" visibility="internal"/>
//!     </groups>
//!   </cluster>
//!   ```
//!
//! Both go through one validation ([`ClusterConfig::new`]), so a mistake gets the same typed
//! [`ClusterConfigError`] whichever file it is in. [`ClusterConfig::place`] then checks this
//! server's own settings (DarkRift's `serverGroup`, `advertisedHost`, `advertisedPort`) against
//! the cluster and yields its [`Topology`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use super::group::{GroupConfig, Visibility};
use super::topology::Topology;
use crate::record::{validate_group, validate_host, RecordError};

/// A validated cluster: unique, well-formed group names, every `connectsTo` naming a group of
/// the cluster. Groups keep the order of the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterConfig {
    groups: Vec<GroupConfig>,
}

/// This server's own cluster settings, as DarkRift's `Server.config` has them:
/// `<server serverGroup>` and `<serverRegistry advertisedHost advertisedPort>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// The group this server belongs to; `None` for a server that is not clustered.
    pub group: Option<String>,
    /// Host other servers dial to reach this one.
    pub advertised_host: Option<String>,
    /// Port other servers dial to reach this one.
    pub advertised_port: Option<u16>,
}

/// A clustered server's validated place: what it registers and how it relates to every group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Host to register (advertised).
    pub host: String,
    /// Port to register (advertised).
    pub port: u16,
    /// Who this server dials and who dials it.
    pub topology: Topology,
}

/// Why a cluster configuration or a server's place in it was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterConfigError {
    /// The file could not be read.
    #[error("cannot read cluster configuration {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file's extension names no format this crate reads.
    #[error("cannot tell the format of {path}: use .toml, or .config / .xml for DarkRift's XML")]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// The TOML text does not parse, or has fields of the wrong type or unknown fields.
    #[error("cluster configuration is not valid: {0}")]
    Toml(#[from] toml::de::Error),
    /// The XML text is not well-formed.
    #[error("Cluster.config is not well-formed XML: {0}")]
    Xml(#[from] roxmltree::Error),
    /// The XML is well-formed but not shaped like DarkRift's `Cluster.config`.
    #[error("Cluster.config, line {line}: {what}")]
    XmlShape {
        /// 1-based line of the offending element.
        line: u32,
        /// What is missing or unexpected.
        what: String,
    },
    /// A group name is not one the registry accepts.
    #[error("group name {group:?} is not valid: {source}")]
    InvalidGroupName {
        /// The name.
        group: String,
        /// The rule it broke.
        #[source]
        source: RecordError,
    },
    /// A visibility other than `external` or `internal`.
    #[error("group {group:?} has visibility {value:?}: expected \"external\" or \"internal\"")]
    BadVisibility {
        /// The group.
        group: String,
        /// The value found.
        value: String,
    },
    /// Two groups with the same name.
    #[error("group {group:?} is defined twice")]
    DuplicateGroup {
        /// The repeated name.
        group: String,
    },
    /// A `connectsTo` names a group the cluster does not define.
    #[error("group {group:?} connects to {target:?}, which is not a group of the cluster")]
    UnknownConnectsTo {
        /// The group holding the `connectsTo`.
        group: String,
        /// The name it gives.
        target: String,
    },
    /// This server's group is not one of the cluster's groups.
    #[error("this server's group {group:?} is not in the cluster (groups: {known})")]
    UnknownServerGroup {
        /// This server's group.
        group: String,
        /// The cluster's groups, comma-separated.
        known: String,
    },
    /// A clustered server must advertise where peers dial it.
    #[error("server of group {group:?} is clustered but has no advertised {missing}")]
    MissingAdvertisedAddress {
        /// This server's group.
        group: String,
        /// `"host"` or `"port"`.
        missing: &'static str,
    },
    /// The advertised host is not one the registry accepts.
    #[error("advertised host is not valid: {0}")]
    InvalidAdvertisedHost(#[source] RecordError),
}

/// A group as written, before validation (both formats land here).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: String,
    visibility: String,
    #[serde(default, alias = "connectsTo")]
    connects_to: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    #[serde(default)]
    groups: Vec<RawGroup>,
}

impl ClusterConfig {
    /// Validates groups given as `(name, visibility, connects_to)`.
    ///
    /// # Errors
    /// [`ClusterConfigError::InvalidGroupName`], [`ClusterConfigError::DuplicateGroup`],
    /// [`ClusterConfigError::UnknownConnectsTo`].
    pub fn new(groups: Vec<GroupConfig>) -> Result<Self, ClusterConfigError> {
        let mut names = BTreeSet::new();
        for g in &groups {
            validate_group(&g.name).map_err(|source| ClusterConfigError::InvalidGroupName {
                group: g.name.clone(),
                source,
            })?;
            if !names.insert(g.name.as_str()) {
                return Err(ClusterConfigError::DuplicateGroup {
                    group: g.name.clone(),
                });
            }
        }
        for g in &groups {
            if let Some(target) = g.connects_to.iter().find(|t| !names.contains(t.as_str())) {
                return Err(ClusterConfigError::UnknownConnectsTo {
                    group: g.name.clone(),
                    target: target.clone(),
                });
            }
        }
        Ok(ClusterConfig { groups })
    }

    /// Parses and validates the crate's TOML form (see the module docs).
    ///
    /// # Errors
    /// [`ClusterConfigError::Toml`] for a syntax or shape error, else as [`ClusterConfig::new`]
    /// and [`ClusterConfigError::BadVisibility`].
    pub fn from_toml_str(text: &str) -> Result<Self, ClusterConfigError> {
        let raw: RawCluster = toml::from_str(text)?;
        Self::from_raw(raw.groups)
    }

    /// Parses and validates DarkRift's `Cluster.config` XML (see the module docs). Attributes
    /// and elements DarkRift does not define are ignored, as DarkRift does; DarkRift's
    /// `$(variable)` substitution is not supported.
    ///
    /// # Errors
    /// [`ClusterConfigError::Xml`] or [`ClusterConfigError::XmlShape`], else as
    /// [`ClusterConfig::from_toml_str`].
    pub fn from_darkrift_xml(text: &str) -> Result<Self, ClusterConfigError> {
        let doc = roxmltree::Document::parse(text)?;
        let line = |node: roxmltree::Node<'_, '_>| doc.text_pos_at(node.range().start).row;
        let shape = |node, what: String| ClusterConfigError::XmlShape {
            line: line(node),
            what,
        };
        let root = doc.root_element();
        if root.tag_name().name() != "cluster" {
            return Err(shape(
                root,
                format!(
                    "root element is <{}>, expected <cluster>",
                    root.tag_name().name()
                ),
            ));
        }
        let groups_el = root
            .children()
            .find(|n| n.has_tag_name("groups"))
            .ok_or_else(|| shape(root, "<cluster> has no <groups> element".into()))?;
        let mut raw = Vec::new();
        for g in groups_el.children().filter(|n| n.has_tag_name("group")) {
            let attr = |name: &str| {
                g.attribute(name)
                    .map(str::to_owned)
                    .ok_or_else(|| shape(g, format!("<group> has no {name:?} attribute")))
            };
            let name = attr("name")?;
            let visibility = attr("visibility")?;
            let mut connects_to = Vec::new();
            for c in g.children().filter(|n| n.has_tag_name("connectsTo")) {
                let target = c
                    .attribute("name")
                    .ok_or_else(|| shape(c, "<connectsTo> has no \"name\" attribute".into()))?;
                connects_to.push(target.to_owned());
            }
            raw.push(RawGroup {
                name,
                visibility,
                connects_to,
            });
        }
        Self::from_raw(raw)
    }

    /// Reads a file: `.toml` as TOML, `.config` or `.xml` as DarkRift's XML.
    ///
    /// # Errors
    /// [`ClusterConfigError::Io`], [`ClusterConfigError::UnknownFormat`], or a parse error.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ClusterConfigError> {
        let path = path.as_ref();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let read = || {
            std::fs::read_to_string(path).map_err(|source| ClusterConfigError::Io {
                path: path.to_owned(),
                source,
            })
        };
        match ext.as_deref() {
            Some("toml") => Self::from_toml_str(&read()?),
            Some("config" | "xml") => Self::from_darkrift_xml(&read()?),
            _ => Err(ClusterConfigError::UnknownFormat {
                path: path.to_owned(),
            }),
        }
    }

    fn from_raw(raw: Vec<RawGroup>) -> Result<Self, ClusterConfigError> {
        let mut groups = Vec::with_capacity(raw.len());
        for g in raw {
            let visibility =
                g.visibility
                    .parse()
                    .map_err(|()| ClusterConfigError::BadVisibility {
                        group: g.name.clone(),
                        value: g.visibility.clone(),
                    })?;
            groups.push(GroupConfig {
                name: g.name,
                visibility,
                connects_to: g.connects_to.into_iter().collect(),
            });
        }
        Self::new(groups)
    }

    /// The groups, in file order.
    #[must_use]
    pub fn groups(&self) -> &[GroupConfig] {
        &self.groups
    }

    /// The group called `name`.
    #[must_use]
    pub fn group(&self, name: &str) -> Option<&GroupConfig> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// How every group relates to `group` (see [`Topology`]).
    ///
    /// # Errors
    /// [`ClusterConfigError::UnknownServerGroup`] when the cluster has no such group.
    pub fn topology(&self, group: &str) -> Result<Topology, ClusterConfigError> {
        if self.group(group).is_none() {
            return Err(ClusterConfigError::UnknownServerGroup {
                group: group.to_owned(),
                known: self
                    .groups
                    .iter()
                    .map(|g| g.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(Topology::build(&self.groups, group))
    }

    /// Checks this server's settings against the cluster: `Ok(None)` for a server that is not
    /// clustered (no group), its [`Placement`] otherwise.
    ///
    /// # Errors
    /// [`ClusterConfigError::UnknownServerGroup`],
    /// [`ClusterConfigError::MissingAdvertisedAddress`] (no host, no port, or port 0),
    /// [`ClusterConfigError::InvalidAdvertisedHost`].
    pub fn place(&self, server: &ServerSettings) -> Result<Option<Placement>, ClusterConfigError> {
        let Some(group) = server.group.as_deref() else {
            return Ok(None);
        };
        let topology = self.topology(group)?;
        let missing = |missing| ClusterConfigError::MissingAdvertisedAddress {
            group: group.to_owned(),
            missing,
        };
        let host = server
            .advertised_host
            .as_deref()
            .filter(|h| !h.trim().is_empty())
            .ok_or_else(|| missing("host"))?;
        validate_host(host).map_err(ClusterConfigError::InvalidAdvertisedHost)?;
        let port = server
            .advertised_port
            .filter(|p| *p != 0)
            .ok_or_else(|| missing("port"))?;
        Ok(Some(Placement {
            host: host.to_owned(),
            port,
            topology,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DarkRift's own sample (its system tests' `ClusterWithTwoGroups.config`): two groups, the
    /// external one connecting to the internal one.
    const DARKRIFT_SAMPLE: &str = r#"<?xml version="1.0" encoding="utf-8" ?>

<cluster xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="https://www.darkriftnetworking.com/DarkRift2/Schemas/2.9.0/Cluster.config.xsd">
  <groups>
    <group name="Group1" visibility="external">
      <connectsTo name="Group2" />
    </group>

    <group name="Group2" visibility="internal" />
  </groups>
</cluster>
"#;

    const SAMPLE_TOML: &str = r#"
[[groups]]
name = "Group1"
visibility = "external"
connects_to = ["Group2"]

[[groups]]
name = "Group2"
visibility = "internal"
"#;

    fn err_of(r: Result<ClusterConfig, ClusterConfigError>) -> ClusterConfigError {
        match r {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn darkrift_sample_and_toml_give_the_same_topology() {
        let xml = ClusterConfig::from_darkrift_xml(DARKRIFT_SAMPLE).unwrap();
        let toml = ClusterConfig::from_toml_str(SAMPLE_TOML).unwrap();
        assert_eq!(xml, toml);
        assert_eq!(xml.groups().len(), 2);
        let g1 = xml.group("Group1").unwrap();
        assert_eq!(g1.visibility, Visibility::External);
        assert_eq!(g1.connects_to, BTreeSet::from(["Group2".to_owned()]));
        assert_eq!(
            xml.group("Group2").unwrap().visibility,
            Visibility::Internal
        );
        for group in ["Group1", "Group2"] {
            assert_eq!(
                xml.topology(group).unwrap(),
                toml.topology(group).unwrap(),
                "{group}"
            );
        }
        let t1 = xml.topology("Group1").unwrap();
        assert_eq!(t1.upstream_groups().collect::<Vec<_>>(), ["Group2"]);
        assert_eq!(t1.downstream_groups().count(), 0);
        let t2 = xml.topology("Group2").unwrap();
        assert_eq!(t2.downstream_groups().collect::<Vec<_>>(), ["Group1"]);
        assert_eq!(t2.upstream_groups().count(), 0);
    }

    #[test]
    fn camel_case_connects_to_is_accepted_in_toml_and_visibility_is_case_insensitive() {
        let c = ClusterConfig::from_toml_str(
            "[[groups]]\nname='a'\nvisibility='External'\nconnectsTo=['b']\n\
             [[groups]]\nname='b'\nvisibility='INTERNAL'\n",
        )
        .unwrap();
        assert_eq!(c.group("a").unwrap().visibility, Visibility::External);
        assert!(c.group("a").unwrap().connects_to.contains("b"));
    }

    #[test]
    fn connects_to_an_unknown_group_is_rejected_in_both_formats() {
        let toml = "[[groups]]\nname='a'\nvisibility='external'\nconnects_to=['nope']\n";
        let xml = r#"<cluster><groups><group name="a" visibility="external"><connectsTo name="nope"/></group></groups></cluster>"#;
        for e in [
            err_of(ClusterConfig::from_toml_str(toml)),
            err_of(ClusterConfig::from_darkrift_xml(xml)),
        ] {
            assert!(
                matches!(&e, ClusterConfigError::UnknownConnectsTo { group, target } if group == "a" && target == "nope"),
                "{e}"
            );
            assert!(e.to_string().contains("\"nope\""), "{e}");
        }
    }

    #[test]
    fn duplicate_groups_are_rejected() {
        let xml = r#"<cluster><groups><group name="a" visibility="external"/><group name="a" visibility="internal"/></groups></cluster>"#;
        let e = err_of(ClusterConfig::from_darkrift_xml(xml));
        assert!(
            matches!(&e, ClusterConfigError::DuplicateGroup { group } if group == "a"),
            "{e}"
        );
    }

    #[test]
    fn bad_visibility_is_rejected_with_its_value() {
        let toml = "[[groups]]\nname='a'\nvisibility='public'\n";
        let e = err_of(ClusterConfig::from_toml_str(toml));
        assert!(
            matches!(&e, ClusterConfigError::BadVisibility { group, value } if group == "a" && value == "public"),
            "{e}"
        );
        let xml = r#"<cluster><groups><group name="a" visibility=""/></groups></cluster>"#;
        let e = err_of(ClusterConfig::from_darkrift_xml(xml));
        assert!(matches!(e, ClusterConfigError::BadVisibility { .. }), "{e}");
    }

    #[test]
    fn invalid_group_names_are_rejected() {
        let e = err_of(ClusterConfig::from_toml_str(
            "[[groups]]\nname='a/b'\nvisibility='external'\n",
        ));
        assert!(
            matches!(e, ClusterConfigError::InvalidGroupName { .. }),
            "{e}"
        );
    }

    #[test]
    fn malformed_xml_and_wrong_shapes_are_reported_with_a_line() {
        assert!(matches!(
            err_of(ClusterConfig::from_darkrift_xml("<cluster><groups>")),
            ClusterConfigError::Xml(_)
        ));
        let e = err_of(ClusterConfig::from_darkrift_xml("<configuration/>"));
        assert!(
            matches!(e, ClusterConfigError::XmlShape { line: 1, .. }),
            "{e}"
        );
        let e = err_of(ClusterConfig::from_darkrift_xml("<cluster>\n</cluster>"));
        assert!(e.to_string().contains("<groups>"), "{e}");
        let e = err_of(ClusterConfig::from_darkrift_xml(
            "<cluster>\n<groups>\n<group visibility=\"external\"/></groups></cluster>",
        ));
        assert!(
            matches!(&e, ClusterConfigError::XmlShape { line: 3, what } if what.contains("name")),
            "{e}"
        );
        let e = err_of(ClusterConfig::from_darkrift_xml(
            "<cluster><groups><group name=\"a\" visibility=\"external\"><connectsTo/></group></groups></cluster>",
        ));
        assert!(e.to_string().contains("connectsTo"), "{e}");
    }

    #[test]
    fn unknown_toml_fields_are_rejected() {
        let e = err_of(ClusterConfig::from_toml_str(
            "[[groups]]\nname='a'\nvisibility='external'\nconnect_to=['a']\n",
        ));
        assert!(matches!(e, ClusterConfigError::Toml(_)), "{e}");
    }

    #[test]
    fn placement_checks_group_and_advertised_address() {
        let c = ClusterConfig::from_toml_str(SAMPLE_TOML).unwrap();
        let settings =
            |group: Option<&str>, host: Option<&str>, port: Option<u16>| ServerSettings {
                group: group.map(Into::into),
                advertised_host: host.map(Into::into),
                advertised_port: port,
            };
        assert_eq!(c.place(&settings(None, None, None)).unwrap(), None);
        let p = c
            .place(&settings(Some("Group1"), Some("10.0.0.1"), Some(4296)))
            .unwrap()
            .unwrap();
        assert_eq!((p.host.as_str(), p.port), ("10.0.0.1", 4296));
        assert_eq!(p.topology.group(), "Group1");

        let e = c
            .place(&settings(Some("Group3"), Some("h"), Some(1)))
            .unwrap_err();
        assert!(
            matches!(&e, ClusterConfigError::UnknownServerGroup { group, known } if group == "Group3" && known == "Group1, Group2"),
            "{e}"
        );
        for (host, port, missing) in [
            (None, Some(1), "host"),
            (Some(" "), Some(1), "host"),
            (Some("h"), None, "port"),
            (Some("h"), Some(0), "port"),
        ] {
            let e = c.place(&settings(Some("Group1"), host, port)).unwrap_err();
            assert!(
                matches!(&e, ClusterConfigError::MissingAdvertisedAddress { missing: m, .. } if *m == missing),
                "{e}"
            );
        }
        let e = c
            .place(&settings(Some("Group1"), Some("a b"), Some(1)))
            .unwrap_err();
        assert!(
            matches!(e, ClusterConfigError::InvalidAdvertisedHost(_)),
            "{e}"
        );
    }

    #[test]
    fn files_are_read_by_extension() {
        let dir = tempfile::tempdir().unwrap();
        let xml = dir.path().join("Cluster.config");
        std::fs::write(&xml, DARKRIFT_SAMPLE).unwrap();
        let toml = dir.path().join("cluster.toml");
        std::fs::write(&toml, SAMPLE_TOML).unwrap();
        assert_eq!(
            ClusterConfig::from_file(&xml).unwrap(),
            ClusterConfig::from_file(&toml).unwrap()
        );
        let other = dir.path().join("cluster.json");
        std::fs::write(&other, "{}").unwrap();
        assert!(matches!(
            ClusterConfig::from_file(&other),
            Err(ClusterConfigError::UnknownFormat { .. })
        ));
        assert!(matches!(
            ClusterConfig::from_file(dir.path().join("missing.toml")),
            Err(ClusterConfigError::Io { .. })
        ));
    }
}
