//! `envsynth calibrate`: keep the tasks whose measured difficulty lies in a band. DeepSeek-V3.2
//! kept only tasks with non-zero pass@100; `--pass-at 100 --min 0.000001` does the same here.
//!
//! Input: the tasks and a finished `envsynth rollout` directory. Output: the kept tasks as a
//! shard (`part-00000-of-00001.{parquet,jsonl}`) and `calibration.json`, which records for every
//! input task its attempts, passes, masked rollouts, pass@k and whether it was kept. With `--db`
//! the rollouts are also recorded in the registry, whose difficulty statistics and pass-rate
//! filters then include them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_json::json;

use envsynth_core::Task;
use envsynth_registry::{AnyStore, RolloutRecord, Store};
use envsynth_rollout::score::score_tasks;

#[derive(clap::Args)]
pub struct Args {
    /// The tasks that were played (shard files or directories).
    #[arg(long, required = true, num_args = 1..)]
    pub tasks: Vec<PathBuf>,
    /// A finished `envsynth rollout` output directory (its rollouts.jsonl).
    #[arg(long)]
    pub rollouts: PathBuf,
    /// The k of pass@k the band is about.
    #[arg(long, default_value_t = 1)]
    pub pass_at: u64,
    /// Lowest pass@k kept (inclusive).
    #[arg(long, default_value_t = 0.0)]
    pub min: f64,
    /// Highest pass@k kept (inclusive).
    #[arg(long, default_value_t = 1.0)]
    pub max: f64,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Split name recorded in the kept tasks' rows.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Also record the rollouts in this registry (its tasks must be imported there).
    #[arg(long)]
    pub db: Option<String>,
}

pub fn run(a: Args) -> Result<()> {
    if !(0.0..=1.0).contains(&a.min) || !(0.0..=1.0).contains(&a.max) || a.min > a.max {
        bail!("--min and --max must satisfy 0 <= min <= max <= 1");
    }
    if a.pass_at == 0 {
        bail!("--pass-at must be at least 1");
    }
    let tasks: Vec<Task> = crate::rollout::read_all_tasks(&a.tasks, "--tasks")?;
    let rollouts = crate::rollout::read_finished(&a.rollouts, &tasks)?;
    let policies: std::collections::BTreeSet<&str> =
        rollouts.iter().map(|r| r.policy.as_str()).collect();
    let scores: BTreeMap<String, _> = score_tasks(&rollouts, &[a.pass_at])
        .into_iter()
        .map(|s| (s.task_id.clone(), s))
        .collect();
    let mut kept = Vec::new();
    let mut rows = Vec::new();
    for t in &tasks {
        let s = scores.get(&t.id);
        let p = s.and_then(|s| s.pass_at.get(&a.pass_at).copied());
        let keep = p.is_some_and(|p| a.min <= p && p <= a.max);
        if keep {
            kept.push(t.clone());
        }
        rows.push(json!({
            "task_id": t.id,
            "level": t.difficulty.level,
            "attempts": s.map_or(0, |s| s.attempts),
            "passes": s.map_or(0, |s| s.passes),
            "masked": s.map_or(0, |s| s.masked),
            "pass_at_k": p,
            "kept": keep,
        }));
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("{}", a.out.display()))?;
    let stem = envsynth_shards::shard_stem(0, 1);
    envsynth_shards::write_parquet(&a.out.join(format!("{stem}.parquet")), &kept, &a.split)?;
    envsynth_shards::write_jsonl(&a.out.join(format!("{stem}.jsonl")), &kept, &a.split)?;
    let report = json!({
        "policies": policies,
        "k": a.pass_at,
        "band": {"min": a.min, "max": a.max},
        "input_tasks": tasks.len(),
        "kept": kept.len(),
        "tasks": rows,
    });
    let mut bytes = serde_json::to_vec_pretty(&report)?;
    bytes.push(b'\n');
    envsynth_shards::atomic_write(&a.out.join("calibration.json"), &bytes)?;

    if let Some(db) = &a.db {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let created = rt.block_on(async {
            let store = AnyStore::open(db)
                .await
                .with_context(|| format!("opening the registry at {db}"))?;
            let records: Vec<RolloutRecord> = rollouts
                .iter()
                .map(|r| RolloutRecord {
                    rollout_id: r.rollout_id.clone(),
                    task_id: r.task_id.clone(),
                    policy: r.policy.clone(),
                    sample_seed: r.sample_seed,
                    verdict: r.verdict.clone(),
                })
                .collect();
            store
                .record_rollouts(&records)
                .await
                .context("recording the rollouts in the registry")
        })?;
        eprintln!("calibrate: {created} new rollouts recorded in {db}");
    }
    println!(
        "kept {} of {} tasks with pass@{} in [{}, {}]; {}",
        kept.len(),
        tasks.len(),
        a.pass_at,
        a.min,
        a.max,
        a.out.join("calibration.json").display()
    );
    Ok(())
}
