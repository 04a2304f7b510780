//! `grpc.health.v1`: `""` is vantaged itself (SERVING until shutdown, so liveness and
//! readiness checks never restart it for the deployment's sake); [`DEPLOYMENT_SERVICE`] and one
//! service per section are kept in step with the report.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use vantage_proto::{Section, Severity};

use crate::aggregator::Aggregator;

/// The service that follows the deployment's overall severity.
pub const DEPLOYMENT_SERVICE: &str = "vantage.v1.Deployment";

/// Every service NOT_SERVING (at shutdown, before the listener closes).
pub async fn not_serving(reporter: &HealthReporter) {
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    reporter
        .set_service_status(DEPLOYMENT_SERVICE, ServingStatus::NotServing)
        .await;
    for s in Section::ALL {
        reporter
            .set_service_status(s.health_service_name(), ServingStatus::NotServing)
            .await;
    }
}

/// `""` SERVING, then keep the deployment's service and one service per section in step with
/// the report, SERVING unless at error. Updates are coalesced (at most one per 100 ms).
pub async fn track(agg: Aggregator, reporter: HealthReporter, cancel: CancellationToken) {
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    let Ok(mut sub) = agg.subscribe(0, "").await else {
        return;
    };
    loop {
        if let Ok((report, _)) = agg.report().await {
            let status = |sev: Severity| {
                if sev == Severity::Error {
                    ServingStatus::NotServing
                } else {
                    ServingStatus::Serving
                }
            };
            reporter
                .set_service_status(DEPLOYMENT_SERVICE, status(report.severity))
                .await;
            for s in Section::ALL {
                reporter
                    .set_service_status(s.health_service_name(), status(report.base(s).severity))
                    .await;
            }
        } else {
            return;
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
