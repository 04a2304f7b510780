//! The fuzz corpora of the server's targets (`tests/fuzz/corpus/<target>/`), replayed on
//! stable through the very drivers the fuzz targets run (`tests/fuzz/drivers/server.rs`):
//! the configuration file, the token file, and what a probe stream sends (Hello and
//! ObservationBatch through the hub's checks into a real aggregator). Every input ends in
//! `Ok` or `Err`; none panics.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

#[allow(dead_code)]
#[path = "../../../tests/fuzz/drivers/server.rs"]
mod drivers;

/// Every file of one target's corpus, by name.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    files
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, data)
        })
        .collect()
}

/// Runs `drive` on every input of `target`; fails naming each input that panicked. Returns
/// how many inputs were accepted (`true`) and refused (`false`).
fn replay(target: &str, drive: impl Fn(&[u8]) -> bool) -> (usize, usize) {
    let mut panicked = Vec::new();
    let (mut ok, mut err) = (0, 0);
    for (path, data) in corpus(target) {
        match catch_unwind(AssertUnwindSafe(|| drive(&data))) {
            Ok(true) => ok += 1,
            Ok(false) => err += 1,
            Err(_) => panicked.push(path.display().to_string()),
        }
    }
    assert!(panicked.is_empty(), "{target}: panicked on {panicked:?}");
    (ok, err)
}

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
