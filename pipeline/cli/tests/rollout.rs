//! `envsynth rollout` end to end with the simulated policy over loopback HTTP: same command,
//! same bytes; a run that stopped part-way continues from its journal without repeating or
//! losing a rollout.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_envsynth");

fn run(args: &[&str]) -> Output {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "envsynth {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn rollout(tasks: &Path, out: &Path, policy: &str) -> Output {
    run(&[
        "rollout",
        "--tasks",
        tasks.to_str().unwrap(),
        "--policy",
        policy,
        "--k",
        "3",
        "--pass-at",
        "1,2,3",
        "--out",
        out.to_str().unwrap(),
    ])
}

#[test]
fn rollouts_are_reproducible_resumable_and_scored() {
    let tmp = tempfile::tempdir().unwrap();
    let tasks = tmp.path().join("tasks");
    run(&[
        "generate",
        "--count",
        "9",
        "--mix",
        "easy=1,medium=1,hard=1",
        "--out",
        tasks.to_str().unwrap(),
    ]);
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    rollout(&tasks, &a, "sim:noisy:0.2");
    rollout(&tasks, &b, "sim:noisy:0.2");
    let full = std::fs::read(a.join("rollouts.jsonl")).unwrap();
    assert_eq!(
        full,
        std::fs::read(b.join("rollouts.jsonl")).unwrap(),
        "same command, same bytes"
    );
    assert_eq!(
        std::fs::read(a.join("summary.json")).unwrap(),
        std::fs::read(b.join("summary.json")).unwrap()
    );
    assert!(
        !a.join("parts").exists(),
        "the journal is removed when the run completes"
    );
    let lines: Vec<&str> = std::str::from_utf8(&full).unwrap().lines().collect();
    assert_eq!(lines.len(), 27);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["rollouts"], 27);
    let p1 = summary["overall"]["pass_at"]["1"].as_f64().unwrap();
    assert!(p1 > 0.0 && p1 < 1.0, "{p1}");
    assert_eq!(summary["tasks"].as_array().unwrap().len(), 9);

    // A run that stopped after 11 rollouts: its journal holds them; the rest are played.
    std::fs::create_dir_all(c.join("parts")).unwrap();
    let journal: String = lines[..11].iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(c.join("parts/part-000000.jsonl"), journal).unwrap();
    let out = rollout(&tasks, &c, "sim:noisy:0.2");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("11 journaled already"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(c.join("rollouts.jsonl")).unwrap(),
        full,
        "no duplicates, no gaps"
    );

    // The oracle passes every certified task.
    let o = tmp.path().join("oracle");
    rollout(&tasks, &o, "sim:oracle");
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(o.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["overall"]["pass_at"]["1"], 1.0, "{s}");

    // A damaged journal is refused, naming the file and line.
    let d = tmp.path().join("d");
    std::fs::create_dir_all(d.join("parts")).unwrap();
    std::fs::write(
        d.join("parts/part-000000.jsonl"),
        "{\"not\": \"a rollout\"}\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args([
            "rollout",
            "--tasks",
            tasks.to_str().unwrap(),
            "--policy",
            "sim:oracle",
            "--out",
            d.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("part-000000.jsonl line 1"));
}
