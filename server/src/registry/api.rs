//! `vantage.v1.RegistryService`: heartbeats and proxy registrations over gRPC.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use vantage_proto::pb;

use super::*;

/// `vantage.v1.RegistryService`.
#[derive(Clone)]
pub struct RegistryApi {
    pub registry: Arc<Registry>,
}

#[tonic::async_trait]
impl pb::registry_service_server::RegistryService for RegistryApi {
    async fn provisioner_heartbeat(
        &self,
        request: Request<pb::ProvisionerHeartbeatRequest>,
    ) -> Result<Response<pb::ProvisionerHeartbeatResponse>, Status> {
        let hb = Heartbeat::try_from(request.into_inner())?;
        let record = self.registry.heartbeat(hb).await?;
        Ok(Response::new(pb::ProvisionerHeartbeatResponse {
            daemon: Some(daemon_pb(&record)),
            stale_after: Some(convert::duration(STALE_AFTER)),
        }))
    }

    async fn register_workspace_proxy(
        &self,
        request: Request<pb::RegisterWorkspaceProxyRequest>,
    ) -> Result<Response<pb::WorkspaceProxyRegistration>, Status> {
        let spec = ProxySpec::try_from(request.into_inner())?;
        let record = self.registry.register_proxy(spec).await?;
        Ok(Response::new(registration(&record)))
    }

    async fn deregister_workspace_proxy(
        &self,
        request: Request<pb::DeregisterWorkspaceProxyRequest>,
    ) -> Result<Response<pb::DeregisterWorkspaceProxyResponse>, Status> {
        self.registry
            .deregister_proxy(&request.into_inner().name)
            .await?;
        Ok(Response::new(pb::DeregisterWorkspaceProxyResponse {}))
    }

    async fn list_workspace_proxies(
        &self,
        request: Request<pb::ListWorkspaceProxiesRequest>,
    ) -> Result<Response<pb::ListWorkspaceProxiesResponse>, Status> {
        let region = request.into_inner().region;
        let filter = (!region.is_empty()).then_some(region.as_str());
        let proxies = self
            .registry
            .proxies(filter)
            .await
            .iter()
            .map(registration)
            .collect();
        Ok(Response::new(pb::ListWorkspaceProxiesResponse { proxies }))
    }

    async fn list_provisioner_daemons(
        &self,
        _request: Request<pb::ListProvisionerDaemonsRequest>,
    ) -> Result<Response<pb::ListProvisionerDaemonsResponse>, Status> {
        let daemons = self
            .registry
            .daemons()
            .await
            .iter()
            .map(daemon_pb)
            .collect();
        Ok(Response::new(pb::ListProvisionerDaemonsResponse {
            daemons,
        }))
    }
}

/// A registered proxy as `RegistryService` answers it.
fn registration(p: &WorkspaceProxy) -> pb::WorkspaceProxyRegistration {
    pb::WorkspaceProxyRegistration {
        id: p.id.clone(),
        name: p.name.clone(),
        display_name: p.display_name.clone(),
        url: p.url.clone(),
        region: p.region.clone(),
        icon_url: p.icon_url.clone(),
        derp_enabled: p.derp_enabled,
        derp_only: p.derp_only,
        version: p.version.clone(),
        created_at: Some(convert::timestamp(p.created_at)),
        updated_at: Some(convert::timestamp(p.updated_at)),
        source: p.source.as_str().to_owned(),
    }
}

/// A provisioner daemon as `RegistryService` answers it.
fn daemon_pb(d: &ProvisionerDaemon) -> pb::ProvisionerDaemonInfo {
    pb::ProvisionerDaemonInfo {
        id: d.id.clone(),
        organization_id: d.organization_id.clone(),
        name: d.name.clone(),
        version: d.version.clone(),
        api_version: d.api_version.clone(),
        provisioners: d.provisioners.clone(),
        tags: d.tags.clone().into_iter().collect(),
        created_at: Some(convert::timestamp(d.created_at)),
        last_seen_at: d.last_seen_at.map(convert::timestamp),
    }
}
