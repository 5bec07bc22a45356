//! Finding the submission in a model's free-text answer, the way trainers hand it to a reward
//! function (verl's `solution_str`, TRL's completions): the whole text if it is JSON, else the
//! last fenced code block that is JSON, else the last JSON object or array in the text.

use serde_json::Value;

/// The submission a free-text answer carries, or `None` when it holds no JSON object or array
/// (a bare number or string counts only when it is the whole text).
pub fn extract_submission(text: &str) -> Option<Value> {
    let trimmed = text.trim();
    if let Ok(v) = serde_json::from_str::<Value>(trimmed) {
        return Some(v);
    }
    if let Some(v) = last_fenced_json(text) {
        return Some(v);
    }
    last_embedded_json(text)
}

/// The last ``` fenced block (any info string) whose body parses as JSON.
fn last_fenced_json(text: &str) -> Option<Value> {
    let mut found = None;
    let mut rest = text;
    while let Some(open) = rest.find("```") {
        let after = &rest[open + 3..];
        // The info string runs to the end of the line.
        let body_start = after.find('\n').map_or(after.len(), |i| i + 1);
        let body = &after[body_start..];
        let Some(close) = body.find("```") else { break };
        if let Ok(v) = serde_json::from_str::<Value>(body[..close].trim()) {
            found = Some(v);
        }
        rest = &body[close + 3..];
    }
    found
}

/// The last top-level JSON object or array embedded in prose. Values are taken left to right
/// without overlapping, so `{"a": [1]}` yields the object, not the array inside it.
fn last_embedded_json(text: &str) -> Option<Value> {
    let bytes = text.as_bytes();
    let mut found = None;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'{' || bytes[i] == b'[' {
            let mut stream = serde_json::Deserializer::from_str(&text[i..]).into_iter::<Value>();
            if let Some(Ok(v)) = stream.next() {
                i += stream.byte_offset();
                found = Some(v);
                continue;
            }
        }
        i += 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whole_text_fence_and_embedded() {
        assert_eq!(extract_submission(" {\"a\": 1} "), Some(json!({"a": 1})));
        assert_eq!(extract_submission("null"), Some(Value::Null));
        let fenced = "Plan:\n```json\n{\"a\": 1}\n```\nand a better one\n```\n[2]\n```\ndone";
        assert_eq!(extract_submission(fenced), Some(json!([2])));
        // A fence that is not JSON is skipped for an earlier one that is.
        let mixed = "```json\n{\"a\": 1}\n```\n```python\nprint(1)\n```";
        assert_eq!(extract_submission(mixed), Some(json!({"a": 1})));
        let prose = "I think {\"a\": [1, 2]} works, or rather {\"a\": [3]}. Done {broken";
        assert_eq!(extract_submission(prose), Some(json!({"a": [3]})));
        assert_eq!(extract_submission("no plan, sorry"), None);
        assert_eq!(extract_submission(""), None);
        // Multi-byte text before the JSON.
        assert_eq!(extract_submission("é → [1]"), Some(json!([1])));
    }
}
