//! Figure 2, fan-out: W `Watch` subscribers (section AccessURL) and one more that never reads,
//! while one simulated probe flips its access URL between 200 (OK) and 503 (WARNING) at a
//! fixed rate. The k-th flip is matched to the k-th aggregate `SectionChange` (vantage "") a
//! subscriber receives; latency is from just before the probe's send to the subscriber's
//! receipt (one process, one clock). Ingestion must keep up meanwhile: every flip is acked
//! and applied (ListVantages `applied`, no gaps).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::task::JoinSet;
use tonic::transport::Channel;
use vantage_proto::pb;
use vantage_proto::pb::server_message::Msg as Down;

use crate::wire::{self, BatchEncoder};
use crate::{channels, cpu_seconds, percentile, start_vantaged};

#[derive(Debug, Clone)]
pub struct FanoutConfig {
    pub watchers: Vec<usize>,
    /// Severity changes per second.
    pub rate: f64,
    pub duration: Duration,
    pub streams_per_channel: usize,
}

#[derive(Debug, Clone, Default)]
pub struct FanoutRow {
    pub watchers: usize,
    pub flips: u64,
    pub receipts: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Subscribers that were told to resync (fell behind the broadcast).
    pub resyncs: u64,
    /// Changes whose `to` was not the expected severity.
    pub mismatches: u64,
    pub applied: u64,
    pub ack_p99_ms: f64,
    pub server_cpu: f64,
    /// CPU seconds of this process (the generator: the flipper and every watcher).
    pub generator_cpu: f64,
    pub elapsed: f64,
}

struct Stamps {
    base: Instant,
    /// Nanoseconds after `base` at which flip k (index k) was sent; 0: not yet.
    sent: Vec<AtomicU64>,
}

impl Stamps {
    fn since(&self, k: usize) -> Option<Duration> {
        let ns = self.sent.get(k)?.load(Ordering::Acquire);
        (ns != 0).then(|| self.base.elapsed().saturating_sub(Duration::from_nanos(ns)))
    }
}

struct WatcherOut {
    latencies_us: Vec<u32>,
    resynced: bool,
    mismatches: u64,
}

/// What a benchmark watcher reads of a `WatchEvent`: the generator shares the two cores with
/// the server it measures, so it reads the encoded event in place ([`LiteEvent::parse`]) and
/// looks at three fields of a change and one of a snapshot.
#[derive(Debug, Default)]
struct LiteEvent {
    /// A snapshot: its `resync` flag.
    snapshot: Option<bool>,
    section_change: Option<LiteChange>,
}

#[derive(Debug, Default)]
struct LiteChange {
    section: i32,
    /// `vantage` is empty: the aggregate's change.
    aggregate: bool,
    to: i32,
}

/// One field of an encoded protobuf message.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

/// Every field of the protobuf message `buf`, in order, until `f` fails.
fn for_each_field(
    mut buf: &[u8],
    mut f: impl FnMut(u32, Field<'_>) -> Result<(), String>,
) -> Result<(), String> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    let short = |what: &str| format!("the event ends inside {what}");
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf).map_err(|e| e.to_string())?;
        let field = match wire {
            WireType::Varint => Field::Varint(decode_varint(&mut buf).map_err(|e| e.to_string())?),
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut buf).map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
                let bytes = buf
                    .get(..len)
                    .ok_or_else(|| short("a length-delimited field"))?;
                buf = &buf[len..];
                Field::Bytes(bytes)
            }
            WireType::SixtyFourBit | WireType::ThirtyTwoBit => {
                let len = if wire == WireType::SixtyFourBit { 8 } else { 4 };
                buf = buf.get(len..).ok_or_else(|| short("a fixed-size field"))?;
                Field::Other
            }
            WireType::StartGroup | WireType::EndGroup => {
                return Err(format!("field {tag}: groups are not used by vantage"));
            }
        };
        f(tag, field)?;
    }
    Ok(())
}

impl LiteEvent {
    /// `WatchEvent` fields 3 (snapshot: `resync` = 1) and 4 (section change: `section` = 1,
    /// `vantage` = 2, `to` = 4); the rest is skipped.
    fn parse(buf: &[u8]) -> Result<LiteEvent, String> {
        let mut ev = LiteEvent::default();
        for_each_field(buf, |tag, field| {
            match (tag, field) {
                (3, Field::Bytes(b)) => {
                    let mut resync = false;
                    for_each_field(b, |t, f| {
                        if let (1, Field::Varint(v)) = (t, f) {
                            resync = v != 0;
                        }
                        Ok(())
                    })?;
                    ev.snapshot = Some(resync);
                }
                (4, Field::Bytes(b)) => {
                    let mut c = LiteChange {
                        aggregate: true,
                        ..Default::default()
                    };
                    for_each_field(b, |t, f| {
                        match (t, f) {
                            (1, Field::Varint(v)) => c.section = v as i32,
                            (2, Field::Bytes(v)) => c.aggregate = v.is_empty(),
                            (4, Field::Varint(v)) => c.to = v as i32,
                            _ => {}
                        }
                        Ok(())
                    })?;
                    ev.section_change = Some(c);
                }
                _ => {}
            }
            Ok(())
        })?;
        Ok(ev)
    }
}

/// The watchers' codec: the request through prost, each event read by [`LiteEvent::parse`].
#[derive(Debug, Default)]
struct LiteCodec;

impl tonic::codec::Codec for LiteCodec {
    type Encode = pb::WatchRequest;
    type Decode = LiteEvent;
    type Encoder = tonic_prost::ProstEncoder<pb::WatchRequest>;
    type Decoder = LiteCodec;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        LiteCodec
    }
}

impl tonic::codec::Decoder for LiteCodec {
    type Item = LiteEvent;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<LiteEvent>, tonic::Status> {
        use bytes::Buf as _;
        // tonic's buffer is contiguous: the event is read where it lies.
        let len = buf.remaining();
        let parsed = match buf.chunk() {
            chunk if chunk.len() == len => LiteEvent::parse(chunk),
            _ => Err("the event is not contiguous in the decode buffer".to_owned()),
        };
        buf.advance(len);
        parsed
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("watch event: {e}")))
    }
}

fn is_aggregate_access_url(ev: &LiteEvent) -> Option<&LiteChange> {
    ev.section_change
        .as_ref()
        .filter(|c| c.aggregate && c.section == pb::Section::AccessUrl as i32)
}

async fn subscribe(channel: Channel) -> anyhow::Result<tonic::Streaming<LiteEvent>> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| anyhow::anyhow!("watch: the channel is not ready: {e}"))?;
    let request = pb::WatchRequest {
        sections: vec![pb::Section::AccessUrl as i32],
        ..Default::default()
    };
    let path = http::uri::PathAndQuery::from_static("/vantage.v1.HealthService/Watch");
    let codec = LiteCodec;
    let mut stream = grpc
        .server_streaming(tonic::Request::new(request), path, codec)
        .await
        .map_err(|s| anyhow::anyhow!("watch: {:?} {}", s.code(), s.message()))?
        .into_inner();
    // The snapshot comes first.
    let first = stream
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("first watch event: {:?} {}", s.code(), s.message()))?;
    match first {
        Some(LiteEvent {
            snapshot: Some(_), ..
        }) => Ok(stream),
        other => bail!("expected a snapshot first, got {other:?}"),
    }
}

async fn watcher(
    mut stream: tonic::Streaming<LiteEvent>,
    flips: usize,
    stamps: Arc<Stamps>,
    deadline: tokio::time::Instant,
) -> anyhow::Result<WatcherOut> {
    let mut out = WatcherOut {
        latencies_us: Vec::with_capacity(flips),
        resynced: false,
        mismatches: 0,
    };
    let mut k = 0usize;
    // One timer for the whole run (a timeout per message costs the generator a timer
    // registration per event, 2 M a second).
    let give_up = tokio::time::sleep_until(deadline);
    tokio::pin!(give_up);
    while k < flips {
        let ev = tokio::select! {
            biased;
            r = stream.message() => r
                .map_err(|s| anyhow::anyhow!("watch stream: {:?} {}", s.code(), s.message()))?
                .context("the watch stream ended")?,
            () = &mut give_up => break,
        };
        if let Some(resync) = ev.snapshot {
            out.resynced |= resync;
            break;
        }
        let Some(change) = is_aggregate_access_url(&ev) else {
            continue;
        };
        k += 1;
        let Some(lat) = stamps.since(k) else {
            out.mismatches += 1;
            continue;
        };
        let want = if k % 2 == 1 {
            pb::Severity::Warning
        } else {
            pb::Severity::Ok
        };
        if change.to != want as i32 {
            out.mismatches += 1;
        }
        out.latencies_us
            .push(u32::try_from(lat.as_micros()).unwrap_or(u32::MAX));
    }
    Ok(out)
}

/// Flip the access URL `flips` times at `rate`; returns the ack latencies (µs) of every flip.
async fn flipper(
    mut att: wire::Attached,
    flips: usize,
    rate: f64,
    stamps: Arc<Stamps>,
) -> anyhow::Result<Vec<u32>> {
    let url = att.access_url()?;
    let mut warn = BatchEncoder::new(&wire::access_url_observation(&url, 503));
    let mut ok = BatchEncoder::new(&wire::access_url_observation(&url, 200));
    let start = tokio::time::Instant::now();
    let mut sent_at: Vec<Instant> = Vec::with_capacity(flips);
    let mut ack_lat = Vec::with_capacity(flips);
    let mut acked = 1u64; // seq 1 (the initial OK) was acked before the flips started.
    let mut k = 0usize;
    let last_seq = flips as u64 + 1;
    let grace = tokio::time::Instant::now()
        + Duration::from_secs_f64(flips as f64 / rate)
        + Duration::from_secs(30);
    while acked < last_seq {
        let next = start + Duration::from_secs_f64(k as f64 / rate);
        tokio::select! {
            biased;
            m = att.down.message() => match m.context("attach stream")? {
                Some(pb::ServerMessage { msg: Some(Down::Ack(a)) }) => {
                    let now = Instant::now();
                    while acked < a.seq {
                        acked += 1;
                        // seq s is flip s - 1.
                        if let Some(t) = sent_at.get((acked - 2) as usize) {
                            ack_lat.push(u32::try_from(now.duration_since(*t).as_micros()).unwrap_or(u32::MAX));
                        }
                    }
                }
                Some(_) => {}
                None => bail!("the server closed the probe's stream"),
            },
            () = tokio::time::sleep_until(next), if k < flips => {
                k += 1;
                let enc = if k % 2 == 1 { &mut warn } else { &mut ok };
                let msg = enc.batch(k as u64 + 1, 1);
                let now = Instant::now();
                stamps.sent[k].store(
                    u64::try_from(now.duration_since(stamps.base).as_nanos()).unwrap_or(u64::MAX).max(1),
                    Ordering::Release,
                );
                sent_at.push(now);
                att.up.send(msg).await.context("upstream closed")?;
            }
            () = tokio::time::sleep_until(grace) => bail!("flips not acked within 30s of the end: acked {acked} of {last_seq}"),
        }
    }
    Ok(ack_lat)
}

/// One run with `w` watchers.
pub async fn run_one(w: usize, cfg: &FanoutConfig) -> anyhow::Result<FanoutRow> {
    let server = start_vantaged(&[]).await?;
    let pid = server.pid()?;
    let probe_ch = channels(&server.url, 1).await?;
    let mut att = wire::attach(probe_ch[0].clone(), "flipper", 64).await?;
    initial_state(&mut att).await?;
    let chans = channels(&server.url, w.div_ceil(cfg.streams_per_channel.max(1))).await?;
    let mut streams = Vec::with_capacity(w);
    for i in 0..w {
        streams.push(
            subscribe(chans[i % chans.len()].clone())
                .await
                .with_context(|| format!("subscriber {i}"))?,
        );
    }
    // The subscriber that never reads, on its own connection.
    let stalled_ch = channels(&server.url, 1).await?;
    let stalled = pb::health_service_client::HealthServiceClient::new(stalled_ch[0].clone())
        .watch(pb::WatchRequest::default())
        .await?
        .into_inner();

    let flips = ((cfg.rate * cfg.duration.as_secs_f64()).round() as usize).max(2);
    let stamps = Arc::new(Stamps {
        base: Instant::now(),
        sent: (0..=flips).map(|_| AtomicU64::new(0)).collect(),
    });
    let deadline = tokio::time::Instant::now() + cfg.duration + Duration::from_secs(30);
    let mut tasks = JoinSet::new();
    for s in streams {
        tasks.spawn(watcher(s, flips, stamps.clone(), deadline));
    }
    let cpu0 = cpu_seconds(pid)?;
    let own0 = cpu_seconds(std::process::id())?;
    let t0 = Instant::now();
    let ack_lat = flipper(att, flips, cfg.rate, stamps.clone()).await?;
    let mut row = FanoutRow {
        watchers: w,
        flips: flips as u64,
        ..Default::default()
    };
    let mut all: Vec<f64> = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let out = r.context("watcher task")??;
        row.resyncs += u64::from(out.resynced);
        row.mismatches += out.mismatches;
        all.extend(out.latencies_us.iter().map(|&u| f64::from(u) / 1e3));
    }
    row.elapsed = t0.elapsed().as_secs_f64();
    row.server_cpu = cpu_seconds(pid)? - cpu0;
    row.generator_cpu = cpu_seconds(std::process::id())? - own0;
    drop(stalled);
    all.sort_by(f64::total_cmp);
    row.receipts = all.len() as u64;
    row.p50_ms = percentile(&all, 50.0);
    row.p99_ms = percentile(&all, 99.0);
    row.max_ms = all.last().copied().unwrap_or(f64::NAN);
    let mut acks: Vec<f64> = ack_lat.iter().map(|&u| f64::from(u) / 1e3).collect();
    acks.sort_by(f64::total_cmp);
    row.ack_p99_ms = percentile(&acks, 99.0);
    row.applied = applied_without_anomalies(&server.url).await?;
    server.stop().await;
    Ok(row)
}

/// The initial state: OK (seq 1), applied before anyone subscribes.
async fn initial_state(att: &mut wire::Attached) -> anyhow::Result<()> {
    let url = att.access_url()?;
    let first = BatchEncoder::new(&wire::access_url_observation(&url, 200)).batch(1, 1);
    att.up.send(first).await.context("upstream")?;
    loop {
        match att.down.message().await? {
            Some(pb::ServerMessage {
                msg: Some(Down::Ack(a)),
            }) if a.seq >= 1 => return Ok(()),
            Some(_) => {}
            None => bail!("the server closed the probe's stream"),
        }
    }
}

/// How many of the flipper's observations the server applied, after checking it saw no gap
/// and no duplicate.
async fn applied_without_anomalies(url: &str) -> anyhow::Result<u64> {
    let mut client =
        pb::health_service_client::HealthServiceClient::connect(url.to_owned()).await?;
    let list = client
        .list_vantages(pb::ListVantagesRequest {})
        .await?
        .into_inner();
    let v = list
        .vantages
        .iter()
        .find(|v| v.name == "flipper")
        .context("the flipper vantage is missing")?;
    if v.gaps != 0 || v.duplicates != 0 {
        bail!(
            "ingestion anomalies: {} gaps, {} duplicates",
            v.gaps,
            v.duplicates
        );
    }
    Ok(v.applied)
}

pub async fn run(cfg: &FanoutConfig) -> anyhow::Result<Vec<FanoutRow>> {
    let mut rows = Vec::new();
    for &w in &cfg.watchers {
        rows.push(run_one(w, cfg).await.with_context(|| format!("W = {w}"))?);
    }
    Ok(rows)
}

pub fn render(rows: &[FanoutRow], rate: f64) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.watchers.to_string(),
                format!("{rate:.0}"),
                r.flips.to_string(),
                format!("{} / {}", r.receipts, r.flips * r.watchers as u64),
                format!("{:.2}", r.p50_ms),
                format!("{:.2}", r.p99_ms),
                format!("{:.2}", r.max_ms),
                r.resyncs.to_string(),
                format!("{} / {}", r.applied, r.flips + 1),
                format!("{:.2}", r.ack_p99_ms),
                format!("{:.2}", r.server_cpu / r.elapsed.max(f64::EPSILON)),
                format!("{:.2}", r.generator_cpu / r.elapsed.max(f64::EPSILON)),
            ]
        })
        .collect();
    crate::table(
        &[
            "W",
            "changes/s",
            "flips",
            "receipts / expected",
            "p50 ms",
            "p99 ms",
            "max ms",
            "resyncs",
            "applied / sent (+stalled watcher)",
            "ack p99 ms",
            "vantaged CPU cores",
            "generator CPU cores",
        ],
        &body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(event: pb::watch_event::Event) -> Vec<u8> {
        prost::Message::encode_to_vec(&pb::WatchEvent {
            revision: 42,
            epoch: "e1".into(),
            time: Some(prost_types::Timestamp {
                seconds: 1_750_000_000,
                nanos: 5,
            }),
            event: Some(event),
        })
    }

    /// The hand-written reader agrees with prost's encoding: the fields it reads, whatever
    /// else the event carries; a cut event is an error, not a misread.
    #[test]
    fn the_lite_reader_reads_what_prost_wrote() {
        let change = |vantage: &str| {
            encoded(pb::watch_event::Event::SectionChange(pb::SectionChange {
                section: pb::Section::AccessUrl as i32,
                vantage: vantage.into(),
                from: pb::Severity::Ok as i32,
                to: pb::Severity::Error as i32,
                error: "EACS03".into(),
                warnings: vec![],
            }))
        };
        let aggregate = LiteEvent::parse(&change("")).expect("parsed");
        let c = aggregate.section_change.as_ref().expect("a change");
        assert!(c.aggregate);
        assert_eq!(c.section, pb::Section::AccessUrl as i32);
        assert_eq!(c.to, pb::Severity::Error as i32);
        assert!(aggregate.snapshot.is_none());
        let own = LiteEvent::parse(&change("fra-1")).expect("parsed");
        assert!(!own.section_change.expect("a change").aggregate);
        assert!(is_aggregate_access_url(&aggregate).is_some());

        let snapshot = encoded(pb::watch_event::Event::Snapshot(pb::Snapshot {
            resync: true,
            report: Some(pb::Report {
                json: "{}".into(),
                ..Default::default()
            }),
        }));
        let parsed = LiteEvent::parse(&snapshot).expect("parsed");
        assert_eq!(parsed.snapshot, Some(true));
        assert!(parsed.section_change.is_none());

        let whole = change("");
        assert!(LiteEvent::parse(&whole[..whole.len() - 1]).is_err());
    }
}
