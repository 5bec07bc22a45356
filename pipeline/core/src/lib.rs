//! The task model every stage shares: environments, tasks, tools, submissions and verdicts,
//! plus deterministic seeding, content hashing, certification and the TravelPlanner-style
//! metric groups. Pure data and pure functions: nothing here does I/O.

pub mod certify;
pub mod chat;
pub mod env;
pub mod extract;
pub mod files;
pub mod hash;
pub mod metrics;
pub mod model;
pub mod seed;
pub mod stages;
pub mod verdict;

pub use certify::{Certificate, Mutant, certify};
pub use env::{
    Difficulty, Environment, Expect, PreparedTask, Probe, Rejection, Stage, TaskError, TaskRequest,
    tool_results_agree,
};
pub use extract::extract_submission;
pub use model::{
    EnvRef, EnvironmentSpec, Message, Submission, Task, ToolCall, ToolResult, ToolSpec,
};
pub use stages::{Draft, Stages};
pub use verdict::{Check, CheckStatus, FailureKind, Verdict};
