//! Issue 3's proof that plugins are the same environment, through the `envsynth` binary: the
//! JavaScript port of the travel verifier and the Python port of the travel tools answer as the
//! native ones do, and an environment written entirely in Python is registered and generated
//! like a native one, and verified by `envsynth serve` in its sandbox.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_envsynth");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

/// Runs envsynth with a private component cache and plugin registry.
struct Env {
    tmp: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            tmp: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
    fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("ENVSYNTH_CACHE", self.path("cache"))
            .env("ENVSYNTH_HOME", self.path("home"))
            .output()
            .unwrap()
    }
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "envsynth {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
    fn fails(&self, args: &[&str], needle: &str) -> String {
        let out = self.run(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "envsynth {args:?} should fail");
        assert!(text.contains(needle), "`{needle}` not in: {text}");
        text
    }
    /// Build `source` (relative to the repository) into the temporary directory.
    fn build(&self, source: &str, world: &str) -> PathBuf {
        let name = Path::new(source).file_stem().unwrap().to_str().unwrap();
        let wasm = self.path(&format!("{name}.wasm"));
        self.build_at(&repo(source), world, &wasm);
        wasm
    }
    /// Build the component at `src` into `wasm`.
    fn build_at(&self, src: &Path, world: &str, wasm: &Path) {
        self.ok(&[
            "plugin",
            "build",
            src.to_str().unwrap(),
            "--world",
            world,
            "-o",
            wasm.to_str().unwrap(),
        ]);
    }
}

/// `<name>: N <kind> probe(s) passed, M failed` → (N, M).
fn tally(stdout: &str) -> (usize, usize) {
    let line = stdout
        .lines()
        .find(|l| l.contains("probe(s) passed"))
        .unwrap_or_else(|| panic!("no tally in {stdout}"));
    let nums: Vec<usize> = line
        .rsplit(": ")
        .next()
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    (nums[0], nums[1])
}

/// The JavaScript port gives the native verdict on every probe of 1,002 tasks (334 per level):
/// planted plans, every single-constraint mutant, empty, garbage and adversarial submissions.
#[test]
fn the_javascript_travel_verifier_matches_the_native_one() {
    let env = Env::new();
    let wasm = env.build("verifiers/travel/travel_verifier.js", "verifier");
    let out = env.ok(&[
        "plugin",
        "check",
        wasm.to_str().unwrap(),
        "--count",
        "334",
        "--seed",
        "2027",
    ]);
    let (passed, failed) = tally(&out);
    assert_eq!(failed, 0, "{out}");
    assert!(passed >= 1002 * 15, "{out}");
}

/// The Python port of the travel tools answers as the native tools do: every tool probe of 15
/// tasks (valid searches along the planted route with and without filters, records the plan
/// names, hallucinated ids, invalid arguments, malformed plans, unknown tools), then 8 probes in
/// rotation on each of 1,002 more tasks (334 per level). A fresh-instance Python call costs
/// about 10 ms with a 90 KB world, so all ~63 probes of 1,002 tasks would take 10 minutes.
#[test]
fn the_python_travel_toolset_matches_the_native_tools_on_1000_tasks() {
    let env = Env::new();
    let wasm = env.build("verifiers/travel/travel_toolset.py", "toolset");
    let w = wasm.to_str().unwrap();
    let out = env.ok(&["plugin", "check", w, "--count", "5", "--seed", "7"]);
    let (passed, failed) = tally(&out);
    assert_eq!(failed, 0, "{out}");
    assert!(passed >= 15 * 50, "{out}");
    let out = env.ok(&[
        "plugin", "check", w, "--count", "334", "--seed", "2026", "--probes", "8",
    ]);
    let (passed, failed) = tally(&out);
    // 8 probes on each task, plus the tool-specs comparison.
    assert_eq!((passed, failed), (1002 * 8 + 1, 0), "{out}");
}

/// A toolset that answers one tool wrongly is caught, naming the tool.
#[test]
fn plugin_check_catches_a_toolset_that_differs() {
    let env = Env::new();
    let dir = env.path("broken");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["travel_common.py", "travel_tool_specs.py"] {
        std::fs::copy(repo(&format!("verifiers/travel/{f}")), dir.join(f)).unwrap();
    }
    let src = std::fs::read_to_string(repo("verifiers/travel/travel_toolset.py")).unwrap();
    // Round the cost estimate wrongly.
    let broken = src.replace(
        "return dict(c, unknown_ids=unknown)",
        "return dict(c, total=c[\"total\"] + 1, unknown_ids=unknown)",
    );
    assert_ne!(src, broken);
    std::fs::write(dir.join("travel_toolset.py"), broken).unwrap();
    let wasm = env.path("broken.wasm");
    env.build_at(&dir.join("travel_toolset.py"), "toolset", &wasm);
    let out = env.fails(
        &["plugin", "check", wasm.to_str().unwrap(), "--count", "1"],
        "tool probes",
    );
    assert!(out.contains("estimate_cost: expected"), "{out}");
    assert!(!out.contains("tool-specs()"), "{out}");

    // A toolset whose specs drift from the native ones is caught too.
    let specs = std::fs::read_to_string(repo("verifiers/travel/travel_tool_specs.py")).unwrap();
    let drifted = specs.replacen("List the states", "List all the states", 1);
    assert_ne!(specs, drifted);
    std::fs::write(dir.join("travel_tool_specs.py"), drifted).unwrap();
    std::fs::write(
        dir.join("travel_toolset.py"),
        std::fs::read_to_string(repo("verifiers/travel/travel_toolset.py")).unwrap(),
    )
    .unwrap();
    env.build_at(&dir.join("travel_toolset.py"), "toolset", &wasm);
    let out = env.fails(
        &["plugin", "check", wasm.to_str().unwrap(), "--count", "1"],
        "tool probes",
    );
    assert!(
        out.contains("FAIL tool-specs(): differ from the native tool specs"),
        "{out}"
    );
    assert!(!out.contains("submit_plan: expected"), "{out}");
}

/// The path by which users add environments: a whole environment written in Python is built,
/// checked, registered, listed, generated into shards (certified by its own verifier, same bytes
/// on a second run) and verified against, like a native one. Registered versions are immutable.
#[test]
fn an_environment_written_in_python_is_registered_and_used_like_a_native_one() {
    let env = Env::new();
    let wasm = env.build("environments/meeting/meeting_scheduling.py", "environment");
    let w = wasm.to_str().unwrap();
    payloads_match_the_published_schemas(&wasm);
    let out = env.ok(&["plugin", "check", w, "--count", "3"]);
    let (passed, failed) = tally(&out);
    assert_eq!((passed, failed), (MEETING_PROBES, 0), "{out}");

    env.fails(
        &[
            "generate",
            "--env",
            "meeting-scheduling",
            "--count",
            "1",
            "--out",
            env.path("none").to_str().unwrap(),
        ],
        "unknown environment `meeting-scheduling`",
    );
    env.ok(&["plugin", "register", w]);
    env.ok(&["plugin", "register", w]); // the same bytes again: nothing changes
    let listed = env.ok(&["envs"]);
    assert!(listed.contains("meeting-scheduling@0.1.0"), "{listed}");
    assert!(listed.contains("find_free_slots"), "{listed}");

    let generate = |dir: &Path| {
        env.ok(&[
            "generate",
            "--env",
            "meeting-scheduling",
            "--count",
            "24",
            "--mix",
            "easy=1,medium=1,hard=1",
            "--format",
            "both",
            "--out",
            dir.to_str().unwrap(),
        ])
    };
    let (a, b) = (env.path("a"), env.path("b"));
    generate(&a);
    generate(&b);
    let tasks = envsynth_shards::read_tasks(&a.join("part-00000-of-00001.parquet")).unwrap();
    assert_eq!(tasks.len(), 24);
    assert_eq!(
        envsynth_shards::read_tasks(&a.join("part-00000-of-00001.jsonl"))
            .unwrap()
            .len(),
        24
    );
    assert_eq!(
        std::fs::read(a.join("part-00000-of-00001.parquet")).unwrap(),
        std::fs::read(b.join("part-00000-of-00001.parquet")).unwrap(),
        "same command, same bytes"
    );
    for t in &tasks {
        assert_eq!(t.environment.to_string(), "meeting-scheduling@0.1.0");
        assert_eq!(t.id, t.compute_id());
        assert!(
            t.certificate.mutants_rejected.len() >= 6,
            "{:?}",
            t.certificate
        );
    }

    // Verify the planted schedules and an empty answer through the registered plugin.
    let subs = env.path("subs.jsonl");
    let mut lines = String::new();
    for (i, t) in tasks.iter().enumerate() {
        let sub: serde_json::Value = if i % 2 == 0 {
            serde_json::from_str(t.reference_solution.get()).unwrap()
        } else {
            serde_json::Value::Null
        };
        lines.push_str(&serde_json::json!({"task_id": t.id, "submission": sub}).to_string());
        lines.push('\n');
    }
    std::fs::write(&subs, lines).unwrap();
    let verdicts = env.path("verdicts.jsonl");
    env.ok(&[
        "verify",
        "--tasks",
        a.to_str().unwrap(),
        "--submissions",
        subs.to_str().unwrap(),
        "--out",
        verdicts.to_str().unwrap(),
    ]);
    let verdicts = std::fs::read_to_string(&verdicts).unwrap();
    let rewards: Vec<f64> = verdicts
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["reward"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(rewards.len(), 24);
    for (i, r) in rewards.iter().enumerate() {
        assert_eq!(*r, if i % 2 == 0 { 1.0 } else { 0.0 }, "{verdicts}");
    }

    // The same tasks imported into a registry and verified by the HTTP server, whose verifier is
    // the registered component running in the sandbox (its verdicts report fuel).
    let db = format!("sqlite://{}", env.path("registry.db").display());
    env.ok(&["registry", "import", a.to_str().unwrap(), "--db", &db]);
    let server = common::Served::start(
        &db,
        &env.path("home"),
        &env.path("cache"),
        "meeting-token-0123456789",
    );
    let (_, envs) = server.request("GET", "/v1/environments/meeting-scheduling/0.1.0", None);
    let envs: serde_json::Value = serde_json::from_str(&envs).unwrap();
    assert_eq!(envs["verifier"]["kind"], "wasm", "{envs}");
    assert_eq!(
        envs["tags"],
        serde_json::json!(["scheduling", "calendar", "tool-use"])
    );
    let items: Vec<serde_json::Value> = tasks
        .iter()
        .take(6)
        .enumerate()
        .map(|(i, t)| {
            let sub: serde_json::Value = if i % 2 == 0 {
                serde_json::from_str(t.reference_solution.get()).unwrap()
            } else {
                serde_json::json!([])
            };
            serde_json::json!({"task_id": t.id, "submission": sub})
        })
        .collect();
    let body = serde_json::json!({"items": items}).to_string();
    let (status, text) = server.request("POST", "/v1/verify/batch", Some(&body));
    assert_eq!(status, 200, "{text}");
    let verdicts: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (i, v) in verdicts["verdicts"].as_array().unwrap().iter().enumerate() {
        assert_eq!(v["passed"], i % 2 == 0, "{v}");
        assert!(
            v["fuel"].as_u64().unwrap() > 0,
            "a sandboxed verdict reports fuel: {v}"
        );
    }
    // Its tools too, run by the component in the sandbox: a result, and an agent's mistake.
    let world: serde_json::Value = serde_json::from_str(tasks[0].world.get()).unwrap();
    let tool = |name: &str, args: &str| {
        let path = format!("/v1/tasks/{}/tools/{name}", tasks[0].id);
        let (status, text) = server.request("POST", &path, Some(args));
        assert_eq!(status, 200, "{text}");
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    let rooms = tool("list_rooms", "{}");
    assert_eq!(rooms["status"], "ok", "{rooms}");
    let ids: Vec<&serde_json::Value> = rooms["result"]["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["id"])
        .collect();
    let want: Vec<&serde_json::Value> = world["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["id"])
        .collect();
    assert_eq!(ids, want);
    let missing = tool("get_busy", r#"{"id": "P999"}"#);
    assert_eq!(
        (&missing["status"], &missing["code"]),
        (&serde_json::json!("error"), &serde_json::json!("not_found")),
        "{missing}"
    );
    // The same tool over MCP: the component answers, and the text is the same tool message.
    let call = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "list_rooms", "arguments": {}}})
    .to_string();
    let path = format!("/v1/tasks/{}/mcp", tasks[0].id);
    let (status, text) = server.request("POST", &path, Some(&call));
    assert_eq!(status, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["result"]["isError"], false, "{v}");
    let message: serde_json::Value =
        serde_json::from_str(v["result"]["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(message, rooms);
    drop(server);

    // Rollouts on the plugin's tasks: the simulated oracle's answers are scored by the
    // component's verifier in the sandbox.
    let ro = env.path("rollouts");
    env.ok(&[
        "rollout",
        "--tasks",
        a.to_str().unwrap(),
        "--policy",
        "sim:oracle",
        "--k",
        "1",
        "--out",
        ro.to_str().unwrap(),
    ]);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ro.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["overall"]["pass_at"]["1"], 1.0, "{summary}");
    assert_eq!(summary["rollouts"], 24);

    // One run over two environments' datasets: each rollout names its environment, and the
    // summary scores each environment apart.
    let travel = env.path("travel");
    env.ok(&[
        "generate",
        "--count",
        "4",
        "--mix",
        "easy",
        "--out",
        travel.to_str().unwrap(),
    ]);
    let mixed = env.path("mixed");
    let brief = env.ok(&[
        "rollout",
        "--tasks",
        a.to_str().unwrap(),
        travel.to_str().unwrap(),
        "--policy",
        "sim:oracle",
        "--k",
        "2",
        "--out",
        mixed.to_str().unwrap(),
    ]);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mixed.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["rollouts"], 2 * (24 + 4));
    for (name, tasks) in [
        ("meeting-scheduling@0.1.0", 24),
        ("travel-planning@0.1.0", 4),
    ] {
        let group = &summary["by_environment"][name];
        assert_eq!(group["tasks"], tasks, "{summary}");
        assert_eq!(group["pass_at"]["1"], 1.0, "{summary}");
    }
    assert!(brief.contains("by_environment"), "{brief}");
    let envs = common::python(
        "import sys, collections, pyarrow.parquet as pq\n\
         t = pq.read_table(sys.argv[1])\n\
         print(sorted(collections.Counter(t.column('environment').to_pylist()).items()))",
        &[mixed.join("rollouts.parquet").to_str().unwrap()],
    );
    assert_eq!(
        envs,
        "[('meeting-scheduling@0.1.0', 48), ('travel-planning@0.1.0', 8)]"
    );

    // A different component under the same id@version is refused.
    let src = std::fs::read_to_string(repo("environments/meeting/meeting_scheduling.py")).unwrap();
    let changed = env.path("meeting_scheduling.py");
    std::fs::write(&changed, src.replace("Phone booth", "Phone box")).unwrap();
    let wasm2 = env.path("changed.wasm");
    env.build_at(&changed, "environment", &wasm2);
    env.fails(
        &["plugin", "register", wasm2.to_str().unwrap()],
        "already registered with different content",
    );
}

fn schema(name: &str) -> jsonschema::Validator {
    let text = std::fs::read_to_string(repo(&format!("verifiers/schema/{name}"))).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

fn conforms(name: &str, v: &serde_json::Value) {
    if let Some(e) = schema(name).iter_errors(v).next() {
        panic!("{name}: {} at {}: {v:.300}", e, e.instance_path());
    }
}

/// Every payload that crosses the WIT boundary of an environment component has a published
/// schema beside the WIT, and the example environment's payloads conform to them.
fn payloads_match_the_published_schemas(wasm: &Path) {
    use envsynth_sandbox::{Limits, Sandbox, World};
    use serde_json::{Value, json};
    let sb = Sandbox::new(None).unwrap();
    let p = sb.load_file(wasm, World::Environment).unwrap();
    let limits = Limits::default();
    let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap();
    let spec = parse(&p.spec(&limits).unwrap().value);
    conforms("environment-spec.schema.json", &spec);
    let tools = parse(&p.tool_specs(&limits).unwrap().value);
    conforms("tool-specs.schema.json", &tools);
    for level in spec["levels"].as_array().unwrap() {
        let request =
            json!({"seed": 1, "index": 2, "level": level, "overrides": null, "attempt": 0});
        conforms("generate-request.schema.json", &request);
        let generated = match p.generate(&limits, &request.to_string()).unwrap() {
            Ok(out) => parse(&out.value),
            Err(rejection) => {
                conforms("generate-rejection.schema.json", &parse(&rejection));
                continue;
            }
        };
        conforms("generated-task.schema.json", &generated);
        let state = json!({"world": generated["world"], "constraints": generated["constraints"]});
        conforms("world-state.schema.json", &state);
        for (tool, args) in [
            ("list_people", json!({})),
            ("get_busy", json!({"id": "P1", "day": 2})),
            ("get_busy", json!({"id": "nobody"})),
            (
                "check_room",
                json!({"room": "R1", "day": 9, "start": "10:00", "duration_min": 30}),
            ),
            ("no_such_tool", json!({})),
        ] {
            let out = p
                .call_tool(&limits, &state.to_string(), tool, &args.to_string())
                .unwrap();
            conforms("tool-result.schema.json", &parse(&out.value));
        }
        let task = json!({"id": "t", "world": generated["world"], "constraints": generated["constraints"]});
        for sub in [
            generated["reference_solution"].clone(),
            Value::Null,
            json!(42),
        ] {
            let out = p
                .verify(&limits, &task.to_string(), &sub.to_string())
                .unwrap();
            conforms("verdict.schema.json", &parse(&out.value));
        }
    }
    let bad =
        json!({"seed": 1, "index": 2, "level": "impossible", "overrides": null, "attempt": 0});
    let rejection = p.generate(&limits, &bad.to_string()).unwrap().unwrap_err();
    conforms("generate-rejection.schema.json", &parse(&rejection));
}

/// The environment suite's probes of the meeting environment at `--count 3`: 4 per task
/// (planted, empty, garbage, nested lists) for 3 tasks at each of 3 levels, one variety probe
/// per level, and on each level's first task its 5 tools called with two kinds of wrong
/// arguments plus an unknown tool.
const MEETING_PROBES: usize = 3 * 3 * 4 + 3 + 3 * (5 * 2 + 1);

/// A chat-completions server on loopback that answers from a script: `reply(brief, attempt)`
/// gives the reply's text (`None`: a 503). It records every request's body.
struct ScriptedModel {
    addr: std::net::SocketAddr,
    requests: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl ScriptedModel {
    fn start(reply: impl Fn(&str, usize) -> Option<String> + Send + 'static) -> ScriptedModel {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0;
                let mut line = String::new();
                let mut first = true;
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    if first {
                        assert!(line.starts_with("POST /v1/chat/completions "), "{line}");
                        first = false;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let messages = request["messages"].as_array().unwrap();
                let brief = messages[1]["content"].as_str().unwrap();
                let name = brief.split('`').nth(1).unwrap().to_string();
                let attempt = messages.len() / 2;
                seen.lock().unwrap().push(request.clone());
                let (status, body) = match reply(&name, attempt) {
                    Some(text) => (
                        "200 OK",
                        serde_json::json!({
                            "id": "x", "object": "chat.completion", "model": request["model"],
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": text}}],
                            "usage": {"prompt_tokens": 1000 * attempt, "completion_tokens": 10}
                        })
                        .to_string(),
                    ),
                    None => ("503 Service Unavailable", "{}".to_string()),
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        ScriptedModel { addr, requests }
    }

    fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The requests made for `name`, in order.
    fn requests_for(&self, name: &str) -> Vec<serde_json::Value> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| {
                r["messages"][1]["content"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("`{name}`"))
            })
            .cloned()
            .collect()
    }
}

fn last_message(request: &serde_json::Value) -> String {
    let m = request["messages"].as_array().unwrap();
    m[m.len() - 1]["content"].as_str().unwrap().to_string()
}

fn outcomes(record: &serde_json::Value) -> Vec<String> {
    record["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap().to_string())
        .collect()
}

/// DeepSeek-V3.2's environment synthesis through `envsynth synthesize`: a model (a scripted
/// server) writes whole environments; each attempt is built, loaded and checked, its problems go
/// back to the model, and what passes is registered and generates like any environment.
#[test]
fn a_model_writes_environments_and_is_told_what_failed() {
    let env = Env::new();
    let meeting =
        std::fs::read_to_string(repo("environments/meeting/meeting_scheduling.py")).unwrap();
    let named = {
        let meeting = meeting.clone();
        move |id: &str| {
            meeting.replace(
                "ENV_ID = \"meeting-scheduling\"",
                &format!("ENV_ID = \"{id}\""),
            )
        }
    };
    let block = |code: &str| format!("Here is the module.\n\n```python\n{code}```\n");
    let second_run = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = second_run.clone();
    let script_named = named.clone();
    let model = ScriptedModel::start(move |name, attempt| {
        let named = &script_named;
        let rooms = named("rooms");
        let clone = named("clone");
        match (name, attempt) {
            ("rooms", 1) => Some("I would start by modelling the rooms.".into()),
            ("rooms", 2) => Some(block(&rooms.replace("def hhmm(slot):", "def hhmm(slot)"))),
            // The verifier never fails the capacity check, so its mutant is not caught.
            ("rooms", 3) => Some(block(&rooms.replace(
                "checks.append(check(\"schedule.room_capacity\", bad,",
                "checks.append(check(\"schedule.room_capacity\", [],",
            ))),
            ("rooms", 4) => Some(format!(
                "<think>```python\nnot this\n```</think>{}",
                block(&rooms)
            )),
            ("clone", 1) => Some(block(&meeting)),
            // Every task the same, whatever the seed and index.
            ("clone", 2) => Some(block(&clone.replace(
                "request[\"seed\"], request[\"index\"], level, attempt))",
                "0, 0, level, attempt))",
            ))),
            ("loop", _) => Some(block(&format!("while True:\n    pass\n{}", named("loop")))),
            // Its tools crash on arguments they do not know.
            ("clone", 3) => Some(block(&clone.replace(
                "        if k not in schema[\"properties\"]:\n            raise ToolError(\"invalid_arguments\", \"%s: arguments: unexpected property %s\" % (name, k))\n",
                "        pass\n",
            ))),
            ("clone", _) => Some("Sorry, I cannot.".into()),
            // The first run gets one reply, then the server fails.
            ("flaky", 1) if !flag.load(std::sync::atomic::Ordering::SeqCst) => {
                Some("Not yet.".into())
            }
            ("flaky", _) if !flag.load(std::sync::atomic::Ordering::SeqCst) => None,
            ("flaky", _) => Some("No code today.".into()),
            _ => panic!("unexpected request for {name} attempt {attempt}"),
        }
    });
    let briefs = env.path("briefs.jsonl");
    std::fs::write(
        &briefs,
        [
            r#"{"name": "rooms", "brief": "Book meeting rooms around calendars."}"#,
            r#"{"name": "clone", "brief": "Another scheduler."}"#,
            r#"{"name": "flaky", "brief": "A brief the server fails on."}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let out = env.path("synth");
    let url = model.url();
    let args = [
        "synthesize",
        "--briefs",
        briefs.to_str().unwrap(),
        "--policy",
        &url,
        "--model",
        "writer",
        "--retries",
        "0",
        "--register",
        "--out",
        out.to_str().unwrap(),
    ];
    let text = env.fails(&args, "1 brief(s) unfinished because the server failed");
    assert!(
        text.contains("3 brief(s): 1 passed, 1 failed, 1 unfinished (8 attempts; 20000 prompt and 80 completion tokens)"),
        "{text}"
    );
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(out.join(name).join("synthesis.json")).unwrap())
            .unwrap()
    };

    // rooms: no code, a syntax error, a mutant its verifier misses, then a module that passes.
    let rooms = read("rooms");
    assert_eq!(
        outcomes(&rooms),
        ["no_code", "build_failed", "check_failed", "passed"]
    );
    assert_eq!(rooms["passed"], true);
    assert_eq!(rooms["environment"], "rooms@0.1.0");
    assert_eq!(rooms["registered"], true);
    assert_eq!(rooms["probes_passed"], MEETING_PROBES);
    assert!(
        rooms["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "find_free_slots")
    );
    assert_eq!(rooms["messages"].as_array().unwrap().len(), 2 + 4 + 3);
    let asked = model.requests_for("rooms");
    assert_eq!(asked.len(), 4);
    let system = asked[0]["messages"][0]["content"].as_str().unwrap();
    assert!(
        system.contains("world environment {") && system.contains("class WitWorld"),
        "{system}"
    );
    assert_eq!(asked[0]["model"], "writer");
    assert!(last_message(&asked[1]).contains("no ```python block"));
    let syntax = last_message(&asked[2]);
    assert!(
        syntax.contains("did not build") && syntax.contains("SyntaxError"),
        "{syntax}"
    );
    assert!(!syntax.contains("Stack backtrace"), "{syntax}");
    let missed = last_message(&asked[3]);
    assert!(
        missed.contains("mutant for schedule.room_capacity was not rejected")
            && missed.contains("at level easy")
            && missed.contains("disagrees with the verifier every time"),
        "{missed}"
    );
    // Each reply and its feedback stay in the conversation; each request has its own seed.
    assert_eq!(asked[3]["messages"].as_array().unwrap().len(), 2 + 3 * 2);
    let seeds: std::collections::BTreeSet<u64> =
        asked.iter().map(|r| r["seed"].as_u64().unwrap()).collect();
    assert_eq!(seeds.len(), 4);
    assert_eq!(
        std::fs::read(out.join("rooms/environment.py")).unwrap(),
        named("rooms").into_bytes()
    );
    let listed = env.ok(&["envs"]);
    assert!(listed.contains("rooms@0.1.0"), "{listed}");
    let tasks = env.path("rooms-tasks");
    env.ok(&[
        "generate",
        "--env",
        "rooms",
        "--count",
        "6",
        "--out",
        tasks.to_str().unwrap(),
    ]);
    let generated =
        envsynth_shards::read_tasks(&tasks.join("part-00000-of-00001.parquet")).unwrap();
    assert_eq!(generated.len(), 6);
    assert!(
        generated
            .iter()
            .all(|t| t.environment.to_string() == "rooms@0.1.0")
    );
    // ... and plays like one: the oracle's rollouts pass its verifier.
    let played = env.path("rooms-play");
    env.ok(&[
        "rollout",
        "--tasks",
        tasks.to_str().unwrap(),
        "--policy",
        "sim:oracle",
        "--k",
        "1",
        "--out",
        played.to_str().unwrap(),
    ]);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(played.join("summary.json")).unwrap()).unwrap();
    let group = &summary["by_environment"]["rooms@0.1.0"];
    assert_eq!(
        (&group["tasks"], &group["pass_at"]["1"]),
        (&6.into(), &1.0.into()),
        "{summary}"
    );

    // clone: the wrong id, tasks that ignore their seed, tools that crash, then no code.
    let clone = read("clone");
    assert_eq!(
        outcomes(&clone),
        ["load_failed", "check_failed", "check_failed", "no_code"]
    );
    assert_eq!(clone["passed"], false);
    assert_eq!(clone["environment"], serde_json::Value::Null);
    assert!(!out.join("clone/environment.wasm").exists());
    let asked = model.requests_for("clone");
    let wrong_id = last_message(&asked[1]);
    assert!(
        wrong_id.contains("spec() gives the id `meeting-scheduling`; it must be `clone`"),
        "{wrong_id}"
    );
    let same = last_message(&asked[2]);
    assert!(
        same.contains("easy variety: all 3 tasks pose the same problem"),
        "{same}"
    );
    let crash = last_message(&asked[3]);
    assert!(
        crash.contains("easy/0 tool list_people({\"probe\": [[[]]]}): failed instead of answering with an error result"),
        "{crash}"
    );
    assert!(!crash.contains("tool list_people({})"), "{crash}");
    assert!(!listed.contains("clone@"), "{listed}");

    // flaky: the server failed, so nothing final was written and the summary says so.
    assert!(!out.join("flaky/synthesis.json").exists());
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["unfinished"], 1);
    assert_eq!(summary["environments"][2]["outcome"], "unfinished");

    // The same command again finishes only what was left: no request for rooms or clone.
    second_run.store(true, std::sync::atomic::Ordering::SeqCst);
    let before = model.requests.lock().unwrap().len();
    let again = env.ok(&args);
    assert!(
        again.contains("3 brief(s): 1 passed, 2 failed, 0 unfinished (12 attempts; 30000 prompt and 120 completion tokens)"),
        "{again}"
    );
    assert!(
        again.contains("rooms: finished in an earlier run"),
        "{again}"
    );
    assert_eq!(model.requests.lock().unwrap().len(), before + 4);
    assert_eq!(model.requests_for("flaky").len(), 2 + 4);
    assert_eq!(outcomes(&read("flaky")), ["no_code"; 4]);

    // A module that loops forever at import is killed at the build's time limit.
    let looped = env.fails(
        &[
            "synthesize",
            "--brief",
            "Loop.",
            "--name",
            "loop",
            "--attempts",
            "1",
            "--build-timeout",
            "5",
            "--policy",
            &url,
            "--out",
            out.to_str().unwrap(),
        ],
        "no environment passed",
    );
    assert!(
        looped.contains("loop: failed after 1 attempt(s); the last: build_failed"),
        "{looped}"
    );
    let problem = read("loop")["attempts"][0]["problems"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        problem.contains("did not finish building") && problem.contains("within 5 s"),
        "{problem}"
    );
    let before = model.requests.lock().unwrap().len();

    // Bad input is refused by name before any request: a finished brief whose text changed,
    // a bad name, a policy that is not a URL.
    let edited = env.path("edited.jsonl");
    std::fs::write(&edited, r#"{"name": "rooms", "brief": "Something else."}"#).unwrap();
    env.fails(
        &[
            "synthesize",
            "--briefs",
            edited.to_str().unwrap(),
            "--policy",
            &url,
            "--out",
            out.to_str().unwrap(),
        ],
        "was written for another brief of `rooms`",
    );
    let bad = env.path("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"name\": \"ok\", \"brief\": \"x\"}\n{\"name\": \"travel-planning\", \"brief\": \"x\"}\n",
    )
    .unwrap();
    env.fails(
        &[
            "synthesize",
            "--briefs",
            bad.to_str().unwrap(),
            "--policy",
            &url,
            "--out",
            out.to_str().unwrap(),
        ],
        "line 2: name `travel-planning` is a built-in environment's id",
    );
    env.fails(
        &[
            "synthesize",
            "--brief",
            "x",
            "--name",
            "a b",
            "--policy",
            &url,
            "--out",
            out.to_str().unwrap(),
        ],
        "--name: name `a b` must be 1 to 64 characters",
    );
    env.fails(
        &[
            "synthesize",
            "--brief",
            "x",
            "--name",
            "ab",
            "--policy",
            "127.0.0.1:1",
            "--out",
            out.to_str().unwrap(),
        ],
        "must start with http://",
    );
    assert_eq!(model.requests.lock().unwrap().len(), before);
}

/// With `--solver`, an environment that passes the suite is played before it is accepted, as
/// DeepSeek-V3.2 kept only what is hard to solve: one the solver passes too often or never goes
/// back to the model with the numbers; one in between is kept with its pass rate.
#[test]
fn a_solver_plays_what_passes_and_the_model_hears_how_it_went() {
    let env = Env::new();
    let meeting =
        std::fs::read_to_string(repo("environments/meeting/meeting_scheduling.py")).unwrap();
    let model = ScriptedModel::start(move |name, _| {
        let code = meeting.replace(
            "ENV_ID = \"meeting-scheduling\"",
            &format!("ENV_ID = \"{name}\""),
        );
        Some(format!("```python\n{code}```\n"))
    });
    let (url, out) = (model.url(), env.path("synth"));
    let args = |name: &'static str, solver: &str, extra: &[&'static str]| {
        let mut v: Vec<String> = [
            "synthesize",
            "--brief",
            "Book meeting rooms.",
            "--name",
            name,
            "--policy",
            &url,
            "--solver",
            solver,
            "--solve-count",
            "2",
            "--solve-k",
            "2",
            "--register",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    fn as_refs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(out.join(name).join("synthesis.json")).unwrap())
            .unwrap()
    };
    let lines = |p: PathBuf| std::fs::read_to_string(p).unwrap().lines().count();

    // The oracle solves everything: too easy, twice; the model is told the numbers.
    let easy = args(
        "easy",
        "sim:oracle",
        &["--max-pass", "0.5", "--attempts", "2"],
    );
    let text = env.fails(&as_refs(&easy), "no environment passed");
    assert!(
        text.contains("easy: failed after 2 attempt(s); the last: too_easy"),
        "{text}"
    );
    let rec = read("easy");
    assert_eq!(outcomes(&rec), ["too_easy", "too_easy"]);
    assert_eq!(
        (&rec["passed"], &rec["registered"]),
        (&false.into(), &false.into())
    );
    let solve = &rec["attempts"][0]["solve"];
    let tasks = solve["tasks"].as_u64().unwrap();
    assert_eq!(
        tasks,
        2 * 3,
        "two tasks at each of meeting's three levels: {solve}"
    );
    assert_eq!(
        (
            &solve["solver"],
            &solve["rollouts"],
            &solve["passed"],
            &solve["pass_rate"]
        ),
        (
            &"sim-oracle".into(),
            &(2 * tasks).into(),
            &(2 * tasks).into(),
            &1.0.into()
        )
    );
    assert_eq!(solve["by_level"]["hard"], serde_json::json!([4, 4]));
    assert_eq!(lines(out.join("easy/attempts/1/solve/rollouts.jsonl")), 12);
    let told = last_message(&model.requests_for("easy")[1]);
    assert!(
        told.contains("sim-oracle played 6 tasks, 2 times each; of its 12 scored rollouts, 12 passed (100%), more than the share of 0.5 allowed")
            && told.contains("level medium: of 4 scored rollouts, 4 passed (100%)")
            && told.contains("too easy to teach anything"),
        "{told}"
    );
    // The solver's rollouts are a run like any other.
    let viewed = env.ok(&["view", out.join("easy/attempts/2/solve").to_str().unwrap()]);
    assert!(
        viewed.contains("12 rollouts of 6 tasks, 12 passed"),
        "{viewed}"
    );

    // Random answers never pass: unsolved, with what the verifier said about one of them.
    let hard = args("hard", "sim:random", &["--attempts", "1"]);
    env.fails(&as_refs(&hard), "no environment passed");
    let rec = read("hard");
    assert_eq!(outcomes(&rec), ["unsolved"]);
    assert_eq!(rec["attempts"][0]["solve"]["passed"], 0);
    let problems = rec["attempts"][0]["problems"].as_array().unwrap();
    assert!(
        problems[0].as_str().unwrap().contains("0 passed (0%)")
            && problems
                .last()
                .unwrap()
                .as_str()
                .unwrap()
                .contains("one answer to a"),
        "{problems:?}"
    );

    // A solver that slips now and then: kept, registered, its pass rate in the summary.
    let fair = args(
        "fair",
        "sim:noisy:0.4",
        &["--attempts", "1", "--max-pass", "0.95"],
    );
    let text = env.ok(&as_refs(&fair));
    assert!(text.contains("fair: passed at attempt 1"), "{text}");
    let rec = read("fair");
    assert_eq!(outcomes(&rec), ["passed"]);
    assert_eq!(rec["registered"], true);
    let rate = rec["attempts"][0]["solve"]["pass_rate"].as_f64().unwrap();
    assert!(rate > 0.0 && rate <= 0.95, "{rate}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["environments"][0]["pass_rate"], rate, "{summary}");
    assert!(env.ok(&["envs"]).contains("fair@0.1.0"));

    // Bad solver settings are refused by name before any request.
    let before = model.requests.lock().unwrap().len();
    env.fails(
        &as_refs(&args("x1", "sim:genius", &[])),
        "--solver: unknown agent `genius`",
    );
    env.fails(
        &as_refs(&args("x2", "sim:oracle", &["--max-pass", "1"])),
        "--max-pass must be at least 0 and below 1",
    );
    env.fails(
        &as_refs(&args("x3", "local:/nowhere", &[])),
        "--solver local:",
    );
    env.fails(
        &as_refs(&args("x4", "sim:oracle", &["--solve-max-turns", "0"])),
        "--solve-max-turns must be at least 1",
    );
    env.fails(
        &as_refs(&args("x5", "sim:oracle", &["--solve-max-tokens", "0"])),
        "--solve-max-tokens must be at least 1",
    );
    env.fails(
        &as_refs(&args("x7", "sim:oracle", &["--solver-device", "gpu"])),
        "--solver-device applies to --solver local:DIR only",
    );
    // A local solver is loaded once, before any request: one that cannot run on the device
    // asked for (no GPU here, or the tiny preset's shapes) is refused with the reason.
    let tiny = env.path("tiny");
    env.ok(&[
        "model",
        "init",
        "--preset",
        "tiny",
        "--out",
        tiny.to_str().unwrap(),
    ]);
    let local = format!("local:{}", tiny.display());
    let gpu = args("x6", &local, &["--solver-device", "gpu"]);
    let text = env.fails(&as_refs(&gpu), "--solver local:");
    assert!(
        text.contains("no CUDA driver") || text.contains("FlashMLA shapes"),
        "{text}"
    );
    assert_eq!(model.requests.lock().unwrap().len(), before);
    assert!(!out.join("x6").exists());

    // The solver's limits are the rollouts' limits. Random answers call tools for several
    // turns (the `hard` brief above); held to one turn, every rollout stops there.
    let turns = |dir: &str| -> Vec<(u64, String)> {
        std::fs::read_to_string(out.join(dir).join("rollouts.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let r: serde_json::Value = serde_json::from_str(l).unwrap();
                (r["turns"].as_u64().unwrap(), r["stop"]["kind"].to_string())
            })
            .collect()
    };
    assert!(
        turns("hard/attempts/1/solve").iter().any(|(t, _)| *t > 1),
        "{:?}",
        turns("hard/attempts/1/solve")
    );
    let short = args(
        "short",
        "sim:random",
        &["--attempts", "1", "--solve-max-turns", "1"],
    );
    env.fails(&as_refs(&short), "no environment passed");
    assert_eq!(outcomes(&read("short")), ["unsolved"]);
    let played = turns("short/attempts/1/solve");
    assert!(played.iter().all(|(t, _)| *t == 1), "{played:?}");
    assert!(
        played.iter().any(|(_, stop)| stop == "\"turn_limit\""),
        "{played:?}"
    );
}
