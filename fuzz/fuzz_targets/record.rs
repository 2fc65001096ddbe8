//! `record::decode` on arbitrary values: never panics, and a record it accepts is one a join
//! can carry safely: it agrees with its key, its host is valid and its port dialable.
#![no_main]

use darkrift_etcd::record::{decode, validate_host};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first two bytes pick the key's id, the third the key's group. (Id 0 is left out:
    // the key parser never hands it to `decode`.)
    let (head, value) = data.split_at(data.len().min(3));
    let id = u16::from_le_bytes([
        head.first().copied().unwrap_or(1),
        head.get(1).copied().unwrap_or(0),
    ]);
    if id == 0 {
        return;
    }
    let group = ["lobby", "g", "a.b-c_d"][usize::from(head.get(2).copied().unwrap_or(0)) % 3];
    if let Ok(server) = decode(group, id, value) {
        assert_eq!(server.id, id);
        assert_eq!(server.group, group);
        assert_ne!(server.port, 0, "port 0 accepted");
        assert!(validate_host(&server.host).is_ok(), "invalid host accepted");
    }
});
