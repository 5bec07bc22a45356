//! A task's tools over the Model Context Protocol, so any MCP client (an agent harness, an
//! IDE agent, `verifiers`' MCP environments) can play an envsynth task: `POST
//! /v1/tasks/{task_id}/mcp` is a Streamable HTTP endpoint for the handshake-era revisions
//! (2024-11-05 to 2025-11-25). Each request carries one JSON-RPC message and is answered with
//! one JSON body (no event streams: nothing here runs long or calls back), so the server keeps
//! no session; the task id in the URL is the whole state, as tools are pure functions of the
//! task's world. Methods: `initialize` (the task's prompt as `instructions`), `ping`,
//! `tools/list` and `tools/call`; notifications and client responses are accepted with 202.
//! A tool's answer is the same text `POST /v1/tasks/{id}/tools/{name}` returns and `envsynth
//! rollout` records, with `isError` set for an error result. To clients of 2025-06-18 and later
//! (by their `MCP-Protocol-Version` header) each tool also lists an `outputSchema`, the result
//! envelope `{"status": "ok", "result": ...}` around the tool's own result schema, and a
//! successful call returns that envelope as `structuredContent` beside the text.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use envsynth_core::model::ToolErrorCode;
use envsynth_core::{Task, ToolCall, ToolResult};
use envsynth_registry::Store;

use crate::App;

/// The revisions this endpoint speaks, newest first.
pub const PROTOCOL_VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// The revisions with structured tool output (`outputSchema`, `structuredContent`).
const STRUCTURED: [&str; 2] = ["2025-11-25", "2025-06-18"];

const PARSE_ERROR: i64 = -32700;
const INVALID_REQUEST: i64 = -32600;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const INTERNAL_ERROR: i64 = -32603;

/// A JSON-RPC error answer, with the HTTP status it travels under.
struct RpcError {
    status: StatusCode,
    code: i64,
    message: String,
}

fn rpc_error(status: StatusCode, code: i64, message: impl Into<String>) -> RpcError {
    RpcError {
        status,
        code,
        message: message.into(),
    }
}

fn answer(id: &Value, outcome: Result<Value, RpcError>) -> Response {
    match outcome {
        Ok(result) => (
            StatusCode::OK,
            axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": result})),
        )
            .into_response(),
        Err(e) => (
            e.status,
            axum::Json(json!({"jsonrpc": "2.0", "id": id,
                              "error": {"code": e.code, "message": e.message}})),
        )
            .into_response(),
    }
}

pub async fn post(
    State(app): State<Arc<App>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let none = Value::Null;
    let task_id = match path {
        Ok(Path(id)) => id,
        Err(e) => {
            let e = rpc_error(StatusCode::BAD_REQUEST, INVALID_REQUEST, e.body_text());
            return answer(&none, Err(e));
        }
    };
    if let Err(e) = check_headers(&headers) {
        return answer(&none, Err(e));
    }
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            let status = e.status();
            let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "the message is larger than the server accepts (--max-body)".to_string()
            } else {
                e.body_text()
            };
            return answer(&none, Err(rpc_error(status, INVALID_REQUEST, message)));
        }
    };
    let message: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            let e = rpc_error(
                StatusCode::BAD_REQUEST,
                PARSE_ERROR,
                format!("the body is not JSON: {e}"),
            );
            return answer(&none, Err(e));
        }
    };
    let Some(fields) = message.as_object() else {
        let what = if message.is_array() {
            "batches are not supported (MCP 2025-06-18 removed them): send one message a request"
        } else {
            "a JSON-RPC message is an object"
        };
        return answer(
            &none,
            Err(rpc_error(StatusCode::BAD_REQUEST, INVALID_REQUEST, what)),
        );
    };
    if fields.get("jsonrpc") != Some(&json!("2.0")) {
        return answer(
            fields.get("id").unwrap_or(&none),
            Err(rpc_error(
                StatusCode::BAD_REQUEST,
                INVALID_REQUEST,
                "jsonrpc: must be \"2.0\"",
            )),
        );
    }
    let Some(method) = fields.get("method") else {
        // A response to a request of ours: we send none, so there is nothing to match.
        if fields.contains_key("result") || fields.contains_key("error") {
            return StatusCode::ACCEPTED.into_response();
        }
        return answer(
            fields.get("id").unwrap_or(&none),
            Err(rpc_error(
                StatusCode::BAD_REQUEST,
                INVALID_REQUEST,
                "method: a request or notification names its method",
            )),
        );
    };
    let Some(id) = fields.get("id") else {
        // Notifications (initialized, cancelled, progress) need no answer.
        return StatusCode::ACCEPTED.into_response();
    };
    if !(id.is_string() || id.is_i64() || id.is_u64()) {
        return answer(
            &none,
            Err(rpc_error(
                StatusCode::BAD_REQUEST,
                INVALID_REQUEST,
                "id: must be a string or an integer",
            )),
        );
    }
    let Some(method) = method.as_str() else {
        return answer(
            id,
            Err(rpc_error(
                StatusCode::BAD_REQUEST,
                INVALID_REQUEST,
                "method: must be a string",
            )),
        );
    };
    let params = fields.get("params").unwrap_or(&none);
    // A client announces its revision on every request after the handshake; one that does
    // not is taken to speak 2025-03-26, as the transport specification says.
    let structured = headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| STRUCTURED.contains(&v));
    answer(
        id,
        dispatch(&app, &task_id, method, params, structured).await,
    )
}

/// A tool's `outputSchema`: the envelope of a successful result around the tool's result
/// schema. `None` when that schema cannot be nested as it is: a reference other than into its
/// own `$defs` or `definitions` (which move to the envelope's root with it), or an `$id` that
/// would change what references resolve against.
fn output_schema(result: &Value) -> Option<Value> {
    fn nests(v: &Value, root: bool) -> bool {
        match v {
            Value::Object(fields) => fields.iter().all(|(k, x)| match k.as_str() {
                "$ref" => x
                    .as_str()
                    .is_some_and(|r| r.starts_with("#/$defs/") || r.starts_with("#/definitions/")),
                "$id" | "$anchor" | "$dynamicAnchor" | "$dynamicRef" => false,
                "$schema" => root,
                _ => nests(x, false),
            }),
            Value::Array(items) => items.iter().all(|x| nests(x, false)),
            _ => true,
        }
    }
    if !nests(result, true) {
        return None;
    }
    let mut inner = result.clone();
    let mut envelope = serde_json::Map::new();
    envelope.insert("type".into(), json!("object"));
    if let Value::Object(fields) = &mut inner {
        fields.remove("$schema");
        for defs in ["$defs", "definitions"] {
            if let Some(d) = fields.remove(defs) {
                envelope.insert(defs.into(), d);
            }
        }
    }
    envelope.insert(
        "properties".into(),
        json!({"status": {"const": "ok"}, "result": inner}),
    );
    envelope.insert("required".into(), json!(["status", "result"]));
    Some(Value::Object(envelope))
}

/// DNS rebinding protection (a page in a browser posting to a local server): an `Origin`
/// header, when a client sends one, must name the host the request was sent to. And a
/// protocol version the client announces must be one spoken here.
fn check_headers(headers: &HeaderMap) -> Result<(), RpcError> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        let origin_host = origin
            .split_once("://")
            .map_or(origin, |(_, rest)| rest)
            .trim_end_matches('/');
        if host.is_empty() || origin_host != host {
            return Err(rpc_error(
                StatusCode::FORBIDDEN,
                INVALID_REQUEST,
                format!(
                    "Origin `{}` is not this server (`{}`)",
                    origin.escape_debug(),
                    host.escape_debug()
                ),
            ));
        }
    }
    if let Some(v) = headers.get("mcp-protocol-version") {
        let v = v.to_str().unwrap_or_default();
        if !PROTOCOL_VERSIONS.contains(&v) {
            return Err(rpc_error(
                StatusCode::BAD_REQUEST,
                INVALID_REQUEST,
                format!(
                    "MCP-Protocol-Version `{}` is not spoken here; supported: {}",
                    v.escape_debug(),
                    PROTOCOL_VERSIONS.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

async fn task(app: &Arc<App>, task_id: &str) -> Result<Task, RpcError> {
    match app.store.task(task_id).await {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(rpc_error(
            StatusCode::NOT_FOUND,
            INVALID_PARAMS,
            format!("no task {}", task_id.escape_debug()),
        )),
        Err(e) => Err(rpc_error(
            StatusCode::SERVICE_UNAVAILABLE,
            INTERNAL_ERROR,
            format!("the registry did not answer: {e}"),
        )),
    }
}

async fn dispatch(
    app: &Arc<App>,
    task_id: &str,
    method: &str,
    params: &Value,
    structured: bool,
) -> Result<Value, RpcError> {
    let invalid = |m: String| rpc_error(StatusCode::OK, INVALID_PARAMS, m);
    match method {
        "initialize" => {
            let task = task(app, task_id).await?;
            let asked = params["protocolVersion"].as_str().ok_or_else(|| {
                invalid("params.protocolVersion: the client's protocol revision is required".into())
            })?;
            // The client's revision when spoken here, else the newest (the client decides).
            let version = PROTOCOL_VERSIONS
                .iter()
                .find(|v| **v == asked)
                .unwrap_or(&PROTOCOL_VERSIONS[0]);
            let instructions: Vec<&str> = task.prompt.iter().map(|m| m.content.as_str()).collect();
            Ok(json!({
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": false}},
                "serverInfo": {"name": "envsynth", "title": format!("envsynth task {}", task.id),
                               "version": env!("CARGO_PKG_VERSION")},
                "instructions": instructions.join("\n\n"),
            }))
        }
        "ping" => Ok(json!({})),
        "tools/list" => {
            let task = task(app, task_id).await?;
            let tools: Vec<Value> = task
                .tools
                .iter()
                .map(|t| {
                    let mut tool = json!({"name": t.name, "description": t.description,
                                          "inputSchema": t.parameters});
                    if let Some(schema) = output_schema(&t.result).filter(|_| structured) {
                        tool["outputSchema"] = schema;
                    }
                    tool
                })
                .collect();
            Ok(json!({ "tools": tools }))
        }
        "tools/call" => {
            let name = params["name"]
                .as_str()
                .ok_or_else(|| invalid("params.name: the tool's name is required".into()))?
                .to_string();
            let arguments = match params.get("arguments") {
                None | Some(Value::Null) => json!({}),
                Some(a @ Value::Object(_)) => a.clone(),
                Some(_) => return Err(invalid("params.arguments: must be an object".into())),
            };
            let result = call(app, task_id, name.clone(), arguments).await?;
            if let ToolResult::Error {
                code: ToolErrorCode::UnknownTool,
                message,
            } = &result
            {
                // The protocol's answer to a tool the server does not have.
                return Err(invalid(format!("params.name: {message}")));
            }
            let text = serde_json::to_string(&result).map_err(|e| {
                rpc_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    INTERNAL_ERROR,
                    e.to_string(),
                )
            })?;
            let is_error = matches!(result, ToolResult::Error { .. });
            let mut answer = json!({
                "content": [{"type": "text", "text": text}],
                "isError": is_error,
            });
            if structured && !is_error {
                answer["structuredContent"] = serde_json::to_value(&result).map_err(|e| {
                    rpc_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        INTERNAL_ERROR,
                        e.to_string(),
                    )
                })?;
            }
            Ok(answer)
        }
        other => Err(rpc_error(
            StatusCode::OK,
            METHOD_NOT_FOUND,
            format!(
                "method not found: `{}` (this server offers initialize, ping, tools/list, tools/call)",
                other.escape_debug()
            ),
        )),
    }
}

/// Run one tool as `POST /v1/tasks/{id}/tools/{name}` does.
async fn call(
    app: &Arc<App>,
    task_id: &str,
    name: String,
    arguments: Value,
) -> Result<ToolResult, RpcError> {
    let call = ToolCall { name, arguments };
    crate::api::run_tool(app, task_id, move |p| p.call_tool(&call))
        .await
        .map_err(|e| {
            let code = if e.status == StatusCode::NOT_FOUND {
                INVALID_PARAMS
            } else {
                INTERNAL_ERROR
            };
            rpc_error(e.status, code, e.message)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_schemas_nest_the_result_schema_and_keep_its_references_resolvable() {
        let plain = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
        let schema = output_schema(&plain).unwrap();
        assert_eq!(schema["properties"]["result"], plain);
        assert_eq!(schema["required"], json!(["status", "result"]));
        let with_defs = json!({"$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "array", "items": {"$ref": "#/$defs/city"},
            "$defs": {"city": {"type": "string"}}});
        let schema = output_schema(&with_defs).unwrap();
        assert_eq!(schema["$defs"]["city"], json!({"type": "string"}));
        assert_eq!(
            schema["properties"]["result"],
            json!({"type": "array", "items": {"$ref": "#/$defs/city"}})
        );
        let ok = json!({"status": "ok", "result": ["C01", "C02"]});
        let validator = jsonschema::validator_for(&schema).unwrap();
        assert!(validator.is_valid(&ok));
        assert!(!validator.is_valid(&json!({"status": "ok", "result": [1]})));
        for unnestable in [
            json!({"$ref": "#/properties/x"}),
            json!({"$id": "https://example.com/s", "type": "object"}),
            json!({"items": {"$schema": "https://json-schema.org/draft/2020-12/schema"}}),
        ] {
            assert_eq!(output_schema(&unnestable), None, "{unnestable}");
        }
    }
}
