//! Byte-stream plumbing shared by the client and the relay: a boxed stream type, and pumps that
//! turn a WebSocket (binary messages) into a plain byte stream, since DERP over WebSocket treats
//! the messages as one concatenated stream.

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

/// Anything DERP can run over.
pub(crate) trait AsyncStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AsyncStream for T {}

/// A type-erased DERP transport.
pub(crate) type BoxStream = Box<dyn AsyncStream>;

const PIPE_CAPACITY: usize = 128 << 10;
const CHUNK: usize = 64 << 10;
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// What one WebSocket message means for the byte stream.
enum Chunk {
    Data(bytes::Bytes),
    Skip,
    End,
}

/// Runs a client-side (tungstenite) WebSocket as a byte stream. The pump task ends when either
/// side closes; dropping the returned stream closes the WebSocket.
pub(crate) fn tungstenite_stream<S>(ws: tokio_tungstenite::WebSocketStream<S>) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    use tokio_tungstenite::tungstenite::Message;
    pump(
        ws,
        |msg| match msg {
            Ok(Message::Binary(b)) => Chunk::Data(b),
            Ok(Message::Text(t)) => Chunk::Data(bytes::Bytes::copy_from_slice(t.as_bytes())),
            Ok(Message::Close(_)) | Err(_) => Chunk::End,
            Ok(_) => Chunk::Skip,
        },
        Message::Binary,
    )
}

/// Runs a server-side (axum) WebSocket as a byte stream, like [`tungstenite_stream`].
pub(crate) fn axum_stream(ws: axum::extract::ws::WebSocket) -> DuplexStream {
    use axum::extract::ws::Message;
    pump(
        ws,
        |msg| match msg {
            Ok(Message::Binary(b)) => Chunk::Data(b),
            Ok(Message::Text(t)) => {
                Chunk::Data(bytes::Bytes::copy_from_slice(t.as_str().as_bytes()))
            }
            Ok(Message::Close(_)) | Err(_) => Chunk::End,
            Ok(_) => Chunk::Skip,
        },
        Message::Binary,
    )
}

/// The pump behind both: WebSocket messages in → bytes out, bytes in → binary messages out.
fn pump<W, M, E>(
    ws: W,
    decode: fn(Result<M, E>) -> Chunk,
    encode: fn(bytes::Bytes) -> M,
) -> DuplexStream
where
    W: futures::Stream<Item = Result<M, E>> + futures::Sink<M> + Send + 'static,
    M: Send + 'static,
    E: Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(PIPE_CAPACITY);
    tokio::spawn(async move {
        let (mut sink, mut stream) = ws.split();
        let (mut pipe_rd, mut pipe_wr) = tokio::io::split(theirs);
        let inbound = async {
            while let Some(msg) = stream.next().await {
                let data = match decode(msg) {
                    Chunk::Data(d) => d,
                    Chunk::Skip => continue,
                    Chunk::End => break,
                };
                if pipe_wr.write_all(&data).await.is_err() {
                    break;
                }
            }
        };
        let outbound = async {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match pipe_rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let msg = encode(bytes::Bytes::copy_from_slice(&buf[..n]));
                        if sink.send(msg).await.is_err() {
                            break;
                        }
                    }
                }
            }
            // Bounded: a peer that stopped reading must not pin this task.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await;
        };
        tokio::select! {
            _ = inbound => {}
            _ = outbound => {}
        }
    });
    ours
}
