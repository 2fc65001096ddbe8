//! One group of a cluster as configured: the input both of the configuration's validation
//! ([`super::config`], which reads and checks the groups) and of DarkRift's rules of who dials
//! whom ([`super::topology`], which reads them). Its own module so that each of those uses it
//! and neither needs the other's: `config` builds a `Topology`, `topology` knows nothing of
//! `config`.

use std::collections::BTreeSet;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Whether a group faces clients (DarkRift's `ServerVisibility`). Informational for the
/// registry: it does not change who dials whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Clients connect to this group's servers.
    External,
    /// Only other servers connect to this group's servers.
    Internal,
}

impl FromStr for Visibility {
    type Err = ();

    /// Case-insensitive, like DarkRift's enum parsing of the attribute.
    fn from_str(s: &str) -> Result<Self, ()> {
        if s.eq_ignore_ascii_case("external") {
            Ok(Visibility::External)
        } else if s.eq_ignore_ascii_case("internal") {
            Ok(Visibility::Internal)
        } else {
            Err(())
        }
    }
}

/// One group of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupConfig {
    /// Group name, as servers register it.
    pub name: String,
    /// Client-facing or not.
    pub visibility: Visibility,
    /// Groups whose servers this group's servers dial, sorted, without repeats.
    pub connects_to: BTreeSet<String>,
}
