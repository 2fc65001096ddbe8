//! `KeyLayout::parse_server_key` on arbitrary bytes: never panics, and whatever it accepts is
//! the canonical spelling of a key the registry itself would write.
#![no_main]

use darkrift_etcd::keys::{KeyLayout, ParsedKey};
use libfuzzer_sys::fuzz_target;

/// Prefixes with one and several segments, dots and dashes.
const PREFIXES: [&str; 3] = ["/darkrift", "/a", "/games/eu-1.x/dr"];

fuzz_target!(|data: &[u8]| {
    // The first byte picks the prefix, the rest is the key.
    let Some((&pick, key)) = data.split_first() else {
        return;
    };
    let Ok(layout) = KeyLayout::new(PREFIXES[usize::from(pick) % PREFIXES.len()]) else {
        return;
    };
    if let ParsedKey::Server { group, id } = layout.parse_server_key(key) {
        assert_ne!(id, 0, "id 0 accepted");
        assert!(
            darkrift_etcd::record::validate_group(group).is_ok(),
            "bad group accepted"
        );
        assert_eq!(
            layout.server_key(group, id).as_bytes(),
            key,
            "accepted a non-canonical spelling"
        );
        // Never an allocator key.
        assert!(!key.starts_with(layout.alloc_prefix().as_bytes()));
    }
});
