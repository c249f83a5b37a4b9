//! Regenerates the checked-in gRPC code and fails when it differs from what is
//! in `src/gen/` (a `.proto` was edited without regenerating). Set
//! `SESAME_PROTO_BLESS=1` to write the new code instead.

use std::path::{Path, PathBuf};

const PROTOS: &[&str] = &[
    "sesame/types/v1/types.proto",
    "sesame/tenant/v1/tenant.proto",
    "sesame/device/v1/device.proto",
    "sesame/simulator/v1/simulator.proto",
    "sesame/ratelimit/v1/ratelimit.proto",
    "sesame/admin/v1/admin.proto",
];

fn generate(out: &Path) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc");
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(out)
        .file_descriptor_set_path(out.join("descriptor.bin"))
        .compile_with_config(config, &files, std::slice::from_ref(&root))
        .expect("protoc + tonic-prost-build");
}

#[test]
fn generated_code_is_up_to_date() {
    let gen_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/gen");
    let tmp = tempfile::tempdir().expect("tempdir");
    generate(tmp.path());

    let bless = std::env::var_os("SESAME_PROTO_BLESS").is_some();
    let mut drifted = Vec::new();
    for entry in std::fs::read_dir(tmp.path()).expect("read generated dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name();
        let fresh = std::fs::read(entry.path()).expect("read generated file");
        let checked_in = std::fs::read(gen_dir.join(&name)).unwrap_or_default();
        if fresh != checked_in {
            if bless {
                std::fs::create_dir_all(&gen_dir).expect("create src/gen");
                std::fs::write(gen_dir.join(&name), &fresh).expect("write src/gen");
            } else {
                drifted.push(name.to_string_lossy().into_owned());
            }
        }
    }
    assert!(
        drifted.is_empty(),
        "generated code in proto/src/gen is stale: {drifted:?}; \
         run `SESAME_PROTO_BLESS=1 cargo test -p sesame-proto --test bootstrap`"
    );
}
