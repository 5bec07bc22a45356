//! The records that travel between stages and out to trainers.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::certify::Certificate;
use crate::env::Difficulty;

/// What identifies an environment family and everything that determines its output.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EnvironmentSpec {
    /// Stable name, e.g. `travel-planning`.
    pub id: String,
    /// Semantic version; bumped whenever generated tasks or verdicts would change.
    pub version: String,
    /// `sha256:` of the generator's code version, data files, prompt templates and tool specs.
    pub content_hash: String,
    pub description: String,
    /// Named difficulty levels, easiest first.
    pub levels: Vec<String>,
    /// Search keywords (`planning`, `tool-use`, ...), each 1-64 of `[a-z0-9_-]`.
    #[serde(default)]
    pub tags: Vec<String>,
    /// SPDX license expression of the environment's tasks and data (empty: unstated).
    #[serde(default)]
    pub license: String,
}

impl EnvironmentSpec {
    pub fn env_ref(&self) -> EnvRef {
        EnvRef {
            id: self.id.clone(),
            version: self.version.clone(),
        }
    }
}

/// `id@version`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnvRef {
    pub id: String,
    pub version: String,
}

impl std::fmt::Display for EnvRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.id, self.version)
    }
}

/// One chat message of the user-facing prompt.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A tool the agent may call: OpenAI-style function description plus the schema of its result.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: Value,
    /// JSON Schema of a successful result.
    pub result: Value,
}

/// A call the agent made.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: Value,
}

/// What a tool returned: a result, or a structured error the agent can read and recover from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ToolResult {
    Ok {
        result: Value,
    },
    Error {
        code: ToolErrorCode,
        message: String,
    },
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ToolErrorCode {
    /// No tool of that name.
    UnknownTool,
    /// Arguments do not match the tool's JSON Schema.
    InvalidArguments,
    /// Arguments are well-formed but name something that does not exist.
    NotFound,
    /// The tool itself failed (a sandbox limit, a trap, an unreadable answer): the environment's
    /// fault, not the agent's. Rollouts record it as an infrastructure failure.
    EnvironmentError,
}

/// An answer to a task: whatever the agent delivered (for travel planning, a plan object or text
/// holding one). Many submissions may answer one task (k rollouts).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Submission {
    pub task_id: String,
    /// Missing or null means nothing was delivered.
    #[serde(default)]
    pub submission: Value,
}

/// A constraint of a task, keyed by a stable id that is also the id of the check that tests it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Constraint {
    pub id: String,
    /// Human-readable statement, as shown to the agent.
    pub description: String,
    /// Machine-readable parameters (budget amount, required cuisines, ...).
    pub params: Value,
}

/// A complete, certified task: everything a trainer, tool server or remote verifier needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Task {
    /// `sha256:` of every other field, serialized canonically.
    pub id: String,
    pub environment: EnvRef,
    pub seed: u64,
    pub index: u64,
    pub difficulty: Difficulty,
    pub prompt: Vec<Message>,
    /// Shared between tasks of one environment (they are identical), so a shard of tasks holds
    /// one copy in memory.
    pub tools: std::sync::Arc<Vec<ToolSpec>>,
    pub constraints: Vec<Constraint>,
    /// The world the tools run against (environment-specific JSON).
    pub world: Box<RawValue>,
    /// The planted solution, in the submission format.
    pub reference_solution: Box<RawValue>,
    pub certificate: Certificate,
}

/// The content of a task without its id, in field order; its hash is the task id.
#[derive(Serialize)]
struct TaskContent<'a> {
    environment: &'a EnvRef,
    seed: u64,
    index: u64,
    difficulty: &'a Difficulty,
    prompt: &'a [Message],
    tools: &'a [ToolSpec],
    constraints: &'a [Constraint],
    world: &'a RawValue,
    reference_solution: &'a RawValue,
    certificate: &'a Certificate,
}

impl Task {
    /// The content-addressed id this task should carry.
    pub fn compute_id(&self) -> String {
        let content = TaskContent {
            environment: &self.environment,
            seed: self.seed,
            index: self.index,
            difficulty: &self.difficulty,
            prompt: &self.prompt,
            tools: &self.tools,
            constraints: &self.constraints,
            world: &self.world,
            reference_solution: &self.reference_solution,
            certificate: &self.certificate,
        };
        crate::hash::sha256_json(&content)
    }

    /// `sha256:` of the problem an agent is given and judged on: the prompt, the tools, the world
    /// they answer from and the constraints, without where the task came from (environment
    /// version, seed, index, level) or its solution. Two rows with the same problem hash are the
    /// same training example, whatever their ids.
    pub fn problem_hash(&self) -> String {
        #[derive(Serialize)]
        struct Problem<'a> {
            prompt: &'a [Message],
            tools: &'a [ToolSpec],
            world: &'a RawValue,
            constraints: &'a [Constraint],
        }
        let problem = Problem {
            prompt: &self.prompt,
            tools: &self.tools,
            world: &self.world,
            constraints: &self.constraints,
        };
        crate::hash::sha256_json(&problem)
    }

    /// `sha256:` of the prompt's messages alone: what a model reads before its first tool call,
    /// and all that text-only training (or memorization) sees.
    pub fn prompt_hash(&self) -> String {
        crate::hash::sha256_json(&self.prompt)
    }

    /// Parse a task record and check that its id matches its content.
    pub fn from_json(text: &str) -> Result<Task, crate::env::TaskError> {
        let task: Task = serde_json::from_str(text)
            .map_err(|e| crate::env::TaskError::Malformed(e.to_string()))?;
        let expected = task.compute_id();
        if task.id != expected {
            return Err(crate::env::TaskError::IdMismatch {
                stated: task.id,
                computed: expected,
            });
        }
        Ok(task)
    }
}
