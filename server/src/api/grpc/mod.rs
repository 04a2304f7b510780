//! The gRPC surface: `vantage.v1.HealthService` (reports, settings, vantages) and the `Watch`
//! stream ([`watch`]), served with shared encodings ([`watch_codec`]). No check runs on read.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};
use vantage_proto::{Section, pb};

use crate::api::{App, ForceError};
use watch::{Filter, watch_stream};

pub mod health;
pub mod watch;
pub(crate) mod watch_codec;

pub struct HealthApi {
    pub app: App,
}

#[tonic::async_trait]
impl pb::health_service_server::HealthService for HealthApi {
    async fn get_report(
        &self,
        request: Request<pb::GetReportRequest>,
    ) -> Result<Response<pb::Report>, Status> {
        if request.get_ref().force {
            match self.app.force().await {
                Ok(()) => {}
                Err(ForceError::Stopped) => {
                    return Err(Status::unavailable("the server is shutting down"));
                }
                Err(ForceError::TimedOut(names)) => {
                    return Err(Status::deadline_exceeded(format!(
                        "Healthcheck timed out. {}",
                        ForceError::still_running(&names)
                    )));
                }
            }
        }
        let (_, report) = self.app.agg.report().await?;
        Ok(Response::new((*report).clone()))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send + 'static>>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = request.into_inner();
        let filter = Filter::from_request(&req)?;
        let sub = self
            .app
            .agg
            .subscribe(req.since_revision, &req.since_epoch)
            .await?;
        Ok(Response::new(Box::pin(watch_stream(
            &self.app,
            sub,
            filter,
            req.since_revision,
        ))))
    }

    async fn get_settings(
        &self,
        _: Request<pb::GetSettingsRequest>,
    ) -> Result<Response<pb::Settings>, Status> {
        let s = self.app.agg.settings(None).await?;
        Ok(Response::new(settings_pb(&s.dismissed)))
    }

    async fn update_settings(
        &self,
        request: Request<pb::Settings>,
    ) -> Result<Response<pb::Settings>, Status> {
        let wanted = App::parse_sections(&request.get_ref().dismissed_healthchecks)
            .map_err(|e| Status::invalid_argument(format!("dismissed_healthchecks: {e}")))?;
        let actor = request
            .remote_addr()
            .map_or_else(|| "grpc".to_owned(), |a| format!("grpc {a}"));
        let dismissed = match self.app.update_settings(wanted, &actor).await? {
            Some(d) => d,
            None => self.app.agg.settings(None).await?.dismissed,
        };
        Ok(Response::new(settings_pb(&dismissed)))
    }

    async fn get_history(
        &self,
        request: Request<pb::GetHistoryRequest>,
    ) -> Result<Response<pb::History>, Status> {
        let req = request.into_inner();
        let section = match req.section {
            0 => None,
            n => Some(Section::from_pb(n).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "section: unknown value {n}; expected a Section enum value"
                ))
            })?),
        };
        let since = match req.since.as_ref() {
            None => None,
            Some(t) => Some(
                vantage_proto::convert::from_timestamp(Some(t)).ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "since: {}s {}ns is not a valid timestamp",
                        t.seconds, t.nanos
                    ))
                })?,
            ),
        };
        let filter = crate::aggregator::HistoryFilter { section, since };
        Ok(Response::new(self.app.agg.history(filter).await?))
    }

    async fn list_vantages(
        &self,
        _: Request<pb::ListVantagesRequest>,
    ) -> Result<Response<pb::ListVantagesResponse>, Status> {
        Ok(Response::new(pb::ListVantagesResponse {
            vantages: self.app.agg.vantages().await?,
        }))
    }

    async fn forget_vantage(
        &self,
        request: Request<pb::ForgetVantageRequest>,
    ) -> Result<Response<pb::ForgetVantageResponse>, Status> {
        let name = request.into_inner().name;
        if self.app.store.is_durable() {
            self.app
                .store
                .forget_vantage(name.clone())
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "forgetting a vantage in the store");
                    Status::unavailable("the vantage could not be forgotten in the store")
                })?;
        }
        if self.app.agg.forget(name.clone()).await? {
            Ok(Response::new(pb::ForgetVantageResponse {}))
        } else {
            Err(Status::not_found(format!("no vantage named {name:?}")))
        }
    }
}
fn settings_pb(dismissed: &[Section]) -> pb::Settings {
    pb::Settings {
        dismissed_healthchecks: crate::api::dismissed_names(dismissed),
    }
}
