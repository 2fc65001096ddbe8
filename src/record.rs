//! The stored server record: validation of what a server registers, and the prost encoding
//! of what is written under its key.
//!
//! The schema is `proto/darkrift_etcd.proto`, shipped with the crate so that tools in other
//! languages can read the registry. Decoding is lenient where it is safe (unknown fields and
//! newer schema versions are accepted) and strict where a wrong value would become a bogus
//! join (the id and group must match the key, the port must be a real port).

use std::collections::BTreeMap;

use prost::Message;

/// The generated prost types of `proto/darkrift_etcd.proto`.
#[allow(missing_docs, clippy::pedantic)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/darkrift_etcd.v1.rs"));
}

pub use pb::ServerRecord;

/// Schema version this crate writes.
pub const SCHEMA_VERSION: u32 = 1;
/// Longest accepted group name, in bytes.
pub const MAX_GROUP_LEN: usize = 64;
/// Longest accepted host, in bytes (a DNS name is at most 253).
pub const MAX_HOST_LEN: usize = 253;
/// Most properties one server may register.
pub const MAX_PROPERTIES: usize = 32;
/// Longest property key, in bytes.
pub const MAX_PROPERTY_KEY_LEN: usize = 128;
/// Longest property value, in bytes.
pub const MAX_PROPERTY_VALUE_LEN: usize = 1024;
/// Largest encoded record, in bytes: far below etcd's default 1.5 MiB request limit, so a
/// registration can never be refused by etcd for its size.
pub const MAX_RECORD_LEN: usize = 16 * 1024;

/// Why a registration input or a stored record was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The group name is empty, too long, or has a character outside `[A-Za-z0-9._-]`.
    #[error("invalid group name {group:?}: {why}")]
    InvalidGroup {
        /// The rejected name.
        group: String,
        /// What rule it broke.
        why: &'static str,
    },
    /// The host is empty, too long, or contains whitespace or control characters.
    #[error("invalid host {host:?}: {why}")]
    InvalidHost {
        /// The rejected host.
        host: String,
        /// What rule it broke.
        why: &'static str,
    },
    /// Port 0 cannot be dialled.
    #[error("invalid port 0: a server must advertise the port it listens on (1..=65535)")]
    PortZero,
    /// Properties exceed a bound.
    #[error("invalid properties: {0}")]
    InvalidProperties(String),
    /// A stored value is not a valid record.
    #[error("malformed record: {0}")]
    Malformed(String),
}

/// Checks a group name: 1..=64 bytes of `[A-Za-z0-9._-]`.
///
/// The character set keeps a group a single key segment (no `/`), printable, and
/// shell- and URL-safe.
///
/// # Errors
/// [`RecordError::InvalidGroup`] saying which rule was broken.
pub fn validate_group(group: &str) -> Result<(), RecordError> {
    let err = |why| RecordError::InvalidGroup {
        group: group.to_owned(),
        why,
    };
    if group.is_empty() {
        return Err(err("must not be empty"));
    }
    if group.len() > MAX_GROUP_LEN {
        return Err(err("longer than 64 bytes"));
    }
    if !group
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(err("only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"));
    }
    if group == "." || group == ".." {
        return Err(err("'.' and '..' are reserved"));
    }
    Ok(())
}

/// Checks a host: non-empty, at most 253 bytes, no whitespace or control characters.
///
/// # Errors
/// [`RecordError::InvalidHost`].
pub fn validate_host(host: &str) -> Result<(), RecordError> {
    let err = |why| RecordError::InvalidHost {
        host: host.to_owned(),
        why,
    };
    if host.is_empty() {
        return Err(err("must not be empty"));
    }
    if host.len() > MAX_HOST_LEN {
        return Err(err("longer than 253 bytes"));
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err("must not contain whitespace or control characters"));
    }
    Ok(())
}

/// Checks the properties against the bounds above.
///
/// # Errors
/// [`RecordError::InvalidProperties`] naming the bound.
pub fn validate_properties(properties: &BTreeMap<String, String>) -> Result<(), RecordError> {
    if properties.len() > MAX_PROPERTIES {
        return Err(RecordError::InvalidProperties(format!(
            "{} properties, at most {MAX_PROPERTIES} allowed",
            properties.len()
        )));
    }
    for (k, v) in properties {
        if k.is_empty() || k.len() > MAX_PROPERTY_KEY_LEN {
            return Err(RecordError::InvalidProperties(format!(
                "property key {k:?} must be 1..={MAX_PROPERTY_KEY_LEN} bytes"
            )));
        }
        if v.len() > MAX_PROPERTY_VALUE_LEN {
            return Err(RecordError::InvalidProperties(format!(
                "value of property {k:?} is {} bytes, at most {MAX_PROPERTY_VALUE_LEN} allowed",
                v.len()
            )));
        }
    }
    Ok(())
}

/// What a server asks to register, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    group: String,
    host: String,
    port: u16,
    properties: BTreeMap<String, String>,
    owner_token_hash: Vec<u8>,
}

/// Longest owner token hash a record carries (a SHA-512 would fit; the agent writes SHA-256).
pub const MAX_OWNER_TOKEN_HASH_LEN: usize = 64;

impl Registration {
    /// Validates the four inputs of DarkRift's `RegisterServer`.
    ///
    /// # Errors
    /// The first rule broken, as a [`RecordError`]; nothing has been written anywhere.
    pub fn new(
        group: impl Into<String>,
        host: impl Into<String>,
        port: u16,
        properties: BTreeMap<String, String>,
    ) -> Result<Self, RecordError> {
        let group = group.into();
        let host = host.into();
        validate_group(&group)?;
        validate_host(&host)?;
        if port == 0 {
            return Err(RecordError::PortZero);
        }
        validate_properties(&properties)?;
        let reg = Registration {
            group,
            host,
            port,
            properties,
            owner_token_hash: vec![0; MAX_OWNER_TOKEN_HASH_LEN],
        };
        // Bounded with the largest owner hash, so that adding one later cannot overflow.
        let len = reg.encode(u16::MAX, u64::MAX, i64::MAX).len();
        let reg = Registration {
            owner_token_hash: Vec::new(),
            ..reg
        };
        if len > MAX_RECORD_LEN {
            return Err(RecordError::InvalidProperties(format!(
                "encoded record is {len} bytes, at most {MAX_RECORD_LEN} allowed"
            )));
        }
        Ok(reg)
    }

    /// The group.
    #[must_use]
    pub fn group(&self) -> &str {
        &self.group
    }
    /// The advertised host.
    #[must_use]
    pub fn host(&self) -> &str {
        &self.host
    }
    /// The advertised port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }
    /// The properties.
    #[must_use]
    pub fn properties(&self) -> &BTreeMap<String, String> {
        &self.properties
    }

    /// The same registration, with the hash of its owner's secret handle written into its
    /// record (see `owner_token_hash` in the published `.proto`): a restarted agent compares it
    /// before it hands the registration back.
    ///
    /// # Errors
    /// [`RecordError::InvalidProperties`] if `hash` is longer than
    /// [`MAX_OWNER_TOKEN_HASH_LEN`] bytes.
    pub fn with_owner_token_hash(mut self, hash: Vec<u8>) -> Result<Self, RecordError> {
        if hash.len() > MAX_OWNER_TOKEN_HASH_LEN {
            return Err(RecordError::InvalidProperties(format!(
                "owner token hash of {} bytes, at most {MAX_OWNER_TOKEN_HASH_LEN}",
                hash.len()
            )));
        }
        self.owner_token_hash = hash;
        Ok(self)
    }

    /// The owner token hash written into the record (empty when none).
    #[must_use]
    pub fn owner_token_hash(&self) -> &[u8] {
        &self.owner_token_hash
    }

    /// Encodes the record stored for this registration under id `id`, taken at cursor
    /// position `alloc_position`.
    #[must_use]
    pub fn encode(&self, id: u16, alloc_position: u64, registered_at_unix_ms: i64) -> Vec<u8> {
        ServerRecord {
            schema_version: SCHEMA_VERSION,
            id: u32::from(id),
            group: self.group.clone(),
            host: self.host.clone(),
            port: u32::from(self.port),
            properties: self.properties.clone(),
            registered_at_unix_ms,
            alloc_position,
            owner_token_hash: self.owner_token_hash.clone(),
            departing: false,
        }
        .encode_to_vec()
    }
}

/// A registered server as peers see it: what a join carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerInfo {
    /// Cluster-unique id (1..=65535).
    pub id: u16,
    /// DarkRift group.
    pub group: String,
    /// Host to dial.
    pub host: String,
    /// Port to dial.
    pub port: u16,
    /// Properties registered with the server.
    pub properties: BTreeMap<String, String>,
    /// Registration time, milliseconds since the Unix epoch, as written by the server.
    pub registered_at_unix_ms: i64,
    /// Allocation cursor position the id was taken at (0 when written by an older writer).
    pub alloc_position: u64,
    /// Its owner marked it as going away (a deregistration follows): see `departing` in the
    /// published `.proto`.
    pub departing: bool,
}

/// Decodes a stored value for the key's `(group, id)`, rejecting anything that would make a
/// bogus join.
///
/// # Errors
/// [`RecordError::Malformed`] when the bytes are not a record, or the record disagrees with its
/// key, or its host or port could not be dialled.
pub fn decode(group: &str, id: u16, value: &[u8]) -> Result<ServerInfo, RecordError> {
    // The same bounds as on write: a hostile writer cannot push an oversized record (up to
    // etcd's 1.5 MiB request limit) into every peer's memory as a join.
    if value.len() > MAX_RECORD_LEN {
        return Err(RecordError::Malformed(format!(
            "{} bytes, at most {MAX_RECORD_LEN}",
            value.len()
        )));
    }
    let rec = ServerRecord::decode(value).map_err(|e| RecordError::Malformed(e.to_string()))?;
    if rec.schema_version == 0 {
        return Err(RecordError::Malformed("schema_version missing".into()));
    }
    if rec.id != u32::from(id) {
        return Err(RecordError::Malformed(format!(
            "record id {} under key id {id}",
            rec.id
        )));
    }
    if rec.group != group {
        return Err(RecordError::Malformed(format!(
            "record group {:?} under key group {group:?}",
            rec.group
        )));
    }
    validate_host(&rec.host).map_err(|e| RecordError::Malformed(e.to_string()))?;
    validate_properties(&rec.properties).map_err(|e| RecordError::Malformed(e.to_string()))?;
    let port = u16::try_from(rec.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| RecordError::Malformed(format!("port {} out of range", rec.port)))?;
    Ok(ServerInfo {
        id,
        group: rec.group,
        host: rec.host,
        port,
        properties: rec.properties,
        registered_at_unix_ms: rec.registered_at_unix_ms,
        alloc_position: rec.alloc_position,
        departing: rec.departing,
    })
}

/// The owner token hash a stored record carries (empty when it has none), or `None` when the
/// bytes are not a record. Ownership is then proved by comparing it with the hash of the
/// handle presented; no other field is trusted for that.
#[must_use]
pub fn owner_token_hash_of(value: &[u8]) -> Option<Vec<u8>> {
    if value.len() > MAX_RECORD_LEN {
        return None;
    }
    ServerRecord::decode(value)
        .ok()
        .map(|rec| rec.owner_token_hash)
}

/// The stored record `value`, marked as departing (see [`ServerInfo::departing`]); `None`
/// when the bytes are not a record.
pub(crate) fn mark_departing(value: &[u8]) -> Option<Vec<u8>> {
    if value.len() > MAX_RECORD_LEN {
        return None;
    }
    let mut rec = ServerRecord::decode(value).ok()?;
    rec.departing = true;
    Some(rec.encode_to_vec())
}

/// The allocation position a stored record carries, or `None` when the bytes are not a
/// record.
pub(crate) fn decode_position(value: &[u8]) -> Option<u64> {
    if value.len() > MAX_RECORD_LEN {
        return None;
    }
    ServerRecord::decode(value)
        .ok()
        .map(|rec| rec.alloc_position)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(n: usize) -> BTreeMap<String, String> {
        (0..n).map(|i| (format!("k{i}"), "v".to_owned())).collect()
    }

    #[test]
    fn group_rules() {
        assert!(validate_group("lobby").is_ok());
        assert!(validate_group("Game_1.eu-west").is_ok());
        assert!(validate_group(&"a".repeat(64)).is_ok());
        for bad in ["", "a/b", "a b", "ü", "..", ".", &"a".repeat(65), "x@y"] {
            assert!(
                matches!(validate_group(bad), Err(RecordError::InvalidGroup { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn registration_rules() {
        assert!(Registration::new("g", "127.0.0.1", 4296, BTreeMap::new()).is_ok());
        assert_eq!(
            Registration::new("g", "h", 0, BTreeMap::new()),
            Err(RecordError::PortZero)
        );
        assert!(matches!(
            Registration::new("g", "", 1, BTreeMap::new()),
            Err(RecordError::InvalidHost { .. })
        ));
        assert!(matches!(
            Registration::new("g", "a b", 1, BTreeMap::new()),
            Err(RecordError::InvalidHost { .. })
        ));
        assert!(Registration::new("g", "h", 1, props(MAX_PROPERTIES)).is_ok());
        assert!(matches!(
            Registration::new("g", "h", 1, props(MAX_PROPERTIES + 1)),
            Err(RecordError::InvalidProperties(_))
        ));
        let mut big = BTreeMap::new();
        big.insert("k".to_owned(), "v".repeat(MAX_PROPERTY_VALUE_LEN + 1));
        assert!(matches!(
            Registration::new("g", "h", 1, big),
            Err(RecordError::InvalidProperties(_))
        ));
    }

    #[test]
    fn roundtrip_and_key_agreement() {
        let reg = Registration::new("game", "10.0.0.1", 4296, props(2)).unwrap();
        let bytes = reg.encode(7, 7, 1234);
        let info = decode("game", 7, &bytes).unwrap();
        assert_eq!(info.id, 7);
        assert_eq!(info.host, "10.0.0.1");
        assert_eq!(info.port, 4296);
        assert_eq!(info.properties, props(2));
        assert_eq!(info.registered_at_unix_ms, 1234);
        assert!(decode("game", 8, &bytes).is_err(), "id must match key");
        assert!(decode("lobby", 7, &bytes).is_err(), "group must match key");
    }

    #[test]
    fn garbage_and_bad_fields_are_malformed() {
        assert!(decode("g", 1, b"not a protobuf \xff\xff").is_err());
        assert!(
            decode("g", 1, b"").is_err(),
            "empty value has no schema version"
        );
        let rec = ServerRecord {
            schema_version: 1,
            id: 1,
            group: "g".into(),
            host: "h".into(),
            port: 70000,
            ..Default::default()
        };
        assert!(
            decode("g", 1, &rec.encode_to_vec()).is_err(),
            "port out of range"
        );
        let rec = ServerRecord { port: 0, ..rec };
        assert!(decode("g", 1, &rec.encode_to_vec()).is_err(), "port zero");
    }

    #[test]
    fn oversized_records_are_malformed_on_read() {
        let rec = ServerRecord {
            schema_version: 1,
            id: 1,
            group: "g".into(),
            host: "h".into(),
            port: 1,
            properties: props(MAX_PROPERTIES + 1),
            ..Default::default()
        };
        assert!(
            decode("g", 1, &rec.encode_to_vec()).is_err(),
            "too many properties"
        );
        let mut big = BTreeMap::new();
        big.insert("k".to_owned(), "v".repeat(MAX_RECORD_LEN));
        let rec = ServerRecord {
            properties: big,
            ..rec
        };
        assert!(decode("g", 1, &rec.encode_to_vec()).is_err(), "too large");
    }

    #[test]
    fn the_owner_token_hash_is_stored_and_bounded() {
        let reg = Registration::new("g", "h", 1, BTreeMap::new()).unwrap();
        assert!(reg.owner_token_hash().is_empty());
        let bytes = reg.encode(3, 3, 0);
        assert_eq!(owner_token_hash_of(&bytes), Some(Vec::new()));
        let reg = reg.with_owner_token_hash(vec![7; 32]).unwrap();
        let bytes = reg.encode(3, 3, 0);
        assert_eq!(owner_token_hash_of(&bytes), Some(vec![7; 32]));
        assert!(decode("g", 3, &bytes).is_ok(), "peers read it as before");
        assert_eq!(owner_token_hash_of(b"\xff\xff not a record"), None);
        assert!(Registration::new("g", "h", 1, BTreeMap::new())
            .unwrap()
            .with_owner_token_hash(vec![0; MAX_OWNER_TOKEN_HASH_LEN + 1])
            .is_err());
        // The largest properties a registration accepts still leave room for the hash.
        let mut props = BTreeMap::new();
        props.insert("k".to_owned(), "v".repeat(MAX_PROPERTY_VALUE_LEN));
        if let Ok(reg) = Registration::new("g", "h", 1, props) {
            let reg = reg.with_owner_token_hash(vec![1; 32]).unwrap();
            assert!(reg.encode(u16::MAX, u64::MAX, i64::MAX).len() <= MAX_RECORD_LEN);
        }
    }

    #[test]
    fn unknown_fields_and_newer_versions_are_tolerated() {
        let reg = Registration::new("g", "h", 1, BTreeMap::new()).unwrap();
        let mut bytes = reg.encode(3, 3, 0);
        // Field 99, varint 5: a field a future writer might add.
        bytes.extend_from_slice(&[0x98, 0x06, 0x05]);
        assert!(decode("g", 3, &bytes).is_ok());
        let rec = ServerRecord {
            schema_version: 7,
            id: 3,
            group: "g".into(),
            host: "h".into(),
            port: 1,
            ..Default::default()
        };
        assert!(decode("g", 3, &rec.encode_to_vec()).is_ok());
    }
}
