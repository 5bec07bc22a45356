//! Parquet encoding of verl rows and decoding of task records.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, ListArray, StringArray, StructArray};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

use envsynth_core::Task;

use crate::{FileEntry, Row, ShardError, atomic_write};

const ROW_GROUP: usize = 1024;

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}

fn message_fields() -> Fields {
    Fields::from(vec![utf8("role"), utf8("content")])
}

fn reward_fields() -> Fields {
    Fields::from(vec![utf8("style"), utf8("ground_truth")])
}

fn extra_fields() -> Fields {
    Fields::from(vec![
        utf8("split"),
        Field::new("index", DataType::Int64, false),
        utf8("task_id"),
        utf8("environment"),
        Field::new("seed", DataType::Int64, false),
        utf8("level"),
        utf8("tools"),
        utf8("task"),
    ])
}

/// The schema every shard has, whatever its contents.
pub fn schema() -> Schema {
    Schema::new(vec![
        utf8("data_source"),
        utf8("agent_name"),
        Field::new(
            "prompt",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(message_fields()),
                false,
            ))),
            false,
        ),
        utf8("ability"),
        Field::new("reward_model", DataType::Struct(reward_fields()), false),
        Field::new("extra_info", DataType::Struct(extra_fields()), false),
    ])
}

fn strings<'a>(it: impl Iterator<Item = &'a str>) -> ArrayRef {
    // Sized up front: task records are tens of kilobytes each, and growing the buffer by
    // doubling costs more than encoding them.
    let items: Vec<&str> = it.collect();
    let bytes = items.iter().map(|s| s.len()).sum();
    let mut b = arrow::array::StringBuilder::with_capacity(items.len(), bytes);
    for s in items {
        b.append_value(s);
    }
    Arc::new(b.finish())
}

fn batch(rows: &[Row<'_>], task_json: &[String]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let messages: Vec<&envsynth_core::Message> =
        rows.iter().flat_map(|r| r.prompt.iter()).collect();
    let prompt_values = StructArray::try_new(
        message_fields(),
        vec![
            strings(messages.iter().map(|m| m.role.as_str())),
            strings(messages.iter().map(|m| m.content.as_str())),
        ],
        None,
    )?;
    let prompt = ListArray::try_new(
        Arc::new(Field::new(
            "item",
            DataType::Struct(message_fields()),
            false,
        )),
        OffsetBuffer::from_lengths(rows.iter().map(|r| r.prompt.len())),
        Arc::new(prompt_values),
        None,
    )?;
    let reward = StructArray::try_new(
        reward_fields(),
        vec![
            strings(rows.iter().map(|r| r.reward_model.style)),
            strings(rows.iter().map(|r| r.reward_model.ground_truth)),
        ],
        None,
    )?;
    let extra = StructArray::try_new(
        extra_fields(),
        vec![
            strings(rows.iter().map(|r| r.extra_info.split)),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.extra_info.index as i64),
            )),
            strings(rows.iter().map(|r| r.extra_info.task_id)),
            strings(rows.iter().map(|r| r.extra_info.environment.as_str())),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.extra_info.seed as i64),
            )),
            strings(rows.iter().map(|r| r.extra_info.level)),
            strings(rows.iter().map(|r| r.extra_info.tools.as_str())),
            strings(task_json.iter().map(String::as_str)),
        ],
        None,
    )?;
    RecordBatch::try_new(
        Arc::new(schema()),
        vec![
            strings(rows.iter().map(|r| r.data_source.as_str())),
            strings(rows.iter().map(|r| r.agent_name)),
            Arc::new(prompt),
            strings(rows.iter().map(|r| r.ability.as_str())),
            Arc::new(reward),
            Arc::new(extra),
        ],
    )
}

/// Encode tasks as one Parquet file in memory.
pub fn parquet_bytes(tasks: &[Task], split: &str) -> Result<Vec<u8>, String> {
    // Dictionary encoding pays for repeated values (data source, system prompt, tool list) but
    // not for per-task unique records, where it only costs time.
    let unique = |path: &[&str]| ColumnPath::new(path.iter().map(|s| s.to_string()).collect());
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).map_err(|e| e.to_string())?,
        ))
        .set_max_row_group_size(ROW_GROUP)
        .set_column_dictionary_enabled(unique(&["extra_info", "task"]), false)
        .set_column_dictionary_enabled(unique(&["extra_info", "task_id"]), false)
        .set_column_dictionary_enabled(unique(&["reward_model", "ground_truth"]), false)
        .build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, Arc::new(schema()), Some(props))
        .map_err(|e| e.to_string())?;
    for chunk in tasks.chunks(ROW_GROUP) {
        let rows: Vec<Row> = chunk.iter().map(|t| Row::new(t, split)).collect();
        let json: Vec<String> = chunk
            .iter()
            .map(|t| serde_json::to_string(t).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?;
        writer
            .write(&batch(&rows, &json).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    writer.close().map_err(|e| e.to_string())?;
    Ok(out)
}

pub fn write_parquet(path: &Path, tasks: &[Task], split: &str) -> Result<FileEntry, ShardError> {
    let bytes = parquet_bytes(tasks, split).map_err(|e| ShardError::corrupt(path, e))?;
    atomic_write(path, &bytes)?;
    Ok(FileEntry::of(path, &bytes, tasks.len() as u64))
}

/// Parse every row of one string column of a Parquet file, naming the file and row of a bad
/// one. `column` finds the column in a batch; `what` describes it in errors.
pub(crate) fn read_string_column<T>(
    path: &Path,
    what: &str,
    column: impl Fn(&RecordBatch) -> Option<&StringArray>,
    mut parse: impl FnMut(&str) -> Result<T, String>,
) -> Result<Vec<T>, ShardError> {
    let file = std::fs::File::open(path).map_err(|e| ShardError::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| ShardError::corrupt(path, format!("not a readable Parquet file: {e}")))?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| ShardError::corrupt(path, e.to_string()))?;
        let col = column(&batch).ok_or_else(|| ShardError::corrupt(path, format!("no {what}")))?;
        for i in 0..col.len() {
            let row = out.len();
            out.push(
                parse(col.value(i))
                    .map_err(|e| ShardError::corrupt(path, format!("row {row}: {e}")))?,
            );
        }
    }
    Ok(out)
}

/// Read the task records back from a Parquet shard, checking every id against its content.
pub fn read_parquet_tasks(path: &Path) -> Result<Vec<Task>, ShardError> {
    read_string_column(
        path,
        "extra_info.task string column",
        |batch| {
            batch
                .column_by_name("extra_info")
                .and_then(|c| c.as_any().downcast_ref::<StructArray>())
                .and_then(|s| s.column_by_name("task"))
                .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        },
        |text| Task::from_json(text).map_err(|e| e.to_string()),
    )
}
