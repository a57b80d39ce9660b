//! Rust bindings (prost messages, tonic clients and servers) for our wire-compatible copies of
//! go-plugin's internal protos (v1.7.0) and Nomad's plugin API protos (v1.10.x).
//!
//! The generated code lives in modules nested like the proto packages, so that prost's relative
//! cross-package paths (for example drivers → `hclspec::Spec`) resolve; the short public names
//! below re-export those modules.

/// go-plugin's `plugin` package: `GRPCController`, `GRPCStdio` and `GRPCBroker`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod plugin {
    include!(concat!(env!("OUT_DIR"), "/plugin.rs"));
}

#[allow(clippy::all, clippy::pedantic, missing_docs)]
mod google {
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}

#[allow(clippy::all, clippy::pedantic, missing_docs)]
mod hashicorp {
    pub mod nomad {
        pub mod plugins {
            pub mod base {
                pub mod proto {
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/hashicorp.nomad.plugins.base.proto.rs"
                    ));
                }
            }
            pub mod drivers {
                pub mod proto {
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/hashicorp.nomad.plugins.drivers.proto.rs"
                    ));
                }
            }
            pub mod shared {
                pub mod hclspec {
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/hashicorp.nomad.plugins.shared.hclspec.rs"
                    ));
                }
                pub mod structs {
                    include!(concat!(
                        env!("OUT_DIR"),
                        "/hashicorp.nomad.plugins.shared.structs.rs"
                    ));
                }
            }
        }
    }
}

/// `google.rpc`: the `Status` message carried in `grpc-status-details-bin`.
pub use google::rpc as google_rpc;
/// `hashicorp.nomad.plugins.base.proto`: the `BasePlugin` service.
pub use hashicorp::nomad::plugins::base::proto as base;
/// `hashicorp.nomad.plugins.drivers.proto`: the `Driver` service.
pub use hashicorp::nomad::plugins::drivers::proto as drivers;
/// `hashicorp.nomad.plugins.shared.hclspec`: config schema descriptions.
pub use hashicorp::nomad::plugins::shared::hclspec;
/// `hashicorp.nomad.plugins.shared.structs`: `Attribute` and `RecoverableError`.
pub use hashicorp::nomad::plugins::shared::structs;
