//! The `hashicorp.nomad.plugins.base.proto.BasePlugin` service: who we are (a driver named
//! `bpfexec`, driver API v0.1.0), our agent config schema, and SetConfig. SetConfig is called
//! without `nomad_config` by Nomad's validation launches; those only validate.

use std::sync::Arc;

use bpfexec_proto::base::{self, base_plugin_server::BasePlugin};
use tonic::{Request, Response, Status};

use crate::config::plugin::PluginConfig;
use crate::config::schema;
use crate::runtime::Runtime;

pub const DRIVER_NAME: &str = "bpfexec";
pub const DRIVER_API_VERSION: &str = "v0.1.0";

pub struct BaseService {
    rt: Arc<Runtime>,
}

impl BaseService {
    pub fn new(rt: Arc<Runtime>) -> Self {
        Self { rt }
    }
}

#[tonic::async_trait]
impl BasePlugin for BaseService {
    async fn plugin_info(
        &self,
        _: Request<base::PluginInfoRequest>,
    ) -> Result<Response<base::PluginInfoResponse>, Status> {
        Ok(Response::new(base::PluginInfoResponse {
            r#type: base::PluginType::Driver as i32,
            plugin_api_versions: vec![DRIVER_API_VERSION.to_owned()],
            plugin_version: env!("CARGO_PKG_VERSION").to_owned(),
            name: DRIVER_NAME.to_owned(),
        }))
    }

    async fn config_schema(
        &self,
        _: Request<base::ConfigSchemaRequest>,
    ) -> Result<Response<base::ConfigSchemaResponse>, Status> {
        Ok(Response::new(base::ConfigSchemaResponse {
            spec: Some(schema::plugin_schema()),
        }))
    }

    async fn set_config(
        &self,
        req: Request<base::SetConfigRequest>,
    ) -> Result<Response<base::SetConfigResponse>, Status> {
        let req = req.into_inner();
        let cfg = PluginConfig::decode(&req.msgpack_config).map_err(|e| {
            tracing::error!(error = %e, "rejected plugin configuration");
            Status::invalid_argument(format!("plugin \"nomad-driver-bpfexec\" config: {e}"))
        })?;
        let http_addr = cfg.http_addr;
        self.rt.configure(cfg, req.nomad_config.as_ref()).await?;
        // Only the real instance (with nomad_config) serves, and only once.
        if req.nomad_config.is_some()
            && let Some(addr) = http_addr
            && !self
                .rt
                .http_started
                .swap(true, std::sync::atomic::Ordering::SeqCst)
            && let Err(e) = crate::http::serve(addr.to_string(), Arc::clone(&self.rt)).await
        {
            tracing::warn!(%addr, error = %e, "cannot serve the driver HTTP endpoint (http_addr)");
        }
        Ok(Response::new(base::SetConfigResponse {}))
    }
}
