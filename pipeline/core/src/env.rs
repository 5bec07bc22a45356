//! The contract between an environment family and the pipeline.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{EnvironmentSpec, Task, ToolCall, ToolResult, ToolSpec};
use crate::verdict::Verdict;

/// A difficulty: a named level and the numeric parameters it resolved to (or was overridden with).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Difficulty {
    pub level: String,
    pub params: Value,
}

/// Ask an environment for the task at (seed, index) at a difficulty level, optionally overriding
/// some of the level's numeric parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskRequest {
    pub seed: u64,
    pub index: u64,
    pub level: String,
    /// JSON object of numeric parameters that replace the level's defaults.
    pub overrides: Value,
}

/// The generator stage a rejection came from.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    SampleParams,
    BuildWorld,
    Compose,
    Plant,
    Certify,
    Render,
}

/// Why one generation attempt produced no task. Rejections are normal (the generator retries with
/// the next attempt); they are counted by (stage, code) and reported.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{stage:?}/{code}: {detail}")]
pub struct Rejection {
    pub stage: Stage,
    /// Short stable reason key, used for counting.
    pub code: std::borrow::Cow<'static, str>,
    pub detail: String,
}

impl Rejection {
    pub fn new(
        stage: Stage,
        code: impl Into<std::borrow::Cow<'static, str>>,
        detail: impl Into<String>,
    ) -> Rejection {
        Rejection {
            stage,
            code: code.into(),
            detail: detail.into(),
        }
    }
    /// `stage/code`, the key rejections are counted under.
    pub fn key(&self) -> String {
        let stage = serde_json::to_value(self.stage)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        format!("{stage}/{}", self.code)
    }
}

/// Errors about the request or the task record rather than about an answer.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum TaskError {
    #[error("malformed task record: {0}")]
    Malformed(String),
    #[error("task id {stated} does not match its content (computed {computed})")]
    IdMismatch { stated: String, computed: String },
    #[error("task belongs to {found}, not {expected}")]
    WrongEnvironment { expected: String, found: String },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

/// An environment family. Generation and verification are pure functions of their inputs.
pub trait Environment: Send + Sync {
    fn spec(&self) -> &EnvironmentSpec;
    fn tool_specs(&self) -> &[ToolSpec];
    /// Check a request before any work is done (unknown level, out-of-range parameter).
    fn validate_request(&self, request: &TaskRequest) -> Result<(), TaskError>;
    /// One generation attempt: a certified task, or the reason this attempt was rejected.
    fn generate_attempt(&self, request: &TaskRequest, attempt: u32) -> Result<Task, Rejection>;
    /// Parse a task record once so that many submissions and tool calls can be served from it.
    fn prepare(&self, task: &Task) -> Result<Box<dyn PreparedTask>, TaskError>;
    /// The integrity suite for one task: submissions with the verdict each must get. A correct
    /// verifier (native or plugin) passes every probe (`envsynth plugin check`).
    fn probes(&self, task: &Task) -> Result<Vec<Probe>, TaskError>;
    /// Tool calls that exercise every tool of one task: valid ones, invalid arguments, unknown
    /// ids and tools. A toolset plugin must answer each as the native tools do
    /// ([`tool_results_agree`]; `envsynth plugin check`).
    fn tool_probes(&self, _task: &Task) -> Result<Vec<ToolCall>, TaskError> {
        Ok(Vec::new())
    }
    /// The reference solution in a form a person can read (used by `envsynth show`).
    fn describe_solution(&self, task: &Task) -> String {
        serde_json::from_str::<Value>(task.reference_solution.get())
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or_else(|_| task.reference_solution.get().to_string())
    }
}

/// Whether two implementations of a tool answered one call the same way: equal results, or
/// errors with the same code and message. For `invalid_arguments` the message must agree up to
/// the argument it names (`tool: arguments/path:`); the diagnosis after that comes from a JSON
/// Schema or JSON parser and may be worded differently.
pub fn tool_results_agree(want: &ToolResult, got: &ToolResult) -> Result<(), String> {
    use crate::model::ToolErrorCode;
    fn located(m: &str) -> &str {
        match m.match_indices(": ").nth(1) {
            Some((i, _)) => &m[..i],
            None => m,
        }
    }
    match (want, got) {
        (ToolResult::Ok { result: a }, ToolResult::Ok { result: b }) if a == b => Ok(()),
        (
            ToolResult::Error {
                code: ca,
                message: ma,
            },
            ToolResult::Error {
                code: cb,
                message: mb,
            },
        ) if ca == cb
            && (ma == mb
                || (*ca == ToolErrorCode::InvalidArguments && located(ma) == located(mb))) =>
        {
            Ok(())
        }
        _ => {
            let show = |r: &ToolResult| {
                let mut s = serde_json::to_string(r).unwrap_or_default();
                if s.len() > 300 {
                    let mut end = 300;
                    while !s.is_char_boundary(end) {
                        end -= 1;
                    }
                    s.truncate(end);
                    s.push_str("...");
                }
                s
            };
            Err(format!("expected {}, got {}", show(want), show(got)))
        }
    }
}

/// A task parsed and indexed for fast verification and tool calls.
pub trait PreparedTask: Send + Sync {
    fn verify(&self, submission: &Value) -> Verdict;
    /// Verify a submission given as text: a JSON document, or free text (treated as a JSON
    /// string). Environments may override this with a faster direct parse.
    fn verify_text(&self, text: &str) -> Verdict {
        match serde_json::from_str::<Value>(text) {
            Ok(v) => self.verify(&v),
            Err(_) => self.verify(&Value::String(text.to_string())),
        }
    }
    fn call_tool(&self, call: &ToolCall) -> ToolResult;
    /// A tool call as a chat API carries it: the name, and the arguments as the model wrote
    /// them (JSON text). Text that is not JSON is the agent's mistake, answered with an
    /// `invalid_arguments` error it can read and recover from.
    fn call_tool_text(&self, name: &str, arguments: &str) -> ToolResult {
        match serde_json::from_str::<Value>(arguments) {
            Err(e) => ToolResult::Error {
                code: crate::model::ToolErrorCode::InvalidArguments,
                message: format!("{name}: arguments are not valid JSON: {e}"),
            },
            Ok(arguments) => self.call_tool(&ToolCall {
                name: name.to_string(),
                arguments,
            }),
        }
    }
}

/// Verify one submission against a task record. A task the environment cannot read yields a
/// masked `invalid_task` verdict rather than a zero the trainer would learn from.
pub fn verify_task(env: &dyn Environment, task: &Task, submission: &Value) -> Verdict {
    match env.prepare(task) {
        Ok(prepared) => prepared.verify(submission),
        Err(e) => Verdict::rejected(
            &task.id,
            crate::verdict::FailureKind::InvalidTask,
            e.to_string(),
            [],
        ),
    }
}

/// One integrity-suite case: a named submission and what its verdict must be.
#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    pub name: String,
    pub submission: Value,
    pub expect: Expect,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Expect {
    /// Passes with reward 1.
    Pass,
    /// Fails with this check failed.
    FailCheck(String),
    /// Scores 0 with this (agent-attributable, unmasked) failure kind.
    Zero(crate::verdict::FailureKind),
}

impl Expect {
    /// Whether `v` meets the expectation; `Err` says how it does not.
    pub fn check(&self, v: &Verdict) -> Result<(), String> {
        use crate::verdict::FailureKind;
        match self {
            Expect::Pass if v.passed && v.reward == 1.0 && v.failure_kind == FailureKind::None => {
                Ok(())
            }
            Expect::Pass => Err(format!(
                "should pass, got {:?} failing {:?}",
                v.failure_kind,
                v.failed_checks().collect::<Vec<_>>()
            )),
            Expect::FailCheck(id) => match v.check(id) {
                Some(c) if !c.passed() && !v.passed && v.reward == 0.0 && !v.mask => Ok(()),
                Some(_) => Err(format!(
                    "should fail {id}, got reward {} ({:?})",
                    v.reward, v.failure_kind
                )),
                None => Err(format!(
                    "should fail {id}, but the verdict has no such check"
                )),
            },
            Expect::Zero(kind)
                if v.reward == 0.0 && !v.passed && v.failure_kind == *kind && !v.mask =>
            {
                Ok(())
            }
            Expect::Zero(kind) => Err(format!(
                "should score 0 as {kind:?}, got reward {} as {:?}",
                v.reward, v.failure_kind
            )),
        }
    }
}

/// The outcome of generating one task: the task and every rejected attempt before it.
pub struct Generated {
    pub task: Task,
    pub rejections: Vec<Rejection>,
}

/// How many attempts an index gets before generation gives up on it.
pub const MAX_ATTEMPTS: u32 = 64;

/// Generate the task for one index, retrying rejected attempts deterministically.
pub fn generate(env: &dyn Environment, request: &TaskRequest) -> Result<Generated, TaskError> {
    env.validate_request(request)?;
    let mut rejections = Vec::new();
    for attempt in 0..MAX_ATTEMPTS {
        match env.generate_attempt(request, attempt) {
            Ok(task) => return Ok(Generated { task, rejections }),
            Err(r) => rejections.push(r),
        }
    }
    let last = rejections.last();
    // Certification failing every time is a disagreement between the generator's plans and the
    // verifier, which no choice of parameters fixes.
    let hint = if last.is_some_and(|r| r.stage == Stage::Certify) {
        "the planted solution or a mutant disagrees with the verifier every time: a bug in the \
         generator, the mutants or the verifier"
    } else {
        "the difficulty parameters are probably unsatisfiable"
    };
    Err(TaskError::InvalidRequest(format!(
        "no certified task after {MAX_ATTEMPTS} attempts for index {} at level {} (last \
         rejection: {}); {hint}",
        request.index,
        request.level,
        last.map(|r| r.to_string()).unwrap_or_default()
    )))
}
