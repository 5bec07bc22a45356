//! A simulated policy that speaks the OpenAI chat-completions protocol over real HTTP, so
//! rollout pipelines and their tests run without a GPU or a remote model. It recognises a task
//! by its first user message (tasks that share one by the tool results the conversation has
//! seen) and plays a configurable agent:
//!
//! - `oracle`: calls up to three of the task's tools with valid arguments, then submits the
//!   planted solution (through the task's `submit…` tool, or else as a JSON code block in its
//!   reply). Passes every certified task.
//! - `noisy:P`: the oracle, but each decision (each tool call and the final answer) goes wrong
//!   with probability P: a wrong tool call has malformed arguments, and after any mistake the
//!   final answer is wrong. Half the time it is a refusal; otherwise it is a well-formed
//!   answer that breaks checks: the planted solution with one of its string values swapped for
//!   another of its own (a restaurant twice, a city out of route), a swap the task's verifier
//!   rejects as a wrong answer. A task with `d` decisions passes with probability `(1 - P)^d`.
//! - `random`: calls random tools with empty arguments for a few turns, then answers nonsense.
//!
//! Decisions are drawn from ChaCha8 seeded by (request `seed`, task, turn), so a conversation
//! replays identically. Asked for tokens (`return_token_ids`, `logprobs`), it answers as vLLM
//! does, tokenizing with a byte-level tokenizer over a prefix-stable chat template. Faults
//! (server errors, malformed JSON, connections dropped mid-response) can be injected on every
//! n-th attempt at each distinct request, so whether a client's retries get through does not
//! depend on how concurrent requests interleave.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use envsynth_core::chat::{ChatMessage, ChatRequest, WireFunction, WireToolCall};
use envsynth_core::{Task, ToolCall, ToolResult};

use crate::{ApiError, Verifiers};

/// Which agent the simulated policy plays.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Agent {
    Oracle,
    Noisy(f64),
    Random,
}

impl std::str::FromStr for Agent {
    type Err = String;
    fn from_str(s: &str) -> Result<Agent, String> {
        match s {
            "oracle" => Ok(Agent::Oracle),
            "random" => Ok(Agent::Random),
            _ => match s.strip_prefix("noisy:").map(str::parse::<f64>) {
                Some(Ok(p)) if (0.0..=1.0).contains(&p) => Ok(Agent::Noisy(p)),
                _ => Err(format!(
                    "unknown agent `{s}`: use oracle, random or noisy:P with P in [0, 1]"
                )),
            },
        }
    }
}

/// A fault injected on attempts 1, 1 + every, 1 + 2·every, ... at each distinct request
/// (0: never; 1: always; 2: every other attempt, so one retry gets through).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    pub every: u64,
    pub kind: FaultKind,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum FaultKind {
    /// `500 Internal Server Error`.
    #[default]
    ServerError,
    /// `200` with a truncated JSON body.
    Malformed,
    /// The connection is cut in the middle of the response body.
    Drop,
}

impl std::str::FromStr for FaultKind {
    type Err = String;
    fn from_str(s: &str) -> Result<FaultKind, String> {
        match s {
            "500" | "server-error" => Ok(FaultKind::ServerError),
            "malformed" => Ok(FaultKind::Malformed),
            "drop" => Ok(FaultKind::Drop),
            _ => Err(format!(
                "unknown fault `{s}`: use server-error, malformed or drop"
            )),
        }
    }
}

/// What the simulated agent knows about one task.
struct Script {
    /// Valid tool calls, in order.
    calls: Vec<ToolCall>,
    /// The planted solution, as JSON text.
    planted: String,
    /// The task, to tell prompt twins apart by the tool results a conversation has seen.
    prepared: Arc<dyn envsynth_core::PreparedTask>,
}

struct Sim {
    /// By first user message; more than one when tasks share it (prompt twins).
    scripts: HashMap<String, Vec<Script>>,
    agent: Agent,
    faults: Faults,
    requests: AtomicU64,
    /// Attempts seen per distinct request body.
    attempts: std::sync::Mutex<HashMap<u64, u64>>,
}

/// How many decisions the oracle makes on `task` (its tool calls and the answer): with the
/// noisy agent the task passes with probability `(1 - p)^decisions`.
pub fn decisions(task: &Task, verifiers: &dyn Verifiers) -> Result<usize, String> {
    Ok(script(task, verifiers)?.calls.len() + 1)
}

fn script(task: &Task, verifiers: &dyn Verifiers) -> Result<Script, String> {
    let resolved = verifiers.environment(&task.environment)?;
    let prepared = resolved.env.prepare(task).map_err(|e| e.to_string())?;
    let probes = resolved.env.tool_probes(task).map_err(|e| e.to_string())?;
    let calls = probes
        .into_iter()
        .filter(|c| !c.name.starts_with("submit"))
        .filter(|c| matches!(prepared.call_tool(c), ToolResult::Ok { .. }))
        .take(3)
        .collect();
    Ok(Script {
        calls,
        planted: task.reference_solution.get().to_string(),
        prepared: Arc::from(prepared),
    })
}

/// The key a conversation is recognised by: its first user message.
fn key_of<'a>(messages: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> Option<String> {
    messages
        .into_iter()
        .find(|(role, _)| *role == "user")
        .and_then(|(_, c)| c.map(str::to_string))
}

/// The simulated policy's routes: `POST /v1/chat/completions`, `GET /v1/models`.
pub fn router(
    tasks: &[Task],
    verifiers: &dyn Verifiers,
    agent: Agent,
    faults: Faults,
) -> Result<Router, String> {
    let mut scripts = HashMap::new();
    for t in tasks {
        let key = key_of(
            t.prompt
                .iter()
                .map(|m| (m.role.as_str(), Some(m.content.as_str()))),
        )
        .ok_or_else(|| format!("task {} has no user message", t.id))?;
        scripts
            .entry(key)
            .or_insert_with(Vec::new)
            .push(script(t, verifiers)?);
    }
    let sim = Arc::new(Sim {
        scripts,
        agent,
        faults,
        requests: AtomicU64::new(0),
        attempts: std::sync::Mutex::new(HashMap::new()),
    });
    Ok(Router::new()
        .route("/v1/chat/completions", post(complete))
        .route("/v1/models", get(models))
        .with_state(sim))
}

async fn models(State(sim): State<Arc<Sim>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{"id": model_name(sim.agent), "object": "model"}]}))
}

fn model_name(agent: Agent) -> String {
    match agent {
        Agent::Oracle => "envsynth-sim-oracle".into(),
        Agent::Noisy(p) => format!("envsynth-sim-noisy-{p}"),
        Agent::Random => "envsynth-sim-random".into(),
    }
}

/// A response body that fails after its first bytes: the client sees the connection cut.
struct Cut(bool);

impl http_body::Body for Cut {
    type Data = axum::body::Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.0 {
            return Poll::Ready(Some(Err(std::io::Error::other(
                "simulated dropped connection",
            ))));
        }
        self.0 = true;
        Poll::Ready(Some(Ok(http_body::Frame::data(
            axum::body::Bytes::from_static(b"{\"choices\": ["),
        ))))
    }
}

fn fault(kind: FaultKind) -> Response {
    match kind {
        FaultKind::ServerError => ApiError::internal("simulated server error").into_response(),
        FaultKind::Malformed => (
            [(header::CONTENT_TYPE, "application/json")],
            "{\"choices\": [{\"message\": ",
        )
            .into_response(),
        FaultKind::Drop => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, "4096")
            .body(Body::new(Cut(false)))
            .unwrap_or_else(|_| ApiError::internal("building a fault").into_response()),
    }
}

fn rng(seed: u64, key: &str, turn: usize, what: u64) -> rand_chacha::ChaCha8Rng {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mixed = seed
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(h)
        .wrapping_add((turn as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9))
        .wrapping_add(what);
    rand_chacha::ChaCha8Rng::seed_from_u64(mixed)
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

async fn complete(State(sim): State<Arc<Sim>>, body: axum::body::Bytes) -> Response {
    let n = sim.requests.fetch_add(1, Ordering::Relaxed);
    if sim.faults.every > 0 {
        let attempt = {
            let mut seen = sim.attempts.lock().unwrap_or_else(|p| p.into_inner());
            let a = seen.entry(fnv(&body)).or_insert(0);
            *a += 1;
            *a - 1
        };
        if attempt % sim.faults.every == 0 {
            return fault(sim.faults.kind);
        }
    }
    let (req, wants): (ChatRequest, WantsTokens) =
        match serde_json::from_slice(&body).and_then(|r| Ok((r, serde_json::from_slice(&body)?))) {
            Ok(r) => r,
            Err(e) => return ApiError::invalid(format!("request body: {e}")).into_response(),
        };
    let Some(key) = key_of(
        req.messages
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_deref())),
    ) else {
        return ApiError::invalid("messages: no user message").into_response();
    };
    let Some(candidates) = sim.scripts.get(&key) else {
        return ApiError::invalid(
            "messages: the first user message is not a task this simulated policy knows",
        )
        .into_response();
    };
    let script = pick(candidates, &req.messages);
    let turn = req
        .messages
        .iter()
        .filter(|m| m.role == "assistant")
        .count();
    let seed = req.seed.unwrap_or(0);
    let message = decide(sim.agent, script, &req, &key, seed, turn);
    let finish = if message.tool_calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    };
    let prompt_chars: usize = req
        .messages
        .iter()
        .map(|m| m.content.as_deref().map_or(0, str::len))
        .sum();
    let completion_chars = message.content.as_deref().map_or(0, str::len)
        + message
            .tool_calls
            .iter()
            .map(|c| c.function.arguments.len() + c.function.name.len())
            .sum::<usize>();
    let mut choice = json!({"index": 0, "message": message, "finish_reason": finish});
    let mut reply = json!({
        "id": format!("simcmpl-{n}"),
        "object": "chat.completion",
        "model": model_name(sim.agent),
        "usage": {"prompt_tokens": prompt_chars / 4, "completion_tokens": completion_chars / 4},
    });
    if wants.return_token_ids || wants.logprobs {
        let mut prompt = Vec::new();
        for m in &req.messages {
            render(m, &mut prompt);
        }
        prompt.push(OPEN_ASSISTANT);
        let mut completion = Vec::new();
        body_of(&message, &mut completion);
        completion.push(END_OF_MESSAGE);
        reply["usage"] =
            json!({"prompt_tokens": prompt.len(), "completion_tokens": completion.len()});
        if wants.logprobs {
            let mut r = rng(seed, &key, turn, 3);
            let content: Vec<Value> = completion
                .iter()
                .map(|id| json!({"token": format!("token_id:{id}"), "logprob": -3.0 * r.random::<f64>()}))
                .collect();
            choice["logprobs"] = json!({ "content": content });
        }
        if wants.return_token_ids {
            choice["token_ids"] = json!(completion);
            reply["prompt_token_ids"] = json!(prompt);
        }
    }
    reply["choices"] = json!([choice]);
    Json(reply).into_response()
}

/// The request fields that ask for tokens.
#[derive(serde::Deserialize)]
struct WantsTokens {
    #[serde(default)]
    return_token_ids: bool,
    #[serde(default)]
    logprobs: bool,
}

/// The simulated tokenizer's special tokens, after the 256 byte tokens: one opening each
/// role's message, one closing every message.
const OPEN_SYSTEM: u32 = 256;
const OPEN_USER: u32 = 257;
const OPEN_ASSISTANT: u32 = 258;
const OPEN_TOOL: u32 = 259;
const END_OF_MESSAGE: u32 = 260;

/// A message as the simulated chat template renders it: its role's opener, its body, the end.
fn render(m: &ChatMessage, out: &mut Vec<u32>) {
    out.push(match m.role.as_str() {
        "system" => OPEN_SYSTEM,
        "assistant" => OPEN_ASSISTANT,
        "tool" => OPEN_TOOL,
        _ => OPEN_USER,
    });
    body_of(m, out);
    out.push(END_OF_MESSAGE);
}

/// A message's content, then each tool call as `\n<name> <arguments>`, byte by byte.
fn body_of(m: &ChatMessage, out: &mut Vec<u32>) {
    let bytes = |s: &str, out: &mut Vec<u32>| out.extend(s.bytes().map(u32::from));
    bytes(m.content.as_deref().unwrap_or(""), out);
    for c in &m.tool_calls {
        bytes(
            &format!("\n{} {}", c.function.name, c.function.arguments),
            out,
        );
    }
}

fn call(turn: usize, name: &str, arguments: String) -> ChatMessage {
    ChatMessage {
        role: "assistant".into(),
        content: None,
        tool_calls: vec![WireToolCall {
            id: format!("call_{turn}"),
            kind: "function".into(),
            function: WireFunction {
                name: name.into(),
                arguments,
            },
        }],
        ..ChatMessage::default()
    }
}

fn answer(text: String) -> ChatMessage {
    ChatMessage::text("assistant", text)
}

/// The script of the task a conversation is about. Tasks that share their first user message
/// (prompt twins: the same request over different worlds) are told apart by the tool results
/// the conversation has seen so far: the first task whose tools give every one of them. Until
/// a result tells them apart, the first task's script is played; its calls are valid for the
/// twin too, and the answer comes once the world is known.
fn pick<'a>(candidates: &'a [Script], messages: &[ChatMessage]) -> &'a Script {
    if candidates.len() > 1 {
        let calls: HashMap<&str, &WireFunction> = messages
            .iter()
            .flat_map(|m| &m.tool_calls)
            .map(|c| (c.id.as_str(), &c.function))
            .collect();
        let seen: Vec<(&WireFunction, &str)> = messages
            .iter()
            .filter(|m| m.role == "tool")
            .filter_map(|m| {
                let f = calls.get(m.tool_call_id.as_deref()?)?;
                Some((*f, m.content.as_deref().unwrap_or_default()))
            })
            .collect();
        let agrees = |s: &&Script| {
            seen.iter().all(|(f, text)| {
                let result = s.prepared.call_tool_text(&f.name, &f.arguments);
                serde_json::to_string(&result).is_ok_and(|t| t == *text)
            })
        };
        if let Some(s) = candidates.iter().find(agrees) {
            return s;
        }
    }
    &candidates[0]
}

/// The planted solution with one string value replaced by another of its own string values,
/// such that the task's verifier calls it a wrong answer (well-formed, breaking checks); `None`
/// when 16 draws find no such swap.
fn wrong_solution(script: &Script, r: &mut rand_chacha::ChaCha8Rng) -> Option<String> {
    fn strings(v: &Value, at: String, out: &mut Vec<(String, String)>) {
        match v {
            Value::String(s) => out.push((at, s.clone())),
            Value::Array(items) => {
                for (i, x) in items.iter().enumerate() {
                    strings(x, format!("{at}/{i}"), out);
                }
            }
            Value::Object(fields) => {
                for (k, x) in fields {
                    let k = k.replace('~', "~0").replace('/', "~1");
                    strings(x, format!("{at}/{k}"), out);
                }
            }
            _ => {}
        }
    }
    let planted: Value = serde_json::from_str(&script.planted).ok()?;
    let mut leaves = Vec::new();
    strings(&planted, String::new(), &mut leaves);
    if leaves.len() < 2 {
        return None;
    }
    for _ in 0..16 {
        let (at, old) = &leaves[r.random_range(0..leaves.len())];
        let (_, new) = &leaves[r.random_range(0..leaves.len())];
        if new == old {
            continue;
        }
        let mut wrong = planted.clone();
        *wrong.pointer_mut(at)? = Value::String(new.clone());
        let verdict = script.prepared.verify(&wrong);
        if verdict.failure_kind == envsynth_core::FailureKind::WrongAnswer {
            return Some(wrong.to_string());
        }
    }
    None
}

fn decide(
    agent: Agent,
    script: &Script,
    req: &ChatRequest,
    key: &str,
    seed: u64,
    turn: usize,
) -> ChatMessage {
    // Submit through the task's submit tool when it has one, else answer in text.
    let submit = |solution: &str| match req
        .tools
        .iter()
        .find(|t| t.function.name.starts_with("submit"))
    {
        Some(t) => {
            let field = t.function.parameters["required"][0]
                .as_str()
                .unwrap_or("answer")
                .to_string();
            call(
                turn,
                &t.function.name,
                format!("{{\"{field}\": {solution}}}"),
            )
        }
        None => answer(format!("Here is the plan.\n```json\n{solution}\n```")),
    };
    let planted = || submit(&script.planted);
    match agent {
        Agent::Oracle => match script.calls.get(turn) {
            Some(c) => call(turn, &c.name, c.arguments.to_string()),
            None => planted(),
        },
        Agent::Noisy(p) => {
            let errs = |t: usize| rng(seed, key, t, 1).random::<f64>() < p;
            let lost = (0..=turn).any(errs);
            match script.calls.get(turn) {
                Some(c) if errs(turn) => call(turn, &c.name, "{\"oops\": ".into()),
                Some(c) => call(turn, &c.name, c.arguments.to_string()),
                None if lost => {
                    let mut r = rng(seed, key, turn, 3);
                    match r
                        .random_bool(0.5)
                        .then(|| wrong_solution(script, &mut r))
                        .flatten()
                    {
                        Some(wrong) => submit(&wrong),
                        None => {
                            answer("I could not find a plan that meets every constraint.".into())
                        }
                    }
                }
                None => planted(),
            }
        }
        Agent::Random => {
            let mut r = rng(seed, key, turn, 2);
            if turn < 6 && !req.tools.is_empty() && r.random_bool(0.6) {
                let tool = &req.tools[r.random_range(0..req.tools.len())];
                call(turn, &tool.function.name, "{}".into())
            } else {
                let nonsense = ["{}", "[]", "I am not sure.", "{\"plan\": []}"];
                answer(nonsense[r.random_range(0..nonsense.len())].into())
            }
        }
    }
}
