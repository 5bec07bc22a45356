//! DeepSeek-V3.2's chat format (DSML), for a local model: a conversation rendered to the text
//! the model continues (template `prompts/chat/deepseek_v32.j2`), and the model's continuation
//! parsed back into reasoning, content and tool calls.
//!
//! Reasoning follows V3.2's rule: it is kept in assistant turns after the last user message
//! (between tool calls and their results) and dropped from earlier turns, whose assistant
//! messages then open with `</think>`. Tool parameters are written raw when they are strings
//! (`string="true"`) and as JSON otherwise. A `developer` message is rendered as a user turn.

use serde::Serialize;
use serde_json::Value;

use envsynth_core::chat::{ChatMessage, WireFunction, WireTool, WireToolCall};

use crate::{PromptError, Templates};

pub const BOS: &str = "<｜begin▁of▁sentence｜>";
pub const EOS: &str = "<｜end▁of▁sentence｜>";
const CALLS_OPEN: &str = "<｜DSML｜function_calls>";
const CALLS_CLOSE: &str = "</｜DSML｜function_calls>";
const INVOKE_CLOSE: &str = "</｜DSML｜invoke>";
const PARAM_CLOSE: &str = "</｜DSML｜parameter>";

#[derive(Serialize)]
struct Param {
    name: String,
    string: &'static str,
    value: String,
}

#[derive(Serialize)]
struct Call {
    name: String,
    params: Vec<Param>,
}

#[derive(Serialize, Default)]
struct Turn {
    kind: &'static str,
    content: String,
    /// For user turns and tool results: open `<think>` (else `</think>`).
    open: bool,
    /// For assistant turns: close an open `<think>` with the reasoning.
    close: bool,
    reasoning: String,
    calls: Vec<Call>,
    results: Vec<String>,
}

#[derive(Serialize)]
struct Context<'a> {
    bos: &'a str,
    system: String,
    tools: Vec<String>,
    turns: Vec<Turn>,
}

/// The compiled template.
pub struct DeepSeekV32 {
    templates: Templates,
}

fn params_of(call: &WireToolCall) -> Vec<Param> {
    match serde_json::from_str::<Value>(&call.function.arguments) {
        Ok(Value::Object(m)) => m
            .into_iter()
            .map(|(name, v)| match v {
                Value::String(s) => Param {
                    name,
                    string: "true",
                    value: s,
                },
                other => Param {
                    name,
                    string: "false",
                    value: other.to_string(),
                },
            })
            .collect(),
        // Arguments that are not an object cannot be written as parameters; keep them whole so
        // the transcript shows what the model produced.
        _ => vec![Param {
            name: "arguments".into(),
            string: "true",
            value: call.function.arguments.clone(),
        }],
    }
}

impl DeepSeekV32 {
    pub fn new() -> Result<DeepSeekV32, PromptError> {
        Ok(DeepSeekV32 {
            templates: Templates::verbatim(&[(
                "deepseek_v32",
                include_str!("../../../prompts/chat/deepseek_v32.j2"),
            )])?,
        })
    }

    /// The text the model continues: every message, then the opener of the next assistant
    /// turn (`<think>` in thinking mode).
    pub fn render(
        &self,
        messages: &[ChatMessage],
        tools: &[WireTool],
        thinking: bool,
    ) -> Result<String, PromptError> {
        let last_user = messages
            .iter()
            .rposition(|m| m.role == "user" || m.role == "developer");
        let mut system = Vec::new();
        let mut turns: Vec<Turn> = Vec::new();
        let mut open = false;
        for (i, m) in messages.iter().enumerate() {
            let current = thinking && last_user.is_some_and(|u| i >= u);
            match m.role.as_str() {
                "system" => system.push(m.content.clone().unwrap_or_default()),
                "user" | "developer" => {
                    open = current;
                    turns.push(Turn {
                        kind: "user",
                        content: m.content.clone().unwrap_or_default(),
                        open,
                        ..Turn::default()
                    });
                }
                "tool" => {
                    let result = m.content.clone().unwrap_or_default();
                    match turns.last_mut() {
                        Some(t) if t.kind == "results" => t.results.push(result),
                        _ => {
                            open = current;
                            turns.push(Turn {
                                kind: "results",
                                open,
                                results: vec![result],
                                ..Turn::default()
                            });
                        }
                    }
                }
                _ => {
                    turns.push(Turn {
                        kind: "assistant",
                        content: m.content.clone().unwrap_or_default(),
                        close: open,
                        reasoning: if open {
                            m.reasoning_content.clone().unwrap_or_default()
                        } else {
                            String::new()
                        },
                        calls: m
                            .tool_calls
                            .iter()
                            .map(|c| Call {
                                name: c.function.name.clone(),
                                params: params_of(c),
                            })
                            .collect(),
                        ..Turn::default()
                    });
                    open = false;
                }
            }
        }
        let tools = tools
            .iter()
            .map(|t| serde_json::to_string(&t.function).unwrap_or_default())
            .collect();
        self.templates.render(
            "deepseek_v32",
            &Context {
                bos: BOS,
                system: system.join("\n\n"),
                tools,
                turns,
            },
        )
    }
}

/// A model continuation, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    pub reasoning: Option<String>,
    pub content: String,
    pub tool_calls: Vec<WireToolCall>,
}

/// Parse what the model generated after the opener. `thinking`: the opener was `<think>`, so
/// the text up to `</think>` is reasoning. A parameter that is not valid JSON where JSON was
/// declared makes that call's arguments invalid JSON, which the rollout engine reports to the
/// agent as a tool error.
pub fn parse(output: &str, thinking: bool) -> Parsed {
    let text = output.strip_suffix(EOS).unwrap_or(output);
    let text = text.split(EOS).next().unwrap_or(text);
    let (reasoning, rest) = match (thinking, text.split_once("</think>")) {
        (true, Some((r, rest))) => (Some(r.to_string()), rest),
        (true, None) => (Some(text.to_string()), ""),
        (false, _) => (None, text),
    };
    let (content, calls_text) = match rest.split_once(CALLS_OPEN) {
        Some((c, calls)) => (c.trim_end_matches('\n'), calls),
        None => (rest, ""),
    };
    let calls_text = calls_text.split(CALLS_CLOSE).next().unwrap_or("");
    let mut tool_calls = Vec::new();
    for (i, block) in calls_text
        .split("<｜DSML｜invoke name=\"")
        .skip(1)
        .enumerate()
    {
        let Some((name, body)) = block.split_once("\">") else {
            continue;
        };
        let body = body.split(INVOKE_CLOSE).next().unwrap_or("");
        let mut parts = Vec::new();
        for p in body.split("<｜DSML｜parameter name=\"").skip(1) {
            let Some((pname, rest)) = p.split_once("\" string=\"") else {
                continue;
            };
            let Some((kind, rest)) = rest.split_once("\">") else {
                continue;
            };
            let value = rest.split(PARAM_CLOSE).next().unwrap_or("");
            let json = if kind == "true" {
                Value::String(value.to_string()).to_string()
            } else {
                value.to_string()
            };
            parts.push(format!("{}: {json}", Value::String(pname.to_string())));
        }
        tool_calls.push(WireToolCall {
            id: format!("call_{i}"),
            kind: "function".into(),
            function: WireFunction {
                name: name.to_string(),
                arguments: format!("{{{}}}", parts.join(", ")),
            },
        });
    }
    Parsed {
        reasoning,
        content: content.to_string(),
        tool_calls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envsynth_core::chat::WireToolFunction;
    use serde_json::json;

    fn call(name: &str, args: Value) -> WireToolCall {
        WireToolCall {
            id: "c".into(),
            kind: "function".into(),
            function: WireFunction {
                name: name.into(),
                arguments: args.to_string(),
            },
        }
    }

    fn assistant(reasoning: &str, content: &str, calls: Vec<WireToolCall>) -> ChatMessage {
        ChatMessage {
            role: "assistant".into(),
            content: Some(content.into()),
            reasoning_content: Some(reasoning.into()),
            tool_calls: calls,
            ..ChatMessage::default()
        }
    }

    #[test]
    fn renders_the_dsml_format_and_the_thinking_rule() {
        let t = DeepSeekV32::new().unwrap();
        let tools = vec![WireTool {
            kind: "function".into(),
            function: WireToolFunction {
                name: "search".into(),
                description: "Find".into(),
                parameters: json!({"type": "object"}),
            },
        }];
        let messages = vec![
            ChatMessage::text("system", "Be brief."),
            ChatMessage::text("user", "Q1"),
            assistant("old thought", "A1", vec![]),
            ChatMessage::text("user", "Q2"),
            assistant(
                "t1",
                "",
                vec![call("search", json!({"city": "Hangzhou", "days": 3}))],
            ),
            ChatMessage::text("tool", "[1]"),
            ChatMessage::text("tool", "[2]"),
        ];
        let got = t.render(&messages, &tools, true).unwrap();
        let want = concat!(
            "<｜begin▁of▁sentence｜>Be brief.\n\n## Tools\nYou can call these functions. Their parameters are JSON Schemas.\n<functions>\n",
            r#"{"name":"search","description":"Find","parameters":{"type":"object"}}"#,
            "\n</functions>",
            "<｜User｜>Q1<｜Assistant｜></think>A1<｜end▁of▁sentence｜>",
            "<｜User｜>Q2<｜Assistant｜><think>t1</think>",
            "\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"search\">\n",
            "<｜DSML｜parameter name=\"city\" string=\"true\">Hangzhou</｜DSML｜parameter>\n",
            "<｜DSML｜parameter name=\"days\" string=\"false\">3</｜DSML｜parameter>\n",
            "</｜DSML｜invoke>\n</｜DSML｜function_calls><｜end▁of▁sentence｜>",
            "\n\n<function_results>\n<result>[1]</result>\n<result>[2]</result>\n</function_results>\n\n<think>",
        );
        assert_eq!(got, want);
        assert!(
            !got.contains("old thought"),
            "reasoning before the last user message is dropped"
        );
        // Without thinking every assistant turn opens with </think> and nothing is kept.
        let plain = t.render(&messages, &tools, false).unwrap();
        assert!(!plain.contains("<think>") && !plain.contains("t1"));
        assert!(plain.ends_with("</function_results>\n\n</think>"));
        // A developer message is a user turn.
        let dev = t
            .render(&[ChatMessage::text("developer", "D")], &[], false)
            .unwrap();
        assert_eq!(
            dev,
            "<｜begin▁of▁sentence｜><｜User｜>D<｜Assistant｜></think>"
        );
    }

    #[test]
    fn parses_what_it_renders() {
        let t = DeepSeekV32::new().unwrap();
        let calls = vec![
            call(
                "search",
                json!({"city": "Hangzhou", "filters": {"max": 300, "tags": ["a"]}}),
            ),
            call("submit_plan", json!({"plan": {"days": []}})),
        ];
        let m = vec![
            ChatMessage::text("user", "Q"),
            assistant("why", "Let me look.", calls.clone()),
        ];
        let text = t.render(&m, &[], true).unwrap();
        let output = text.split("<think>").nth(1).unwrap();
        let p = parse(output, true);
        assert_eq!(p.reasoning.as_deref(), Some("why"));
        assert_eq!(p.content, "Let me look.");
        assert_eq!(p.tool_calls.len(), 2);
        for (got, want) in p.tool_calls.iter().zip(&calls) {
            assert_eq!(got.function.name, want.function.name);
            let g: Value = serde_json::from_str(&got.function.arguments).unwrap();
            let w: Value = serde_json::from_str(&want.function.arguments).unwrap();
            assert_eq!(g, w);
        }
        // A declared-JSON parameter that is not JSON leaves the arguments unparsable.
        let bad = parse(
            "<｜DSML｜function_calls>\n<｜DSML｜invoke name=\"f\">\n<｜DSML｜parameter name=\"n\" string=\"false\">{oops</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜function_calls>",
            false,
        );
        assert!(serde_json::from_str::<Value>(&bad.tool_calls[0].function.arguments).is_err());
        // Plain text, no calls.
        let plain = parse("The answer.<｜end▁of▁sentence｜>", false);
        assert_eq!(
            (plain.content.as_str(), plain.tool_calls.len()),
            ("The answer.", 0)
        );
    }
}
