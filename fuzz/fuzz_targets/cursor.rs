//! `alloc::decode_cursor` on arbitrary bytes: never panics, and whatever it accepts is the
//! canonical encoding of the position it returns.
#![no_main]

use darkrift_etcd::alloc::{decode_cursor, encode_cursor};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(position) = decode_cursor(data) {
        assert_eq!(
            encode_cursor(position).as_bytes(),
            data,
            "non-canonical cursor accepted"
        );
    }
});
