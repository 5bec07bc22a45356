//! `envsynth view`: a finished rollout run, readably. A list of its rollouts (filtered by
//! outcome, failed check, level, environment or task), one rollout in full (the conversation
//! with its tool calls and results, then every check of the verdict), or one self-contained
//! HTML page of them with the same filters and a text search.
//!
//! Rollouts hold whatever the policy wrote, so nothing of theirs reaches the terminal or the
//! page as markup: control and bidirectional-override characters are printed as `\u{..}`
//! escapes, and the page escapes every text and allows only its own style and script (by
//! hash, in its Content-Security-Policy), no network and no other script.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Result, bail};
use sha2::{Digest, Sha256};

use envsynth_core::CheckStatus;
use envsynth_core::chat::ChatMessage;
use envsynth_rollout::score::{Group, Summary, kind_name, score_tasks, summarize};
use envsynth_rollout::{Rollout, Stop};

#[derive(clap::Args)]
pub struct Args {
    /// A finished `envsynth rollout` or `rescore` output directory (or its rollouts.jsonl).
    pub run: PathBuf,
    /// Only rollouts with this outcome (failed: scored and not passed; masked: left out of
    /// pass@k).
    #[arg(long, value_enum)]
    pub status: Option<Status>,
    /// Only rollouts whose verdict failed this check (its id, e.g. `hard.budget`).
    #[arg(long)]
    pub check: Option<String>,
    /// Only rollouts of tasks at this difficulty level.
    #[arg(long)]
    pub level: Option<String>,
    /// Only rollouts of this environment (`id@version`, or `id` for every version).
    #[arg(long)]
    pub environment: Option<String>,
    /// Only rollouts of tasks whose id starts with this (`sha256:` may be left out).
    #[arg(long)]
    pub task: Option<String>,
    /// Print rollout N in full: N is its line in rollouts.jsonl, as the list numbers it.
    #[arg(long, conflicts_with_all = ["html", "status", "check", "level", "environment", "task"])]
    pub rollout: Option<usize>,
    /// Write the rollouts the filters keep to this file as one self-contained HTML page (the
    /// summary, filters, a text search and every conversation; it loads nothing).
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Compare with another finished run (a baseline, another policy, the run before a
    /// `rescore`): pass@k, each check's failure share, the tasks whose pass rate changed and
    /// the rollouts (same rollout ids) whose verdict changed. Filters apply to both runs.
    #[arg(long, conflicts_with_all = ["html", "rollout"])]
    pub against: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Status {
    Passed,
    Failed,
    Masked,
}

impl Status {
    pub fn of(r: &Rollout) -> Status {
        if r.verdict.mask {
            Status::Masked
        } else if r.verdict.passed {
            Status::Passed
        } else {
            Status::Failed
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Status::Passed => "passed",
            Status::Failed => "failed",
            Status::Masked => "masked",
        }
    }
}

pub fn run(a: Args) -> Result<()> {
    crate::existing(&a.run, "rollout run")?;
    let rollouts = crate::rollout::read_run(&a.run)?;
    let title = a.run.display().to_string();
    if let Some(n) = a.rollout {
        if rollouts.is_empty() {
            bail!("--rollout {n}: {title} has no rollouts");
        }
        if n == 0 || n > rollouts.len() {
            bail!(
                "--rollout {n}: {title} has rollouts 1 to {} (lines of rollouts.jsonl)",
                rollouts.len()
            );
        }
        print!("{}", rollout_text(n, &rollouts[n - 1]));
        return Ok(());
    }
    if let Some(base_dir) = &a.against {
        crate::existing(base_dir, "--against run")?;
        let base = crate::rollout::read_run(base_dir)?;
        let filter = Filter::new(&a, &[rollouts.as_slice(), base.as_slice()].concat())?;
        let keep = |rs: &[Rollout]| -> Vec<Numbered> {
            rs.iter()
                .enumerate()
                .filter(|(_, r)| filter.keeps(r))
                .map(|(i, r)| (i + 1, r.clone()))
                .collect()
        };
        print!(
            "{}",
            compare_text(
                &title,
                &keep(&rollouts),
                &base_dir.display().to_string(),
                &keep(&base),
                &filter.describe()
            )
        );
        return Ok(());
    }
    let filter = Filter::new(&a, &rollouts)?;
    let kept: Vec<(usize, &Rollout)> = rollouts
        .iter()
        .enumerate()
        .map(|(i, r)| (i + 1, r))
        .filter(|(_, r)| filter.keeps(r))
        .collect();
    let summary = summarize(&rollouts, &pass_ks(&rollouts));
    match &a.html {
        Some(path) => {
            let page = html_page(&title, &summary, &kept, &filter.describe());
            envsynth_shards::atomic_write(path, page.as_bytes())?;
            eprintln!(
                "wrote {} rollouts of {} to {} ({} KB)",
                kept.len(),
                rollouts.len(),
                path.display(),
                page.len().div_ceil(1024)
            );
        }
        None => print!("{}", list_text(&title, &summary, &kept, &filter.describe())),
    }
    Ok(())
}

/// pass@1 and pass@k for the most scored attempts any task has.
fn pass_ks(rollouts: &[Rollout]) -> Vec<u64> {
    let most = score_tasks(rollouts, &[])
        .iter()
        .map(|t| t.attempts)
        .max()
        .unwrap_or(1)
        .max(1);
    if most > 1 { vec![1, most] } else { vec![1] }
}

/// What a rollout must match to be shown; every value is checked against the run first, so a
/// typo is an error naming what the run has, not an empty list.
pub struct Filter {
    status: Option<Status>,
    check: Option<String>,
    level: Option<String>,
    environment: Option<String>,
    task: Option<String>,
}

impl Filter {
    fn new(a: &Args, rollouts: &[Rollout]) -> Result<Filter> {
        let known = |of: &dyn Fn(&Rollout) -> Vec<String>| -> BTreeSet<String> {
            rollouts.iter().flat_map(of).collect()
        };
        let listed = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(", ");
        if let Some(c) = &a.check {
            let checks = known(&|r| r.verdict.checks.iter().map(|c| c.id.to_string()).collect());
            if !checks.contains(c) {
                bail!(
                    "--check {c:?}: no verdict of this run has that check; its checks are: {}",
                    listed(&checks)
                );
            }
        }
        if let Some(l) = &a.level {
            let levels = known(&|r| vec![r.level.clone()]);
            if !levels.contains(l) {
                bail!("--level {l:?}: this run's levels are: {}", listed(&levels));
            }
        }
        if let Some(e) = &a.environment {
            let envs = known(&|r| vec![r.environment.clone()]);
            if !envs.iter().any(|x| env_matches(x, e)) {
                bail!(
                    "--environment {e:?}: this run's environments are: {}",
                    listed(&envs)
                );
            }
        }
        let task = a
            .task
            .as_ref()
            .map(|t| t.trim_start_matches("sha256:").to_string());
        if let Some(t) = &task {
            if t.is_empty() || !t.chars().all(|c| c.is_ascii_hexdigit()) {
                bail!("--task {t:?}: a task id is hexadecimal (`sha256:` may be left out)");
            }
            if !rollouts.iter().any(|r| task_matches(&r.task_id, t)) {
                bail!("--task {t:?}: no rollout of this run plays a task whose id starts with it");
            }
        }
        Ok(Filter {
            status: a.status,
            check: a.check.clone(),
            level: a.level.clone(),
            environment: a.environment.clone(),
            task,
        })
    }

    fn keeps(&self, r: &Rollout) -> bool {
        self.status.is_none_or(|s| Status::of(r) == s)
            && self.check.as_ref().is_none_or(|c| {
                r.verdict
                    .checks
                    .iter()
                    .any(|x| x.id == *c && x.status == CheckStatus::Failed)
            })
            && self.level.as_ref().is_none_or(|l| r.level == *l)
            && self
                .environment
                .as_ref()
                .is_none_or(|e| env_matches(&r.environment, e))
            && self
                .task
                .as_ref()
                .is_none_or(|t| task_matches(&r.task_id, t))
    }

    /// The filters in force, as the command line spells them (empty when none).
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = self.status {
            parts.push(format!("--status {}", s.name()));
        }
        for (flag, v) in [
            ("--check", &self.check),
            ("--level", &self.level),
            ("--environment", &self.environment),
            ("--task", &self.task),
        ] {
            if let Some(v) = v {
                parts.push(format!("{flag} {v}"));
            }
        }
        parts.join(" ")
    }
}

fn env_matches(env: &str, wanted: &str) -> bool {
    env == wanted || env.split('@').next() == Some(wanted)
}

fn task_matches(id: &str, prefix: &str) -> bool {
    id.trim_start_matches("sha256:").starts_with(prefix)
}

/// The ids of the checks a verdict failed, in its order.
fn failed_checks(r: &Rollout) -> Vec<&str> {
    r.verdict
        .checks
        .iter()
        .filter(|c| c.status == CheckStatus::Failed)
        .map(|c| c.id.as_ref())
        .collect()
}

/// Why a rollout did not pass, in a few words: the checks it failed, else its failure kind
/// (an empty or malformed answer, or why it was masked). Empty when it passed.
fn why(r: &Rollout) -> String {
    if r.verdict.passed {
        return String::new();
    }
    let failed = failed_checks(r);
    if failed.is_empty() || r.verdict.mask {
        kind_name(&r.verdict)
    } else {
        failed.join(", ")
    }
}

fn stop_name(s: &Stop) -> &'static str {
    match s {
        Stop::Answered => "answered",
        Stop::TurnLimit => "turn_limit",
        Stop::TokenLimit => "token_limit",
        Stop::TimeLimit => "time_limit",
        Stop::PolicyError(_) => "policy_error",
        Stop::ToolError(_) => "tool_error",
    }
}

fn stop_detail(s: &Stop) -> Option<&str> {
    match s {
        Stop::PolicyError(d) | Stop::ToolError(d) => Some(d),
        _ => None,
    }
}

/// `sha256:` and the first 12 hex digits: enough to tell a run's tasks apart and to pass to
/// `--task`.
fn short_id(id: &str) -> String {
    let hex = id.trim_start_matches("sha256:");
    format!("sha256:{}", hex.get(..12).unwrap_or(hex))
}

/// Text as the terminal should show it: control characters (escape sequences above all) and
/// bidirectional overrides become visible `\u{..}` escapes; newlines and tabs stay in bodies
/// and become spaces in one-line cells.
fn term(s: &str, multiline: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' | '\t' if multiline => out.push(c),
            '\n' | '\t' => out.push(' '),
            c if c.is_control() || is_bidi_control(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Characters that reorder how text is displayed (the "Trojan Source" ones).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{61c}')
}

/// JSON text pretty-printed; anything else as it is.
fn pretty(text: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v @ (serde_json::Value::Object(_) | serde_json::Value::Array(_))) => {
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| text.to_string())
        }
        _ => text.to_string(),
    }
}

fn rates(g: &Group) -> String {
    g.pass_at
        .iter()
        .map(|(k, p)| format!("pass@{k} {p:.3}"))
        .chain(g.pass_hat.iter().map(|(k, p)| format!("pass^{k} {p:.3}")))
        .collect::<Vec<_>>()
        .join("  ")
}

/// Passed and failed rollouts (the rest are masked).
fn counts(summary: &Summary) -> (u64, u64) {
    let passed = summary.tasks.iter().map(|t| t.passes).sum::<u64>();
    let failed = summary.rollouts - summary.masked - passed;
    (passed, failed)
}

/// The run's headline and one line per kept rollout.
pub fn list_text(
    title: &str,
    summary: &Summary,
    kept: &[(usize, &Rollout)],
    filters: &str,
) -> String {
    let (passed, failed) = counts(summary);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: {} rollouts of {} tasks, {passed} passed, {failed} failed, {} masked; {}",
        term(title, false),
        summary.rollouts,
        summary.tasks.len(),
        summary.masked,
        rates(&summary.overall)
    );
    if !filters.is_empty() {
        let _ = writeln!(out, "showing {} ({})", kept.len(), term(filters, false));
    }
    let _ = writeln!(
        out,
        "\n{:>5}  {:<7} {:>6}  {:<8} {:>5} {:>5}  {:<12} {:<19}  why",
        "#", "status", "reward", "level", "turns", "tools", "stop", "task"
    );
    for (n, r) in kept {
        let _ = writeln!(
            out,
            "{n:>5}  {:<7} {:>6.2}  {:<8} {:>5} {:>5}  {:<12} {:<19}  {}",
            Status::of(r).name(),
            r.verdict.reward,
            term(&r.level, false),
            r.turns,
            r.tool_steps,
            stop_name(&r.stop),
            short_id(&r.task_id),
            term(&why(r), false)
        );
    }
    if kept.is_empty() {
        let _ = writeln!(out, "(no rollout matches)");
    }
    out
}

/// A rollout and its number (its line in rollouts.jsonl).
type Numbered = (usize, Rollout);

/// Scored (unmasked) attempts and passes per task, with the task's level.
fn per_task(rollouts: &[Numbered]) -> BTreeMap<&str, (&str, u64, u64)> {
    let mut out: BTreeMap<&str, (&str, u64, u64)> = BTreeMap::new();
    for (_, r) in rollouts.iter().filter(|(_, r)| !r.verdict.mask) {
        let e = out.entry(&r.task_id).or_insert((&r.level, 0, 0));
        e.1 += 1;
        e.2 += u64::from(r.verdict.passed);
    }
    out
}

/// Each check's share of the scored rollouts that failed it.
fn check_shares(rollouts: &[Numbered]) -> BTreeMap<String, f64> {
    let scored: Vec<&Rollout> = rollouts
        .iter()
        .map(|(_, r)| r)
        .filter(|r| !r.verdict.mask)
        .collect();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for r in &scored {
        for id in failed_checks(r) {
            *counts.entry(id.to_string()).or_default() += 1;
        }
    }
    counts
        .into_iter()
        .map(|(id, n)| (id, n as f64 / scored.len() as f64))
        .collect()
}

/// A run against a baseline: the headline side by side, each check's failure share, the tasks
/// whose pass rate changed, and the rollouts both runs hold (same id) whose verdict changed.
pub fn compare_text(
    title: &str,
    run: &[Numbered],
    base_title: &str,
    base: &[Numbered],
    filters: &str,
) -> String {
    let owned = |rs: &[Numbered]| rs.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>();
    let (ra, rb) = (owned(run), owned(base));
    let ks: Vec<u64> = {
        let mut ks = pass_ks(&ra);
        ks.extend(pass_ks(&rb));
        ks.sort_unstable();
        ks.dedup();
        ks
    };
    let (sa, sb) = (summarize(&ra, &ks), summarize(&rb, &ks));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} against {}{}",
        term(title, false),
        term(base_title, false),
        if filters.is_empty() {
            String::new()
        } else {
            format!(" ({})", term(filters, false))
        }
    );
    let _ = writeln!(
        out,
        "
{:<24} {:>12} {:>12} {:>9}",
        "", "baseline", "run", "change"
    );
    let outcome = |s: &Summary| {
        let (p, f) = counts(s);
        format!("{p}/{f}/{}", s.masked)
    };
    let _ = writeln!(
        out,
        "{:<24} {:>12} {:>12}",
        "rollouts", sb.rollouts, sa.rollouts
    );
    let _ = writeln!(
        out,
        "{:<24} {:>12} {:>12}",
        "passed/failed/masked",
        outcome(&sb),
        outcome(&sa)
    );
    let num = |v: Option<&f64>| v.map(|p| format!("{p:.3}")).unwrap_or_else(|| "-".into());
    let change = |a: Option<&f64>, b: Option<&f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:+.3}", a - b),
        _ => String::new(),
    };
    for k in &ks {
        for (name, of) in [
            (
                "pass@",
                (|g: &Group| g.pass_at.clone()) as fn(&Group) -> BTreeMap<u64, f64>,
            ),
            ("pass^", |g: &Group| g.pass_hat.clone()),
        ] {
            let (a, b) = (of(&sa.overall), of(&sb.overall));
            let _ = writeln!(
                out,
                "{:<24} {:>12} {:>12} {:>9}",
                format!("{name}{k}"),
                num(b.get(k)),
                num(a.get(k)),
                change(a.get(k), b.get(k))
            );
        }
    }

    let (ca, cb) = (check_shares(run), check_shares(base));
    let mut checks: Vec<(&String, f64, f64)> = ca
        .keys()
        .chain(cb.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|id| {
            (
                id,
                cb.get(id).copied().unwrap_or(0.0),
                ca.get(id).copied().unwrap_or(0.0),
            )
        })
        .collect();
    checks.sort_by(|x, y| {
        (y.2 - y.1)
            .abs()
            .total_cmp(&(x.2 - x.1).abs())
            .then_with(|| x.0.cmp(y.0))
    });
    let _ = writeln!(
        out,
        "
checks failed, share of scored rollouts"
    );
    if checks.is_empty() {
        let _ = writeln!(out, "(no check failed in either run)");
    }
    let width = checks
        .iter()
        .map(|c| c.0.chars().count())
        .max()
        .unwrap_or(0);
    for (id, b, a) in &checks {
        let _ = writeln!(
            out,
            "  {:<width$}  {:>6.1}%  {:>6.1}%  {:>+7.1}",
            term(id, false),
            100.0 * b,
            100.0 * a,
            100.0 * (a - b)
        );
    }

    let (ta, tb) = (per_task(run), per_task(base));
    let both: Vec<&str> = ta.keys().filter(|t| tb.contains_key(*t)).copied().collect();
    let rate = |(_, n, c): (&str, u64, u64)| c as f64 / n as f64;
    let mut moved: Vec<(&str, f64)> = both
        .iter()
        .map(|t| (*t, rate(ta[t]) - rate(tb[t])))
        .filter(|(_, d)| *d != 0.0)
        .collect();
    moved.sort_by(|x, y| y.1.abs().total_cmp(&x.1.abs()).then_with(|| x.0.cmp(y.0)));
    let _ = writeln!(
        out,
        "
tasks whose pass rate changed: {} of the {} both runs scored ({} only in the run, {} only in the baseline)",
        moved.len(),
        both.len(),
        ta.len() - both.len(),
        tb.len() - both.len()
    );
    for (t, d) in &moved {
        let ((level, n, c), (_, bn, bc)) = (ta[t], tb[t]);
        let _ = writeln!(
            out,
            "  {:<19}  {:<8}  {bc}/{bn} -> {c}/{n}  {d:+.2}",
            short_id(t),
            term(level, false)
        );
    }

    let base_by_id: BTreeMap<&str, &Numbered> =
        base.iter().map(|x| (x.1.rollout_id.as_str(), x)).collect();
    let shared: Vec<(&Numbered, &Numbered)> = run
        .iter()
        .filter_map(|x| base_by_id.get(x.1.rollout_id.as_str()).map(|b| (x, *b)))
        .collect();
    let verdict_of = |r: &Rollout| (Status::of(r), why(r));
    let changed: Vec<_> = shared
        .iter()
        .filter(|(x, b)| verdict_of(&x.1) != verdict_of(&b.1))
        .collect();
    let _ = writeln!(
        out,
        "
rollouts whose verdict changed: {} of the {} both runs hold (same rollout id)",
        changed.len(),
        shared.len()
    );
    for ((n, r), (bn, b)) in changed {
        let say = |r: &Rollout| {
            let w = why(r);
            if w.is_empty() {
                Status::of(r).name().to_string()
            } else {
                format!("{}: {}", Status::of(r).name(), term(&w, false))
            }
        };
        let _ = writeln!(out, "  #{n} (baseline #{bn})  {} -> {}", say(b), say(r));
    }
    out
}

/// One rollout in full: what it played, the conversation, then every check.
pub fn rollout_text(n: usize, r: &Rollout) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "rollout #{n}  {}", term(&r.rollout_id, false));
    let _ = writeln!(out, "task         {}", term(&r.task_id, false));
    let _ = writeln!(
        out,
        "environment  {}   level {}   policy {}   sample seed {}",
        term(&r.environment, false),
        term(&r.level, false),
        term(&r.policy, false),
        r.sample_seed
    );
    let _ = writeln!(
        out,
        "turns {}   tool steps {}   tokens {} prompt + {} completion   stop {}{}",
        r.turns,
        r.tool_steps,
        r.usage.prompt_tokens,
        r.usage.completion_tokens,
        stop_name(&r.stop),
        stop_detail(&r.stop)
            .map(|d| format!(": {}", term(d, false)))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "verdict      {} ({}), reward {:.2}",
        Status::of(r).name(),
        kind_name(&r.verdict),
        r.verdict.reward
    );
    if let Some(e) = &r.verdict.error {
        let _ = writeln!(out, "error        {}", term(e, false));
    }
    for m in &r.messages {
        message_text(&mut out, m);
    }
    let _ = writeln!(out, "\n--- checks ---");
    let width = r
        .verdict
        .checks
        .iter()
        .map(|c| c.id.chars().count())
        .max()
        .unwrap_or(0);
    for c in &r.verdict.checks {
        let mark = match c.status {
            CheckStatus::Passed => "pass",
            CheckStatus::Failed => "FAIL",
            CheckStatus::Skipped => "skip",
        };
        let _ = writeln!(
            out,
            "{mark}  {:<width$}  {}",
            term(&c.id, false),
            term(&c.reason, false)
        );
    }
    out
}

fn message_text(out: &mut String, m: &ChatMessage) {
    let role = match &m.tool_call_id {
        Some(id) => format!("{} ({})", m.role, id),
        None => m.role.clone(),
    };
    let _ = writeln!(out, "\n--- {} ---", term(&role, false));
    if let Some(r) = m.reasoning_content.as_deref().filter(|r| !r.is_empty()) {
        let _ = writeln!(out, "[reasoning]\n{}\n[/reasoning]", term(r, true));
    }
    if let Some(c) = m.content.as_deref().filter(|c| !c.is_empty()) {
        let body = if m.role == "tool" {
            pretty(c)
        } else {
            c.to_string()
        };
        let _ = writeln!(out, "{}", term(&body, true));
    }
    for call in &m.tool_calls {
        let _ = writeln!(
            out,
            "-> {} ({}) {}",
            term(&call.function.name, false),
            term(&call.id, false),
            term(&pretty(&call.function.arguments), true)
        );
    }
}

/// Text for HTML content and quoted attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if (c.is_control() && c != '\n' && c != '\t') || is_bidi_control(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 72rem; padding: 1rem; color: #1b1f24; }
h1 { font-size: 1.2rem; margin: 0 0 .3rem; }
h2 { font-size: 1rem; margin: 1rem 0 .3rem; }
table { border-collapse: collapse; margin: .3rem 0; }
td, th { padding: .15rem .6rem; text-align: left; vertical-align: top; border-bottom: 1px solid #e3e6ea; }
th { font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.grid { display: flex; flex-wrap: wrap; gap: 0 2.5rem; }
form { position: sticky; top: 0; background: #fff; padding: .5rem 0; border-bottom: 1px solid #c9ced4; display: flex; flex-wrap: wrap; gap: .4rem 1rem; align-items: center; }
details.rollout { border: 1px solid #d5d9de; border-radius: 4px; margin: .4rem 0; }
details.rollout > summary { cursor: pointer; padding: .3rem .5rem; display: flex; gap: .8rem; flex-wrap: wrap; }
details.rollout[open] > summary { background: #f3f5f7; }
.body { padding: .3rem .8rem .8rem; }
.st { font-weight: 600; }
.passed { color: #116329; } .failed { color: #b42318; } .masked, .skipped { color: #6e7781; }
.mono, pre, code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12.5px; }
pre { white-space: pre-wrap; word-break: break-word; margin: .2rem 0; }
.msg { border-left: 3px solid #d5d9de; padding: .1rem .6rem; margin: .5rem 0; }
.msg.assistant { border-color: #5b8def; } .msg.tool { border-color: #9a6dd7; } .msg.user { border-color: #2da44e; }
.role { font-weight: 600; color: #57606a; }
.call { background: #f6f8fa; padding: .2rem .5rem; margin: .2rem 0; }
.reasoning > pre { color: #57606a; }
a.check { color: inherit; }
"#;

const SCRIPT: &str = r#"
const byId = (id) => document.getElementById(id);
const rows = Array.from(document.querySelectorAll("details.rollout"));
const text = new Map();
function apply() {
  const status = byId("f-status").value, level = byId("f-level").value, env = byId("f-env").value;
  const check = byId("f-check").value, needle = byId("f-text").value.toLowerCase();
  let shown = 0;
  for (const row of rows) {
    const d = row.dataset;
    if (needle && !text.has(row)) text.set(row, row.textContent.toLowerCase());
    const keep = (!status || d.status === status) && (!level || d.level === level)
      && (!env || d.env === env) && (!check || JSON.parse(d.failed).includes(check))
      && (!needle || text.get(row).includes(needle));
    row.hidden = !keep;
    if (keep) shown += 1;
  }
  byId("shown").textContent = shown + " of " + rows.length + " shown";
}
for (const id of ["f-status", "f-level", "f-env", "f-check"]) byId(id).addEventListener("change", apply);
byId("f-text").addEventListener("input", apply);
for (const a of document.querySelectorAll("a.check")) {
  a.addEventListener("click", (e) => {
    e.preventDefault();
    byId("f-check").value = a.dataset.check;
    byId("f-status").value = "";
    apply();
  });
}
apply();
"#;

/// `'sha256-…'` of a style or script, as a Content-Security-Policy source names it.
fn csp_hash(text: &str) -> String {
    format!("'sha256-{}'", base64(&Sha256::digest(text.as_bytes())))
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let v = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[(v >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn options(out: &mut String, id: &str, label: &str, values: &BTreeSet<String>) {
    let _ = write!(
        out,
        "<label>{label} <select id=\"{id}\"><option value=\"\">all</option>"
    );
    for v in values {
        let _ = write!(out, "<option value=\"{0}\">{0}</option>", esc(v));
    }
    out.push_str("</select></label>\n");
}

fn group_row(out: &mut String, name: &str, g: &Group, ks: &[u64]) {
    let _ = write!(
        out,
        "<tr><td>{}</td><td class=\"num\">{}</td>",
        esc(name),
        g.tasks
    );
    for k in ks {
        let cell = |v: Option<&f64>| v.map(|p| format!("{p:.3}")).unwrap_or_default();
        let _ = write!(
            out,
            "<td class=\"num\">{}</td><td class=\"num\">{}</td>",
            cell(g.pass_at.get(k)),
            cell(g.pass_hat.get(k))
        );
    }
    out.push_str("</tr>\n");
}

/// The page: the run's summary, the filters, then each kept rollout as a collapsed section.
pub fn html_page(
    title: &str,
    summary: &Summary,
    kept: &[(usize, &Rollout)],
    filters: &str,
) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src {}; script-src {}\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>envsynth rollouts: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        csp_hash(STYLE),
        csp_hash(SCRIPT),
        esc(title)
    );
    let (passed, failed) = counts(summary);
    let _ = writeln!(
        out,
        "<h1>envsynth rollouts: {}</h1>\n<p>{} rollouts of {} tasks: <span class=\"passed\">{passed} passed</span>, \
         <span class=\"failed\">{failed} failed</span>, <span class=\"masked\">{} masked</span>; {} tool steps.{}</p>",
        esc(title),
        summary.rollouts,
        summary.tasks.len(),
        summary.masked,
        summary.tool_steps,
        if filters.is_empty() {
            String::new()
        } else {
            format!(
                " This page holds the {} that match <code>{}</code>.",
                kept.len(),
                esc(filters)
            )
        }
    );

    out.push_str(
        "<div class=\"grid\">\n<div>\n<h2>pass@k</h2>\n<table>\n<tr><th></th><th>tasks</th>",
    );
    let ks: Vec<u64> = summary.overall.pass_at.keys().copied().collect();
    for k in &ks {
        let _ = write!(out, "<th>pass@{k}</th><th>pass^{k}</th>");
    }
    out.push_str("</tr>\n");
    group_row(&mut out, "all", &summary.overall, &ks);
    if summary.by_environment.len() > 1 {
        for (e, g) in &summary.by_environment {
            group_row(&mut out, e, g, &ks);
        }
    }
    for (l, g) in &summary.by_level {
        group_row(&mut out, l, g, &ks);
    }
    out.push_str("</table>\n</div>\n");
    if !summary.failed_checks.is_empty() {
        out.push_str("<div>\n<h2>Checks failed most</h2>\n<table>\n");
        for (id, count) in &summary.failed_checks {
            let _ = writeln!(
                out,
                "<tr><td><a class=\"check\" href=\"#\" data-check=\"{0}\">{0}</a></td><td class=\"num\">{count}</td></tr>",
                esc(id)
            );
        }
        out.push_str("</table>\n</div>\n");
    }
    if !summary.masked_kinds.is_empty() {
        out.push_str("<div>\n<h2>Masked</h2>\n<table>\n");
        for (kind, count) in &summary.masked_kinds {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td class=\"num\">{count}</td></tr>",
                esc(kind)
            );
        }
        out.push_str("</table>\n</div>\n");
    }
    out.push_str("</div>\n");

    let set = |of: &dyn Fn(&Rollout) -> Vec<String>| -> BTreeSet<String> {
        kept.iter().flat_map(|(_, r)| of(r)).collect()
    };
    out.push_str("<form id=\"filters\">\n<label>status <select id=\"f-status\"><option value=\"\">all</option>\
         <option>passed</option><option>failed</option><option>masked</option></select></label>\n");
    options(
        &mut out,
        "f-level",
        "level",
        &set(&|r| vec![r.level.clone()]),
    );
    options(
        &mut out,
        "f-env",
        "environment",
        &set(&|r| vec![r.environment.clone()]),
    );
    options(
        &mut out,
        "f-check",
        "failed check",
        // The summary's links set this filter, and the summary counts the whole run.
        &set(&|r| failed_checks(r).into_iter().map(str::to_string).collect())
            .into_iter()
            .chain(summary.failed_checks.iter().map(|(id, _)| id.clone()))
            .collect(),
    );
    out.push_str("<label>search <input id=\"f-text\" type=\"search\"></label> <span id=\"shown\"></span>\n</form>\n<main>\n");
    for (n, r) in kept {
        rollout_html(&mut out, *n, r);
    }
    let _ = write!(
        out,
        "</main>\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
    );
    out
}

fn rollout_html(out: &mut String, n: usize, r: &Rollout) {
    let status = Status::of(r).name();
    let failed = serde_json::to_string(&failed_checks(r)).unwrap_or_else(|_| "[]".into());
    let _ = writeln!(
        out,
        "<details class=\"rollout\" id=\"r{n}\" data-status=\"{status}\" data-level=\"{}\" data-env=\"{}\" data-failed=\"{}\">",
        esc(&r.level),
        esc(&r.environment),
        esc(&failed)
    );
    let _ = writeln!(
        out,
        "<summary><span class=\"mono\">#{n}</span><span class=\"st {status}\">{status}</span>\
         <span class=\"mono\">{:.2}</span><span>{}</span><span class=\"mono\">{}</span>\
         <span>{} turns, {} tool steps, {}</span><span class=\"{status}\">{}</span></summary>",
        r.verdict.reward,
        esc(&r.level),
        esc(&short_id(&r.task_id)),
        r.turns,
        r.tool_steps,
        stop_name(&r.stop),
        esc(&why(r))
    );
    let _ = writeln!(
        out,
        "<div class=\"body\">\n<p class=\"mono\">rollout {}<br>task {}<br>{} · policy {} · sample seed {} · \
         {} prompt + {} completion tokens · verdict {} ({}), reward {:.2}{}{}</p>",
        esc(&r.rollout_id),
        esc(&r.task_id),
        esc(&r.environment),
        esc(&r.policy),
        r.sample_seed,
        r.usage.prompt_tokens,
        r.usage.completion_tokens,
        status,
        esc(&kind_name(&r.verdict)),
        r.verdict.reward,
        stop_detail(&r.stop)
            .map(|d| format!("<br>stop {}: {}", stop_name(&r.stop), esc(d)))
            .unwrap_or_default(),
        r.verdict
            .error
            .as_deref()
            .map(|e| format!("<br>error: {}", esc(e)))
            .unwrap_or_default()
    );
    out.push_str("<table class=\"checks\">\n");
    for c in &r.verdict.checks {
        let s = match c.status {
            CheckStatus::Passed => "passed",
            CheckStatus::Failed => "failed",
            CheckStatus::Skipped => "skipped",
        };
        let _ = writeln!(
            out,
            "<tr class=\"{s}\"><td>{s}</td><td class=\"mono\">{}</td><td>{}</td></tr>",
            esc(&c.id),
            esc(&c.reason)
        );
    }
    out.push_str("</table>\n");
    for m in &r.messages {
        message_html(out, m);
    }
    out.push_str("</div>\n</details>\n");
}

fn message_html(out: &mut String, m: &ChatMessage) {
    let role = esc(&m.role);
    let _ = write!(out, "<div class=\"msg {role}\">");
    // The task's instructions are long and the same in every rollout of it: folded.
    let folded = m.role == "system";
    if folded {
        let _ = write!(out, "<details><summary class=\"role\">{role}</summary>");
    } else {
        let _ = write!(
            out,
            "<div class=\"role\">{role}{}</div>",
            m.tool_call_id
                .as_deref()
                .map(|id| format!(" · {}", esc(id)))
                .unwrap_or_default()
        );
    }
    if let Some(r) = m.reasoning_content.as_deref().filter(|r| !r.is_empty()) {
        let _ = write!(
            out,
            "<details class=\"reasoning\"><summary>reasoning</summary><pre>{}</pre></details>",
            esc(r)
        );
    }
    if let Some(c) = m.content.as_deref().filter(|c| !c.is_empty()) {
        let body = if m.role == "tool" {
            pretty(c)
        } else {
            c.to_string()
        };
        let _ = write!(out, "<pre>{}</pre>", esc(&body));
    }
    for call in &m.tool_calls {
        let _ = write!(
            out,
            "<div class=\"call\"><code>{}</code> <span class=\"mono\">{}</span><pre>{}</pre></div>",
            esc(&call.function.name),
            esc(&call.id),
            esc(&pretty(&call.function.arguments))
        );
    }
    if folded {
        out.push_str("</details>");
    }
    out.push_str("</div>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), coded, "{plain:?}");
        }
    }

    #[test]
    fn nothing_a_policy_writes_becomes_markup_or_a_terminal_command() {
        let hostile = "</pre><script>alert(1)</script>\"'&\u{1b}[2J\u{202e}x";
        let html = esc(hostile);
        for bad in ['<', '>', '"', '\'', '\u{1b}', '\u{202e}'] {
            assert!(!html.contains(bad), "{bad:?} in {html}");
        }
        assert_eq!(
            html,
            "&lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#39;&amp;\\u{1b}[2J\\u{202e}x"
        );
        let text = term(hostile, true);
        assert!(!text.contains('\u{1b}') && !text.contains('\u{202e}'));
        assert_eq!(term("a\nb\tc\r", false), "a b c\\u{d}");
        assert_eq!(term("a\nb", true), "a\nb");
    }
}
