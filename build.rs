//! Compiles `proto/darkrift_etcd.proto` (the stored server record) with prost.
//! Needs `protoc` (Debian: `protobuf-compiler`), which etcd-client needs as well.

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=proto/darkrift_etcd.proto");
    prost_build::Config::new()
        .btree_map(["."])
        .compile_protos(&["proto/darkrift_etcd.proto"], &["proto/"])
}
