//! Shard files round-trip through both formats; damaged files are refused by name and row.

use envsynth_core::model::{EnvRef, Message};
use envsynth_core::{Certificate, Difficulty, Task};
use envsynth_shards::{
    ShardMeta, atomic_write, read_tasks, shard_files, write_jsonl, write_parquet,
};
use serde_json::value::RawValue;

fn task(index: u64) -> Task {
    let mut t = Task {
        id: String::new(),
        environment: EnvRef {
            id: "toy".into(),
            version: "1.0.0".into(),
        },
        seed: 1,
        index,
        difficulty: Difficulty {
            level: "easy".into(),
            params: serde_json::json!({"n": index}),
        },
        prompt: vec![Message {
            role: "user".into(),
            content: format!("task {index} — ünïcode ✓"),
        }],
        tools: Default::default(),
        constraints: vec![],
        world: RawValue::from_string(format!("{{\"x\":{index}}}")).unwrap(),
        reference_solution: RawValue::from_string("\"answer\"".into()).unwrap(),
        certificate: Certificate::default(),
    };
    t.id = t.compute_id();
    t
}

#[test]
fn both_formats_round_trip_and_parquet_is_preferred() {
    let dir = tempfile::tempdir().unwrap();
    let tasks: Vec<Task> = (0..5).map(task).collect();
    let pq = dir.path().join("part-00000-of-00002.parquet");
    let jl = dir.path().join("part-00000-of-00002.jsonl");
    let jl2 = dir.path().join("part-00001-of-00002.jsonl");
    let e = write_parquet(&pq, &tasks, "train").unwrap();
    assert_eq!(e.rows, 5);
    assert_eq!(e.sha256, envsynth_shards::sha256_file(&pq).unwrap());
    write_jsonl(&jl, &tasks, "train").unwrap();
    write_jsonl(&jl2, &tasks[..2], "test").unwrap();
    for path in [&pq, &jl] {
        let back = read_tasks(path).unwrap();
        assert_eq!(
            back.iter().map(|t| &t.id).collect::<Vec<_>>(),
            tasks.iter().map(|t| &t.id).collect::<Vec<_>>()
        );
        assert_eq!(back[3].prompt, tasks[3].prompt);
    }
    assert_eq!(
        shard_files(dir.path()).unwrap(),
        vec![pq.clone(), jl2.clone()]
    );
    assert!(
        !std::fs::read_dir(dir.path()).unwrap().any(|e| e
            .unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "tmp"))
    );
    // Same tasks, same bytes.
    let again = dir.path().join("again.parquet");
    write_parquet(&again, &tasks, "train").unwrap();
    assert_eq!(std::fs::read(&pq).unwrap(), std::fs::read(&again).unwrap());
}

#[test]
fn damaged_shards_are_refused_with_file_and_row() {
    let dir = tempfile::tempdir().unwrap();
    let mut tasks: Vec<Task> = (0..3).map(task).collect();
    tasks[2].seed = 99; // content no longer matches its id
    let jl = dir.path().join("bad.jsonl");
    write_jsonl(&jl, &tasks, "train").unwrap();
    let e = read_tasks(&jl).unwrap_err().to_string();
    assert!(
        e.contains("bad.jsonl") && e.contains("line 3") && e.contains("does not match"),
        "{e}"
    );
    let pq = dir.path().join("bad.parquet");
    write_parquet(&pq, &tasks, "train").unwrap();
    let e = read_tasks(&pq).unwrap_err().to_string();
    assert!(e.contains("bad.parquet") && e.contains("row 2"), "{e}");
    std::fs::write(&pq, b"not parquet").unwrap();
    assert!(
        read_tasks(&pq)
            .unwrap_err()
            .to_string()
            .contains("not a readable Parquet file")
    );
    assert!(shard_files(&dir.path().join("missing")).is_err());
    let empty = tempfile::tempdir().unwrap();
    assert!(
        shard_files(empty.path())
            .unwrap_err()
            .to_string()
            .contains("no part-")
    );
}

#[test]
fn sidecars_detect_missing_or_changed_files() {
    let dir = tempfile::tempdir().unwrap();
    let tasks: Vec<Task> = (0..2).map(task).collect();
    let f = write_jsonl(
        &dir.path().join("part-00000-of-00001.jsonl"),
        &tasks,
        "train",
    )
    .unwrap();
    let meta = ShardMeta {
        request_hash: "h".into(),
        shard: 0,
        num_shards: 1,
        first_index: 0,
        rows: 2,
        files: vec![f],
        rejections: Default::default(),
        replaced: 0,
    };
    let path = ShardMeta::path(dir.path(), 0, 1);
    atomic_write(&path, &serde_json::to_vec(&meta).unwrap()).unwrap();
    let loaded = ShardMeta::load(&path).unwrap().unwrap();
    assert!(loaded.files_intact(dir.path()).unwrap());
    std::fs::write(dir.path().join("part-00000-of-00001.jsonl"), b"{}\n").unwrap();
    assert!(!loaded.files_intact(dir.path()).unwrap());
    assert!(
        ShardMeta::load(&dir.path().join("none.meta.json"))
            .unwrap()
            .is_none()
    );
    std::fs::write(&path, b"{").unwrap();
    assert!(
        ShardMeta::load(&path)
            .unwrap_err()
            .to_string()
            .contains("sidecar")
    );
}
