//! The gRPC codec of every `vantage.v1` service: prost, with 1 KiB initial buffers instead of
//! tonic's 8 KiB. Each stream holds an encode and a decode buffer for its whole life, and most
//! of a fleet's streams are idle probes and watchers whose messages are small. The decode
//! buffer grows to the largest message it carries and keeps that size; the encoder reserves
//! each message's whole size before writing it, so a large message costs one allocation, not
//! a doubling series from 1 KiB.

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic_prost::ProstDecoder;

/// Initial size of a stream's encode and decode buffers.
pub const BUFFER_SIZE: usize = 1024;
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
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        SmallBufferEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
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
