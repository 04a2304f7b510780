//! Ports and readiness on 127.0.0.1.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio::process::Child;

/// A listener on 127.0.0.1 port 0 and the address it got. The socket stays bound: hand the
/// listener itself to the code under test (no bind-then-release race).
pub async fn loopback_listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("the listener's address");
    (listener, addr)
}

/// A TCP port on 127.0.0.1 with nothing listening (bound to port 0, then released): for tests
/// of what happens when nothing answers.
pub fn closed_tcp_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind a TCP port on 127.0.0.1")
        .port()
}

/// A UDP port on 127.0.0.1 with nothing listening (bound to port 0, then released).
pub fn closed_udp_port() -> u16 {
    std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|s| s.local_addr())
        .expect("bind a UDP port on 127.0.0.1")
        .port()
}

/// A random port (20000..32000) for a child process that must be told its port on the command
/// line (nginx, coturn, Alertmanager, `vantaged --stun-listen`). Nothing is bound here: start
/// the child with it and retry with another when the child fails to bind. Successive calls
/// differ. Below Linux's ephemeral range (32768..60999), where every port-0 listener and
/// outgoing connection of the other tests gets its port: a port from there could already be
/// another test's server, and the readiness check would find that server while the child
/// fails to bind (an Alertmanager "started" that way never answered).
pub fn random_port() -> u16 {
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let salt = CALLS.fetch_add(1, Ordering::Relaxed).wrapping_mul(7919);
    let spread = (nanos ^ std::process::id()).wrapping_add(salt) % 12_000;
    20_000 + u16::try_from(spread).unwrap_or(0)
}

/// Poll until `addr` accepts a TCP connection (bounded: 10 s): `false` when the child exits
/// first (it could not bind, say) or the time is up.
pub async fn wait_tcp(child: &mut Child, addr: SocketAddr) -> bool {
    for _ in 0..200 {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return matches!(child.try_wait(), Ok(None));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const MAGIC_COOKIE: u32 = 0x2112_A442;

/// Whether a STUN server at `addr` answers a binding request (RFC 5389, no attributes) with a
/// success response within `within`. A readiness check, not a STUN client: the code under test
/// has its own.
pub async fn stun_answers(addr: SocketAddr, within: Duration) -> bool {
    let local: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::LOCALHOST, 0).into()
    } else {
        (std::net::Ipv6Addr::LOCALHOST, 0).into()
    };
    let Ok(sock) = UdpSocket::bind(local).await else {
        return false;
    };
    // Connected, so an ICMP "port unreachable" ends the wait at once.
    if sock.connect(addr).await.is_err() {
        return false;
    }
    let mut txid = [0u8; 12];
    txid.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..12]);
    let mut request = Vec::with_capacity(20);
    request.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
    request.extend_from_slice(&0u16.to_be_bytes());
    request.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    request.extend_from_slice(&txid);
    if sock.send(&request).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 1024];
    let answer = tokio::time::timeout(within, async {
        loop {
            let n = sock.recv(&mut buf).await?;
            let b = &buf[..n];
            if n >= 20
                && b[0..2] == BINDING_SUCCESS.to_be_bytes()
                && b[4..8] == MAGIC_COOKIE.to_be_bytes()
                && b[8..20] == txid
            {
                return Ok::<_, std::io::Error>(());
            }
        }
    })
    .await;
    matches!(answer, Ok(Ok(())))
}
