//! One test suite, run against both stores: SQLite in a temporary file, and PostgreSQL at
//! `$ENVSYNTH_TEST_PG` (default `postgres://postgres@127.0.0.1:5432/test`) in a fresh schema per
//! test. `.ci/run` checks that the PostgreSQL server is reachable before the tests run.

use envsynth_core::{Environment, Task, TaskRequest, env::generate};
use envsynth_registry::{
    EnvironmentMetadata, EnvironmentQuery, EnvironmentRecord, PassBand, PgStore, Put,
    RolloutRecord, SqliteStore, Store, StoreError, TaskFilter, seeded_sample,
};
use serde_json::{Value, json};

fn pg_url() -> String {
    std::env::var("ENVSYNTH_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh schema name per test and process, so runs never see each other's rows.
fn schema(test: &str) -> String {
    format!("t_{}_{}", test, std::process::id())
}

async fn sqlite() -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("registry.db"))
        .await
        .unwrap();
    (store, dir)
}

async fn pg(test: &str) -> PgStore {
    PgStore::open_in_schema(&pg_url(), &schema(test))
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} is needed for these tests: {e}", pg_url()))
}

fn travel() -> envsynth_travel_like::Env {
    envsynth_travel_like::Env::new()
}

/// The travel environment, through the core trait only.
mod envsynth_travel_like {
    pub struct Env(pub Box<dyn envsynth_core::Environment>);
    impl Env {
        pub fn new() -> Env {
            Env(Box::new(envsynth_travel::TravelPlanning::new()))
        }
    }
}

fn env_record(env: &dyn Environment) -> EnvironmentRecord {
    let s = env.spec();
    EnvironmentRecord {
        id: s.id.clone(),
        version: s.version.clone(),
        content_hash: s.content_hash.clone(),
        description: s.description.clone(),
        metadata: EnvironmentMetadata {
            tags: vec!["planning".into(), "tools".into()],
            license: "Apache-2.0".into(),
            levels: s.levels.clone(),
            tool_specs: env.tool_specs().to_vec(),
            provenance: json!({"generator": "test"}),
            ..EnvironmentMetadata::default()
        },
    }
}

fn tasks(env: &dyn Environment, n: u64, level: &str) -> Vec<Task> {
    (0..n)
        .map(|index| {
            generate(
                env,
                &TaskRequest {
                    seed: 5,
                    index,
                    level: level.into(),
                    overrides: Value::Null,
                },
            )
            .unwrap()
            .task
        })
        .collect()
}

async fn versions_are_immutable(s: &impl Store) {
    let t = travel();
    let mut rec = env_record(t.0.as_ref());
    assert_eq!(s.put_environment(&rec).await.unwrap(), Put::Created);
    assert_eq!(s.put_environment(&rec).await.unwrap(), Put::Unchanged);
    let stored = s.environment(&rec.id, &rec.version).await.unwrap().unwrap();
    assert_eq!(stored, rec);
    rec.content_hash = "sha256:0000".into();
    match s.put_environment(&rec).await {
        Err(StoreError::Conflict { what, .. }) => assert!(what.contains("travel-planning@")),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // The original is untouched.
    let again = s.environment(&rec.id, &rec.version).await.unwrap().unwrap();
    assert_eq!(again, stored);

    let (mut train, test) = (
        tasks(t.0.as_ref(), 6, "easy"),
        tasks(t.0.as_ref(), 3, "hard"),
    );
    let members: Vec<(String, Task)> = train
        .iter()
        .map(|t| ("train".to_string(), t.clone()))
        .chain(test.iter().map(|t| ("test".to_string(), t.clone())))
        .collect();
    assert_eq!(
        s.put_task_set("travel-mix", "1", &members).await.unwrap(),
        Put::Created
    );
    assert_eq!(
        s.put_task_set("travel-mix", "1", &members).await.unwrap(),
        Put::Unchanged
    );
    let fewer = &members[1..];
    assert!(matches!(
        s.put_task_set("travel-mix", "1", fewer).await,
        Err(StoreError::Conflict { .. })
    ));
    // A new version may share tasks with the old one; tasks are stored once.
    assert_eq!(
        s.put_task_set("travel-mix", "2", fewer).await.unwrap(),
        Put::Created
    );
    assert_eq!(s.count_tasks(&TaskFilter::default()).await.unwrap(), 9);
    let set1 = s.task_set("travel-mix", "1").await.unwrap().unwrap();
    assert_eq!(
        set1.content_hash,
        envsynth_registry::task_set_hash(&members)
    );
    assert_eq!(
        set1.splits,
        [("test".to_string(), 3), ("train".to_string(), 6)]
    );
    assert!(s.task_set("travel-mix", "3").await.unwrap().is_none());
    let set = |split: &str| TaskFilter {
        set: Some(("travel-mix".into(), "1".into())),
        split: Some(split.into()),
        ..TaskFilter::default()
    };
    assert_eq!(s.count_tasks(&set("train")).await.unwrap(), 6);
    assert_eq!(s.count_tasks(&set("test")).await.unwrap(), 3);
    let level = TaskFilter {
        level: Some("hard".into()),
        ..TaskFilter::default()
    };
    assert_eq!(s.count_tasks(&level).await.unwrap(), 3);
    let ids = s.task_ids(&set("train"), 2, 3).await.unwrap();
    assert_eq!(
        ids,
        train[2..5].iter().map(|t| t.id.clone()).collect::<Vec<_>>()
    );
    let got = s.task(&train[0].id).await.unwrap().unwrap();
    assert_eq!(
        serde_json::to_string(&got).unwrap(),
        serde_json::to_string(&train[0]).unwrap()
    );
    assert!(s.task("sha256:nothing").await.unwrap().is_none());

    // A task whose id does not match its content is refused, naming the member.
    train[0].seed += 1;
    let bad = vec![("train".to_string(), train[0].clone())];
    match s.put_task_set("broken", "1", &bad).await {
        Err(StoreError::Invalid(m)) => assert!(m.contains("members[0]"), "{m}"),
        other => panic!("expected invalid, got {other:?}"),
    }
    assert!(
        s.environment("travel-planning", "9.9.9")
            .await
            .unwrap()
            .is_none()
    );
}

async fn search_and_pagination(s: &impl Store) {
    for i in 0..5 {
        let rec = EnvironmentRecord {
            id: format!("toy-{i}"),
            version: "1.0.0".into(),
            content_hash: format!("sha256:{i}"),
            description: if i % 2 == 0 {
                "Even toy"
            } else {
                "Odd 100% toy"
            }
            .into(),
            metadata: EnvironmentMetadata {
                tags: vec![if i % 2 == 0 { "even" } else { "odd" }.into(), "toy".into()],
                ..EnvironmentMetadata::default()
            },
        };
        s.put_environment(&rec).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = s
            .environments(&EnvironmentQuery {
                after,
                limit: 2,
                ..Default::default()
            })
            .await
            .unwrap();
        seen.extend(page.environments.iter().map(|e| e.id.clone()));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, ["toy-0", "toy-1", "toy-2", "toy-3", "toy-4"]);
    let odd = s
        .environments(&EnvironmentQuery {
            text: Some("ODD 100%".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(odd.environments.len(), 2);
    let tagged = |tag: &str, text: Option<&str>| EnvironmentQuery {
        tag: Some(tag.into()),
        text: text.map(str::to_string),
        limit: 10,
        ..Default::default()
    };
    let even = s.environments(&tagged("even", None)).await.unwrap();
    let ids: Vec<&str> = even.environments.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["toy-0", "toy-2", "toy-4"]);
    assert_eq!(even.environments[0].metadata.tags, ["even", "toy"]);
    let toy_3 = s.environments(&tagged("toy", Some("toy-3"))).await.unwrap();
    assert_eq!(toy_3.environments.len(), 1);
    assert!(
        s.environments(&tagged("' OR 1=1 --", None))
            .await
            .unwrap()
            .environments
            .is_empty()
    );
    // LIKE wildcards and quotes in the search text are literal.
    for text in ["_", "%' OR '1'='1", "'; DROP TABLE environments; --"] {
        let none = s
            .environments(&EnvironmentQuery {
                text: Some(text.into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(none.environments.is_empty(), "{text}");
    }
    assert_eq!(
        s.environments(&EnvironmentQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
        .environments
        .len(),
        5
    );
    // Names the registry cannot serve safely are refused.
    let mut bad = EnvironmentRecord {
        id: "x'; DROP TABLE tasks; --".into(),
        version: "1".into(),
        content_hash: "sha256:1".into(),
        description: String::new(),
        metadata: EnvironmentMetadata::default(),
    };
    assert!(matches!(
        s.put_environment(&bad).await,
        Err(StoreError::Invalid(_))
    ));
    bad.id = "ok".into();
    bad.version = String::new();
    assert!(matches!(
        s.put_environment(&bad).await,
        Err(StoreError::Invalid(_))
    ));
    bad.version = "1".into();
    bad.metadata.tags = vec!["Not A Tag".into()];
    match s.put_environment(&bad).await {
        Err(StoreError::Invalid(m)) => assert!(m.contains("tags[0]"), "{m}"),
        other => panic!("expected invalid, got {other:?}"),
    }
}

/// Seeded sampling draws from `candidates`: the same seed and content give the same tasks;
/// exclusions and difficulty bands hold; the revision moves on every write and only then.
async fn sampling_bands_and_revision(s: &impl Store) {
    let t = travel();
    let r0 = s.revision().await.unwrap();
    s.put_environment(&env_record(t.0.as_ref())).await.unwrap();
    let r1 = s.revision().await.unwrap();
    assert!(r1 > r0);
    s.put_environment(&env_record(t.0.as_ref())).await.unwrap();
    assert_eq!(
        s.revision().await.unwrap(),
        r1,
        "an unchanged write is no change"
    );
    let all = tasks(t.0.as_ref(), 12, "easy");
    let members: Vec<(String, Task)> = all
        .iter()
        .enumerate()
        .map(|(i, t)| (if i < 8 { "train" } else { "test" }.to_string(), t.clone()))
        .collect();
    s.put_task_set("pool", "1", &members).await.unwrap();
    let r2 = s.revision().await.unwrap();
    assert!(r2 > r1);
    let train = TaskFilter {
        set: Some(("pool".into(), "1".into())),
        split: Some("train".into()),
        ..TaskFilter::default()
    };
    let candidates = s.candidates(&train).await.unwrap();
    let want: Vec<String> = all[..8].iter().map(|t| t.id.clone()).collect();
    assert_eq!(candidates, want);
    let none = Default::default();
    let a = seeded_sample(&candidates, 7, 5, &none);
    assert_eq!(a, seeded_sample(&candidates, 7, 5, &none));
    assert_ne!(a, seeded_sample(&candidates, 8, 5, &none));
    let distinct: std::collections::BTreeSet<_> = a.iter().collect();
    assert_eq!(distinct.len(), 5);
    let exclude: std::collections::HashSet<&str> =
        candidates[..6].iter().map(String::as_str).collect();
    let rest = seeded_sample(&candidates, 7, 5, &exclude);
    let mut sorted = rest.clone();
    sorted.sort();
    let mut expect = vec![candidates[6].as_str(), candidates[7].as_str()];
    expect.sort();
    assert_eq!(sorted, expect, "only the two not excluded remain");

    // Bands: task 0 passed 3 of 4, task 1 passed 0 of 4, task 2 passed 1 of 1.
    let mut rollouts = Vec::new();
    for (k, (task, passes, n)) in [(&all[0], 3, 4), (&all[1], 0, 4), (&all[2], 1, 1)]
        .into_iter()
        .enumerate()
    {
        let p = t.0.prepare(task).unwrap();
        let planted: Value = serde_json::from_str(task.reference_solution.get()).unwrap();
        for i in 0..n {
            let sub = if i < passes {
                planted.clone()
            } else {
                Value::Null
            };
            rollouts.push(RolloutRecord {
                rollout_id: format!("b{k}-{i}"),
                task_id: task.id.clone(),
                policy: "pol".into(),
                sample_seed: i,
                verdict: p.verify(&sub),
            });
        }
    }
    s.record_rollouts(&rollouts).await.unwrap();
    let r3 = s.revision().await.unwrap();
    assert!(r3 > r2);
    s.record_rollouts(&rollouts).await.unwrap();
    assert_eq!(
        s.revision().await.unwrap(),
        r3,
        "a repeated batch is no change"
    );
    let band = |min: f64, max: f64, min_attempts: u64| TaskFilter {
        pass_band: Some(PassBand {
            policy: "pol".into(),
            min,
            max,
            min_attempts,
        }),
        ..train.clone()
    };
    let ids = |v: &[usize]| v.iter().map(|&i| all[i].id.clone()).collect::<Vec<_>>();
    assert_eq!(s.candidates(&band(0.5, 0.9, 1)).await.unwrap(), ids(&[0]));
    assert_eq!(s.candidates(&band(0.0, 0.0, 1)).await.unwrap(), ids(&[1]));
    assert_eq!(
        s.candidates(&band(0.75, 1.0, 1)).await.unwrap(),
        ids(&[0, 2])
    );
    assert_eq!(s.candidates(&band(0.75, 1.0, 2)).await.unwrap(), ids(&[0]));
    assert_eq!(s.count_tasks(&band(0.0, 1.0, 1)).await.unwrap(), 3);
    let mut other = band(0.0, 1.0, 1);
    other.pass_band.as_mut().unwrap().policy = "' OR 1=1 --".into();
    assert_eq!(s.count_tasks(&other).await.unwrap(), 0);
    let per_policy = s.difficulties(&all[0].id).await.unwrap();
    assert_eq!(per_policy.len(), 1);
    assert_eq!((per_policy[0].attempts, per_policy[0].passes), (4, 3));
}

async fn rollouts_and_difficulty(s: &impl Store) {
    let t = travel();
    s.put_environment(&env_record(t.0.as_ref())).await.unwrap();
    let task = tasks(t.0.as_ref(), 1, "medium").remove(0);
    s.put_task_set("one", "1", &[("train".into(), task.clone())])
        .await
        .unwrap();
    let prepared = t.0.prepare(&task).unwrap();
    let planted: Value = serde_json::from_str(task.reference_solution.get()).unwrap();
    let mut rollouts = Vec::new();
    for seed in 0..10u64 {
        let sub = if seed < 3 {
            planted.clone()
        } else {
            Value::Null
        };
        rollouts.push(RolloutRecord {
            rollout_id: format!("r-{seed}"),
            task_id: task.id.clone(),
            policy: "oracle-ish".into(),
            sample_seed: seed,
            verdict: prepared.verify(&sub),
        });
    }
    let mut masked = envsynth_core::Verdict::rejected(
        &task.id,
        envsynth_core::FailureKind::SandboxTimeout,
        "slow".into(),
        [],
    );
    masked.task_id = task.id.clone();
    rollouts.push(RolloutRecord {
        rollout_id: "r-masked".into(),
        task_id: task.id.clone(),
        policy: "oracle-ish".into(),
        sample_seed: 99,
        verdict: masked,
    });
    assert_eq!(s.record_rollouts(&rollouts).await.unwrap(), 11);
    assert_eq!(s.record_rollouts(&rollouts).await.unwrap(), 0, "idempotent");
    let d = s.difficulty(&task.id, "oracle-ish").await.unwrap();
    assert_eq!((d.attempts, d.passes, d.masked), (10, 3, 1));
    let p1 = d.pass_at(1).unwrap();
    assert!((p1 - 0.3).abs() < 1e-12, "{p1}");
    // 1 - C(7,5)/C(10,5) = 1 - 21/252
    assert!((d.pass_at(5).unwrap() - (1.0 - 21.0 / 252.0)).abs() < 1e-12);
    assert_eq!(d.pass_at(11), None);
    let none = s.difficulty(&task.id, "nobody").await.unwrap();
    assert_eq!((none.attempts, none.passes), (0, 0));

    // A rollout for an unknown task is refused and nothing of its batch is kept.
    let mut batch = rollouts[..1].to_vec();
    batch[0].rollout_id = "r-new".into();
    let mut ghost = rollouts[1].clone();
    ghost.rollout_id = "r-ghost".into();
    ghost.task_id = "sha256:ghost".into();
    ghost.verdict.task_id = "sha256:ghost".into();
    batch.push(ghost);
    match s.record_rollouts(&batch).await {
        Err(StoreError::NotFound(m)) => assert!(m.contains("rollouts[1].task_id"), "{m}"),
        other => panic!("expected not found, got {other:?}"),
    }
    assert_eq!(
        s.difficulty(&task.id, "oracle-ish").await.unwrap().attempts,
        10
    );
}

/// Several writers at once (tasks on the runtime's threads, each with its own connection) lose
/// nothing: every rollout of every writer is counted exactly once.
async fn concurrent_writers_lose_nothing<S: Store + Clone>(s: &S) {
    let t = travel();
    s.put_environment(&env_record(t.0.as_ref())).await.unwrap();
    let task = tasks(t.0.as_ref(), 1, "easy").remove(0);
    s.put_task_set("c", "1", &[("train".into(), task.clone())])
        .await
        .unwrap();
    let verdict = t.0.prepare(&task).unwrap().verify(&Value::Null);
    let mut handles = Vec::new();
    for w in 0..8 {
        let s = s.clone();
        let (task_id, verdict) = (task.id.clone(), verdict.clone());
        handles.push(tokio::spawn(async move {
            for i in 0..25u64 {
                let r = RolloutRecord {
                    rollout_id: format!("w{w}-{i}"),
                    task_id: task_id.clone(),
                    policy: "p".into(),
                    sample_seed: i,
                    verdict: verdict.clone(),
                };
                // Every writer also re-sends one shared rollout: it must count once.
                let shared = RolloutRecord {
                    rollout_id: "shared".into(),
                    ..r.clone()
                };
                s.record_rollouts(&[r, shared]).await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(
        s.difficulty(&task.id, "p").await.unwrap().attempts,
        8 * 25 + 1
    );
}

macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let (s, _dir) = super::sqlite().await;
                super::$name(&s).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                let s = super::pg(stringify!($name)).await;
                super::$name(&s).await;
            }
        }
    };
}

both!(versions_are_immutable);
both!(search_and_pagination);
both!(rollouts_and_difficulty);
both!(concurrent_writers_lose_nothing);
both!(sampling_bands_and_revision);

/// Opening a registry while another connection writes to the file must wait for it, not fail.
/// Switching the file into WAL needs an exclusive lock, and a connection that holds a shared
/// lock while another holds the write lock gets `database is locked` at once (SQLite skips the
/// busy timeout where waiting could deadlock), so the store retries that switch. This is what
/// several `envsynth registry import` processes starting on a new file together hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_open_waits_out_a_writer_of_a_new_file() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registry.db");
    let mut writer = sqlx::SqliteConnection::connect_with(
        &sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true),
    )
    .await
    .unwrap();
    // Then a write transaction: the file's write lock, held until COMMIT.
    for sql in [
        "CREATE TABLE held (x INTEGER)",
        "BEGIN IMMEDIATE",
        "INSERT INTO held VALUES (1)",
    ] {
        sqlx::query(sql).execute(&mut writer).await.unwrap();
    }

    let file = path.clone();
    let opening = tokio::spawn(async move { SqliteStore::open(&path).await });
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(
        !opening.is_finished(),
        "open returned while another connection held the write lock: {:?}",
        opening.await.unwrap().err()
    );
    sqlx::query("COMMIT").execute(&mut writer).await.unwrap();
    let store = opening.await.unwrap().unwrap();
    // The file is in WAL mode: its header's read and write versions (bytes 18 and 19) are 2.
    let header = std::fs::read(&file).unwrap();
    assert_eq!(
        &header[18..20],
        &[2, 2],
        "the registry file is not in WAL mode"
    );
    // The opened store works.
    let page = store
        .environments(&EnvironmentQuery {
            limit: 10,
            ..EnvironmentQuery::default()
        })
        .await
        .unwrap();
    assert!(page.environments.is_empty());
}
