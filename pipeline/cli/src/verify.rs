//! `envsynth verify`: tasks from shards plus submissions in; verdicts and TravelPlanner-style
//! metrics out.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use envsynth_core::metrics::{Metrics, aggregate};
use envsynth_core::{FailureKind, PreparedTask, Submission, Task, Verdict};

#[derive(clap::Args)]
pub struct Args {
    /// Shard files or directories of shards (several: the tasks of them all).
    #[arg(long, required = true, num_args = 1..)]
    pub tasks: Vec<PathBuf>,
    /// JSONL, one `{"task_id": ..., "submission": ...}` per line (several per task are fine).
    #[arg(long)]
    pub submissions: PathBuf,
    /// Where to write the verdicts (JSONL, one per submission, then one per task without any).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    crate::existing(&a.submissions, "--submissions")?;
    let tasks: BTreeMap<String, Task> = crate::rollout::read_all_tasks(&a.tasks, "--tasks")?
        .into_iter()
        .map(|t| (t.id.clone(), t))
        .collect();
    // Read and check every submission before verifying any.
    let text = std::fs::read_to_string(&a.submissions)
        .with_context(|| format!("reading {}", a.submissions.display()))?;
    let mut subs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let s: Submission = serde_json::from_str(line).with_context(|| {
            format!(
                "{} line {}: expected {{\"task_id\": ..., \"submission\": ...}}",
                a.submissions.display(),
                i + 1
            )
        })?;
        if !tasks.contains_key(&s.task_id) {
            bail!(
                "{} line {}: task_id {} is not among --tasks",
                a.submissions.display(),
                i + 1,
                s.task_id,
            );
        }
        subs.push(s);
    }

    let mut prepared: BTreeMap<String, Result<Box<dyn PreparedTask>, String>> = BTreeMap::new();
    let mut verdicts: Vec<(String, Verdict)> = Vec::with_capacity(subs.len());
    let verify = |prepared: &mut BTreeMap<String, Result<Box<dyn PreparedTask>, String>>,
                  task: &Task,
                  sub: &Value| {
        let p = prepared.entry(task.id.clone()).or_insert_with(|| {
            crate::envs::find(&task.environment.to_string())
                .map_err(|e| e.to_string())
                .and_then(|env| env.prepare(task).map_err(|e| e.to_string()))
        });
        match p {
            Ok(p) => p.verify(sub),
            Err(e) => Verdict::rejected(&task.id, FailureKind::InvalidTask, e.clone(), []),
        }
    };
    for s in &subs {
        let task = &tasks[&s.task_id];
        verdicts.push((
            task.difficulty.level.clone(),
            verify(&mut prepared, task, &s.submission),
        ));
    }
    let answered: std::collections::BTreeSet<&str> =
        subs.iter().map(|s| s.task_id.as_str()).collect();
    let unanswered: Vec<&Task> = tasks
        .values()
        .filter(|t| !answered.contains(t.id.as_str()))
        .collect();
    for t in &unanswered {
        verdicts.push((
            t.difficulty.level.clone(),
            verify(&mut prepared, t, &Value::Null),
        ));
    }

    let mut out = Vec::new();
    for (_, v) in &verdicts {
        serde_json::to_writer(&mut out, v)?;
        out.push(b'\n');
    }
    envsynth_shards::atomic_write(&a.out, &out)?;

    let mut by_level: BTreeMap<String, Vec<&Verdict>> = BTreeMap::new();
    for (level, v) in &verdicts {
        by_level.entry(level.clone()).or_default().push(v);
    }
    #[derive(serde::Serialize)]
    struct Report {
        tasks: usize,
        submissions: usize,
        unanswered_tasks: usize,
        overall: Metrics,
        by_level: BTreeMap<String, Metrics>,
    }
    let report = Report {
        tasks: tasks.len(),
        submissions: subs.len(),
        unanswered_tasks: unanswered.len(),
        overall: aggregate(verdicts.iter().map(|(_, v)| v)),
        by_level: by_level
            .into_iter()
            .map(|(l, vs)| (l, aggregate(vs)))
            .collect(),
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
