//! `envsynth synthesize`: environments written by a model, as DeepSeek-V3.2 synthesized its
//! agent environments. A model behind any OpenAI-compatible server gets a brief and the plugin
//! contract and writes a whole environment in Python. Each attempt is built into a component,
//! loaded in the sandbox and put through the environment integrity suite that `plugin check`
//! runs. What failed goes back to the model, until an attempt passes or the attempts run out.
//!
//! The model's code never runs natively on this machine: it is compiled to WebAssembly (Python
//! executes the module's top-level code during that build, inside componentize-py's own
//! WebAssembly runtime, under a time limit) and then runs only in the sandbox.
//!
//! With `--solver`, an environment that passes the suite is then played by a solver policy, as
//! DeepSeek-V3.2 kept only what is hard to solve: one that the solver passes too often, or
//! never, goes back to the model with its pass rates and the checks the answers broke.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use envsynth_core::chat::{ChatMessage, ChatRequest, Usage};
use envsynth_core::{EnvRef, Environment, PreparedTask};
use envsynth_prompts::Templates;
use envsynth_rollout::score::Summary as PlaySummary;
use envsynth_rollout::{ClientOptions, Limits, OpenAiPolicy, Policy, Rollout, Stop, sample_seeds};
use envsynth_server::{Resolved, Verifiers};

use crate::rollout::Backend;

const SYSTEM: &str = include_str!("../../../prompts/synthesize/system.j2");
const USER: &str = include_str!("../../../prompts/synthesize/user.j2");
const FEEDBACK: &str = include_str!("../../../prompts/synthesize/feedback.j2");
/// The worked example in the prompt: a plugin environment that passes every check.
const EXAMPLE: &str = include_str!("../../../environments/meeting/meeting_scheduling.py");
/// The JSON documents that cross the contract, as the prompt shows them.
const SCHEMAS: [(&str, &str); 8] = [
    (
        "spec()",
        include_str!("../../../verifiers/schema/environment-spec.schema.json"),
    ),
    (
        "generate(request): the request",
        include_str!("../../../verifiers/schema/generate-request.schema.json"),
    ),
    (
        "generate(request): Ok, a generated task",
        include_str!("../../../verifiers/schema/generated-task.schema.json"),
    ),
    (
        "generate(request): Err, a rejection",
        include_str!("../../../verifiers/schema/generate-rejection.schema.json"),
    ),
    (
        "tool-specs()",
        include_str!("../../../verifiers/schema/tool-specs.schema.json"),
    ),
    (
        "call(world-state, ...): the world state",
        include_str!("../../../verifiers/schema/world-state.schema.json"),
    ),
    (
        "call(...): the tool result",
        include_str!("../../../verifiers/schema/tool-result.schema.json"),
    ),
    (
        "verify(task, submission): the verdict",
        include_str!("../../../verifiers/schema/verdict.schema.json"),
    ),
];
/// Failed probes fed back to the model after one attempt, at most (the rest are counted).
const FEEDBACK_PROBLEMS: usize = 20;
/// Characters of one problem fed back, at most (the tail of a long traceback is kept).
const PROBLEM_CHARS: usize = 4000;
/// The module's file name in each attempt's folder (componentize-py imports it by this name).
const MODULE: &str = "environment.py";
/// The seed of the tasks a solver plays (the integrity suite checks seed 0's).
const SOLVE_SEED: u64 = 1;

#[derive(clap::Args)]
pub struct Args {
    /// What the environment is about, in words (one environment; see also --briefs).
    #[arg(long, requires = "name", conflicts_with = "briefs")]
    pub brief: Option<String>,
    /// The id the environment of --brief must have (`[a-z0-9_-]`, starting with a letter or
    /// digit); also its folder under --out.
    #[arg(long, requires = "brief")]
    pub name: Option<String>,
    /// Many environments: a JSON Lines file of `{"name": ..., "brief": ...}`.
    #[arg(long, required_unless_present = "brief")]
    pub briefs: Option<PathBuf>,
    /// The model's OpenAI-compatible API root (`http://127.0.0.1:8000/v1`); a hosted API reads
    /// its key from OPENAI_API_KEY.
    #[arg(long)]
    pub policy: String,
    /// The model name sent to the server.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// Replies per brief: the first, then one per failed attempt's feedback.
    #[arg(long, default_value_t = 4)]
    pub attempts: u32,
    /// Run seed: with the brief's name and the attempt it gives each request's seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.6)]
    pub temperature: f64,
    /// Completion tokens per request (`max_tokens`).
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// Tasks per level the integrity suite generates and probes.
    #[arg(long, default_value_t = 3)]
    pub check_count: u64,
    /// Briefs in progress at once.
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    /// Seconds one build may take before it is killed.
    #[arg(long, default_value_t = 300)]
    pub build_timeout: u64,
    /// Seconds per request before it is retried.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Retries per request on connection errors, 429, 5xx and malformed replies.
    #[arg(long, default_value_t = 4)]
    pub retries: u32,
    /// Register each environment that passes (as `envsynth plugin register` does), so that
    /// `envsynth generate --env NAME` uses it. A version already registered with other bytes
    /// goes back to the model as a problem to fix.
    #[arg(long)]
    pub register: bool,
    /// Play each environment that passes the suite before accepting it: an OpenAI-compatible
    /// API root, `sim:oracle`, `sim:noisy:P`, `sim:random` or `local:DIR`, as for `rollout
    /// --policy`. An environment whose tasks it passes too often (--max-pass), or never, goes
    /// back to the model with the pass rates and the checks its answers broke.
    #[arg(long)]
    pub solver: Option<String>,
    /// The model name sent to the solver's server.
    #[arg(long, default_value = "default")]
    pub solver_model: String,
    /// Tasks per level the solver plays (seed 1: not the suite's).
    #[arg(long, default_value_t = 4)]
    pub solve_count: u64,
    /// Rollouts per task the solver plays.
    #[arg(long, default_value_t = 4)]
    pub solve_k: u32,
    /// The largest share of the solver's scored rollouts that may pass; above it the
    /// environment is too easy.
    #[arg(long, default_value_t = 0.75)]
    pub max_pass: f64,
    /// Where a `local:DIR` solver runs: cpu, gpu or gpu-fp8, as for `rollout --device`.
    #[arg(long, default_value = "cpu")]
    pub solver_device: envsynth_policy::local::Device,
    /// Model turns per solver rollout.
    #[arg(long, default_value_t = 24)]
    pub solve_max_turns: u32,
    /// Completion tokens per solver request (`max_tokens`; the local model's default is 256).
    #[arg(long)]
    pub solve_max_tokens: Option<u32>,
    /// Output directory: one folder per brief.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Brief {
    name: String,
    brief: String,
}

/// How one attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    /// The reply held no Python module.
    NoCode,
    /// componentize-py refused the module (a syntax error, an exception at import, a hang).
    BuildFailed,
    /// The component did not load as an environment, its spec or tool specs were invalid, or
    /// its id was not the brief's name.
    LoadFailed,
    /// Tasks failed to generate or certify, a probe got the wrong verdict, a level's tasks were
    /// all the same, the version was taken, or a tool failed while the solver played.
    CheckFailed,
    /// The solver passed more than `--max-pass` of its scored rollouts.
    TooEasy,
    /// The solver passed none of its scored rollouts.
    Unsolved,
    Passed,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::NoCode => "no_code",
            Outcome::BuildFailed => "build_failed",
            Outcome::LoadFailed => "load_failed",
            Outcome::CheckFailed => "check_failed",
            Outcome::TooEasy => "too_easy",
            Outcome::Unsolved => "unsolved",
            Outcome::Passed => "passed",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Attempt {
    attempt: u32,
    outcome: Outcome,
    /// What went wrong, as the model was told (empty when it passed).
    problems: Vec<String>,
    /// Problems beyond those listed.
    more_problems: usize,
    usage: Usage,
    /// How the solver did, when the environment passed the suite and `--solver` was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    solve: Option<Solve>,
}

/// A solver's play of an attempt's environment; its rollouts are in `attempts/N/solve/`
/// (`envsynth view` reads them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Solve {
    solver: String,
    /// Tasks played (`--solve-count` per level) and rollouts per task.
    tasks: usize,
    k: u32,
    rollouts: u64,
    /// Rollouts the infrastructure failed (left out of every rate).
    masked: u64,
    passed: u64,
    /// Passed over scored rollouts.
    pass_rate: f64,
    /// By level: (scored rollouts, passed).
    by_level: BTreeMap<String, (u64, u64)>,
    /// How often each check failed in the failed rollouts, most first.
    failed_checks: Vec<(String, u64)>,
}

/// `<out>/<name>/synthesis.json`: one brief's whole synthesis. Written last, so its presence
/// marks the brief finished.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Record {
    name: String,
    brief: String,
    model: String,
    seed: u64,
    passed: bool,
    /// `id@version` of the environment that passed.
    environment: Option<String>,
    content_hash: Option<String>,
    tools: Vec<String>,
    /// Probes the integrity suite ran on the attempt that passed.
    probes_passed: usize,
    registered: bool,
    attempts: Vec<Attempt>,
    /// The conversation: system prompt, brief, then each reply and its feedback.
    messages: Vec<ChatMessage>,
}

/// `<out>/summary.json`: every brief of the run, in the order given.
#[derive(Serialize)]
struct Summary {
    briefs: usize,
    passed: usize,
    failed: usize,
    /// Briefs the server failed on (after retries); running the command again finishes them.
    unfinished: usize,
    /// Replies asked for, over the finished briefs.
    attempts: usize,
    /// Tokens the server reported, over the finished briefs.
    usage: Usage,
    environments: Vec<SummaryRow>,
}

#[derive(Serialize)]
struct SummaryRow {
    name: String,
    outcome: &'static str,
    attempts: usize,
    environment: Option<String>,
    /// The solver's pass rate on the environment that passed (with `--solver`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pass_rate: Option<f64>,
}

pub fn run(a: Args) -> Result<()> {
    if a.attempts == 0 {
        bail!("--attempts must be at least 1");
    }
    if a.check_count == 0 {
        bail!("--check-count must be at least 1");
    }
    if a.solve_count == 0 || a.solve_k == 0 || a.solve_max_turns == 0 {
        bail!("--solve-count, --solve-k and --solve-max-turns must be at least 1");
    }
    if a.solve_max_tokens == Some(0) {
        bail!("--solve-max-tokens must be at least 1");
    }
    if !(0.0..1.0).contains(&a.max_pass) {
        bail!("--max-pass must be at least 0 and below 1 (the share of rollouts that may pass)");
    }
    if a.solver.is_some() {
        solver_choice(&a).check()?;
    }
    let briefs = match (&a.brief, &a.name, &a.briefs) {
        (Some(brief), Some(name), None) => {
            let b = Brief {
                name: name.clone(),
                brief: brief.clone(),
            };
            check_brief(&b).map_err(|e| anyhow::anyhow!("--name: {e}"))?;
            vec![b]
        }
        (None, None, Some(path)) => read_briefs(path)?,
        _ => bail!("give either --brief with --name, or --briefs FILE"),
    };
    let options = ClientOptions {
        concurrency: a.concurrency.max(1),
        timeout: Duration::from_secs(a.timeout.max(1)),
        retries: a.retries,
        backoff: Duration::from_millis(500),
        api_key: std::env::var("OPENAI_API_KEY").ok(),
        token_ids: false,
    };
    let policy = OpenAiPolicy::new(&a.policy, &a.model, options)
        .map_err(|e| anyhow::anyhow!("--policy: {e}"))?;
    for b in &briefs {
        let path = a.out.join(&b.name).join("synthesis.json");
        if let Some(rec) = read_record(&path)?
            && rec.brief != b.brief
        {
            bail!(
                "{} was written for another brief of `{}`; delete {} to synthesize it anew",
                path.display(),
                b.name,
                a.out.join(&b.name).display()
            );
        }
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("{}", a.out.display()))?;
    let rt = crate::rollout::runtime()?;
    let a = Arc::new(a);
    let policy = Arc::new(policy);
    let results: Vec<(Brief, Result<Record, String>)> = rt.block_on(async {
        // A solver that is not simulated is started once, before any request: a local model
        // is loaded (and its device checked) here, not at each environment that passes.
        let solver = match a.solver.as_deref() {
            Some(s) if !s.starts_with("sim:") => {
                let (choice, none) = (solver_choice(&a), crate::serve::BinaryVerifiers::default());
                Some(Arc::new(
                    crate::rollout::backend(&choice, &[], &none).await?,
                ))
            }
            _ => None,
        };
        let permits = Arc::new(tokio::sync::Semaphore::new(a.concurrency.max(1)));
        let mut jobs = tokio::task::JoinSet::new();
        for (i, brief) in briefs.iter().cloned().enumerate() {
            let (a, policy, solver, permits) =
                (a.clone(), policy.clone(), solver.clone(), permits.clone());
            jobs.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let r = synthesize(&a, policy.as_ref(), solver.as_ref(), &brief).await;
                (i, brief, r)
            });
        }
        let mut out: Vec<Option<(Brief, Result<Record, String>)>> =
            (0..briefs.len()).map(|_| None).collect();
        while let Some(joined) = jobs.join_next().await {
            let (i, brief, r) = joined.context("a synthesis task panicked")?;
            out[i] = Some((brief, r));
        }
        anyhow::Ok(out.into_iter().flatten().collect())
    })?;

    let mut summary = Summary {
        briefs: results.len(),
        passed: 0,
        failed: 0,
        unfinished: 0,
        attempts: 0,
        usage: Usage::default(),
        environments: Vec::new(),
    };
    for (brief, r) in &results {
        let row = match r {
            Ok(rec) => {
                summary.attempts += rec.attempts.len();
                for at in &rec.attempts {
                    summary.usage.prompt_tokens += at.usage.prompt_tokens;
                    summary.usage.completion_tokens += at.usage.completion_tokens;
                }
                if rec.passed {
                    summary.passed += 1;
                } else {
                    summary.failed += 1;
                }
                SummaryRow {
                    name: brief.name.clone(),
                    outcome: if rec.passed { "passed" } else { "failed" },
                    attempts: rec.attempts.len(),
                    environment: rec.environment.clone(),
                    pass_rate: rec
                        .attempts
                        .last()
                        .filter(|_| rec.passed)
                        .and_then(|at| at.solve.as_ref())
                        .map(|s| s.pass_rate),
                }
            }
            Err(_) => {
                summary.unfinished += 1;
                SummaryRow {
                    name: brief.name.clone(),
                    outcome: "unfinished",
                    attempts: 0,
                    environment: None,
                    pass_rate: None,
                }
            }
        };
        summary.environments.push(row);
    }
    let mut bytes = serde_json::to_vec_pretty(&summary)?;
    bytes.push(b'\n');
    envsynth_shards::atomic_write(&a.out.join("summary.json"), &bytes)?;
    println!(
        "{} brief(s): {} passed, {} failed, {} unfinished ({} attempts; {} prompt and {} completion \
         tokens)",
        summary.briefs,
        summary.passed,
        summary.failed,
        summary.unfinished,
        summary.attempts,
        summary.usage.prompt_tokens,
        summary.usage.completion_tokens
    );
    if summary.unfinished > 0 {
        bail!(
            "{} brief(s) unfinished because the server failed; run the same command again to \
             finish them",
            summary.unfinished
        );
    }
    if summary.passed == 0 {
        bail!("no environment passed; each brief's synthesis.json says what went wrong");
    }
    Ok(())
}

/// A brief's name becomes an environment id and a folder name.
fn check_brief(b: &Brief) -> Result<(), String> {
    let n = &b.name;
    let ok = !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && n.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_');
    if !ok {
        return Err(format!(
            "name `{n}` must be 1 to 64 characters of [a-z0-9_-], starting with a letter or digit"
        ));
    }
    if crate::envs::is_native(n) {
        return Err(format!("name `{n}` is a built-in environment's id"));
    }
    if b.brief.trim().is_empty() {
        return Err(format!("brief of `{n}` is empty"));
    }
    Ok(())
}

fn read_briefs(path: &Path) -> Result<Vec<Brief>> {
    crate::existing(path, "--briefs")?;
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let mut briefs: Vec<Brief> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{} line {}", path.display(), i + 1);
        let b: Brief = serde_json::from_str(line)
            .with_context(|| format!("{}: expected {{\"name\": ..., \"brief\": ...}}", at()))?;
        check_brief(&b).map_err(|e| anyhow::anyhow!("{}: {e}", at()))?;
        if briefs.iter().any(|o| o.name == b.name) {
            bail!("{}: name `{}` appears twice", at(), b.name);
        }
        briefs.push(b);
    }
    if briefs.is_empty() {
        bail!("{}: no briefs", path.display());
    }
    Ok(briefs)
}

/// A finished brief's record, if there is one.
fn read_record(path: &Path) -> Result<Option<Record>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
    };
    let rec = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a synthesis record", path.display()))?;
    Ok(Some(rec))
}

fn templates() -> Result<Templates> {
    Templates::new(&[("system", SYSTEM), ("user", USER), ("feedback", FEEDBACK)])
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The conversation's first two messages.
fn opening(brief: &Brief) -> Result<Vec<ChatMessage>> {
    #[derive(Serialize)]
    struct Schema {
        name: &'static str,
        text: &'static str,
    }
    let t = templates()?;
    let schemas: Vec<Schema> = SCHEMAS
        .iter()
        .map(|(name, text)| Schema {
            name,
            text: text.trim_end(),
        })
        .collect();
    let system = t.render(
        "system",
        &serde_json::json!({
            "wit": crate::plugin::WIT.trim_end(),
            "schemas": schemas,
            "example": EXAMPLE.trim_end(),
        }),
    )?;
    let user = t.render(
        "user",
        &serde_json::json!({"name": brief.name, "brief": brief.brief.trim()}),
    )?;
    Ok(vec![
        ChatMessage::text("system", system),
        ChatMessage::text("user", user),
    ])
}

/// What the model is told after a failed attempt.
fn feedback(attempt: &Attempt) -> Result<String> {
    Ok(templates()?.render(
        "feedback",
        &serde_json::json!({
            "outcome": attempt.outcome.name(),
            "problems": attempt.problems,
            "more": attempt.more_problems,
        }),
    )?)
}

/// The module in a reply: the last fenced block tagged `python` or `py`, else the last untagged
/// block that defines `class WitWorld`. Reasoning a server left in the text (`<think>…</think>`)
/// is skipped.
fn extract_module(reply: &str) -> Option<String> {
    let reply = reply
        .rsplit_once("</think>")
        .map_or(reply, |(_, after)| after);
    let mut blocks: Vec<(String, String)> = Vec::new();
    let mut open: Option<(String, usize, Vec<&str>)> = None;
    for line in reply.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut open {
            None => {
                if indent <= 3 && trimmed.starts_with("```") {
                    let ticks = trimmed.bytes().take_while(|&c| c == b'`').count();
                    let info = trimmed[ticks..].trim().to_ascii_lowercase();
                    open = Some((info, ticks, Vec::new()));
                }
            }
            Some((info, ticks, body)) => {
                let closes = indent <= 3
                    && trimmed.trim_end().len() >= *ticks
                    && trimmed.trim_end().bytes().all(|c| c == b'`');
                if closes {
                    blocks.push((std::mem::take(info), body.join("\n")));
                    open = None;
                } else {
                    body.push(line);
                }
            }
        }
    }
    let tagged = |info: &str| {
        let lang = info.split_whitespace().next().unwrap_or("");
        lang == "python" || lang == "py" || lang == "python3"
    };
    let code = blocks
        .iter()
        .rev()
        .find(|(info, _)| tagged(info))
        .or_else(|| {
            blocks
                .iter()
                .rev()
                .find(|(info, body)| info.is_empty() && body.contains("class WitWorld"))
        })
        .map(|(_, body)| body.clone())?;
    (!code.trim().is_empty()).then(|| code + "\n")
}

/// Clip a problem to its last [`PROBLEM_CHARS`] characters (a traceback's end says most).
fn clip_tail(s: &str) -> String {
    let count = s.chars().count();
    if count <= PROBLEM_CHARS {
        return s.to_string();
    }
    let tail: String = s.chars().skip(count - PROBLEM_CHARS).collect();
    format!("...{tail}")
}

/// The seed of one request: the run seed, the brief and the attempt.
fn request_seed(run: u64, name: &str, attempt: u32) -> u64 {
    let d = envsynth_core::hash::sha256_parts([
        ("run", &run.to_le_bytes()[..]),
        ("brief", name.as_bytes()),
        ("attempt", &attempt.to_le_bytes()[..]),
    ]);
    let hex = d.trim_start_matches("sha256:");
    u64::from_str_radix(&hex[..15], 16).unwrap_or(u64::from(attempt))
}

/// An environment that passed, as the record names it.
struct Passed {
    env: Arc<dyn Environment>,
    environment: String,
    content_hash: String,
    tools: Vec<String>,
    probes: usize,
}

/// One brief, from the first request to its record on disk. `Err` means the server failed and
/// the brief is unfinished (nothing final was written for it).
async fn synthesize(
    a: &Args,
    policy: &OpenAiPolicy,
    solver: Option<&Arc<Backend>>,
    brief: &Brief,
) -> Result<Record, String> {
    let dir = a.out.join(&brief.name);
    if let Some(rec) = read_record(&dir.join("synthesis.json")).map_err(|e| format!("{e:#}"))? {
        println!("{}: finished in an earlier run", brief.name);
        return Ok(rec);
    }
    // Attempts of a run the server cut short are replaced, not mixed with this run's.
    let attempts = dir.join("attempts");
    if attempts.exists() {
        std::fs::remove_dir_all(&attempts).map_err(|e| format!("{}: {e}", attempts.display()))?;
    }
    let r = play(a, policy, solver, brief, &dir).await;
    match &r {
        Ok(rec) if rec.passed => println!(
            "{}: passed at attempt {} ({}, {} probes)",
            brief.name,
            rec.attempts.len(),
            rec.environment.as_deref().unwrap_or(""),
            rec.probes_passed
        ),
        Ok(rec) => {
            let last = rec.attempts.last();
            let why = last
                .and_then(|l| l.problems.first())
                .and_then(|p| p.lines().last())
                .map_or(String::new(), |line| format!(": {line}"));
            println!(
                "{}: failed after {} attempt(s); the last: {}{why}",
                brief.name,
                rec.attempts.len(),
                last.map_or("", |l| l.outcome.name()),
            );
        }
        Err(e) => eprintln!("{}: unfinished: {e}", brief.name),
    }
    r
}

async fn play(
    a: &Args,
    policy: &OpenAiPolicy,
    solver: Option<&Arc<Backend>>,
    brief: &Brief,
    dir: &Path,
) -> Result<Record, String> {
    let io = |p: &Path, e: &dyn std::fmt::Display| format!("{}: {e}", p.display());
    let mut messages = opening(brief).map_err(|e| e.to_string())?;
    let mut attempts = Vec::new();
    let mut passed = None;
    for n in 1..=a.attempts {
        let request = ChatRequest {
            model: a.model.clone(),
            messages: messages.clone(),
            seed: Some(request_seed(a.seed, &brief.name, n)),
            temperature: Some(a.temperature),
            max_tokens: a.max_tokens,
            tools: Vec::new(),
            prefix: None,
        };
        let reply = policy.complete(&request).await.map_err(|e| e.to_string())?;
        let content = reply.message.content.clone().unwrap_or_default();
        let work = dir.join("attempts").join(n.to_string());
        std::fs::create_dir_all(&work).map_err(|e| io(&work, &e))?;
        std::fs::write(work.join("reply.md"), &content).map_err(|e| io(&work, &e))?;
        let (outcome, problems, ok) = match extract_module(&content) {
            None => (Outcome::NoCode, Vec::new(), None),
            Some(code) => {
                let source = work.join(MODULE);
                std::fs::write(&source, &code).map_err(|e| io(&source, &e))?;
                let (name, count, timeout, register) = (
                    brief.name.clone(),
                    a.check_count,
                    Duration::from_secs(a.build_timeout.max(1)),
                    a.register,
                );
                tokio::task::spawn_blocking(move || {
                    examine(&source, &name, count, timeout, register)
                })
                .await
                .map_err(|e| e.to_string())?
            }
        };
        // What passed the suite is played by the solver, when there is one.
        let (outcome, problems, ok, solve) = match (ok, &a.solver) {
            (Some(p), Some(_)) => {
                let (solve, outcome, problems) = play_solver(a, solver, &p, &work).await?;
                let ok = (outcome == Outcome::Passed).then_some(p);
                (outcome, problems, ok, solve)
            }
            (ok, _) => (outcome, problems, ok, None),
        };
        let more = problems.len().saturating_sub(FEEDBACK_PROBLEMS);
        let attempt = Attempt {
            attempt: n,
            outcome,
            problems: problems
                .iter()
                .take(FEEDBACK_PROBLEMS)
                .map(|p| clip_tail(p))
                .collect(),
            more_problems: more,
            usage: reply.usage,
            solve,
        };
        // Reasoning stays out of the history: a new user message follows.
        messages.push(ChatMessage::text("assistant", content));
        if let Some(p) = ok {
            attempts.push(attempt);
            passed = Some((p, work));
            break;
        }
        if n < a.attempts {
            messages.push(ChatMessage::text(
                "user",
                feedback(&attempt).map_err(|e| e.to_string())?,
            ));
        }
        attempts.push(attempt);
    }
    let mut rec = Record {
        name: brief.name.clone(),
        brief: brief.brief.clone(),
        model: a.model.clone(),
        seed: a.seed,
        passed: passed.is_some(),
        environment: None,
        content_hash: None,
        tools: Vec::new(),
        probes_passed: 0,
        registered: false,
        attempts,
        messages,
    };
    if let Some((p, work)) = passed {
        for file in [MODULE, "environment.wasm"] {
            let from = work.join(file);
            let bytes = std::fs::read(&from).map_err(|e| io(&from, &e))?;
            envsynth_shards::atomic_write(&dir.join(file), &bytes).map_err(|e| e.to_string())?;
        }
        if a.register {
            let wasm = dir.join("environment.wasm");
            crate::envs::register(&wasm).map_err(|e| format!("registering: {e:#}"))?;
            rec.registered = true;
        }
        rec.environment = Some(p.environment);
        rec.content_hash = Some(p.content_hash);
        rec.tools = p.tools;
        rec.probes_passed = p.probes;
    }
    let mut bytes = serde_json::to_vec_pretty(&rec).map_err(|e| e.to_string())?;
    bytes.push(b'\n');
    envsynth_shards::atomic_write(&dir.join("synthesis.json"), &bytes)
        .map_err(|e| e.to_string())?;
    Ok(rec)
}

/// Build, load and check one attempt's module: its outcome, the problems found, and what passed.
fn examine(
    source: &Path,
    name: &str,
    count: u64,
    timeout: Duration,
    register: bool,
) -> (Outcome, Vec<String>, Option<Passed>) {
    let wasm = source.with_extension("wasm");
    if let Err(e) = crate::plugin::componentize(source, "environment", &wasm, Some(timeout)) {
        return (Outcome::BuildFailed, vec![format!("{e:#}")], None);
    }
    let env = match crate::envs::load_plugin(&wasm) {
        Ok(env) => env,
        Err(e) => {
            return (
                Outcome::LoadFailed,
                vec![strip_path(&format!("{e:#}"), &wasm)],
                None,
            );
        }
    };
    let spec = env.spec().clone();
    if spec.id != name {
        return (
            Outcome::LoadFailed,
            vec![format!(
                "spec() gives the id `{}`; it must be `{name}`",
                spec.id
            )],
            None,
        );
    }
    if register && let Some(why) = crate::envs::registration_conflict(&spec, &wasm) {
        return (Outcome::CheckFailed, vec![why], None);
    }
    let report = match crate::plugin::environment_report(&env, count, 0) {
        Ok(r) => r,
        Err(e) => return (Outcome::CheckFailed, vec![format!("{e:#}")], None),
    };
    if !report.failed.is_empty() {
        return (Outcome::CheckFailed, report.failed, None);
    }
    let passed = Passed {
        tools: env.tool_specs().iter().map(|t| t.name.clone()).collect(),
        env: Arc::new(env),
        environment: spec.env_ref().to_string(),
        content_hash: spec.content_hash.clone(),
        probes: report.passed,
    };
    (Outcome::Passed, Vec::new(), Some(passed))
}

/// The `--solver` flags as a policy choice.
fn solver_choice(a: &Args) -> crate::rollout::PolicyChoice<'_> {
    crate::rollout::PolicyChoice {
        flag: "--solver",
        device_flag: "--solver-device",
        policy: a.solver.as_deref().unwrap_or_default(),
        model: &a.solver_model,
        device: a.solver_device,
        temperature: solve_limits(a).temperature.unwrap_or(1.0),
        concurrency: 16,
        timeout: a.timeout,
        retries: a.retries,
        token_ids: false,
    }
}

/// The limits of each solver rollout.
fn solve_limits(a: &Args) -> Limits {
    Limits {
        max_turns: a.solve_max_turns,
        max_completion_tokens: a.solve_max_tokens,
        ..Limits::default()
    }
}

/// The candidate environment, the only one a simulated solver resolves (it is not registered
/// yet).
struct Candidate(Arc<dyn Environment>);

impl Verifiers for Candidate {
    fn environment(&self, env: &EnvRef) -> Result<Resolved, String> {
        if *env != self.0.spec().env_ref() {
            return Err(format!("{env} is not the environment being synthesized"));
        }
        Ok(Resolved {
            env: self.0.clone(),
            sandboxed: true,
        })
    }
}

/// Plays an environment that passed the suite with the solver: `--solve-count` tasks per
/// level (seed [`SOLVE_SEED`]), `--solve-k` rollouts each, written to `<work>/solve/`.
/// `solver` is the policy started once for the run; a simulated solver (`None`) is started
/// here, as it resolves this environment. `Err` means the solver's server failed (the brief is
/// left unfinished).
async fn play_solver(
    a: &Args,
    solver: Option<&Arc<Backend>>,
    passed: &Passed,
    work: &Path,
) -> Result<(Option<Solve>, Outcome, Vec<String>), String> {
    let env = passed.env.clone();
    let count = a.solve_count;
    let generated = tokio::task::spawn_blocking(move || {
        crate::plugin::tasks(env.as_ref(), count, SOLVE_SEED).map_err(|e| format!("{e:#}"))
    })
    .await
    .map_err(|e| e.to_string())?;
    let tasks = match generated {
        Ok(t) => t,
        Err(e) => {
            let why = format!("generating the tasks a solver plays (seed {SOLVE_SEED}): {e}");
            return Ok((None, Outcome::CheckFailed, vec![why]));
        }
    };
    let mut prepared = Vec::with_capacity(tasks.len());
    for t in &tasks {
        match passed.env.prepare(t) {
            Ok(p) => prepared.push(Arc::<dyn PreparedTask>::from(p)),
            Err(e) => {
                let why = format!("preparing a {} task: {e}", t.difficulty.level);
                return Ok((None, Outcome::CheckFailed, vec![why]));
            }
        }
    }
    let policy = match solver {
        Some(shared) => shared.clone(),
        None => {
            let verifiers = Candidate(passed.env.clone());
            let started = crate::rollout::backend(&solver_choice(a), &tasks, &verifiers).await;
            Arc::new(started.map_err(|e| format!("{e:#}"))?)
        }
    };
    let limits = Arc::new(solve_limits(a));
    let mut jobs = tokio::task::JoinSet::new();
    let mut n = 0;
    for (task, prepared) in tasks.into_iter().zip(prepared) {
        let task = Arc::new(task);
        for seed in sample_seeds(a.seed, &task.id, a.solve_k) {
            let (policy, limits, task, prepared) = (
                policy.clone(),
                limits.clone(),
                task.clone(),
                prepared.clone(),
            );
            jobs.spawn(async move {
                let r =
                    envsynth_rollout::run(policy.as_ref(), &task, prepared.as_ref(), seed, &limits)
                        .await;
                (n, r)
            });
            n += 1;
        }
    }
    let mut rollouts: Vec<Option<Rollout>> = (0..n).map(|_| None).collect();
    while let Some(joined) = jobs.join_next().await {
        let (i, r) = joined.map_err(|e| e.to_string())?;
        rollouts[i] = Some(r);
    }
    let rollouts: Vec<Rollout> = rollouts.into_iter().flatten().collect();
    let ks = [1, u64::from(a.solve_k)];
    let summary = crate::rollout::write_run(&work.join("solve"), &rollouts, &ks)
        .map_err(|e| format!("{e:#}"))?;
    let (solve, outcome, problems) =
        judge(policy.name(), a.solve_k, &summary, &rollouts, a.max_pass)?;
    Ok((Some(solve), outcome, problems))
}

/// The solver's rollouts against `--max-pass`: a tool that failed in the environment is a
/// check failure; no scored rollout at all means the solver's server failed (`Err`); then too
/// many passes is `too_easy` and none `unsolved`. The problems say so with the numbers.
fn judge(
    solver: &str,
    k: u32,
    summary: &PlaySummary,
    rollouts: &[Rollout],
    max_pass: f64,
) -> Result<(Solve, Outcome, Vec<String>), String> {
    let mut solve = Solve {
        solver: solver.to_string(),
        tasks: summary.tasks.len(),
        k,
        rollouts: summary.rollouts,
        masked: summary.masked,
        passed: rollouts.iter().filter(|r| r.verdict.passed).count() as u64,
        pass_rate: 0.0,
        by_level: BTreeMap::new(),
        failed_checks: summary.failed_checks.clone(),
    };
    let mut broken = std::collections::BTreeSet::new();
    for r in rollouts {
        if let Stop::ToolError(m) = &r.stop {
            broken.insert(format!(
                "a tool failed while the solver played a {} task: {m}",
                r.level
            ));
        }
    }
    let scored = summary.rollouts - summary.masked;
    for t in &summary.tasks {
        let e = solve.by_level.entry(t.level.clone()).or_default();
        e.0 += t.attempts;
        e.1 += t.passes;
    }
    solve.pass_rate = if scored == 0 {
        0.0
    } else {
        solve.passed as f64 / scored as f64
    };
    if !broken.is_empty() {
        return Ok((solve, Outcome::CheckFailed, broken.into_iter().collect()));
    }
    if scored == 0 {
        let kinds: Vec<String> = summary
            .masked_kinds
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        return Err(format!(
            "the solver {} scored no rollout (masked: {}); {}",
            solve.solver,
            kinds.join(", "),
            rollouts
                .iter()
                .find_map(|r| r.verdict.error.clone())
                .unwrap_or_default()
        ));
    }
    let percent = |p: u64, of: u64| match of {
        0 => "none scored".to_string(),
        _ => format!("{p} passed ({:.0}%)", 100.0 * p as f64 / of as f64),
    };
    let mut lines = vec![format!(
        "{} played {} tasks, {} times each; of its {scored} scored rollouts, {}",
        solve.solver,
        solve.tasks,
        solve.k,
        percent(solve.passed, scored),
    )];
    for (level, (n, p)) in &solve.by_level {
        lines.push(format!(
            "level {level}: of {n} scored rollouts, {}",
            percent(*p, *n)
        ));
    }
    if !solve.failed_checks.is_empty() {
        let top: Vec<String> = solve
            .failed_checks
            .iter()
            .take(8)
            .map(|(c, n)| format!("{c} ({n})"))
            .collect();
        lines.push(format!(
            "the checks its answers failed, most first: {}",
            top.join(", ")
        ));
    }
    let outcome = if solve.pass_rate > max_pass {
        lines[0].push_str(&format!(", more than the share of {max_pass} allowed"));
        Outcome::TooEasy
    } else if solve.passed == 0 {
        // What one failed answer broke, in the verifier's words.
        if let Some(r) = rollouts.iter().find(|r| !r.verdict.mask) {
            let mut why: Vec<String> = r
                .verdict
                .checks
                .iter()
                .filter(|c| c.status == envsynth_core::CheckStatus::Failed)
                .map(|c| format!("{}: {}", c.id, c.reason))
                .collect();
            why.extend(r.verdict.error.clone());
            lines.push(format!(
                "one answer to a {} task failed with: {}",
                r.level,
                if why.is_empty() {
                    "no answer".to_string()
                } else {
                    why.join("; ")
                }
            ));
        }
        Outcome::Unsolved
    } else {
        return Ok((solve, Outcome::Passed, Vec::new()));
    };
    Ok((solve, outcome, lines))
}

/// The model does not need this machine's paths.
fn strip_path(message: &str, path: &Path) -> String {
    message
        .replace(&format!("{}: ", path.display()), "")
        .replace(&path.display().to_string(), MODULE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_module_is_the_last_python_block() {
        let reply = "Plan:\n```python\nold = 1\n```\nBetter:\n```Python\nclass WitWorld:\n    pass\n```\nDone.";
        assert_eq!(
            extract_module(reply).as_deref(),
            Some("class WitWorld:\n    pass\n")
        );
        // An untagged block counts only when it holds the world class.
        let untagged = "```\nls -l\n```\n```\nimport json\nclass WitWorld: ...\n```";
        assert_eq!(
            extract_module(untagged).as_deref(),
            Some("import json\nclass WitWorld: ...\n")
        );
        assert_eq!(extract_module("```\nls -l\n```"), None);
        assert_eq!(extract_module("no code at all"), None);
        assert_eq!(extract_module("```python\n\n```"), None);
        // An unclosed block is not a module; reasoning before </think> is skipped; longer
        // fences may hold shorter ones.
        assert_eq!(extract_module("```python\nx = 1\n"), None);
        assert_eq!(
            extract_module("<think>```python\nbad\n```</think>\n```py\ngood\n```").as_deref(),
            Some("good\n")
        );
        assert_eq!(
            extract_module("````python\ns = '''\n```\n'''\n````").as_deref(),
            Some("s = '''\n```\n'''\n")
        );
    }

    #[test]
    fn briefs_are_checked_by_name_and_line() {
        let b = |name: &str, brief: &str| Brief {
            name: name.into(),
            brief: brief.into(),
        };
        assert!(check_brief(&b("shift-rota_2", "a clinic rota")).is_ok());
        for (name, brief, want) in [
            ("Shift", "x", "[a-z0-9_-]"),
            ("-a", "x", "starting with"),
            ("", "x", "1 to 64"),
            ("travel-planning", "x", "built-in"),
            ("ok", "  ", "empty"),
        ] {
            let e = check_brief(&b(name, brief)).unwrap_err();
            assert!(e.contains(want), "{name:?}: {e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("briefs.jsonl");
        for (text, want) in [
            (
                "{\"name\": \"a\", \"brief\": \"x\"}\n\n{\"name\": \"a\", \"brief\": \"y\"}",
                "line 3: name `a` appears twice",
            ),
            (
                "{\"name\": \"a\", \"brief\": \"x\", \"level\": 1}",
                "line 1",
            ),
            ("{\"name\": \"a\"}", "line 1"),
            ("{\"name\": \"A\", \"brief\": \"x\"}", "line 1: name `A`"),
            ("\n", "no briefs"),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = format!("{:#}", read_briefs(&path).unwrap_err());
            assert!(e.contains(want), "{text:?}: {e}");
        }
        std::fs::write(
            &path,
            "{\"name\": \"a\", \"brief\": \"x\"}\n{\"name\": \"b\", \"brief\": \"y\"}\n",
        )
        .unwrap();
        let names: Vec<String> = read_briefs(&path)
            .unwrap()
            .into_iter()
            .map(|b| b.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn the_prompt_holds_the_contract_and_feedback_names_the_problems() {
        let m = opening(&Brief {
            name: "shift-rota".into(),
            brief: "A clinic's weekly rota.".into(),
        })
        .unwrap();
        let system = m[0].content.as_deref().unwrap();
        assert!(system.contains("world environment {"));
        assert!(system.contains("class WitWorld(wit_world.WitWorld)"));
        assert!(system.contains("\"empty_submission\""));
        assert_eq!(system.matches("```json").count(), SCHEMAS.len());
        let user = m[1].content.as_deref().unwrap();
        assert!(user.contains("`shift-rota`") && user.contains("A clinic's weekly rota."));

        let attempt = |outcome, problems: &[&str], more| Attempt {
            attempt: 1,
            outcome,
            problems: problems.iter().map(|s| s.to_string()).collect(),
            more_problems: more,
            usage: Usage::default(),
            solve: None,
        };
        let f = feedback(&attempt(Outcome::NoCode, &[], 0)).unwrap();
        assert!(f.contains("no ```python block"), "{f}");
        let f = feedback(&attempt(
            Outcome::BuildFailed,
            &["SyntaxError: expected ':'"],
            0,
        ))
        .unwrap();
        assert!(
            f.contains("did not build") && f.contains("```text\nSyntaxError"),
            "{f}"
        );
        let f = feedback(&attempt(
            Outcome::CheckFailed,
            &["easy/0 mutant 2: passed"],
            7,
        ))
        .unwrap();
        assert!(
            f.contains("- easy/0 mutant 2: passed") && f.contains("7 more"),
            "{f}"
        );
        assert_ne!(request_seed(0, "a", 1), request_seed(0, "a", 2));
        assert_ne!(request_seed(0, "a", 1), request_seed(0, "b", 1));
        assert_eq!(
            clip_tail(&"x".repeat(PROBLEM_CHARS + 5)).len(),
            PROBLEM_CHARS + 3
        );
    }

    /// A rollout of task `task` (level `level`) that passed, failed check `budget`, or stopped
    /// as `stop` says.
    fn played(task: &str, level: &str, seed: u64, pass: bool, stop: Stop) -> Rollout {
        use envsynth_core::{Check, FailureKind, Verdict};
        let verdict = match &stop {
            Stop::Answered => Verdict::from_checks(
                task,
                vec![Check::new(
                    "budget",
                    pass,
                    if pass { "within" } else { "over by 10" }.into(),
                )],
            ),
            Stop::ToolError(m) | Stop::PolicyError(m) => {
                Verdict::rejected(task, FailureKind::EnvironmentError, m.clone(), [])
            }
            _ => unreachable!(),
        };
        Rollout {
            rollout_id: format!("{task}/{seed}"),
            task_id: task.into(),
            environment: "e@0.1.0".into(),
            level: level.into(),
            policy: "p".into(),
            sample_seed: seed,
            messages: Vec::new(),
            turns: 1,
            tool_steps: 0,
            usage: Default::default(),
            stop,
            verdict,
            tokens: Vec::new(),
        }
    }

    #[test]
    fn the_solver_s_pass_rate_judges_the_environment() {
        let judged = |rs: &[Rollout], max: f64| {
            let summary = envsynth_rollout::score::summarize(rs, &[1, 2]);
            judge("sim-oracle", 2, &summary, rs, max)
        };
        // Easy tasks pass, hard ones fail their budget: half pass.
        let mixed = [
            played("a", "easy", 1, true, Stop::Answered),
            played("a", "easy", 2, true, Stop::Answered),
            played("b", "hard", 1, false, Stop::Answered),
            played("b", "hard", 2, false, Stop::Answered),
        ];
        let (solve, outcome, problems) = judged(&mixed, 0.75).unwrap();
        assert_eq!(outcome, Outcome::Passed);
        assert!(problems.is_empty());
        assert_eq!((solve.tasks, solve.passed, solve.pass_rate), (2, 2, 0.5));
        assert_eq!(solve.by_level["easy"], (2, 2));
        assert_eq!(solve.by_level["hard"], (2, 0));
        assert_eq!(solve.failed_checks, [("budget".to_string(), 2)]);

        let (_, outcome, problems) = judged(&mixed, 0.4).unwrap();
        assert_eq!(outcome, Outcome::TooEasy);
        assert_eq!(
            problems[0],
            "sim-oracle played 2 tasks, 2 times each; of its 4 scored rollouts, 2 passed (50%), \
             more than the share of 0.4 allowed"
        );
        assert_eq!(
            problems[1],
            "level easy: of 2 scored rollouts, 2 passed (100%)"
        );
        assert_eq!(
            problems[2],
            "level hard: of 2 scored rollouts, 0 passed (0%)"
        );
        assert_eq!(
            problems[3],
            "the checks its answers failed, most first: budget (2)"
        );

        // Nothing passes: unsolved, with what one answer broke.
        let (_, outcome, problems) = judged(&mixed[2..], 0.75).unwrap();
        assert_eq!(outcome, Outcome::Unsolved);
        assert_eq!(
            problems.last().unwrap(),
            "one answer to a hard task failed with: budget: over by 10"
        );

        // A tool that fails in the environment is the environment's fault.
        let mut broken = mixed.to_vec();
        broken[3] = played("b", "hard", 2, false, Stop::ToolError("fuel".into()));
        let (_, outcome, problems) = judged(&broken, 0.75).unwrap();
        assert_eq!(outcome, Outcome::CheckFailed);
        assert_eq!(
            problems,
            ["a tool failed while the solver played a hard task: fuel"]
        );

        // Every rollout masked: the solver, not the brief, failed.
        let down = [played(
            "a",
            "easy",
            1,
            false,
            Stop::PolicyError("503".into()),
        )];
        let e = judged(&down, 0.75).unwrap_err();
        assert!(e.contains("scored no rollout") && e.contains("503"), "{e}");
    }
}
