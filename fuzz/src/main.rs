//! The fuzz driver: `ws-metrics-adapter-fuzz TARGET [--runs N] [--seconds S] [--seed X]
//! [--max-len BYTES]`. Replays `fuzz/corpus/TARGET/`, then mutates it (not coverage-guided; see
//! the library docs). Exits 1 with the input in `fuzz/artifacts/TARGET/` when one panics.

use std::process::ExitCode;
use std::time::Duration;

use ws_metrics_adapter_fuzz::{Settings, TARGETS, artifacts_dir, corpus_dir, fuzz, target};

const USAGE: &str = "usage: ws-metrics-adapter-fuzz TARGET|all [--runs N] [--seconds S] [--seed X] [--max-len BYTES]";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("{message}\n{USAGE}");
            let names: Vec<_> = TARGETS.iter().map(|t| t.name).collect();
            eprintln!("targets: {}", names.join(", "));
            ExitCode::from(2)
        }
    }
}

fn run(args: Vec<String>) -> Result<ExitCode, String> {
    let mut args = args.into_iter();
    let name = args.next().ok_or("no target given")?;
    let mut runs: Option<u64> = None;
    let mut seconds: Option<u64> = None;
    let mut seed: u64 = 0x5eed_0011;
    let mut max_len = 4096usize;
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<u64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--runs" => runs = Some(number(value()?)?),
            "--seconds" => seconds = Some(number(value()?)?),
            "--seed" => seed = number(value()?)?,
            "--max-len" => {
                max_len = usize::try_from(number(value()?)?).map_err(|e| e.to_string())?
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    // Neither bound given: a short run. One given: only that one bounds the run.
    let (runs, time) = match (runs, seconds) {
        (None, None) => (100_000, Duration::MAX),
        (Some(r), None) => (r, Duration::MAX),
        (None, Some(s)) => (u64::MAX, Duration::from_secs(s)),
        (Some(r), Some(s)) => (r, Duration::from_secs(s)),
    };
    let targets: Vec<_> = if name == "all" {
        TARGETS.to_vec()
    } else {
        vec![target(&name).ok_or(format!("no target {name:?}"))?]
    };
    let mut failed = false;
    for t in targets {
        let settings = Settings {
            runs,
            time,
            seed,
            max_len,
            corpus: corpus_dir(t.name),
            artifacts: artifacts_dir(t.name),
        };
        let report = fuzz(&t, &settings).map_err(|e| format!("{}: {e}", t.name))?;
        let secs = report.elapsed.as_secs_f64();
        let findings = usize::from(report.finding.is_some());
        println!(
            "{}: executions {} in {secs:.1}s, exec/s {:.0}, corpus {}, seed {seed}, findings {findings}",
            t.name,
            report.executions,
            report.executions as f64 / secs.max(1e-9),
            report.corpus,
        );
        if let Some((input, path)) = report.finding {
            println!(
                "{}: crashing input ({} bytes) written to {}",
                t.name,
                input.len(),
                path.display()
            );
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
