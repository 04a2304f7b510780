//! The fuzz corpora of the DERP targets (`tests/fuzz/corpus/<target>/`), replayed on stable
//! through the very drivers the fuzz targets run (`tests/fuzz/drivers/derp.rs`): every input
//! ends in `Ok` or `Err`, none panics, so what the fuzzer found stays covered.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

#[allow(dead_code)]
#[path = "../../../tests/fuzz/drivers/derp.rs"]
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
fn derp_client_frames_corpus_replays() {
    let (ok, err) = replay("derp_client_frames", |d| drivers::client_frames(d) > 0);
    assert!(ok > 0 && err > 0, "decoded and refused: {ok} / {err}");
}

#[test]
fn derp_handshake_corpus_replays() {
    let (ok, err) = replay("derp_handshake", drivers::handshake);
    assert!(ok > 0 && err > 0, "{ok} / {err}");
}

#[test]
fn derp_relay_corpus_replays() {
    let (ok, err) = replay("derp_relay", drivers::relay);
    assert!(ok > 0 && err > 0, "{ok} / {err}");
}

#[test]
fn stun_corpus_replays() {
    let (ok, err) = replay("stun", drivers::stun);
    assert!(ok > 0 && err > 0, "{ok} / {err}");
}

#[test]
fn derp_map_corpus_replays() {
    let (ok, err) = replay("derp_map", drivers::derp_map);
    assert!(ok > 0 && err > 0, "{ok} / {err}");
}
