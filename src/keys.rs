//! Key layout: where servers and the allocator live in etcd, and parsing of keys read back.
//!
//! ```text
//! <prefix>/<group>/<id>          one key per live server (value: ServerRecord), on its lease
//! <prefix>.alloc/cursor          round-robin allocation cursor (no lease: it must outlive servers)
//! <prefix>.alloc/slot/<id:05>    one key per live id, on the holder's lease (value: server key)
//! <prefix>.alloc/reports/<peer:05>/<peer create revision>/<reporter:05>
//!                                "reporter cannot reach peer" (eviction), on the reporter's lease
//! ```
//!
//! The allocator keys sit *beside* the server prefix, not under it, so a watch on
//! `<prefix>/` never sees them: they cost watchers no traffic and can never be mistaken for a
//! server. Ids in slot keys are zero-padded to five digits so that the byte order of slot keys
//! is their numeric order, which lets one range read return "the occupied ids from a to b".
//!
//! # Prefixes that would share another registry's keys
//! Several registries can share one etcd, each under its own prefix, only if no registry's
//! ranges (`<prefix>/` and `<prefix>.alloc/`) lie inside another's. [`KeyLayout::new`]
//! refuses the two shapes that do:
//!
//! - **a segment ending in `.alloc`** (`/darkrift.alloc`, `/games/eu.alloc/x`): its server
//!   range `…/x.alloc/` is the allocator range of the prefix `…/x` (which would then read
//!   our records as slots and cursors, and we its slots as servers);
//! - **the default prefix plus segments** (`/darkrift/eu-1`): its ranges lie inside the
//!   default registry's server range `/darkrift/`, whose watchers would receive every key it
//!   writes (and it theirs: `/darkrift/eu-1/…` is also their group `eu-1`).
//!
//! Siblings such as `/darkrift-eu-1`, `/darkrift-demo` or `/games/eu-1` stay valid. Nesting
//! between two prefixes of your own (`/games` and `/games/eu-1`) cannot be seen from one
//! prefix alone: give registries sibling prefixes, never one inside another.
//!
//! Server ids are written without padding (`/darkrift/lobby/17`), as operators expect to read
//! them; the parser accepts exactly the canonical form (no sign, no leading zero, 1..=65535),
//! so a key has one spelling and `/darkrift/lobby/017` is malformed, not a second server 17.

use std::collections::BTreeSet;

use crate::error::{Error, Result};
use crate::record::validate_group;

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "/darkrift";

/// The keys of one registry (one prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLayout {
    prefix: String,
}

/// A range of keys `[start, end)`, as etcd reads and watches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyRange {
    /// First key of the range.
    pub(crate) start: Vec<u8>,
    /// First key after the range.
    pub(crate) end: Vec<u8>,
}

impl KeyRange {
    /// Every key starting with `prefix`.
    pub(crate) fn prefix(prefix: Vec<u8>) -> Self {
        let end = prefix_end(&prefix);
        KeyRange { start: prefix, end }
    }

    /// True when `key` lies in the range.
    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        self.start.as_slice() <= key && key < self.end.as_slice()
    }
}

/// The end of the range of keys starting with `prefix` (etcd's prefix rule).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// What a key under the server prefix turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedKey<'a> {
    /// `<prefix>/<group>/<id>` in canonical form.
    Server {
        /// The group segment.
        group: &'a str,
        /// The id segment.
        id: u16,
    },
    /// Anything else under the prefix; the reason is for the log line.
    Malformed(&'static str),
}

impl KeyLayout {
    /// Validates a prefix: starts with `/`, does not end with `/`, at most 128 bytes of
    /// `[A-Za-z0-9._/-]`, no empty segment, no segment ending in `.alloc`, and not inside the
    /// default prefix (`/darkrift/…`); see the module docs for why.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the rule.
    pub fn new(prefix: &str) -> Result<Self> {
        let bad = |why: &str| Err(Error::InvalidConfig(format!("prefix {prefix:?}: {why}")));
        if !prefix.starts_with('/') {
            return bad("must start with '/'");
        }
        if prefix.len() < 2 || prefix.ends_with('/') {
            return bad("must name at least one segment and not end with '/'");
        }
        if prefix.len() > 128 {
            return bad("longer than 128 bytes");
        }
        if prefix.contains("//") {
            return bad("must not contain an empty segment");
        }
        if !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
        {
            return bad("only A-Z, a-z, 0-9, '.', '_', '-' and '/' are allowed");
        }
        #[allow(
            clippy::case_sensitive_file_extension_comparisons,
            reason = "a key segment, not a file name: `.ALLOC` is another segment"
        )]
        let allocator_segment = |segment: &str| segment.ends_with(".alloc");
        if prefix.split('/').any(allocator_segment) {
            return bad(
                "no segment may end in \".alloc\": that is the allocator range of another prefix",
            );
        }
        if prefix
            .strip_prefix(DEFAULT_PREFIX)
            .is_some_and(|rest| rest.starts_with('/'))
        {
            return bad(&format!(
                "lies inside the server range of the default prefix {DEFAULT_PREFIX}/; use a sibling such as {DEFAULT_PREFIX}-<name>"
            ));
        }
        Ok(KeyLayout {
            prefix: prefix.to_owned(),
        })
    }

    /// The prefix as configured (no trailing slash).
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>/`: the range every server key is in (watch and list it with `with_prefix`).
    #[must_use]
    pub fn servers_prefix(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// `<prefix>/<group>/`: the range of one group's servers.
    #[must_use]
    pub fn group_prefix(&self, group: &str) -> String {
        format!("{}/{group}/", self.prefix)
    }

    /// The whole server range, `<prefix>/…`.
    pub(crate) fn servers_range(&self) -> KeyRange {
        KeyRange::prefix(self.servers_prefix().into_bytes())
    }

    /// The key ranges a watcher of `groups` reads and watches, sorted by start key (so pages
    /// read range after range are in key order as a whole): one range per group, or the whole
    /// server range when `groups` is empty. Group names are checked by the configuration; a
    /// group's range ends before any other group's because the name is followed by `/`.
    #[must_use]
    pub(crate) fn watch_ranges(&self, groups: &BTreeSet<String>) -> Vec<KeyRange> {
        if groups.is_empty() {
            return vec![self.servers_range()];
        }
        // Sorted by start key, not by name: `-` and `.` sort below `/`, so `game-2/` comes
        // before `game/`. The ranges are disjoint: no `<group>/` is a prefix of another.
        let mut ranges: Vec<KeyRange> = groups
            .iter()
            .map(|g| KeyRange::prefix(self.group_prefix(g).into_bytes()))
            .collect();
        ranges.sort_by(|a, b| a.start.cmp(&b.start));
        ranges
    }

    /// `<prefix>/<group>/<id>`.
    #[must_use]
    pub fn server_key(&self, group: &str, id: u16) -> String {
        format!("{}/{group}/{id}", self.prefix)
    }

    /// `<prefix>.alloc/`: the range of the allocator keys.
    #[must_use]
    pub fn alloc_prefix(&self) -> String {
        format!("{}.alloc/", self.prefix)
    }

    /// `<prefix>.alloc/cursor`.
    #[must_use]
    pub fn cursor_key(&self) -> String {
        format!("{}.alloc/cursor", self.prefix)
    }

    /// `<prefix>.alloc/slot/<id:05>`.
    #[must_use]
    pub fn slot_key(&self, id: u16) -> String {
        format!("{}.alloc/slot/{id:05}", self.prefix)
    }

    /// `<prefix>.alloc/slot/`: the range of all slot keys.
    #[must_use]
    pub fn slots_prefix(&self) -> String {
        format!("{}.alloc/slot/", self.prefix)
    }

    /// `<prefix>.alloc/reports/<peer:05>/<peer_create_revision>/`: the reports that servers
    /// could not reach one registration of `peer` (peer-reported eviction).
    #[must_use]
    pub fn reports_prefix(&self, peer: u16, peer_create_revision: i64) -> String {
        format!(
            "{}.alloc/reports/{peer:05}/{peer_create_revision}/",
            self.prefix
        )
    }

    /// One reporter's report about one registration of `peer`.
    #[must_use]
    pub fn report_key(&self, peer: u16, peer_create_revision: i64, reporter: u16) -> String {
        format!(
            "{}{reporter:05}",
            self.reports_prefix(peer, peer_create_revision)
        )
    }

    /// Parses the id out of a slot key read back from a range.
    #[must_use]
    pub fn parse_slot_key(&self, key: &[u8]) -> Option<u16> {
        let rest = key.strip_prefix(self.slots_prefix().as_bytes())?;
        if rest.len() != 5 || !rest.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(rest)
            .ok()?
            .parse::<u16>()
            .ok()
            .filter(|id| *id != 0)
    }

    /// Classifies a key read from the server range.
    #[must_use]
    pub fn parse_server_key<'a>(&self, key: &'a [u8]) -> ParsedKey<'a> {
        // `<prefix>/` without building it: this runs for every record of every snapshot.
        let Some(rest) = key
            .strip_prefix(self.prefix.as_bytes())
            .and_then(|rest| rest.strip_prefix(b"/"))
        else {
            return ParsedKey::Malformed("outside the prefix");
        };
        let Ok(rest) = std::str::from_utf8(rest) else {
            return ParsedKey::Malformed("not UTF-8");
        };
        let Some((group, id)) = rest.split_once('/') else {
            return ParsedKey::Malformed("expected <group>/<id>");
        };
        if validate_group(group).is_err() {
            return ParsedKey::Malformed("invalid group segment");
        }
        match parse_canonical_id(id) {
            Some(id) => ParsedKey::Server { group, id },
            None => ParsedKey::Malformed("id is not a canonical integer in 1..=65535"),
        }
    }
}

/// Parses `1..=65535` written without sign or leading zeros.
fn parse_canonical_id(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> KeyLayout {
        KeyLayout::new("/darkrift").unwrap()
    }

    #[test]
    fn prefix_rules() {
        assert!(KeyLayout::new("/darkrift").is_ok());
        assert!(KeyLayout::new("/games/eu-1/darkrift").is_ok());
        for bad in [
            "",
            "/",
            "darkrift",
            "/darkrift/",
            "//x",
            "/a//b",
            "/a b",
            "/ü",
        ] {
            assert!(KeyLayout::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prefixes_inside_another_registrys_ranges_are_refused() {
        for bad in [
            "/darkrift.alloc",
            "/darkrift.alloc/x",
            "/x.alloc",
            "/games/eu.alloc/darkrift",
            "/.alloc",
            "/darkrift/game",
            "/darkrift/eu-1",
            "/darkrift/a/b",
        ] {
            let err = KeyLayout::new(bad).expect_err(bad);
            assert!(matches!(err, Error::InvalidConfig(_)), "{bad:?}: {err}");
        }
        // Siblings and look-alikes stay valid, with the shapes the tests, benchmarks and
        // compose file use (`/t<pid>-<n>`, `/blocking<pid>-<n>`, `/bench/p1`, `/darkrift-ids`).
        for good in [
            "/darkrift",
            "/darkrift-demo",
            "/darkrift-ids",
            "/darkrift-eu-1/x",
            "/darkriftx/y",
            "/test-xyz",
            "/t4242-7",
            "/blocking4242-0",
            "/bench/p1",
            "/games/eu-1/darkrift",
            "/x.allocator",
            "/x.alloc2",
            "/alloc",
            "/a/darkrift/b",
        ] {
            assert!(KeyLayout::new(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn valid_prefixes_never_reach_into_the_default_registrys_ranges() {
        let default = layout();
        let ranges = [default.servers_prefix(), default.alloc_prefix()];
        for prefix in [
            "/darkrift-demo",
            "/darkriftx",
            "/x.allocator",
            "/darkrift.allocx",
        ] {
            let l = KeyLayout::new(prefix).expect(prefix);
            for ours in [l.servers_prefix(), l.alloc_prefix()] {
                for theirs in &ranges {
                    assert!(
                        !ours.starts_with(theirs.as_str()) && !theirs.starts_with(ours.as_str()),
                        "{ours} and {theirs} overlap"
                    );
                }
            }
        }
    }

    #[test]
    fn watch_ranges_cover_the_named_groups_in_key_order() {
        let l = layout();
        let all = l.watch_ranges(&BTreeSet::new());
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].start, l.servers_prefix().into_bytes());
        assert_eq!(all[0].end, format!("{}0", l.prefix()).into_bytes());
        let groups: BTreeSet<String> = ["lobby", "game", "game-2", "Game", "g.1", "g_1"]
            .into_iter()
            .map(String::from)
            .collect();
        let ranges = l.watch_ranges(&groups);
        assert_eq!(ranges.len(), groups.len());
        for pair in ranges.windows(2) {
            // Sorted and disjoint: a range ends at or before the next one starts.
            assert!(pair[0].end <= pair[1].start, "{pair:?}");
        }
        for group in &groups {
            let inside = l.server_key(group, 7).into_bytes();
            let holding: Vec<_> = ranges.iter().filter(|r| r.contains(&inside)).collect();
            assert_eq!(holding.len(), 1, "{group}");
            let range = holding[0];
            for other in groups.iter().filter(|o| *o != group) {
                let outside = l.server_key(other, 7).into_bytes();
                assert!(!range.contains(&outside), "{group} {other}");
            }
        }
    }

    #[test]
    fn server_keys_roundtrip() {
        let l = layout();
        let key = l.server_key("lobby", 17);
        assert_eq!(key, "/darkrift/lobby/17");
        assert_eq!(
            l.parse_server_key(key.as_bytes()),
            ParsedKey::Server {
                group: "lobby",
                id: 17
            }
        );
        assert_eq!(
            l.parse_server_key(b"/darkrift/g/65535"),
            ParsedKey::Server {
                group: "g",
                id: 65535
            }
        );
    }

    #[test]
    fn malformed_server_keys() {
        let l = layout();
        for bad in [
            &b"/darkrift/lobby"[..],
            b"/darkrift/lobby/",
            b"/darkrift/lobby/0",
            b"/darkrift/lobby/017",
            b"/darkrift/lobby/65536",
            b"/darkrift/lobby/-1",
            b"/darkrift/lobby/+1",
            b"/darkrift/lobby/1/x",
            b"/darkrift/lo by/1",
            b"/darkrift//1",
            b"/darkrift/lobby/1a",
            b"/darkrift/\xff/1",
            b"/other/lobby/1",
        ] {
            assert!(
                matches!(l.parse_server_key(bad), ParsedKey::Malformed(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn allocator_keys_are_outside_the_server_range() {
        let l = layout();
        for key in [l.cursor_key(), l.slot_key(1), l.alloc_prefix()] {
            assert!(!key.starts_with(&l.servers_prefix()), "{key}");
        }
    }

    #[test]
    fn slot_keys_sort_numerically_and_roundtrip() {
        let l = layout();
        let mut keys: Vec<String> = [1u16, 9, 10, 100, 65535]
            .iter()
            .map(|i| l.slot_key(*i))
            .collect();
        let sorted = keys.clone();
        keys.sort();
        assert_eq!(keys, sorted);
        assert_eq!(l.parse_slot_key(l.slot_key(42).as_bytes()), Some(42));
        assert_eq!(l.parse_slot_key(b"/darkrift.alloc/slot/00000"), None);
        assert_eq!(l.parse_slot_key(b"/darkrift.alloc/slot/42"), None);
    }
}
