//! Scoring k rollouts per task: unbiased pass@k per task and averaged, by difficulty level,
//! which checks agents break most, and TravelPlanner's aggregate metrics. Masked rollouts are
//! counted apart and left out of every rate.

use std::collections::BTreeMap;

use serde::Serialize;

use envsynth_core::metrics::{Metrics, aggregate, pass_at_k, pass_hat_k};
use envsynth_core::{CheckStatus, Verdict};

use crate::Rollout;

/// One task's rollouts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskScore {
    pub task_id: String,
    pub environment: String,
    pub level: String,
    /// Unmasked rollouts.
    pub attempts: u64,
    pub passes: u64,
    pub masked: u64,
    /// pass@k by k (absent when there are fewer than k attempts): the chance that at least
    /// one of k attempts passes.
    pub pass_at: BTreeMap<u64, f64>,
    /// pass^k by k, the same way: the chance that all k attempts pass (reliability).
    pub pass_hat: BTreeMap<u64, f64>,
}

/// pass@k and pass^k averaged over the tasks that have at least k attempts.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Group {
    pub tasks: u64,
    pub pass_at: BTreeMap<u64, f64>,
    pub pass_hat: BTreeMap<u64, f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub rollouts: u64,
    pub masked: u64,
    pub tool_steps: u64,
    pub overall: Group,
    /// By the tasks' environment, `id@version` (a run may mix datasets of several).
    pub by_environment: BTreeMap<String, Group>,
    pub by_level: BTreeMap<String, Group>,
    /// How often each check failed, over unmasked rollouts that failed, most first.
    pub failed_checks: Vec<(String, u64)>,
    /// Why masked rollouts were masked (`policy_error`, `environment_error`, ...).
    pub masked_kinds: BTreeMap<String, u64>,
    pub metrics: Metrics,
    /// How many rollouts carry their tokens; absent when none does.
    #[serde(skip_serializing_if = "TokenTraces::is_empty")]
    pub token_traces: TokenTraces,
    pub tasks: Vec<TaskScore>,
}

/// Rollouts with their tokens, and how many of them a turn split into more than one sequence
/// ([`Rollout::tokens`](crate::Rollout::tokens)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct TokenTraces {
    pub carried: u64,
    pub split: u64,
}

impl TokenTraces {
    fn is_empty(&self) -> bool {
        self.carried == 0
    }
}

pub fn score_tasks(rollouts: &[Rollout], ks: &[u64]) -> Vec<TaskScore> {
    let mut by_task: BTreeMap<&str, (&str, &str, u64, u64, u64)> = BTreeMap::new();
    for r in rollouts {
        let e = by_task
            .entry(&r.task_id)
            .or_insert((&r.environment, &r.level, 0, 0, 0));
        if r.verdict.mask {
            e.4 += 1;
        } else {
            e.2 += 1;
            e.3 += u64::from(r.verdict.passed);
        }
    }
    by_task
        .into_iter()
        .map(|(id, (environment, level, n, c, masked))| TaskScore {
            task_id: id.to_string(),
            environment: environment.to_string(),
            level: level.to_string(),
            attempts: n,
            passes: c,
            masked,
            pass_at: ks
                .iter()
                .filter_map(|&k| pass_at_k(n, c, k).map(|p| (k, p)))
                .collect(),
            pass_hat: ks
                .iter()
                .filter_map(|&k| pass_hat_k(n, c, k).map(|p| (k, p)))
                .collect(),
        })
        .collect()
}

fn group(tasks: &[&TaskScore]) -> Group {
    // The mean of each k's values over the tasks that have one.
    let mean = |of: fn(&TaskScore) -> &BTreeMap<u64, f64>| {
        let mut sums: BTreeMap<u64, (f64, u64)> = BTreeMap::new();
        for t in tasks {
            for (&k, p) in of(t) {
                let e = sums.entry(k).or_insert((0.0, 0));
                e.0 += p;
                e.1 += 1;
            }
        }
        sums.into_iter()
            .map(|(k, (s, m))| (k, s / m as f64))
            .collect()
    };
    Group {
        tasks: tasks.len() as u64,
        pass_at: mean(|t| &t.pass_at),
        pass_hat: mean(|t| &t.pass_hat),
    }
}

/// The verdict's failure kind as it is spelled in JSON (`wrong_answer`, `policy_error`, ...).
pub fn kind_name(v: &Verdict) -> String {
    serde_json::to_value(v.failure_kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub fn summarize(rollouts: &[Rollout], ks: &[u64]) -> Summary {
    let tasks = score_tasks(rollouts, ks);
    let mut levels: BTreeMap<&str, Vec<&TaskScore>> = BTreeMap::new();
    let mut environments: BTreeMap<&str, Vec<&TaskScore>> = BTreeMap::new();
    for t in &tasks {
        levels.entry(&t.level).or_default().push(t);
        environments.entry(&t.environment).or_default().push(t);
    }
    let mut failed: BTreeMap<String, u64> = BTreeMap::new();
    let mut masked_kinds: BTreeMap<String, u64> = BTreeMap::new();
    for r in rollouts {
        if r.verdict.mask {
            *masked_kinds.entry(kind_name(&r.verdict)).or_default() += 1;
            continue;
        }
        for c in &r.verdict.checks {
            if c.status == CheckStatus::Failed {
                *failed.entry(c.id.to_string()).or_default() += 1;
            }
        }
    }
    let mut failed_checks: Vec<(String, u64)> = failed.into_iter().collect();
    failed_checks.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Summary {
        rollouts: rollouts.len() as u64,
        masked: rollouts.iter().filter(|r| r.verdict.mask).count() as u64,
        tool_steps: rollouts.iter().map(|r| u64::from(r.tool_steps)).sum(),
        overall: group(&tasks.iter().collect::<Vec<_>>()),
        by_environment: environments
            .into_iter()
            .map(|(e, ts)| (e.to_string(), group(&ts)))
            .collect(),
        by_level: levels
            .into_iter()
            .map(|(l, ts)| (l.to_string(), group(&ts)))
            .collect(),
        failed_checks,
        masked_kinds,
        metrics: aggregate(rollouts.iter().map(|r| &r.verdict)),
        token_traces: TokenTraces {
            carried: rollouts.iter().filter(|r| !r.tokens.is_empty()).count() as u64,
            split: rollouts.iter().filter(|r| r.tokens.len() > 1).count() as u64,
        },
        tasks,
    }
}
