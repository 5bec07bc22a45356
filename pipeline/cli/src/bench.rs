//! `envsynth bench`: single-threaded throughput of generation and verification, each against a
//! baseline measured in the same run.
//!
//! - certified tasks/s: the full pipeline per task (sample → world → compose → plant → certify →
//!   render → content-addressed record), retries included. Baseline: the same stages without
//!   certification, rendering or the record (what an uncertified generator would cost).
//! - verdicts/s: a prepared task verifying JSON submissions (planted plans and every mutant),
//!   given as parsed JSON values and, separately, as JSON text.
//!   Baseline: a stateless verifier that parses the task record for every submission, as a
//!   reward function handed the task JSON per call would.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use envsynth_core::{Environment, Task, TaskRequest, env::generate};
use envsynth_travel::{TravelPlanning, mutate};

#[derive(clap::Args)]
pub struct Args {
    /// Difficulty level to measure.
    #[arg(long, default_value = "medium")]
    pub level: String,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Measure only generation or only verification.
    #[arg(long, value_parser = ["generate", "verify", "sandbox"])]
    pub only: Option<String>,
    /// Also measure these verifier components (e.g. ones built by `envsynth plugin build`; the
    /// flag may be repeated) on a medium travel task's planted plan, side by side.
    #[arg(long)]
    pub plugin: Vec<std::path::PathBuf>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run `f` repeatedly for about `secs`; returns operations per second.
fn rate(secs: f64, mut f: impl FnMut(u64) -> u64) -> f64 {
    if secs == 0.0 {
        return 0.0;
    }
    let budget = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let (mut ops, mut i) = (0u64, 0u64);
    while start.elapsed() < budget {
        ops += f(i);
        i += 1;
    }
    ops as f64 / start.elapsed().as_secs_f64()
}

pub fn run(a: Args) -> Result<()> {
    if a.seconds.is_nan() || a.seconds <= 0.0 {
        bail!("--seconds must be positive");
    }
    let env = TravelPlanning::new();
    let req = |index: u64| TaskRequest {
        seed: 0xBE7C,
        index,
        level: a.level.clone(),
        overrides: Value::Null,
    };
    env.validate_request(&req(0))
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    let run_gen = a.only.is_none() || a.only.as_deref() == Some("generate");
    let run_verify = a.only.is_none() || a.only.as_deref() == Some("verify");
    let run_sandbox = a.only.is_none() || a.only.as_deref() == Some("sandbox");
    let secs = |on: bool| if on { a.seconds } else { 0.0 };
    let certified = rate(secs(run_gen), |i| {
        black_box(generate(&env, &req(i)).map(|g| g.task.id).ok());
        1
    });
    let uncertified = rate(secs(run_gen), |i| {
        (0..envsynth_core::env::MAX_ATTEMPTS)
            .find(|&k| black_box(env.generate_parts(&req(i), k)).is_ok());
        1
    });

    // A pool of tasks with their planted plans and every mutant, as JSON submissions.
    let mut pool: Vec<(Task, String, Vec<Value>)> = Vec::new();
    for i in 0..64 {
        let g = generate(&env, &req(1_000_000 + i)).map_err(|e| anyhow::anyhow!("{e}"))?;
        let parts = env
            .generate_parts(&req(1_000_000 + i), g.rejections.len() as u32)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut subs: Vec<Value> = vec![serde_json::from_str(g.task.reference_solution.get())?];
        for m in mutate::mutants(&parts.world, &parts.query, &parts.solution) {
            subs.push(serde_json::to_value(&m.solution)?);
        }
        let text = serde_json::to_string(&g.task)?;
        pool.push((g.task, text, subs));
    }
    let prepared: Vec<_> = pool
        .iter()
        .map(|(t, _, _)| env.prepare(t))
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let submissions: usize = pool.iter().map(|p| p.2.len()).sum();
    let verdicts = rate(secs(run_verify), |i| {
        let k = (i as usize) % pool.len();
        for s in &pool[k].2 {
            black_box(prepared[k].verify(black_box(s)));
        }
        pool[k].2.len() as u64
    });
    let texts: Vec<Vec<String>> = pool
        .iter()
        .map(|p| p.2.iter().map(Value::to_string).collect())
        .collect();
    let from_text = rate(secs(run_verify), |i| {
        let k = (i as usize) % pool.len();
        for s in &texts[k] {
            black_box(prepared[k].verify_text(black_box(s)));
        }
        texts[k].len() as u64
    });
    let stateless = rate(secs(run_verify), |i| {
        let k = (i as usize) % pool.len();
        let s = &pool[k].2[(i as usize / pool.len()) % pool[k].2.len()];
        let task = Task::from_json(&pool[k].1).expect("pool task parses");
        black_box(env.prepare(&task).map(|p| p.verify(s)).ok());
        1
    });

    let sandbox = if run_sandbox {
        Some(sandbox_bench(a.seconds, &a.plugin, &pool[0])?)
    } else {
        None
    };

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let results = json!({
        "level": a.level,
        "threads": 1,
        "cpu": cpu,
        "certified_tasks_per_s": certified.round(),
        "baseline_uncertified_tasks_per_s": uncertified.round(),
        "verdicts_per_s": verdicts.round(),
        "verdicts_from_text_per_s": from_text.round(),
        "baseline_stateless_verdicts_per_s": stateless.round(),
        "verdict_pool": {"tasks": pool.len(), "submissions": submissions},
        "sandbox": sandbox,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        println!("envsynth bench — {} level, one thread, {cpu}", a.level);
        if run_gen {
            println!("  certified tasks/s                 {certified:>12.0}");
            println!("  baseline: uncertified tasks/s     {uncertified:>12.0}");
        }
        if run_verify {
            println!("  verdicts/s (prepared task)        {verdicts:>12.0}");
            println!("  verdicts/s (from JSON text)       {from_text:>12.0}");
            println!("  baseline: stateless verdicts/s    {stateless:>12.0}");
            println!(
                "  (verdict pool: {} tasks, {submissions} planted+mutant submissions)",
                pool.len()
            );
        }
        if let Some(sb) = &sandbox {
            let f = |k: &str| sb[k].as_f64().unwrap_or(0.0);
            println!("  sandbox, trivial WAT verifier:");
            println!(
                "    fresh-instance call             {:>10.1} µs  ({:.0} calls/s)",
                f("trivial_call_us"),
                f("trivial_calls_per_s")
            );
            println!(
                "    compile (cold, into the cache)  {:>10.2} ms",
                f("compile_ms")
            );
            println!(
                "    load from the precompiled cache {:>10.2} ms",
                f("cached_load_ms")
            );
            for p in sb["plugins"].as_array().into_iter().flatten() {
                let g = |k: &str| p[k].as_f64().unwrap_or(0.0);
                println!("  sandbox, {}:", p["path"].as_str().unwrap_or(""));
                println!(
                    "    fresh-instance verify call      {:>10.1} µs  ({:.1} calls/s, {} fuel)",
                    g("call_us"),
                    g("calls_per_s"),
                    p["fuel_per_call"]
                );
                println!(
                    "    compile (cold, into the cache)  {:>10.0} ms",
                    g("compile_ms")
                );
                println!(
                    "    load from the precompiled cache {:>10.2} ms",
                    g("cached_load_ms")
                );
            }
        }
    }
    Ok(())
}

/// Sandbox costs for the trivial WAT verifier: cold compile, cached load, fresh-instance call.
fn sandbox_bench(
    seconds: f64,
    plugin_paths: &[std::path::PathBuf],
    sample: &(Task, String, Vec<Value>),
) -> Result<Value> {
    use envsynth_sandbox::{Limits, Sandbox, World, trivial_verifier_wat};
    let dir = std::env::temp_dir().join(format!("envsynth-bench-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let wat = trivial_verifier_wat();
    let sb = Sandbox::new(Some(&dir)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let start = Instant::now();
    let plugin = sb
        .load(wat.as_bytes(), World::Verifier)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let compile_ms = start.elapsed().as_secs_f64() * 1e3;
    let mut loads = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        black_box(
            sb.load(wat.as_bytes(), World::Verifier)
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        );
        loads.push(start.elapsed().as_secs_f64() * 1e3);
    }
    loads.sort_by(f64::total_cmp);
    let limits = Limits::default();
    let calls = rate(seconds, |_| {
        black_box(plugin.verify(&limits, "{}", "{}").is_ok());
        1
    });
    let mut measured = json!({
        "trivial_call_us": (1e7 / calls).round() / 10.0,
        "trivial_calls_per_s": calls.round(),
        "compile_ms": (compile_ms * 100.0).round() / 100.0,
        "cached_load_ms": (loads[loads.len() / 2] * 100.0).round() / 100.0,
    });
    let mut plugins = Vec::new();
    for path in plugin_paths {
        let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let start = Instant::now();
        sb.load(&bytes, World::Verifier)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let cold_ms = start.elapsed().as_secs_f64() * 1e3;
        let mut loads = Vec::new();
        let mut plugin = None;
        for _ in 0..5 {
            let sb = Sandbox::new(Some(&dir)).map_err(|e| anyhow::anyhow!("{e}"))?;
            let start = Instant::now();
            let p = sb
                .load(&bytes, World::Verifier)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            loads.push(start.elapsed().as_secs_f64() * 1e3);
            plugin = Some((sb, p));
        }
        loads.sort_by(f64::total_cmp);
        let (_sb, p) = plugin.expect("loaded five times");
        let (task, task_json, subs) = sample;
        let sub = subs[0].to_string();
        let calls = rate(seconds, |_| {
            black_box(envsynth_sandbox::plugin_verdict(
                &p, &limits, &task.id, task_json, &sub,
            ));
            1
        });
        let v = envsynth_sandbox::plugin_verdict(&p, &limits, &task.id, task_json, &sub);
        plugins.push(json!({
            "path": path.display().to_string(),
            "call_us": (1e7 / calls).round() / 10.0,
            "calls_per_s": (calls * 10.0).round() / 10.0,
            "fuel_per_call": v.fuel,
            "verdict_passed": v.passed,
            "compile_ms": cold_ms.round(),
            "cached_load_ms": (loads[loads.len() / 2] * 100.0).round() / 100.0,
        }));
    }
    measured["plugins"] = json!(plugins);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(measured)
}
