//! One HTTP/1.1 exchange on a fresh connection, the way a health check needs it: the name
//! resolved (an IP address is used as it is), one TCP connection (`TCP_NODELAY`), TLS with the
//! probe's configuration, one request, the response. The connection is driven in the caller's
//! task, not a task of its own, so nothing of an exchange outlives the check that made it (its
//! timeout drops the connection with it), and an exchange costs no task, pool or connector
//! layers. The Access URL check follows redirects as Go's client does; the Websocket check
//! upgrades the connection.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, HOST, HeaderValue, LOCATION, USER_AGENT};
use hyper::upgrade::Upgraded;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_util::either::Either;
use url::{Host, Url};

/// The transport of one exchange: plain TCP, or TLS over it.
pub type Stream = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// The `User-Agent` of every check request.
pub const AGENT: &str = concat!("vantage-probe/", env!("CARGO_PKG_VERSION"));

/// Redirects followed at most, as Go's client does.
pub const MAX_REDIRECTS: usize = 10;

/// Why an exchange failed. The messages follow Go's (`dial tcp <addr>: connect: <why>`), so
/// that a failure reads the same from vantage as from Coder.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("dial tcp: lookup {host}: {source}")]
    Lookup {
        host: String,
        source: std::io::Error,
    },
    #[error("dial tcp: lookup {host}: no address")]
    NoAddress { host: String },
    #[error("dial tcp {addr}: connect: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("tls: {0}")]
    Tls(std::io::Error),
    /// The exchange itself (hyper's error and its causes).
    #[error("{0}")]
    Http(String),
    /// The response came, its body could not be read.
    #[error("{0}")]
    Body(String),
    #[error("stopped after {MAX_REDIRECTS} redirects")]
    Redirects,
    #[error("redirect to {location:?}: {why}")]
    Redirect { location: String, why: String },
}

impl From<hyper::Error> for Error {
    fn from(e: hyper::Error) -> Self {
        Error::Http(super::chain(&e))
    }
}

/// Where a request goes, taken apart from its URL once. Its `Debug` shows the URL without its
/// password, like [`Endpoint::shown`].
#[derive(Clone)]
pub struct Endpoint {
    url: Url,
    tls: bool,
    host: Host<String>,
    port: u16,
    /// The `Host` header: the URL's host, and its port when it is not the scheme's.
    authority: HeaderValue,
    /// The path and query (`/` at least).
    target: String,
    /// `Authorization: Basic` from the URL's user and password, as Go and browsers send it.
    basic: Option<HeaderValue>,
}

impl Endpoint {
    /// An `http`, `https`, `ws` or `wss` URL with a host; anything else says what it is.
    pub fn new(url: Url) -> Result<Endpoint, String> {
        let tls = match url.scheme() {
            "http" | "ws" => false,
            "https" | "wss" => true,
            other => {
                return Err(format!(
                    "unsupported scheme {other:?} (expected http or https)"
                ));
            }
        };
        let host = url
            .host()
            .ok_or_else(|| format!("{} has no host", redacted(&url)))?
            .to_owned();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| format!("{} has no port", redacted(&url)))?;
        let shown_host = url.host_str().unwrap_or_default();
        let authority = match url.port() {
            Some(p) => format!("{shown_host}:{p}"),
            None => shown_host.to_owned(),
        };
        let authority = HeaderValue::from_str(&authority)
            .map_err(|_| format!("host {authority:?} is not a valid Host header"))?;
        let target = url[url::Position::BeforePath..url::Position::AfterQuery].to_owned();
        let target = if target.is_empty() {
            "/".to_owned()
        } else {
            target
        };
        let basic = if url.username().is_empty() && url.password().is_none() {
            None
        } else {
            let user = percent_encoding::percent_decode_str(url.username()).decode_utf8_lossy();
            let password = url
                .password()
                .map(|p| percent_encoding::percent_decode_str(p).decode_utf8_lossy())
                .unwrap_or_default();
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            let mut value = HeaderValue::from_str(&format!("Basic {token}"))
                .map_err(|_| "the URL's credentials are not a valid header".to_owned())?;
            value.set_sensitive(true);
            Some(value)
        };
        Ok(Endpoint {
            url,
            tls,
            host,
            port,
            authority,
            target,
            basic,
        })
    }

    /// The URL, its password (if any) replaced: what messages show.
    pub fn shown(&self) -> String {
        redacted(&self.url)
    }

    /// A `GET` of this endpoint with the check's usual headers, and `Host`.
    pub fn get(&self) -> hyper::http::request::Builder {
        let mut builder = Request::get(self.target.as_str())
            .header(HOST, self.authority.clone())
            .header(USER_AGENT, HeaderValue::from_static(AGENT));
        if let Some(basic) = &self.basic {
            builder = builder.header(AUTHORIZATION, basic.clone());
        }
        builder
    }

    /// Opens the connection: the name resolved (each address tried in turn), TCP, then TLS
    /// when the scheme asks for it.
    pub async fn connect(&self, tls: &Arc<rustls::ClientConfig>) -> Result<Stream, Error> {
        let tcp = match &self.host {
            Host::Ipv4(ip) => dial(SocketAddr::from((*ip, self.port))).await?,
            Host::Ipv6(ip) => dial(SocketAddr::from((*ip, self.port))).await?,
            Host::Domain(name) => {
                let addrs = tokio::net::lookup_host((name.as_str(), self.port))
                    .await
                    .map_err(|source| Error::Lookup {
                        host: name.clone(),
                        source,
                    })?;
                // Each address in turn; the last failure if none answers.
                let mut last = Error::NoAddress { host: name.clone() };
                let mut connected = None;
                for addr in addrs {
                    match dial(addr).await {
                        Ok(tcp) => {
                            connected = Some(tcp);
                            break;
                        }
                        Err(e) => last = e,
                    }
                }
                connected.ok_or(last)?
            }
        };
        if !self.tls {
            return Ok(Either::Left(tcp));
        }
        let name = match &self.host {
            Host::Ipv4(ip) => ServerName::from(std::net::IpAddr::from(*ip)),
            Host::Ipv6(ip) => ServerName::from(std::net::IpAddr::from(*ip)),
            Host::Domain(d) => ServerName::try_from(d.clone()).map_err(|e| {
                Error::Tls(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
            })?,
        };
        let tls = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .map_err(Error::Tls)?;
        Ok(Either::Right(tls))
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.shown())
            .finish_non_exhaustive()
    }
}

/// `url` with its password replaced by `xxxxx`, as Go shows a URL.
pub fn redacted(url: &Url) -> String {
    if url.password().is_some() {
        let mut shown = url.clone();
        let _ = shown.set_password(Some("xxxxx"));
        shown.to_string()
    } else {
        url.to_string()
    }
}

async fn dial(addr: SocketAddr) -> Result<TcpStream, Error> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| Error::Connect { addr, source })?;
    // A request is one write; it must not wait for an acknowledgement.
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// A response read to its end, or to `max_body` bytes.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Vec<u8>,
    /// The body went on past `max_body`.
    pub truncated: bool,
}

/// What an upgrade request got.
pub enum Upgrade {
    /// `101 Switching Protocols`: the response's headers and the connection, now the new
    /// protocol's.
    Switched(hyper::HeaderMap, Upgraded),
    /// Any other answer, read as [`exchange`] reads one.
    Refused(Answer),
}

/// Sends `request` on `stream` and reads the answer (its body up to `max_body` bytes); the
/// connection closes when this returns.
pub async fn exchange(
    stream: Stream,
    request: Request<Empty<Bytes>>,
    max_body: usize,
) -> Result<Answer, Error> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let work = async move {
        let response = sender.send_request(request).await?;
        read(response, max_body).await
    };
    driven(conn, work).await
}

/// [`exchange`] for a request that asks to upgrade the connection.
pub async fn upgrade(
    stream: Stream,
    request: Request<Empty<Bytes>>,
    max_body: usize,
) -> Result<Upgrade, Error> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let work = async move {
        let mut response = sender.send_request(request).await?;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let io = hyper::upgrade::on(&mut response).await?;
            Ok(Upgrade::Switched(
                std::mem::take(response.headers_mut()),
                io,
            ))
        } else {
            read(response, max_body).await.map(Upgrade::Refused)
        }
    };
    driven(conn.with_upgrades(), work).await
}

/// A `GET` of `endpoint` that follows redirects as Go's client does (301, 302, 303, 307 and
/// 308 with a `Location`, up to [`MAX_REDIRECTS`]), each on a fresh connection.
pub async fn get(
    tls: &Arc<rustls::ClientConfig>,
    endpoint: &Endpoint,
    max_body: usize,
) -> Result<Answer, Error> {
    let mut next: Option<Endpoint> = None;
    for _ in 0..=MAX_REDIRECTS {
        let at = next.as_ref().unwrap_or(endpoint);
        let request = at
            .get()
            .body(Empty::new())
            .map_err(|e| Error::Http(e.to_string()))?;
        let answer = exchange(at.connect(tls).await?, request, max_body).await?;
        let redirect = matches!(answer.status.as_u16(), 301 | 302 | 303 | 307 | 308);
        let Some(location) = answer.headers.get(LOCATION).filter(|_| redirect) else {
            return Ok(answer);
        };
        let location = String::from_utf8_lossy(location.as_bytes()).into_owned();
        let to = at
            .url
            .join(&location)
            .map_err(|e| e.to_string())
            .and_then(Endpoint::new)
            .map_err(|why| Error::Redirect { location, why })?;
        next = Some(to);
    }
    Err(Error::Redirects)
}

/// Reads `response`'s body, up to `max_body` bytes.
async fn read(response: Response<Incoming>, max_body: usize) -> Result<Answer, Error> {
    let (parts, mut body) = response.into_parts();
    let mut out = Vec::new();
    let mut truncated = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::Body(super::chain(&e)))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let room = max_body - out.len();
        if data.len() > room {
            out.extend_from_slice(&data[..room]);
            truncated = true;
            break;
        }
        out.extend_from_slice(&data);
    }
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body: out,
        truncated,
    })
}

/// Runs `work` while driving `conn`, in this task. A connection that ends cleanly first has
/// delivered what `work` waits for (or failed it); one that fails ends the exchange.
async fn driven<T>(
    conn: impl Future<Output = hyper::Result<()>>,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let mut conn = pin!(conn);
    let mut work = pin!(work);
    let mut conn_ended = false;
    std::future::poll_fn(|cx| {
        loop {
            if let Poll::Ready(out) = work.as_mut().poll(cx) {
                return Poll::Ready(out);
            }
            if conn_ended {
                return Poll::Pending;
            }
            match conn.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                // Ended: `work` is polled once more, now that nothing more will come.
                Poll::Ready(Ok(())) => conn_ended = true,
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(url: &str) -> Endpoint {
        Endpoint::new(Url::parse(url).unwrap()).unwrap()
    }

    #[test]
    fn an_endpoint_takes_its_url_apart() {
        let e = endpoint("https://user:p%40ss@example.com:8443/a/b?x=1#frag");
        assert!(e.tls);
        assert_eq!((e.port, e.target.as_str()), (8443, "/a/b?x=1"));
        assert_eq!(e.authority, "example.com:8443");
        let basic = base64::engine::general_purpose::STANDARD.encode("user:p@ss");
        assert_eq!(e.basic.as_ref().unwrap(), format!("Basic {basic}").as_str());
        assert_eq!(
            e.shown(),
            "https://user:xxxxx@example.com:8443/a/b?x=1#frag"
        );
        assert!(!format!("{e:?}").contains("p%40ss"), "{e:?}");

        let e = endpoint("ws://[::1]");
        assert!(!e.tls);
        assert_eq!((e.port, e.target.as_str()), (80, "/"));
        assert_eq!(e.authority, "[::1]");
        assert!(e.basic.is_none());

        let err = Endpoint::new(Url::parse("ftp://example.com/").unwrap()).unwrap_err();
        assert_eq!(err, "unsupported scheme \"ftp\" (expected http or https)");
    }
}
