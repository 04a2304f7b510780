//! The fuzz corpora (`tests/fuzz/corpus/<target>/`) replayed on stable: each crate's test runs
//! a target's inputs through the very driver its fuzz target runs.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;

/// Every file of one target's corpus, by name.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
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
pub fn replay_corpus(target: &str, drive: impl Fn(&[u8]) -> bool) -> (usize, usize) {
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
