//! The gRPC surface: `vantage.v1.HealthService` (reports, settings, vantages) and the `Watch`
//! stream ([`watch`]), served with shared encodings ([`watch_codec`]). No check runs on read.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};
use vantage_proto::{Section, pb};

use crate::aggregator::ForgetOutcome;
use crate::api::{App, ForceError, GivenNote, SettingsView};
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
            // Forcing runs every vantage's checks: an admin's call.
            crate::security::layer::require(request.extensions(), crate::security::Role::Admin)?;
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
        Ok(Response::new(self.app.settings().await?.into()))
    }

    async fn update_settings(
        &self,
        request: Request<pb::Settings>,
    ) -> Result<Response<pb::Settings>, Status> {
        let wanted = App::parse_sections(&request.get_ref().dismissed_healthchecks)
            .map_err(|e| Status::invalid_argument(format!("dismissed_healthchecks: {e}")))?;
        let notes = notes_from_pb(&wanted, &request.get_ref().dismissals)
            .map_err(Status::invalid_argument)?;
        let actor = App::actor(request.extensions(), "grpc", request.remote_addr());
        let view = match self.app.update_settings(wanted, notes, &actor).await? {
            Some(dismissed) => self.app.settings_view(dismissed).await,
            None => self.app.settings().await?,
        };
        Ok(Response::new(view.into()))
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
        Ok(Response::new(self.app.history(filter).await?))
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
        let req = request.into_inner();
        let name = req.name;
        match self.app.agg.forget(name.clone(), req.force).await? {
            ForgetOutcome::Forgotten => {}
            ForgetOutcome::NotFound => {
                return Err(Status::not_found(format!("no vantage named {name:?}")));
            }
            ForgetOutcome::Live { connected } => {
                return Err(Status::failed_precondition(format!(
                    "vantage {name:?} is {}: only a stale, disconnected vantage is forgotten (force: true forgets it anyway and closes its stream)",
                    if connected { "connected" } else { "fresh" }
                )));
            }
        }
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
        Ok(Response::new(pb::ForgetVantageResponse {}))
    }
}
impl From<SettingsView> for pb::Settings {
    fn from(view: SettingsView) -> Self {
        pb::Settings {
            dismissed_healthchecks: view.dismissed_names(),
            dismissals: view
                .notes
                .into_iter()
                .map(|n| pb::Dismissal {
                    section: n.section.settings_name().to_owned(),
                    until: n.until.map(vantage_proto::convert::timestamp),
                    reason: n.reason,
                    actor: n.actor,
                    at: Some(vantage_proto::convert::timestamp(n.at)),
                })
                .collect(),
        }
    }
}

/// The notes of an `UpdateSettings`, validated against the dismissed sections.
fn notes_from_pb(
    wanted: &[Section],
    dismissals: &[pb::Dismissal],
) -> Result<Vec<crate::store::DismissalNote>, String> {
    let given = dismissals.iter().enumerate().map(|(i, d)| GivenNote {
        section: d.section.clone(),
        until: match &d.until {
            None => Ok(None),
            Some(t) => vantage_proto::convert::from_timestamp(Some(t))
                .map(Some)
                .ok_or_else(|| format!("dismissals[{i}].until: {t:?} is not a valid time")),
        },
        reason: d.reason.clone(),
    });
    App::parse_notes(wanted, given)
}
