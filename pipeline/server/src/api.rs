//! The handlers. Each reads its input through an extractor whose rejection becomes an
//! [`ApiError`], so a malformed request is answered with JSON naming the problem.

use std::collections::HashSet;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection, StringRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};

use envsynth_core::chat::submitted_answer;
use envsynth_core::model::ToolErrorCode;
use envsynth_core::{FailureKind, ToolResult, Verdict, extract_submission};
use envsynth_registry::curriculum;
use envsynth_registry::{
    Difficulty, EnvironmentQuery, EnvironmentRecord, Put, RolloutRecord, Store,
};

use crate::params::{FILTER_KEYS, FilterFields, Params, filter_key};
use crate::{ApiError, App, OPENAPI, Ready};

type AppState = State<Arc<App>>;
type ApiResult<T> = Result<T, ApiError>;
type Pairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

const MAX_SAMPLE: u32 = 1024;
const MAX_EXCLUDE: usize = 100_000;
const MAX_BATCH: usize = 1024;
const MAX_ROLLOUTS: usize = 10_000;

fn params(q: Pairs) -> ApiResult<Params> {
    Params::new(q?.0)
}

/// Proof that a request carries the server's bearer token; write handlers take it first, so
/// an unauthenticated write is refused before its body is read.
pub struct Writer;

impl FromRequestParts<Arc<App>> for Writer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Writer, ApiError> {
        let Some(expected) = app.config.token.as_deref() else {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "writes_disabled",
                "this server has no write token (set ENVSYNTH_TOKEN before `envsynth serve`), so it is read-only",
            ));
        };
        let offered = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match offered {
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "writes need `Authorization: Bearer <token>`",
            )),
            Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => Ok(Writer),
            Some(_) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the bearer token is not this server's",
            )),
        }
    }
}

/// Compare without an early exit, so timing does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

pub async fn health(State(app): AppState) -> ApiResult<Json<Value>> {
    let revision = app.store.revision().await?;
    let database = match app.store {
        envsynth_registry::AnyStore::Sqlite(_) => "sqlite",
        envsynth_registry::AnyStore::Postgres(_) => "postgres",
    };
    Ok(Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "database": database,
        "revision": revision,
    })))
}

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

pub async fn list_environments(State(app): AppState, q: Pairs) -> ApiResult<impl IntoResponse> {
    let mut p = params(q)?;
    let query = EnvironmentQuery {
        text: p.text("q"),
        tag: p.text("tag"),
        after: p.number("after")?,
        limit: p.number("limit")?.unwrap_or(100),
    };
    p.finish(&["q", "tag", "after", "limit"])?;
    if !(1..=1000).contains(&query.limit) {
        return Err(ApiError::invalid("limit: must be 1 to 1000"));
    }
    Ok(Json(app.store.environments(&query).await?))
}

pub async fn get_environment(
    State(app): AppState,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<EnvironmentRecord>> {
    let Path((id, version)) = path?;
    match app.store.environment(&id, &version).await? {
        Some(env) => Ok(Json(env)),
        None => Err(ApiError::not_found(format!(
            "no environment {}@{}",
            id.escape_debug(),
            version.escape_debug()
        ))),
    }
}

pub async fn put_environment(
    State(app): AppState,
    _writer: Writer,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Json<EnvironmentRecord>, JsonRejection>,
) -> ApiResult<impl IntoResponse> {
    let Path((id, version)) = path?;
    let Json(env) = body?;
    if env.id != id || env.version != version {
        return Err(ApiError::invalid(format!(
            "id, version: the body describes {}@{}, the path {id}@{version}",
            env.id, env.version
        )));
    }
    if !env.content_hash.starts_with("sha256:") {
        return Err(ApiError::invalid("content_hash: must be `sha256:<hex>`"));
    }
    Ok(match app.store.put_environment(&env).await? {
        Put::Created => (StatusCode::CREATED, Json(json!({"result": "created"}))),
        Put::Unchanged => (StatusCode::OK, Json(json!({"result": "unchanged"}))),
    })
}

pub async fn get_task_set(
    State(app): AppState,
    path: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let Path((name, version)) = path?;
    let Some(set) = app.store.task_set(&name, &version).await? else {
        return Err(ApiError::not_found(format!(
            "no task set {}@{}",
            name.escape_debug(),
            version.escape_debug()
        )));
    };
    let splits: Vec<Value> = set
        .splits
        .iter()
        .map(|(split, n)| json!({"name": split, "tasks": n}))
        .collect();
    Ok(Json(json!({
        "name": set.name,
        "version": set.version,
        "content_hash": set.content_hash,
        "splits": splits,
    })))
}

#[derive(Serialize)]
pub struct TaskPage {
    total: u64,
    offset: u64,
    task_ids: Vec<String>,
    next_offset: Option<u64>,
}

pub async fn list_tasks(State(app): AppState, q: Pairs) -> ApiResult<Json<TaskPage>> {
    let mut p = params(q)?;
    let filter = FilterFields::from_params(&mut p)?.into_filter("")?;
    let offset: u64 = p.number("offset")?.unwrap_or(0);
    let limit: u32 = p.number("limit")?.unwrap_or(100);
    let mut known = FILTER_KEYS.to_vec();
    known.extend(["offset", "limit"]);
    p.finish(&known)?;
    if limit > 10_000 {
        return Err(ApiError::invalid(
            "limit: at most 10000 (0 counts without listing)",
        ));
    }
    let total = app.store.count_tasks(&filter).await?;
    let task_ids = if limit == 0 || offset >= total {
        Vec::new()
    } else {
        app.store.task_ids(&filter, offset, limit).await?
    };
    let end = offset + task_ids.len() as u64;
    Ok(Json(TaskPage {
        total,
        offset,
        next_offset: (limit > 0 && end < total).then_some(end),
        task_ids,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleRequest {
    #[serde(default)]
    filter: FilterFields,
    seed: u64,
    n: u32,
    #[serde(default)]
    exclude: Vec<String>,
    curriculum: Option<CurriculumFields>,
}

/// Weight the draw toward tasks whose next group of rollouts is likely to be mixed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurriculumFields {
    /// Whose recorded outcomes count.
    policy: String,
    /// Rollouts per task in one training step (GRPO's group size).
    #[serde(default = "default_group")]
    group: u32,
    /// Count only each task's latest `recent` outcomes (all when absent).
    recent: Option<u32>,
}

fn default_group() -> u32 {
    8
}

const MAX_GROUP: u32 = 1024;
const MAX_RECENT: u32 = 1_000_000;

#[derive(Serialize)]
pub struct CurriculumReport {
    policy: String,
    group: u32,
    /// The Beta prior fitted to the population's outcomes.
    prior: curriculum::Prior,
    /// Tasks of the population with at least one outcome.
    tried: usize,
    /// The mean weight over the population (what a uniform draw would expect) ...
    population_mixed: f64,
    /// ... and each drawn task's weight, in the order of `task_ids`.
    mixed: Vec<f64>,
}

#[derive(Serialize)]
pub struct Sample {
    seed: u64,
    /// The registry revision the sample was drawn at: equal revision, seed, filter, count and
    /// exclusions give an equal sample.
    revision: u64,
    /// How many tasks the filter selects, before exclusions.
    population: usize,
    task_ids: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    curriculum: Option<CurriculumReport>,
}

pub async fn sample_tasks(
    State(app): AppState,
    body: Result<Json<SampleRequest>, JsonRejection>,
) -> ApiResult<Json<Sample>> {
    let Json(req) = body?;
    if !(1..=MAX_SAMPLE).contains(&req.n) {
        return Err(ApiError::invalid(format!("n: must be 1 to {MAX_SAMPLE}")));
    }
    if req.exclude.len() > MAX_EXCLUDE {
        return Err(ApiError::invalid(format!(
            "exclude: at most {MAX_EXCLUDE} task ids"
        )));
    }
    let filter = req.filter.into_filter("filter.")?;
    let revision = app.store.revision().await?;
    let key = format!("{revision}|{}", filter_key(&filter));
    let population = match app.populations.get(&key) {
        Some(p) => p,
        None => {
            let p = Arc::new(app.store.candidates(&filter).await?);
            app.populations.put(key, p.clone());
            p
        }
    };
    let exclude: HashSet<&str> = req.exclude.iter().map(String::as_str).collect();
    let Some(c) = req.curriculum else {
        let task_ids =
            envsynth_registry::seeded_sample(&population, req.seed, req.n as usize, &exclude)
                .into_iter()
                .map(str::to_string)
                .collect();
        return Ok(Json(Sample {
            seed: req.seed,
            revision,
            population: population.len(),
            task_ids,
            curriculum: None,
        }));
    };
    if c.policy.is_empty() || c.policy.len() > 256 {
        return Err(ApiError::invalid(
            "curriculum.policy: must be 1 to 256 bytes",
        ));
    }
    if !(2..=MAX_GROUP).contains(&c.group) {
        return Err(ApiError::invalid(format!(
            "curriculum.group: must be 2 to {MAX_GROUP} (a group of one is never mixed)"
        )));
    }
    if c.recent.is_some_and(|r| !(1..=MAX_RECENT).contains(&r)) {
        return Err(ApiError::invalid(format!(
            "curriculum.recent: must be 1 to {MAX_RECENT}"
        )));
    }
    let outcomes = app.store.outcomes(&c.policy, c.recent).await?;
    let d = curriculum::draw(
        &population,
        &outcomes,
        c.group,
        req.seed,
        req.n as usize,
        &exclude,
    );
    Ok(Json(Sample {
        seed: req.seed,
        revision,
        population: population.len(),
        task_ids: d
            .drawn
            .iter()
            .map(|&(i, _)| population[i].clone())
            .collect(),
        curriculum: Some(CurriculumReport {
            policy: c.policy,
            group: c.group,
            prior: d.prior,
            tried: d.tried,
            population_mixed: d.population_mixed,
            mixed: d.drawn.iter().map(|&(_, w)| w).collect(),
        }),
    }))
}

pub async fn get_task(
    State(app): AppState,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<impl IntoResponse> {
    let Path(id) = path?;
    match app.store.task(&id).await? {
        Some(task) => Ok(Json(task)),
        None => Err(ApiError::not_found(format!(
            "no task {}",
            id.escape_debug()
        ))),
    }
}

pub async fn difficulty(
    State(app): AppState,
    path: Result<Path<String>, PathRejection>,
    q: Pairs,
) -> ApiResult<Json<Value>> {
    let Path(id) = path?;
    let mut p = params(q)?;
    let policy = p.text("policy");
    let ks: Vec<u64> = match p.text("k") {
        None => vec![1],
        Some(list) => list
            .split(',')
            .map(|k| match k.trim().parse::<u64>() {
                Ok(k) if (1..=100_000).contains(&k) => Ok(k),
                _ => Err(ApiError::bad_request(format!(
                    "query parameter `k`: `{}` is not a list of integers 1 to 100000",
                    list.escape_debug()
                ))),
            })
            .collect::<ApiResult<_>>()?,
    };
    p.finish(&["policy", "k"])?;
    let mut all = app.store.difficulties(&id).await?;
    if all.is_empty() && app.store.task(&id).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "no task {}",
            id.escape_debug()
        )));
    }
    if let Some(policy) = &policy {
        all.retain(|d| &d.policy == policy);
    }
    let policies: Vec<Value> = all
        .iter()
        .map(|d| {
            let by_k = |f: fn(&Difficulty, u64) -> Option<f64>| -> serde_json::Map<String, Value> {
                ks.iter()
                    .map(|&k| (k.to_string(), json!(f(d, k))))
                    .collect()
            };
            json!({
                "policy": d.policy,
                "attempts": d.attempts,
                "passes": d.passes,
                "masked": d.masked,
                "pass_at": by_k(Difficulty::pass_at),
                "pass_hat": by_k(Difficulty::pass_hat),
            })
        })
        .collect();
    Ok(Json(json!({"task_id": id, "policies": policies})))
}

/// `Some(value)` whenever the field is present, `null` included.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// One message of a chat transcript; fields other than role, content and tool calls are
/// ignored, and so is a tool call that is not an OpenAI one (`{id, function: {name, arguments}}`).
#[derive(Deserialize)]
pub struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Value,
    #[serde(default)]
    tool_calls: Vec<Value>,
}

/// An answer in one of three forms: the submission itself, the model's text, or the whole
/// transcript (read as rollouts are: the first submission a `submit…` tool accepted, else the
/// last assistant message's text).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyItem {
    task_id: String,
    #[serde(default, deserialize_with = "present")]
    submission: Option<Value>,
    #[serde(default)]
    response: Option<String>,
    #[serde(default)]
    messages: Option<Vec<ChatMessage>>,
}

fn answer(
    submission: Option<Value>,
    response: Option<String>,
    messages: Option<Vec<ChatMessage>>,
    at: &str,
) -> ApiResult<Value> {
    let given = usize::from(submission.is_some())
        + usize::from(response.is_some())
        + usize::from(messages.is_some());
    if given != 1 {
        return Err(ApiError::invalid(format!(
            "{at}: give exactly one of `submission` (the answer as JSON), `response` (the model's text) or `messages` (the transcript)"
        )));
    }
    if let Some(v) = submission {
        return Ok(v);
    }
    let text = match (response, messages) {
        (Some(text), _) => text,
        (_, Some(messages)) => {
            let Some(last) = messages.iter().rev().find(|m| m.role == "assistant") else {
                return Err(ApiError::invalid(format!(
                    "{at}messages: no message with role `assistant`"
                )));
            };
            if messages.iter().any(|m| !m.tool_calls.is_empty()) {
                let transcript: Vec<envsynth_core::chat::ChatMessage> = messages
                    .iter()
                    .map(|m| envsynth_core::chat::ChatMessage {
                        role: m.role.clone(),
                        content: Some(content_text(&m.content)),
                        tool_calls: m
                            .tool_calls
                            .iter()
                            .filter_map(|c| serde_json::from_value(c.clone()).ok())
                            .collect(),
                        ..Default::default()
                    })
                    .collect();
                if let Some(answer) = submitted_answer(&transcript) {
                    return Ok(answer);
                }
            }
            content_text(&last.content)
        }
        _ => String::new(),
    };
    Ok(extract_submission(&text).unwrap_or(Value::String(text)))
}

/// A message's text: a string, or the `text` of its content parts.
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// The prepared task to verify against, from the cache or the store. A task the store has but
/// its environment cannot read yields a masked `invalid_task` verdict, not an error.
pub(crate) async fn ready(
    app: &Arc<App>,
    task_id: &str,
    at: &str,
) -> ApiResult<Result<Ready, Verdict>> {
    if let Some(r) = app.prepared.get(task_id) {
        return Ok(Ok(r));
    }
    let Some(task) = app.store.task(task_id).await? else {
        return Err(ApiError::not_found(format!(
            "{at}task_id: no task {}",
            task_id.escape_debug()
        )));
    };
    let verifiers = app.verifiers.clone();
    let made = tokio::task::spawn_blocking(move || {
        let resolved = verifiers.environment(&task.environment)?;
        let prepared = resolved.env.prepare(&task).map_err(|e| e.to_string())?;
        Ok::<_, String>(Ready {
            prepared: Arc::from(prepared),
            sandboxed: resolved.sandboxed,
        })
    })
    .await
    .map_err(|e| ApiError::internal(format!("preparing the task failed: {e}")))?;
    match made {
        Ok(r) => {
            app.prepared.put(task_id.to_string(), r.clone());
            Ok(Ok(r))
        }
        Err(e) => Ok(Err(Verdict::rejected(
            task_id,
            FailureKind::InvalidTask,
            e,
            [],
        ))),
    }
}

/// A verdict now (native verifiers), or later (sandboxed ones, on the blocking pool).
enum Pending {
    Done(Verdict),
    Running(tokio::task::JoinHandle<Verdict>),
}

async fn start(app: &Arc<App>, task_id: &str, answer: Value, at: &str) -> ApiResult<Pending> {
    Ok(match ready(app, task_id, at).await? {
        Err(v) => Pending::Done(v),
        Ok(r) if r.sandboxed => Pending::Running(tokio::task::spawn_blocking(move || {
            r.prepared.verify(&answer)
        })),
        Ok(r) => Pending::Done(r.prepared.verify(&answer)),
    })
}

async fn finish(p: Pending) -> ApiResult<Verdict> {
    match p {
        Pending::Done(v) => Ok(v),
        Pending::Running(h) => h
            .await
            .map_err(|e| ApiError::internal(format!("the verifier failed: {e}"))),
    }
}

pub async fn verify_one(
    State(app): AppState,
    body: Result<Json<VerifyItem>, JsonRejection>,
) -> ApiResult<Json<Verdict>> {
    let Json(item) = body?;
    let a = answer(item.submission, item.response, item.messages, "")?;
    let p = start(&app, &item.task_id, a, "").await?;
    Ok(Json(finish(p).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    items: Vec<VerifyItem>,
}

pub async fn verify_batch(
    State(app): AppState,
    body: Result<Json<BatchRequest>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(req) = body?;
    if req.items.is_empty() || req.items.len() > MAX_BATCH {
        return Err(ApiError::invalid(format!(
            "items: give 1 to {MAX_BATCH} submissions"
        )));
    }
    // Check every item before verifying any.
    let mut answers = Vec::with_capacity(req.items.len());
    for (i, item) in req.items.into_iter().enumerate() {
        let at = format!("items[{i}].");
        let a = answer(
            item.submission,
            item.response,
            item.messages,
            &at[..at.len() - 1],
        )?;
        answers.push((item.task_id, a, at));
    }
    let mut pending = Vec::with_capacity(answers.len());
    for (task_id, a, at) in answers {
        pending.push(start(&app, &task_id, a, &at).await?);
    }
    let mut verdicts = Vec::with_capacity(pending.len());
    for p in pending {
        verdicts.push(finish(p).await?);
    }
    Ok(Json(json!({"verdicts": verdicts})))
}

/// One tool call against a task's world, for an agent loop that runs outside envsynth: the path
/// names the task and the tool, the body is the arguments as the model wrote them (JSON text).
/// Tools are pure functions of the world, so calls need no session and may repeat. The answer
/// is the [`ToolResult`]; its JSON text is the tool message `envsynth rollout` records. The
/// agent's mistakes (an unknown tool, arguments that are not JSON or break the tool's schema)
/// are tool errors it reads, not HTTP errors; a task its environment cannot read answers
/// `environment_error`, which rollouts mask.
pub async fn call_tool(
    State(app): AppState,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<String, StringRejection>,
) -> ApiResult<Json<ToolResult>> {
    let Path((task_id, name)) = path?;
    let arguments = body?;
    let result = run_tool(&app, &task_id, move |p| p.call_tool_text(&name, &arguments)).await?;
    Ok(Json(result))
}

/// Run a tool of a task, the one way every route does: a task its environment cannot prepare
/// answers `environment_error`; native tools run in place, sandboxed ones on the blocking pool.
pub(crate) async fn run_tool(
    app: &Arc<App>,
    task_id: &str,
    call: impl FnOnce(&dyn envsynth_core::PreparedTask) -> ToolResult + Send + 'static,
) -> ApiResult<ToolResult> {
    Ok(match ready(app, task_id, "").await? {
        Err(v) => ToolResult::Error {
            code: ToolErrorCode::EnvironmentError,
            message: v.error.unwrap_or_default(),
        },
        Ok(r) if r.sandboxed => tokio::task::spawn_blocking(move || call(r.prepared.as_ref()))
            .await
            .map_err(|e| ApiError::internal(format!("the tool failed: {e}")))?,
        Ok(r) => call(r.prepared.as_ref()),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutIn {
    rollout_id: String,
    task_id: String,
    policy: String,
    sample_seed: u64,
    #[serde(default)]
    verdict: Option<Verdict>,
    #[serde(default, deserialize_with = "present")]
    submission: Option<Value>,
    #[serde(default)]
    response: Option<String>,
    #[serde(default)]
    messages: Option<Vec<ChatMessage>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutsRequest {
    rollouts: Vec<RolloutIn>,
}

pub async fn post_rollouts(
    State(app): AppState,
    _writer: Writer,
    body: Result<Json<RolloutsRequest>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let Json(req) = body?;
    if req.rollouts.is_empty() || req.rollouts.len() > MAX_ROLLOUTS {
        return Err(ApiError::invalid(format!(
            "rollouts: give 1 to {MAX_ROLLOUTS} rollouts"
        )));
    }
    let mut records = Vec::with_capacity(req.rollouts.len());
    let mut pending = Vec::new();
    for (i, r) in req.rollouts.into_iter().enumerate() {
        let at = format!("rollouts[{i}]");
        if r.policy.is_empty() || r.policy.len() > 256 {
            return Err(ApiError::invalid(format!(
                "{at}.policy: must be 1-256 bytes"
            )));
        }
        let verdict = match r.verdict {
            Some(v) => {
                if r.submission.is_some() || r.response.is_some() || r.messages.is_some() {
                    return Err(ApiError::invalid(format!(
                        "{at}: give either `verdict` or an answer to verify, not both"
                    )));
                }
                if !(v.reward.is_finite() && (0.0..=1.0).contains(&v.reward)) {
                    return Err(ApiError::invalid(format!(
                        "{at}.verdict.reward: {} is not in [0, 1]",
                        v.reward
                    )));
                }
                Pending::Done(v)
            }
            None => {
                let a = answer(r.submission, r.response, r.messages, &at)?;
                start(&app, &r.task_id, a, &format!("{at}.")).await?
            }
        };
        pending.push(verdict);
        records.push((r.rollout_id, r.task_id, r.policy, r.sample_seed));
    }
    let mut rollouts = Vec::with_capacity(records.len());
    for ((rollout_id, task_id, policy, sample_seed), p) in records.into_iter().zip(pending) {
        rollouts.push(RolloutRecord {
            rollout_id,
            task_id,
            policy,
            sample_seed,
            verdict: finish(p).await?,
        });
    }
    let created = app.store.record_rollouts(&rollouts).await?;
    let rewards: Vec<f64> = rollouts.iter().map(|r| r.verdict.reward).collect();
    Ok(Json(json!({
        "received": rollouts.len(),
        "created": created,
        "rewards": rewards,
    })))
}
