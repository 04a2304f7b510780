//! What readers ask: the report, the watch stream, the vantages and the history.

use std::process::ExitCode;

use futures::StreamExt;
use vantage_client::{Client, WatchItem, table, watch_resuming_to};
use vantage_proto::report::{HealthReport, coder_json};
use vantage_proto::transport::Target;
use vantage_proto::{Section, Severity, pb};

use super::{EX_REFUSED, fail, out, usage};

/// The `watch` request from its flags, or the usage exit code for a bad flag.
pub(crate) fn watch_request(
    json: bool,
    sections: &[String],
    min_severity: Option<&str>,
    vantages: Vec<String>,
    since: u64,
) -> Result<pb::WatchRequest, ExitCode> {
    let mut ids = Vec::new();
    for s in sections {
        match s.parse::<Section>() {
            Ok(sec) => ids.push(pb::Section::from(sec) as i32),
            Err(e) => return Err(usage(&format!("--section: {e}"))),
        }
    }
    let min = match min_severity.map(str::parse::<Severity>).transpose() {
        Ok(m) => m.map_or(0, |m| pb::Severity::from(m) as i32),
        Err(e) => return Err(usage(&format!("--min-severity: {e}"))),
    };
    Ok(pb::WatchRequest {
        sections: ids,
        min_severity: min,
        vantages,
        since_revision: since,
        since_epoch: String::new(),
        // NDJSON snapshots print the report's JSON.
        include_json: json,
        // The vantages (with their ages) are shown in the snapshot line too.
        include_vantages: true,
    })
}

/// `vantage watch`: the current state, then one line per change, resuming after a reconnect.
pub(crate) async fn watch(
    target: Target,
    token: Option<String>,
    req: pb::WatchRequest,
    json: bool,
) -> ExitCode {
    let stream = watch_resuming_to(Ok(target), token, req);
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            WatchItem::Event(ev) => {
                if json {
                    out(&format!("{}\n", table::event_json(&ev)));
                } else {
                    out(&format!("{}\n", table::event(&ev, chrono::Utc::now())));
                }
            }
            WatchItem::Refused(why) => {
                eprintln!("vantage: the server refused the token: {why}");
                return ExitCode::from(EX_REFUSED);
            }
            WatchItem::Reconnecting {
                error,
                since,
                delay,
            } => {
                eprintln!(
                    "vantage: watch interrupted ({error}); reconnecting in {delay:?}, resuming after revision {since}"
                );
            }
        }
    }
    ExitCode::SUCCESS
}

/// `vantage report`: a table, or Coder's JSON; the exit code follows the severity.
pub(crate) async fn report(client: &Client, json: bool, force: bool, vantages: bool) -> ExitCode {
    let r = match client.report(force).await {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    if json {
        match serde_json::from_str::<HealthReport>(&r.json) {
            Ok(typed) => out(&String::from_utf8_lossy(&coder_json(&typed))),
            Err(e) => {
                eprintln!("vantage: the server sent a report this client cannot read: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        out(&table::report(&r));
        if vantages {
            out(&format!(
                "\n{}",
                table::vantage_detail(&r, chrono::Utc::now())
            ));
        }
    }
    let sev = Severity::from_pb(r.severity).unwrap_or(Severity::Error);
    ExitCode::from(u8::try_from(sev.exit_code()).unwrap_or(2))
}

/// `vantage vantages`: the list of vantages; exit 1 when any of them is stale.
pub(crate) async fn vantages(client: &Client) -> ExitCode {
    match client.vantages().await {
        Ok(list) => {
            out(&table::vantages(&list, chrono::Utc::now()));
            if list.iter().any(|v| v.stale) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => fail(&e),
    }
}

/// `vantage history`: transitions, then one line per check series.
pub(crate) async fn history(
    client: &Client,
    section: Option<&str>,
    since: Option<&str>,
    json: bool,
) -> ExitCode {
    let section = match section.map(str::parse::<Section>).transpose() {
        Ok(s) => s,
        Err(e) => return usage(&format!("--section: {e}")),
    };
    let since = match since
        .map(|s| vantage_client::history::parse_since(s, chrono::Utc::now()))
        .transpose()
    {
        Ok(s) => s,
        Err(e) => return usage(&format!("--since: {e}")),
    };
    match client.history(section, since).await {
        Ok(h) if json => {
            out(&format!("{:#}\n", vantage_client::history::json(&h)));
            ExitCode::SUCCESS
        }
        Ok(h) => {
            out(&vantage_client::history::table(&h));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}
