//! Integration tests of vantage-derp: client ↔ relay over real TCP (HTTP, TLS, WebSocket),
//! behind real nginx, STUN against real coturn, the health section end to end, and
//! robustness against random input.

mod coturn;
mod fuzz;
mod fuzz_corpus;
mod health_e2e;
mod nginx;
mod relay_http;
mod support;
mod tls;
