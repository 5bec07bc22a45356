//! End-to-end tests of the `envsynth` binary: reproducible shards, worker splits, resume after a
//! kill, a second Parquet reader, verification and bad input.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::BIN;

fn envsynth(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("runs envsynth")
}

fn ok(args: &[&str]) -> String {
    let out = envsynth(args);
    assert!(
        out.status.success(),
        "envsynth {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs and must fail with a message containing `needle`.
fn fails(args: &[&str], needle: &str) {
    let out = envsynth(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "envsynth {args:?} should fail");
    assert!(
        err.contains(needle),
        "envsynth {args:?}: `{needle}` not in: {err}"
    );
}

/// Every file in a directory, by name, with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

fn gen_args<'a>(out: &'a str, count: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "generate",
        "--count",
        count,
        "--seed",
        "11",
        "--mix",
        "easy=1,medium=2,hard=1",
        "--out",
        out,
        "--shard-size",
        "10",
        "--format",
        "both",
    ];
    v.extend_from_slice(extra);
    v
}

#[test]
fn same_command_same_bytes_and_worker_splits_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c, d) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
        tmp.path().join("d"),
    );
    let (a, b, c, d) = (
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        c.to_str().unwrap(),
        d.to_str().unwrap(),
    );
    ok(&gen_args(a, "35", &[]));
    ok(&gen_args(b, "35", &["--jobs", "1"]));
    // Two workers writing into one directory, in either order.
    ok(&gen_args(
        c,
        "35",
        &["--num-shards", "2", "--shard-index", "1"],
    ));
    assert!(
        !Path::new(c).join("manifest.json").exists(),
        "no manifest before every part exists"
    );
    ok(&gen_args(
        c,
        "35",
        &["--num-shards", "2", "--shard-index", "0"],
    ));
    let fa = files(Path::new(a));
    assert_eq!(fa.keys().filter(|k| k.ends_with(".parquet")).count(), 4);
    assert!(fa.contains_key("part-00003-of-00004.jsonl") && fa.contains_key("manifest.json"));
    assert!(!fa.keys().any(|k| k.ends_with(".tmp")));
    assert_eq!(fa, files(Path::new(b)));
    assert_eq!(fa, files(Path::new(c)));

    ok(&[
        "generate",
        "--count",
        "35",
        "--seed",
        "12",
        "--mix",
        "easy=1,medium=2,hard=1",
        "--out",
        d,
        "--shard-size",
        "10",
        "--format",
        "both",
    ]);
    let fd = files(Path::new(d));
    assert_ne!(
        fa["part-00000-of-00004.parquet"],
        fd["part-00000-of-00004.parquet"]
    );

    let manifest: Value = serde_json::from_slice(&fa["manifest.json"]).unwrap();
    assert_eq!(manifest["rows"], 35);
    assert_eq!(manifest["files"].as_array().unwrap().len(), 8);
    assert_eq!(manifest["environment"]["id"], "travel-planning");
    for f in manifest["files"].as_array().unwrap() {
        let bytes = &fa[f["name"].as_str().unwrap()];
        assert_eq!(f["bytes"], bytes.len());
        assert_eq!(
            f["sha256"].as_str().unwrap(),
            envsynth_core::hash::sha256_id(bytes)
        );
    }
    assert!(manifest["rejections"].is_object() && manifest["rejected_attempts"].is_u64());
}

fn read_back(dir: &Path) -> Vec<envsynth_core::Task> {
    envsynth_shards::shard_files(dir)
        .unwrap()
        .iter()
        .flat_map(|f| envsynth_shards::read_tasks(f).unwrap())
        .collect()
}

#[test]
fn a_killed_run_resumes_without_duplicates_or_gaps() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    let crashed = tmp.path().join("crashed");
    let (clean_s, crashed_s) = (clean.to_str().unwrap(), crashed.to_str().unwrap());
    let common = [
        "--count",
        "600",
        "--seed",
        "5",
        "--mix",
        "hard",
        "--shard-size",
        "20",
        "--format",
        "both",
        "--jobs",
        "1",
    ];

    let mut child = Command::new(BIN)
        .arg("generate")
        .args(common)
        .args(["--out", crashed_s])
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let metas = std::fs::read_dir(&crashed)
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .ends_with(".meta.json")
                })
                .count()
            })
            .unwrap_or(0);
        if metas >= 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "generation never progressed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL: no cleanup runs
    child.wait().unwrap();
    let before = files(&crashed);
    assert!(
        !before.contains_key("manifest.json"),
        "the run was killed before finishing"
    );
    let done = before.keys().filter(|k| k.ends_with(".meta.json")).count();
    assert!(
        done < 30,
        "kill came too late to test resume ({done} parts done)"
    );
    // Damage the state a crash can leave: a half-written temp file and a torn data file.
    std::fs::write(
        crashed.join("part-00029-of-00030.parquet.tmp"),
        b"PAR1 torn",
    )
    .unwrap();
    std::fs::write(
        crashed.join("part-00000-of-00030.jsonl"),
        b"{\"truncated\":",
    )
    .unwrap();

    let out = Command::new(BIN)
        .arg("generate")
        .args(common)
        .args(["--out", crashed_s])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(&[&["generate"][..], &common[..], &["--out", clean_s][..]].concat());
    assert_eq!(
        files(&crashed),
        files(&clean),
        "resumed output differs from an uninterrupted run"
    );

    let tasks = read_back(&crashed);
    let indices: Vec<u64> = tasks.iter().map(|t| t.index).collect();
    assert_eq!(indices, (0..600).collect::<Vec<u64>>());
}

#[test]
fn parquet_is_read_back_by_pyarrow_with_verl_columns() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pq");
    ok(&[
        "generate",
        "--count",
        "12",
        "--seed",
        "3",
        "--out",
        out.to_str().unwrap(),
        "--shard-size",
        "5",
    ]);
    let script = r#"
import json, sys, glob
import pyarrow.parquet as pq
files = sorted(glob.glob(sys.argv[1] + "/part-*.parquet"))
table = pq.read_table(files)
assert table.num_rows == 12, table.num_rows
for col in ["data_source", "prompt", "ability", "reward_model", "extra_info"]:
    assert col in table.column_names, col
rows = table.to_pylist()
r = rows[0]
assert r["data_source"] == "envsynth/travel-planning"
assert [m["role"] for m in r["prompt"]] == ["system", "user"]
assert r["reward_model"]["style"] == "rule"
assert json.loads(r["reward_model"]["ground_truth"])["days"]
assert [x["extra_info"]["index"] for x in rows] == list(range(12))
assert {x["extra_info"]["split"] for x in rows} == {"train"}
task = json.loads(r["extra_info"]["task"])
assert task["id"] == r["extra_info"]["task_id"] and task["world"]["cities"]
tools = json.loads(r["extra_info"]["tools"])
assert all(t["type"] == "function" for t in tools) and len(tools) >= 10
print("ok", len(files))
"#;
    assert_eq!(common::python(script, &[out.to_str().unwrap()]), "ok 3");
}

#[test]
fn verify_scores_submissions_and_reports_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("v");
    ok(&[
        "generate",
        "--count",
        "8",
        "--seed",
        "9",
        "--mix",
        "medium",
        "--out",
        dir.to_str().unwrap(),
        "--shard-size",
        "4",
        "--format",
        "jsonl",
    ]);
    let tasks = read_back(&dir);
    let mut lines = Vec::new();
    for (i, t) in tasks.iter().enumerate() {
        let planted: Value = serde_json::from_str(t.reference_solution.get()).unwrap();
        match i % 4 {
            0 => lines.push(json!({"task_id": t.id, "submission": planted})),
            1 => {
                lines.push(json!({"task_id": t.id, "submission": planted.to_string()}));
                lines.push(json!({"task_id": t.id, "submission": "I could not find a plan."}));
            }
            2 => lines.push(json!({"task_id": t.id, "submission": null})),
            _ => {} // unanswered
        }
    }
    let subs = tmp.path().join("subs.jsonl");
    std::fs::write(
        &subs,
        lines
            .iter()
            .map(|l| l.to_string() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let verdicts = tmp.path().join("verdicts.jsonl");
    let report: Value = serde_json::from_str(&ok(&[
        "verify",
        "--tasks",
        dir.to_str().unwrap(),
        "--submissions",
        subs.to_str().unwrap(),
        "--out",
        verdicts.to_str().unwrap(),
    ]))
    .unwrap();
    let vs: Vec<Value> = std::fs::read_to_string(&verdicts)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(vs.len(), 8 + 2); // one per submission plus one per unanswered task
    assert_eq!(report["submissions"], 8);
    assert_eq!(report["unanswered_tasks"], 2);
    let m = &report["overall"];
    assert_eq!(m["n"], 10);
    assert!(
        (m["final_pass_rate"].as_f64().unwrap() - 0.4).abs() < 1e-9,
        "{m}"
    );
    assert!(
        (m["delivery_rate"].as_f64().unwrap() - 0.4).abs() < 1e-9,
        "{m}"
    );
    let kinds: Vec<&str> = vs
        .iter()
        .map(|v| v["failure_kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "none").count(), 4);
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "malformed_submission")
            .count(),
        2
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "empty_submission").count(),
        4
    );
    assert!(report["by_level"]["medium"].is_object());

    // Bad submissions files are refused with the line named, and nothing is written.
    let bad = tmp.path().join("bad.jsonl");
    let out2 = tmp.path().join("v2.jsonl");
    let verify_bad = [
        "verify",
        "--tasks",
        dir.to_str().unwrap(),
        "--submissions",
        bad.to_str().unwrap(),
        "--out",
        out2.to_str().unwrap(),
    ];
    std::fs::write(
        &bad,
        format!(
            "{}\n{{\"task_id\": \"sha256:nope\", \"submission\": 1}}\n",
            lines[0]
        ),
    )
    .unwrap();
    fails(
        &verify_bad,
        "line 2: task_id sha256:nope is not among --tasks",
    );
    std::fs::write(&bad, "{not json\n").unwrap();
    fails(&verify_bad, "line 1");
    assert!(!out2.exists());
}

#[test]
fn show_and_envs_print_readably() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("s");
    ok(&["generate", "--count", "3", "--out", dir.to_str().unwrap()]);
    let text = ok(&["show", dir.to_str().unwrap(), "--index", "2"]);
    for needle in [
        "seed/index  0 / 2",
        "--- user ---",
        "hard.budget",
        "Day 1:",
        "breakfast",
        "Cost:",
        "mutants rejected",
    ] {
        assert!(
            text.contains(needle),
            "`{needle}` not in show output:\n{text}"
        );
    }
    fails(
        &["show", dir.to_str().unwrap(), "--index", "99"],
        "no matching task",
    );
    let envs = ok(&["envs"]);
    assert!(envs.contains("travel-planning@0.1.0") && envs.contains("content hash  sha256:"));
}

#[test]
fn duplicates_finds_repeated_problems_and_held_out_rows_that_training_has() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    let (train, fresh, leaky, dup) = (p("train"), p("fresh"), p("leaky"), p("dup"));
    let args = |out: &str, count: &str, seed: &str, split: &str| {
        ok(&[
            "generate",
            "--count",
            count,
            "--seed",
            seed,
            "--split",
            split,
            "--format",
            "jsonl",
            "--shard-size",
            "5",
            "--out",
            out,
        ])
    };
    args(&train, "12", "11", "train");
    // Another seed gives other problems; the same seed with another split name gives the same.
    args(&fresh, "6", "12", "test");
    args(&leaky, "4", "11", "test");
    // A dataset written by hand: two training rows, the first again under another seed and
    // index (another id, the same problem), and a third training row with one more world entry
    // (the same prompt, another problem).
    let tasks = read_back(Path::new(&train));
    let mut again = tasks[0].clone();
    again.seed = 5;
    again.index = 100;
    again.id = again.compute_id();
    let mut reworld = tasks[2].clone();
    let mut world: Value = serde_json::from_str(reworld.world.get()).unwrap();
    world["note"] = json!("changed");
    reworld.world = serde_json::value::RawValue::from_string(world.to_string()).unwrap();
    reworld.id = reworld.compute_id();
    std::fs::create_dir(&dup).unwrap();
    let rows = [tasks[0].clone(), tasks[1].clone(), again, reworld];
    std::fs::write(
        Path::new(&dup).join("part-00000-of-00001.jsonl"),
        envsynth_shards::jsonl_bytes(&rows, "dup"),
    )
    .unwrap();

    let report = tmp.path().join("report.json");
    let duplicates = |out: &Path| {
        let datasets = [train.as_str(), &fresh, &leaky, &dup];
        ok(&[
            &["duplicates", "--out", out.to_str().unwrap()][..],
            &datasets,
        ]
        .concat())
    };
    let text = duplicates(&report);
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let counts = |d: usize, kind: &str| {
        let c = &r["datasets"][d][kind];
        (
            c["distinct"].as_u64().unwrap(),
            c["repeated"].as_u64().unwrap(),
            c["in_earlier"].as_u64().unwrap(),
        )
    };
    let rows: Vec<u64> = (0..4)
        .map(|d| r["datasets"][d]["rows"].as_u64().unwrap())
        .collect();
    assert_eq!(rows, [12, 6, 4, 4]);
    for kind in ["problems", "prompts"] {
        assert_eq!(counts(0, kind), (12, 0, 0), "{kind}");
        assert_eq!(counts(1, kind), (6, 0, 0), "{kind}");
        assert_eq!(counts(2, kind), (4, 0, 4), "{kind}");
    }
    assert_eq!(counts(3, "problems"), (3, 1, 3));
    assert_eq!(counts(3, "prompts"), (3, 1, 4));
    // The groups name their rows in reading order: dataset, then index.
    let group = |by: &str, first: u64| {
        r["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| {
                g["by"] == by && g["rows"][0]["dataset"] == 0 && g["rows"][0]["index"] == first
            })
            .map(|g| {
                g["rows"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| (x["dataset"].as_u64().unwrap(), x["index"].as_u64().unwrap()))
                    .collect::<Vec<_>>()
            })
    };
    assert_eq!(
        group("problem", 0),
        Some(vec![(0, 0), (2, 0), (3, 0), (3, 100)])
    );
    assert_eq!(group("problem", 2), Some(vec![(0, 2), (2, 2)]));
    assert_eq!(group("prompt", 2), Some(vec![(0, 2), (2, 2), (3, 2)]));
    assert_eq!(group("problem", 5), None);
    assert_eq!(r["groups"].as_array().unwrap().len(), 8);
    assert!(text.contains(&format!(
        "same problem {}",
        &r["groups"][0]["hash"].as_str().unwrap()[..19]
    )));
    assert!(text.contains(&format!("{leaky}#3")), "{text}");
    // The same command gives the same report.
    let again = tmp.path().join("again.json");
    duplicates(&again);
    assert_eq!(
        std::fs::read(&report).unwrap(),
        std::fs::read(&again).unwrap()
    );
    fails(&["duplicates", &train, &p("missing")], "dataset");
    fails(
        &["duplicates", &train, &p("missing")],
        "missing does not exist",
    );
}

#[test]
fn bad_input_is_refused_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let o = out.to_str().unwrap();
    fails(
        &["generate", "--count", "5", "--out", o, "--env", "chess"],
        "unknown environment `chess`",
    );
    fails(
        &[
            "generate",
            "--count",
            "5",
            "--out",
            o,
            "--env",
            "travel-planning@9.0.0",
        ],
        "not 9.0.0",
    );
    fails(
        &[
            "generate",
            "--count",
            "5",
            "--out",
            o,
            "--mix",
            "medium=2,insane=1",
        ],
        "unknown level `insane`",
    );
    fails(
        &["generate", "--count", "5", "--out", o, "--mix", "medium=-1"],
        "positive",
    );
    fails(
        &[
            "generate",
            "--count",
            "5",
            "--out",
            o,
            "--overrides",
            "{\"people_max\": 99}",
        ],
        "people_max",
    );
    fails(
        &[
            "generate",
            "--count",
            "5",
            "--out",
            o,
            "--overrides",
            "{\"budget\": 1}",
        ],
        "unknown difficulty parameter `budget`",
    );
    fails(
        &["generate", "--count", "5", "--out", o, "--overrides", "[1"],
        "--overrides is not JSON",
    );
    fails(
        &[
            "generate",
            "--count",
            "5",
            "--out",
            o,
            "--shard-index",
            "2",
            "--num-shards",
            "2",
        ],
        "--shard-index must be less than --num-shards",
    );
    fails(
        &["generate", "--count", "0", "--out", o],
        "--count must be at least 1",
    );
    fails(
        &["generate", "--count", "5", "--out", o, "--format", "csv"],
        "unknown format `csv`",
    );
    // A directory holding another request's shards is not overwritten.
    ok(&["generate", "--count", "5", "--out", o, "--seed", "1"]);
    fails(
        &["generate", "--count", "5", "--out", o, "--seed", "2"],
        "different request",
    );
    // A corrupt shard is named.
    let part = PathBuf::from(o).join("part-00000-of-00001.parquet");
    std::fs::write(&part, b"PAR1 garbage").unwrap();
    fails(&["show", o], "part-00000-of-00001.parquet");
    let subs = tmp.path().join("s.jsonl");
    std::fs::write(&subs, "").unwrap();
    fails(
        &[
            "verify",
            "--tasks",
            o,
            "--submissions",
            subs.to_str().unwrap(),
            "--out",
            tmp.path().join("v").to_str().unwrap(),
        ],
        "not a readable Parquet file",
    );
    fails(
        &[
            "verify",
            "--tasks",
            "/nonexistent",
            "--submissions",
            subs.to_str().unwrap(),
            "--out",
            "x",
        ],
        "does not exist",
    );
}

#[test]
fn plugin_check_catches_a_verifier_that_passes_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("lenient.py");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../sandbox/fixtures/python/probe.py"
        ),
        &src,
    )
    .unwrap();
    let wasm = tmp.path().join("lenient.wasm");
    let cache = tmp.path().join("cache");
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("ENVSYNTH_CACHE", &cache)
            .output()
            .unwrap()
    };
    let out = run(&[
        "plugin",
        "build",
        src.to_str().unwrap(),
        "--world",
        "verifier",
        "-o",
        wasm.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wasm.is_file());

    // It says every plan passes, so the mutants, garbage and adversarial probes must catch it.
    let out = run(&["plugin", "check", wasm.to_str().unwrap(), "--count", "1"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success());
    assert!(
        stdout.contains("FAIL easy/0 mutant:commonsense.within_sandbox"),
        "{stdout}"
    );
    assert!(
        stdout.contains("garbage:text") || stdout.contains("more"),
        "{stdout}"
    );
    assert!(stderr.contains("verifier probes"), "{stderr}");

    let rb = tmp.path().join("v.rb");
    std::fs::write(&rb, "def verify; end").unwrap();
    fails(
        &["plugin", "build", rb.to_str().unwrap()],
        "unsupported source",
    );
    let js = tmp.path().join("v.js");
    std::fs::write(&js, "export function verify( {").unwrap();
    fails(
        &["plugin", "build", js.to_str().unwrap()],
        "componentize-js",
    );
    fails(
        &["plugin", "check", src.to_str().unwrap()],
        "not a loadable WebAssembly component",
    );
    fails(&["plugin", "check", "/nonexistent.wasm"], "does not exist");
}

/// Issue 3's proof that a plugin is the same environment: the Python port of the travel verifier
/// gives verdicts identical to the native one on 1,002 generated tasks (334 per level), for the
/// planted plan, every single-constraint mutant, and the empty, garbage and adversarial probes.
#[test]
fn the_python_travel_verifier_matches_the_native_one_on_1000_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    let wasm = tmp.path().join("travel_verifier.wasm");
    let cache = tmp.path().join("cache");
    let src = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../verifiers/travel/travel_verifier.py"
    );
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("ENVSYNTH_CACHE", &cache)
            .output()
            .unwrap()
    };
    let out = run(&["plugin", "build", src, "-o", wasm.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[
        "plugin",
        "check",
        wasm.to_str().unwrap(),
        "--count",
        "334",
        "--seed",
        "2026",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passed: usize = stdout
        .split(": ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(passed >= 1002 * 15, "{stdout}");
    assert!(stdout.contains(" 0 failed"), "{stdout}");
}

#[test]
fn generate_exclude_keeps_held_out_problems_out_of_a_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    let (eval, train, again, plain) = (p("eval"), p("train"), p("again"), p("plain"));
    let make = |out: &str, count: &str, split: &str, exclude: Option<&str>| {
        let mut args = vec![
            "generate",
            "--count",
            count,
            "--seed",
            "3",
            "--split",
            split,
            "--mix",
            "easy=1,hard=1",
            "--shard-size",
            "5",
            "--out",
            out,
        ];
        if let Some(e) = exclude {
            args.extend(["--exclude", e]);
        }
        ok(&args)
    };
    // The footgun: the same seed under another split name gives the same problems again.
    make(&eval, "6", "test", None);
    make(&train, "15", "train", Some(&eval));
    make(&plain, "15", "train", None);
    let (held, kept, base) = (
        read_back(Path::new(&eval)),
        read_back(Path::new(&train)),
        read_back(Path::new(&plain)),
    );
    assert_eq!(kept.len(), 15, "still --count tasks");
    let held: BTreeSet<String> = held.iter().map(|t| t.problem_hash()).collect();
    assert_eq!(held.len(), 6);
    assert!(kept.iter().all(|t| !held.contains(&t.problem_hash())));
    assert!(base[..6].iter().all(|t| held.contains(&t.problem_hash())));
    // Only the colliding rows were drawn again: at index i + k·15, with index i's level.
    for (i, (k, b)) in kept.iter().zip(&base).enumerate() {
        if i < 6 {
            assert!(
                k.index >= 15 && k.index % 15 == i as u64,
                "{i}: {}",
                k.index
            );
            assert_eq!(k.difficulty.level, b.difficulty.level, "{i}");
            assert_eq!(k.seed, 3);
        } else {
            assert_eq!(k.id, b.id, "{i}");
        }
    }
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(Path::new(&train).join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["replaced"], 6);
    assert_eq!(manifest["request"]["exclude"]["problems"], 6);
    let plain_manifest = std::fs::read_to_string(Path::new(&plain).join("manifest.json")).unwrap();
    assert!(!plain_manifest.contains("replaced") && !plain_manifest.contains("exclude"));
    // The same command, the same bytes.
    make(&again, "15", "train", Some(&eval));
    assert_eq!(files(Path::new(&train)), files(Path::new(&again)));
    // A directory of another request is refused, and so is a missing exclusion.
    let args = [
        "generate",
        "--count",
        "15",
        "--seed",
        "3",
        "--split",
        "train",
        "--mix",
        "easy=1,hard=1",
        "--shard-size",
        "5",
        "--out",
        &plain,
        "--exclude",
        &eval,
    ];
    fails(&args, "different request");
    let missing = p("nowhere");
    let args = [
        "generate",
        "--count",
        "2",
        "--out",
        &p("x"),
        "--exclude",
        &missing,
    ];
    fails(&args, "--exclude");
}
