//! The subcommands' work, by kind: what readers ask (`read`), what changes state (`admin`) and
//! the local DERP/STUN check (`netcheck`); and the exit statuses they share.

pub(crate) mod admin;
pub(crate) mod netcheck;
pub(crate) mod read;

use std::process::ExitCode;

use vantage_client::ClientError;

pub(crate) const EX_UNREACHABLE: u8 = 3;
pub(crate) const EX_REFUSED: u8 = 4;
pub(crate) const EX_USAGE: u8 = 64;

#[allow(clippy::print_stdout)]
pub(crate) fn out(s: &str) {
    print!("{s}");
}

pub(crate) fn fail(e: &ClientError) -> ExitCode {
    eprintln!("vantage: {e}");
    if e.is_unreachable() {
        ExitCode::from(EX_UNREACHABLE)
    } else if e.is_refused() {
        ExitCode::from(EX_REFUSED)
    } else if e.is_usage() {
        ExitCode::from(EX_USAGE)
    } else {
        ExitCode::FAILURE
    }
}

pub(crate) fn usage(msg: &str) -> ExitCode {
    eprintln!("vantage: {msg}");
    ExitCode::from(EX_USAGE)
}
