//! Compiles our wire-compatible copies of the go-plugin and Nomad plugin protos into Rust
//! (prost messages plus tonic client and server stubs) using the vendored `protoc`.

use std::path::PathBuf;

use anyhow::Context as _;

/// Every `.proto` we compile, relative to this crate's root. Paths below the crate root mirror
/// Nomad's repository layout so that Nomad-style imports (`plugins/shared/...`) resolve.
const PROTOS: &[&str] = &[
    "go-plugin/grpc_controller.proto",
    "go-plugin/grpc_stdio.proto",
    "go-plugin/grpc_broker.proto",
    "google/rpc/status.proto",
    "plugins/shared/hclspec/hcl_spec.proto",
    "plugins/shared/structs/proto/attribute.proto",
    "plugins/shared/structs/proto/recoverable_error.proto",
    "plugins/base/proto/base.proto",
    "plugins/drivers/proto/driver.proto",
];

/// Folders holding our protos; watched so that edits trigger a rebuild.
const WATCHED_DIRS: &[&str] = &["go-plugin", "google", "plugins"];

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR is not set")?,
    );
    let protoc = protoc_bin_vendored::protoc_bin_path()
        .context("no vendored protoc binary for this host platform")?;
    let well_known = protoc_bin_vendored::include_path()
        .context("no vendored include dir for google/protobuf/*.proto")?;

    println!("cargo:rerun-if-changed=build.rs");
    for dir in WATCHED_DIRS {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }

    let proto_files: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    let includes = vec![root.clone(), well_known];

    // Passing protoc through the config (rather than via the PROTOC variable) avoids mutating
    // the process environment, which is `unsafe` in edition 2024.
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    // `prost::Name` impls give every message its type URL, needed to pack RecoverableError into a
    // google.protobuf.Any; use the conventional domain (Go resolves by the part after the `/`).
    config.enable_type_names();
    config.type_name_domain(["."], "type.googleapis.com");

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_with_config(config, &proto_files, &includes)
        .context("compiling the plugin protos")?;
    Ok(())
}
