//! `envsynth model` end to end: checkpoints and tokenizers are byte-identical for the same
//! command, generation is seeded, bad arguments are named, and the rollout engine plays tasks
//! with `--policy local:DIR`, reproducibly.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::BIN;

fn envsynth(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("envsynth runs")
}

fn ok(args: &[&str]) -> Output {
    let out = envsynth(args);
    assert!(
        out.status.success(),
        "envsynth {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn refused(args: &[&str]) -> String {
    let out = envsynth(args);
    assert!(!out.status.success(), "envsynth {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| {
            let p = e.expect("entry").path();
            (
                p.file_name().expect("name").to_string_lossy().into_owned(),
                std::fs::read(&p).expect("read"),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn init_is_deterministic_and_generation_is_seeded() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for dir in [&a, &b] {
        ok(&[
            "model",
            "init",
            "--preset",
            "tiny",
            "--seed",
            "5",
            "--out",
            dir.to_str().expect("utf-8"),
        ]);
    }
    let fa = files(&a);
    assert_eq!(
        fa.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );
    assert_eq!(fa, files(&b), "same command, same bytes");
    let config: serde_json::Value = serde_json::from_slice(&fa[0].1).expect("config.json is JSON");
    assert_eq!(config["model_type"], "deepseek_v32");
    assert_eq!(config["index_topk"], 8);
    assert_eq!(config["rope_scaling"]["factor"], 4.0);

    let generate = |seed: &str| {
        let out = ok(&[
            "model",
            "generate",
            "--model",
            a.to_str().expect("utf-8"),
            "--prompt",
            "Plan a trip to",
            "--max-new-tokens",
            "12",
            "--seed",
            seed,
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(generate("1"), generate("1"));
    assert_ne!(generate("1"), generate("2"));

    let tok = tmp.path().join("tokenizer.json");
    ok(&[
        "model",
        "tokenizer",
        "--vocab-size",
        "400",
        "--tasks",
        "12",
        "--out",
        tok.to_str().expect("utf-8"),
    ]);
    let first = std::fs::read(&tok).expect("tokenizer.json");
    ok(&[
        "model",
        "tokenizer",
        "--vocab-size",
        "400",
        "--tasks",
        "12",
        "--out",
        tok.to_str().expect("utf-8"),
    ]);
    assert_eq!(first, std::fs::read(&tok).expect("tokenizer.json"));
    let t: serde_json::Value = serde_json::from_slice(&first).expect("JSON");
    assert_eq!(t["model"]["type"], "BPE");

    // The head count can be set (the GPU runs the small preset with 64 or DeepSeek-V3.2's 128),
    // and the checkpoint it writes loads and generates.
    let heads = tmp.path().join("heads");
    ok(&[
        "model",
        "init",
        "--preset",
        "tiny",
        "--num-attention-heads",
        "8",
        "--out",
        heads.to_str().expect("utf-8"),
    ]);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(heads.join("config.json")).expect("config.json"))
            .expect("JSON");
    assert_eq!(config["num_attention_heads"], 8);
    ok(&[
        "model",
        "generate",
        "--model",
        heads.to_str().expect("utf-8"),
        "--prompt",
        "Plan a trip to",
        "--max-new-tokens",
        "4",
    ]);
}

#[test]
fn bad_model_arguments_are_named() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = tmp.path().join("m");
    let o = out.to_str().expect("utf-8");
    assert!(
        refused(&["model", "init", "--preset", "huge", "--out", o])
            .contains("unknown preset \"huge\"")
    );
    assert!(
        refused(&[
            "model", "init", "--preset", "tiny", "--dtype", "int4", "--out", o
        ])
        .contains("unknown dtype \"int4\"")
    );
    let e = refused(&[
        "model",
        "init",
        "--preset",
        "tiny",
        "--num-attention-heads",
        "0",
        "--out",
        o,
    ]);
    assert!(e.contains("num_attention_heads"), "{e}");
    assert!(!out.exists(), "nothing is written for refused arguments");
    assert!(
        refused(&["model", "generate", "--model", o, "--prompt", "x"]).contains("does not exist")
    );
    ok(&["model", "init", "--preset", "tiny", "--out", o]);
    let e = refused(&[
        "model", "generate", "--model", o, "--prompt", "x", "--top-p", "0",
    ]);
    assert!(e.contains("top_p"), "{e}");
    // A prompt longer than the context (128 positions) is refused, not truncated.
    let long = "day ".repeat(400);
    let e = refused(&["model", "generate", "--model", o, "--prompt", &long]);
    assert!(e.contains("max_position_embeddings 128"), "{e}");
}

#[test]
fn rollouts_with_the_local_policy_are_scored_and_reproducible() {
    let tmp = tempfile::tempdir().expect("tmp");
    let p = |name: &str| tmp.path().join(name).to_str().expect("utf-8").to_string();
    ok(&[
        "generate",
        "--count",
        "2",
        "--mix",
        "easy",
        "--out",
        &p("tasks"),
    ]);
    // The travel prompt with its tools is about 2,500 tokens: give the tiny model room.
    ok(&[
        "model",
        "init",
        "--preset",
        "tiny",
        "--max-position-embeddings",
        "8192",
        "--out",
        &p("tiny"),
    ]);
    let play = |out: &str| {
        ok(&[
            "rollout",
            "--tasks",
            &p("tasks"),
            "--policy",
            &format!("local:{}", p("tiny")),
            "--k",
            "2",
            "--max-turns",
            "2",
            "--max-tokens",
            "16",
            "--seed",
            "3",
            "--out",
            &p(out),
        ]);
        std::fs::read_to_string(tmp.path().join(out).join("rollouts.jsonl"))
            .expect("rollouts.jsonl")
    };
    let first = play("a");
    assert_eq!(first, play("b"), "same command, same rollouts");
    let rollouts: Vec<serde_json::Value> = first
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(rollouts.len(), 4);
    let mut completions = std::collections::BTreeSet::new();
    for r in &rollouts {
        assert_eq!(r["policy"], "local:tiny");
        let usage = &r["usage"];
        assert!(
            usage["prompt_tokens"].as_u64().expect("count") > 1000,
            "{usage}"
        );
        let turns = r["turns"].as_u64().expect("turns");
        assert!(
            usage["completion_tokens"].as_u64().expect("count") <= 16 * turns,
            "{usage}"
        );
        // The conversation's tokens, as the model saw and wrote them: one sequence (each turn
        // continues the last), its loss mask marking every completion token, each with its
        // log-probability.
        let traces = r["tokens"].as_array().expect("token sequences");
        assert_eq!(traces.len(), 1, "{}", r["rollout_id"]);
        let trace = &traces[0];
        let ids = trace["ids"].as_array().expect("token ids");
        let mask: Vec<u64> = trace["mask"]
            .as_array()
            .expect("mask")
            .iter()
            .map(|m| m.as_u64().expect("0 or 1"))
            .collect();
        let logprobs = trace["logprobs"].as_array().expect("logprobs");
        assert_eq!((ids.len(), logprobs.len()), (mask.len(), mask.len()));
        assert_eq!(
            mask.iter().sum::<u64>(),
            usage["completion_tokens"].as_u64().expect("count")
        );
        for (m, l) in mask.iter().zip(logprobs) {
            let l = l.as_f64().expect("a number");
            assert!(if *m == 1 { l <= 0.0 } else { l == 0.0 }, "{m} {l}");
        }
        if turns == 1 {
            assert_eq!(
                ids.len() as u64,
                usage["prompt_tokens"].as_u64().expect("count")
                    + usage["completion_tokens"].as_u64().expect("count")
            );
        }
        // Random weights do not plan trips, but every rollout is scored, none masked.
        assert_eq!(r["verdict"]["mask"], false, "{}", r["verdict"]);
        assert_eq!(r["verdict"]["passed"], false);
        let last = r["messages"]
            .as_array()
            .expect("messages")
            .last()
            .expect("a reply")
            .clone();
        completions.insert(last.to_string());
    }
    assert_eq!(
        completions.len(),
        4,
        "each sample seed draws its own continuation"
    );
    // A second reader finds the same tokens as list columns of the trajectory shard.
    let script = r#"
import json, sys
import pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
assert str(t.schema.field("token_ids").type) == "list<item: list<item: int32>>", t.schema
assert str(t.schema.field("loss_mask").type) == "list<item: list<item: int8>>", t.schema
assert str(t.schema.field("logprobs").type) == "list<item: list<item: float>>", t.schema
for row in t.to_pylist():
    [trace] = json.loads(row["rollout"])["tokens"]
    assert row["token_ids"] == [trace["ids"]]
    assert row["loss_mask"] == [trace["mask"]]
    [lps] = row["logprobs"]
    assert all(abs(a - b) <= 1e-6 * max(1.0, abs(b)) for a, b in zip(lps, trace["logprobs"]))
    assert sum(row["loss_mask"][0]) == row["completion_tokens"]
print("ok", t.num_rows)
"#;
    assert_eq!(common::python(script, &[&p("a/rollouts.parquet")]), "ok 4");
    // The GPU backend is chosen at run time. Without a GPU, or for shapes its kernels do not
    // run (the tiny preset), the rollout is refused with the reason before anything is written.
    for device in ["gpu", "gpu-fp8"] {
        let err = refused(&[
            "rollout",
            "--tasks",
            &p("tasks"),
            "--policy",
            &format!("local:{}", p("tiny")),
            "--device",
            device,
            "--out",
            &p("gpu"),
        ]);
        assert!(
            err.contains("no CUDA driver") || err.contains("FlashMLA shapes"),
            "{device}: {err}"
        );
        assert!(!tmp.path().join("gpu").join("rollouts.jsonl").exists());
    }
    // A device only means something for the local model: asking for one with a policy served
    // elsewhere is a mistake, not something to ignore.
    let err = refused(&[
        "rollout",
        "--tasks",
        &p("tasks"),
        "--policy",
        "sim:oracle",
        "--device",
        "gpu-fp8",
        "--out",
        &p("sim"),
    ]);
    assert!(
        err.contains("--device applies to --policy local:DIR only"),
        "{err}"
    );
    assert!(!tmp.path().join("sim").join("rollouts.jsonl").exists());
}

/// `model bench-turns` plays the same conversations both ways and reports what each prefilled;
/// conversations that would outgrow the model's context are refused before anything runs.
#[test]
fn bench_turns_plays_conversations_both_ways() {
    let tmp = tempfile::tempdir().expect("tmp");
    let p = |name: &str| tmp.path().join(name).to_str().expect("utf-8").to_string();
    ok(&[
        "model",
        "init",
        "--preset",
        "tiny",
        "--max-position-embeddings",
        "256",
        "--out",
        &p("tiny"),
    ]);
    let args = |prompt: &str| {
        vec![
            "model".to_string(),
            "bench-turns".into(),
            "--model".into(),
            p("tiny"),
            "--conversations".into(),
            "2".into(),
            "--turns".into(),
            "3".into(),
            "--prompt-tokens".into(),
            prompt.into(),
            "--new-tokens".into(),
            "4".into(),
            "--suffix-tokens".into(),
            "6".into(),
            "--rounds".into(),
            "1".into(),
            "--json".into(),
            p("turns.json"),
        ]
    };
    let a = args("30");
    let out = ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("continues the kept cache"), "{text}");
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(p("turns.json")).expect("json")).expect("parses");
    // Re-prefilled: 30, 40 and 50 tokens a conversation; continued: 30, then 1 + 6 twice.
    assert_eq!(j["reprefill"]["tokens_prefilled"], 240);
    assert_eq!(j["continue"]["tokens_prefilled"], 88);
    assert!(j["continue"]["seconds"].as_f64().expect("seconds") > 0.0);
    let a = args("240");
    let e = refused(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(e.contains("max_position_embeddings"), "{e}");
}

/// The folder of the pip-installed NVRTC (`nvidia-cuda-nvrtc`, see .ci/requirements.txt).
fn nvrtc_lib_dir() -> String {
    let out = Command::new("python3")
        .args(["-c", "import importlib.util, os; s = importlib.util.find_spec('nvidia'); print(os.path.join(list(s.submodule_search_locations)[0], 'cu13', 'lib'))"])
        .output()
        .expect("python3 runs");
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && Path::new(&dir).join("libnvrtc.so.13").exists(),
        "NVRTC is missing: pip install -r .ci/requirements.txt (nvidia-cuda-nvrtc); looked in {dir:?}"
    );
    dir
}

/// The CUDA kernels compile for sm_90a with NVRTC on any machine; no GPU is needed for that.
#[test]
fn cuda_kernels_compile_for_hopper_with_nvrtc() {
    let lib = nvrtc_lib_dir();
    let out = Command::new(BIN)
        .args(["model", "gpu-check", "--compile-only"])
        .env("LD_LIBRARY_PATH", &lib)
        .output()
        .expect("envsynth runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("kernels compiled for sm_90a"), "{err}");
}

/// Without a GPU the check says it did not run (exit status 3), never that it passed. On a
/// machine with a Hopper GPU it runs the checks (no benchmarks) and must pass them.
#[test]
fn gpu_check_reports_not_run_where_there_is_no_gpu() {
    let out = Command::new(BIN)
        .args(["model", "gpu-check", "--checks-only"])
        .env("LD_LIBRARY_PATH", nvrtc_lib_dir())
        .output()
        .expect("envsynth runs");
    let err = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(3) => assert!(
            err.contains("NOT RUN") && err.contains("no CUDA driver"),
            "{err}"
        ),
        Some(0) => {
            assert!(String::from_utf8_lossy(&out.stdout).contains("| sparse_mla_splits_3 |"))
        }
        other => panic!("gpu-check exited with {other:?}: {err}"),
    }
}
