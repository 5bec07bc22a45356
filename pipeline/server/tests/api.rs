//! The HTTP API over real loopback HTTP, against both stores (SQLite in a temporary file,
//! PostgreSQL at `$ENVSYNTH_TEST_PG` in a fresh schema). Every response is checked against the
//! checked-in OpenAPI document; every refused request must leave the server serving.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::{Value, json};

use envsynth_core::{EnvRef, Environment, Task, TaskRequest, env::generate};
use envsynth_registry::{AnyStore, EnvironmentMetadata, EnvironmentRecord, Store};
use envsynth_server::{Config, OPENAPI, Resolved, Verifiers};
use envsynth_travel::TravelPlanning;

const TOKEN: &str = "test-token-0123456789abcdef";

struct Native(Arc<TravelPlanning>);

impl Verifiers for Native {
    fn environment(&self, env: &EnvRef) -> Result<Resolved, String> {
        if *env != self.0.spec().env_ref() {
            return Err(format!("no environment {env}"));
        }
        Ok(Resolved {
            env: self.0.clone(),
            sandboxed: false,
        })
    }
}

fn pg_url(test: &str) -> String {
    let base = std::env::var("ENVSYNTH_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    format!("{base}?schema=api_{test}_{}", std::process::id())
}

struct Server {
    base: String,
    http: reqwest::Client,
    tasks: Vec<Task>,
    doc: Value,
    _dir: tempfile::TempDir,
}

/// A registry with the travel environment and a task set `trips@1` (train: 6 easy tasks, test:
/// 2 hard ones), served on a free loopback port.
async fn start(url: Option<String>, config: Config) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let url = url.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("r.db").display()));
    let store = AnyStore::open(&url)
        .await
        .unwrap_or_else(|e| panic!("opening {url} (PostgreSQL must be running): {e}"));
    let env = Arc::new(TravelPlanning::new());
    let spec = env.spec();
    store
        .put_environment(&EnvironmentRecord::from_spec(
            spec,
            EnvironmentMetadata::of_spec(spec),
        ))
        .await
        .unwrap();
    let make = |index: u64, level: &str| {
        generate(
            env.as_ref(),
            &TaskRequest {
                seed: 31,
                index,
                level: level.into(),
                overrides: Value::Null,
            },
        )
        .unwrap()
        .task
    };
    let mut tasks: Vec<Task> = (0..6).map(|i| make(i, "easy")).collect();
    tasks.extend((6..8).map(|i| make(i, "hard")));
    let members: Vec<(String, Task)> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (if i < 6 { "train" } else { "test" }.to_string(), t.clone()))
        .collect();
    store.put_task_set("trips", "1", &members).await.unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let router = envsynth_server::router(store, Arc::new(Native(env)), config);
    tokio::spawn(envsynth_server::serve(
        listener,
        router,
        std::future::pending(),
    ));
    Server {
        base: format!("http://{addr}"),
        // Pooled, as a trainer's client is: `early_refusals_close_their_connection` depends on it.
        http: reqwest::Client::new(),
        tasks,
        doc: serde_json::from_str(OPENAPI).unwrap(),
        _dir: dir,
    }
}

fn config() -> Config {
    Config {
        max_body: 256 << 10,
        token: Some(TOKEN.into()),
        prepared_cache: 4,
    }
}

impl Server {
    /// Send a request; check the response against the OpenAPI document (the operation at
    /// `route`, or the shared error schema for unrouted requests) and that the server still
    /// answers /health. Returns the status and the JSON body.
    async fn call(
        &self,
        method: &str,
        route: &str,
        path: &str,
        body: Option<Body>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        match body {
            Some(Body::Json(v)) => req = req.json(&v),
            Some(Body::Raw(content_type, bytes)) => {
                req = req.header("content-type", content_type).body(bytes)
            }
            None => {}
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let unauthorized_header = resp.headers().get("www-authenticate").is_some();
        let text = resp.text().await.unwrap();
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: {status} body is not JSON ({e}): {text}"));
        if status == 401 {
            assert!(unauthorized_header, "401 without WWW-Authenticate");
        }
        self.conforms(method, route, status, &v);
        if status >= 400 {
            // The error names something: it is never empty.
            let m = v["error"]["message"].as_str().unwrap_or_default();
            assert!(!m.is_empty(), "{method} {path}: empty error message");
            assert_ne!(status, 500, "{method} {path}: internal error {v}");
            let health = self
                .http
                .get(format!("{}/health", self.base))
                .send()
                .await
                .unwrap();
            assert_eq!(
                health.status(),
                200,
                "the server stopped serving after {path}"
            );
        }
        (status, v)
    }

    fn conforms(&self, method: &str, route: &str, status: u16, v: &Value) {
        let schema = if route.is_empty() {
            json!({"$ref": "#/components/schemas/Error"})
        } else {
            let op = &self.doc["paths"][route][method.to_ascii_lowercase()];
            assert!(op.is_object(), "{method} {route} is not in openapi.json");
            let r = &op["responses"][status.to_string()];
            assert!(
                r.is_object(),
                "{method} {route}: status {status} is not documented: {v}"
            );
            r["content"]["application/json"]["schema"].clone()
        };
        let mut root = self.doc.clone();
        root.as_object_mut().unwrap().remove("paths");
        for (k, val) in schema.as_object().unwrap() {
            root[k] = val.clone();
        }
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&root)
            .unwrap();
        let errors: Vec<String> = validator.iter_errors(v).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "{method} {route} {status} does not match openapi.json: {errors:?}\n{v}"
        );
    }

    async fn get(&self, route: &str, path: &str) -> (u16, Value) {
        self.call("GET", route, path, None, None).await
    }

    async fn post(&self, route: &str, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", route, path, Some(Body::Json(body)), None)
            .await
    }

    fn planted(&self, i: usize) -> Value {
        serde_json::from_str(self.tasks[i].reference_solution.get()).unwrap()
    }
}

enum Body {
    Json(Value),
    Raw(&'static str, Vec<u8>),
}

fn message(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or_default()
}

async fn discovery(s: &Server) {
    let (st, v) = s.get("/health", "/health").await;
    assert_eq!((st, v["status"].as_str()), (200, Some("ok")));

    let (st, v) = s
        .get("/v1/environments", "/v1/environments?tag=travel")
        .await;
    assert_eq!(st, 200);
    assert_eq!(v["environments"][0]["id"], "travel-planning");
    assert_eq!(v["environments"][0]["license"], "Apache-2.0");
    let (_, v) = s
        .get("/v1/environments", "/v1/environments?q=MULTI-DAY")
        .await;
    assert_eq!(v["environments"].as_array().unwrap().len(), 1);
    let (_, v) = s
        .get("/v1/environments", "/v1/environments?tag=cooking")
        .await;
    assert_eq!(v["environments"], json!([]));
    let version = TravelPlanning::new().spec().version.clone();
    let route = "/v1/environments/{id}/{version}";
    let (st, v) = s
        .get(
            route,
            &format!("/v1/environments/travel-planning/{version}"),
        )
        .await;
    assert_eq!((st, v["version"].as_str()), (200, Some(version.as_str())));
    let (st, v) = s.get(route, "/v1/environments/travel-planning/0.0.0").await;
    assert_eq!(st, 404);
    assert!(message(&v).contains("travel-planning@0.0.0"), "{v}");
    let (st, v) = s.get("/v1/environments", "/v1/environments?limit=0").await;
    assert_eq!(st, 422);
    assert!(message(&v).contains("limit"), "{v}");

    let (st, v) = s
        .get("/v1/task-sets/{name}/{version}", "/v1/task-sets/trips/1")
        .await;
    assert_eq!(st, 200);
    assert_eq!(
        v["splits"],
        json!([{"name": "test", "tasks": 2}, {"name": "train", "tasks": 6}])
    );

    // Count and range by index.
    let (st, v) = s
        .get(
            "/v1/tasks",
            "/v1/tasks?set=trips@1&split=train&offset=2&limit=3",
        )
        .await;
    assert_eq!(st, 200);
    let want: Vec<&str> = s.tasks[2..5].iter().map(|t| t.id.as_str()).collect();
    assert_eq!(v["task_ids"], json!(want));
    assert_eq!(
        (v["total"].as_u64(), v["next_offset"].as_u64()),
        (Some(6), Some(5))
    );
    let (_, v) = s.get("/v1/tasks", "/v1/tasks?level=hard&limit=0").await;
    assert_eq!(
        (v["total"].as_u64(), v["task_ids"].clone()),
        (Some(2), json!([]))
    );
    let (_, v) = s
        .get("/v1/tasks", "/v1/tasks?env=travel-planning&offset=7")
        .await;
    assert_eq!(
        (
            v["task_ids"].as_array().unwrap().len(),
            v["next_offset"].clone()
        ),
        (1, Value::Null)
    );
    for (query, status, needle) in [
        ("/v1/tasks?colour=red", 400, "colour"),
        ("/v1/tasks?limit=lots", 400, "limit"),
        ("/v1/tasks?limit=1&limit=2", 400, "more than once"),
        ("/v1/tasks?split=train", 422, "split"),
        ("/v1/tasks?set=trips", 422, "set"),
        ("/v1/tasks?min_pass=0.5", 422, "policy"),
        ("/v1/tasks?policy=p&min_pass=2", 422, "min_pass"),
        ("/v1/tasks?limit=10001", 422, "limit"),
    ] {
        let (st, v) = s.get("/v1/tasks", query).await;
        assert_eq!(st, status, "{query}: {v}");
        assert!(message(&v).contains(needle), "{query}: {v}");
    }

    let (st, v) = s
        .get(
            "/v1/tasks/{task_id}",
            &format!("/v1/tasks/{}", s.tasks[3].id),
        )
        .await;
    assert_eq!(st, 200);
    let back: Task = serde_json::from_value(v).unwrap();
    assert_eq!(back.id, s.tasks[3].id);
    let (st, _) = s.get("/v1/tasks/{task_id}", "/v1/tasks/sha256:00").await;
    assert_eq!(st, 404);
}

async fn sampling(s: &Server) {
    let route = "/v1/tasks/sample";
    let train: BTreeSet<&str> = s.tasks[..6].iter().map(|t| t.id.as_str()).collect();
    let body = |seed: u64, n: u32, exclude: Vec<&str>| json!({"filter": {"set": "trips@1", "split": "train"}, "seed": seed, "n": n, "exclude": exclude});
    let (st, a) = s.post(route, route, body(7, 3, vec![])).await;
    assert_eq!(st, 200);
    assert_eq!(a["population"], 6);
    let (_, again) = s.post(route, route, body(7, 3, vec![])).await;
    assert_eq!(a["task_ids"], again["task_ids"], "same seed, same sample");
    let ids: Vec<&str> = a["task_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), 3);
    assert!(ids.iter().all(|id| train.contains(id)));
    let mut differs = false;
    for seed in 8..16 {
        let (_, b) = s.post(route, route, body(seed, 3, vec![])).await;
        differs |= b["task_ids"] != a["task_ids"];
    }
    assert!(differs, "other seeds draw other samples");
    // Exclusions: with 4 of 6 excluded, only the other 2 can come back.
    let excluded: Vec<&str> = s.tasks[..4].iter().map(|t| t.id.as_str()).collect();
    let (_, rest) = s.post(route, route, body(1, 5, excluded)).await;
    let got: BTreeSet<&str> = rest["task_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(got, s.tasks[4..6].iter().map(|t| t.id.as_str()).collect());
    for (b, needle) in [
        (body(1, 0, vec![]), "n:"),
        (body(1, 5000, vec![]), "n:"),
        (json!({"seed": 1}), "n"),
        (
            json!({"seed": 1, "n": 1, "filter": {"colour": "red"}}),
            "colour",
        ),
        (json!({"seed": -1, "n": 1}), "seed"),
        (
            json!({"seed": 1, "n": 1, "filter": {"split": "train"}}),
            "filter.split",
        ),
    ] {
        let (st, v) = s.post(route, route, b.clone()).await;
        assert!(st == 422 || st == 400, "{b}: {st} {v}");
        assert!(message(&v).contains(needle), "{b}: {v}");
    }
}

/// Curriculum sampling: outcomes recorded through the API steer the draw toward tasks whose
/// next group is likely to be mixed.
async fn curriculum(s: &Server) {
    let route = "/v1/tasks/sample";
    let verdict = |i: usize, passed: bool, mask: bool| {
        let kind = match (passed, mask) {
            (true, _) => "none",
            (false, true) => "sandbox_timeout",
            (false, false) => "wrong_answer",
        };
        json!({"task_id": s.tasks[i].id, "reward": if passed { 1.0 } else { 0.0 }, "passed": passed,
               "failure_kind": kind, "mask": mask, "checks": []})
    };
    // Policy `cur` on the train split: task 0 always passed, task 1 never, task 2 half the time,
    // task 3 only masked (so untried), task 4 failed 16 times and then passed 8 of 16, task 5
    // untried.
    let mut plan: Vec<(usize, bool, bool)> = Vec::new();
    for k in 0..16 {
        plan.extend([(0, true, false), (1, false, false), (2, k % 2 == 0, false)]);
        plan.extend([(3, false, true), (4, false, false)]);
    }
    plan.extend((0..16).map(|k| (4, k % 2 == 1, false)));
    let rollouts: Vec<Value> = plan
        .iter()
        .enumerate()
        .map(|(n, &(i, passed, mask))| {
            json!({"rollout_id": format!("cur-{n}"), "task_id": s.tasks[i].id, "policy": "cur",
                   "sample_seed": n, "verdict": verdict(i, passed, mask)})
        })
        .collect();
    let (st, v) = s
        .call(
            "POST",
            "/v1/rollouts",
            "/v1/rollouts",
            Some(Body::Json(json!({ "rollouts": rollouts }))),
            Some(TOKEN),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let body = |seed: u64, n: u32, curriculum: Value| json!({"filter": {"set": "trips@1", "split": "train"}, "seed": seed, "n": n, "curriculum": curriculum});
    // Every task's weight, by task index.
    let weights = |v: &Value| -> Vec<f64> {
        let c = &v["curriculum"];
        let mut w = vec![f64::NAN; 6];
        for (id, m) in v["task_ids"]
            .as_array()
            .unwrap()
            .iter()
            .zip(c["mixed"].as_array().unwrap())
        {
            let i = s
                .tasks
                .iter()
                .position(|t| t.id == id.as_str().unwrap())
                .unwrap();
            w[i] = m.as_f64().unwrap();
        }
        w
    };
    let (st, all) = s
        .post(route, route, body(1, 6, json!({"policy": "cur"})))
        .await;
    assert_eq!(st, 200, "{all}");
    let c = &all["curriculum"];
    assert_eq!(
        (c["group"].as_u64(), c["tried"].as_u64()),
        (Some(8), Some(4)),
        "{c}"
    );
    let w = weights(&all);
    assert!(w[2] > w[3] && w[3] > w[0] && w[3] > w[1], "{w:?}");
    assert_eq!(w[3], w[5], "masked outcomes count for nothing");
    assert!(w[4] > w[0] && w[4] < w[2], "{w:?}: task 4 passed 8 of 32");
    let mean = c["population_mixed"].as_f64().unwrap();
    assert!((mean - w.iter().sum::<f64>() / 6.0).abs() < 1e-12);
    let (_, again) = s
        .post(route, route, body(1, 6, json!({"policy": "cur"})))
        .await;
    assert_eq!(all, again, "same revision and seed, same draw");
    // Only the latest 16: task 4 now looks exactly like task 2.
    let (_, recent) = s
        .post(
            route,
            route,
            body(1, 6, json!({"policy": "cur", "recent": 16})),
        )
        .await;
    let w = weights(&recent);
    assert_eq!(w[4], w[2], "{w:?}");
    // Drawn in proportion: the mixed task first far more often than the always-passed one.
    let mut firsts = [0u32; 6];
    for seed in 0..200 {
        let (_, v) = s
            .post(
                route,
                route,
                body(seed, 1, json!({"policy": "cur", "group": 4})),
            )
            .await;
        let id = v["task_ids"][0].as_str().unwrap();
        firsts[s.tasks.iter().position(|t| t.id == id).unwrap()] += 1;
    }
    assert!(
        firsts[2] > 2 * firsts[0] && firsts[2] > 2 * firsts[1],
        "{firsts:?}"
    );
    // A policy with no outcomes: a uniform prior, every weight 1 - 2 / (G + 1).
    let (_, fresh) = s
        .post(
            route,
            route,
            body(3, 6, json!({"policy": "nobody", "group": 8})),
        )
        .await;
    assert_eq!(
        fresh["curriculum"]["prior"],
        json!({"alpha": 1.0, "beta": 1.0})
    );
    assert!(
        weights(&fresh)
            .iter()
            .all(|m| (m - 7.0 / 9.0).abs() < 1e-12),
        "{fresh}"
    );
    // Exclusions hold.
    let mut b = body(1, 6, json!({"policy": "cur"}));
    b["exclude"] = json!([s.tasks[2].id]);
    let (_, v) = s.post(route, route, b).await;
    assert_eq!(v["task_ids"].as_array().unwrap().len(), 5);
    assert!(
        !v["task_ids"]
            .as_array()
            .unwrap()
            .contains(&json!(s.tasks[2].id))
    );
    // A uniform draw reports no curriculum.
    let (_, v) = s.post(route, route, json!({"seed": 1, "n": 2})).await;
    assert!(v.get("curriculum").is_none(), "{v}");
    for (c, needle) in [
        (json!({"policy": "cur", "group": 1}), "curriculum.group"),
        (json!({"policy": "cur", "recent": 0}), "curriculum.recent"),
        (json!({"policy": ""}), "curriculum.policy"),
        (json!({"policy": "cur", "temperature": 2}), "temperature"),
        (json!({"group": 8}), "policy"),
    ] {
        let (st, v) = s.post(route, route, body(1, 2, c.clone())).await;
        assert!(st == 422 || st == 400, "{c}: {st} {v}");
        assert!(message(&v).contains(needle), "{c}: {v}");
    }
}

/// The task's tools over MCP (Streamable HTTP, one JSON body a request).
async fn mcp(s: &Server) {
    let route = "/v1/tasks/{task_id}/mcp";
    let t = &s.tasks[0];
    let path = format!("/v1/tasks/{}/mcp", urlencode(&t.id));
    let rpc = |id: u64, method: &str, params: Value| json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    let (st, v) = s
        .post(
            route,
            &path,
            rpc(
                1,
                "initialize",
                json!({"protocolVersion": "2025-06-18",
            "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}}),
            ),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["id"], 1);
    let r = &v["result"];
    assert_eq!(r["protocolVersion"], "2025-06-18");
    assert_eq!(r["capabilities"]["tools"]["listChanged"], false);
    let user = &t.prompt.iter().find(|m| m.role == "user").unwrap().content;
    assert!(r["instructions"].as_str().unwrap().contains(user.as_str()));
    let (_, v) = s
        .post(
            route,
            &path,
            rpc(2, "initialize", json!({"protocolVersion": "2099-01-01"})),
        )
        .await;
    assert_eq!(
        v["result"]["protocolVersion"], "2025-11-25",
        "the newest, for the client to judge"
    );
    // Notifications and client responses: 202, no body.
    for msg in [
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 9, "result": {}}),
    ] {
        let resp = s
            .http
            .post(format!("{}{path}", s.base))
            .json(&msg)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "{msg}");
        assert!(resp.text().await.unwrap().is_empty());
    }
    let (_, v) = s.post(route, &path, rpc(3, "ping", Value::Null)).await;
    assert_eq!(v["result"], json!({}));
    let (_, v) = s.post(route, &path, rpc(4, "tools/list", json!({}))).await;
    let tools = v["result"]["tools"].as_array().unwrap();
    assert_eq!(tools.len(), t.tools.len());
    for (got, want) in tools.iter().zip(t.tools.iter()) {
        assert_eq!(
            (&got["name"], &got["description"], &got["inputSchema"]),
            (
                &json!(want.name),
                &json!(want.description),
                &want.parameters
            )
        );
    }
    // Every probe with an arguments object: the text is the tool message a rollout records.
    let env = TravelPlanning::new();
    let prepared = env.prepare(t).unwrap();
    let (mut ok, mut errors) = (0, 0);
    for (k, call) in env.tool_probes(t).unwrap().into_iter().enumerate() {
        if !call.arguments.is_object() {
            continue;
        }
        let want = prepared.call_tool(&call);
        let (st, v) = s
            .post(
                route,
                &path,
                rpc(
                    10 + k as u64,
                    "tools/call",
                    json!({"name": call.name, "arguments": call.arguments}),
                ),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        if let envsynth_core::ToolResult::Error {
            code: envsynth_core::model::ToolErrorCode::UnknownTool,
            ..
        } = want
        {
            assert_eq!(v["error"]["code"], -32602, "{v}");
            continue;
        }
        let r = &v["result"];
        assert_eq!(r["content"][0]["type"], "text");
        assert_eq!(
            r["content"][0]["text"],
            json!(serde_json::to_string(&want).unwrap()),
            "{}",
            call.name
        );
        let is_error = matches!(want, envsynth_core::ToolResult::Error { .. });
        assert_eq!(r["isError"], is_error);
        if is_error { errors += 1 } else { ok += 1 }
    }
    assert!(ok >= 3 && errors >= 3, "{ok} ok, {errors} errors");
    // Clients of 2025-06-18 and later (by their header) get each tool's output schema, and a
    // successful call's envelope as structured content that the schema accepts.
    let versioned = |version: &'static str, msg: Value| {
        let req = s
            .http
            .post(format!("{}{path}", s.base))
            .header("mcp-protocol-version", version)
            .json(&msg);
        async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let v: Value = resp.json().await.unwrap();
            s.conforms("POST", route, 200, &v);
            v
        }
    };
    let v = versioned("2025-03-26", rpc(4, "tools/list", json!({}))).await;
    assert!(
        v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t.get("outputSchema").is_none()),
        "{v}"
    );
    for version in ["2025-06-18", "2025-11-25"] {
        let v = versioned(version, rpc(4, "tools/list", json!({}))).await;
        let mut schemas = std::collections::BTreeMap::new();
        for (got, want) in v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .zip(t.tools.iter())
        {
            assert_eq!(
                got["outputSchema"],
                json!({"type": "object",
                       "properties": {"status": {"const": "ok"}, "result": want.result},
                       "required": ["status", "result"]}),
                "{}",
                want.name
            );
            schemas.insert(
                want.name.clone(),
                jsonschema::validator_for(&got["outputSchema"]).unwrap(),
            );
        }
        let (mut structured, mut plain) = (0, 0);
        for (k, call) in env.tool_probes(t).unwrap().into_iter().enumerate() {
            if !call.arguments.is_object() || !schemas.contains_key(&call.name) {
                continue;
            }
            let msg = rpc(
                100 + k as u64,
                "tools/call",
                json!({"name": call.name, "arguments": call.arguments}),
            );
            let r = versioned(version, msg).await["result"].clone();
            let text: Value =
                serde_json::from_str(r["content"][0]["text"].as_str().unwrap()).unwrap();
            if r["isError"] == true {
                assert!(r.get("structuredContent").is_none(), "{r}");
                plain += 1;
            } else {
                assert_eq!(r["structuredContent"], text, "{}", call.name);
                assert!(
                    schemas[&call.name].is_valid(&r["structuredContent"]),
                    "{}: {r}",
                    call.name
                );
                structured += 1;
            }
        }
        assert!(
            structured >= 3 && plain >= 3,
            "{structured} structured, {plain} plain"
        );
    }
    let (st, v) = s
        .post(
            route,
            &path,
            rpc(
                5,
                "tools/call",
                json!({"name": "teleport", "arguments": {}}),
            ),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_i64()),
        (200, Some(-32602)),
        "{v}"
    );
    assert!(message(&v).contains("teleport"), "{v}");
    let (_, v) = s
        .post(
            route,
            &path,
            rpc(
                6,
                "tools/call",
                json!({"name": t.tools[0].name, "arguments": [1]}),
            ),
        )
        .await;
    assert!(message(&v).contains("params.arguments"), "{v}");
    let (st, v) = s
        .post(route, &path, rpc(7, "server/discover", json!({})))
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_i64()),
        (200, Some(-32601)),
        "{v}"
    );
    // Malformed messages and requests.
    let bad = [
        (json!([rpc(1, "ping", Value::Null)]), 400, -32600, "batches"),
        (
            json!({"jsonrpc": "1.0", "id": 1, "method": "ping"}),
            400,
            -32600,
            "jsonrpc",
        ),
        (
            json!({"jsonrpc": "2.0", "id": {"x": 1}, "method": "ping"}),
            400,
            -32600,
            "id",
        ),
        (json!({"jsonrpc": "2.0", "id": 1}), 400, -32600, "method"),
        (
            rpc(1, "initialize", json!({})),
            200,
            -32602,
            "protocolVersion",
        ),
    ];
    for (msg, status, code, needle) in bad {
        let (st, v) = s.post(route, &path, msg.clone()).await;
        assert_eq!(
            (st, v["error"]["code"].as_i64()),
            (status, Some(code)),
            "{msg}: {v}"
        );
        assert!(message(&v).contains(needle), "{msg}: {v}");
    }
    let raw = Body::Raw("application/json", b"{not json".to_vec());
    let (st, v) = s.call("POST", route, &path, Some(raw), None).await;
    assert_eq!(
        (st, v["error"]["code"].as_i64()),
        (400, Some(-32700)),
        "{v}"
    );
    let (st, v) = s
        .post(
            route,
            "/v1/tasks/sha256:nope/mcp",
            rpc(1, "tools/list", json!({})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].as_i64()),
        (404, Some(-32602)),
        "{v}"
    );
    let (st, v) = s
        .post(
            route,
            "/v1/tasks/sha256:nope/mcp",
            rpc(1, "tools/call", json!({"name": "x"})),
        )
        .await;
    assert_eq!(st, 404, "{v}");
    // A page elsewhere may not drive it (DNS rebinding), nor a revision not spoken here.
    for (name, value, status, needle) in [
        ("origin", "http://evil.example", 403, "Origin"),
        (
            "mcp-protocol-version",
            "2026-07-28",
            400,
            "MCP-Protocol-Version",
        ),
    ] {
        let resp = s
            .http
            .post(format!("{}{path}", s.base))
            .header(name, value)
            .json(&rpc(1, "ping", Value::Null))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), status);
        let v: Value = resp.json().await.unwrap();
        s.conforms("POST", route, status, &v);
        assert!(message(&v).contains(needle), "{v}");
    }
    let same_origin = s.base.clone();
    let resp = s
        .http
        .post(format!("{}{path}", s.base))
        .header("origin", same_origin)
        .header("mcp-protocol-version", "2025-11-25")
        .json(&rpc(1, "ping", Value::Null))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (st, _) = s.call("GET", "", &path, None, None).await;
    assert_eq!(st, 405);
}

async fn verification(s: &Server) {
    let route = "/v1/verify";
    let id = &s.tasks[0].id;
    let (st, v) = s
        .post(
            route,
            route,
            json!({"task_id": id, "submission": s.planted(0)}),
        )
        .await;
    assert_eq!((st, v["passed"].as_bool()), (200, Some(true)), "{v}");
    let (_, v) = s
        .post(route, route, json!({"task_id": id, "submission": null}))
        .await;
    assert_eq!(v["failure_kind"], "empty_submission");
    // The model's text, with the plan in a fenced block, and a whole transcript.
    let text = format!(
        "Here is my plan.\n```json\n{}\n```\nHave a good trip!",
        s.planted(0)
    );
    let (_, v) = s
        .post(route, route, json!({"task_id": id, "response": text}))
        .await;
    assert_eq!(v["passed"], true, "{v}");
    let messages = json!([
        {"role": "user", "content": "plan my trip"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "1"}]},
        {"role": "tool", "content": "[]"},
        {"role": "assistant", "content": [{"type": "text", "text": text}]}
    ]);
    let (_, v) = s
        .post(route, route, json!({"task_id": id, "messages": messages}))
        .await;
    assert_eq!(v["passed"], true, "{v}");
    // A transcript that ends in a submit tool call: the first submission the tool accepted is
    // the answer, as `envsynth rollout` reads it (a rejected call before it does not count).
    let call = |id: &str, plan: &Value| {
        json!({"id": id, "type": "function", "function": {"name": "submit_plan",
            "arguments": json!({"plan": plan}).to_string()}})
    };
    let ok = json!({"status": "ok", "result": {"accepted": true}}).to_string();
    let refused =
        json!({"status": "error", "code": "invalid_arguments", "message": "no"}).to_string();
    let transcript = |first: &str| {
        json!([
            {"role": "user", "content": "plan my trip"},
            {"role": "assistant", "content": null, "tool_calls": [call("a", &json!({}))]},
            {"role": "tool", "tool_call_id": "a", "content": first},
            {"role": "assistant", "content": "", "tool_calls": [call("b", &s.planted(0)), {"id": "c"}]},
            {"role": "tool", "tool_call_id": "b", "content": ok},
        ])
    };
    let (_, v) = s
        .post(
            route,
            route,
            json!({"task_id": id, "messages": transcript(&refused)}),
        )
        .await;
    assert_eq!(v["passed"], true, "{v}");
    let (_, v) = s
        .post(
            route,
            route,
            json!({"task_id": id, "messages": transcript(&ok)}),
        )
        .await;
    assert_eq!(
        (v["passed"].as_bool(), v["failure_kind"].as_str()),
        (Some(false), Some("empty_submission")),
        "{v}"
    );
    let (_, v) = s
        .post(
            route,
            route,
            json!({"task_id": id, "response": "I could not find a plan."}),
        )
        .await;
    assert_eq!(
        (v["passed"].as_bool(), v["mask"].as_bool()),
        (Some(false), Some(false))
    );
    for (b, status, needle) in [
        (json!({"task_id": id}), 422, "exactly one"),
        (
            json!({"task_id": id, "submission": 1, "response": "x"}),
            422,
            "exactly one",
        ),
        (
            json!({"task_id": id, "messages": [{"role": "user", "content": "hi"}]}),
            422,
            "assistant",
        ),
        (
            json!({"task_id": "sha256:nope", "submission": null}),
            404,
            "task_id",
        ),
        (json!({"task_id": id, "answer": 1}), 422, "answer"),
    ] {
        let (st, v) = s.post(route, route, b.clone()).await;
        assert_eq!(st, status, "{b}: {v}");
        assert!(message(&v).contains(needle), "{b}: {v}");
    }

    // A batch keeps its order; more tasks than the prepared cache holds are fine.
    let route = "/v1/verify/batch";
    let items: Vec<Value> = (0..8)
        .map(|i| {
            if i % 2 == 0 {
                json!({"task_id": s.tasks[i].id, "submission": s.planted(i)})
            } else {
                json!({"task_id": s.tasks[i].id, "submission": {}})
            }
        })
        .collect();
    let (st, v) = s.post(route, route, json!({"items": items})).await;
    assert_eq!(st, 200, "{v}");
    let verdicts = v["verdicts"].as_array().unwrap();
    for (i, verdict) in verdicts.iter().enumerate() {
        assert_eq!(verdict["task_id"], json!(s.tasks[i].id));
        assert_eq!(verdict["passed"], i % 2 == 0, "item {i}: {verdict}");
    }
    let mut bad = items.clone();
    bad[2] = json!({"task_id": s.tasks[2].id});
    let (st, v) = s.post(route, route, json!({"items": bad})).await;
    assert_eq!(st, 422);
    assert!(message(&v).contains("items[2]"), "{v}");
    bad[2] = json!({"task_id": "sha256:gone", "submission": 1});
    let (st, v) = s.post(route, route, json!({"items": bad})).await;
    assert_eq!(st, 404);
    assert!(message(&v).contains("items[2].task_id"), "{v}");
    let (st, _) = s.post(route, route, json!({"items": []})).await;
    assert_eq!(st, 422);
}

async fn rollouts_and_writes(s: &Server) {
    let route = "/v1/rollouts";
    let id = &s.tasks[1].id;
    let rollouts: Vec<Value> = (0..4)
        .map(|k| {
            let answer = if k == 0 { s.planted(1) } else { Value::Null };
            json!({"rollout_id": format!("r{k}"), "task_id": id, "policy": "p-1", "sample_seed": k, "submission": answer})
        })
        .collect();
    let body = json!({"rollouts": rollouts});
    let (st, v) = s
        .call("POST", route, route, Some(Body::Json(body.clone())), None)
        .await;
    assert_eq!(st, 401, "{v}");
    let (st, _) = s
        .call(
            "POST",
            route,
            route,
            Some(Body::Json(body.clone())),
            Some("guess-guess-guess-guess"),
        )
        .await;
    assert_eq!(st, 401);
    let (st, v) = s
        .call(
            "POST",
            route,
            route,
            Some(Body::Json(body.clone())),
            Some(TOKEN),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["created"].as_u64(), v["rewards"][0].as_f64()),
        (Some(4), Some(1.0))
    );
    let (_, v) = s
        .call("POST", route, route, Some(Body::Json(body)), Some(TOKEN))
        .await;
    assert_eq!(v["created"], 0, "idempotent by rollout_id");
    // A verdict computed elsewhere is recorded as given (after checks).
    let (_, verdict) = s
        .post(
            "/v1/verify",
            "/v1/verify",
            json!({"task_id": id, "submission": s.planted(1)}),
        )
        .await;
    let posted = json!({"rollouts": [{"rollout_id": "r4", "task_id": id, "policy": "p-1", "sample_seed": 4, "verdict": verdict}]});
    let (st, _) = s
        .call("POST", route, route, Some(Body::Json(posted)), Some(TOKEN))
        .await;
    assert_eq!(st, 200);
    let droute = "/v1/tasks/{task_id}/difficulty";
    let (st, v) = s
        .get(droute, &format!("/v1/tasks/{id}/difficulty?k=1,2,9"))
        .await;
    assert_eq!(st, 200, "{v}");
    let p = &v["policies"][0];
    assert_eq!(
        (p["attempts"].as_u64(), p["passes"].as_u64()),
        (Some(5), Some(2))
    );
    assert!((p["pass_at"]["1"].as_f64().unwrap() - 0.4).abs() < 1e-12);
    // 1 - C(3,2)/C(5,2) = 0.7
    assert!((p["pass_at"]["2"].as_f64().unwrap() - 0.7).abs() < 1e-12);
    assert_eq!(p["pass_at"]["9"], Value::Null);
    // pass^k: 2/5 = 0.4, then C(2,2)/C(5,2) = 0.1.
    assert!((p["pass_hat"]["1"].as_f64().unwrap() - 0.4).abs() < 1e-12);
    assert!((p["pass_hat"]["2"].as_f64().unwrap() - 0.1).abs() < 1e-12);
    assert_eq!(p["pass_hat"]["9"], Value::Null);
    let (st, _) = s.get(droute, "/v1/tasks/sha256:nope/difficulty").await;
    assert_eq!(st, 404);
    let (st, _) = s
        .get(droute, &format!("/v1/tasks/{id}/difficulty?k=0"))
        .await;
    assert_eq!(st, 400);

    // The difficulty band now selects the task: p-1 passed it 2 of 5 times.
    let (_, v) = s
        .get(
            "/v1/tasks",
            "/v1/tasks?policy=p-1&min_pass=0.3&max_pass=0.5",
        )
        .await;
    assert_eq!(v["task_ids"], json!([id]));
    let (_, v) = s
        .post(
            "/v1/tasks/sample",
            "/v1/tasks/sample",
            json!({"filter": {"policy": "p-1", "max_pass": 0.1}, "seed": 1, "n": 4}),
        )
        .await;
    assert_eq!(v["population"], 0);

    // A batch naming an unknown task records nothing.
    let bad = json!({"rollouts": [
        {"rollout_id": "r5", "task_id": id, "policy": "p-1", "sample_seed": 5, "submission": null},
        {"rollout_id": "r6", "task_id": "sha256:gone", "policy": "p-1", "sample_seed": 6, "submission": null}
    ]});
    let (st, v) = s
        .call("POST", route, route, Some(Body::Json(bad)), Some(TOKEN))
        .await;
    assert_eq!(st, 404);
    assert!(message(&v).contains("rollouts[1]"), "{v}");
    let (_, v) = s.get(droute, &format!("/v1/tasks/{id}/difficulty")).await;
    assert_eq!(v["policies"][0]["attempts"], 5);
    let bad_reward = json!({"rollouts": [{"rollout_id": "r7", "task_id": id, "policy": "p", "sample_seed": 1,
        "verdict": {"task_id": id, "reward": 7.0, "passed": true, "failure_kind": "none", "mask": false, "checks": []}}]});
    let (st, v) = s
        .call(
            "POST",
            route,
            route,
            Some(Body::Json(bad_reward)),
            Some(TOKEN),
        )
        .await;
    assert_eq!(st, 422);
    assert!(message(&v).contains("rollouts[0].verdict.reward"), "{v}");

    // Registering environment versions: immutable.
    let route = "/v1/environments/{id}/{version}";
    let mut rec = json!({"id": "toy", "version": "1.0.0", "content_hash": "sha256:aa", "description": "a toy",
        "tags": ["toy"], "baselines": [{"policy": "random", "metric": "pass@1", "value": 0.0}]});
    let put = |rec: &Value, token: Option<&'static str>| {
        let rec = rec.clone();
        async move {
            s.call(
                "PUT",
                route,
                "/v1/environments/toy/1.0.0",
                Some(Body::Json(rec)),
                token,
            )
            .await
        }
    };
    assert_eq!(put(&rec, None).await.0, 401);
    assert_eq!(put(&rec, Some(TOKEN)).await.0, 201);
    assert_eq!(
        put(&rec, Some(TOKEN)).await,
        (200, json!({"result": "unchanged"}))
    );
    rec["content_hash"] = json!("sha256:bb");
    let (st, v) = put(&rec, Some(TOKEN)).await;
    assert_eq!(st, 409);
    assert!(message(&v).contains("toy@1.0.0"), "{v}");
    let (_, v) = s.get(route, "/v1/environments/toy/1.0.0").await;
    assert_eq!(v["content_hash"], "sha256:aa", "the original is kept");
    assert_eq!(v["baselines"][0]["policy"], "random");
    rec["version"] = json!("2.0.0");
    let (st, v) = put(&rec, Some(TOKEN)).await;
    assert_eq!(st, 422);
    assert!(message(&v).contains("version"), "{v}");
    rec["version"] = json!("1.0.0");
    rec["tags"] = json!(["Not A Tag"]);
    let (st, v) = s
        .call("PUT", route, "/v1/environments/toy/1.0.1", Some(Body::Json(json!({
            "id": "toy", "version": "1.0.1", "content_hash": "sha256:cc", "description": "", "tags": ["Not A Tag"]}))), Some(TOKEN))
        .await;
    assert_eq!(st, 422);
    assert!(message(&v).contains("tags[0]"), "{v}");
}

/// Malformed, oversized, unauthenticated and hostile requests are refused with the right status,
/// as JSON, and the server keeps serving (checked after each by `call`).
async fn hostile_requests(s: &Server) {
    let v = "/v1/verify";
    for (body, status, needle) in [
        (
            Body::Raw("application/json", b"{\"task_id\": ".to_vec()),
            400,
            "",
        ),
        (
            Body::Raw("application/json", b"[1, 2, 3]".to_vec()),
            422,
            "",
        ),
        (Body::Raw("text/plain", b"{}".to_vec()), 415, "Content-Type"),
        (
            Body::Raw("application/json", vec![0xff, 0xfe, 0x00]),
            400,
            "",
        ),
        (
            Body::Raw("application/json", {
                let mut big = b"{\"task_id\": \"x\", \"submission\": \"".to_vec();
                big.extend(std::iter::repeat_n(b'a', 300 << 10));
                big.extend(b"\"}");
                big
            }),
            413,
            "max-body",
        ),
    ] {
        let (st, resp) = s.call("POST", v, v, Some(body), None).await;
        assert_eq!(st, status, "{resp}");
        assert!(message(&resp).contains(needle), "{resp}");
    }
    // An oversized write is refused too, and unauthenticated before its body is read.
    let big = Body::Raw("application/json", vec![b' '; 300 << 10]);
    let (st, _) = s
        .call("POST", "/v1/rollouts", "/v1/rollouts", Some(big), None)
        .await;
    assert_eq!(st, 401);
    let big = Body::Raw("application/json", vec![b' '; 300 << 10]);
    let (st, _) = s
        .call(
            "POST",
            "/v1/rollouts",
            "/v1/rollouts",
            Some(big),
            Some(TOKEN),
        )
        .await;
    assert_eq!(st, 413);

    // SQL in every string a query reaches: refused or harmless, never an error, never a leak.
    let evil = [
        "' OR '1'='1",
        "x'; DROP TABLE tasks; --",
        "%",
        "\" OR 1=1 --",
        "travel-planning' --",
    ];
    for e in evil {
        let enc = urlencode(e);
        for (route, path) in [
            ("/v1/environments", format!("/v1/environments?q={enc}")),
            ("/v1/environments", format!("/v1/environments?tag={enc}")),
            ("/v1/tasks", format!("/v1/tasks?env={enc}")),
            ("/v1/tasks", format!("/v1/tasks?level={enc}&limit=0")),
            ("/v1/tasks", format!("/v1/tasks?set=trips@{enc}")),
            ("/v1/tasks", format!("/v1/tasks?policy={enc}")),
        ] {
            let (st, v) = s.get(route, &path).await;
            assert_eq!(st, 200, "{path}: {v}");
            let n = v["environments"]
                .as_array()
                .or(v["task_ids"].as_array())
                .map_or(0, Vec::len);
            assert_eq!(n, 0, "{path} matched something: {v}");
        }
        let (st, _) = s
            .get("/v1/tasks/{task_id}", &format!("/v1/tasks/{enc}"))
            .await;
        assert_eq!(st, 404);
        let (st, _) = s
            .get(
                "/v1/environments/{id}/{version}",
                &format!("/v1/environments/{enc}/{enc}"),
            )
            .await;
        assert_eq!(st, 404);
        let (st, _) = s
            .post(
                "/v1/tasks/sample",
                "/v1/tasks/sample",
                json!({"filter": {"env": e, "policy": e}, "seed": 1, "n": 1}),
            )
            .await;
        assert_eq!(st, 200);
    }
    // Everything is still there.
    let (_, v) = s.get("/v1/tasks", "/v1/tasks?limit=0").await;
    assert_eq!(v["total"], 8);

    let (st, v) = s.get("", "/v2/nothing").await;
    assert_eq!(st, 404);
    assert!(message(&v).contains("/v2/nothing"));
    let (st, v) = s.call("DELETE", "", "/v1/tasks", None, None).await;
    assert_eq!(st, 405);
    assert!(message(&v).contains("DELETE"), "{v}");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn read_only_without_token(url: Option<String>) {
    let s = start(
        url,
        Config {
            token: None,
            ..config()
        },
    )
    .await;
    let body = json!({"rollouts": [{"rollout_id": "r", "task_id": s.tasks[0].id, "policy": "p", "sample_seed": 1, "submission": null}]});
    let (st, v) = s
        .call(
            "POST",
            "/v1/rollouts",
            "/v1/rollouts",
            Some(Body::Json(body)),
            Some(TOKEN),
        )
        .await;
    assert_eq!(st, 403);
    assert!(message(&v).contains("ENVSYNTH_TOKEN"), "{v}");
}

/// A request refused before its body is read (401) or part way through it (413) leaves the rest
/// of the body on the connection, so the server closes it after answering. The answer must say
/// so (`Connection: close`): a pooled client would otherwise send its next request down that
/// connection and fail with a broken pipe, which before the header happened on about 3% of
/// these rounds.
async fn early_refusals_close_their_connection(s: &Server) {
    let big = vec![b' '; 300 << 10];
    for round in 0..300 {
        let mut request = s
            .http
            .post(format!("{}/v1/rollouts", s.base))
            .header("content-type", "application/json")
            .body(big.clone());
        let expected = if round % 2 == 0 {
            401
        } else {
            request = request.bearer_auth(TOKEN);
            413
        };
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("round {round}: the refusal did not arrive: {e}"));
        assert_eq!(response.status(), expected, "round {round}");
        if expected == 401 {
            // Refused before a byte of the body was read: always announced.
            assert_eq!(
                response.headers().get("connection").map(|v| v.as_bytes()),
                Some(&b"close"[..]),
                "round {round}: {:?}",
                response.headers()
            );
        }
        s.http
            .get(format!("{}/health", s.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("round {round}: the next request on the pool failed: {e}"));
    }
    // A request whose body was read to its end keeps its connection.
    let response = s
        .http
        .post(format!("{}/v1/tasks/sample", s.base))
        .json(&json!({"filter": {"set": "trips@1"}, "seed": 7, "n": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("connection").is_none(),
        "{:?}",
        response.headers()
    );
}

/// A trainer's agent loop calls the tools over HTTP and gets what `envsynth rollout` gives its
/// agent: every tool probe of the environment (valid, invalid and adversarial calls) answers as
/// the native tools do, byte for byte.
async fn tool_calls(s: &Server) {
    let route = "/v1/tasks/{task_id}/tools/{name}";
    let env = TravelPlanning::new();
    let path =
        |t: &Task, name: &str| format!("/v1/tasks/{}/tools/{}", urlencode(&t.id), urlencode(name));
    let mut calls = 0;
    for t in [&s.tasks[0], &s.tasks[7]] {
        let prepared = env.prepare(t).unwrap();
        for call in env.tool_probes(t).unwrap() {
            let args = call.arguments.to_string();
            let body = Body::Raw("application/json", args.clone().into_bytes());
            let (st, v) = s
                .call("POST", route, &path(t, &call.name), Some(body), None)
                .await;
            assert_eq!(st, 200, "{}: {v}", call.name);
            let want = prepared.call_tool_text(&call.name, &args);
            assert_eq!(
                v,
                serde_json::to_value(&want).unwrap(),
                "{} {args}",
                call.name
            );
            calls += 1;
        }
    }
    assert!(calls > 20, "only {calls} probes");
    // The response's text is the tool message a rollout records.
    let t = &s.tasks[0];
    let name = &t.tools[0].name;
    let args = env
        .tool_probes(t)
        .unwrap()
        .into_iter()
        .find(|c| &c.name == name)
        .unwrap()
        .arguments
        .to_string();
    let text = s
        .http
        .post(format!("{}{}", s.base, path(t, name)))
        .body(args.clone())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let want = env.prepare(t).unwrap().call_tool_text(name, &args);
    assert_eq!(text, serde_json::to_string(&want).unwrap());
    assert!(text.starts_with("{\"status\":\"ok\""), "{text}");
    // The agent's mistakes are results it reads; a missing task is an HTTP error.
    for (name, body, code, needle) in [
        (
            name.as_str(),
            "{\"city\": ",
            "invalid_arguments",
            "not valid JSON",
        ),
        (name.as_str(), "", "invalid_arguments", "not valid JSON"),
        ("launch_rocket", "{}", "unknown_tool", "launch_rocket"),
    ] {
        let raw = Body::Raw("application/json", body.as_bytes().to_vec());
        let (st, v) = s.call("POST", route, &path(t, name), Some(raw), None).await;
        assert_eq!(
            (st, v["status"].as_str(), v["code"].as_str()),
            (200, Some("error"), Some(code)),
            "{v}"
        );
        assert!(v["message"].as_str().unwrap().contains(needle), "{v}");
    }
    let raw = Body::Raw("application/json", b"{}".to_vec());
    let (st, v) = s
        .call(
            "POST",
            route,
            &format!("/v1/tasks/sha256%3Anope/tools/{name}"),
            Some(raw),
            None,
        )
        .await;
    assert_eq!(st, 404);
    assert!(message(&v).contains("task_id: no task sha256:nope"), "{v}");
    let big = Body::Raw("application/json", vec![b' '; 300 << 10]);
    let (st, v) = s.call("POST", route, &path(t, name), Some(big), None).await;
    assert_eq!(st, 413);
    assert!(message(&v).contains("max-body"), "{v}");
    let raw = Body::Raw("application/json", vec![0xff, 0xfe]);
    let (st, _) = s.call("POST", route, &path(t, name), Some(raw), None).await;
    assert_eq!(st, 400);
}

async fn all(url: Option<String>) {
    let s = start(url.clone(), config()).await;
    discovery(&s).await;
    sampling(&s).await;
    verification(&s).await;
    tool_calls(&s).await;
    rollouts_and_writes(&s).await;
    curriculum(&s).await;
    mcp(&s).await;
    hostile_requests(&s).await;
    early_refusals_close_their_connection(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    all(None).await;
    read_only_without_token(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    all(Some(pg_url("all"))).await;
    read_only_without_token(Some(pg_url("ro"))).await;
}

/// The served document is the checked-in one, it lists exactly the routes the router has, and
/// its Verdict is the published verdict schema.
#[tokio::test]
async fn openapi_matches_the_router() {
    let s = start(None, config()).await;
    let served: Value = s
        .http
        .get(format!("{}/openapi.json", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, s.doc);
    let source = include_str!("../src/lib.rs");
    let routed: BTreeSet<String> = source
        .split(".route(")
        .skip(1)
        .map(|rest| rest.trim_start().split('"').nth(1).unwrap().to_string())
        .collect();
    let documented: BTreeSet<String> = s.doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(routed, documented);
    let mut verdict: Value = serde_json::from_str(include_str!(
        "../../../verifiers/schema/verdict.schema.json"
    ))
    .unwrap();
    verdict.as_object_mut().unwrap().remove("$schema");
    verdict.as_object_mut().unwrap().remove("$id");
    assert_eq!(s.doc["components"]["schemas"]["Verdict"], verdict);
    // Every operation documents its errors with the Error schema, except the MCP endpoint,
    // which answers in JSON-RPC as its clients expect.
    for (path, item) in s.doc["paths"].as_object().unwrap() {
        let schema = if path.ends_with("/mcp") {
            "#/components/schemas/JsonRpcResponse"
        } else {
            "#/components/schemas/Error"
        };
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            for (status, r) in op["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"], schema,
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
}
