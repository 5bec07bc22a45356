//! Training shards: Parquet in verl's row layout (and the same rows as JSONL), written under a
//! temporary name, fsynced and renamed, with a per-shard sidecar and a manifest of row counts and
//! hashes. The only crate that names arrow or parquet.
//!
//! verl row layout: `data_source`, `prompt` (list of {role, content}), `ability`,
//! `reward_model {style, ground_truth}`, `extra_info {split, index, ...}`. Free-form payloads are
//! JSON strings so every shard has the same schema; `extra_info.task` carries the full task record
//! for remote verifiers and tool servers.

mod files;
mod parquet_io;
mod trajectories;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use envsynth_core::Task;

pub use files::{atomic_write, remove_stale_tmp, sha256_file};
pub use parquet_io::{read_parquet_tasks, write_parquet};
pub use trajectories::{read_trajectories, trajectory_schema, write_trajectories};

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{0}")]
    Mismatch(String),
}

impl ShardError {
    pub fn io(path: &Path, source: std::io::Error) -> ShardError {
        ShardError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub fn corrupt(path: &Path, message: impl Into<String>) -> ShardError {
        ShardError::Corrupt {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Parquet,
    Jsonl,
}

impl Format {
    pub fn ext(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Jsonl => "jsonl",
        }
    }
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "parquet" => Some(Format::Parquet),
            "jsonl" => Some(Format::Jsonl),
            _ => None,
        }
    }
}

/// `part-00012-of-00064` (without extension).
pub fn shard_stem(index: u64, count: u64) -> String {
    format!("part-{index:05}-of-{count:05}")
}

/// One row in verl's layout, borrowed from a task.
#[derive(Serialize)]
pub struct Row<'a> {
    pub data_source: String,
    pub agent_name: &'static str,
    pub prompt: &'a [envsynth_core::Message],
    pub ability: String,
    pub reward_model: RewardModel<'a>,
    pub extra_info: ExtraInfo<'a>,
}

#[derive(Serialize)]
pub struct RewardModel<'a> {
    pub style: &'static str,
    /// The planted reference solution (JSON text).
    pub ground_truth: &'a str,
}

#[derive(Serialize)]
pub struct ExtraInfo<'a> {
    pub split: &'a str,
    pub index: u64,
    pub task_id: &'a str,
    pub environment: String,
    pub seed: u64,
    pub level: &'a str,
    /// The tools as an OpenAI `tools` list (JSON text).
    pub tools: String,
    /// The full task record (JSON text in Parquet; a JSON object in JSONL).
    pub task: &'a Task,
}

impl<'a> Row<'a> {
    pub fn new(task: &'a Task, split: &'a str) -> Row<'a> {
        let tools: Vec<serde_json::Value> = task
            .tools
            .iter()
            .map(|t| {
                serde_json::json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters}})
            })
            .collect();
        Row {
            data_source: format!("envsynth/{}", task.environment.id),
            agent_name: "tool_agent",
            prompt: &task.prompt,
            ability: format!("agent/{}", task.environment.id),
            reward_model: RewardModel {
                style: "rule",
                ground_truth: task.reference_solution.get(),
            },
            extra_info: ExtraInfo {
                split,
                index: task.index,
                task_id: &task.id,
                environment: task.environment.to_string(),
                seed: task.seed,
                level: &task.difficulty.level,
                tools: serde_json::Value::Array(tools).to_string(),
                task,
            },
        }
    }
}

/// JSONL: one verl row per line, with `extra_info.task` as an object.
pub fn jsonl_bytes(tasks: &[Task], split: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for t in tasks {
        // Rows are plain data; serializing into memory cannot fail.
        serde_json::to_writer(&mut out, &Row::new(t, split)).expect("row serializes");
        out.push(b'\n');
    }
    out
}

pub fn write_jsonl(path: &Path, tasks: &[Task], split: &str) -> Result<FileEntry, ShardError> {
    let bytes = jsonl_bytes(tasks, split);
    atomic_write(path, &bytes)?;
    Ok(FileEntry::of(path, &bytes, tasks.len() as u64))
}

/// Read the task records back from a JSONL shard, checking every id against its content.
pub fn read_jsonl_tasks(path: &Path) -> Result<Vec<Task>, ShardError> {
    #[derive(Deserialize)]
    struct Line<'a> {
        #[serde(borrow)]
        extra_info: Extra<'a>,
    }
    #[derive(Deserialize)]
    struct Extra<'a> {
        #[serde(borrow)]
        task: &'a serde_json::value::RawValue,
    }
    let text = std::fs::read_to_string(path).map_err(|e| ShardError::io(path, e))?;
    let mut tasks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: Line = serde_json::from_str(line)
            .map_err(|e| ShardError::corrupt(path, format!("line {}: {e}", i + 1)))?;
        let task = Task::from_json(row.extra_info.task.get())
            .map_err(|e| ShardError::corrupt(path, format!("line {}: {e}", i + 1)))?;
        tasks.push(task);
    }
    Ok(tasks)
}

/// Read tasks from a shard file of either format (by extension).
pub fn read_tasks(path: &Path) -> Result<Vec<Task>, ShardError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("parquet") => read_parquet_tasks(path),
        Some("jsonl") => read_jsonl_tasks(path),
        _ => Err(ShardError::corrupt(path, "not a .parquet or .jsonl shard")),
    }
}

/// The shard files at `path` (a file, or a directory of `part-*` files) in part order; where a
/// part exists in both formats, its Parquet file.
pub fn shard_files(path: &Path) -> Result<Vec<PathBuf>, ShardError> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut stems = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(path).map_err(|e| ShardError::io(path, e))? {
        let p = entry.map_err(|e| ShardError::io(path, e))?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(stem) = name
            .strip_suffix(".parquet")
            .or_else(|| name.strip_suffix(".jsonl"))
            && stem.starts_with("part-")
        {
            stems.insert(stem.to_string());
        }
    }
    if stems.is_empty() {
        return Err(ShardError::corrupt(
            path,
            "no part-*.parquet or part-*.jsonl files here",
        ));
    }
    Ok(stems
        .into_iter()
        .map(|stem| {
            let pq = path.join(format!("{stem}.parquet"));
            if pq.is_file() {
                pq
            } else {
                path.join(format!("{stem}.jsonl"))
            }
        })
        .collect())
}

/// A written file: name, rows, size and hash.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub name: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

impl FileEntry {
    pub fn of(path: &Path, bytes: &[u8], rows: u64) -> FileEntry {
        FileEntry {
            name: path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string(),
            rows,
            bytes: bytes.len() as u64,
            sha256: envsynth_core::hash::sha256_id(bytes),
        }
    }
}

/// The sidecar written after a shard's data files: proof that the shard is complete, and what
/// generating it cost.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShardMeta {
    /// Hash of everything that determines the shard's bytes; a resumed run must match it.
    pub request_hash: String,
    pub shard: u64,
    pub num_shards: u64,
    pub first_index: u64,
    pub rows: u64,
    pub files: Vec<FileEntry>,
    /// Rejected generation attempts by `stage/code`.
    pub rejections: std::collections::BTreeMap<String, u64>,
    /// Tasks drawn again because their problem was in an excluded dataset.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replaced: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ShardMeta {
    pub fn path(dir: &Path, shard: u64, num_shards: u64) -> PathBuf {
        dir.join(format!("{}.meta.json", shard_stem(shard, num_shards)))
    }

    /// Load a sidecar; `Ok(None)` if the shard was never finished.
    pub fn load(path: &Path) -> Result<Option<ShardMeta>, ShardError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ShardError::corrupt(path, format!("unreadable shard sidecar: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ShardError::io(path, e)),
        }
    }

    /// True if every data file the sidecar names is present with its recorded hash.
    pub fn files_intact(&self, dir: &Path) -> Result<bool, ShardError> {
        for f in &self.files {
            let p = dir.join(&f.name);
            if !p.is_file() || sha256_file(&p)? != f.sha256 {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The dataset manifest, written once every shard is complete. No timestamps: the same command
/// gives the same bytes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format_version: u32,
    pub environment: envsynth_core::EnvironmentSpec,
    pub generator: String,
    pub request: serde_json::Value,
    pub request_hash: String,
    pub num_shards: u64,
    pub rows: u64,
    pub files: Vec<FileEntry>,
    pub rejections: std::collections::BTreeMap<String, u64>,
    pub rejected_attempts: u64,
    /// Tasks drawn again because their problem was in an excluded dataset.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replaced: u64,
}
