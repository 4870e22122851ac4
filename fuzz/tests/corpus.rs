//! Replays every seed corpus entry (crash regressions included) through its target, and a short
//! mutation run per target: what `make test` keeps green.

use ws_metrics_adapter_fuzz::{Settings, TARGETS, corpus_dir, execute, fuzz, load_corpus};

#[test]
fn every_corpus_entry_runs_clean_through_its_target() {
    for target in TARGETS {
        let corpus = load_corpus(&corpus_dir(target.name)).expect("corpus readable");
        assert!(
            corpus.len() >= 5,
            "{}: the seed corpus is nearly empty ({} files)",
            target.name,
            corpus.len()
        );
        for (path, bytes) in corpus {
            if let Err(message) = execute(target, &bytes) {
                panic!("{} panics on {}: {message}", target.name, path.display());
            }
        }
    }
}

#[test]
fn a_planted_panic_is_caught_and_written_as_an_artifact() {
    fn panics_on_x(input: &[u8]) {
        assert!(!input.contains(&b'X'), "found the X");
    }
    let dir = std::env::temp_dir().join(format!("ws-fuzz-test-{}", std::process::id()));
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).expect("corpus dir");
    std::fs::write(corpus.join("seed"), b"abc").expect("seed");
    let target = ws_metrics_adapter_fuzz::Target {
        name: "planted",
        run: panics_on_x,
        dictionary: &[b"X"],
    };
    let settings = Settings {
        runs: 100_000,
        time: std::time::Duration::MAX,
        seed: 1,
        max_len: 64,
        corpus,
        artifacts: dir.join("artifacts"),
    };
    let report = fuzz(&target, &settings).expect("fuzz runs");
    let (input, path) = report.finding.expect("the mutator finds the X");
    assert!(input.contains(&b'X'));
    assert_eq!(std::fs::read(&path).expect("artifact written"), input);
    let _ = std::fs::remove_dir_all(&dir);
}
