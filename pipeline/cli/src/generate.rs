//! `envsynth generate`: certified tasks into shards, split across workers by
//! `--shard-index/--num-shards`, resumable after a crash, byte-identical on re-run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use rand::Rng;
use serde_json::{Value, json};

use envsynth_core::{Environment, Task, TaskRequest, env::generate, hash, seed};
use envsynth_shards::{
    Format, Manifest, ShardMeta, remove_stale_tmp, shard_stem, write_jsonl, write_parquet,
};

#[derive(clap::Args)]
pub struct Args {
    /// Environment id (or id@version); see `envsynth envs`.
    #[arg(long, default_value = "travel-planning")]
    pub env: String,
    /// Number of tasks in the whole dataset.
    #[arg(long)]
    pub count: u64,
    /// Dataset seed: the same seed gives the same tasks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Difficulty mix: a level (`medium`) or weighted levels (`easy=1,medium=2,hard=1`).
    #[arg(long, default_value = "medium")]
    pub mix: String,
    /// JSON object overriding numeric difficulty parameters, e.g. '{"people_max": 3}'.
    #[arg(long)]
    pub overrides: Option<String>,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Formats to write: parquet, jsonl, or both (comma-separated).
    #[arg(long, default_value = "parquet")]
    pub format: String,
    /// Tasks per shard file.
    #[arg(long, default_value_t = 1000)]
    pub shard_size: u64,
    /// This worker's index among `--num-shards` workers (e.g. $JOB_COMPLETION_INDEX, $SLURM_ARRAY_TASK_ID).
    #[arg(long, default_value_t = 0)]
    pub shard_index: u64,
    /// Number of workers the dataset is split across; worker i writes parts i, i+N, i+2N, ...
    #[arg(long, default_value_t = 1)]
    pub num_shards: u64,
    /// Split name recorded in every row.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// A dataset whose problems this one must not hold (an eval or test set; repeatable). A
    /// task whose problem, as `envsynth duplicates` fingerprints it, is in one of them is drawn
    /// again at index `i + k·count` (k = 1, 2, ...) with index i's level, so the dataset still
    /// holds `--count` tasks and every row still regenerates from its seed and index.
    #[arg(long)]
    pub exclude: Vec<PathBuf>,
}

/// Draws for one index before giving up on finding a problem outside `--exclude`.
const MAX_REDRAWS: u64 = 64;

/// Parsed `--mix`: levels with cumulative weights.
struct Mix(Vec<(String, f64)>);

impl Mix {
    fn parse(s: &str, env: &dyn Environment) -> Result<Mix> {
        let levels = &env.spec().levels;
        let mut parts = Vec::new();
        for item in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
            let (level, w) = match item.split_once('=') {
                Some((l, w)) => {
                    let w: f64 = w.trim().parse().with_context(|| {
                        format!("--mix: weight of `{l}` is not a number: `{w}`")
                    })?;
                    (l.trim(), w)
                }
                None => (item, 1.0),
            };
            if !levels.iter().any(|x| x == level) {
                bail!(
                    "--mix: unknown level `{level}` (levels of {}: {})",
                    env.spec().id,
                    levels.join(", ")
                );
            }
            if !(w.is_finite() && w > 0.0) {
                bail!("--mix: weight of `{level}` must be a positive number");
            }
            parts.push((level.to_string(), w));
        }
        if parts.is_empty() {
            bail!("--mix is empty");
        }
        let total: f64 = parts.iter().map(|p| p.1).sum();
        let mut acc = 0.0;
        Ok(Mix(parts
            .into_iter()
            .map(|(l, w)| {
                acc += w / total;
                (l, acc)
            })
            .collect()))
    }

    /// The level of one index: a deterministic draw, independent of how the work is split.
    fn level(&self, env: &dyn Environment, seed: u64, index: u64) -> &str {
        let u: f64 =
            seed::task_rng(&env.spec().id, &env.spec().version, seed, index, 0, "mix").random();
        self.0
            .iter()
            .find(|(_, c)| u < *c)
            .or(self.0.last())
            .map(|(l, _)| l.as_str())
            .unwrap_or("")
    }
}

fn formats(s: &str) -> Result<Vec<Format>> {
    let mut out = Vec::new();
    for f in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        let f = if f == "both" {
            vec![Format::Parquet, Format::Jsonl]
        } else {
            vec![Format::parse(f).with_context(|| {
                format!("--format: unknown format `{f}` (parquet, jsonl, both)")
            })?]
        };
        out.extend(f);
    }
    out.sort();
    out.dedup();
    if out.is_empty() {
        bail!("--format is empty");
    }
    Ok(out)
}

pub fn run(a: Args) -> Result<()> {
    let env = crate::envs::find(&a.env)?;
    let env = env.as_ref();
    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    if a.shard_size == 0 {
        bail!("--shard-size must be at least 1");
    }
    if a.num_shards == 0 || a.shard_index >= a.num_shards {
        bail!(
            "--shard-index must be less than --num-shards (got {} of {})",
            a.shard_index,
            a.num_shards
        );
    }
    let overrides: Value = match &a.overrides {
        Some(s) => serde_json::from_str(s).context("--overrides is not JSON")?,
        None => Value::Null,
    };
    let mix = Mix::parse(&a.mix, env)?;
    for (level, _) in &mix.0 {
        env.validate_request(&TaskRequest {
            seed: a.seed,
            index: 0,
            level: level.clone(),
            overrides: overrides.clone(),
        })
        .map_err(|e| anyhow::anyhow!("--overrides: {e}"))?;
    }
    let formats = formats(&a.format)?;
    let parts = a.count.div_ceil(a.shard_size);
    let mut request = json!({
        "env": format!("{}@{}", env.spec().id, env.spec().version),
        "count": a.count, "seed": a.seed, "mix": a.mix, "overrides": overrides,
        "shard_size": a.shard_size, "split": a.split, "formats": formats,
    });
    let excluded: BTreeSet<String> = if a.exclude.is_empty() {
        BTreeSet::new()
    } else {
        crate::rollout::read_all_tasks(&a.exclude, "--exclude")?
            .iter()
            .map(Task::problem_hash)
            .collect()
    };
    if !a.exclude.is_empty() {
        // What was excluded, by content: the same problems give the same request.
        request["exclude"] = json!({
            "problems": excluded.len(),
            "hash": hash::sha256_parts(excluded.iter().map(|h| ("problem", h.as_bytes()))),
        });
    }
    let request_hash = hash::sha256_parts([
        ("content", env.spec().content_hash.as_bytes()),
        ("generator", env!("CARGO_PKG_VERSION").as_bytes()),
        ("request", request.to_string().as_bytes()),
    ]);
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;

    // Which parts this worker owns, and which of those are already complete.
    let mut todo = Vec::new();
    let mut resumed = 0;
    for part in (a.shard_index..parts).step_by(a.num_shards as usize) {
        let meta_path = ShardMeta::path(&a.out, part, parts);
        if let Some(meta) = ShardMeta::load(&meta_path)? {
            if meta.request_hash != request_hash {
                bail!(
                    "{} holds shards of a different request (other seed, count, mix, format or version); \
                     use a fresh --out directory",
                    a.out.display()
                );
            }
            if meta.files_intact(&a.out)? {
                resumed += 1;
                continue;
            }
        }
        todo.push(part);
    }
    let tasks_todo: u64 = todo
        .iter()
        .map(|&p| part_range(p, a.shard_size, a.count).count() as u64)
        .sum();
    let bar = ProgressBar::new(tasks_todo);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} tasks  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );

    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let jobs = a
        .jobs
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1);
    std::thread::scope(|s| {
        for _ in 0..jobs.min(todo.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&part) = todo.get(i) else { break };
                    if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                        break;
                    }
                    let r = write_part(
                        env,
                        &a,
                        &mix,
                        &overrides,
                        &formats,
                        &excluded,
                        &request_hash,
                        part,
                        parts,
                        &bar,
                    );
                    if let Err(e) = r {
                        if let Ok(mut f) = failure.lock() {
                            f.get_or_insert(e);
                        }
                        break;
                    }
                }
            });
        }
    });
    bar.finish_and_clear();
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e);
    }

    // The manifest, once every part of the dataset is present (from any worker).
    let mut metas = Vec::new();
    for part in 0..parts {
        match ShardMeta::load(&ShardMeta::path(&a.out, part, parts))? {
            Some(m) if m.request_hash == request_hash => metas.push(m),
            _ => break,
        }
    }
    let mine = todo.len();
    eprintln!(
        "{} part(s) written, {resumed} already complete, by worker {} of {}",
        mine, a.shard_index, a.num_shards
    );
    if metas.len() as u64 == parts {
        let mut rejections: BTreeMap<String, u64> = BTreeMap::new();
        for m in &metas {
            for (k, v) in &m.rejections {
                *rejections.entry(k.clone()).or_default() += v;
            }
        }
        let manifest = Manifest {
            format_version: 1,
            environment: env.spec().clone(),
            generator: format!("envsynth {}", env!("CARGO_PKG_VERSION")),
            request,
            request_hash,
            num_shards: parts,
            rows: metas.iter().map(|m| m.rows).sum(),
            files: metas.iter().flat_map(|m| m.files.iter().cloned()).collect(),
            rejected_attempts: rejections.values().sum(),
            rejections,
            replaced: metas.iter().map(|m| m.replaced).sum(),
        };
        let path = a.out.join("manifest.json");
        let mut bytes = serde_json::to_vec_pretty(&manifest)?;
        bytes.push(b'\n');
        envsynth_shards::atomic_write(&path, &bytes)?;
        eprintln!(
            "dataset complete: {} tasks in {} part(s); {} generation attempt(s) rejected {:?}; \
             {} task(s) drawn again for --exclude; manifest {}",
            manifest.rows,
            parts,
            manifest.rejected_attempts,
            manifest.rejections,
            manifest.replaced,
            path.display()
        );
    } else {
        eprintln!(
            "{} of {parts} parts present; the manifest is written when all are",
            metas.len()
        );
    }
    Ok(())
}

fn part_range(part: u64, size: u64, count: u64) -> std::ops::Range<u64> {
    part * size..((part + 1) * size).min(count)
}

#[allow(clippy::too_many_arguments)]
fn write_part(
    env: &dyn Environment,
    a: &Args,
    mix: &Mix,
    overrides: &Value,
    formats: &[Format],
    excluded: &BTreeSet<String>,
    request_hash: &str,
    part: u64,
    parts: u64,
    bar: &ProgressBar,
) -> Result<()> {
    let stem = shard_stem(part, parts);
    let range = part_range(part, a.shard_size, a.count);
    let mut tasks: Vec<Task> = Vec::with_capacity(range.clone().count());
    let mut rejections: BTreeMap<String, u64> = BTreeMap::new();
    let mut replaced = 0;
    for index in range.clone() {
        let level = mix.level(env, a.seed, index);
        let mut draw: u64 = 0;
        let task = loop {
            let req = TaskRequest {
                seed: a.seed,
                index: draw
                    .checked_mul(a.count)
                    .and_then(|d| d.checked_add(index))
                    .with_context(|| format!("index {index}: redraw index overflows u64"))?,
                level: level.to_string(),
                overrides: overrides.clone(),
            };
            let g = generate(env, &req)?;
            for r in &g.rejections {
                *rejections.entry(r.key()).or_default() += 1;
            }
            if excluded.is_empty() || !excluded.contains(&g.task.problem_hash()) {
                break g.task;
            }
            replaced += 1;
            draw += 1;
            if draw >= MAX_REDRAWS {
                bail!(
                    "index {index}: {MAX_REDRAWS} draws in a row at level `{level}` were problems of --exclude; \
                     the excluded datasets cover this level's problems"
                );
            }
        };
        tasks.push(task);
        bar.inc(1);
    }
    let mut files = Vec::new();
    for f in formats {
        let path: PathBuf = a.out.join(format!("{stem}.{}", f.ext()));
        remove_stale_tmp(&path)?;
        files.push(match f {
            Format::Parquet => write_parquet(&path, &tasks, &a.split)?,
            Format::Jsonl => write_jsonl(&path, &tasks, &a.split)?,
        });
    }
    let meta = ShardMeta {
        request_hash: request_hash.to_string(),
        shard: part,
        num_shards: parts,
        first_index: range.start,
        rows: tasks.len() as u64,
        files,
        rejections,
        replaced,
    };
    let meta_path: &Path = &ShardMeta::path(&a.out, part, parts);
    remove_stale_tmp(meta_path)?;
    let mut bytes = serde_json::to_vec_pretty(&meta)?;
    bytes.push(b'\n');
    envsynth_shards::atomic_write(meta_path, &bytes)?;
    Ok(())
}
