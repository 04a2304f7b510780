//! `vantage.v1.HealthService/Watch` with a codec that copies each event's shared encoding
//! into the response: an event is encoded once for every subscriber (`SharedEvent`), not once
//! per subscriber. The route takes precedence over the generated service's catch-all; the
//! generated `watch` stays as the typed implementation of the same stream.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use futures::future::BoxFuture;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use vantage_proto::pb;

use crate::api::App;
use crate::api::grpc::watch::{Filter, Out, watch_outs};
use crate::gather::Gather;

/// Encoded bytes after which a watch stream hands what it has to HTTP/2 (tonic's default is
/// 32 KiB). h2 copies a DATA frame under 1 KiB into its connection's write buffer and writes a
/// larger one on its own ([`crate::security`]'s accept loop): a watcher that is behind by
/// a few events would otherwise cost its connection a write of its own.
const YIELD_THRESHOLD: usize = 512;

/// The method's path.
pub const PATH: &str = "/vantage.v1.HealthService/Watch";

/// Writes a watch stream's events: a shared one's encoding copied, a snapshot encoded.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Out;
    type Error = Status;

    fn encode(&mut self, item: Out, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode_into(dst)
            .map_err(|e| Status::internal(format!("encoding a watch event: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(vantage_proto::codec::BUFFER_SIZE, YIELD_THRESHOLD)
    }
}

/// Requests decoded as every `vantage.v1` message is, responses written pre-encoded.
#[derive(Debug, Clone, Copy, Default)]
pub struct WatchCodec;

impl Codec for WatchCodec {
    type Encode = Out;
    type Decode = pb::WatchRequest;
    type Encoder = RawEncoder;
    type Decoder = vantage_proto::codec::SliceDecoder<pb::WatchRequest>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        vantage_proto::codec::SliceDecoder::default()
    }
}

struct WatchService(App);

type EncodedStream = Pin<Box<dyn Stream<Item = Result<Out, Status>> + Send + 'static>>;

impl tonic::server::ServerStreamingService<pb::WatchRequest> for WatchService {
    type Response = Out;
    type ResponseStream = EncodedStream;
    type Future = BoxFuture<'static, Result<tonic::Response<EncodedStream>, Status>>;

    fn call(&mut self, request: tonic::Request<pb::WatchRequest>) -> Self::Future {
        let app = self.0.clone();
        Box::pin(async move {
            // The connection's gathering point, set by the accept loop.
            let gather = request.extensions().get::<Arc<Gather>>().cloned();
            let req = request.into_inner();
            tracing::debug!(since = req.since_revision, "watch (shared encodings)");
            let filter = Filter::from_request(&req)?;
            let sub = app
                .agg
                .subscribe(req.since_revision, &req.since_epoch)
                .await?;
            let stream: EncodedStream =
                Box::pin(watch_outs(&app, sub, filter, req.since_revision, gather));
            Ok(tonic::Response::new(stream))
        })
    }
}

/// The route serving `Watch`.
pub fn router(app: App) -> axum::Router {
    axum::Router::new().route(
        PATH,
        axum::routing::post(move |req: http::Request<axum::body::Body>| {
            let app = app.clone();
            async move {
                let mut grpc = tonic::server::Grpc::new(WatchCodec)
                    .apply_max_message_size_config(Some(crate::MAX_MESSAGE), None);
                grpc.server_streaming(WatchService(app), req)
                    .await
                    .map(axum::body::Body::new)
            }
        }),
    )
}
