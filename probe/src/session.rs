//! The probe's session with the server: attach, say hello, follow the assignment, stream
//! observations, and survive the server going away. Observations carry per-instance sequence
//! numbers; the server acknowledges them cumulatively; what it has not acknowledged stays in a
//! bounded [`ReplayBuffer`] and is resent after a reconnect. What a full buffer drops is
//! counted and reported in every hello and heartbeat.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use vantage_proto::backoff::Backoff;
use vantage_proto::pb;
use vantage_proto::pb::probe_message::Msg as Up;
use vantage_proto::pb::probe_service_client::ProbeServiceClient;
use vantage_proto::pb::server_message::Msg as Down;
use vantage_proto::transport::{self, Bearer, KeepAlive};

use crate::checks::CheckContext;
use crate::scheduler::{Output, Scheduler};

/// Default capacity of the replay buffer (observations).
pub const DEFAULT_BUFFER: usize = 10_000;
/// Observations per message on the wire.
const BATCH: usize = 64;
/// How long an observation may wait for others to share its message: a round's checks end
/// at different times, and every message costs a write here and an acknowledgement back.
/// A full message, a forced run waiting on its observations, or a fresh session (resending
/// what the server lacks) does not wait.
pub const LINGER: Duration = Duration::from_millis(50);
/// How long the server has to answer the hello.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// The first reconnect waits at most this long (jittered); later ones back off from it.
pub const FIRST_RETRY: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Reconnect delays are drawn from `[backoff/2, backoff]`.
const BACKOFF_JITTER: f64 = 0.5;
/// Heartbeat interval when the assignment names none (or zero).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// The assignment's heartbeat interval is clamped to this range.
pub const MIN_HEARTBEAT: Duration = Duration::from_secs(1);
pub const MAX_HEARTBEAT: Duration = Duration::from_secs(60);

/// How often to send a heartbeat under `assignment`: its `heartbeat_interval`, clamped to
/// [`MIN_HEARTBEAT`]..=[`MAX_HEARTBEAT`]; [`DEFAULT_HEARTBEAT`] when it names none, zero or
/// a negative one.
pub fn heartbeat_interval(assignment: &pb::Assignment) -> Duration {
    match vantage_proto::convert::from_duration(assignment.heartbeat_interval.as_ref()) {
        Some(d) if !d.is_zero() => d.clamp(MIN_HEARTBEAT, MAX_HEARTBEAT),
        _ => DEFAULT_HEARTBEAT,
    }
}

/// The heartbeat timer of one attached session: ticks at once, then every period; a new
/// period re-arms it (next tick one new period from now).
#[derive(Debug)]
struct Heartbeat {
    interval: Interval,
}

impl Heartbeat {
    fn new(period: Duration) -> Heartbeat {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Heartbeat { interval }
    }

    fn period(&self) -> Duration {
        self.interval.period()
    }

    fn set_period(&mut self, period: Duration) {
        if period == self.period() {
            return;
        }
        let mut interval = tokio::time::interval_at(Instant::now() + period, period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        self.interval = interval;
    }

    async fn tick(&mut self) {
        self.interval.tick().await;
    }
}

/// When the observations waiting to go out are sent: [`LINGER`] after the first of them
/// arrived, or at once when they fill a message, something waits on them, or they are what
/// is left after a message went out.
#[derive(Debug, Default)]
struct Linger {
    /// When the oldest unsent observation arrived, while there is one.
    since: Option<Instant>,
    /// What is unsent goes at once (the rest of a full message, a resend after attaching).
    flush: bool,
}

impl Linger {
    /// `unsent` observations wait (`urgent`: a forced run waits on them); the instant to send
    /// them at, `None` when there is nothing to send.
    fn send_at(&mut self, unsent: u64, urgent: bool, now: Instant) -> Option<Instant> {
        if unsent == 0 {
            *self = Linger::default();
            return None;
        }
        let since = *self.since.get_or_insert(now);
        if self.flush || urgent || unsent >= BATCH as u64 {
            Some(now)
        } else {
            Some(since + LINGER)
        }
    }

    /// A message went out, or a session began: what is unsent now does not wait.
    fn flush(&mut self) {
        self.flush = true;
    }
}

/// Unacknowledged observations, oldest first, with sequence numbers assigned on push.
#[derive(Debug)]
pub struct ReplayBuffer {
    items: VecDeque<pb::Observation>,
    capacity: usize,
    next_seq: u64,
    acked: u64,
    dropped: u64,
}

impl ReplayBuffer {
    pub fn new(capacity: usize) -> Self {
        ReplayBuffer {
            items: VecDeque::with_capacity(capacity.min(1024)),
            capacity: capacity.max(1),
            next_seq: 1,
            acked: 0,
            dropped: 0,
        }
    }

    /// Number the observation and keep it; when full, the oldest is dropped (and counted).
    pub fn push(&mut self, mut obs: pb::Observation) -> u64 {
        if self.items.len() == self.capacity {
            self.items.pop_front();
            self.dropped += 1;
        }
        obs.seq = self.next_seq;
        self.next_seq += 1;
        self.items.push_back(obs);
        self.next_seq - 1
    }

    /// Everything up to `seq` is acknowledged.
    pub fn ack(&mut self, seq: u64) {
        if seq <= self.acked {
            return;
        }
        self.acked = seq.min(self.last_seq());
        while self.items.front().is_some_and(|o| o.seq <= self.acked) {
            self.items.pop_front();
        }
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The highest sequence assigned so far (0: none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Up to `max` buffered observations with a sequence above `after`, in order.
    pub fn after(&self, after: u64, max: usize) -> Vec<pb::Observation> {
        let start = self.items.partition_point(|o| o.seq <= after);
        self.items.range(start..).take(max).cloned().collect()
    }
}

/// Who this probe is and where it reports.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The servers (replicas), in the order to try them; at least one.
    pub servers: Vec<String>,
    pub name: String,
    pub region: String,
    pub labels: BTreeMap<String, String>,
    pub token: Option<String>,
    pub buffer: usize,
    /// The CA, client certificate and plaintext opt-in of the connection to the server.
    pub tls: transport::TlsFiles,
}

/// Why a session attempt ended.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("attach: {0}")]
    Attach(#[from] tonic::Status),
    #[error("the server sent no welcome within {0:?}")]
    NoWelcome(Duration),
    #[error("the server closed the stream")]
    Closed,
    #[error("{0}")]
    Url(String),
}

enum Ended {
    Shutdown,
    Lost(AttemptError),
}

/// Which server to attach to, and how long to wait before an attempt. The servers are tried
/// in the order given: the probe attaches to the first that answers and stays with it; when
/// an attempt fails or the session is lost it moves on to the next one (round-robin, back to
/// the first after the last). The first retry after a loss comes within [`FIRST_RETRY`]
/// (jittered), later ones back off exponentially up to 10 s, until a session attaches again.
#[derive(Debug)]
struct Failover {
    servers: Vec<String>,
    current: usize,
    backoff: Backoff,
}

impl Failover {
    fn new(servers: Vec<String>) -> Failover {
        Failover {
            servers,
            current: 0,
            backoff: Backoff::new(FIRST_RETRY, BACKOFF_MAX).jitter(BACKOFF_JITTER),
        }
    }

    /// The server of the next attempt.
    fn current(&self) -> &str {
        self.servers.get(self.current).map_or("", String::as_str)
    }

    /// Attached: stay with this server; a later loss retries quickly again.
    fn attached(&mut self) {
        self.backoff.reset();
    }

    /// The attempt on the current server failed or its session was lost: move on to the
    /// next server; the delay before trying it.
    fn failed(&mut self) -> Duration {
        self.current = (self.current + 1) % self.servers.len().max(1);
        self.backoff.next_delay()
    }
}

/// The session's state across reconnects.
struct Session {
    cfg: SessionConfig,
    ctx: CheckContext,
    instance_id: String,
    failover: Failover,
    buffer: ReplayBuffer,
    scheduler: Option<Scheduler>,
    out_tx: mpsc::Sender<Output>,
    out_rx: mpsc::Receiver<Output>,
    /// Run-now completions waiting for the observations before them to be sent.
    pending_complete: Vec<(u64, u64)>,
    /// The heartbeat interval of the latest assignment.
    heartbeat: Duration,
}

/// Run the session until `shutdown` resolves, reconnecting with backoff and jitter.
pub async fn run(
    cfg: SessionConfig,
    ctx: CheckContext,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let (out_tx, out_rx) = mpsc::channel(1024);
    let mut session = Session {
        buffer: ReplayBuffer::new(cfg.buffer),
        failover: Failover::new(cfg.servers.clone()),
        cfg,
        ctx,
        instance_id: uuid::Uuid::new_v4().to_string(),
        scheduler: None,
        out_tx,
        out_rx,
        pending_complete: Vec::new(),
        heartbeat: DEFAULT_HEARTBEAT,
    };
    tokio::pin!(shutdown);
    loop {
        let attempt = session.attempt(&mut shutdown);
        let ended = attempt.await;
        let server = session.failover.current().to_owned();
        let delay = session.failover.failed();
        let next = session.failover.current();
        match ended {
            Ended::Shutdown => return,
            Ended::Lost(AttemptError::Attach(s)) if refused(&s) => {
                tracing::error!(reason = %s.message(), code = ?s.code(), %server, %next, ?delay, "the server refused this probe; retrying with backoff");
            }
            Ended::Lost(e) => {
                tracing::warn!(error = %e, %server, %next, ?delay, buffered = session.buffer.len(), "session lost; reconnecting");
            }
        }
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                () = &mut sleep => break,
                Some(out) = session.out_rx.recv() => session.take(out),
            }
        }
    }
}

/// Whether the server refused the session for what it is (its name, its input, its token),
/// rather than lost it: logged at error level.
fn refused(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::AlreadyExists
            | Code::ResourceExhausted
            | Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::PermissionDenied
            | Code::Unauthenticated
    )
}

impl Session {
    fn take(&mut self, out: Output) {
        match out {
            Output::Observation(o) => {
                self.buffer.push(*o);
            }
            Output::RunComplete(id) => self.pending_complete.push((self.buffer.last_seq(), id)),
        }
    }

    fn hello(&self) -> pb::ProbeMessage {
        pb::ProbeMessage {
            msg: Some(Up::Hello(pb::Hello {
                name: self.cfg.name.clone(),
                region: self.cfg.region.clone(),
                labels: self.cfg.labels.clone().into_iter().collect(),
                version: crate::VERSION.to_owned(),
                instance_id: self.instance_id.clone(),
                last_acked_seq: self.buffer.acked(),
                replay_dropped: self.buffer.dropped(),
                once: false,
            })),
        }
    }

    fn apply_assignment(&mut self, a: pb::Assignment) {
        self.heartbeat = heartbeat_interval(&a);
        if self
            .scheduler
            .as_ref()
            .is_some_and(|s| s.generation() == a.generation)
        {
            return;
        }
        tracing::info!(
            generation = a.generation,
            checks = a.checks.len(),
            "new assignment"
        );
        self.scheduler = Some(Scheduler::start(self.ctx.clone(), &a, self.out_tx.clone()));
    }

    async fn connect(&self) -> Result<ProbeServiceClient<Channel>, AttemptError> {
        // Built per attempt, so a rotated client certificate is picked up on reconnect.
        let target = transport::Target::new(self.failover.current(), &self.cfg.tls)
            .map_err(|e| AttemptError::Url(e.to_string()))?;
        Ok(ProbeServiceClient::new(
            target.connect(KeepAlive::Always).await?,
        ))
    }

    async fn attempt(
        &mut self,
        shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> Ended {
        let (up, mut down) = {
            let connect = self.connect_and_attach();
            tokio::pin!(connect);
            tokio::select! {
                () = shutdown.as_mut() => return Ended::Shutdown,
                r = &mut connect => match r {
                    Ok(pair) => pair,
                    Err(e) => return Ended::Lost(e),
                },
            }
        };
        let welcome = match await_welcome(&mut down).await {
            Ok(w) => w,
            Err(e) => return Ended::Lost(e),
        };
        self.failover.attached();
        // The welcome says what this server has stored of this instance: resend from there.
        self.buffer.ack(welcome.applied_seq);
        let mut sent = self.buffer.acked().max(welcome.applied_seq);
        tracing::info!(
            server = self.failover.current(),
            applied = welcome.applied_seq,
            resend = self.buffer.len(),
            "attached"
        );
        if let Some(a) = welcome.assignment {
            self.apply_assignment(a);
        }
        let mut heartbeat = Heartbeat::new(self.heartbeat);
        // What the server lacks is resent at once; new observations wait for company.
        let mut linger = Linger::default();
        linger.flush();
        let hold = tokio::time::sleep(LINGER);
        tokio::pin!(hold);
        let mut armed: Option<Instant> = None;
        loop {
            let now = Instant::now();
            let unsent = self.buffer.last_seq().saturating_sub(sent);
            let send_at = linger.send_at(unsent, !self.pending_complete.is_empty(), now);
            let due = send_at.is_some_and(|at| at <= now);
            let wait = send_at.filter(|at| *at > now);
            if let Some(at) = wait.filter(|at| armed != Some(*at)) {
                hold.as_mut().reset(at);
                armed = Some(at);
            }
            tokio::select! {
                () = shutdown.as_mut() => return Ended::Shutdown,
                msg = down.message() => match msg {
                    Ok(Some(m)) => {
                        let run_now = matches!(m.msg, Some(Down::RunNow(_)));
                        self.handle_down(m);
                        if run_now {
                            // Acknowledged at once: a force waits only for vantages that did.
                            let _ = up.try_send(self.heartbeat_message());
                        }
                    }
                    Ok(None) => return Ended::Lost(AttemptError::Closed),
                    Err(status) => return Ended::Lost(AttemptError::Attach(status)),
                },
                Some(out) = self.out_rx.recv() => {
                    self.take(out);
                    // What else is ready goes into the same message.
                    while let Ok(out) = self.out_rx.try_recv() {
                        self.take(out);
                    }
                }
                () = &mut hold, if wait.is_some() => armed = None,
                permit = up.reserve(), if due => {
                    let Ok(permit) = permit else { return Ended::Lost(AttemptError::Closed) };
                    linger.flush();
                    let batch = self.buffer.after(sent, BATCH);
                    if let Some(last) = batch.last() {
                        sent = last.seq;
                    } else {
                        // Dropped from a full buffer before it could be sent.
                        sent = self.buffer.last_seq();
                    }
                    permit.send(pb::ProbeMessage { msg: Some(Up::Observations(pb::ObservationBatch { observations: batch })) });
                }
                _ = heartbeat.tick() => {
                    let _ = up.try_send(self.heartbeat_message());
                }
            }
            // An assignment may have changed the heartbeat interval.
            heartbeat.set_period(self.heartbeat);
            self.send_completions(&up, sent);
        }
    }

    fn heartbeat_message(&self) -> pb::ProbeMessage {
        pb::ProbeMessage {
            msg: Some(Up::Heartbeat(pb::Heartbeat {
                replay_dropped: self.buffer.dropped(),
                buffered: self.buffer.len() as u64,
            })),
        }
    }

    /// What the server sends once attached: acks, new assignments, run-now requests.
    fn handle_down(&mut self, m: pb::ServerMessage) {
        match m.msg {
            Some(Down::Ack(a)) => self.buffer.ack(a.seq),
            Some(Down::Assignment(a)) => self.apply_assignment(a),
            Some(Down::RunNow(r)) => {
                if let Some(s) = self.scheduler.as_mut() {
                    s.run_now(r.request_id);
                } else {
                    self.pending_complete
                        .push((self.buffer.last_seq(), r.request_id));
                }
            }
            Some(Down::Welcome(_) | Down::Heartbeat(_)) | None => {}
        }
    }

    /// Completions whose observations have all been sent (up to `sent`).
    fn send_completions(&mut self, up: &mpsc::Sender<pb::ProbeMessage>, sent: u64) {
        while let Some(&(watermark, id)) = self.pending_complete.first() {
            if watermark > sent {
                break;
            }
            let msg = pb::ProbeMessage {
                msg: Some(Up::RunComplete(pb::RunComplete { request_id: id })),
            };
            if up.try_send(msg).is_err() {
                break;
            }
            self.pending_complete.remove(0);
        }
    }

    async fn connect_and_attach(
        &self,
    ) -> Result<
        (
            mpsc::Sender<pb::ProbeMessage>,
            tonic::Streaming<pb::ServerMessage>,
        ),
        AttemptError,
    > {
        let mut client = self.connect().await?;
        let (up, rx) = mpsc::channel(16);
        up.try_send(self.hello())
            .map_err(|_| AttemptError::Closed)?;
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        // A token that is no valid header value is not sent (`--once` refuses it).
        if let Some(bearer) = self.cfg.token.as_deref().and_then(|t| Bearer::new(t).ok()) {
            bearer.authorize(&mut request);
        }
        let down = client.attach(request).await?.into_inner();
        Ok((up, down))
    }
}

/// Whether the server refused the token or the name: `UNAUTHENTICATED` or
/// `PERMISSION_DENIED` (`--once` exits 4 on it).
pub fn is_refusal(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
    )
}

/// The server's first message: the welcome, within [`WELCOME_TIMEOUT`].
async fn await_welcome(
    down: &mut tonic::Streaming<pb::ServerMessage>,
) -> Result<pb::Welcome, AttemptError> {
    match tokio::time::timeout(WELCOME_TIMEOUT, down.message()).await {
        Err(_) => Err(AttemptError::NoWelcome(WELCOME_TIMEOUT)),
        Ok(Err(status)) => Err(AttemptError::Attach(status)),
        Ok(Ok(Some(pb::ServerMessage {
            msg: Some(Down::Welcome(w)),
        }))) => Ok(w),
        Ok(Ok(_)) => Err(AttemptError::Closed),
    }
}

#[cfg(test)]
mod tests;
