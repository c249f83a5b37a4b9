//! Sesame's gRPC API, generated from `proto/sesame/**.proto`.
//!
//! The generated code is checked in under `src/gen/` so that building Sesame
//! needs no `protoc`. `cargo test -p sesame-proto --test bootstrap` regenerates
//! it with a vendored `protoc` and fails when the checked-in files drifted;
//! run it with `SESAME_PROTO_BLESS=1` to rewrite them after editing a `.proto`.

#![allow(clippy::all, missing_docs)]

pub mod types {
    pub mod v1 {
        include!("gen/sesame.types.v1.rs");
    }
}

pub mod tenant {
    pub mod v1 {
        include!("gen/sesame.tenant.v1.rs");
    }
}

pub mod device {
    pub mod v1 {
        include!("gen/sesame.device.v1.rs");
    }
}

pub mod ratelimit {
    pub mod v1 {
        include!("gen/sesame.ratelimit.v1.rs");
    }
}

pub mod admin {
    pub mod v1 {
        include!("gen/sesame.admin.v1.rs");
    }
}

pub mod simulator {
    pub mod v1 {
        include!("gen/sesame.simulator.v1.rs");
    }
}

/// Encoded `FileDescriptorSet` of every Sesame service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("gen/descriptor.bin");
