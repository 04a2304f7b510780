//! The fuzz corpora of the DERP targets (`tests/fuzz/corpus/<target>/`), replayed on stable
//! through the very drivers the fuzz targets run (`tests/fuzz/drivers/derp.rs`): every input
//! ends in `Ok` or `Err`, none panics, so what the fuzzer found stays covered.

use vantage_testkit::replay_corpus as replay;

#[allow(dead_code)]
#[path = "../../../tests/fuzz/drivers/derp.rs"]
mod drivers;

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
