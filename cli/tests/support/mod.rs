//! Helpers of the CLI crate's own tests (the shared ones are in the root's tests/common).
#![allow(dead_code, unreachable_pub)]

pub mod args;
