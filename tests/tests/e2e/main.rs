//! End-to-end: the real `vantaged`, `vantage-probe` and `vantage` binaries as processes.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod backbone;
mod browser;
mod cluster;
mod contract;
mod derp;
mod durability;
mod history;
mod page;
mod registry;
