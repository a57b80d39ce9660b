//! The plugin process: go-plugin handshake, then one h2c gRPC server on a unix socket serving
//! health (`plugin` SERVING), go-plugin's controller/stdio/broker, BasePlugin and Driver.

pub mod goplugin;
pub mod handshake;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bpfexec_proto::base::base_plugin_server::BasePluginServer;
use bpfexec_proto::drivers::driver_server::DriverServer;
use bpfexec_proto::plugin::{
    grpc_broker_server::GrpcBrokerServer, grpc_controller_server::GrpcControllerServer,
    grpc_stdio_server::GrpcStdioServer,
};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::runtime::Runtime;

/// Nomad's client sends up to MaxInt32; big env maps and configs must fit.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// After Shutdown, in-flight long polls (WaitTask) are abandoned after this long.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(300);

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(transparent)]
    Handshake(#[from] handshake::HandshakeError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Runs the plugin until Nomad shuts it down; returns the process exit code.
pub fn run() -> i32 {
    if let Err(e) = handshake::check_env(
        std::env::var(handshake::COOKIE_KEY).ok().as_deref(),
        std::env::var("PLUGIN_PROTOCOL_VERSIONS").ok().as_deref(),
    ) {
        eprintln!("{e}");
        return 1;
    }
    crate::logging::init();
    // The plugin shares the agent's process group: Ctrl-C on the agent must not kill us.
    // SAFETY: SIG_IGN installs no handler code.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let result = runtime
        .map_err(PluginError::Runtime)
        .and_then(|rt| rt.block_on(serve()));
    match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "plugin failed");
            1
        }
    }
}

async fn serve() -> Result<(), PluginError> {
    let dir = std::env::var_os("PLUGIN_UNIX_SOCKET_DIR").map(PathBuf::from);
    let path = handshake::socket_path(dir.as_deref());
    let listener =
        UnixListener::bind(&path).map_err(|source| handshake::HandshakeError::Socket {
            dir: path.parent().map(PathBuf::from).unwrap_or_default(),
            source,
        })?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_service_status("plugin", tonic_health::ServingStatus::Serving)
        .await;
    let rt = Runtime::new();
    let (shutdown_tx, mut shutdown_rx) = tokio::sync::watch::channel(false);
    let mut grace_rx = shutdown_tx.subscribe();
    handshake::announce(&path)?;
    tracing::debug!(socket = %path.display(), "plugin listening");

    let driver = DriverServer::new(crate::service::DriverService::new(Arc::clone(&rt)))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let base = BasePluginServer::new(crate::base::BaseService::new(Arc::clone(&rt)))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let server = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(GrpcControllerServer::new(goplugin::Controller {
            shutdown: shutdown_tx,
        }))
        .add_service(GrpcStdioServer::new(goplugin::Stdio))
        .add_service(GrpcBrokerServer::new(goplugin::Broker))
        .add_service(base)
        .add_service(driver)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
            let _ = shutdown_rx.wait_for(|stop| *stop).await;
        });
    let mut server = std::pin::pin!(server);
    let result = tokio::select! {
        r = &mut server => r,
        () = async {
            // Once shutdown starts, give open long polls a moment, then leave.
            let _ = grace_rx.wait_for(|s| *s).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => Ok(()),
    };
    let _ = std::fs::remove_file(&path);
    // Spans of finished processes and runs still queued go out before the process ends.
    rt.telemetry.shutdown().await;
    result.map_err(PluginError::from)
}
