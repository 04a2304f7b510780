//! Tailscale DERP and STUN for vantage: the DERP map format, the DERP wire protocol (frames and
//! handshake), a DERP client, an embedded DERP relay, STUN probing and answering, and Coder's
//! DERP health rules (node, region and section verdicts).
//!
//! Facts (constants, byte layouts, messages) are written down in `docs/derp-stun.md` and
//! `docs/coder-health.md#derp`; the code is written from them.

pub mod client;
pub mod frame;
pub mod handshake;
pub mod health;
pub mod key;
pub mod map;
pub mod relay;
pub mod stun;

mod hexfmt;
mod io;

pub use client::{Client, ClientError, ClientLog, ClientOptions, ReceivedFrame};
pub use key::{PrivateKey, PublicKey};
pub use map::{DerpMap, MapError, Node, Region};
pub use relay::{Relay, RelayConfig};
