//! `envsynth rollout`: play every task k times with a policy, score each rollout with the
//! task's verifier, and write the scored trajectories and a pass@k summary. `simulate-policy`
//! serves the simulated OpenAI-compatible policy on its own.
//!
//! Finished rollouts are journaled in `<out>/parts/` (each part written atomically), so a killed
//! run started again continues where it stopped, repeating and losing nothing. When every
//! rollout is done, `<out>/rollouts.jsonl` and `<out>/rollouts.parquet` (the same rollouts, in
//! task order, then sample order) and `<out>/summary.json` are written and the journal is
//! removed. `rescore` scores a finished run's rollouts again with the verifiers of this build,
//! without the policy.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use envsynth_core::chat::ChatRequest;
use envsynth_core::{PreparedTask, Task};
use envsynth_policy::local::LocalOptions;
use envsynth_policy::{LocalPolicy, SamplingParams};
use envsynth_rollout::score::{Summary, summarize};
use envsynth_rollout::{
    ClientOptions, Limits, OpenAiPolicy, Policy, PolicyError, Reply, Rollout, rollout_id,
    sample_seeds,
};
use envsynth_server::Verifiers;
use envsynth_server::simulated::{self, Agent, FaultKind, Faults};

#[derive(clap::Args)]
pub struct Args {
    /// Tasks: a shard file or a directory of shards; repeat (or list several) to play datasets
    /// of several environments in one run.
    #[arg(long, required = true, num_args = 1..)]
    pub tasks: Vec<PathBuf>,
    /// The policy: an OpenAI-compatible API root (`http://127.0.0.1:8000/v1`),
    /// `sim:oracle`, `sim:noisy:P`, `sim:random` for the simulated policy on loopback, or
    /// `local:DIR` for the local model in checkpoint folder DIR (see `envsynth model`).
    #[arg(long)]
    pub policy: String,
    /// Where `local:DIR` runs: cpu (the reference), gpu (CUDA, sm_90a) or gpu-fp8 (the same
    /// with the indexer in FP8, as DeepSeek-V3.2 runs it).
    #[arg(long, default_value = "cpu")]
    pub device: envsynth_policy::local::Device,
    /// The model name sent to the server (vLLM's served model name).
    #[arg(long, default_value = "default")]
    pub model: String,
    /// Rollouts per task.
    #[arg(long, default_value_t = 4)]
    pub k: u32,
    /// Run seed: with the task id it gives each rollout's sample seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Requests in flight at once (with `local:DIR`, also the most sequences decoding together).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Model turns per rollout.
    #[arg(long, default_value_t = 24)]
    pub max_turns: u32,
    /// Sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Seconds per request before it is retried.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Retries per request on connection errors, 429, 5xx and malformed replies.
    #[arg(long, default_value_t = 4)]
    pub retries: u32,
    /// Completion tokens per request (`max_tokens`; the local model's default is 256).
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// Ask the server for each turn's tokens and their log-probabilities (`return_token_ids`
    /// and `logprobs`, vLLM 0.10.2 and later) and record them with each rollout; a reply
    /// without them fails its rollout. The local policy always records its tokens.
    #[arg(long)]
    pub token_ids: bool,
    /// pass@k values to report (comma-separated; default 1 and k).
    #[arg(long, value_delimiter = ',')]
    pub pass_at: Vec<u64>,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args)]
pub struct SimArgs {
    /// Tasks the simulated policy knows (shard files or directories).
    #[arg(long, required = true, num_args = 1..)]
    pub tasks: Vec<PathBuf>,
    /// `oracle`, `noisy:P` or `random`.
    #[arg(long, default_value = "oracle")]
    pub agent: String,
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub addr: SocketAddr,
    /// Inject a fault on every N-th attempt at each request (0: never).
    #[arg(long, default_value_t = 0)]
    pub fault_every: u64,
    /// `server-error`, `malformed` or `drop`.
    #[arg(long, default_value = "server-error")]
    pub fault: String,
}

/// Every task of the datasets (shard files or directories), in the order given and part order,
/// each once. `flag` names the option the paths came from, for errors.
pub fn read_all_tasks(paths: &[PathBuf], flag: &str) -> Result<Vec<Task>> {
    let mut tasks = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for path in paths {
        crate::existing(path, flag)?;
        let mut read = 0;
        for file in envsynth_shards::shard_files(path)? {
            for t in envsynth_shards::read_tasks(&file)? {
                read += 1;
                if seen.insert(t.id.clone()) {
                    tasks.push(t);
                }
            }
        }
        if read == 0 {
            bail!("{}: no tasks", path.display());
        }
    }
    Ok(tasks)
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn start_sim(
    tasks: &[Task],
    verifiers: &dyn Verifiers,
    agent: Agent,
    faults: Faults,
    addr: SocketAddr,
) -> Result<SocketAddr> {
    let router =
        simulated::router(tasks, verifiers, agent, faults).map_err(|e| anyhow::anyhow!(e))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr()?;
    tokio::spawn(envsynth_server::serve(
        listener,
        router,
        std::future::pending(),
    ));
    Ok(local)
}

pub fn simulate(a: SimArgs) -> Result<()> {
    let tasks = read_all_tasks(&a.tasks, "--tasks")?;
    let agent: Agent = a
        .agent
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--agent: {e}"))?;
    let kind: FaultKind = a
        .fault
        .parse()
        .map_err(|e: String| anyhow::anyhow!("--fault: {e}"))?;
    let rt = runtime()?;
    rt.block_on(async {
        let addr = start_sim(
            &tasks,
            &crate::serve::BinaryVerifiers::default(),
            agent,
            Faults {
                every: a.fault_every,
                kind,
            },
            a.addr,
        )
        .await?;
        println!(
            "envsynth simulate-policy: {} tasks, OpenAI API at http://{addr}/v1",
            tasks.len()
        );
        let _ = tokio::signal::ctrl_c().await;
        Ok(())
    })
}

/// Rollouts already journaled in `<out>/parts`, by id.
fn journaled(parts: &Path) -> Result<HashMap<String, Rollout>> {
    let mut done = HashMap::new();
    let entries = match std::fs::read_dir(parts) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
        Err(e) => return Err(e).with_context(|| format!("{}", parts.display())),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).with_context(|| format!("{}", f.display()))?;
        for (i, line) in text.lines().enumerate() {
            let r: Rollout = serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not a rollout", f.display(), i + 1))?;
            done.insert(r.rollout_id.clone(), r);
        }
    }
    Ok(done)
}

/// The policies `--policy` names. (The `Policy` trait is static, so one enum holds them.)
pub(crate) enum Backend {
    OpenAi(OpenAiPolicy),
    Local(LocalPolicy),
}

impl Policy for Backend {
    fn name(&self) -> &str {
        match self {
            Backend::OpenAi(p) => p.name_str(),
            Backend::Local(p) => p.name(),
        }
    }

    async fn complete(&self, r: &ChatRequest) -> Result<Reply, PolicyError> {
        match self {
            Backend::OpenAi(p) => p.complete(r).await,
            Backend::Local(p) => p.complete(r).await,
        }
    }
}

/// What a command's policy flag and its options say (`rollout --policy`, `synthesize
/// --solver`).
pub(crate) struct PolicyChoice<'a> {
    /// The flag it came from, and the one that says the device, for errors.
    pub flag: &'a str,
    pub device_flag: &'a str,
    pub policy: &'a str,
    pub model: &'a str,
    pub device: envsynth_policy::local::Device,
    pub temperature: f64,
    pub concurrency: usize,
    pub timeout: u64,
    pub retries: u32,
    pub token_ids: bool,
}

impl PolicyChoice<'_> {
    /// Refuses a policy that cannot be started, before any work: an unknown simulated agent,
    /// a missing checkpoint folder, a malformed URL, a device for a policy that is not local.
    pub fn check(&self) -> Result<()> {
        let flag = self.flag;
        if let Some(dir) = self.policy.strip_prefix("local:") {
            return crate::existing(Path::new(dir), &format!("{flag} local:"));
        }
        if self.device != envsynth_policy::local::Device::Cpu {
            bail!(
                "{} applies to {flag} local:DIR only; {flag} {} runs where it is served",
                self.device_flag,
                self.policy
            );
        }
        if let Some(agent) = self.policy.strip_prefix("sim:") {
            return agent
                .parse::<Agent>()
                .map(|_| ())
                .map_err(|e| anyhow::anyhow!("{flag}: {e}"));
        }
        OpenAiPolicy::new(self.policy, self.model, ClientOptions::default())
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("{flag}: {e}"))
    }
}

/// The policy to play `tasks` with; a simulated one resolves their environments in
/// `verifiers`.
pub(crate) async fn backend(
    a: &PolicyChoice<'_>,
    tasks: &[Task],
    verifiers: &dyn Verifiers,
) -> Result<Backend> {
    let flag = a.flag;
    a.check()?;
    if let Some(dir) = a.policy.strip_prefix("local:") {
        let dir = PathBuf::from(dir);
        let options = LocalOptions {
            sampling: SamplingParams {
                temperature: a.temperature as f32,
                ..SamplingParams::default()
            },
            device: a.device,
            // Every request in flight may decode in the same step.
            max_batch: a.concurrency.max(1),
            ..LocalOptions::default()
        };
        let local = tokio::task::spawn_blocking(move || LocalPolicy::load(&dir, options))
            .await?
            .with_context(|| format!("{flag} local:"))?;
        return Ok(Backend::Local(local));
    }
    let (url, name) = match a.policy.strip_prefix("sim:") {
        Some(agent) => {
            let agent: Agent = agent
                .parse()
                .map_err(|e: String| anyhow::anyhow!("{flag}: {e}"))?;
            let addr = start_sim(
                tasks,
                verifiers,
                agent,
                Faults::default(),
                "127.0.0.1:0".parse()?,
            )
            .await?;
            (
                format!("http://{addr}/v1"),
                format!("sim-{}", &a.policy[4..]),
            )
        }
        None => (a.policy.to_string(), a.model.to_string()),
    };
    let options = ClientOptions {
        concurrency: a.concurrency,
        timeout: Duration::from_secs(a.timeout.max(1)),
        retries: a.retries,
        backoff: Duration::from_millis(500),
        api_key: std::env::var("OPENAI_API_KEY").ok(),
        token_ids: a.token_ids,
    };
    let mut policy =
        OpenAiPolicy::new(&url, a.model, options).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
    if a.policy.starts_with("sim:") {
        policy = policy.named(&name);
    }
    Ok(Backend::OpenAi(policy))
}

pub fn run(a: Args) -> Result<()> {
    if a.k == 0 {
        bail!("--k must be at least 1");
    }
    let tasks = read_all_tasks(&a.tasks, "--tasks")?;
    let ks = pass_at_ks(&a.pass_at, u64::from(a.k));
    let parts = a.out.join("parts");
    let mut done = journaled(&parts)?;
    let rt = runtime()?;
    rt.block_on(async {
        let choice = PolicyChoice {
            flag: "--policy",
            device_flag: "--device",
            policy: &a.policy,
            model: &a.model,
            device: a.device,
            temperature: a.temperature,
            concurrency: a.concurrency,
            timeout: a.timeout,
            retries: a.retries,
            token_ids: a.token_ids,
        };
        let verifiers = crate::serve::BinaryVerifiers::default();
        let policy = Arc::new(backend(&choice, &tasks, &verifiers).await?);
        let limits = Arc::new(Limits {
            max_turns: a.max_turns,
            temperature: Some(a.temperature),
            max_completion_tokens: a.max_tokens,
            ..Limits::default()
        });
        // Every rollout of the run, in output order; the ones not yet journaled get played.
        let mut order = Vec::new();
        let mut todo = Vec::new();
        for task in &tasks {
            let seeds = sample_seeds(a.seed, &task.id, a.k);
            let ids: Vec<String> = seeds
                .iter()
                .map(|&s| rollout_id(&task.id, policy.name(), s))
                .collect();
            let missing: Vec<u64> = seeds
                .iter()
                .zip(&ids)
                .filter(|(_, id)| !done.contains_key(*id))
                .map(|(s, _)| *s)
                .collect();
            order.extend(ids);
            if missing.is_empty() {
                continue;
            }
            let env = envsynth_server::Verifiers::environment(&verifiers, &task.environment)
                .map_err(|e| anyhow::anyhow!("task {}: {e}", task.id))?;
            let prepared: Arc<dyn PreparedTask> = Arc::from(
                env.env
                    .prepare(task)
                    .map_err(|e| anyhow::anyhow!("task {}: {e}", task.id))?,
            );
            let task = Arc::new(task.clone());
            for s in missing {
                todo.push((task.clone(), prepared.clone(), s));
            }
        }
        let total = order.len();
        eprintln!(
            "rollout: {} tasks × {} = {total} rollouts with {}; {} journaled already",
            tasks.len(),
            a.k,
            policy.name(),
            total - todo.len()
        );
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Rollout>(256);
        let permits = Arc::new(tokio::sync::Semaphore::new(a.concurrency.max(1) * 2));
        for (task, prepared, seed) in todo {
            let (policy, limits, tx, permits) =
                (policy.clone(), limits.clone(), tx.clone(), permits.clone());
            tokio::spawn(async move {
                let Ok(_permit) = permits.acquire_owned().await else {
                    return;
                };
                let r =
                    envsynth_rollout::run(policy.as_ref(), &task, prepared.as_ref(), seed, &limits)
                        .await;
                let _ = tx.send(r).await;
            });
        }
        drop(tx);
        std::fs::create_dir_all(&parts).with_context(|| format!("{}", parts.display()))?;
        let mut next_part = std::fs::read_dir(&parts)?.count();
        let mut batch: Vec<Rollout> = Vec::new();
        let flush = |batch: &mut Vec<Rollout>, n: &mut usize| -> Result<()> {
            if batch.is_empty() {
                return Ok(());
            }
            let mut bytes = Vec::new();
            for r in batch.iter() {
                serde_json::to_writer(&mut bytes, r)?;
                bytes.push(b'\n');
            }
            envsynth_shards::atomic_write(&parts.join(format!("part-{:06}.jsonl", *n)), &bytes)?;
            *n += 1;
            batch.clear();
            Ok(())
        };
        let mut last = std::time::Instant::now();
        while let Some(r) = rx.recv().await {
            done.insert(r.rollout_id.clone(), r.clone());
            batch.push(r);
            if batch.len() >= 64 || last.elapsed() > Duration::from_secs(10) {
                flush(&mut batch, &mut next_part)?;
                last = std::time::Instant::now();
            }
        }
        flush(&mut batch, &mut next_part)?;
        let all: Vec<Rollout> = order
            .iter()
            .map(|id| {
                done.remove(id)
                    .ok_or_else(|| anyhow::anyhow!("rollout {id} is missing"))
            })
            .collect::<Result<_>>()?;
        write_results(&a.out, &all, &ks)?;
        std::fs::remove_dir_all(&parts).with_context(|| format!("{}", parts.display()))?;
        Ok(())
    })
}

/// The pass@k values to report: those asked for, else 1 and `k`; sorted, each once.
fn pass_at_ks(asked: &[u64], k: u64) -> Vec<u64> {
    let mut ks = if asked.is_empty() {
        vec![1, k]
    } else {
        asked.to_vec()
    };
    ks.sort_unstable();
    ks.dedup();
    ks
}

/// Writes a run's results into `out` ([`write_run`]) and prints the summary's headline.
fn write_results(out: &Path, all: &[Rollout], ks: &[u64]) -> Result<()> {
    let summary = write_run(out, all, ks)?;
    let mut brief: BTreeMap<&str, serde_json::Value> = [
        ("rollouts", serde_json::json!(summary.rollouts)),
        ("masked", serde_json::json!(summary.masked)),
        ("pass_at", serde_json::json!(summary.overall.pass_at)),
        ("pass_hat", serde_json::json!(summary.overall.pass_hat)),
        ("by_level", serde_json::json!(summary.by_level)),
        (
            "most_failed_checks",
            serde_json::json!(summary.failed_checks.iter().take(5).collect::<Vec<_>>()),
        ),
        (
            "final_pass_rate",
            serde_json::json!(summary.metrics.final_pass_rate),
        ),
    ]
    .into_iter()
    .collect();
    if summary.by_environment.len() > 1 {
        brief.insert("by_environment", serde_json::json!(summary.by_environment));
    }
    if summary.token_traces != Default::default() {
        brief.insert("token_traces", serde_json::json!(summary.token_traces));
    }
    println!("{}", serde_json::to_string_pretty(&brief)?);
    Ok(())
}

/// Writes a run's results into `out`, each file atomically: `rollouts.jsonl`,
/// `rollouts.parquet` and `summary.json` (returned).
pub(crate) fn write_run(out: &Path, all: &[Rollout], ks: &[u64]) -> Result<Summary> {
    std::fs::create_dir_all(out).with_context(|| format!("{}", out.display()))?;
    let mut bytes = Vec::new();
    for r in all {
        serde_json::to_writer(&mut bytes, r)?;
        bytes.push(b'\n');
    }
    envsynth_shards::atomic_write(&out.join("rollouts.jsonl"), &bytes)?;
    let rows: Vec<serde_json::Value> = all
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    envsynth_shards::write_trajectories(&out.join("rollouts.parquet"), &rows)?;
    let summary = summarize(all, ks);
    let mut text = serde_json::to_vec_pretty(&summary)?;
    text.push(b'\n');
    envsynth_shards::atomic_write(&out.join("summary.json"), &text)?;
    Ok(summary)
}

/// The rollouts of a finished `envsynth rollout` (or `rescore`) directory, in the order of its
/// `rollouts.jsonl` (which may also be named itself); a bad line is refused naming the file and
/// line.
pub fn read_run(dir: &Path) -> Result<Vec<Rollout>> {
    let path = run_file(dir);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: no rollouts.jsonl (is the rollout run finished?)",
            path.display()
        )
    })?;
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line)
                .with_context(|| format!("{} line {}: not a rollout", path.display(), i + 1))
        })
        .collect()
}

/// A run's `rollouts.jsonl`: in the directory, or the file itself.
fn run_file(dir: &Path) -> PathBuf {
    if dir.is_file() {
        dir.to_path_buf()
    } else {
        dir.join("rollouts.jsonl")
    }
}

/// The rollouts of a finished `envsynth rollout` directory (its `rollouts.jsonl`), each of a
/// task among `tasks`; a bad line is refused naming the file and line.
pub fn read_finished(dir: &Path, tasks: &[Task]) -> Result<Vec<Rollout>> {
    let envs: HashMap<&str, &envsynth_core::EnvRef> = tasks
        .iter()
        .map(|t| (t.id.as_str(), &t.environment))
        .collect();
    let mut rollouts = read_run(dir)?;
    for (i, r) in rollouts.iter_mut().enumerate() {
        let Some(env) = envs.get(r.task_id.as_str()) else {
            bail!(
                "{} line {}: task {} is not among --tasks",
                run_file(dir).display(),
                i + 1,
                r.task_id
            );
        };
        // Runs written before rollouts named their environment.
        if r.environment.is_empty() {
            r.environment = env.to_string();
        }
    }
    Ok(rollouts)
}

#[derive(clap::Args)]
pub struct RescoreArgs {
    /// The tasks that were played (shard files or directories).
    #[arg(long, required = true, num_args = 1..)]
    pub tasks: Vec<PathBuf>,
    /// A finished `envsynth rollout` output directory (its rollouts.jsonl).
    #[arg(long)]
    pub rollouts: PathBuf,
    /// pass@k values to report (comma-separated; default 1 and the most rollouts of a task).
    #[arg(long, value_delimiter = ',')]
    pub pass_at: Vec<u64>,
    /// Output directory (not the stored run's: that one stays as it was).
    #[arg(long)]
    pub out: PathBuf,
}

/// Scores a finished run's rollouts again with this build's verifiers, from what each
/// recorded (why it stopped and its messages), without the policy; writes the same files as
/// `rollout` into another directory and says how many verdicts changed.
pub fn rescore(a: RescoreArgs) -> Result<()> {
    let tasks = read_all_tasks(&a.tasks, "--tasks")?;
    let stored = read_finished(&a.rollouts, &tasks)?;
    let same = |p: &Path| std::fs::canonicalize(p).ok();
    if a.out.exists() && same(&a.out) == same(&a.rollouts) {
        bail!("--out must not be the --rollouts directory: the stored run stays as it was");
    }
    let verifiers = crate::serve::BinaryVerifiers::default();
    let mut prepared: HashMap<&str, Box<dyn PreparedTask>> = HashMap::new();
    for t in &tasks {
        let env = envsynth_server::Verifiers::environment(&verifiers, &t.environment)
            .map_err(|e| anyhow::anyhow!("task {}: {e}", t.id))?;
        let p = env
            .env
            .prepare(t)
            .map_err(|e| anyhow::anyhow!("task {}: {e}", t.id))?;
        prepared.insert(&t.id, p);
    }
    let mut per_task: HashMap<&str, u64> = HashMap::new();
    let mut changed = 0;
    let mut all = Vec::with_capacity(stored.len());
    for r in &stored {
        *per_task.entry(&r.task_id).or_default() += 1;
        let task = prepared[r.task_id.as_str()].as_ref();
        let verdict = envsynth_rollout::verdict_of(&r.task_id, &r.stop, &r.messages, task);
        changed += usize::from(verdict != r.verdict);
        all.push(Rollout {
            verdict,
            ..r.clone()
        });
    }
    eprintln!(
        "rescore: {} rollouts of {} tasks; {changed} verdicts changed",
        all.len(),
        per_task.len()
    );
    let most = per_task.values().copied().max().unwrap_or(1);
    write_results(&a.out, &all, &pass_at_ks(&a.pass_at, most))
}
