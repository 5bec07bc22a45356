//! `envsynth synthesize`: environments written by a model, as DeepSeek-V3.2 synthesized its
//! agent environments. A model behind any OpenAI-compatible server gets a brief and the plugin
//! contract and writes a whole environment in Python. Each attempt is built into a component,
//! loaded in the sandbox and put through the environment integrity suite that `plugin check`
//! runs. What failed goes back to the model, until an attempt passes or the attempts run out.
//!
//! The model's code never runs natively on this machine: it is compiled to WebAssembly (Python
//! executes the module's top-level code during that build, inside componentize-py's own
//! WebAssembly runtime, under a time limit) and then runs only in the sandbox.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use envsynth_core::Environment;
use envsynth_core::chat::{ChatMessage, ChatRequest, Usage};
use envsynth_prompts::Templates;
use envsynth_rollout::{ClientOptions, OpenAiPolicy, Policy};

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
    /// all the same, or the version was taken.
    CheckFailed,
    Passed,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::NoCode => "no_code",
            Outcome::BuildFailed => "build_failed",
            Outcome::LoadFailed => "load_failed",
            Outcome::CheckFailed => "check_failed",
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
}

pub fn run(a: Args) -> Result<()> {
    if a.attempts == 0 {
        bail!("--attempts must be at least 1");
    }
    if a.check_count == 0 {
        bail!("--check-count must be at least 1");
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
        let permits = Arc::new(tokio::sync::Semaphore::new(a.concurrency.max(1)));
        let mut jobs = tokio::task::JoinSet::new();
        for (i, brief) in briefs.iter().cloned().enumerate() {
            let (a, policy, permits) = (a.clone(), policy.clone(), permits.clone());
            jobs.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let r = synthesize(&a, policy.as_ref(), &brief).await;
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
                }
            }
            Err(_) => {
                summary.unfinished += 1;
                SummaryRow {
                    name: brief.name.clone(),
                    outcome: "unfinished",
                    attempts: 0,
                    environment: None,
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
    environment: String,
    content_hash: String,
    tools: Vec<String>,
    probes: usize,
}

/// One brief, from the first request to its record on disk. `Err` means the server failed and
/// the brief is unfinished (nothing final was written for it).
async fn synthesize(a: &Args, policy: &OpenAiPolicy, brief: &Brief) -> Result<Record, String> {
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
    let r = play(a, policy, brief, &dir).await;
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
        environment: spec.env_ref().to_string(),
        content_hash: spec.content_hash.clone(),
        tools: env.tool_specs().iter().map(|t| t.name.clone()).collect(),
        probes: report.passed,
    };
    (Outcome::Passed, Vec::new(), Some(passed))
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
}
