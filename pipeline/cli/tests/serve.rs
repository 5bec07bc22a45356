//! `envsynth serve` as trainers meet it: a dataset generated and imported with the CLI, the
//! server started as a process, and the README's verl, TRL and agent-loop examples run against it
//! with the real `requests` and `httpx` packages (the agent loop's policy is `simulate-policy`) — on SQLite and on PostgreSQL.

mod common;

use std::path::Path;
use std::process::Command;

use common::{BIN, Served};

const TOKEN: &str = "readme-token-0123456789";

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn envsynth(home: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env("ENVSYNTH_HOME", home)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "envsynth {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `count` easy travel tasks generated into `tmp` and imported into `db` as task set
/// `travel@1`; returns the `$ENVSYNTH_HOME` used.
fn imported(tmp: &Path, db: &str, count: &str) -> std::path::PathBuf {
    let home = tmp.join("home");
    let data = tmp.join("data");
    envsynth(
        &home,
        &[
            "generate",
            "--count",
            count,
            "--mix",
            "easy",
            "--seed",
            "4",
            "--out",
            data.to_str().unwrap(),
        ],
    );
    envsynth(
        &home,
        &[
            "registry",
            "import",
            data.to_str().unwrap(),
            "--db",
            db,
            "--set",
            "travel",
            "--set-version",
            "1",
        ],
    );
    home
}

fn readme_examples_against(db: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let home = imported(tmp.path(), db, "8");
    let server = Served::start(db, &home, &tmp.path().join("cache"), TOKEN);
    // The agent example's policy: the simulated oracle, over the same tasks.
    let policy = Served::simulated_policy(&tmp.path().join("data"), "oracle");
    let (status, body) = server.request("GET", "/health", None);
    assert_eq!(status, 200, "{body}");
    let out = Command::new("python3")
        .arg(repo("pipeline/cli/tests/python/readme_examples.py"))
        .arg(repo("README.md"))
        .arg("travel@1")
        .env("ENVSYNTH_URL", server.url())
        .env("ENVSYNTH_TOKEN", TOKEN)
        .env("POLICY_URL", format!("{}/v1", policy.url()))
        .output()
        .expect("python3 is needed (with requests and httpx: .ci/requirements.txt)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "README examples failed:\n{text}");
    assert!(text.contains("ok: "), "{text}");
}

#[test]
fn readme_trainer_examples_run_against_a_live_server_on_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    readme_examples_against(&format!("sqlite://{}", tmp.path().join("r.db").display()));
}

#[test]
fn readme_trainer_examples_run_against_a_live_server_on_postgres() {
    let base = std::env::var("ENVSYNTH_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    readme_examples_against(&format!("{base}?schema=readme_{}", std::process::id()));
}

#[test]
fn serve_refuses_a_short_token_and_a_bad_database() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--addr", "127.0.0.1:0", "--db", "sqlite://x.db"])
        .env("ENVSYNTH_TOKEN", "short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 16 characters"));
    let out = Command::new(BIN)
        .args(["serve", "--addr", "127.0.0.1:0", "--db", "mysql://nope"])
        .env("ENVSYNTH_HOME", tmp.path())
        .env_remove("ENVSYNTH_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown database URL"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two server processes on one database, four clients writing rollouts through both at once,
/// each also re-sending one shared rollout: every rollout is counted exactly once.
fn concurrent_writers_through_two_servers(db: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let home = imported(tmp.path(), db, "1");
    let cache = tmp.path().join("cache");
    let servers = [
        Served::start(db, &home, &cache, TOKEN),
        Served::start(db, &home, &cache, TOKEN),
    ];
    let (_, page) = servers[0].request("GET", "/v1/tasks?limit=1", None);
    let page: serde_json::Value = serde_json::from_str(&page).unwrap();
    let task_id = page["task_ids"][0].as_str().unwrap().to_string();
    std::thread::scope(|scope| {
        for client in 0..4 {
            let (servers, task_id) = (&servers, &task_id);
            scope.spawn(move || {
                for i in 0..40 {
                    let rollout = |id: String| {
                        serde_json::json!({"rollout_id": id, "task_id": task_id, "policy": "p",
                            "sample_seed": i, "submission": null})
                    };
                    let body = serde_json::json!({"rollouts": [
                        rollout(format!("c{client}-{i}")), rollout("shared".into())
                    ]})
                    .to_string();
                    let (status, text) =
                        servers[(client + i) % 2].authorized("POST", "/v1/rollouts", &body, TOKEN);
                    assert_eq!(status, 200, "{text}");
                }
            });
        }
    });
    let (_, d) = servers[1].request("GET", &format!("/v1/tasks/{task_id}/difficulty"), None);
    let d: serde_json::Value = serde_json::from_str(&d).unwrap();
    assert_eq!(d["policies"][0]["attempts"], 4 * 40 + 1, "{d}");
}

#[test]
fn concurrent_writers_through_two_servers_lose_nothing_on_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    concurrent_writers_through_two_servers(&format!(
        "sqlite://{}",
        tmp.path().join("r.db").display()
    ));
}

#[test]
fn concurrent_writers_through_two_servers_lose_nothing_on_postgres() {
    let base = std::env::var("ENVSYNTH_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    concurrent_writers_through_two_servers(&format!(
        "{base}?schema=writers_{}",
        std::process::id()
    ));
}

/// `envsynth bench-api` is a benchmark, but every load it drives must be answered without an
/// error, or its figures measure failures.
#[test]
fn bench_api_gets_no_errors_on_any_route() {
    let tmp = tempfile::tempdir().unwrap();
    let out = envsynth(
        tmp.path(),
        &[
            "bench-api",
            "--seconds",
            "0.2",
            "--tasks",
            "6",
            "--connections",
            "4",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = v["http"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "sample 1 task",
            "sample 16 tasks",
            "sample 16 by curriculum",
            "sample 16 by curriculum, latest 32",
            "verify (native)",
            "tool call (native)",
            "health (HTTP + one query)"
        ]
    );
    for r in rows {
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["requests_per_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert!(v["in_process"]["tool_call_per_s"].as_f64().unwrap() > 0.0);
    assert!(v["in_process"]["curriculum_16_per_s"].as_f64().unwrap() > 0.0);
    assert!(
        v["in_process"]["curriculum_16_latest_32_per_s"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}
