//! The gRPC codec of every `vantage.v1` service: prost, with 256-byte initial buffers instead
//! of tonic's 8 KiB. Each stream holds an encode and a decode buffer for its whole life, and most
//! of a fleet's streams are idle probes and watchers whose messages are small. The decode
//! buffer grows to the largest message it carries and keeps that size; the encoder reserves
//! each message's whole size before writing it, so a large message costs one allocation, not
//! a doubling series from 256 bytes. The decoder reads a message from one contiguous slice when
//! it has one (it always does: tonic buffers a whole message before decoding it), which lets
//! prost take its fast paths instead of advancing tonic's buffer field by field.

use std::marker::PhantomData;

use prost::bytes::Buf;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Initial size of a stream's encode and decode buffers.
pub const BUFFER_SIZE: usize = 256;
/// Encoded bytes after which a stream's encoder yields (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// The buffer settings of every vantage stream (also for hand-written codecs).
pub fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

/// Prost messages with small initial buffers (the generated services use it by path).
#[derive(Debug)]
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        SmallBufferCodec(PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = SmallBufferEncoder<T>;
    type Decoder = SliceDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        SmallBufferEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        SliceDecoder::default()
    }
}

/// Encodes a prost message after reserving its whole size.
#[derive(Debug)]
pub struct SmallBufferEncoder<T>(PhantomData<T>);

impl<T: prost::Message> Encoder for SmallBufferEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf)
            .map_err(|e| Status::internal(format!("encoding a message: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        settings()
    }
}

/// Decodes a prost message from the contiguous bytes of its frame (also for hand-written
/// codecs).
#[derive(Debug)]
pub struct SliceDecoder<U>(PhantomData<U>);

impl<U> Default for SliceDecoder<U> {
    fn default() -> Self {
        SliceDecoder(PhantomData)
    }
}

impl<U: prost::Message + Default> Decoder for SliceDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let len = buf.remaining();
        let chunk = buf.chunk();
        let item = if chunk.len() == len {
            let item = U::decode(chunk);
            buf.advance(len);
            item
        } else {
            U::decode(buf)
        };
        // The status tonic's own prost decoder gives.
        item.map(Some).map_err(|e| Status::internal(e.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        settings()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::Full;
    use prost::Message as _;
    use prost::bytes::Bytes;
    use tonic::Streaming;

    use super::*;
    use crate::pb;

    /// A request body of gRPC frames (uncompressed) holding `messages`.
    fn frames(messages: &[&[u8]]) -> Full<Bytes> {
        let mut body = Vec::new();
        for m in messages {
            body.push(0);
            body.extend_from_slice(&u32::try_from(m.len()).expect("small").to_be_bytes());
            body.extend_from_slice(m);
        }
        Full::new(Bytes::from(body))
    }

    #[tokio::test]
    async fn messages_decode_from_their_frames_and_bad_bytes_are_an_internal_decode_error() {
        let obs = pb::Observation {
            seq: 7,
            check_id: "access_url".into(),
            target: "https://coder.example.com".into(),
            ..Default::default()
        };
        let batch = pb::ProbeMessage {
            msg: Some(pb::probe_message::Msg::Observations(pb::ObservationBatch {
                observations: vec![obs; 3],
            })),
        };
        let empty = pb::ProbeMessage::default();
        let body = frames(&[&batch.encode_to_vec(), &empty.encode_to_vec()]);
        let mut stream = Streaming::new_request(
            SliceDecoder::<pb::ProbeMessage>(PhantomData),
            body,
            None,
            None,
        );
        assert_eq!(stream.message().await.expect("decodes"), Some(batch));
        assert_eq!(stream.message().await.expect("decodes"), Some(empty));
        assert_eq!(stream.message().await.expect("ends"), None);

        // `Hello.name` (field 1, a string) holding bytes that are not UTF-8.
        let body = frames(&[&[0x0a, 2, 0xff, 0xfe]]);
        let mut stream =
            Streaming::new_request(SliceDecoder::<pb::Hello>(PhantomData), body, None, None);
        let e = stream.message().await.expect_err("not UTF-8");
        assert_eq!(e.code(), tonic::Code::Internal);
        assert!(
            e.message().contains("failed to decode Protobuf message"),
            "{}",
            e.message()
        );
    }
}
