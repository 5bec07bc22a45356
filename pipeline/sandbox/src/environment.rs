//! Environments authored as components of the `environment` world, served through the same
//! [`Environment`] trait as native ones: `envsynth generate` certifies and writes their tasks,
//! `envsynth verify` scores against them, and the rollout engine calls their tools.
//!
//! The guest generates; the host certifies. Each `generate` answer carries the planted solution
//! and one mutant per check; the host runs the guest's own verifier on them in the sandbox and
//! keeps the task only if the planted solution passes and every mutant fails the check it targets,
//! exactly as for native environments ([`envsynth_core::certify`]). The task id is computed by the
//! host.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use envsynth_core::certify::{Certificate, Mutant, certify};
use envsynth_core::env::Difficulty;
use envsynth_core::model::{
    Constraint, EnvironmentSpec, Message, Task, ToolCall, ToolErrorCode, ToolResult, ToolSpec,
};
use envsynth_core::{
    Environment, Expect, FailureKind, PreparedTask, Probe, Rejection, Stage, TaskError,
    TaskRequest, Verdict,
};

use crate::{Limits, Plugin, SandboxError, World, plugin_verdict};

/// What `spec()` returns.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecRecord {
    id: String,
    version: String,
    description: String,
    levels: Vec<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    license: String,
}

/// What `generate(request)` returns on success.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GeneratedRecord {
    difficulty: Difficulty,
    prompt: Vec<Message>,
    constraints: Vec<Constraint>,
    world: Box<RawValue>,
    reference_solution: Box<RawValue>,
    mutants: Vec<MutantRecord>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MutantRecord {
    target: String,
    solution: Box<RawValue>,
}

/// What `generate(request)` returns as `err`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectionRecord {
    stage: Stage,
    code: String,
    detail: String,
}

/// A loaded environment component.
pub struct PluginEnvironment {
    plugin: Arc<Plugin>,
    spec: EnvironmentSpec,
    tools: Arc<Vec<ToolSpec>>,
    limits: Limits,
}

/// Why a component cannot serve as an environment.
fn invalid(what: &str, e: impl std::fmt::Display) -> SandboxError {
    SandboxError::WrongWorld {
        world: "environment",
        detail: format!("{what}: {e}"),
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl PluginEnvironment {
    /// Read the component's spec and tool specs once, and check them.
    pub fn new(plugin: Plugin, limits: Limits) -> Result<PluginEnvironment, SandboxError> {
        if plugin.world() != World::Environment {
            return Err(invalid(
                "world",
                format!("loaded as `{}`", plugin.world().name()),
            ));
        }
        let out = plugin.spec(&limits)?;
        let spec: SpecRecord =
            serde_json::from_str(&out.value).map_err(|e| invalid("spec()", e))?;
        if !is_name(&spec.id) {
            return Err(invalid(
                "spec().id",
                format!("`{}` is not 1-64 of [a-z0-9_-]", spec.id),
            ));
        }
        let semver = spec.version.split('.').collect::<Vec<_>>();
        if semver.len() != 3
            || semver
                .iter()
                .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(invalid(
                "spec().version",
                format!("`{}` is not MAJOR.MINOR.PATCH", spec.version),
            ));
        }
        if spec.levels.is_empty() || !spec.levels.iter().all(|l| is_name(l)) {
            return Err(invalid(
                "spec().levels",
                "must be a non-empty list of names of 1-64 of [a-z0-9_-]",
            ));
        }
        if spec.tags.len() > 32 || !spec.tags.iter().all(|t| is_name(t)) {
            return Err(invalid(
                "spec().tags",
                "must be at most 32 names of 1-64 of [a-z0-9_-]",
            ));
        }
        if spec.license.len() > 128 {
            return Err(invalid("spec().license", "is longer than 128 bytes"));
        }
        let out = plugin.tool_specs(&limits)?;
        let tools: Vec<ToolSpec> =
            serde_json::from_str(&out.value).map_err(|e| invalid("tool-specs()", e))?;
        for (i, t) in tools.iter().enumerate() {
            if !is_name(&t.name) {
                return Err(invalid(
                    &format!("tool-specs()[{i}].name"),
                    format!("`{}` is not 1-64 of [a-z0-9_-]", t.name),
                ));
            }
            if t.parameters.get("type") != Some(&json!("object")) {
                return Err(invalid(
                    &format!("tool-specs()[{i}].parameters"),
                    "must be a JSON Schema with \"type\": \"object\"",
                ));
            }
        }
        Ok(PluginEnvironment {
            spec: EnvironmentSpec {
                id: spec.id,
                version: spec.version,
                // The component is everything that determines its output.
                content_hash: plugin.hash().to_string(),
                description: spec.description,
                levels: spec.levels,
                tags: spec.tags,
                license: spec.license,
            },
            tools: Arc::new(tools),
            plugin: Arc::new(plugin),
            limits,
        })
    }

    fn verdict(&self, task_id: &str, task_json: &str, solution: &str) -> Verdict {
        plugin_verdict(&self.plugin, &self.limits, task_id, task_json, solution)
    }
}

fn plugin_rejection(e: &SandboxError) -> Rejection {
    let kind = serde_json::to_value(e.failure_kind())
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    Rejection::new(Stage::Compose, format!("plugin_{kind}"), e.to_string())
}

impl Environment for PluginEnvironment {
    fn spec(&self) -> &EnvironmentSpec {
        &self.spec
    }

    fn tool_specs(&self) -> &[ToolSpec] {
        &self.tools
    }

    fn validate_request(&self, request: &TaskRequest) -> Result<(), TaskError> {
        if !self.spec.levels.contains(&request.level) {
            return Err(TaskError::InvalidRequest(format!(
                "unknown level `{}` (levels: {})",
                request.level,
                self.spec.levels.join(", ")
            )));
        }
        if !(request.overrides.is_null() || request.overrides.is_object()) {
            return Err(TaskError::InvalidRequest(
                "overrides must be a JSON object".into(),
            ));
        }
        Ok(())
    }

    fn generate_attempt(&self, request: &TaskRequest, attempt: u32) -> Result<Task, Rejection> {
        let req = json!({
            "seed": request.seed,
            "index": request.index,
            "level": request.level,
            "overrides": request.overrides,
            "attempt": attempt,
        })
        .to_string();
        let out = match self.plugin.generate(&self.limits, &req) {
            Err(e) => return Err(plugin_rejection(&e)),
            Ok(Err(reason)) => {
                return Err(match serde_json::from_str::<RejectionRecord>(&reason) {
                    Ok(r) => Rejection::new(r.stage, r.code, r.detail),
                    Err(_) => Rejection::new(Stage::Compose, "plugin_rejected", reason),
                });
            }
            Ok(Ok(out)) => out,
        };
        let g: GeneratedRecord = serde_json::from_str(&out.value).map_err(|e| {
            Rejection::new(
                Stage::Render,
                "invalid_task_record",
                format!("generate() returned a record that is not a task: {e}"),
            )
        })?;
        if g.difficulty.level != request.level {
            return Err(Rejection::new(
                Stage::Render,
                "invalid_task_record",
                format!(
                    "generate() was asked for level {} and answered {}",
                    request.level, g.difficulty.level
                ),
            ));
        }
        let mut task = Task {
            id: String::new(),
            environment: self.spec.env_ref(),
            seed: request.seed,
            index: request.index,
            difficulty: g.difficulty,
            prompt: g.prompt,
            tools: Arc::clone(&self.tools),
            constraints: g.constraints,
            world: g.world,
            reference_solution: g.reference_solution,
            certificate: Certificate::default(),
        };
        // Certify with the guest's own verifier, on the task as the verifier will see it (the id
        // is filled in last because it hashes the certificate).
        let draft = serde_json::to_string(&task)
            .map_err(|e| Rejection::new(Stage::Render, "invalid_task_record", e.to_string()))?;
        let mutants: Vec<Mutant<Box<RawValue>>> = g
            .mutants
            .into_iter()
            .map(|m| Mutant {
                target: m.target.into(),
                solution: m.solution,
            })
            .collect();
        let planted = self.verdict("", &draft, task.reference_solution.get());
        if planted.mask {
            return Err(Rejection::new(
                Stage::Certify,
                "verifier_failed",
                format!(
                    "verifying the planted solution failed: {}",
                    planted.error.unwrap_or_default()
                ),
            ));
        }
        let required: Vec<&str> = planted.checks.iter().map(|c| &*c.id).collect();
        let certificate = certify(
            |s| self.verdict("", &draft, RawValue::get(s)),
            &task.reference_solution,
            &mutants,
            &required,
        )?;
        task.certificate = certificate;
        task.id = task.compute_id();
        Ok(task)
    }

    fn prepare(&self, task: &Task) -> Result<Box<dyn PreparedTask>, TaskError> {
        if task.environment != self.spec.env_ref() {
            return Err(TaskError::WrongEnvironment {
                expected: self.spec.env_ref().to_string(),
                found: task.environment.to_string(),
            });
        }
        let task_json =
            serde_json::to_string(task).map_err(|e| TaskError::Malformed(e.to_string()))?;
        Ok(Box::new(PreparedPlugin {
            plugin: Arc::clone(&self.plugin),
            limits: self.limits,
            task_id: task.id.clone(),
            world_state: world_state(task),
            task_json,
        }))
    }

    fn probes(&self, task: &Task) -> Result<Vec<Probe>, TaskError> {
        let reference: Value = serde_json::from_str(task.reference_solution.get())
            .map_err(|e| TaskError::Malformed(format!("reference_solution: {e}")))?;
        Ok(vec![
            Probe {
                name: "planted".into(),
                submission: reference,
                expect: Expect::Pass,
            },
            Probe {
                name: "empty:null".into(),
                submission: Value::Null,
                expect: Expect::Zero(FailureKind::EmptySubmission),
            },
            Probe {
                name: "garbage:number".into(),
                submission: json!(42),
                expect: Expect::Zero(FailureKind::MalformedSubmission),
            },
            Probe {
                name: "garbage:nested-lists".into(),
                submission: json!([[[[]]], [[]]]),
                expect: Expect::Zero(FailureKind::MalformedSubmission),
            },
        ])
    }
}

/// What a toolset's `call` receives as `world-state`: the task's world and constraints (never its
/// reference solution).
pub fn world_state(task: &Task) -> String {
    json!({"world": &task.world, "constraints": &task.constraints}).to_string()
}

/// A task of a plugin environment, ready for verification and tool calls.
struct PreparedPlugin {
    plugin: Arc<Plugin>,
    limits: Limits,
    task_id: String,
    task_json: String,
    world_state: String,
}

impl PreparedTask for PreparedPlugin {
    fn verify(&self, submission: &Value) -> Verdict {
        plugin_verdict(
            &self.plugin,
            &self.limits,
            &self.task_id,
            &self.task_json,
            &submission.to_string(),
        )
    }

    fn call_tool(&self, call: &ToolCall) -> ToolResult {
        plugin_tool_result(&self.plugin, &self.limits, &self.world_state, call)
    }
}

/// Call one tool of a toolset (or environment) component and turn whatever happens into a tool
/// result. A limit breach, trap or unreadable answer is the environment's failure, not the
/// agent's: it comes back as `environment_error`.
pub fn plugin_tool_result(
    plugin: &Plugin,
    limits: &Limits,
    world_state: &str,
    call: &ToolCall,
) -> ToolResult {
    let failed = |message: String| ToolResult::Error {
        code: ToolErrorCode::EnvironmentError,
        message,
    };
    match plugin.call_tool(limits, world_state, &call.name, &call.arguments.to_string()) {
        Err(e) => failed(format!("the tool failed in the sandbox: {e}")),
        Ok(out) => serde_json::from_str(&out.value).unwrap_or_else(|e| {
            failed(format!(
                "the toolset returned something that is not a tool result: {e}"
            ))
        }),
    }
}
