//! `envsynth bench-rollout`: what the rollout engine costs per tool step.
//!
//! 1. End to end: the oracle plays travel tasks through the simulated policy over loopback HTTP,
//!    many rollouts at once, for a fixed time: rollouts/s, tool steps/s, and the process's CPU
//!    time per step (engine, HTTP client, simulated server and tools together).
//! 2. Engine alone, one core: the same conversations replayed from memory by an in-process
//!    policy on a single-threaded runtime, so what remains is the engine's own work per step
//!    (building requests, parsing tool calls, running the native tools, appending results,
//!    scoring the answer).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use envsynth_core::chat::{ChatMessage, ChatRequest, Usage};
use envsynth_core::{Environment, PreparedTask, Task, TaskRequest, env::generate};
use envsynth_rollout::{ClientOptions, Limits, OpenAiPolicy, Policy, PolicyError, Reply, Rollout};
use envsynth_server::simulated::{self, Agent, Faults};
use envsynth_travel::TravelPlanning;

#[derive(clap::Args)]
pub struct Args {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Rollouts in flight at once (end to end).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Distinct tasks played (medium travel tasks).
    #[arg(long, default_value_t = 64)]
    pub tasks: u64,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The process's user + system CPU time, from /proc (Linux).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Replies recorded from the simulated server, replayed by (sample seed, turn).
struct Replay(HashMap<(u64, usize), (ChatMessage, Usage)>);

impl Policy for Replay {
    fn name(&self) -> &str {
        "replay"
    }
    async fn complete(&self, r: &ChatRequest) -> Result<Reply, PolicyError> {
        let turn = r.messages.iter().filter(|m| m.role == "assistant").count();
        self.0
            .get(&(r.seed.unwrap_or(0), turn))
            .cloned()
            .map(|(message, usage)| Reply::text(message, usage))
            .ok_or_else(|| PolicyError::Refused("no recorded reply".into()))
    }
}

pub fn run(a: Args) -> Result<()> {
    if a.seconds.is_nan() || a.seconds <= 0.0 || a.tasks == 0 {
        bail!("--seconds and --tasks must be positive");
    }
    let env = Arc::new(TravelPlanning::new());
    let tasks: Vec<Task> = (0..a.tasks)
        .map(|index| {
            generate(
                env.as_ref(),
                &TaskRequest {
                    seed: 0xB0,
                    index,
                    level: "medium".into(),
                    overrides: Value::Null,
                },
            )
            .map(|g| g.task)
            .map_err(|e| anyhow::anyhow!("{e}"))
        })
        .collect::<Result<_>>()?;
    let prepared: Vec<Arc<dyn PreparedTask>> = tasks
        .iter()
        .map(|t| {
            env.prepare(t)
                .map(Arc::from)
                .map_err(|e| anyhow::anyhow!("{e}"))
        })
        .collect::<Result<_>>()?;
    let duration = Duration::from_secs_f64(a.seconds);
    let limits = Arc::new(Limits::default());

    // 1. End to end over HTTP.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (rollouts, elapsed, cpu) = rt.block_on(async {
        let verifiers = crate::serve::BinaryVerifiers::default();
        let router = simulated::router(&tasks, &verifiers, Agent::Oracle, Faults::default())
            .map_err(|e| anyhow::anyhow!(e))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(envsynth_server::serve(
            listener,
            router,
            std::future::pending(),
        ));
        let policy = Arc::new(
            OpenAiPolicy::new(
                &format!("http://{addr}/v1"),
                "sim",
                ClientOptions {
                    concurrency: a.concurrency,
                    ..ClientOptions::default()
                },
            )
            .map_err(|e| anyhow::anyhow!(e))?,
        );
        let (cpu0, start) = (cpu_seconds(), Instant::now());
        let mut workers = Vec::new();
        for w in 0..a.concurrency {
            let (policy, limits, tasks, prepared) = (
                policy.clone(),
                limits.clone(),
                tasks.clone(),
                prepared.clone(),
            );
            workers.push(tokio::spawn(async move {
                let mut done: Vec<Rollout> = Vec::new();
                let mut i = w;
                while start.elapsed() < duration {
                    let k = i % tasks.len();
                    let seed = i as u64;
                    done.push(
                        envsynth_rollout::run(
                            policy.as_ref(),
                            &tasks[k],
                            prepared[k].as_ref(),
                            seed,
                            &limits,
                        )
                        .await,
                    );
                    i += a.concurrency;
                }
                done
            }));
        }
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.await?);
        }
        Ok::<_, anyhow::Error>((all, start.elapsed().as_secs_f64(), cpu_seconds() - cpu0))
    })?;
    let steps: u64 = rollouts.iter().map(|r| u64::from(r.tool_steps)).sum();
    let passed = rollouts.iter().filter(|r| r.verdict.passed).count();
    if passed != rollouts.len() {
        bail!(
            "the oracle failed {} of {} rollouts",
            rollouts.len() - passed,
            rollouts.len()
        );
    }

    // 2. The engine alone, replaying the recorded conversations on one thread.
    let mut replies = HashMap::new();
    let mut plays = Vec::new();
    for r in &rollouts {
        let k = tasks.iter().position(|t| t.id == r.task_id).unwrap_or(0);
        let mut turn = 0;
        for m in &r.messages {
            if m.role == "assistant" {
                replies.insert((r.sample_seed, turn), (m.clone(), Usage::default()));
                turn += 1;
            }
        }
        plays.push((k, r.sample_seed));
    }
    let replay = Replay(replies);
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut replayed, mut replay_steps) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < duration {
        let (k, seed) = plays[replayed as usize % plays.len()];
        let r = single.block_on(envsynth_rollout::run(
            &replay,
            &tasks[k],
            prepared[k].as_ref(),
            seed,
            &limits,
        ));
        replay_steps += u64::from(r.tool_steps);
        replayed += 1;
    }
    let replay_secs = start.elapsed().as_secs_f64();

    let result = json!({
        "end_to_end": {
            "rollouts": rollouts.len(), "seconds": elapsed, "concurrency": a.concurrency,
            "rollouts_per_s": rollouts.len() as f64 / elapsed,
            "tool_steps_per_s": steps as f64 / elapsed,
            "cpu_seconds": cpu, "cpu_us_per_step": cpu * 1e6 / steps as f64,
            "steps_per_cpu_second": steps as f64 / cpu,
        },
        "engine_one_core": {
            "rollouts_per_s": replayed as f64 / replay_secs,
            "tool_steps_per_s": replay_steps as f64 / replay_secs,
            "us_per_step": replay_secs * 1e6 / replay_steps as f64,
        },
        "steps_per_rollout": steps as f64 / rollouts.len() as f64,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        let e = &result["end_to_end"];
        let o = &result["engine_one_core"];
        println!(
            "{} medium travel tasks, oracle, {:.1} tool steps per rollout (turns include the submit call)",
            a.tasks,
            result["steps_per_rollout"].as_f64().unwrap_or(0.0)
        );
        println!(
            "end to end over HTTP, {} in flight: {:.0} rollouts/s, {:.0} tool steps/s, {:.1} µs CPU per step (all threads: engine + client + simulated server)",
            a.concurrency,
            e["rollouts_per_s"].as_f64().unwrap_or(0.0),
            e["tool_steps_per_s"].as_f64().unwrap_or(0.0),
            e["cpu_us_per_step"].as_f64().unwrap_or(0.0)
        );
        println!(
            "engine alone, one core (replayed replies): {:.0} rollouts/s, {:.0} tool steps/s, {:.1} µs per step",
            o["rollouts_per_s"].as_f64().unwrap_or(0.0),
            o["tool_steps_per_s"].as_f64().unwrap_or(0.0),
            o["us_per_step"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
