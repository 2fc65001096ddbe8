//! How the other groups of a cluster relate to this server's group: DarkRift's rules.
//!
//! For this server's group G and a group H:
//!
//! | G connectsTo H | H connectsTo G | H is |
//! |---|---|---|
//! | yes | no | [`Direction::Upstream`]: we dial H's servers |
//! | no | yes | [`Direction::Downstream`]: H's servers dial us |
//! | yes | yes | [`Direction::Upstream`] (upstream wins) |
//! | no | no | not tracked |
//!
//! G itself counts only when G lists itself; it is then upstream, so two servers of G dial
//! each other (one connection each way), as DarkRift does.

use std::collections::BTreeSet;

use serde::Serialize;

use super::group::{GroupConfig, Visibility};

/// Which side dials: the relation of a tracked peer group to this server's group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// We dial its servers.
    Upstream,
    /// Its servers dial us.
    Downstream,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Upstream => "upstream",
            Direction::Downstream => "downstream",
        })
    }
}

/// This server's group and the relation of every group of the cluster to it. Built by
/// [`ClusterConfig::topology`](super::ClusterConfig::topology).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    group: String,
    visibility: Visibility,
    upstream: BTreeSet<String>,
    downstream: BTreeSet<String>,
    dialers: BTreeSet<String>,
}

impl Topology {
    /// Applies the rules of the module docs to the `groups` of a validated cluster. `group`
    /// must be one of them (the caller, [`ClusterConfig::topology`](super::ClusterConfig::topology),
    /// checks it).
    pub(crate) fn build(groups: &[GroupConfig], group: &str) -> Self {
        let own = groups.iter().find(|g| g.name == group);
        let visibility = own.map_or(Visibility::Internal, |g| g.visibility);
        let we_dial = |h: &str| own.is_some_and(|g| g.connects_to.contains(h));
        let mut upstream = BTreeSet::new();
        let mut downstream = BTreeSet::new();
        let mut dialers = BTreeSet::new();
        for h in groups {
            let they_dial = h.connects_to.contains(group);
            if they_dial {
                dialers.insert(h.name.clone());
            }
            if we_dial(&h.name) {
                upstream.insert(h.name.clone());
            } else if they_dial && h.name != group {
                downstream.insert(h.name.clone());
            }
        }
        Topology {
            group: group.to_owned(),
            visibility,
            upstream,
            downstream,
            dialers,
        }
    }

    /// This server's group.
    #[must_use]
    pub fn group(&self) -> &str {
        &self.group
    }

    /// This server's group's visibility.
    #[must_use]
    pub fn visibility(&self) -> Visibility {
        self.visibility
    }

    /// How `group`'s servers relate to ours; `None` when not tracked.
    #[must_use]
    pub fn direction(&self, group: &str) -> Option<Direction> {
        if self.upstream.contains(group) {
            Some(Direction::Upstream)
        } else if self.downstream.contains(group) {
            Some(Direction::Downstream)
        } else {
            None
        }
    }

    /// True when `group`'s servers dial ours (its `connectsTo` names our group), so an
    /// incoming Identify from one of them is expected. Also true for an upstream group that
    /// connects back to us.
    #[must_use]
    pub fn dials_in(&self, group: &str) -> bool {
        self.dialers.contains(group)
    }

    /// Groups we dial, sorted.
    pub fn upstream_groups(&self) -> impl Iterator<Item = &str> {
        self.upstream.iter().map(String::as_str)
    }

    /// Groups that dial us and that we do not dial, sorted.
    pub fn downstream_groups(&self) -> impl Iterator<Item = &str> {
        self.downstream.iter().map(String::as_str)
    }

    /// The groups a server of this group needs to watch: its own (its own key lives there),
    /// those it dials and those that dial it, sorted. Pass them to
    /// [`crate::ConnectorConfig::with_watch_groups`]: every other group's registrations are
    /// then neither read nor sent to this server.
    #[must_use]
    pub fn interest(&self) -> Vec<String> {
        let mut groups: std::collections::BTreeSet<String> = self
            .upstream
            .iter()
            .chain(&self.downstream)
            .cloned()
            .collect();
        groups.insert(self.group.clone());
        groups.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The groups of a cluster (valid: the rules' input; validation is `config`'s and tested
    /// there), with the one lookup the tests need.
    struct Cluster(Vec<GroupConfig>);

    impl Cluster {
        fn topology(&self, group: &str) -> Option<Topology> {
            self.0
                .iter()
                .any(|g| g.name == group)
                .then(|| Topology::build(&self.0, group))
        }
    }

    fn cluster(groups: &[(&str, &[&str])]) -> Cluster {
        Cluster(
            groups
                .iter()
                .map(|(name, to)| GroupConfig {
                    name: (*name).to_owned(),
                    visibility: Visibility::Internal,
                    connects_to: to.iter().map(|s| (*s).to_owned()).collect(),
                })
                .collect(),
        )
    }

    #[test]
    fn each_rule_of_the_table() {
        // g dials up; down dials g; both dial each other; none is unrelated.
        let c = cluster(&[
            ("g", &["up", "both"]),
            ("up", &[]),
            ("down", &["g"]),
            ("both", &["g"]),
            ("none", &["up"]),
        ]);
        let t = c.topology("g").unwrap();
        assert_eq!(t.direction("up"), Some(Direction::Upstream));
        assert_eq!(t.direction("down"), Some(Direction::Downstream));
        assert_eq!(t.direction("both"), Some(Direction::Upstream));
        assert_eq!(t.direction("none"), None);
        assert_eq!(t.direction("g"), None, "own group untracked unless listed");
        assert_eq!(t.direction("not-a-group"), None);
        assert!(t.dials_in("down") && t.dials_in("both"));
        assert!(!t.dials_in("up") && !t.dials_in("none") && !t.dials_in("g"));
        assert_eq!(t.upstream_groups().collect::<Vec<_>>(), ["both", "up"]);
        assert_eq!(t.downstream_groups().collect::<Vec<_>>(), ["down"]);
        // Own, dialled and dialling groups; never the unrelated one.
        assert_eq!(t.interest(), ["both", "down", "g", "up"]);
        assert_eq!(c.topology("none").unwrap().interest(), ["none", "up"]);
    }

    #[test]
    fn own_group_is_upstream_only_when_it_lists_itself() {
        let c = cluster(&[("g", &["g"])]);
        let t = c.topology("g").unwrap();
        assert_eq!(t.direction("g"), Some(Direction::Upstream));
        assert!(t.dials_in("g"));
        assert_eq!(t.downstream_groups().count(), 0);
    }
}
