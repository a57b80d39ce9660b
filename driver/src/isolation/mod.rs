//! Turning a Nomad task plus our configs into a launch spec: namespaces, root filesystem view,
//! identity, capabilities. Everything is decided and validated here, in the plugin, so a bad job
//! fails StartTask with a clear message before any process exists.

pub mod caps;
pub mod identity;
pub mod images;
pub mod plan;
