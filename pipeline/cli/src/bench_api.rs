//! `envsynth bench-api`: the HTTP API under load on loopback. It registers a travel task set in
//! the given registry (a fresh SQLite file by default), serves it in-process, and drives it
//! with the closed-loop load generator of `envsynth_server::loadgen`:
//!
//! - task sampling (`POST /v1/tasks/sample`, one and 16 tasks per request, a new seed each;
//!   and 16 by curriculum, over recorded outcomes of every other task);
//! - native verification (`POST /v1/verify`, planted plans and empty answers in turn);
//! - native tool calls (`POST /v1/tasks/{id}/tools/{name}`, every tool probe of every task);
//!
//! each against an in-process baseline on the same data (the store call and seeded draw, the
//! prepared verifier), so the table shows what HTTP, JSON and the database add.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use envsynth_core::{Environment, Task, TaskRequest, env::generate};
use envsynth_registry::curriculum;
use envsynth_registry::{
    AnyStore, EnvironmentMetadata, EnvironmentRecord, RolloutRecord, Store, TaskFilter,
};
use envsynth_server::loadgen::{Bytes, Load, Report, run as load};
use envsynth_server::{Config, Verifiers};
use envsynth_travel::TravelPlanning;

#[derive(clap::Args)]
pub struct Args {
    /// Registry to load (default: a fresh SQLite file in a temporary directory). For
    /// PostgreSQL add `?schema=NAME` to keep the benchmark's rows apart.
    #[arg(long)]
    pub db: Option<String>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Tasks in the benchmark's task set.
    #[arg(long, default_value_t = 500)]
    pub tasks: u64,
    /// Server worker threads (default: one per core).
    #[arg(long)]
    pub server_threads: Option<usize>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

struct Row {
    name: &'static str,
    unit: &'static str,
    per_request: u64,
    report: Report,
}

pub fn run(a: Args) -> Result<()> {
    if a.seconds.is_nan() || a.seconds <= 0.0 {
        bail!("--seconds must be positive");
    }
    if a.tasks == 0 || a.connections == 0 {
        bail!("--tasks and --connections must be positive");
    }
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let url =
        a.db.clone()
            .unwrap_or_else(|| format!("sqlite://{}", tmp.path().join("bench.db").display()));

    let env = TravelPlanning::new();
    eprintln!("bench-api: generating {} easy travel tasks ...", a.tasks);
    let tasks: Vec<Task> = (0..a.tasks)
        .map(|index| {
            let req = TaskRequest {
                seed: 0xA91,
                index,
                level: "easy".into(),
                overrides: Value::Null,
            };
            generate(&env, &req)
                .map(|g| g.task)
                .map_err(|e| anyhow::anyhow!("{e}"))
        })
        .collect::<Result<_>>()?;

    let mut server = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = a.server_threads {
        server.worker_threads(n);
    }
    let server = server.enable_all().build()?;
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    let (store, addr) = server.block_on(async {
        let store = AnyStore::open(&url)
            .await
            .with_context(|| format!("opening {url}"))?;
        let spec = env.spec();
        store
            .put_environment(&EnvironmentRecord::from_spec(
                spec,
                EnvironmentMetadata::of_spec(spec),
            ))
            .await?;
        let members: Vec<(String, Task)> = tasks
            .iter()
            .map(|t| ("train".to_string(), t.clone()))
            .collect();
        store.put_task_set("bench", "1", &members).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let verifiers: Arc<dyn Verifiers> = Arc::new(crate::serve::BinaryVerifiers::default());
        let router = envsynth_server::router(store.clone(), verifiers, Config::default());
        tokio::spawn(envsynth_server::serve(
            listener,
            router,
            std::future::pending(),
        ));
        Ok::<_, anyhow::Error>((store, addr))
    })?;

    let duration = Duration::from_secs_f64(a.seconds);
    let post = |path: &str, body: Value| (path.to_string(), Some(Bytes::from(body.to_string())));
    let samples = |n: u32, curriculum: Option<Value>| -> Vec<(String, Option<Bytes>)> {
        (0..4096u64)
            .map(|seed| {
                let mut body =
                    json!({"filter": {"set": "bench@1", "split": "train"}, "seed": seed, "n": n});
                if let Some(c) = &curriculum {
                    body["curriculum"] = c.clone();
                }
                post("/v1/tasks/sample", body)
            })
            .collect()
    };
    let prepared: Vec<_> = tasks
        .iter()
        .map(|t| env.prepare(t))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let answers: Vec<Value> = tasks
        .iter()
        .map(|t| serde_json::from_str(t.reference_solution.get()))
        .collect::<Result<_, _>>()?;
    // Outcomes for the curriculum draws: a group of 8 on every other task, passed 0, 4 or 8
    // times.
    let mut recorded = Vec::new();
    for (k, t) in tasks.iter().enumerate().step_by(2) {
        let passes = [0u64, 4, 8][k / 2 % 3];
        for g in 0..8u64 {
            let answer = if g < passes {
                &answers[k]
            } else {
                &Value::Null
            };
            recorded.push(RolloutRecord {
                rollout_id: format!("bench-{k}-{g}"),
                task_id: t.id.clone(),
                policy: "bench".into(),
                sample_seed: g,
                verdict: prepared[k].verify(answer),
            });
        }
    }
    server.block_on(store.record_rollouts(&recorded))?;
    let curriculum = json!({"policy": "bench", "group": 8});
    let recent = json!({"policy": "bench", "group": 8, "recent": 32});
    let mut verifies = Vec::new();
    for t in &tasks {
        let planted: Value = serde_json::from_str(t.reference_solution.get())?;
        verifies.push(post(
            "/v1/verify",
            json!({"task_id": t.id, "submission": planted}),
        ));
        verifies.push(post(
            "/v1/verify",
            json!({"task_id": t.id, "submission": null}),
        ));
    }
    // The calls the simulated oracle makes (`Environment::tool_probes`: valid, invalid and
    // adversarial calls of every tool), each task's in turn.
    let mut calls = Vec::new();
    let mut tool_calls = Vec::new();
    for (k, t) in tasks.iter().enumerate() {
        for c in env.tool_probes(t).map_err(|e| anyhow::anyhow!("{e}"))? {
            let arguments = c.arguments.to_string();
            let path = format!("/v1/tasks/{}/tools/{}", t.id, c.name);
            tool_calls.push((path, Some(Bytes::from(arguments.clone()))));
            calls.push((k, c.name, arguments));
        }
    }
    let run_load = |requests: Vec<(String, Option<Bytes>)>, secs: Duration| {
        client.block_on(load(&Load {
            addr,
            requests,
            connections: a.connections,
            duration: secs,
        }))
    };
    // Warm-up: every task prepared once, populations cached.
    run_load(verifies.clone(), Duration::from_secs(1)).map_err(|e| anyhow::anyhow!(e))?;
    let mut rows = Vec::new();
    for (name, n, c) in [
        ("sample 1 task", 1u32, None),
        ("sample 16 tasks", 16, None),
        ("sample 16 by curriculum", 16, Some(curriculum)),
        ("sample 16 by curriculum, latest 32", 16, Some(recent)),
    ] {
        let report = run_load(samples(n, c), duration).map_err(|e| anyhow::anyhow!(e))?;
        rows.push(Row {
            name,
            unit: "tasks",
            per_request: n.into(),
            report,
        });
    }
    let report = run_load(verifies, duration).map_err(|e| anyhow::anyhow!(e))?;
    rows.push(Row {
        name: "verify (native)",
        unit: "verdicts",
        per_request: 1,
        report,
    });
    let report = run_load(tool_calls, duration).map_err(|e| anyhow::anyhow!(e))?;
    rows.push(Row {
        name: "tool call (native)",
        unit: "calls",
        per_request: 1,
        report,
    });
    let report =
        run_load(vec![("/health".into(), None)], duration).map_err(|e| anyhow::anyhow!(e))?;
    rows.push(Row {
        name: "health (HTTP + one query)",
        unit: "requests",
        per_request: 1,
        report,
    });

    // Baselines without HTTP: the store's population query and the seeded draw, once per
    // request as the server does on a cache miss; and the prepared verifier alone.
    let filter = TaskFilter {
        set: Some(("bench".into(), "1".into())),
        split: Some("train".into()),
        ..TaskFilter::default()
    };
    let population = server.block_on(store.candidates(&filter))?;
    let none = Default::default();
    let start = Instant::now();
    let mut draws = 0u64;
    while start.elapsed() < duration {
        let rev = server.block_on(store.revision())?;
        std::hint::black_box(envsynth_registry::seeded_sample(
            &population,
            draws ^ rev,
            1,
            &none,
        ));
        draws += 1;
    }
    let in_process_sample = draws as f64 / start.elapsed().as_secs_f64();
    // The curriculum draw as the server makes it: the policy's outcomes, the prior, the
    // weights, the weighted draw; over all outcomes, then each task's latest 32.
    let mut in_process_curriculum = [0.0; 2];
    for (rate, recent) in in_process_curriculum.iter_mut().zip([None, Some(32)]) {
        let start = Instant::now();
        let mut draws = 0u64;
        while start.elapsed() < duration {
            let outcomes = server.block_on(store.outcomes("bench", recent))?;
            std::hint::black_box(curriculum::draw(
                &population,
                &outcomes,
                8,
                draws,
                16,
                &none,
            ));
            draws += 1;
        }
        *rate = draws as f64 / start.elapsed().as_secs_f64();
    }
    let start = Instant::now();
    let mut verdicts = 0u64;
    while start.elapsed() < duration {
        let k = verdicts as usize % tasks.len();
        let answer = if verdicts.is_multiple_of(2) {
            &answers[k]
        } else {
            &Value::Null
        };
        std::hint::black_box(prepared[k].verify(answer));
        verdicts += 1;
    }
    let in_process_verify = verdicts as f64 / start.elapsed().as_secs_f64();
    // A tool call as the server and the rollout engine make it: the arguments' text parsed,
    // the tool run, its result serialized as the tool message.
    let start = Instant::now();
    let mut answered = 0usize;
    while start.elapsed() < duration {
        let (k, name, arguments) = &calls[answered % calls.len()];
        let result = prepared[*k].call_tool_text(name, arguments);
        std::hint::black_box(serde_json::to_vec(&result)?);
        answered += 1;
    }
    let in_process_tools = answered as f64 / start.elapsed().as_secs_f64();

    let database = if url.starts_with("sqlite") {
        "sqlite"
    } else {
        "postgres"
    };
    if a.json {
        let out: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "name": r.name, "requests_per_s": r.report.per_second(),
                    "items_per_s": r.report.per_second() * r.per_request as f64, "unit": r.unit,
                    "p50_us": r.report.p50_us, "p99_us": r.report.p99_us, "max_us": r.report.max_us,
                    "errors": r.report.errors,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "database": database, "connections": a.connections, "tasks": a.tasks,
                "seconds": a.seconds, "http": out,
                "in_process": {"sample_1_per_s": in_process_sample,
                               "curriculum_16_per_s": in_process_curriculum[0],
                               "curriculum_16_latest_32_per_s": in_process_curriculum[1],
                               "verify_per_s": in_process_verify,
                               "tool_call_per_s": in_process_tools},
            }))?
        );
    } else {
        println!(
            "database {database}, {} connections, {} tasks, {} s each",
            a.connections, a.tasks, a.seconds
        );
        println!(
            "{:<36} {:>10} {:>14} {:>9} {:>9} {:>9} {:>7}",
            "HTTP", "req/s", "items/s", "p50 ms", "p99 ms", "max ms", "errors"
        );
        for r in &rows {
            println!(
                "{:<36} {:>10.0} {:>9.0} {:<4} {:>9.2} {:>9.2} {:>9.2} {:>7}",
                r.name,
                r.report.per_second(),
                r.report.per_second() * r.per_request as f64,
                r.unit.get(..4).unwrap_or(r.unit),
                r.report.p50_us as f64 / 1000.0,
                r.report.p99_us as f64 / 1000.0,
                r.report.max_us as f64 / 1000.0,
                r.report.errors
            );
        }
        println!("in-process baselines (one thread, no HTTP)");
        println!("  revision query + seeded draw of 1 task   {in_process_sample:>10.0} /s");
        println!(
            "  outcomes query + prior + draw of 16      {:>10.0} /s",
            in_process_curriculum[0]
        );
        println!(
            "  the same, each task's latest 32          {:>10.0} /s",
            in_process_curriculum[1]
        );
        println!("  prepared native verify                   {in_process_verify:>10.0} /s");
        println!("  prepared native tool call + its JSON     {in_process_tools:>10.0} /s");
    }
    for r in &rows {
        if let Some(e) = &r.report.first_error {
            eprintln!(
                "bench-api: {}: {} errors, first: {e}",
                r.name, r.report.errors
            );
        }
    }
    Ok(())
}
