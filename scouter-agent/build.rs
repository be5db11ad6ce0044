//! Builds the eBPF programs (package `scouter-ebpf`, for `bpfel-unknown-none`, with the nightly
//! toolchain and bpf-linker) and leaves the object in OUT_DIR for `include_bytes_aligned!`.
//! `cargo xtask setup` installs what this needs; bpf-linker is looked up in the project's tools
//! directory first.
//!
//! It also generates the Scouter gRPC client (the Scouter sink) and server (the receiver the
//! Scouter SDK can send to) from `proto/scouter.proto` (protox parses it in
//! pure Rust, so no `protoc` is needed) into OUT_DIR as `scouter.grpc.v1.rs`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

const PROTO_DIR: &str = "proto";
const PROTO: &str = "proto/scouter.proto";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed={PROTO}");
    let descriptors = protox::compile([PROTO], [PROTO_DIR]).context("compiling proto/scouter.proto")?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)
        .context("generating the Scouter gRPC client")?;

    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent().context("agent crate has no parent directory")?;
    let ebpf_dir = workspace.join("scouter-ebpf");
    println!("cargo:rerun-if-env-changed=SCOUTER_TOOLS_DIR");
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if std::env::var_os("AYA_BUILD_SKIP").is_some_and(|v| v == "1") {
        // Unit tests and linters need no eBPF object; the agent refuses to run with this one.
        let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
        std::fs::write(out_dir.join("scouter-ebpf"), b"")?;
        return Ok(());
    }

    let tools_bin = std::env::var_os("SCOUTER_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target/tools"))
        .join("bin");
    prepend_to_path(&tools_bin)?;
    if which("bpf-linker").is_none() {
        bail!("bpf-linker not found in {} or on PATH: run `cargo xtask setup` first", tools_bin.display());
    }

    let pin = ebpf_dir.join("rust-toolchain.toml");
    println!("cargo:rerun-if-changed={}", pin.display());
    let channel = pinned_channel(&pin)?;
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    let package = aya_build::Package { name: "scouter-ebpf", root_dir: ebpf_dir, ..Default::default() };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(&channel))
}

/// The nightly the eBPF crate is pinned to (its rust-toolchain.toml), which `cargo xtask
/// setup` installs.
fn pinned_channel(pin: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(pin).with_context(|| format!("cannot read {}", pin.display()))?;
    let table: toml::Table = text.parse().with_context(|| format!("cannot parse {}", pin.display()))?;
    let channel = table.get("toolchain").and_then(|toolchain| toolchain.get("channel")).and_then(|c| c.as_str());
    channel.map(str::to_owned).with_context(|| format!("{} has no [toolchain] channel", pin.display()))
}

fn prepend_to_path(dir: &Path) -> anyhow::Result<()> {
    let mut paths = vec![dir.to_path_buf()];
    if let Some(path) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&path));
    }
    // SAFETY: build scripts are single-threaded here; the child cargo inherits PATH.
    unsafe { std::env::set_var("PATH", std::env::join_paths(paths)?) };
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}
