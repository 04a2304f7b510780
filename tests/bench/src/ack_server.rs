//! The ingestion baseline: a bare `ProbeService` that does nothing but acknowledge. It reads the
//! hello, answers with a welcome (an assignment with one access-URL check), then acks the
//! observation batches cumulatively, those that arrived together once (as `vantaged` does),
//! over the same transport stack as `vantaged` (tonic routes in
//! an axum router served by `vantaged`'s own accept loop, TCP_NODELAY, the same TLS
//! configuration when asked, jemalloc) and the same session-queue semantics (bounded, a
//! full queue skips an ack that a later one covers).

use std::pin::Pin;

use futures::{FutureExt as _, Stream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use vantage_proto::pb;
use vantage_proto::pb::probe_message::Msg as Up;
use vantage_proto::pb::server_message::Msg as Down;
// Messages taken in a row without waiting, and observations acknowledged at once, at most:
// `vantaged`'s own bounds.
use vantage_server::ingest::hub::{MAX_BATCH, READY_IN_A_ROW};

/// The same queue depth `vantaged` gives a probe session.
const SESSION_QUEUE: usize = 64;
/// The same decoding limit as `vantaged`.
const MAX_MESSAGE: usize = 1024 * 1024;

pub struct AckOnly {
    pub access_url: String,
}

fn assignment(url: &str) -> pb::Assignment {
    pb::Assignment {
        generation: 1,
        checks: vec![pb::Check {
            id: "access_url".into(),
            section: pb::Section::AccessUrl as i32,
            interval: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            timeout: Some(prost_types::Duration {
                seconds: 5,
                nanos: 0,
            }),
            target: Some(pb::check::Target::AccessUrl(pb::AccessUrlTarget {
                url: url.to_owned(),
            })),
        }],
        heartbeat_interval: Some(prost_types::Duration {
            seconds: 5,
            nanos: 0,
        }),
    }
}

#[tonic::async_trait]
impl pb::probe_service_server::ProbeService for AckOnly {
    type AttachStream =
        Pin<Box<dyn Stream<Item = Result<pb::ServerMessage, Status>> + Send + 'static>>;

    async fn attach(
        &self,
        request: Request<Streaming<pb::ProbeMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut inbound = request.into_inner();
        match inbound.message().await? {
            Some(pb::ProbeMessage {
                msg: Some(Up::Hello(_)),
            }) => {}
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be a hello",
                ));
            }
        }
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let welcome = pb::ServerMessage {
            msg: Some(Down::Welcome(pb::Welcome {
                applied_seq: 0,
                server_version: "baseline".into(),
                assignment: Some(assignment(&self.access_url)),
            })),
        };
        tx.try_send(Ok(welcome))
            .map_err(|_| Status::internal("session queue"))?;
        tokio::spawn(async move {
            // A message taken while looking behind a batch, but not one to go with it.
            let mut carried = None;
            loop {
                let next = match carried.take() {
                    Some(m) => m,
                    None => inbound.message().await,
                };
                let Ok(Some(m)) = next else { return };
                let (mut last, mut count) = last_seq(&m);
                if count == 0 {
                    continue;
                }
                // As `vantaged` does: the batches already waiting behind this one (up to 16
                // messages in a row and 1 024 observations) are acknowledged with it, once.
                for _ in 1..READY_IN_A_ROW {
                    let Some(next) = inbound.message().now_or_never() else {
                        break;
                    };
                    let (seq, n) = match &next {
                        Ok(Some(m)) => last_seq(m),
                        _ => (0, 0),
                    };
                    if n == 0 || count + n > MAX_BATCH {
                        carried = Some(next);
                        break;
                    }
                    last = seq;
                    count += n;
                    if count >= MAX_BATCH {
                        break;
                    }
                }
                let ack = pb::ServerMessage {
                    msg: Some(Down::Ack(pb::Ack { seq: last })),
                };
                if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(Ok(ack)) {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The last sequence number of a batch message and its number of observations (0, 0 for
/// anything else).
fn last_seq(m: &pb::ProbeMessage) -> (u64, usize) {
    match &m.msg {
        Some(Up::Observations(b)) => (
            b.observations.last().map_or(0, |o| o.seq),
            b.observations.len(),
        ),
        _ => (0, 0),
    }
}

/// Serve the baseline on `listener` until the process ends: through `vantaged`'s own accept
/// loop (hyper's automatic HTTP/1.1-or-2 connection, `TCP_NODELAY`, and TLS from the same
/// rustls configuration when `tls` names a certificate and key).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<(&std::path::Path, &std::path::Path)>,
) -> anyhow::Result<()> {
    use vantage_server::security;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", listener.local_addr()?);
    let svc = pb::probe_service_server::ProbeServiceServer::new(AckOnly { access_url: url })
        .max_decoding_message_size(MAX_MESSAGE);
    let router = tonic::service::Routes::new(svc).into_axum_router();
    let tls = match tls {
        Some((cert, key)) => {
            let slot = std::sync::Arc::new(security::tls::CertSlot::load(cert, key)?);
            Some(security::tls::server_config(slot, None)?)
        }
        None => None,
    };
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let counters = std::sync::Arc::new(security::Counters::default());
    security::accept::serve(listener, router, tls, counters, stop_rx).await?;
    Ok(())
}
