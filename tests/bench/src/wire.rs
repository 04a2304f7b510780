//! The simulated probe's side of `ProbeService.Attach`, cheap enough that a load generator on
//! the same machine measures the server rather than itself: upstream messages are encoded once
//! into templates and only the sequence numbers are written per batch (the bytes on the wire
//! are exactly what prost would produce for the same `pb::ProbeMessage`).

use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::{BufMut as _, Bytes, BytesMut};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Status, Streaming};
use vantage_proto::pb;
use vantage_proto::pb::server_message::Msg as Down;

/// Observations per upstream message, as the real probe sends them.
pub const BATCH: usize = 64;

/// Encodes pre-encoded `ProbeMessage` bytes as they are; decodes `ServerMessage`s with prost.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

#[derive(Debug, Clone, Copy, Default)]
pub struct RawEncoder;

#[derive(Debug, Clone, Copy, Default)]
pub struct ServerDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for ServerDecoder {
    type Item = pb::ServerMessage;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<pb::ServerMessage>, Status> {
        pb::ServerMessage::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = pb::ServerMessage;
    type Encoder = RawEncoder;
    type Decoder = ServerDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ServerDecoder {
        ServerDecoder
    }
}

/// An access-URL observation as the probe produces it for a healthy `/healthz` (seq unset).
pub fn access_url_observation(url: &str, status_code: i32) -> pb::Observation {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    pb::Observation {
        seq: 0,
        check_id: "access_url".into(),
        section: pb::Section::AccessUrl as i32,
        target: url.to_owned(),
        observed_at: Some(prost_types::Timestamp {
            seconds: i64::try_from(now.as_secs()).unwrap_or(0),
            nanos: i32::try_from(now.subsec_nanos()).unwrap_or(0),
        }),
        elapsed: Some(prost_types::Duration {
            seconds: 0,
            nanos: 1_234_567,
        }),
        result: Some(pb::observation::Result::AccessUrl(pb::AccessUrlResult {
            access_url: url.to_owned(),
            reachable: true,
            status_code,
            healthz_response: if status_code == 200 {
                "OK".into()
            } else {
                "unavailable".into()
            },
            body_truncated: false,
            failure: None,
        })),
    }
}

/// Writes `ProbeMessage { observations: ObservationBatch { .. } }` for consecutive sequence
/// numbers from one observation template.
#[derive(Debug, Clone)]
pub struct BatchEncoder {
    /// The template's encoding without its seq field (seq 0 is not encoded).
    rest: Bytes,
    buf: BytesMut,
}

fn varint(buf: &mut BytesMut, v: u64) {
    prost::encoding::encode_varint(v, buf);
}

fn varint_len(v: u64) -> usize {
    prost::encoding::encoded_len_varint(v)
}

impl BatchEncoder {
    pub fn new(template: &pb::Observation) -> Self {
        let mut t = template.clone();
        t.seq = 0;
        BatchEncoder {
            rest: Bytes::from(t.encode_to_vec()),
            buf: BytesMut::with_capacity(16 * 1024),
        }
    }

    /// One message with observations `first..first + count`.
    pub fn batch(&mut self, first: u64, count: usize) -> Bytes {
        let body_len = |seq: u64| 1 + varint_len(seq) + self.rest.len();
        let mut inner = 0usize;
        for seq in first..first + count as u64 {
            let b = body_len(seq);
            inner += 1 + varint_len(b as u64) + b;
        }
        let buf = &mut self.buf;
        buf.reserve(inner + 16);
        // ProbeMessage.observations = 2 (length-delimited).
        buf.put_u8(0x12);
        varint(buf, inner as u64);
        for seq in first..first + count as u64 {
            let b = 1 + varint_len(seq) + self.rest.len();
            // ObservationBatch.observations = 1; Observation.seq = 1 (varint).
            buf.put_u8(0x0a);
            varint(buf, b as u64);
            buf.put_u8(0x08);
            varint(buf, seq);
            buf.put_slice(&self.rest);
        }
        buf.split().freeze()
    }
}

/// An attached simulated probe: the upstream sender, the downstream messages and the welcome.
pub struct Attached {
    pub up: mpsc::Sender<Bytes>,
    pub down: Streaming<pb::ServerMessage>,
    pub welcome: pb::Welcome,
}

impl Attached {
    /// The URL of the `access_url` check of the welcome's assignment.
    pub fn access_url(&self) -> anyhow::Result<String> {
        self.welcome
            .assignment
            .as_ref()
            .and_then(|a| {
                a.checks.iter().find_map(|c| match &c.target {
                    Some(pb::check::Target::AccessUrl(t)) if c.id == "access_url" => {
                        Some(t.url.clone())
                    }
                    _ => None,
                })
            })
            .context("the assignment has no access_url check")
    }
}

/// A hello as a probe named `name` sends it at process start.
pub fn hello(name: &str) -> pb::Hello {
    pb::Hello {
        name: name.to_owned(),
        region: "bench".into(),
        labels: Default::default(),
        version: "v0.0.0-bench".into(),
        instance_id: format!("bench-{name}-{}", std::process::id()),
        last_acked_seq: 0,
        replay_dropped: 0,
        once: false,
    }
}

/// Open `Attach` on `channel`, say hello, wait (bounded) for the welcome.
pub async fn attach(channel: Channel, name: &str, queue: usize) -> anyhow::Result<Attached> {
    let (up, rx) = mpsc::channel::<Bytes>(queue.max(2));
    let hello = pb::ProbeMessage {
        msg: Some(pb::probe_message::Msg::Hello(hello(name))),
    };
    up.try_send(Bytes::from(hello.encode_to_vec()))
        .map_err(|_| anyhow::anyhow!("upstream queue"))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.context("channel not ready")?;
    let path = http::uri::PathAndQuery::from_static("/vantage.v1.ProbeService/Attach");
    let mut down = grpc
        .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, RawCodec)
        .await
        .with_context(|| format!("attach {name}"))?
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(30), down.message())
        .await
        .with_context(|| format!("{name}: no welcome within 30s"))?
        .with_context(|| format!("{name}: attach stream"))?;
    let welcome = match first {
        Some(pb::ServerMessage {
            msg: Some(Down::Welcome(w)),
        }) => w,
        other => bail!("{name}: expected a welcome, got {other:?}"),
    };
    Ok(Attached { up, down, welcome })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_decode_as_prost_would_encode_them() {
        let obs = access_url_observation("http://127.0.0.1:1/", 200);
        let mut enc = BatchEncoder::new(&obs);
        for (first, count) in [(1u64, 64usize), (120, 3), (1 << 40, 1)] {
            let bytes = enc.batch(first, count);
            let msg = pb::ProbeMessage::decode(bytes.clone()).expect("decodes");
            let want = pb::ProbeMessage {
                msg: Some(pb::probe_message::Msg::Observations(pb::ObservationBatch {
                    observations: (first..first + count as u64)
                        .map(|seq| pb::Observation { seq, ..obs.clone() })
                        .collect(),
                })),
            };
            assert_eq!(msg, want);
            assert_eq!(bytes.len(), want.encoded_len());
        }
    }
}
