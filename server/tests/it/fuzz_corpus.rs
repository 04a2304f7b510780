//! The fuzz corpora of the server's targets (`tests/fuzz/corpus/<target>/`), replayed on
//! stable through the very drivers the fuzz targets run (`tests/fuzz/drivers/server.rs`):
//! the configuration file, the token file, and what a probe stream sends (Hello and
//! ObservationBatch through the hub's checks into a real aggregator). Every input ends in
//! `Ok` or `Err`; none panics.

use vantage_testkit::replay_corpus as replay;

#[allow(dead_code)]
#[path = "../../../tests/fuzz/drivers/server.rs"]
mod drivers;

#[test]
fn config_corpus_replays() {
    let (ok, err) = replay("config", drivers::config);
    assert!(ok > 0 && err > 0, "valid and refused files: {ok} / {err}");
}

#[test]
fn token_file_corpus_replays() {
    let (ok, err) = replay("token_file", drivers::token_file);
    assert!(ok > 0 && err > 0, "{ok} / {err}");
}

#[test]
fn probe_messages_corpus_replays() {
    let (ok, err) = replay("probe_messages", |d| drivers::probe_messages(d) > 0);
    assert!(ok > 0 && err > 0, "{ok} / {err}");
}
