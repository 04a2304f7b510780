//! vantage wire contracts: the gRPC messages of `vantage.v1` (re-exported as [`pb`]), the
//! health-code catalogue ([`codes`]), severities and sections ([`Severity`], [`Section`]), the
//! Coder-compatible JSON shape of the report ([`report`]); and what every crate's clients and
//! retry loops share: the gRPC client transport settings and bearer token ([`transport`]) and
//! the retry delays ([`backoff::Backoff`]). No I/O lives here.

mod generated {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("vantage.v1");

    /// The encoded file descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("vantage_descriptor");
}

/// Generated protobuf and gRPC code for `vantage.v1`.
pub mod pb {
    pub use super::generated::*;
}

pub mod backoff;
pub mod codec;
pub mod codes;
pub mod convert;
pub mod report;
mod section;
pub mod transport;

pub use section::{Section, Severity, UnknownSection};
