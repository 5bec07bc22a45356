//! A generic text format for tool calling with any model that reads ChatML (`<|im_start|>` /
//! `<|im_end|>` turns): the tools as OpenAI function schemas in the system turn, each tool call
//! as a JSON object `{"name", "arguments"}` between `<tool_call>` tags, tool results between
//! `<tool_response>` tags in a user turn. Template `prompts/chat/chatml_tools.j2`; `parse`
//! reads a continuation back.

use serde::Serialize;
use serde_json::{Value, json};

use envsynth_core::chat::{ChatMessage, WireFunction, WireTool, WireToolCall};

use crate::{PromptError, Templates};

pub const END: &str = "<|im_end|>";

#[derive(Serialize)]
struct Turn {
    kind: String,
    content: String,
    calls: Vec<String>,
    results: Vec<String>,
}

#[derive(Serialize)]
struct Context {
    system: String,
    tools: Vec<String>,
    turns: Vec<Turn>,
}

pub struct ChatMlTools {
    templates: Templates,
}

impl ChatMlTools {
    pub fn new() -> Result<ChatMlTools, PromptError> {
        Ok(ChatMlTools {
            templates: Templates::verbatim(&[(
                "chatml_tools",
                include_str!("../../../prompts/chat/chatml_tools.j2"),
            )])?,
        })
    }

    /// The text the model continues, ending with the opener of the next assistant turn.
    /// Reasoning is not part of this format and is left out.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        tools: &[WireTool],
    ) -> Result<String, PromptError> {
        let mut system = Vec::new();
        let mut turns: Vec<Turn> = Vec::new();
        for m in messages {
            let content = m.content.clone().unwrap_or_default();
            match m.role.as_str() {
                "system" => system.push(content),
                "tool" => match turns.last_mut() {
                    Some(t) if t.kind == "results" => t.results.push(content),
                    _ => turns.push(Turn {
                        kind: "results".into(),
                        content: String::new(),
                        calls: Vec::new(),
                        results: vec![content],
                    }),
                },
                role => turns.push(Turn {
                    kind: if role == "developer" {
                        "user".into()
                    } else {
                        role.to_string()
                    },
                    content,
                    calls: m
                        .tool_calls
                        .iter()
                        .map(|c| {
                            let args = serde_json::from_str::<Value>(&c.function.arguments)
                                .unwrap_or_else(|_| Value::String(c.function.arguments.clone()));
                            json!({"name": c.function.name, "arguments": args}).to_string()
                        })
                        .collect(),
                    results: Vec::new(),
                }),
            }
        }
        let tools = tools
            .iter()
            .map(|t| serde_json::to_string(t).unwrap_or_default())
            .collect();
        self.templates.render(
            "chatml_tools",
            &Context {
                system: system.join("\n\n"),
                tools,
                turns,
            },
        )
    }
}

/// Split a continuation into its text and tool calls. A `<tool_call>` body that is not a JSON
/// object with a string `name` keeps its text as the arguments, so the rollout engine reports
/// it to the agent as a tool error.
pub fn parse(output: &str) -> (String, Vec<WireToolCall>) {
    let text = output.split(END).next().unwrap_or(output);
    let content = text
        .split("<tool_call>")
        .next()
        .unwrap_or("")
        .trim_end()
        .to_string();
    let mut calls = Vec::new();
    for (i, block) in text.split("<tool_call>").skip(1).enumerate() {
        let body = block.split("</tool_call>").next().unwrap_or("").trim();
        let (name, arguments) = match serde_json::from_str::<Value>(body) {
            Ok(v) if v["name"].is_string() => (
                v["name"].as_str().unwrap_or_default().to_string(),
                v.get("arguments").cloned().unwrap_or(json!({})).to_string(),
            ),
            _ => (String::new(), body.to_string()),
        };
        calls.push(WireToolCall {
            id: format!("call_{i}"),
            kind: "function".into(),
            function: WireFunction { name, arguments },
        });
    }
    (content, calls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envsynth_core::chat::WireToolFunction;

    #[test]
    fn renders_and_parses_tool_calls() {
        let t = ChatMlTools::new().unwrap();
        let tools = vec![WireTool {
            kind: "function".into(),
            function: WireToolFunction {
                name: "search".into(),
                description: "Find".into(),
                parameters: json!({"type": "object"}),
            },
        }];
        let call = WireToolCall {
            id: "x".into(),
            kind: "function".into(),
            function: WireFunction {
                name: "search".into(),
                arguments: r#"{"city":"Hangzhou"}"#.into(),
            },
        };
        let messages = vec![
            ChatMessage::text("system", "Be brief."),
            ChatMessage::text("user", "Q"),
            ChatMessage {
                role: "assistant".into(),
                content: Some(String::new()),
                tool_calls: vec![call.clone()],
                ..ChatMessage::default()
            },
            ChatMessage::text("tool", "[1]"),
            ChatMessage::text("tool", "[2]"),
        ];
        let got = t.render(&messages, &tools).unwrap();
        let want = concat!(
            "<|im_start|>system\nBe brief.\n\n# Tools\n\nThese functions are available. Each is an OpenAI function schema:\n<tools>\n",
            r#"{"type":"function","function":{"name":"search","description":"Find","parameters":{"type":"object"}}}"#,
            "\n</tools>\n\nTo call one, write a JSON object with the function name and its arguments between <tool_call> tags:\n<tool_call>\n{\"name\": \"<function name>\", \"arguments\": {<arguments>}}\n</tool_call><|im_end|>\n",
            "<|im_start|>user\nQ<|im_end|>\n",
            "<|im_start|>assistant\n<tool_call>\n{\"arguments\":{\"city\":\"Hangzhou\"},\"name\":\"search\"}\n</tool_call><|im_end|>\n",
            "<|im_start|>user\n<tool_response>\n[1]\n</tool_response>\n<tool_response>\n[2]\n</tool_response><|im_end|>\n",
            "<|im_start|>assistant\n",
        );
        assert_eq!(got, want);
        let (content, calls) = parse(
            "Looking.\n<tool_call>\n{\"name\": \"search\", \"arguments\": {\"city\": \"Hangzhou\"}}\n</tool_call><|im_end|>",
        );
        assert_eq!(content, "Looking.");
        assert_eq!(calls[0].function.name, "search");
        let args: Value = serde_json::from_str(&calls[0].function.arguments).unwrap();
        assert_eq!(args, json!({"city": "Hangzhou"}));
        let (_, bad) = parse("<tool_call>\n{oops\n</tool_call>");
        assert!(serde_json::from_str::<Value>(&bad[0].function.arguments).is_err());
        let (plain, none) = parse("Just text.<|im_end|>");
        assert_eq!((plain.as_str(), none.len()), ("Just text.", 0));
    }
}
