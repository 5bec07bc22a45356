//! `envsynth rollout` end to end with the simulated policy over loopback HTTP: same command,
//! same bytes; a run that stopped part-way continues from its journal without repeating or
//! losing a rollout; `envsynth calibrate` keeps exactly the tasks in a pass@k band, and the
//! registry's difficulty band then selects the same tasks.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::BIN;

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

    // Calibration: pass@1 in [0.3, 0.7] from the noisy run, computed here independently.
    let mut per_task: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
    for l in &lines {
        let r: serde_json::Value = serde_json::from_str(l).unwrap();
        if r["verdict"]["mask"] == true {
            continue;
        }
        let e = per_task
            .entry(r["task_id"].as_str().unwrap().to_string())
            .or_default();
        e.0 += 1;
        e.1 += u64::from(r["verdict"]["passed"] == true);
    }
    let want: std::collections::BTreeSet<String> = per_task
        .iter()
        .filter(|(_, (n, c))| {
            let p = *c as f64 / *n as f64;
            (0.3..=0.7).contains(&p)
        })
        .map(|(id, _)| id.clone())
        .collect();
    assert!(
        !want.is_empty() && want.len() < 9,
        "the band should split the tasks: {per_task:?}"
    );
    let db = format!("sqlite://{}", tmp.path().join("r.db").display());
    run(&[
        "registry",
        "import",
        tasks.to_str().unwrap(),
        "--db",
        &db,
        "--set",
        "cal",
        "--set-version",
        "1",
    ]);
    let cal = tmp.path().join("cal");
    run(&[
        "calibrate",
        "--tasks",
        tasks.to_str().unwrap(),
        "--rollouts",
        a.to_str().unwrap(),
        "--pass-at",
        "1",
        "--min",
        "0.3",
        "--max",
        "0.7",
        "--out",
        cal.to_str().unwrap(),
        "--db",
        &db,
    ]);
    let kept: std::collections::BTreeSet<String> =
        envsynth_shards::read_tasks(&cal.join("part-00000-of-00001.parquet"))
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
    assert_eq!(
        kept, want,
        "calibration keeps exactly the tasks in the band"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cal.join("calibration.json")).unwrap()).unwrap();
    assert_eq!(report["tasks"].as_array().unwrap().len(), 9);
    assert_eq!(report["kept"], want.len());
    // The registry now holds the rollouts: its pass-rate band selects the same tasks.
    let home = tmp.path().join("home");
    let server = common::Served::start(
        &db,
        &home,
        &home.join("cache"),
        "calibrate-token-0123456789",
    );
    let (status, body) = server.request(
        "GET",
        "/v1/tasks?policy=sim-noisy:0.2&min_pass=0.3&max_pass=0.7",
        None,
    );
    assert_eq!(status, 200, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    let banded: std::collections::BTreeSet<String> = page["task_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(banded, want);
}

/// `--token-ids` asks the server for each turn's tokens (the simulated policy answers as vLLM
/// does); every rollout keeps one trace, the same command writes the same bytes, and a second
/// reader finds the traces as list columns of the trajectory shard.
#[test]
fn rollouts_with_token_ids_keep_each_conversations_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let tasks = tmp.path().join("tasks");
    run(&["generate", "--count", "4", "--out", tasks.to_str().unwrap()]);
    let play = |out: &Path| {
        run(&[
            "rollout",
            "--tasks",
            tasks.to_str().unwrap(),
            "--policy",
            "sim:noisy:0.3",
            "--token-ids",
            "--k",
            "2",
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let printed = String::from_utf8_lossy(&play(&a).stdout).to_string();
    play(&b);
    let jsonl = std::fs::read(a.join("rollouts.jsonl")).unwrap();
    assert_eq!(jsonl, std::fs::read(b.join("rollouts.jsonl")).unwrap());
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("summary.json")).unwrap()).unwrap();
    assert_eq!(
        summary["token_traces"],
        serde_json::json!({"carried": 8, "split": 0})
    );
    assert!(printed.contains("\"token_traces\""), "{printed}");
    for line in std::str::from_utf8(&jsonl).unwrap().lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        let traces = r["tokens"].as_array().expect("token sequences");
        assert_eq!(traces.len(), 1, "the simulated template is prefix-stable");
        let ids = traces[0]["ids"].as_array().unwrap();
        let mask = traces[0]["mask"].as_array().unwrap();
        let generated = mask.iter().filter(|m| m.as_u64() == Some(1)).count();
        assert_eq!(
            generated as u64,
            r["usage"]["completion_tokens"].as_u64().unwrap()
        );
        assert!(ids.len() > generated && generated > 0);
    }
    let script = r#"
import json, sys
import pyarrow.parquet as pq
t = pq.read_table(sys.argv[1])
for row in t.to_pylist():
    traces = json.loads(row["rollout"])["tokens"]
    assert row["token_ids"] == [t["ids"] for t in traces]
    assert row["loss_mask"] == [t["mask"] for t in traces]
    for got, trace in zip(row["logprobs"], traces):
        assert all(abs(a - b) <= 1e-6 for a, b in zip(got, trace["logprobs"]))
    assert sum(map(sum, row["loss_mask"])) == row["completion_tokens"]
print("ok", t.num_rows)
"#;
    let parquet = a.join("rollouts.parquet");
    assert_eq!(common::python(script, &[parquet.to_str().unwrap()]), "ok 8");
}

/// `envsynth rescore` scores stored rollouts again without the policy: this build's verdicts
/// for an untouched run are the stored ones, a stored verdict that differs (an older
/// verifier's) is replaced, and an answer changed in the record is verified as it now reads.
#[test]
fn rescore_verifies_stored_rollouts_again_without_the_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    run(&["generate", "--count", "6", "--out", &p("tasks")]);
    rollout(
        &tmp.path().join("tasks"),
        &tmp.path().join("a"),
        "sim:oracle",
    );
    let rescore = |from: &str, to: &str| {
        let out = run(&[
            "rescore",
            "--tasks",
            &p("tasks"),
            "--rollouts",
            &p(from),
            "--pass-at",
            "1,2,3",
            "--out",
            &p(to),
        ]);
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let read = |dir: &str, file: &str| std::fs::read(tmp.path().join(dir).join(file)).unwrap();
    let said = rescore("a", "same");
    assert!(
        said.contains("18 rollouts of 6 tasks; 0 verdicts changed"),
        "{said}"
    );
    for file in ["rollouts.jsonl", "summary.json"] {
        assert_eq!(read("a", file), read("same", file), "{file}");
    }
    // A run written before rollouts named their environment gets it from each task, and a
    // dataset named twice is read once: the rescored run is the original's bytes.
    let older: String = std::str::from_utf8(&read("a", "rollouts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["environment"], "travel-planning@0.1.0");
            v.as_object_mut().unwrap().remove("environment");
            format!("{v}\n")
        })
        .collect();
    std::fs::create_dir_all(tmp.path().join("older")).unwrap();
    std::fs::write(tmp.path().join("older/rollouts.jsonl"), older).unwrap();
    let tasks = p("tasks");
    run(&[
        "rescore",
        "--tasks",
        &tasks,
        &tasks,
        "--rollouts",
        &p("older"),
        "--pass-at",
        "1,2,3",
        "--out",
        &p("restored"),
    ]);
    for file in ["rollouts.jsonl", "summary.json"] {
        assert_eq!(read("a", file), read("restored", file), "{file}");
    }
    // A copy of the run whose first rollout carries another verdict (as an older verifier
    // gave), and whose second rollout submitted an empty plan.
    let mut lines: Vec<serde_json::Value> = std::str::from_utf8(&read("a", "rollouts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["verdict"]["passed"], true);
    lines[0]["verdict"]["passed"] = false.into();
    lines[0]["verdict"]["reward"] = 0.0.into();
    let submit = lines[1]["messages"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .flat_map(|m| {
            let calls = m.get_mut("tool_calls").and_then(|c| c.as_array_mut());
            calls.into_iter().flatten()
        })
        .find(|c| c["function"]["name"] == "submit_plan")
        .expect("the oracle submits through the tool");
    submit["function"]["arguments"] = r#"{"plan": []}"#.into();
    let edited = tmp.path().join("edited");
    std::fs::create_dir_all(&edited).unwrap();
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(edited.join("rollouts.jsonl"), text).unwrap();
    let said = rescore("edited", "fixed");
    assert!(said.contains("2 verdicts changed"), "{said}");
    let fixed: Vec<serde_json::Value> = std::str::from_utf8(&read("fixed", "rollouts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let original: serde_json::Value = serde_json::from_str(
        std::str::from_utf8(&read("a", "rollouts.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        fixed[0], original,
        "the stored verdict is replaced by this build's"
    );
    assert_eq!(fixed[1]["verdict"]["passed"], false, "the empty plan fails");
    assert_eq!(fixed[2..], lines[2..]);
    // The stored run is never written over.
    let out = Command::new(BIN)
        .args([
            "rescore",
            "--tasks",
            &p("tasks"),
            "--rollouts",
            &p("a"),
            "--out",
            &p("a"),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--out must not be the --rollouts directory")
    );
}

/// A run killed (SIGKILL) after it journaled some rollouts, then started again, ends with the
/// same bytes as a run that was never interrupted.
#[test]
fn a_killed_rollout_run_resumes_without_repeats_or_gaps() {
    let tmp = tempfile::tempdir().unwrap();
    let tasks = tmp.path().join("tasks");
    run(&[
        "generate",
        "--count",
        "150",
        "--mix",
        "easy",
        "--out",
        tasks.to_str().unwrap(),
    ]);
    let args = |out: &Path| -> Vec<String> {
        [
            "rollout",
            "--tasks",
            tasks.to_str().unwrap(),
            "--policy",
            "sim:noisy:0.3",
            "--k",
            "8",
            "--concurrency",
            "1",
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let (whole, killed) = (tmp.path().join("whole"), tmp.path().join("killed"));
    run(&args(&whole).iter().map(String::as_str).collect::<Vec<_>>());
    let mut child = Command::new(BIN)
        .args(args(&killed))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let parts = killed.join("parts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // Wait for a finished part (not just the temporary file an atomic write starts with).
    let finished = |dir: &Path| {
        std::fs::read_dir(dir).map_or(0, |d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
                .count()
        })
    };
    while finished(&parts) == 0 {
        assert!(std::time::Instant::now() < deadline, "no journal appeared");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !killed.join("rollouts.jsonl").exists(),
        "the run finished before it could be killed; make it longer"
    );
    let out = run(&args(&killed).iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&out.stderr);
    let journaled: u64 = err
        .split("; ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    assert!(journaled > 0 && journaled < 1200, "{err}");
    assert_eq!(
        std::fs::read(killed.join("rollouts.jsonl")).unwrap(),
        std::fs::read(whole.join("rollouts.jsonl")).unwrap(),
        "no repeats, no gaps"
    );
}

/// Prompt twins, one request over two worlds (the meeting plugin's easy level has them), are
/// told apart by the tool results a conversation has seen: the simulated oracle passes both.
#[test]
fn the_simulated_oracle_tells_prompt_twins_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let tasks = tmp.path().join("tasks");
    run(&[
        "generate",
        "--count",
        "2",
        "--mix",
        "easy",
        "--format",
        "jsonl",
        "--out",
        tasks.to_str().unwrap(),
    ]);
    let read: Vec<envsynth_core::Task> = envsynth_shards::shard_files(&tasks)
        .unwrap()
        .iter()
        .flat_map(|f| envsynth_shards::read_tasks(f).unwrap())
        .collect();
    // The second task's world, constraints and plan under the first task's prompt and tools.
    let mut twin = read[1].clone();
    twin.prompt = read[0].prompt.clone();
    twin.tools = read[0].tools.clone();
    twin.id = twin.compute_id();
    let twins = tmp.path().join("twins");
    std::fs::create_dir(&twins).unwrap();
    std::fs::write(
        twins.join("part-00000-of-00001.jsonl"),
        envsynth_shards::jsonl_bytes(&[read[0].clone(), twin], "train"),
    )
    .unwrap();
    let out = tmp.path().join("out");
    rollout(&twins, &out, "sim:oracle");
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["rollouts"], 6);
    assert_eq!(s["overall"]["pass_at"]["1"], 1.0, "{s}");
}

fn view(args: &[&str]) -> Output {
    let mut all = vec!["view"];
    all.extend_from_slice(args);
    Command::new(BIN).args(&all).output().unwrap()
}

/// The rollout numbers (lines of rollouts.jsonl) a `view` listing shows.
fn listed(out: &Output) -> Vec<usize> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// `envsynth view`: its list, each filter and one rollout in full agree with the run read here
/// on its own; the HTML page is the same bytes every time and, in jsdom, holds every rollout,
/// filters as it should and runs nothing but its own script; what a policy wrote (markup,
/// terminal escape sequences) stays text everywhere; every bad argument is refused by name.
#[test]
fn a_run_is_viewed_as_a_list_one_rollout_and_a_page() {
    let tmp = tempfile::tempdir().unwrap();
    let tasks = tmp.path().join("tasks");
    run(&[
        "generate",
        "--count",
        "6",
        "--mix",
        "easy=1,medium=1,hard=1",
        "--out",
        tasks.to_str().unwrap(),
    ]);
    let played = tmp.path().join("played");
    rollout(&tasks, &played, "sim:noisy:0.3");
    // The run as played, with two rollouts changed: in one the policy wrote markup and
    // terminal escapes (and a level and a check reason carry some), the other was masked.
    let mut rows: Vec<serde_json::Value> = std::fs::read_to_string(played.join("rollouts.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 18);
    let hostile = "</pre><script>alert(1)</script><img src=x onerror=alert(2)>\u{1b}[2J\u{202e}!";
    rows[0]["messages"][1]["content"] = hostile.into();
    rows[0]["level"] = "easy\" onmouseover=\"alert(3)".into();
    rows[0]["verdict"]["checks"][0]["reason"] = "<b onclick=alert(4)>x</b>".into();
    rows[1]["verdict"]["mask"] = true.into();
    rows[1]["verdict"]["passed"] = false.into();
    rows[1]["verdict"]["reward"] = 0.0.into();
    rows[1]["verdict"]["failure_kind"] = "policy_error".into();
    rows[1]["stop"] = serde_json::json!({"kind": "policy_error", "detail": "connection refused"});
    let run_dir = tmp.path().join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let jsonl: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(run_dir.join("rollouts.jsonl"), &jsonl).unwrap();
    let dir = run_dir.to_str().unwrap();

    let status = |r: &serde_json::Value| {
        if r["verdict"]["mask"] == true {
            "masked"
        } else if r["verdict"]["passed"] == true {
            "passed"
        } else {
            "failed"
        }
    };
    let lines = |keep: &dyn Fn(&serde_json::Value) -> bool| -> Vec<usize> {
        (1..=rows.len()).filter(|&n| keep(&rows[n - 1])).collect()
    };
    let count = |s: &str| rows.iter().filter(|r| status(r) == s).count();
    let (passed, failed) = (count("passed"), count("failed"));
    assert!(passed > 0 && failed > 0, "noisy play should mix outcomes");
    let kinds: std::collections::BTreeSet<&str> = rows
        .iter()
        .filter(|r| status(r) == "failed")
        .map(|r| r["verdict"]["failure_kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["malformed_submission", "wrong_answer"].into(),
        "the noisy agent's wrong answers are refusals and plans that break checks"
    );

    // The list.
    let all = view(&[dir]);
    assert_eq!(listed(&all), lines(&|_| true));
    let file = run_dir.join("rollouts.jsonl");
    assert_eq!(
        listed(&view(&[file.to_str().unwrap(), "--status", "failed"])),
        lines(&|r| status(r) == "failed"),
        "the run's rollouts.jsonl named itself"
    );
    let head = String::from_utf8_lossy(&all.stdout)
        .lines()
        .next()
        .unwrap()
        .to_string();
    assert!(
        head.contains(&format!(
            "18 rollouts of 6 tasks, {passed} passed, {failed} failed, 1 masked"
        )),
        "{head}"
    );
    assert!(!String::from_utf8_lossy(&all.stdout).contains('\u{1b}'));
    for s in ["passed", "failed", "masked"] {
        assert_eq!(
            listed(&view(&[dir, "--status", s])),
            lines(&|r| status(r) == s),
            "--status {s}"
        );
    }
    let failed_check = |r: &serde_json::Value, id: &str| {
        r["verdict"]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == id && c["status"] == "failed")
    };
    let check = rows
        .iter()
        .flat_map(|r| r["verdict"]["checks"].as_array().unwrap())
        .find(|c| c["status"] == "failed")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        listed(&view(&[dir, "--check", &check])),
        lines(&|r| failed_check(r, &check))
    );
    let task = rows[4]["task_id"].as_str().unwrap();
    let prefix = &task["sha256:".len().."sha256:".len() + 10];
    assert_eq!(
        listed(&view(&[dir, "--task", prefix])),
        lines(&|r| r["task_id"] == task)
    );
    assert_eq!(
        listed(&view(&[dir, "--level", "medium", "--status", "failed"])),
        lines(&|r| r["level"] == "medium" && status(r) == "failed")
    );
    let env = rows[2]["environment"].as_str().unwrap();
    let env_id = env.split('@').next().unwrap();
    assert_eq!(listed(&view(&[dir, "--environment", env_id])).len(), 18);

    // One rollout in full: the conversation as text, escapes made visible, every check.
    let one = view(&[dir, "--rollout", "1"]);
    assert!(one.status.success());
    let text = String::from_utf8(one.stdout).unwrap();
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{202e}'),
        "{text}"
    );
    assert!(text.contains("\\u{1b}[2J\\u{202e}!"), "{text}");
    for c in rows[0]["verdict"]["checks"].as_array().unwrap() {
        assert!(text.contains(c["id"].as_str().unwrap()), "{c} in {text}");
    }
    for m in rows[0]["messages"].as_array().unwrap().iter().skip(2) {
        if let Some(calls) = m["tool_calls"].as_array() {
            for call in calls {
                assert!(text.contains(call["function"]["name"].as_str().unwrap()));
            }
        }
    }
    let masked = String::from_utf8(view(&[dir, "--rollout", "2"]).stdout).unwrap();
    assert!(
        masked.contains("stop policy_error: connection refused")
            && masked.contains("masked (policy_error)"),
        "{masked}"
    );

    // The page: same bytes every time; nothing the policy wrote becomes markup.
    let page = tmp.path().join("page.html");
    let again = tmp.path().join("again.html");
    for p in [&page, &again] {
        let out = view(&[dir, "--html", p.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let html = std::fs::read_to_string(&page).unwrap();
    assert_eq!(
        html.as_bytes(),
        std::fs::read(&again).unwrap(),
        "same bytes"
    );
    for bad in [
        "<script>alert",
        "<img",
        "onmouseover=\"",
        "<b onclick",
        "\u{1b}",
    ] {
        assert!(!html.contains(bad), "{bad:?} in the page");
    }
    assert_eq!(html.matches("<details class=\"rollout\"").count(), 18);
    let filtered = tmp.path().join("failed.html");
    assert!(
        view(&[
            dir,
            "--status",
            "failed",
            "--html",
            filtered.to_str().unwrap()
        ])
        .status
        .success()
    );
    assert_eq!(
        std::fs::read_to_string(&filtered)
            .unwrap()
            .matches("<details class=\"rollout\"")
            .count(),
        failed
    );
    // In jsdom: the CSP's hashes, every rollout and message read back, the filters.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    assert!(
        root.join("node_modules/jsdom").exists(),
        "the page test needs jsdom: run `npm ci` at the repository root"
    );
    // A page of passed rollouts still links the run's failed checks to its filter.
    let passed_page = tmp.path().join("passed.html");
    assert!(
        view(&[
            dir,
            "--status",
            "passed",
            "--html",
            passed_page.to_str().unwrap()
        ])
        .status
        .success()
    );
    for (html, only) in [
        (&page, None),
        (&filtered, Some("failed")),
        (&passed_page, Some("passed")),
    ] {
        let js = Command::new("node")
            .arg(root.join("pipeline/cli/tests/js/view_page.mjs"))
            .arg(html)
            .arg(run_dir.join("rollouts.jsonl"))
            .args(only)
            .output()
            .expect("node (the page test runs the page's script in jsdom)");
        assert!(
            js.status.success(),
            "{}{}",
            String::from_utf8_lossy(&js.stdout),
            String::from_utf8_lossy(&js.stderr)
        );
    }

    // Against a baseline: the crafted run against the run as played holds the same 18
    // rollout ids, of which only the masked one changed its verdict; a run with another seed
    // shares no rollout, and its tasks' pass rates move as counted here.
    let compared = view(&[dir, "--against", played.to_str().unwrap()]);
    let text = String::from_utf8(compared.stdout).unwrap();
    assert!(compared.status.success(), "{text}");
    assert!(
        text.contains("rollouts whose verdict changed: 1 of the 18 both runs hold")
            && text.contains("  #2 (baseline #2)  "),
        "{text}"
    );
    let reseeded = tmp.path().join("reseeded");
    run(&[
        "rollout",
        "--tasks",
        tasks.to_str().unwrap(),
        "--policy",
        "sim:noisy:0.3",
        "--k",
        "3",
        "--seed",
        "5",
        "--out",
        reseeded.to_str().unwrap(),
    ]);
    let rates = |dir: &Path| {
        let mut per: std::collections::BTreeMap<String, (u64, u64)> = Default::default();
        for l in std::fs::read_to_string(dir.join("rollouts.jsonl"))
            .unwrap()
            .lines()
        {
            let r: serde_json::Value = serde_json::from_str(l).unwrap();
            if r["verdict"]["mask"] == false {
                let e = per
                    .entry(r["task_id"].as_str().unwrap()[..19].to_string())
                    .or_default();
                e.0 += 1;
                e.1 += u64::from(r["verdict"]["passed"] == true);
            }
        }
        per
    };
    let (before, after) = (rates(&played), rates(&reseeded));
    let want: std::collections::BTreeSet<String> = before
        .iter()
        .filter(|(t, (n, c))| {
            let (an, ac) = after[*t];
            ac * n != c * an
        })
        .map(|(t, (n, c))| {
            let (an, ac) = after[t];
            format!("{t} {c}/{n} -> {ac}/{an}")
        })
        .collect();
    let compared = view(&[
        reseeded.to_str().unwrap(),
        "--against",
        played.to_str().unwrap(),
    ]);
    let text = String::from_utf8(compared.stdout).unwrap();
    let got: std::collections::BTreeSet<String> = text
        .lines()
        .filter(|l| l.starts_with("  sha256:"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {} -> {}", f[0], f[2], f[4])
        })
        .collect();
    assert!(!want.is_empty(), "another seed should move some task");
    assert_eq!(got, want, "{text}");
    assert!(
        text.contains("rollouts whose verdict changed: 0 of the 0"),
        "{text}"
    );

    // Bad arguments, each refused by name.
    let refused = |args: &[&str], says: &[&str]| {
        let out = view(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        for s in says {
            assert!(err.contains(s), "{args:?}: {s:?} not in {err}");
        }
    };
    refused(
        &[dir, "--against", tasks.to_str().unwrap()],
        &["no rollouts.jsonl"],
    );
    refused(&[dir, "--against", dir, "--html", "x.html"], &["--html"]);
    refused(
        &[dir, "--check", "no.such_check"],
        &["--check \"no.such_check\"", "its checks are", &check],
    );
    refused(&[dir, "--level", "impossible"], &["--level", "easy"]);
    refused(&[dir, "--environment", "nope"], &["--environment", env]);
    refused(&[dir, "--task", "zz"], &["--task", "hexadecimal"]);
    refused(
        &[dir, "--task", "0000000000000"],
        &["no rollout of this run"],
    );
    refused(&[dir, "--rollout", "0"], &["has rollouts 1 to 18"]);
    refused(&[dir, "--rollout", "19"], &["has rollouts 1 to 18"]);
    refused(
        &[dir, "--rollout", "1", "--status", "failed"],
        &["--status"],
    );
    let tasks_dir = tasks.to_str().unwrap();
    refused(&[tasks_dir], &["no rollouts.jsonl"]);
    let broken = tmp.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    let mut damaged: Vec<&str> = jsonl.lines().collect();
    damaged[2] = "{\"rollout_id\": 3}";
    std::fs::write(broken.join("rollouts.jsonl"), damaged.join("\n")).unwrap();
    refused(
        &[broken.to_str().unwrap()],
        &["rollouts.jsonl line 3: not a rollout"],
    );
}
