//! The OpenAI chat-completions wire format with tool calling, as far as agent rollouts use it:
//! what the rollout engine sends to any OpenAI-compatible server (vLLM, SGLang, hosted APIs,
//! the simulated policy) and what comes back.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{ToolResult, ToolSpec};

/// One message of a conversation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    #[serde(default)]
    pub content: Option<String>,
    /// The model's reasoning (DeepSeek's `reasoning_content`); kept within a user turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<WireToolCall>,
    /// For `tool` messages: the call this answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn text(role: &str, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: Some(content.into()),
            ..ChatMessage::default()
        }
    }
}

/// The answer a transcript delivered through a tool: the first call of a `submit…` tool that the
/// tool accepted (each assistant message's calls are answered, in order, by the tool messages
/// after it; accepted means the tool message is a `ToolResult` with status `ok`). The answer is
/// the value of the call's only argument (travel's `submit_plan({"plan": ...})`), else the whole
/// arguments object. `None` when no submission was accepted: the answer is then the text of the
/// last reply. `envsynth rollout`, `rescore` and the HTTP API's `messages` all read a transcript
/// by this rule.
pub fn submitted_answer(messages: &[ChatMessage]) -> Option<Value> {
    for (i, m) in messages.iter().enumerate() {
        for (j, call) in m.tool_calls.iter().enumerate() {
            let accepted = || {
                messages
                    .get(i + 1 + j)
                    .and_then(|r| serde_json::from_str(r.content.as_deref()?).ok())
                    .is_some_and(|r: ToolResult| matches!(r, ToolResult::Ok { .. }))
            };
            if call.function.name.starts_with("submit")
                && accepted()
                && let Ok(arguments) = serde_json::from_str::<Value>(&call.function.arguments)
            {
                return Some(match arguments {
                    Value::Object(mut m) if m.len() == 1 => {
                        let key = m.keys().next().cloned().unwrap_or_default();
                        m.remove(&key).unwrap_or(Value::Null)
                    }
                    other => other,
                });
            }
        }
    }
    None
}

/// A tool call as the wire carries it: arguments are a JSON document in a string, which the
/// model may have got wrong.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: WireFunction,
}

fn function_type() -> String {
    "function".into()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireFunction {
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

/// A tool offered to the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireTool {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: WireToolFunction,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WireToolFunction {
    pub name: String,
    pub description: String,
    pub parameters: serde_json::Value,
}

impl From<&ToolSpec> for WireTool {
    fn from(t: &ToolSpec) -> WireTool {
        WireTool {
            kind: "function".into(),
            function: WireToolFunction {
                name: t.name.clone(),
                description: t.description.clone(),
                parameters: t.parameters.clone(),
            },
        }
    }
}

/// `POST /v1/chat/completions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<WireTool>,
    /// The sample's seed, so a seeded server samples reproducibly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// The conversation's tokens so far, for a policy that reports its tokens (the local
    /// model): it continues them rather than re-tokenizing the messages they cover. Never sent.
    #[serde(skip)]
    pub prefix: Option<std::sync::Arc<TokenPrefix>>,
}

/// The token ids of a conversation's first `messages` messages, ending with an assistant
/// reply, exactly as the policy saw and generated them: the last turn's prompt, then its
/// completion.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenPrefix {
    pub ids: Vec<u32>,
    pub messages: usize,
    /// What the policy keeps of the turn that ended the prefix, if anything (its cache).
    pub continuation: Option<Continuation>,
}

/// A policy's hold on a finished turn, for the next turn to continue from (the local model's
/// cache of the conversation); released when the last clone is dropped. Opaque to everyone
/// but the policy that made it.
#[derive(Clone)]
pub struct Continuation(pub std::sync::Arc<dyn std::any::Any + Send + Sync>);

impl std::fmt::Debug for Continuation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Continuation")
    }
}

impl PartialEq for Continuation {
    fn eq(&self, other: &Continuation) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

/// One model turn token by token, from a policy that knows its tokens.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TurnTokens {
    /// What the model was given.
    pub prompt_ids: Vec<u32>,
    /// What it generated (an end-of-turn token included when it stopped on one).
    pub completion_ids: Vec<u32>,
    /// Each generated token's log-probability under the distribution it was drawn from
    /// (temperature, top-k and top-p applied).
    pub completion_logprobs: Vec<f32>,
    /// The policy's hold on this turn, for the next request's [`TokenPrefix`]. Never recorded.
    #[serde(skip)]
    pub continuation: Option<Continuation>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    pub choices: Vec<ChatChoice>,
    #[serde(default)]
    pub usage: Option<Usage>,
    /// The prompt as the server tokenized it (vLLM's answer to `return_token_ids`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_token_ids: Option<Vec<u32>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    pub message: ChatMessage,
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// The generated tokens (vLLM's answer to `return_token_ids`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<u32>>,
    /// Each generated token's log-probability (the answer to `logprobs: true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<ChoiceLogprobs>,
}

/// `choices[i].logprobs`: one entry per generated token.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChoiceLogprobs {
    #[serde(default)]
    pub content: Option<Vec<TokenLogprob>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    #[serde(default)]
    pub token: String,
    pub logprob: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

/// DeepSeek-V3.2's thinking-context rule: reasoning is dropped from assistant turns only once a
/// new user message follows them; within a user turn (tool calls and their results) it stays.
pub fn drop_stale_reasoning(messages: &mut [ChatMessage]) {
    let Some(last_user) = messages.iter().rposition(|m| m.role == "user") else {
        return;
    };
    for m in &mut messages[..last_user] {
        if m.role == "assistant" {
            m.reasoning_content = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasoning_is_dropped_only_before_the_last_user_message() {
        let think = |r: &str| ChatMessage {
            role: "assistant".into(),
            reasoning_content: Some(r.into()),
            ..ChatMessage::default()
        };
        let mut m = vec![
            ChatMessage::text("user", "a"),
            think("r1"),
            ChatMessage::text("tool", "x"),
            think("r2"),
            ChatMessage::text("user", "b"),
            think("r3"),
            ChatMessage::text("tool", "y"),
            think("r4"),
        ];
        drop_stale_reasoning(&mut m);
        let kept: Vec<Option<&str>> = m
            .iter()
            .filter(|m| m.role == "assistant")
            .map(|m| m.reasoning_content.as_deref())
            .collect();
        assert_eq!(kept, [None, None, Some("r3"), Some("r4")]);
        // Tool results alone never drop anything.
        let mut tools_only = vec![
            ChatMessage::text("user", "a"),
            think("r1"),
            ChatMessage::text("tool", "x"),
            think("r2"),
        ];
        drop_stale_reasoning(&mut tools_only);
        assert!(
            tools_only
                .iter()
                .filter(|m| m.role == "assistant")
                .all(|m| m.reasoning_content.is_some())
        );
    }

    #[test]
    fn wire_format_round_trips() {
        let text = r#"{"choices":[{"message":{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"search","arguments":"{\"q\":1}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":5,"completion_tokens":7}}"#;
        let r: ChatResponse = serde_json::from_str(text).unwrap();
        assert_eq!(r.choices[0].message.tool_calls[0].function.name, "search");
        assert_eq!(r.usage.unwrap().completion_tokens, 7);
    }
}
