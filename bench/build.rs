//! Generates the CSI v1 messages, clients and servers for `rxbench csi-*` from the daemon's own
//! `../proto/csi.proto`, as the daemon's build.rs does (protox: no `protoc` needed). Servers get
//! default stubs (UNIMPLEMENTED) so the bare reference server implements only what it answers.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../proto/csi.proto");
    let descriptors =
        protox::compile(["csi.proto"], ["../proto"]).unwrap_or_else(|e| panic!("../proto/csi.proto: {e}"));
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .generate_default_stubs(true)
        .compile_fds(descriptors)
        .unwrap_or_else(|e| panic!("generating the CSI bindings: {e}"));
}
