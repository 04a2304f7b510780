//! What each server fuzz target does with one input. Shared, word for word, by the fuzz
//! targets (`tests/fuzz/fuzz_targets/`) and the stable test that replays the corpus
//! (`server/tests/it/fuzz_corpus.rs`): any input must end in `Ok` or `Err`, never a panic.

use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use vantage_proto::pb::probe_message::Msg as Up;
use vantage_proto::{Section, pb};
use vantage_server::aggregator::{Aggregator, AggregatorConfig, ProbeCommand};
use vantage_server::config::Config;
use vantage_server::ingest::hub::{check_batch, validate_hello};
use vantage_server::ingest::inventory;
use vantage_server::security::TokenSet;

/// The configuration file (`--config`), as text.
pub fn config(data: &[u8]) -> bool {
    std::str::from_utf8(data).is_ok_and(|text| Config::from_toml(text).is_ok())
}

/// The token file (`--token-file`): parsed, and of a valid one a lookup and each claim rule.
pub fn token_file(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(tokens) = TokenSet::parse(text) else {
        return false;
    };
    for secret in ["", "secret", "fra-probe"] {
        if let Some(p) = tokens.lookup(secret) {
            let _ = (p.may_claim("fra-1"), p.may_claim(""), p.globs());
        }
    }
    true
}

/// Most messages of one input.
const MAX_MESSAGES: usize = 64;

/// What one probe stream sends: length-delimited `ProbeMessage`s, each checked as the hub
/// checks it and then handed to a real aggregator (paused time, a second between messages);
/// then the report and the vantages are read. Returns how many messages were applied.
pub fn probe_messages(data: &[u8]) -> usize {
    let mut buf = data;
    let mut messages = Vec::new();
    while !buf.is_empty() && messages.len() < MAX_MESSAGES {
        match pb::ProbeMessage::decode_length_delimited(&mut buf) {
            Ok(m) => messages.push(m),
            Err(_) => break,
        }
    }
    if messages.is_empty() {
        return 0;
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime")
        .block_on(stream(messages))
}

async fn stream(messages: Vec<pb::ProbeMessage>) -> usize {
    let agg = Aggregator::spawn(aggregator_config(), vec![]).expect("an aggregator");
    let assignment = assignment();
    // The current session: name, id, and its queue (kept open, drained as a probe would).
    let mut session: Option<(String, u64, mpsc::Receiver<_>)> = None;
    let mut applied = 0;
    for m in messages {
        let cmd = match m.msg {
            Some(Up::Hello(h)) => {
                if validate_hello(&h).is_err() {
                    continue;
                }
                let name = h.name.clone();
                let (tx, rx) = mpsc::channel(64);
                let Ok(a) = agg.attach_from(h, tx, "192.0.2.1:4000".into()).await else {
                    continue;
                };
                session = Some((name.clone(), a.session_id, rx));
                ProbeCommand::Assigned {
                    name,
                    check_ids: inventory::check_ids(&assignment),
                }
            }
            Some(Up::Observations(batch)) => {
                let Some((name, session_id, _)) = &session else {
                    continue;
                };
                if check_batch(&batch).is_err() {
                    continue;
                }
                ProbeCommand::Ingest {
                    name: name.clone(),
                    session_id: *session_id,
                    batch: agg.batch(batch.observations),
                    then: Vec::new(),
                }
            }
            Some(Up::Heartbeat(h)) => {
                let Some((name, session_id, _)) = &session else {
                    continue;
                };
                ProbeCommand::Heartbeat {
                    name: name.clone(),
                    session_id: *session_id,
                    replay_dropped: h.replay_dropped,
                }
            }
            Some(Up::RunComplete(r)) => {
                let Some((name, _, _)) = &session else {
                    continue;
                };
                ProbeCommand::RunComplete {
                    name: name.clone(),
                    request_id: r.request_id,
                }
            }
            None => continue,
        };
        if agg.send(cmd).await.is_ok() {
            applied += 1;
        }
        if let Some((_, _, rx)) = &mut session {
            while rx.try_recv().is_ok() {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let _ = agg.report().await;
    let _ = agg.vantages().await;
    applied
}

fn aggregator_config() -> AggregatorConfig {
    AggregatorConfig {
        quorum: 1,
        stale_after: Duration::from_secs(30),
        forget_after: Duration::from_secs(3600),
        raise_after: 1,
        clear_after: 1,
        history: 1000,
        version: "v0.1.0".into(),
        expected: Section::ALL.to_vec(),
        derp_regions: vec![(1, "fra".into())],
        derp_has_nodes: true,
        epoch: None,
        dedicated_thread: false,
        max_vantages: 16,
        holder_silence: Duration::from_secs(7),
        force_join: Duration::from_secs(30),
        max_report_bytes: vantage_server::aggregator::MAX_REPORT_BYTES,
    }
}

/// One check of each kind a probe is given (the database check goes to the server only).
fn assignment() -> pb::Assignment {
    use pb::check::Target;
    let check = |id: &str, section: pb::Section, target: Target| pb::Check {
        id: id.into(),
        section: section as i32,
        target: Some(target),
        ..Default::default()
    };
    let region = r#"{"RegionID":1,"RegionCode":"fra","RegionName":"Frankfurt","Nodes":[{"Name":"1a","RegionID":1,"HostName":"derp.example"},{"Name":"1b","RegionID":1,"HostName":"derp2.example"}]}"#;
    pb::Assignment {
        generation: 1,
        checks: vec![
            check(
                "access_url",
                pb::Section::AccessUrl,
                Target::AccessUrl(pb::AccessUrlTarget {
                    url: "http://x".into(),
                }),
            ),
            check(
                "websocket",
                pb::Section::Websocket,
                Target::Websocket(pb::WebsocketTarget {
                    url: "http://x".into(),
                    ..Default::default()
                }),
            ),
            check(
                "derp/1",
                pb::Section::Derp,
                Target::DerpRegion(pb::DerpRegionTarget {
                    region_json: region.into(),
                    ..Default::default()
                }),
            ),
            check(
                "proxy/eu",
                pb::Section::WorkspaceProxy,
                Target::WorkspaceProxy(pb::WorkspaceProxyTarget {
                    name: "eu".into(),
                    url: "https://eu.example".into(),
                }),
            ),
        ],
        heartbeat_interval: None,
    }
}
