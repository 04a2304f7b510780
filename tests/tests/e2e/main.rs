//! End-to-end: the real `vantaged`, `vantage-probe` and `vantage` binaries as processes.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod alerts;
mod backbone;
mod cluster;
mod contract;
mod derp;
mod page;
mod registry;
