//! End-to-end: the real `vantaged`, `vantage-probe` and `vantage` binaries as processes.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod abuse;
mod alerts;
mod backbone;
mod browser;
mod cluster;
mod coder;
mod contract;
mod deploy;
mod derp;
mod drain;
mod durability;
mod fleet;
mod history;
mod page;
mod registry;
mod reload;
mod security;
