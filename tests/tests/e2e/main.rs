//! End-to-end: the real `vantaged`, `vantage-probe` and `vantage` binaries as processes.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod abuse;
mod backbone;
mod cluster;
mod coder;
mod contract;
mod derp;
mod durability;
mod page;
mod registry;
