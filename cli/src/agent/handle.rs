//! Registration handles: the only way to address, change or take back a registration.
//!
//! A handle is 32 random bytes from the operating system, written as 64 hex digits. It is a
//! capability: whoever holds it can change the registration, so it is never written to etcd
//! (everything in etcd is visible to every reader of the prefix). The record holds its SHA-256
//! instead, which is what lets a restarted agent check, with nothing but etcd, that a client
//! resuming id 7 is the one that registered it.

use std::fmt;

use ring::digest::{digest, SHA256};
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes of randomness in a handle.
const LEN: usize = 32;

/// A registration handle.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Handle([u8; LEN]);

/// The operating system's random source failed (no handle can be made).
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random number generator failed")]
pub(crate) struct NoRandomness;

impl Handle {
    /// A new, unguessable handle.
    pub(crate) fn generate() -> Result<Self, NoRandomness> {
        let mut bytes = [0u8; LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| NoRandomness)?;
        Ok(Handle(bytes))
    }

    /// Parses the 64-hex-digit form (either case); anything else is `None`.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        if text.len() != 2 * LEN || !text.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; LEN];
        for (i, pair) in text.as_bytes().chunks_exact(2).enumerate() {
            let pair = std::str::from_utf8(pair).ok()?;
            bytes[i] = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(Handle(bytes))
    }

    /// SHA-256 of the handle's bytes: what the record stores as proof of ownership.
    pub(crate) fn token_hash(&self) -> Vec<u8> {
        digest(&SHA256, &self.0).as_ref().to_vec()
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Never print a handle in logs: it is a secret. Debug shows a short digest prefix instead,
/// enough to tell two handles apart in a trace.
impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hash = self.token_hash();
        write!(
            f,
            "Handle(sha256:{:02x}{:02x}{:02x}{:02x}…)",
            hash[0], hash[1], hash[2], hash[3]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_roundtrip_through_their_text_and_differ() {
        let a = Handle::generate().expect("randomness");
        let b = Handle::generate().expect("randomness");
        assert_ne!(a, b);
        let text = a.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(Handle::parse(&text), Some(a.clone()));
        assert_eq!(Handle::parse(&text.to_uppercase()), Some(a));
    }

    #[test]
    fn malformed_handles_are_refused() {
        for bad in [
            "",
            "abc",
            &"g".repeat(64),
            &"0".repeat(63),
            &"0".repeat(65),
            &"é".repeat(32),
        ] {
            assert_eq!(Handle::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_token_hash_is_sha256_and_debug_hides_the_secret() {
        let h = Handle::parse(&"00".repeat(32)).expect("valid");
        // SHA-256 of 32 zero bytes.
        let hash = h.token_hash();
        assert_eq!(hash.len(), 32);
        assert_eq!(hash[..4], [0x66, 0x68, 0x7a, 0xad]);
        let shown = format!("{h:?}");
        assert!(!shown.contains(&"00".repeat(32)), "{shown}");
    }
}
