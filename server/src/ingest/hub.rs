//! The probe hub: `ProbeService.Attach`. Each stream says hello, gets its assignment, then
//! streams observations that go to the aggregator (bounded, in order); the aggregator's
//! cumulative acks and run-now requests come back on the same stream.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt as _, StreamExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use vantage_proto::pb;
use vantage_proto::pb::probe_message::Msg as Up;
use vantage_proto::pb::server_message::Msg as Down;

use crate::aggregator::{Aggregator, AttachError, Outgoing, ProbeCommand, SessionTx};
use crate::config::SERVER_VANTAGE;
use crate::ingest::inventory::{self, Assignments, Inventory};

/// How long a probe has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most observations accepted in one message.
pub const MAX_BATCH: usize = 1024;
/// Queue of messages to one probe.
const SESSION_QUEUE: usize = 64;
/// Messages a session takes in a row while they are already waiting, before it looks at its
/// other waits again.
pub const READY_IN_A_ROW: u32 = 16;

pub struct ProbeHub {
    agg: Aggregator,
    inventory: Arc<Inventory>,
    /// A session silent for this long is closed (probes heartbeat every few seconds).
    idle_timeout: Duration,
    cancel: tokio_util::sync::CancellationToken,
}

impl ProbeHub {
    pub fn new(
        agg: Aggregator,
        inventory: Arc<Inventory>,
        idle_timeout: Duration,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Self {
        ProbeHub {
            agg,
            inventory,
            idle_timeout,
            cancel,
        }
    }
}

fn valid_name(field: &str, value: &str, allow_empty: bool) -> Result<(), Status> {
    let ok_chars = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if (!allow_empty && value.is_empty()) || value.len() > 64 || !ok_chars {
        return Err(Status::invalid_argument(format!(
            "hello.{field}: {value:?} is invalid (expected 1 to 64 characters of A-Z a-z 0-9 . _ -)"
        )));
    }
    Ok(())
}

/// Whether a hello may attach at all (before the aggregator sees it): names, labels and
/// instance id well formed, reserved names refused in any letter case.
pub fn validate_hello(h: &pb::Hello) -> Result<(), Status> {
    valid_name("name", &h.name, false)?;
    valid_name("region", &h.region, true)?;
    if crate::config::is_server_vantage(&h.name.to_ascii_lowercase()) {
        return Err(Status::invalid_argument(format!(
            "hello.name: {:?}: \"{SERVER_VANTAGE}\" and \"{SERVER_VANTAGE}-...\" are reserved for the servers' own vantages",
            h.name
        )));
    }
    if h.labels.len() > 32 || h.labels.iter().any(|(k, v)| k.len() > 64 || v.len() > 256) {
        return Err(Status::invalid_argument(
            "hello.labels: at most 32 labels, keys up to 64 and values up to 256 bytes",
        ));
    }
    if h.instance_id.is_empty() || h.instance_id.len() > 64 {
        return Err(Status::invalid_argument(
            "hello.instance_id: expected 1 to 64 bytes",
        ));
    }
    Ok(())
}

fn welcome(applied_seq: u64, assignment: pb::Assignment) -> Outgoing {
    Box::new(Ok(pb::ServerMessage {
        msg: Some(Down::Welcome(pb::Welcome {
            applied_seq,
            server_version: vantage_probe::VERSION.to_owned(),
            assignment: Some(assignment),
        })),
    }))
}

/// A session's queue as the response stream: each message out of its box.
type SessionStream = futures::stream::Map<
    ReceiverStream<Outgoing>,
    fn(Outgoing) -> Result<pb::ServerMessage, Status>,
>;

fn session_stream(rx: mpsc::Receiver<Outgoing>) -> SessionStream {
    ReceiverStream::new(rx).map(unbox as fn(Outgoing) -> Result<pb::ServerMessage, Status>)
}

#[expect(clippy::boxed_local, reason = "the queue's element is the box")]
fn unbox(o: Outgoing) -> Result<pb::ServerMessage, Status> {
    *o
}

#[tonic::async_trait]
impl pb::probe_service_server::ProbeService for ProbeHub {
    type AttachStream = SessionStream;

    async fn attach(
        &self,
        request: Request<Streaming<pb::ProbeMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let peer = peer_of(&request);
        let (_, extensions, mut inbound) = request.into_parts();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Err(_) => return Err(Status::deadline_exceeded("no hello within 10s")),
            Ok(Err(status)) => return Err(inbound_error(status)),
            Ok(Ok(Some(pb::ProbeMessage {
                msg: Some(Up::Hello(h)),
            }))) => h,
            Ok(Ok(_)) => {
                return Err(Status::invalid_argument(
                    "the first message must be a hello",
                ));
            }
        };
        validate_hello(&hello)?;
        // A probe token claims only the names its globs match.
        crate::security::layer::may_claim(&extensions, &hello.name)?;
        let (follow, assignment) =
            Assignments::follow(self.inventory.clone(), &hello.name, &hello.region);
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        if hello.once {
            let _ = tx.try_send(welcome(0, assignment));
            return Ok(Response::new(session_stream(rx)));
        }
        let name = hello.name.clone();
        let attached = self
            .agg
            .attach_from(hello, tx.clone(), peer.clone())
            .await
            .map_err(|e| match e {
                AttachError::Refused(r) => Status::from(r),
                AttachError::Stopped(_) => Status::unavailable("the server is shutting down"),
            })?;
        let source = ProbeCommand::Source {
            name: name.clone(),
            address: peer.clone(),
        };
        if self.agg.send(source).await.is_err() {
            return Err(Status::unavailable("the server is shutting down"));
        }
        let check_ids = inventory::check_ids(&assignment);
        self.agg
            .send(ProbeCommand::Assigned {
                name: name.clone(),
                check_ids,
            })
            .await
            .map_err(|_| Status::unavailable("the server is shutting down"))?;
        tx.try_send(welcome(attached.applied_seq, assignment))
            .map_err(|_| Status::internal("session queue full at welcome"))?;
        tracing::info!(vantage = %name, %peer, session = attached.session_id, applied = attached.applied_seq, "probe attached");
        let agg = self.agg.clone();
        let idle = self.idle_timeout;
        let session_id = attached.session_id;
        let cancel = self.cancel.clone();
        tokio::spawn(async move {
            let reason = tokio::select! {
                r = session(&agg, &name, session_id, &mut inbound, &tx, idle, follow) => r,
                () = cancel.cancelled() => {
                    let _ = tx.try_send(Box::new(Err(Status::unavailable("the server is shutting down"))));
                    "the server is shutting down".to_owned()
                }
            };
            tracing::info!(vantage = %name, session = session_id, %reason, "probe detached");
            let _ = agg.send(ProbeCommand::Detach { name, session_id }).await;
        });
        Ok(Response::new(session_stream(rx)))
    }
}

/// Forward one probe's messages to the aggregator until the stream ends; says why it ended.
/// A changed inventory re-sends the assignment.
async fn session(
    agg: &Aggregator,
    name: &str,
    session_id: u64,
    inbound: &mut Streaming<pb::ProbeMessage>,
    tx: &SessionTx,
    idle: Duration,
    mut follow: Assignments,
) -> String {
    // One timer for the silence, re-armed only when it fires early: a message costs a clock
    // read, not a timer registration.
    let silence = tokio::time::sleep(idle);
    tokio::pin!(silence);
    let mut heard = tokio::time::Instant::now();
    let mut in_a_row = 0;
    // A message taken while looking for batches to send with one, but not one of them: the
    // next to handle (boxed: it is rare, and the session's state stays small).
    let mut carried: Option<Box<Result<Option<pb::ProbeMessage>, Status>>> = None;
    loop {
        // A message that is already waiting is taken without arming the other waits (the
        // silence, the response stream, the assignment), a few in a row at most.
        // (A carried message was counted when it was taken.)
        let waiting = if carried.is_some() {
            carried.take().map(|m| *m)
        } else if in_a_row < READY_IN_A_ROW {
            let waiting = inbound.message().now_or_never();
            in_a_row += u32::from(waiting.is_some());
            waiting
        } else {
            None
        };
        let msg = if let Some(m) = waiting {
            Ok(m)
        } else {
            in_a_row = 0;
            tokio::select! {
                m = inbound.message() => Ok(m),
                () = &mut silence => {
                    if heard.elapsed() < idle {
                        silence.as_mut().reset(heard + idle);
                        continue;
                    }
                    Err(())
                }
                () = tx.closed() => return "the response stream closed".into(),
                Some(a) = follow.changed() => {
                    let check_ids = inventory::check_ids(&a);
                    if agg.send(ProbeCommand::Assigned { name: name.to_owned(), check_ids }).await.is_err() {
                        return "the server is shutting down".into();
                    }
                    let msg = pb::ServerMessage { msg: Some(Down::Assignment(a)) };
                    if tx.send(Box::new(Ok(msg))).await.is_err() {
                        return "the response stream closed".into();
                    }
                    continue;
                }
            }
        };
        heard = tokio::time::Instant::now();
        let msg = match msg {
            Err(()) => return format!("silent for {idle:?}"),
            Ok(Err(status)) => {
                let status = inbound_error(status);
                let reason = format!("stream error: {}", status.message());
                end_with(tx, status).await;
                return reason;
            }
            Ok(Ok(None)) => return "the probe closed the stream".into(),
            Ok(Ok(Some(m))) => m,
        };
        let mut cmd = match command(agg, name, session_id, msg) {
            Ok(Some(cmd)) => cmd,
            Ok(None) => continue,
            Err((status, reason)) => {
                end_with(tx, status).await;
                return reason.into();
            }
        };
        if let ProbeCommand::Ingest { batch, then, .. } = &mut cmd {
            *then = waiting_batches(inbound, batch.len(), &mut carried, &mut in_a_row, |b| {
                agg.batch(b.observations)
            });
        }
        if agg.send(cmd).await.is_err() {
            return "the server is shutting down".into();
        }
    }
}

/// The batches that already wait behind one of `count` observations, taken without waiting
/// to go to the aggregator with it in one command: valid batches only, at most
/// [`READY_IN_A_ROW`] messages in a row (`in_a_row` counts them) and [`MAX_BATCH`]
/// observations in all, so a command stays as large as one message can be. The first message
/// taken that is not one of them (another kind, a bad or too large batch, an error, the end
/// of the stream) is left in `carried`, to be handled next as it came.
///
/// Each batch is `prepare`d as soon as it is taken, before the next is decoded: what
/// preparing drops (most of a batch's observations) then goes back to this thread's
/// allocator cache while it is warm, and the next batch's decoding takes it from there.
fn waiting_batches<B>(
    inbound: &mut Streaming<pb::ProbeMessage>,
    mut count: usize,
    carried: &mut Option<Box<Result<Option<pb::ProbeMessage>, Status>>>,
    in_a_row: &mut u32,
    mut prepare: impl FnMut(pb::ObservationBatch) -> B,
) -> Vec<B> {
    let mut batches = Vec::new();
    while *in_a_row < READY_IN_A_ROW && count < MAX_BATCH {
        let Some(next) = inbound.message().now_or_never() else {
            break;
        };
        *in_a_row += 1;
        match next {
            Ok(Some(pb::ProbeMessage {
                msg: Some(Up::Observations(batch)),
            })) if count + batch.observations.len() <= MAX_BATCH && check_batch(&batch).is_ok() => {
                count += batch.observations.len();
                batches.push(prepare(batch));
            }
            other => {
                *carried = Some(Box::new(other));
                break;
            }
        }
    }
    batches
}

/// What a probe's message asks of the aggregator (`None`: nothing), or the status its stream
/// ends with and the reason logged.
fn command(
    agg: &Aggregator,
    name: &str,
    session_id: u64,
    msg: pb::ProbeMessage,
) -> Result<Option<ProbeCommand>, (Status, &'static str)> {
    Ok(Some(match msg.msg {
        Some(Up::Observations(batch)) => {
            check_batch(&batch)?;
            ProbeCommand::Ingest {
                name: name.to_owned(),
                session_id,
                batch: agg.batch(batch.observations),
                then: Vec::new(),
            }
        }
        Some(Up::Heartbeat(h)) => ProbeCommand::Heartbeat {
            name: name.to_owned(),
            session_id,
            replay_dropped: h.replay_dropped,
        },
        Some(Up::RunComplete(r)) => ProbeCommand::RunComplete {
            name: name.to_owned(),
            request_id: r.request_id,
        },
        Some(Up::Hello(_)) => {
            let status = Status::failed_precondition(
                "hello: a second hello on one stream is refused (attach again on a new stream)",
            );
            return Err((status, "a second hello"));
        }
        None => return Ok(None),
    }))
}

/// The peer address of a request: axum's connection info (the shared listener), else tonic's.
fn peer_of<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0)
        .or_else(|| request.remote_addr())
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string())
}

/// A batch the hub forwards: at most [`MAX_BATCH`] observations, each numbered and with a
/// result; otherwise the status the stream ends with and the reason logged.
pub fn check_batch(batch: &pb::ObservationBatch) -> Result<(), (Status, &'static str)> {
    if batch.observations.len() > MAX_BATCH {
        let status = Status::resource_exhausted(format!(
            "observations: {} in one message, at most {MAX_BATCH}",
            batch.observations.len()
        ));
        return Err((status, "oversized batch"));
    }
    if let Some(bad) = batch
        .observations
        .iter()
        .find(|o| o.seq == 0 || o.result.is_none())
    {
        let status = Status::invalid_argument(format!(
            "observation {:?}: seq must be >= 1 and a result is required (seq {}, result {})",
            bad.check_id,
            bad.seq,
            if bad.result.is_some() {
                "present"
            } else {
                "missing"
            }
        ));
        return Err((status, "invalid observation"));
    }
    Ok(())
}

/// Maximum wait to queue the status a stream ends with.
const END_TIMEOUT: Duration = Duration::from_secs(2);

/// End the stream with `status` (the client sees it, not OK): queued behind what is already
/// on its way, bounded in time.
async fn end_with(tx: &SessionTx, status: Status) {
    let _ = tokio::time::timeout(END_TIMEOUT, tx.send(Box::new(Err(status)))).await;
}

/// What the client is told of a message that did not decode: bad bytes (invalid UTF-8 in a
/// string, a broken message) are `INVALID_ARGUMENT`, an oversized one `RESOURCE_EXHAUSTED`.
/// tonic reports them as `INTERNAL` and `OUT_OF_RANGE`.
fn inbound_error(status: Status) -> Status {
    let msg = status.message();
    match status.code() {
        tonic::Code::OutOfRange => Status::resource_exhausted(format!("message too large: {msg}")),
        tonic::Code::Internal if msg.contains("decode") || msg.contains("UTF-8") => {
            Status::invalid_argument(format!("message does not decode: {msg}"))
        }
        _ => status,
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    /// A probe's stream of `messages`, all of them already arrived.
    fn arrived(messages: &[pb::ProbeMessage]) -> Streaming<pb::ProbeMessage> {
        let mut body = Vec::new();
        for m in messages {
            let bytes = m.encode_to_vec();
            body.push(0);
            body.extend_from_slice(&u32::try_from(bytes.len()).unwrap().to_be_bytes());
            body.extend_from_slice(&bytes);
        }
        let body = http_body_util::Full::new(bytes::Bytes::from(body));
        Streaming::new_request(
            vantage_proto::codec::SliceDecoder::<pb::ProbeMessage>::default(),
            body,
            None,
            None,
        )
    }

    /// A batch of observations numbered `seqs`.
    fn batch(seqs: impl IntoIterator<Item = u64>) -> pb::ProbeMessage {
        let observations = seqs
            .into_iter()
            .map(|seq| pb::Observation {
                seq,
                check_id: "access_url".into(),
                result: Some(pb::observation::Result::AccessUrl(Default::default())),
                ..Default::default()
            })
            .collect();
        pb::ProbeMessage {
            msg: Some(Up::Observations(pb::ObservationBatch { observations })),
        }
    }

    fn seqs(m: &pb::ProbeMessage) -> Vec<u64> {
        match &m.msg {
            Some(Up::Observations(b)) => b.observations.iter().map(|o| o.seq).collect(),
            _ => Vec::new(),
        }
    }

    /// What one session takes after its first message: the batches that go with it (their
    /// sequence numbers, one list each), what it carries to handle next, and its count of
    /// messages taken in a row.
    async fn taken(
        messages: &[pb::ProbeMessage],
    ) -> (
        Vec<Vec<u64>>,
        Option<Result<Option<pb::ProbeMessage>, Status>>,
        u32,
    ) {
        let mut inbound = arrived(messages);
        let first = inbound.message().await.unwrap().unwrap();
        let (mut carried, mut in_a_row) = (None, 1);
        let batches = waiting_batches(
            &mut inbound,
            seqs(&first).len(),
            &mut carried,
            &mut in_a_row,
            |b| b,
        );
        let batches = batches
            .iter()
            .map(|b| b.observations.iter().map(|o| o.seq).collect())
            .collect();
        (batches, carried.map(|m| *m), in_a_row)
    }

    /// The batches already waiting go with the first, each as it came, up to MAX_BATCH
    /// observations in all and READY_IN_A_ROW messages in a row; the first message that is not
    /// a valid batch that fits is kept to be handled next, as it came.
    #[tokio::test]
    async fn waiting_batches_go_along_in_bounds_and_anything_else_waits_its_turn() {
        let heartbeat = pb::ProbeMessage {
            msg: Some(Up::Heartbeat(pb::Heartbeat::default())),
        };
        let (batches, carried, in_a_row) = taken(&[
            batch(1..=2),
            batch(3..=5),
            batch([6]),
            heartbeat.clone(),
            batch([7]),
        ])
        .await;
        assert_eq!(
            batches,
            vec![vec![3, 4, 5], vec![6]],
            "each batch stays whole, in order"
        );
        assert_eq!(carried.unwrap().unwrap(), Some(heartbeat));
        assert_eq!(in_a_row, 4, "the carried heartbeat was taken too");

        // At most MAX_BATCH observations with the first: the batch that would pass it is next.
        let half = u64::try_from(MAX_BATCH / 2).unwrap();
        let (batches, carried, _) = taken(&[
            batch(1..=half),
            batch(half + 1..=2 * half - 1),
            batch(2 * half..=2 * half + 1),
        ])
        .await;
        assert_eq!(batches.len(), 1);
        assert_eq!(
            seqs(&carried.unwrap().unwrap().unwrap()),
            vec![2 * half, 2 * half + 1]
        );

        // At most READY_IN_A_ROW messages in a row; the rest waits in the stream.
        let many: Vec<_> = (1..=40).map(|s| batch([s])).collect();
        let (batches, carried, in_a_row) = taken(&many).await;
        assert_eq!(batches.len(), usize::try_from(READY_IN_A_ROW).unwrap() - 1);
        assert_eq!(batches.last(), Some(&vec![u64::from(READY_IN_A_ROW)]));
        assert!(carried.is_none());
        assert_eq!(in_a_row, READY_IN_A_ROW);

        // A bad batch does not go along: it is handled next, on its own (its error ends the
        // stream after the good ones were sent).
        let (batches, carried, _) = taken(&[batch([1]), batch([0])]).await;
        assert!(batches.is_empty());
        assert_eq!(seqs(&carried.unwrap().unwrap().unwrap()), vec![0]);

        // The end of the stream is kept too.
        let (batches, carried, _) = taken(&[batch([1])]).await;
        assert!(batches.is_empty());
        assert_eq!(carried.unwrap().unwrap(), None);
    }

    fn hello(name: &str) -> pb::Hello {
        pb::Hello {
            name: name.into(),
            instance_id: "i".into(),
            ..Default::default()
        }
    }

    #[test]
    fn decode_errors_become_client_errors() {
        let big = inbound_error(Status::out_of_range("decoded message length too large"));
        assert_eq!(big.code(), tonic::Code::ResourceExhausted);
        let utf8 = inbound_error(Status::internal(
            "failed to decode Protobuf message: Hello.name: invalid string value: data is not UTF-8 encoded",
        ));
        assert_eq!(utf8.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            inbound_error(Status::cancelled("gone")).code(),
            tonic::Code::Cancelled
        );
    }

    #[test]
    fn hello_validation_names_the_field() {
        assert!(validate_hello(&hello("fra-1")).is_ok());
        for (h, field) in [
            (hello(""), "hello.name"),
            (hello("has space"), "hello.name"),
            (hello(SERVER_VANTAGE), "reserved"),
            (hello("Server"), "reserved"),
            (hello("SERVER-a"), "reserved"),
            (
                pb::Hello {
                    region: "x/y".into(),
                    ..hello("a")
                },
                "hello.region",
            ),
            (
                pb::Hello {
                    instance_id: String::new(),
                    ..hello("a")
                },
                "hello.instance_id",
            ),
        ] {
            let e = validate_hello(&h).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(field), "{}", e.message());
        }
    }

    /// A stream from a probe that stays open and says nothing.
    fn silent_probe() -> (
        mpsc::Sender<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>>,
        Streaming<pb::ProbeMessage>,
    ) {
        let (keep, frames) = mpsc::channel(1);
        let body = http_body_util::StreamBody::new(ReceiverStream::new(frames));
        let inbound = Streaming::new_request(
            vantage_proto::codec::SliceDecoder::<pb::ProbeMessage>::default(),
            body,
            None,
            None,
        );
        (keep, inbound)
    }

    /// Every change of an attached probe's assignment goes down its stream as it happens, the
    /// second as well as the first, and a closed response stream ends the session.
    #[tokio::test]
    async fn changed_assignments_go_down_the_stream_as_they_happen() {
        let (inv, (_proxies, derp_tx, _access, _timing)) =
            crate::ingest::inventory::tests::inv(vec![]);
        let (follow, first) = Assignments::follow(Arc::new(inv), "syd-1", "syd");
        let agg = Aggregator::spawn(crate::aggregator::AggregatorConfig::for_tests(), vec![])
            .expect("aggregator");
        let (tx, mut down) = mpsc::channel(8);
        let (_keep, mut inbound) = silent_probe();
        let idle = Duration::from_secs(3600);
        let session = session(&agg, "syd-1", 1, &mut inbound, &tx, idle, follow);
        tokio::pin!(session);
        let mut generations = vec![first.generation];
        for (id, code) in [(7, "syd"), (8, "syd")] {
            derp_tx.send_modify(|r| {
                let mut more = (**r).clone();
                more.push(inventory::DerpRegion {
                    id,
                    code: code.into(),
                    name: code.into(),
                    json: "{}".into(),
                    force_websockets: false,
                });
                *r = Arc::new(more);
            });
            let next = async {
                tokio::select! {
                    m = down.recv() => m.expect("the session holds the sender"),
                    r = &mut session => panic!("the session ended: {r}"),
                }
            };
            let sent = tokio::time::timeout(Duration::from_secs(10), next)
                .await
                .expect("the new assignment within 10 s");
            let Ok(pb::ServerMessage {
                msg: Some(Down::Assignment(a)),
            }) = *sent
            else {
                panic!("not an assignment: {sent:?}");
            };
            assert!(
                a.checks.iter().any(|c| c.id == format!("derp/{id}")),
                "region {id} is in the assignment"
            );
            generations.push(a.generation);
        }
        generations.dedup();
        assert_eq!(
            generations.len(),
            3,
            "each assignment is new: {generations:?}"
        );
        drop(down);
        assert_eq!(session.await, "the response stream closed");
    }
}
