//! Agent rollouts: a policy (any OpenAI-compatible chat-completions server with tool calling)
//! plays a task turn by turn, its tool calls run against the task's environment, its final
//! answer is scored by the verifier, and k rollouts per task give pass@k.
//!
//! Failures are sorted by whose they are. The agent's (a wrong or missing answer, running out
//! of turns or tokens) score zero. The infrastructure's (the policy server down after retries,
//! a sandbox limit inside a tool, the wall-clock limit) are recorded as masked verdicts and
//! left out of pass@k, never as a silent zero. The only crate that names reqwest.

pub mod score;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Semaphore;

use envsynth_core::chat::{
    ChatMessage, ChatRequest, ChatResponse, TokenPrefix, TurnTokens, Usage, WireTool,
    submitted_answer,
};
use envsynth_core::model::ToolErrorCode;
use envsynth_core::{FailureKind, PreparedTask, Task, ToolResult, Verdict, extract_submission};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The server could not be reached or kept failing (connection errors, 429 and 5xx
    /// answers, malformed replies) through every retry.
    #[error("policy unavailable after {attempts} attempt(s): {last}")]
    Unavailable { attempts: u32, last: String },
    /// The server refused the request (a 4xx other than 429): retrying would not help.
    #[error("policy refused the request: {0}")]
    Refused(String),
}

/// A policy: one chat-completions step.
pub trait Policy: Send + Sync {
    /// Who is playing, as recorded with every rollout.
    fn name(&self) -> &str;
    fn complete(
        &self,
        request: &ChatRequest,
    ) -> impl Future<Output = Result<Reply, PolicyError>> + Send;
}

/// A policy's answer to one request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reply {
    pub message: ChatMessage,
    pub usage: Usage,
    /// The turn token by token, from a policy that knows its tokens (the local model, or a
    /// server asked for them with [`ClientOptions::token_ids`]).
    pub tokens: Option<TurnTokens>,
}

impl Reply {
    /// A reply known only as text (an OpenAI-compatible server's).
    pub fn text(message: ChatMessage, usage: Usage) -> Reply {
        Reply {
            message,
            usage,
            tokens: None,
        }
    }
}

/// How a client talks to a server.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Requests in flight at once, across all rollouts.
    pub concurrency: usize,
    /// Per request, from sending to the last byte.
    pub timeout: Duration,
    /// Retries after the first attempt, on connection errors, 429, 5xx and malformed replies.
    pub retries: u32,
    /// The first retry's delay; each further retry doubles it (at most 10 s, or the server's
    /// `Retry-After`).
    pub backoff: Duration,
    /// Sent as `Authorization: Bearer` (hosted APIs).
    pub api_key: Option<String>,
    /// Ask for the tokens (`return_token_ids` and `logprobs`, as vLLM answers them) and
    /// refuse a reply without them; off for servers that reject unknown fields (OpenAI's).
    pub token_ids: bool,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            concurrency: 64,
            timeout: Duration::from_secs(600),
            retries: 4,
            backoff: Duration::from_millis(500),
            api_key: None,
            token_ids: false,
        }
    }
}

/// Any OpenAI-compatible server: vLLM, SGLang, hosted APIs, the simulated policy.
pub struct OpenAiPolicy {
    http: reqwest::Client,
    endpoint: String,
    model: String,
    name: String,
    options: ClientOptions,
    permits: Arc<Semaphore>,
}

impl OpenAiPolicy {
    /// `base_url` is the API root, e.g. `http://127.0.0.1:8000/v1`.
    pub fn new(
        base_url: &str,
        model: &str,
        options: ClientOptions,
    ) -> Result<OpenAiPolicy, String> {
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(format!(
                "policy URL `{base_url}` must start with http:// or https:// (e.g. http://127.0.0.1:8000/v1)"
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(options.timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(OpenAiPolicy {
            http,
            endpoint: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            model: model.to_string(),
            name: model.to_string(),
            permits: Arc::new(Semaphore::new(options.concurrency.max(1))),
            options,
        })
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// Record rollouts under `name` rather than the model name.
    pub fn named(mut self, name: &str) -> OpenAiPolicy {
        self.name = name.to_string();
        self
    }

    /// The name rollouts are recorded under.
    pub fn name_str(&self) -> &str {
        &self.name
    }

    /// One attempt: `Ok` on a usable reply, `Err((retryable, why, retry_after))` otherwise.
    async fn attempt(
        &self,
        request: &ChatRequest,
    ) -> Result<Reply, (bool, String, Option<Duration>)> {
        let r = self.http.post(&self.endpoint);
        let mut r = if self.options.token_ids {
            r.json(&AskingForTokens {
                request,
                logprobs: true,
                return_token_ids: true,
            })
        } else {
            r.json(request)
        };
        if let Some(key) = &self.options.api_key {
            r = r.bearer_auth(key);
        }
        let resp = r.send().await.map_err(|e| (true, describe(&e), None))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = resp.text().await.map_err(|e| (true, describe(&e), None))?;
        if status.as_u16() == 429 || status.is_server_error() {
            return Err((true, format!("{status}: {}", excerpt(&body)), retry_after));
        }
        if !status.is_success() {
            return Err((false, format!("{status}: {}", excerpt(&body)), None));
        }
        let parsed: ChatResponse = serde_json::from_str(&body).map_err(|e| {
            (
                true,
                format!("malformed reply ({e}): {}", excerpt(&body)),
                None,
            )
        })?;
        let usage = parsed.usage.unwrap_or_default();
        let prompt_ids = parsed.prompt_token_ids;
        let Some(mut choice) = parsed.choices.into_iter().next() else {
            return Err((true, "reply has no choices".into(), None));
        };
        let tokens = if self.options.token_ids {
            // A server that ignores the fields answers without them: retrying would not help.
            Some(turn_tokens(prompt_ids, &mut choice).map_err(|why| (false, why, None))?)
        } else {
            None
        };
        Ok(Reply {
            message: choice.message,
            usage,
            tokens,
        })
    }
}

/// A request with the fields that ask vLLM for the turn's tokens.
#[derive(Serialize)]
struct AskingForTokens<'a> {
    #[serde(flatten)]
    request: &'a ChatRequest,
    logprobs: bool,
    return_token_ids: bool,
}

/// The turn's tokens from a reply to [`AskingForTokens`] (taken out of `choice`), or which
/// field is missing or wrong.
fn turn_tokens(
    prompt_ids: Option<Vec<u32>>,
    choice: &mut envsynth_core::chat::ChatChoice,
) -> Result<TurnTokens, String> {
    const HINT: &str = "the server ignored `return_token_ids` (vLLM answers it from 0.10.2 on)";
    let prompt_ids =
        prompt_ids.ok_or_else(|| format!("reply has no `prompt_token_ids`: {HINT}"))?;
    let completion_ids = choice
        .token_ids
        .take()
        .ok_or_else(|| format!("reply has no `choices[0].token_ids`: {HINT}"))?;
    let logprobs = choice
        .logprobs
        .as_ref()
        .and_then(|l| l.content.as_ref())
        .ok_or_else(|| {
            "reply has no `choices[0].logprobs.content`: the server ignored `logprobs`".to_string()
        })?;
    if logprobs.len() != completion_ids.len() {
        return Err(format!(
            "reply has {} entries in `choices[0].logprobs.content` for {} `choices[0].token_ids`",
            logprobs.len(),
            completion_ids.len()
        ));
    }
    if let Some(bad) = logprobs
        .iter()
        .position(|l| l.logprob.is_nan() || l.logprob > 0.0)
    {
        return Err(format!(
            "`choices[0].logprobs.content[{bad}].logprob` is {}, not a log-probability",
            logprobs[bad].logprob
        ));
    }
    Ok(TurnTokens {
        prompt_ids,
        completion_ids,
        completion_logprobs: logprobs.iter().map(|l| l.logprob as f32).collect(),
        continuation: None,
    })
}

fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

fn excerpt(body: &str) -> String {
    let cut: String = body.chars().take(300).collect();
    if cut.len() < body.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

impl Policy for OpenAiPolicy {
    fn name(&self) -> &str {
        &self.name
    }

    async fn complete(&self, request: &ChatRequest) -> Result<Reply, PolicyError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| PolicyError::Refused(e.to_string()))?;
        let mut last = String::new();
        for attempt in 0..=self.options.retries {
            match self.attempt(request).await {
                Ok(reply) => return Ok(reply),
                Err((false, why, _)) => return Err(PolicyError::Refused(why)),
                Err((true, why, retry_after)) => {
                    last = why;
                    if attempt < self.options.retries {
                        let doubled = self.options.backoff * 2u32.saturating_pow(attempt);
                        let wait = retry_after.unwrap_or(doubled).min(Duration::from_secs(10));
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        Err(PolicyError::Unavailable {
            attempts: self.options.retries + 1,
            last,
        })
    }
}

/// Limits on one rollout.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Model turns (each tool-calling reply and the answer count one).
    pub max_turns: u32,
    /// Prompt plus completion tokens over the whole rollout, as the server reports them.
    pub max_tokens: u64,
    /// Wall-clock time for the whole rollout.
    pub wall: Duration,
    /// Sampling temperature sent with every request.
    pub temperature: Option<f64>,
    /// Completion tokens per request.
    pub max_completion_tokens: Option<u32>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_turns: 24,
            max_tokens: 1_000_000,
            wall: Duration::from_secs(1800),
            temperature: Some(1.0),
            max_completion_tokens: None,
        }
    }
}

/// Why a rollout ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum Stop {
    /// The agent answered; the verdict scores the answer.
    Answered,
    /// The agent used every turn without answering (its failure: scored as no answer).
    TurnLimit,
    /// The agent used its token budget (its failure: scored as no answer).
    TokenLimit,
    /// The wall-clock limit (serving speed, not the agent: masked).
    TimeLimit,
    /// The policy server failed after retries (masked).
    PolicyError(String),
    /// A tool failed inside the environment, e.g. a sandbox limit (masked).
    ToolError(String),
}

/// One scored rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// `task_id/policy/sample_seed`, stable: the idempotency key of the rollout.
    pub rollout_id: String,
    pub task_id: String,
    /// The task's environment, `id@version` (empty in records written before it was kept).
    #[serde(default)]
    pub environment: String,
    pub level: String,
    pub policy: String,
    pub sample_seed: u64,
    /// The whole conversation: prompt, replies with tool calls, tool results.
    pub messages: Vec<ChatMessage>,
    pub turns: u32,
    pub tool_steps: u32,
    pub usage: Usage,
    pub stop: Stop,
    pub verdict: Verdict,
    /// The conversation as token sequences, for training, when the policy reported every
    /// turn's tokens: one sequence while each turn's prompt continues the turn before it (the
    /// local model's always do), and a new one from each turn whose prompt does not (a server
    /// whose chat template renders an earlier reply differently from how the model wrote it).
    /// Each sequence is what the model saw and wrote; together they hold every generated token
    /// once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<TokenTrace>,
}

/// A run of a rollout's turns as tokens: each turn's prompt extended the previous turn's prompt
/// and completion, so one sequence holds them as the model saw and wrote them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenTrace {
    pub ids: Vec<u32>,
    /// 1 where the policy generated the token (the loss mask), 0 for the prompt, tool results
    /// and the chat template's text between turns.
    pub mask: Vec<u8>,
    /// Each generated token's log-probability as the policy reported it (the local model's:
    /// under the distribution it was drawn from, temperature, top-k and top-p applied); 0
    /// where `mask` is 0.
    pub logprobs: Vec<f32>,
}

impl TokenTrace {
    /// Appends a turn whose prompt continues the trace; `false` (and nothing appended) when
    /// it does not.
    fn extend(&mut self, turn: &TurnTokens) -> bool {
        if !turn.prompt_ids.starts_with(&self.ids)
            || turn.completion_logprobs.len() != turn.completion_ids.len()
        {
            return false;
        }
        let new = &turn.prompt_ids[self.ids.len()..];
        self.ids.extend_from_slice(new);
        self.mask.extend(std::iter::repeat_n(0, new.len()));
        self.logprobs.extend(std::iter::repeat_n(0.0, new.len()));
        self.ids.extend_from_slice(&turn.completion_ids);
        self.mask
            .extend(std::iter::repeat_n(1, turn.completion_ids.len()));
        self.logprobs.extend_from_slice(&turn.completion_logprobs);
        true
    }
}

/// A stable id for (task, policy, seed).
pub fn rollout_id(task_id: &str, policy: &str, sample_seed: u64) -> String {
    let digest = envsynth_core::hash::sha256_parts([
        ("task", task_id.as_bytes()),
        ("policy", policy.as_bytes()),
        ("seed", &sample_seed.to_le_bytes()[..]),
    ]);
    format!("r-{}", &digest.trim_start_matches("sha256:")[..24])
}

fn masked(task_id: &str, why: String) -> Verdict {
    Verdict::rejected(task_id, FailureKind::PolicyError, why, [])
}

/// Play `task` once with `policy`: prompt, then model turns; each turn's tool calls run against
/// `prepared` and their results go back. The rollout ends with the answer: the first call of a
/// tool named `submit…` that the tool accepts, or else the first reply without tool calls (its
/// text is read as in [`extract_submission`]).
pub async fn run<P: Policy>(
    policy: &P,
    task: &Task,
    prepared: &dyn PreparedTask,
    sample_seed: u64,
    limits: &Limits,
) -> Rollout {
    let started = Instant::now();
    let mut messages: Vec<ChatMessage> = task
        .prompt
        .iter()
        .map(|m| ChatMessage::text(&m.role, m.content.clone()))
        .collect();
    let tools: Vec<WireTool> = task.tools.iter().map(WireTool::from).collect();
    let (mut turns, mut tool_steps, mut usage) = (0u32, 0u32, Usage::default());
    // The conversation's tokens while every turn reports and continues them; `covered` counts
    // the messages they hold (through the last assistant reply).
    let mut traces: Vec<TokenTrace> = Vec::new();
    let mut reported = true;
    let mut covered = 0;
    let mut continuation = None;
    let stop = loop {
        if turns >= limits.max_turns {
            break Stop::TurnLimit;
        }
        if started.elapsed() > limits.wall {
            break Stop::TimeLimit;
        }
        envsynth_core::chat::drop_stale_reasoning(&mut messages);
        let request = ChatRequest {
            model: policy.name().to_string(),
            messages: messages.clone(),
            tools: tools.clone(),
            seed: Some(sample_seed),
            temperature: limits.temperature,
            max_tokens: limits.max_completion_tokens,
            prefix: traces.last().filter(|_| reported).map(|t| {
                Arc::new(TokenPrefix {
                    ids: t.ids.clone(),
                    messages: covered,
                    continuation: continuation.clone(),
                })
            }),
        };
        let remaining = limits.wall.saturating_sub(started.elapsed());
        let reply = match tokio::time::timeout(remaining, policy.complete(&request)).await {
            Err(_) => break Stop::TimeLimit,
            Ok(Err(e)) => break Stop::PolicyError(e.to_string()),
            Ok(Ok(r)) => r,
        };
        let Reply {
            mut message,
            usage: used,
            tokens,
        } = reply;
        message.role = "assistant".into();
        // The turn continues the last sequence, or else starts one.
        reported = reported
            && match &tokens {
                None => false,
                Some(turn) if traces.last_mut().is_some_and(|t| t.extend(turn)) => true,
                Some(turn) => {
                    let mut fresh = TokenTrace::default();
                    let whole = fresh.extend(turn);
                    traces.push(fresh);
                    whole
                }
            };
        // The policy's hold on this turn goes with the next request, and is released with the
        // rollout (or once a turn reports no tokens).
        continuation = tokens.and_then(|t| t.continuation).filter(|_| reported);
        usage.prompt_tokens += used.prompt_tokens;
        usage.completion_tokens += used.completion_tokens;
        turns += 1;
        let calls = message.tool_calls.clone();
        messages.push(message);
        covered = messages.len();
        if usage.prompt_tokens + usage.completion_tokens > limits.max_tokens {
            break Stop::TokenLimit;
        }
        if calls.is_empty() {
            break Stop::Answered;
        }
        let mut tool_failure = None;
        // Whether a submit tool accepted a submission (the answer; see `answer_of`).
        let mut submitted = false;
        for call in calls {
            tool_steps += 1;
            let result = prepared.call_tool_text(&call.function.name, &call.function.arguments);
            if let ToolResult::Error {
                code: ToolErrorCode::EnvironmentError,
                message,
            } = &result
            {
                tool_failure = Some(message.clone());
            }
            submitted |=
                call.function.name.starts_with("submit") && matches!(result, ToolResult::Ok { .. });
            let content = serde_json::to_string(&result).unwrap_or_default();
            messages.push(ChatMessage {
                role: "tool".into(),
                content: Some(content),
                tool_call_id: Some(call.id),
                ..ChatMessage::default()
            });
        }
        if let Some(m) = tool_failure {
            break Stop::ToolError(m);
        }
        if submitted {
            break Stop::Answered;
        }
    };
    let verdict = verdict_of(&task.id, &stop, &messages, prepared);
    Rollout {
        rollout_id: rollout_id(&task.id, policy.name(), sample_seed),
        task_id: task.id.clone(),
        environment: task.environment.to_string(),
        level: task.difficulty.level.clone(),
        policy: policy.name().to_string(),
        sample_seed,
        messages,
        turns,
        tool_steps,
        usage,
        stop,
        verdict,
        tokens: if reported { traces } else { Vec::new() },
    }
}

/// The verdict of a finished rollout from its record: why it stopped and its messages. An
/// answer (the first submission a `submit…` tool accepted, else the last reply's text) is
/// verified against `prepared`; running out of turns or tokens is verified as no answer; the
/// infrastructure's failures are masked. It needs no policy, so stored rollouts can be scored
/// again, e.g. by a verifier with a bug fixed.
pub fn verdict_of(
    task_id: &str,
    stop: &Stop,
    messages: &[ChatMessage],
    prepared: &dyn PreparedTask,
) -> Verdict {
    match stop {
        Stop::Answered => prepared.verify(&answer_of(messages)),
        Stop::TurnLimit | Stop::TokenLimit => prepared.verify(&Value::Null),
        Stop::TimeLimit => masked(task_id, "the rollout's wall-clock limit was reached".into()),
        Stop::PolicyError(e) => masked(task_id, e.clone()),
        Stop::ToolError(e) => Verdict::rejected(
            task_id,
            FailureKind::EnvironmentError,
            format!("a tool failed in the environment: {e}"),
            [],
        ),
    }
}

/// The answer of a rollout that stopped answering: the first submission a `submit…` tool
/// accepted ([`submitted_answer`]), else the text of the last reply, read as in
/// [`extract_submission`].
fn answer_of(messages: &[ChatMessage]) -> Value {
    if let Some(answer) = submitted_answer(messages) {
        return answer;
    }
    let text = messages
        .last()
        .and_then(|m| m.content.clone())
        .unwrap_or_default();
    extract_submission(&text).unwrap_or(Value::String(text))
}

/// The sample seeds of a task's k rollouts: distinct, derived from the run's seed and the
/// task, so adding tasks or raising k never changes existing rollouts.
pub fn sample_seeds(run_seed: u64, task_id: &str, k: u32) -> Vec<u64> {
    (0..k)
        .map(|i| {
            let d = envsynth_core::hash::sha256_parts([
                ("run", &run_seed.to_le_bytes()[..]),
                ("task", task_id.as_bytes()),
                ("sample", &u64::from(i).to_le_bytes()[..]),
            ]);
            let hex = d.trim_start_matches("sha256:");
            u64::from_str_radix(&hex[..15], 16).unwrap_or(u64::from(i))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server asked for tokens must send all of them, or the reply is refused by name.
    #[test]
    fn a_reply_without_its_tokens_is_refused_naming_the_field() {
        let reply = |extra: &str,
                     choice: &str|
         -> (Option<Vec<u32>>, envsynth_core::chat::ChatChoice) {
            let text = format!(
                r#"{{"choices":[{{"message":{{"role":"assistant","content":"hi"}}{choice}}}]{extra}}}"#
            );
            let r: ChatResponse = serde_json::from_str(&text).unwrap();
            (r.prompt_token_ids, r.choices[0].clone())
        };
        let lp = |v: &str| format!(r#","logprobs":{{"content":[{v}]}}"#);
        let full = (
            r#","prompt_token_ids":[1,2,3]"#,
            format!(
                r#","token_ids":[7,8]{}"#,
                lp(r#"{"token":"a","logprob":-0.5},{"token":"b","logprob":0}"#)
            ),
        );
        let (p, mut c) = reply(full.0, &full.1);
        assert_eq!(
            turn_tokens(p, &mut c),
            Ok(TurnTokens {
                prompt_ids: vec![1, 2, 3],
                completion_ids: vec![7, 8],
                completion_logprobs: vec![-0.5, 0.0],
                continuation: None,
            })
        );
        let cases = [
            ("", full.1.clone(), "`prompt_token_ids`"),
            (
                full.0,
                lp(r#"{"logprob":-1},{"logprob":-1}"#),
                "`choices[0].token_ids`",
            ),
            (
                full.0,
                r#","token_ids":[7,8]"#.into(),
                "`choices[0].logprobs.content`",
            ),
            (
                full.0,
                format!(r#","token_ids":[7,8]{}"#, lp(r#"{"logprob":-1}"#)),
                "1 entries in `choices[0].logprobs.content` for 2",
            ),
            (
                full.0,
                format!(r#","token_ids":[7]{}"#, lp(r#"{"logprob":0.25}"#)),
                "`choices[0].logprobs.content[0].logprob` is 0.25",
            ),
        ];
        for (extra, choice, names) in cases {
            let (p, mut c) = reply(extra, &choice);
            let err = turn_tokens(p, &mut c).unwrap_err();
            assert!(err.contains(names), "{err} should name {names}");
        }
    }
}
