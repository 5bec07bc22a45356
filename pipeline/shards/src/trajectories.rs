//! Scored trajectories as Parquet: one row per rollout, with the conversation as a list of
//! message structs (tool calls as JSON text), the verdict's headline fields as columns for
//! filtering, the conversation's token sequences as lists of lists when the policy reported
//! them (`token_ids`, `loss_mask`, `logprobs`; null otherwise), and the whole record as JSON for a
//! lossless read-back. Rows come in as the rollout records' JSON, so this crate needs no rollout
//! types.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, ListArray, ListBuilder,
    PrimitiveBuilder, StringArray, StructArray,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Field, Fields, Float32Type, Int8Type, Int32Type, Schema,
};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde_json::Value;

use crate::{FileEntry, ShardError, atomic_write};

fn message_fields() -> Fields {
    Fields::from(vec![
        Field::new("role", DataType::Utf8, false),
        Field::new("content", DataType::Utf8, true),
        Field::new("reasoning_content", DataType::Utf8, true),
        Field::new("tool_calls", DataType::Utf8, true),
        Field::new("tool_call_id", DataType::Utf8, true),
    ])
}

/// The schema of a trajectory shard.
pub fn trajectory_schema() -> Schema {
    let text = |n: &str| Field::new(n, DataType::Utf8, false);
    let int = |n: &str| Field::new(n, DataType::Int64, false);
    Schema::new(vec![
        text("rollout_id"),
        text("task_id"),
        text("environment"),
        text("level"),
        text("policy"),
        int("sample_seed"),
        Field::new(
            "messages",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(message_fields()),
                false,
            ))),
            false,
        ),
        int("turns"),
        int("tool_steps"),
        int("prompt_tokens"),
        int("completion_tokens"),
        text("stop"),
        Field::new("reward", DataType::Float64, false),
        Field::new("passed", DataType::Boolean, false),
        Field::new("mask", DataType::Boolean, false),
        text("failure_kind"),
        token_list("token_ids", DataType::Int32),
        token_list("loss_mask", DataType::Int8),
        token_list("logprobs", DataType::Float32),
        text("rollout"),
    ])
}

/// A per-token column of the rollout's token sequences (a list per sequence): null for a
/// rollout without them.
fn token_list(name: &str, item: DataType) -> Field {
    let list = |of: DataType| DataType::List(Arc::new(Field::new("item", of, true)));
    Field::new(name, list(list(item)), true)
}

/// `rows[i].tokens[j][key]` as a column of lists of lists (null where a rollout has no tokens).
fn token_column<T: ArrowPrimitiveType>(
    rows: &[Value],
    key: &str,
    item: impl Fn(&Value) -> Option<T::Native>,
) -> ArrayRef {
    let mut column = ListBuilder::new(ListBuilder::new(PrimitiveBuilder::<T>::new()));
    for r in rows {
        let Some(traces) = r["tokens"].as_array() else {
            column.append(false);
            continue;
        };
        for trace in traces {
            for v in trace[key].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                column.values().values().append_option(item(v));
            }
            column.values().append(true);
        }
        column.append(true);
    }
    Arc::new(column.finish())
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| &v[*k])
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn batch(rows: &[Value]) -> Result<RecordBatch, String> {
    let col_text = |path: &[&str]| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| text_of(s(r, path))),
        ))
    };
    let col_int = |path: &[&str]| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|r| s(r, path).as_i64().unwrap_or(0)),
        ))
    };
    let col_bool = |path: &[&str]| -> ArrayRef {
        Arc::new(BooleanArray::from(
            rows.iter()
                .map(|r| s(r, path).as_bool().unwrap_or(false))
                .collect::<Vec<_>>(),
        ))
    };
    let mut offsets = vec![0i32];
    let (mut role, mut content, mut reasoning, mut calls, mut call_id) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for r in rows {
        let msgs = r["messages"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        for m in msgs {
            role.push(text_of(&m["role"]));
            content.push(m["content"].as_str().map(str::to_string));
            reasoning.push(m["reasoning_content"].as_str().map(str::to_string));
            calls.push(
                m["tool_calls"]
                    .as_array()
                    .filter(|c| !c.is_empty())
                    .map(|c| Value::Array(c.clone()).to_string()),
            );
            call_id.push(m["tool_call_id"].as_str().map(str::to_string));
        }
        let last = offsets.last().copied().unwrap_or(0);
        offsets.push(last + i32::try_from(msgs.len()).map_err(|e| e.to_string())?);
    }
    let messages = StructArray::try_new(
        message_fields(),
        vec![
            Arc::new(StringArray::from_iter_values(role)),
            Arc::new(StringArray::from(content)),
            Arc::new(StringArray::from(reasoning)),
            Arc::new(StringArray::from(calls)),
            Arc::new(StringArray::from(call_id)),
        ],
        None,
    )
    .map_err(|e| e.to_string())?;
    let messages = ListArray::try_new(
        Arc::new(Field::new(
            "item",
            DataType::Struct(message_fields()),
            false,
        )),
        OffsetBuffer::new(offsets.into()),
        Arc::new(messages),
        None,
    )
    .map_err(|e| e.to_string())?;
    let stop: ArrayRef = Arc::new(StringArray::from_iter_values(
        rows.iter().map(|r| r["stop"].to_string()),
    ));
    let whole: ArrayRef = Arc::new(StringArray::from_iter_values(
        rows.iter().map(|r| r.to_string()),
    ));
    RecordBatch::try_new(
        Arc::new(trajectory_schema()),
        vec![
            col_text(&["rollout_id"]),
            col_text(&["task_id"]),
            col_text(&["environment"]),
            col_text(&["level"]),
            col_text(&["policy"]),
            col_int(&["sample_seed"]),
            Arc::new(messages),
            col_int(&["turns"]),
            col_int(&["tool_steps"]),
            col_int(&["usage", "prompt_tokens"]),
            col_int(&["usage", "completion_tokens"]),
            stop,
            Arc::new(Float64Array::from_iter_values(
                rows.iter()
                    .map(|r| r["verdict"]["reward"].as_f64().unwrap_or(0.0)),
            )),
            col_bool(&["verdict", "passed"]),
            col_bool(&["verdict", "mask"]),
            col_text(&["verdict", "failure_kind"]),
            token_column::<Int32Type>(rows, "ids", |v| {
                v.as_u64().and_then(|x| i32::try_from(x).ok())
            }),
            token_column::<Int8Type>(rows, "mask", |v| {
                v.as_u64().and_then(|x| i8::try_from(x).ok())
            }),
            token_column::<Float32Type>(rows, "logprobs", |v| v.as_f64().map(|x| x as f32)),
            whole,
        ],
    )
    .map_err(|e| e.to_string())
}

/// Write rollout records (their JSON) as one Parquet file, atomically.
pub fn write_trajectories(path: &Path, rows: &[Value]) -> Result<FileEntry, ShardError> {
    let encode = || -> Result<Vec<u8>, String> {
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(3).map_err(|e| e.to_string())?,
            ))
            .set_max_row_group_size(1024)
            .build();
        let mut out = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut out, Arc::new(trajectory_schema()), Some(props))
            .map_err(|e| e.to_string())?;
        for chunk in rows.chunks(1024) {
            writer.write(&batch(chunk)?).map_err(|e| e.to_string())?;
        }
        writer.close().map_err(|e| e.to_string())?;
        Ok(out)
    };
    let bytes = encode().map_err(|e| ShardError::corrupt(path, e))?;
    atomic_write(path, &bytes)?;
    Ok(FileEntry::of(path, &bytes, rows.len() as u64))
}

/// Read the rollout records back from a trajectory shard.
pub fn read_trajectories(path: &Path) -> Result<Vec<Value>, ShardError> {
    crate::parquet_io::read_string_column(
        path,
        "`rollout` string column",
        |batch| {
            batch
                .column_by_name("rollout")
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        },
        |text| serde_json::from_str(text).map_err(|e| e.to_string()),
    )
}
