//! go-plugin's own services on our socket: `plugin.GRPCController` (Shutdown: stop serving and
//! exit, leaving tasks running), `plugin.GRPCStdio` and `plugin.GRPCBroker` (kept open, unused:
//! our logs go to stderr and Nomad drivers never use the broker).

use std::pin::Pin;

use bpfexec_proto::plugin::{
    ConnInfo, Empty, StdioData, grpc_broker_server::GrpcBroker,
    grpc_controller_server::GrpcController, grpc_stdio_server::GrpcStdio,
};
use futures::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

type Pending<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// A stream that never yields and ends when the client disconnects.
fn pending<T: Send + 'static>() -> Pending<T> {
    Box::pin(futures::stream::pending())
}

pub struct Controller {
    pub shutdown: watch::Sender<bool>,
}

#[tonic::async_trait]
impl GrpcController for Controller {
    async fn shutdown(&self, _: Request<Empty>) -> Result<Response<Empty>, Status> {
        tracing::info!("Nomad asked the plugin to shut down; tasks keep running");
        let _ = self.shutdown.send(true);
        Ok(Response::new(Empty {}))
    }
}

pub struct Stdio;

#[tonic::async_trait]
impl GrpcStdio for Stdio {
    type StreamStdioStream = Pending<StdioData>;

    async fn stream_stdio(
        &self,
        _: Request<()>,
    ) -> Result<Response<Self::StreamStdioStream>, Status> {
        Ok(Response::new(pending()))
    }
}

pub struct Broker;

#[tonic::async_trait]
impl GrpcBroker for Broker {
    type StartStreamStream = Pending<ConnInfo>;

    async fn start_stream(
        &self,
        _: Request<Streaming<ConnInfo>>,
    ) -> Result<Response<Self::StartStreamStream>, Status> {
        Ok(Response::new(pending()))
    }
}
