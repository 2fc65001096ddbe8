//! `KeyLayout::parse_slot_key` on arbitrary bytes: never panics, and whatever it accepts is
//! exactly the slot key of that id.
#![no_main]

use darkrift_etcd::keys::KeyLayout;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(layout) = KeyLayout::new("/darkrift") else {
        return;
    };
    if let Some(id) = layout.parse_slot_key(data) {
        assert_ne!(id, 0, "slot 0 accepted");
        assert_eq!(
            layout.slot_key(id).as_bytes(),
            data,
            "non-canonical slot key accepted"
        );
    }
});
