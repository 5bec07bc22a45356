//! Verdicts: what a verifier says about one submission, check by check.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// Why a submission did not pass, split so that trainers can tell the agent's mistakes (train on
/// the reward) from broken environments or inputs (mask the sample instead of training on a zero).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Every check passed.
    None,
    /// A well-formed answer that breaks at least one check. The agent was wrong.
    WrongAnswer,
    /// No answer at all (null, empty string, empty plan). The agent was wrong.
    EmptySubmission,
    /// An answer that is not in the submission format. The agent was wrong.
    MalformedSubmission,
    /// The task record itself is broken (bad id, unparsable world, unknown environment version).
    /// Not the agent's fault: mask.
    InvalidTask,
    /// The verifier or its host failed, or a plugin reported that it could not evaluate.
    /// Not the agent's fault: mask.
    EnvironmentError,
    /// A sandboxed plugin used up its fuel. Mask.
    SandboxFuelExhausted,
    /// A sandboxed plugin ran past its wall-clock limit. Mask.
    SandboxTimeout,
    /// A sandboxed plugin tried to grow a memory past its cap. Mask.
    SandboxMemoryExceeded,
    /// A sandboxed plugin returned more than the output limit. Mask.
    SandboxOutputTooLarge,
    /// A sandboxed plugin trapped (including stack overflow). Mask.
    SandboxTrap,
    /// The plugin is not a loadable component of the right world, or returned something that is
    /// not a verdict. Mask.
    InvalidPlugin,
    /// The policy (model server) failed, after retries: connection lost, errors, malformed
    /// replies. The rollout says nothing about the agent. Mask.
    PolicyError,
}

impl FailureKind {
    /// True when the sample says nothing about the agent and must be masked out of training.
    pub fn is_masked(self) -> bool {
        !matches!(
            self,
            FailureKind::None
                | FailureKind::WrongAnswer
                | FailureKind::EmptySubmission
                | FailureKind::MalformedSubmission
        )
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Passed,
    Failed,
    /// Not evaluated because a prerequisite failed; counts as not passed.
    Skipped,
}

/// One named check. The id is stable (`commonsense.diverse_restaurants`, `hard.budget`); the part
/// before the first dot is its metric group.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Check {
    pub id: Cow<'static, str>,
    pub status: CheckStatus,
    pub reason: String,
}

impl Check {
    pub fn new(id: impl Into<Cow<'static, str>>, passed: bool, reason: String) -> Check {
        let status = if passed {
            CheckStatus::Passed
        } else {
            CheckStatus::Failed
        };
        Check {
            id: id.into(),
            status,
            reason,
        }
    }
    pub fn skipped(id: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> Check {
        Check {
            id: id.into(),
            status: CheckStatus::Skipped,
            reason: reason.into(),
        }
    }
    pub fn passed(&self) -> bool {
        self.status == CheckStatus::Passed
    }
    /// The metric group: the id up to its first dot.
    pub fn group(&self) -> &str {
        self.id.split('.').next().unwrap_or("")
    }
}

/// The verifier's answer for one submission.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    pub task_id: String,
    /// In [0, 1]. 1 exactly when every check passes.
    pub reward: f64,
    pub passed: bool,
    pub failure_kind: FailureKind,
    /// `failure_kind.is_masked()`, spelled out for trainers.
    pub mask: bool,
    pub checks: Vec<Check>,
    /// For malformed, empty or invalid input: what was wrong and where.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// WebAssembly fuel the verifier used (sandboxed verifiers only); deterministic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
}

impl Verdict {
    /// A verdict over a well-formed submission: passes iff every check passed.
    pub fn from_checks(task_id: &str, checks: Vec<Check>) -> Verdict {
        let passed = !checks.is_empty() && checks.iter().all(Check::passed);
        let failure_kind = if passed {
            FailureKind::None
        } else {
            FailureKind::WrongAnswer
        };
        Verdict {
            task_id: task_id.to_string(),
            reward: if passed { 1.0 } else { 0.0 },
            passed,
            failure_kind,
            mask: false,
            checks,
            error: None,
            fuel: None,
        }
    }

    /// A zero-reward verdict that names what was wrong; `checks` lists every check as skipped so
    /// metric denominators stay the same for every verdict of a task.
    pub fn rejected(
        task_id: &str,
        kind: FailureKind,
        error: String,
        check_ids: impl IntoIterator<Item = Cow<'static, str>>,
    ) -> Verdict {
        let reason = match kind {
            FailureKind::EmptySubmission => "no plan was delivered",
            FailureKind::MalformedSubmission => {
                "the submission is not a plan in the required format"
            }
            _ => "the task could not be evaluated",
        };
        Verdict {
            task_id: task_id.to_string(),
            reward: 0.0,
            passed: false,
            failure_kind: kind,
            mask: kind.is_masked(),
            checks: check_ids
                .into_iter()
                .map(|id| Check::skipped(id, reason))
                .collect(),
            error: Some(error),
            fuel: None,
        }
    }

    /// The failed (or skipped) checks' ids.
    pub fn failed_checks(&self) -> impl Iterator<Item = &str> {
        self.checks
            .iter()
            .filter(|c| !c.passed())
            .map(|c| c.id.as_ref())
    }

    pub fn check(&self, id: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.id == id)
    }
}
