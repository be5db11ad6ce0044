//! Generates the Scouter gRPC messages, server and client from the agent's
//! `scouter-agent/proto/scouter.proto` (one definition of the API for both sides).
//!
//! protox parses the .proto in pure Rust, so the build needs no `protoc` on the host; its
//! descriptor set goes to tonic-prost-build, which writes `scouter.grpc.v1.rs` into OUT_DIR
//! (included by `backends/scouter.rs`).

use std::error::Error;

const PROTO_DIR: &str = "../scouter-agent/proto";
const PROTO: &str = "../scouter-agent/proto/scouter.proto";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO}");
    let descriptors = protox::compile([PROTO], [PROTO_DIR])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(descriptors)?;
    Ok(())
}
