//! `grpc.health.v1`, served by vantaged itself (so its `Watch` streams end cleanly, with
//! status OK, at shutdown instead of holding connections open until the grace period cuts
//! them). Service `""` is vantaged itself: SERVING from start until shutdown begins, when
//! every service turns NOT_SERVING for the drain (so Kubernetes gRPC probes and
//! `grpc_health_probe` restart or unready vantaged only when vantaged is the problem, never
//! because the deployment it watches is unhealthy). [`DEPLOYMENT_SERVICE`] is the watched
//! deployment's overall health, and each section has a service of its own; those are SERVING
//! unless at error.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use vantage_proto::{Section, Severity};

use crate::aggregator::Aggregator;

/// The service that reports the deployment's overall health.
pub const DEPLOYMENT_SERVICE: &str = "vantage.v1.Deployment";

/// Every service name served, and its status.
type Statuses = BTreeMap<String, ServingStatus>;

/// The writing side: what each service's status is.
#[derive(Clone)]
pub struct HealthReporter {
    statuses: Arc<watch::Sender<Statuses>>,
    /// Shutdown has begun: every service stays NOT_SERVING, `/readyz` answers 503.
    draining: Arc<AtomicBool>,
}

impl HealthReporter {
    /// Set one service's status (ignored once draining: then everything is NOT_SERVING).
    pub fn set(&self, service: &str, status: ServingStatus) {
        if self.is_draining() {
            return;
        }
        self.statuses.send_if_modified(|s| {
            if s.get(service) == Some(&status) {
                return false;
            }
            s.insert(service.to_owned(), status);
            true
        });
    }

    /// Every service NOT_SERVING, for good (when shutdown begins: the drain).
    pub fn not_serving(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.statuses.send_modify(|s| {
            for status in s.values_mut() {
                *status = ServingStatus::NotServing;
            }
        });
    }

    /// Whether shutdown has begun (`/readyz` answers 503).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Another service serving what this reporter reports (for the health listener); its
    /// `Watch` streams end, with status OK, once `shutdown` is cancelled.
    pub fn service(&self, shutdown: CancellationToken) -> HealthServer<HealthApi> {
        HealthServer::new(HealthApi {
            rx: self.statuses.subscribe(),
            shutdown,
        })
    }
}

/// The reporter, and the service that serves what it reports; the service's `Watch` streams
/// end (with status OK) once `shutdown` is cancelled.
pub fn health_service(shutdown: CancellationToken) -> (HealthReporter, HealthServer<HealthApi>) {
    let mut initial = Statuses::new();
    for service in [String::new(), DEPLOYMENT_SERVICE.to_owned()]
        .into_iter()
        .chain(Section::ALL.into_iter().map(Section::health_service_name))
    {
        initial.insert(service, ServingStatus::Serving);
    }
    let (tx, _) = watch::channel(initial);
    let reporter = HealthReporter {
        statuses: Arc::new(tx),
        draining: Arc::new(AtomicBool::new(false)),
    };
    let service = reporter.service(shutdown);
    (reporter, service)
}

/// `GET /readyz`: 200 "OK" while serving, 503 once shutdown has begun (the drain), so load
/// balancers stop sending new work. `/healthz` (alive) keeps answering 200 until the end.
pub fn readyz_router(reporter: HealthReporter) -> axum::Router {
    use axum::http::StatusCode;
    axum::Router::new().route(
        "/readyz",
        axum::routing::get(move || {
            let draining = reporter.is_draining();
            async move {
                if draining {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "draining: vantaged is shutting down",
                    )
                } else {
                    (StatusCode::OK, "OK")
                }
            }
        }),
    )
}

/// What the plaintext health listener serves: `grpc.health.v1` (from `reporter`, its `Watch`
/// streams ending with `shutdown`), `/healthz` and `/readyz`; everything else is 404.
pub fn listener_router(reporter: &HealthReporter, shutdown: CancellationToken) -> axum::Router {
    tonic::service::Routes::new(reporter.service(shutdown))
        .into_axum_router()
        .merge(readyz_router(reporter.clone()))
        .route("/healthz", axum::routing::get(|| async { "OK" }))
        .fallback(crate::api::http::guard::not_found)
}

/// `grpc.health.v1.Health`.
pub struct HealthApi {
    rx: watch::Receiver<Statuses>,
    shutdown: CancellationToken,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

#[tonic::async_trait]
impl Health for HealthApi {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = &request.get_ref().service;
        match self.rx.borrow().get(service) {
            Some(status) => Ok(Response::new(response(*status))),
            None => Err(Status::not_found(format!("no service named {service:?}"))),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let service = request.into_inner().service;
        let mut rx = self.rx.clone();
        let shutdown = self.shutdown.clone();
        // As the protocol says: an unknown service is SERVICE_UNKNOWN, not an error.
        let current = |rx: &watch::Receiver<Statuses>, service: &str| {
            rx.borrow()
                .get(service)
                .copied()
                .unwrap_or(ServingStatus::ServiceUnknown)
        };
        let first = current(&rx, &service);
        rx.mark_unchanged();
        let stream = futures::stream::unfold(
            (rx, shutdown, service, Some(first)),
            move |(mut rx, shutdown, service, mut next)| async move {
                let mut last = next;
                loop {
                    if let Some(status) = next.take() {
                        let state = (rx, shutdown, service, None);
                        return Some((Ok(response(status)), state));
                    }
                    tokio::select! {
                        // The end of the stream: status OK (the client saw NOT_SERVING
                        // throughout the drain before it).
                        () = shutdown.cancelled() => return None,
                        changed = rx.changed() => {
                            if changed.is_err() {
                                return None;
                            }
                            let status = current(&rx, &service);
                            if Some(status) != last {
                                last = Some(status);
                                next = Some(status);
                            }
                        }
                    }
                }
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Keep `grpc.health.v1` in step with the report: the deployment and one service per
/// section, SERVING unless at error (`""` stays SERVING while vantaged serves). Updates are
/// coalesced (at most one per 100 ms).
pub async fn track(agg: Aggregator, reporter: HealthReporter, cancel: CancellationToken) {
    let Ok(mut sub) = agg.subscribe(0, "").await else {
        return;
    };
    let status = |sev: Severity| {
        if sev == Severity::Error {
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        }
    };
    loop {
        let Ok((report, _)) = agg.report().await else {
            return;
        };
        if cancel.is_cancelled() {
            return;
        }
        reporter.set(DEPLOYMENT_SERVICE, status(report.severity));
        for s in Section::ALL {
            reporter.set(&s.health_service_name(), status(report.base(s).severity));
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            r = sub.events.recv() => match r {
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Drain what came meanwhile: one update covers it.
        while let Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) =
            sub.events.try_recv()
        {}
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;

    #[tokio::test]
    async fn draining_is_not_serving_for_good_and_watch_ends_ok() {
        let shutdown = CancellationToken::new();
        let (reporter, _) = health_service(shutdown.clone());
        let api = HealthApi {
            rx: reporter.statuses.subscribe(),
            shutdown: shutdown.clone(),
        };
        let request = |s: &str| {
            Request::new(HealthCheckRequest {
                service: s.to_owned(),
            })
        };
        let mut watch = api.watch(request("")).await.unwrap().into_inner();
        let first = watch.next().await.unwrap().unwrap();
        assert_eq!(first.status, ServingStatus::Serving as i32);

        reporter.not_serving();
        assert!(reporter.is_draining());
        // The report keeps changing during the drain; it changes nothing.
        reporter.set(DEPLOYMENT_SERVICE, ServingStatus::Serving);
        reporter.set("", ServingStatus::Serving);
        for service in ["", DEPLOYMENT_SERVICE, "vantage.v1.Database"] {
            let r = api.check(request(service)).await.unwrap().into_inner();
            assert_eq!(r.status, ServingStatus::NotServing as i32, "{service:?}");
        }
        let next = watch.next().await.unwrap().unwrap();
        assert_eq!(next.status, ServingStatus::NotServing as i32);

        // The end of the drain: the stream ends, with no error (status OK).
        shutdown.cancel();
        assert!(watch.next().await.is_none());
    }
}
