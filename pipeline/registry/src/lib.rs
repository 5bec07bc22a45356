//! The environment registry: environments with immutable, content-hashed versions; immutable,
//! versioned task sets with named splits; tasks; and rollout results with per-policy difficulty
//! statistics. One [`Store`] trait with two implementations, [`SqliteStore`] (embedded, the
//! default: WAL, busy timeout, foreign keys, `BEGIN IMMEDIATE` for every write) and [`PgStore`]
//! (PostgreSQL, for many trainers and workers). Each runs its embedded migrations when opened.
//! The only crate that names sqlx.
//!
//! The SQL is shared: both dialects accept `$1`-style parameters (SQLite numbers them by first
//! appearance, so every statement uses them in ascending order), `ON CONFLICT DO NOTHING` and
//! `RETURNING`. JSON is stored as text in both.

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
};
use sqlx::{Connection, Row};

use envsynth_core::Task;

pub mod curriculum;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An immutable record exists with other content.
    #[error(
        "{what} already exists with different content (content hash {existing}, not {offered}); publish a new version"
    )]
    Conflict {
        what: String,
        existing: String,
        offered: String,
    },
    /// A reference to something that is not in the registry.
    #[error("{0}")]
    NotFound(String),
    /// Input the registry refuses, naming the field.
    #[error("{0}")]
    Invalid(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// What a write did: it created the record, or an identical one was already there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Put {
    Created,
    Unchanged,
}

/// One version of an environment and what a trainer needs to know about it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentRecord {
    pub id: String,
    pub version: String,
    /// `sha256:` of everything that determines its tasks and verdicts.
    pub content_hash: String,
    pub description: String,
    #[serde(flatten)]
    pub metadata: EnvironmentMetadata,
}

impl EnvironmentRecord {
    /// The record of an environment version: identity from its spec, and `metadata` (whose
    /// tags, license and levels [`EnvironmentMetadata::of_spec`] fills from the spec).
    pub fn from_spec(spec: &envsynth_core::EnvironmentSpec, metadata: EnvironmentMetadata) -> Self {
        EnvironmentRecord {
            id: spec.id.clone(),
            version: spec.version.clone(),
            content_hash: spec.content_hash.clone(),
            description: spec.description.clone(),
            metadata,
        }
    }
}

impl EnvironmentMetadata {
    /// The metadata a spec carries (tags, license, levels); the rest empty.
    pub fn of_spec(spec: &envsynth_core::EnvironmentSpec) -> Self {
        EnvironmentMetadata {
            tags: spec.tags.clone(),
            license: spec.license.clone(),
            levels: spec.levels.clone(),
            ..EnvironmentMetadata::default()
        }
    }
}

/// What the registry keeps about an environment version besides its identity.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EnvironmentMetadata {
    /// Search keywords, each 1-64 of `[a-z0-9_-]`.
    pub tags: Vec<String>,
    /// SPDX license expression of its tasks and data.
    pub license: String,
    /// Difficulty levels, easiest first.
    pub levels: Vec<String>,
    pub tool_specs: Vec<envsynth_core::ToolSpec>,
    pub verifier: VerifierIdentity,
    /// Where it came from: generator name and version, source repository, paper.
    pub provenance: Value,
    /// Reference scores of known policies.
    pub baselines: Vec<Baseline>,
}

/// Which code computes an environment's verdicts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VerifierIdentity {
    /// `native` (compiled into envsynth) or `wasm` (a sandboxed component).
    pub kind: String,
    /// The native build (`envsynth <version>`) or the component's `sha256:`.
    pub digest: String,
}

/// A policy's reference score on an environment (`metric`: `pass@1`, `final_pass_rate`, ...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    pub policy: String,
    pub metric: String,
    pub value: f64,
}

/// A filter for listing environments.
#[derive(Clone, Debug, Default)]
pub struct EnvironmentQuery {
    /// Substring of the id or description (case-insensitive ASCII).
    pub text: Option<String>,
    /// Only environments with this tag.
    pub tag: Option<String>,
    /// Return environments registered after this cursor (from the previous page).
    pub after: Option<i64>,
    pub limit: u32,
}

/// A page of environments and the cursor of the next one.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EnvironmentPage {
    pub environments: Vec<EnvironmentRecord>,
    pub next: Option<i64>,
}

/// An immutable, versioned set of tasks with named splits.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskSetRecord {
    pub name: String,
    pub version: String,
    pub content_hash: String,
    /// Each split's name and size, by name.
    pub splits: Vec<(String, u64)>,
}

/// Which tasks a query is about.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TaskFilter {
    pub env_id: Option<String>,
    pub level: Option<String>,
    /// Only members of this task set (`name`, `version`) ...
    pub set: Option<(String, String)>,
    /// ... in this split.
    pub split: Option<String>,
    /// Only tasks whose measured pass rate for a policy lies in a band.
    pub pass_band: Option<PassBand>,
}

/// A difficulty band: tasks a policy passed in `min..=max` of at least `min_attempts` unmasked
/// rollouts. Tasks with fewer attempts are outside every band.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PassBand {
    pub policy: String,
    pub min: f64,
    pub max: f64,
    pub min_attempts: u64,
}

/// One scored rollout. `rollout_id` is the caller's idempotency key: recording it twice changes
/// nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutRecord {
    pub rollout_id: String,
    pub task_id: String,
    pub policy: String,
    pub sample_seed: u64,
    pub verdict: envsynth_core::Verdict,
}

/// Per (task, policy) difficulty statistics. Masked rollouts (not the agent's fault) are counted
/// apart and left out of attempts and passes.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Difficulty {
    pub task_id: String,
    pub policy: String,
    pub attempts: u64,
    pub passes: u64,
    pub masked: u64,
}

impl Difficulty {
    /// The unbiased pass@k estimator, 1 - C(n-c, k) / C(n, k), over the unmasked attempts; `None`
    /// when there are fewer than k attempts.
    pub fn pass_at(&self, k: u64) -> Option<f64> {
        envsynth_core::metrics::pass_at_k(self.attempts, self.passes, k)
    }

    /// The unbiased pass^k estimator, C(c, k) / C(n, k): the chance that k attempts all pass.
    pub fn pass_hat(&self, k: u64) -> Option<f64> {
        envsynth_core::metrics::pass_hat_k(self.attempts, self.passes, k)
    }
}

/// The registry's storage. Both implementations pass the same test suite.
pub trait Store: Send + Sync + 'static {
    /// Register an environment version. The same `id@version` with the same content hash is
    /// `Unchanged`; with another content hash it is a [`StoreError::Conflict`].
    fn put_environment(
        &self,
        env: &EnvironmentRecord,
    ) -> impl Future<Output = Result<Put, StoreError>> + Send;
    fn environment(
        &self,
        id: &str,
        version: &str,
    ) -> impl Future<Output = Result<Option<EnvironmentRecord>, StoreError>> + Send;
    fn environments(
        &self,
        query: &EnvironmentQuery,
    ) -> impl Future<Output = Result<EnvironmentPage, StoreError>> + Send;
    /// Publish a task set: every task (stored once, whatever sets hold it) and its membership,
    /// atomically. Each task's environment must be registered and its id must match its content.
    /// Publishing the same set again is `Unchanged`; other content under the same name and
    /// version is a conflict.
    fn put_task_set(
        &self,
        name: &str,
        version: &str,
        members: &[(String, Task)],
    ) -> impl Future<Output = Result<Put, StoreError>> + Send;
    /// A task set and the size of each of its splits.
    fn task_set(
        &self,
        name: &str,
        version: &str,
    ) -> impl Future<Output = Result<Option<TaskSetRecord>, StoreError>> + Send;
    fn task(&self, id: &str) -> impl Future<Output = Result<Option<Task>, StoreError>> + Send;
    fn count_tasks(
        &self,
        filter: &TaskFilter,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Task ids in a stable order (set position, else id), from `offset`, at most `limit`.
    fn task_ids(
        &self,
        filter: &TaskFilter,
        offset: u64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
    /// Record rollouts atomically; returns how many were new.
    fn record_rollouts(
        &self,
        rollouts: &[RolloutRecord],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Per-policy difficulty statistics of a task, by policy.
    fn difficulties(
        &self,
        task_id: &str,
    ) -> impl Future<Output = Result<Vec<Difficulty>, StoreError>> + Send;
    /// One policy's statistics on a task (zeros when it has none).
    fn difficulty(
        &self,
        task_id: &str,
        policy: &str,
    ) -> impl Future<Output = Result<Difficulty, StoreError>> + Send {
        async move {
            let all = self.difficulties(task_id).await?;
            Ok(all
                .into_iter()
                .find(|d| d.policy == policy)
                .unwrap_or_else(|| Difficulty {
                    task_id: task_id.to_string(),
                    policy: policy.to_string(),
                    ..Difficulty::default()
                }))
        }
    }
    /// One policy's outcomes on every task it has unmasked rollouts of, counting only its
    /// `recent` latest rollouts of each task (all of them when `None`), by task id.
    fn outcomes(
        &self,
        policy: &str,
        recent: Option<u32>,
    ) -> impl Future<Output = Result<Vec<(String, curriculum::Outcomes)>, StoreError>> + Send;
    /// Every task id the filter selects, once each, in the order of [`Store::task_ids`]: the
    /// population that seeded sampling draws from.
    fn candidates(
        &self,
        filter: &TaskFilter,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
    /// A counter that every write that changes the registry increases: equal revisions mean
    /// equal content, so results computed at one revision can be reused until it moves.
    fn revision(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// The content hash of a task set: its members in order.
pub fn task_set_hash(members: &[(String, Task)]) -> String {
    let mut parts: Vec<(&str, &[u8])> = Vec::with_capacity(members.len() * 2);
    for (split, task) in members {
        parts.push(("split", split.as_bytes()));
        parts.push(("task", task.id.as_bytes()));
    }
    envsynth_core::hash::sha256_parts(parts)
}

fn check_name(what: &str, s: &str) -> Result<(), StoreError> {
    if s.is_empty()
        || s.len() > 128
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(StoreError::Invalid(format!(
            "{what} `{}` must be 1-128 of [A-Za-z0-9._-]",
            s.escape_debug()
        )));
    }
    Ok(())
}

fn check_members(members: &[(String, Task)]) -> Result<(), StoreError> {
    for (i, (split, task)) in members.iter().enumerate() {
        check_name(&format!("members[{i}].split"), split)?;
        let computed = task.compute_id();
        if task.id != computed {
            return Err(StoreError::Invalid(format!(
                "members[{i}]: task id {} does not match its content ({computed})",
                task.id
            )));
        }
    }
    Ok(())
}

fn check_metadata(m: &EnvironmentMetadata) -> Result<(), StoreError> {
    if m.tags.len() > 32 {
        return Err(StoreError::Invalid("tags: at most 32".into()));
    }
    for (i, t) in m.tags.iter().enumerate() {
        check_name(&format!("tags[{i}]"), t)?;
    }
    if m.license.len() > 128 {
        return Err(StoreError::Invalid("license: longer than 128 bytes".into()));
    }
    Ok(())
}

/// An immutable record that is already registered: the same content hash is `Unchanged`,
/// another one a conflict naming `what`.
fn already(
    existing: String,
    offered: &str,
    what: impl FnOnce() -> String,
) -> Result<Put, StoreError> {
    if existing == offered {
        Ok(Put::Unchanged)
    } else {
        Err(StoreError::Conflict {
            what: what(),
            existing,
            offered: offered.to_string(),
        })
    }
}

const BUMP_REVISION: &str = "UPDATE registry_revision SET n = n + 1 WHERE id = 1";

fn json_text(v: &impl Serialize) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Invalid(e.to_string()))
}

fn like_pattern(text: &str) -> String {
    let escaped: String = text
        .to_ascii_lowercase()
        .chars()
        .flat_map(|c| match c {
            '%' | '_' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect();
    format!("%{escaped}%")
}

/// A bound SQL parameter.
enum Param {
    Text(String),
    Real(f64),
    Int(i64),
}

/// The FROM and WHERE clauses and their parameters for a task filter; parameters are numbered
/// from `$1` in order of appearance. The second value is the ORDER BY of a stable listing.
fn task_from_where(f: &TaskFilter) -> (String, &'static str, Vec<Param>) {
    let mut clauses = Vec::new();
    let mut params = Vec::new();
    let mut p = |clause: &str, v: Param, params: &mut Vec<Param>| {
        params.push(v);
        clauses.push(clause.replacen('?', &format!("${}", params.len()), 1));
    };
    if let Some(e) = &f.env_id {
        p("t.env_id = ?", Param::Text(e.clone()), &mut params);
    }
    if let Some(l) = &f.level {
        p("t.level = ?", Param::Text(l.clone()), &mut params);
    }
    if let Some((name, version)) = &f.set {
        p("m.set_name = ?", Param::Text(name.clone()), &mut params);
        p(
            "m.set_version = ?",
            Param::Text(version.clone()),
            &mut params,
        );
        if let Some(s) = &f.split {
            p("m.split = ?", Param::Text(s.clone()), &mut params);
        }
    }
    if let Some(b) = &f.pass_band {
        // One `?` at a time, in order, so each gets the next number.
        let mut sub = String::from(
            "t.task_id IN (SELECT task_id FROM rollouts WHERE policy = ? AND NOT masked \
             GROUP BY task_id HAVING COUNT(*) >= ? \
             AND CAST(SUM(CASE WHEN passed THEN 1 ELSE 0 END) AS DOUBLE PRECISION) >= ? * CAST(COUNT(*) AS DOUBLE PRECISION) \
             AND CAST(SUM(CASE WHEN passed THEN 1 ELSE 0 END) AS DOUBLE PRECISION) <= ? * CAST(COUNT(*) AS DOUBLE PRECISION))",
        );
        for v in [
            Param::Text(b.policy.clone()),
            Param::Int(b.min_attempts.max(1).min(i64::MAX as u64) as i64),
            Param::Real(b.min),
            Param::Real(b.max),
        ] {
            params.push(v);
            sub = sub.replacen('?', &format!("${}", params.len()), 1);
        }
        clauses.push(sub);
    }
    let (from, order) = if f.set.is_some() {
        (
            "tasks t JOIN task_set_members m ON m.task_id = t.task_id",
            "m.split, m.position",
        )
    } else {
        ("tasks t", "t.task_id")
    };
    let clause = if clauses.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", clauses.join(" AND "))
    };
    (format!("{from}{clause}"), order, params)
}

/// Bind the parameters of [`task_from_where`] to a query.
macro_rules! bind_params {
    ($q:expr, $params:expr) => {{
        let mut q = $q;
        for p in $params {
            q = match p {
                Param::Text(v) => q.bind(v.as_str()),
                Param::Real(v) => q.bind(*v),
                Param::Int(v) => q.bind(*v),
            };
        }
        q
    }};
}

/// `n` distinct members of `candidates` (fewer if it runs out), none in `exclude`, drawn with a
/// ChaCha generator seeded by `seed`: the same candidates, seed, count and exclusions give the
/// same sample, in the same order.
pub fn seeded_sample<'a>(
    candidates: &'a [String],
    seed: u64,
    n: usize,
    exclude: &std::collections::HashSet<&str>,
) -> Vec<&'a str> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n.min(candidates.len()));
    if n == 0 || candidates.is_empty() {
        return out;
    }
    // Draw by rejection while most candidates are still eligible; when the draws would mostly
    // miss, shuffle the eligible rest instead. Which path runs depends only on the inputs.
    let eligible = candidates.len() - exclude.len().min(candidates.len());
    if eligible >= 2 * n && n <= 4096 {
        let mut taken = std::collections::HashSet::with_capacity(n);
        while out.len() < n {
            let i = rng.random_range(0..candidates.len());
            let id = candidates[i].as_str();
            if !exclude.contains(id) && taken.insert(i) {
                out.push(id);
            }
        }
        return out;
    }
    let mut rest: Vec<&str> = candidates
        .iter()
        .map(String::as_str)
        .filter(|id| !exclude.contains(id))
        .collect();
    let take = n.min(rest.len());
    for i in 0..take {
        let j = rng.random_range(i..rest.len());
        rest.swap(i, j);
    }
    rest.truncate(take);
    rest
}

fn parse_task(body: &str) -> Result<Task, StoreError> {
    Task::from_json(body).map_err(|e| StoreError::Invalid(format!("stored task: {e}")))
}

macro_rules! store_impl {
    ($store:ident, $begin:expr, $lock:expr, $rollout_order:expr) => {
        impl Store for $store {
            async fn put_environment(&self, env: &EnvironmentRecord) -> Result<Put, StoreError> {
                check_name("environment id", &env.id)?;
                check_name("environment version", &env.version)?;
                check_metadata(&env.metadata)?;
                let metadata = json_text(&env.metadata)?;
                let mut tx = self.pool.begin_with($begin).await?;
                if !$lock.is_empty() {
                    sqlx::query($lock).execute(&mut *tx).await?;
                }
                let existing: Option<String> = sqlx::query_scalar(
                    "SELECT content_hash FROM environments WHERE env_id = $1 AND version = $2",
                )
                .bind(&env.id)
                .bind(&env.version)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(existing) = existing {
                    return already(existing, &env.content_hash, || {
                        format!("environment {}@{}", env.id, env.version)
                    });
                }
                sqlx::query(
                    "INSERT INTO environments (env_id, version, content_hash, description, metadata, seq) \
                     VALUES ($1, $2, $3, $4, $5, (SELECT COALESCE(MAX(seq), 0) + 1 FROM environments))",
                )
                .bind(&env.id)
                .bind(&env.version)
                .bind(&env.content_hash)
                .bind(&env.description)
                .bind(&metadata)
                .execute(&mut *tx)
                .await?;
                let tags: std::collections::BTreeSet<&String> = env.metadata.tags.iter().collect();
                for tag in tags {
                    sqlx::query(
                        "INSERT INTO environment_tags (env_id, version, tag) VALUES ($1, $2, $3)",
                    )
                    .bind(&env.id)
                    .bind(&env.version)
                    .bind(tag)
                    .execute(&mut *tx)
                    .await?;
                }
                sqlx::query(BUMP_REVISION).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(Put::Created)
            }

            async fn environment(
                &self,
                id: &str,
                version: &str,
            ) -> Result<Option<EnvironmentRecord>, StoreError> {
                let row = sqlx::query(
                    "SELECT env_id, version, content_hash, description, metadata, seq \
                     FROM environments WHERE env_id = $1 AND version = $2",
                )
                .bind(id)
                .bind(version)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|r| env_row(&r).map(|(e, _)| e)).transpose()
            }

            async fn environments(
                &self,
                q: &EnvironmentQuery,
            ) -> Result<EnvironmentPage, StoreError> {
                let limit = q.limit.clamp(1, 1000);
                let pattern = q.text.as_deref().map(like_pattern).unwrap_or_else(|| "%".into());
                let rows = sqlx::query(
                    "SELECT env_id, version, content_hash, description, metadata, seq FROM environments \
                     WHERE seq > $1 AND (LOWER(env_id) LIKE $2 ESCAPE '\\' OR LOWER(description) LIKE $2 ESCAPE '\\') \
                     AND ($3 = '' OR EXISTS (SELECT 1 FROM environment_tags g \
                          WHERE g.env_id = environments.env_id AND g.version = environments.version AND g.tag = $3)) \
                     ORDER BY seq LIMIT $4",
                )
                .bind(q.after.unwrap_or(0))
                .bind(&pattern)
                .bind(q.tag.as_deref().unwrap_or(""))
                .bind(i64::from(limit) + 1)
                .fetch_all(&self.pool)
                .await?;
                let mut environments = Vec::new();
                let mut last = None;
                for r in rows.iter().take(limit as usize) {
                    let (e, seq) = env_row(r)?;
                    environments.push(e);
                    last = Some(seq);
                }
                let next = if rows.len() > limit as usize { last } else { None };
                Ok(EnvironmentPage { environments, next })
            }

            async fn put_task_set(
                &self,
                name: &str,
                version: &str,
                members: &[(String, Task)],
            ) -> Result<Put, StoreError> {
                check_name("task set name", name)?;
                check_name("task set version", version)?;
                check_members(members)?;
                let hash = task_set_hash(members);
                let mut tx = self.pool.begin_with($begin).await?;
                if !$lock.is_empty() {
                    sqlx::query($lock).execute(&mut *tx).await?;
                }
                let existing: Option<String> = sqlx::query_scalar(
                    "SELECT content_hash FROM task_sets WHERE name = $1 AND version = $2",
                )
                .bind(name)
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(existing) = existing {
                    return already(existing, &hash, || format!("task set {name}@{version}"));
                }
                sqlx::query("INSERT INTO task_sets (name, version, content_hash) VALUES ($1, $2, $3)")
                    .bind(name)
                    .bind(version)
                    .bind(&hash)
                    .execute(&mut *tx)
                    .await?;
                let mut positions: std::collections::BTreeMap<&str, i64> = Default::default();
                for (i, (split, task)) in members.iter().enumerate() {
                    let known: Option<String> = sqlx::query_scalar(
                        "SELECT content_hash FROM environments WHERE env_id = $1 AND version = $2",
                    )
                    .bind(&task.environment.id)
                    .bind(&task.environment.version)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if known.is_none() {
                        return Err(StoreError::NotFound(format!(
                            "members[{i}]: environment {} is not registered",
                            task.environment
                        )));
                    }
                    let body = json_text(task)?;
                    sqlx::query(
                        "INSERT INTO tasks (task_id, env_id, env_version, level, seed, task_index, body) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                    )
                    .bind(&task.id)
                    .bind(&task.environment.id)
                    .bind(&task.environment.version)
                    .bind(&task.difficulty.level)
                    .bind(task.seed as i64)
                    .bind(task.index as i64)
                    .bind(&body)
                    .execute(&mut *tx)
                    .await?;
                    let pos = positions.entry(split.as_str()).or_insert(0);
                    sqlx::query(
                        "INSERT INTO task_set_members (set_name, set_version, split, position, task_id) \
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(name)
                    .bind(version)
                    .bind(split)
                    .bind(*pos)
                    .bind(&task.id)
                    .execute(&mut *tx)
                    .await?;
                    *pos += 1;
                }
                sqlx::query(BUMP_REVISION).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(Put::Created)
            }

            async fn task_set(
                &self,
                name: &str,
                version: &str,
            ) -> Result<Option<TaskSetRecord>, StoreError> {
                let hash: Option<String> = sqlx::query_scalar(
                    "SELECT content_hash FROM task_sets WHERE name = $1 AND version = $2",
                )
                .bind(name)
                .bind(version)
                .fetch_optional(&self.pool)
                .await?;
                let Some(content_hash) = hash else {
                    return Ok(None);
                };
                let rows = sqlx::query(
                    "SELECT split, COUNT(*) AS n FROM task_set_members \
                     WHERE set_name = $1 AND set_version = $2 GROUP BY split ORDER BY split",
                )
                .bind(name)
                .bind(version)
                .fetch_all(&self.pool)
                .await?;
                let mut splits = Vec::new();
                for r in &rows {
                    splits.push((r.try_get::<String, _>("split")?, r.try_get::<i64, _>("n")? as u64));
                }
                Ok(Some(TaskSetRecord {
                    name: name.to_string(),
                    version: version.to_string(),
                    content_hash,
                    splits,
                }))
            }

            async fn task(&self, id: &str) -> Result<Option<Task>, StoreError> {
                let body: Option<String> =
                    sqlx::query_scalar("SELECT body FROM tasks WHERE task_id = $1")
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await?;
                body.as_deref().map(parse_task).transpose()
            }

            async fn count_tasks(&self, f: &TaskFilter) -> Result<u64, StoreError> {
                let (from_where, _, params) = task_from_where(f);
                let sql = format!("SELECT COUNT(*) FROM {from_where}");
                let q = bind_params!(sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql)), &params);
                Ok(q.fetch_one(&self.pool).await? as u64)
            }

            async fn task_ids(
                &self,
                f: &TaskFilter,
                offset: u64,
                limit: u32,
            ) -> Result<Vec<String>, StoreError> {
                let (from_where, order, params) = task_from_where(f);
                let n = params.len();
                let sql = format!(
                    "SELECT t.task_id FROM {from_where} ORDER BY {order} LIMIT ${} OFFSET ${}",
                    n + 1,
                    n + 2
                );
                let q = bind_params!(sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql)), &params);
                Ok(q
                    .bind(i64::from(limit.clamp(1, 10_000)))
                    .bind(offset.min(i64::MAX as u64) as i64)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn candidates(&self, f: &TaskFilter) -> Result<Vec<String>, StoreError> {
                let (from_where, order, params) = task_from_where(f);
                let sql = format!("SELECT t.task_id FROM {from_where} ORDER BY {order}");
                let q = bind_params!(sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql)), &params);
                let mut ids = q.fetch_all(&self.pool).await?;
                // A task listed twice in a set is one candidate.
                let mut seen = std::collections::HashSet::with_capacity(ids.len());
                ids.retain(|id| seen.insert(id.clone()));
                Ok(ids)
            }

            async fn revision(&self) -> Result<u64, StoreError> {
                let n: i64 = sqlx::query_scalar("SELECT n FROM registry_revision WHERE id = 1")
                    .fetch_one(&self.pool)
                    .await?;
                Ok(n as u64)
            }

            async fn record_rollouts(&self, rollouts: &[RolloutRecord]) -> Result<u64, StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                let mut created = 0;
                for (i, r) in rollouts.iter().enumerate() {
                    check_name(&format!("rollouts[{i}].rollout_id"), &r.rollout_id)?;
                    if r.verdict.task_id != r.task_id {
                        return Err(StoreError::Invalid(format!(
                            "rollouts[{i}]: the verdict is for task {}, not {}",
                            r.verdict.task_id, r.task_id
                        )));
                    }
                    let exists: Option<String> =
                        sqlx::query_scalar("SELECT task_id FROM tasks WHERE task_id = $1")
                            .bind(&r.task_id)
                            .fetch_optional(&mut *tx)
                            .await?;
                    if exists.is_none() {
                        return Err(StoreError::NotFound(format!(
                            "rollouts[{i}].task_id: no task {}",
                            r.task_id
                        )));
                    }
                    let kind = serde_json::to_value(r.verdict.failure_kind)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default();
                    let done = sqlx::query(
                        "INSERT INTO rollouts (rollout_id, task_id, policy, sample_seed, reward, passed, masked, failure_kind, verdict) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
                    )
                    .bind(&r.rollout_id)
                    .bind(&r.task_id)
                    .bind(&r.policy)
                    .bind(r.sample_seed as i64)
                    .bind(r.verdict.reward)
                    .bind(r.verdict.passed)
                    .bind(r.verdict.mask)
                    .bind(&kind)
                    .bind(json_text(&r.verdict)?)
                    .execute(&mut *tx)
                    .await?;
                    created += done.rows_affected();
                }
                if created > 0 {
                    // Last, so the counter's row lock is held as briefly as possible.
                    sqlx::query(BUMP_REVISION).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(created)
            }

            async fn outcomes(
                &self,
                policy: &str,
                recent: Option<u32>,
            ) -> Result<Vec<(String, curriculum::Outcomes)>, StoreError> {
                const COUNTS: &str = "SELECT task_id, COUNT(*) AS attempts, \
                       COALESCE(SUM(CASE WHEN passed THEN 1 ELSE 0 END), 0) AS passes";
                // Numbering each task's rollouts costs SQLite six times the plain count, so
                // only a window asks for it.
                let rows = match recent {
                    None => {
                        let sql = format!(
                            "{COUNTS} FROM rollouts WHERE policy = $1 AND NOT masked \
                             GROUP BY task_id ORDER BY task_id"
                        );
                        sqlx::query(sqlx::AssertSqlSafe(sql))
                            .bind(policy)
                            .fetch_all(&self.pool)
                            .await?
                    }
                    Some(n) => {
                        let sql = format!(
                            "{COUNTS} FROM (SELECT task_id, passed, ROW_NUMBER() OVER \
                                 (PARTITION BY task_id ORDER BY {} DESC) AS latest \
                               FROM rollouts WHERE policy = $1 AND NOT masked) r \
                             WHERE latest <= $2 GROUP BY task_id ORDER BY task_id",
                            $rollout_order
                        );
                        sqlx::query(sqlx::AssertSqlSafe(sql))
                            .bind(policy)
                            .bind(i64::from(n))
                            .fetch_all(&self.pool)
                            .await?
                    }
                };
                let mut out = Vec::with_capacity(rows.len());
                for row in &rows {
                    out.push((
                        row.try_get("task_id")?,
                        curriculum::Outcomes {
                            attempts: row.try_get::<i64, _>("attempts")? as u64,
                            passes: row.try_get::<i64, _>("passes")? as u64,
                        },
                    ));
                }
                Ok(out)
            }

            async fn difficulties(&self, task_id: &str) -> Result<Vec<Difficulty>, StoreError> {
                let rows = sqlx::query(
                    "SELECT policy, \
                       COALESCE(SUM(CASE WHEN masked THEN 0 ELSE 1 END), 0) AS attempts, \
                       COALESCE(SUM(CASE WHEN passed AND NOT masked THEN 1 ELSE 0 END), 0) AS passes, \
                       COALESCE(SUM(CASE WHEN masked THEN 1 ELSE 0 END), 0) AS masked \
                     FROM rollouts WHERE task_id = $1 GROUP BY policy ORDER BY policy",
                )
                .bind(task_id)
                .fetch_all(&self.pool)
                .await?;
                let mut out = Vec::with_capacity(rows.len());
                for row in &rows {
                    out.push(Difficulty {
                        task_id: task_id.to_string(),
                        policy: row.try_get("policy")?,
                        attempts: row.try_get::<i64, _>("attempts")? as u64,
                        passes: row.try_get::<i64, _>("passes")? as u64,
                        masked: row.try_get::<i64, _>("masked")? as u64,
                    });
                }
                Ok(out)
            }
        }
    };
}

fn env_row<R: Row>(r: &R) -> Result<(EnvironmentRecord, i64), StoreError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    let metadata: String = r.try_get("metadata")?;
    Ok((
        EnvironmentRecord {
            id: r.try_get("env_id")?,
            version: r.try_get("version")?,
            content_hash: r.try_get("content_hash")?,
            description: r.try_get("description")?,
            metadata: serde_json::from_str(&metadata)
                .map_err(|e| StoreError::Invalid(format!("stored metadata: {e}")))?,
        },
        r.try_get("seq")?,
    ))
}

/// The embedded SQLite store: one file, no set-up.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Open (creating if needed) the database file at `path` and run the migrations.
    pub async fn open(path: &std::path::Path) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
            .busy_timeout(SQLITE_BUSY_WAIT)
            .foreign_keys(true);
        // Switching a file into WAL takes an exclusive lock that SQLite's busy timeout does not
        // wait for, so processes opening a new registry together can see `database is locked`
        // at connect. Switch once, on one connection, retrying only that; WAL then persists in
        // the file and the pool's connections never ask for it.
        let wal = options.clone().journal_mode(SqliteJournalMode::Wal);
        settle(SQLITE_BUSY_WAIT, is_lock_contention, || async {
            let conn = SqliteConnection::connect_with(&wal).await?;
            conn.close().await
        })
        .await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        let migrator = sqlx::migrate!("migrations/sqlite");
        settle(STARTUP_RACE, |_| true, || migrator.run(&pool)).await?;
        Ok(SqliteStore { pool })
    }
}

// `BEGIN IMMEDIATE` takes SQLite's write lock up front, so a read-then-write transaction never
// fails to upgrade.
// A rowid table numbers its rows in insertion order, so the rowid orders rollouts.
store_impl!(SqliteStore, "BEGIN IMMEDIATE", "", "rowid");

/// The PostgreSQL store, for many trainers and workers.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connect to `url` (`postgres://user@host:port/db`) and run the migrations.
    pub async fn open(url: &str) -> Result<PgStore, StoreError> {
        let options = sqlx::postgres::PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        let migrator = sqlx::migrate!("migrations/postgres");
        settle(STARTUP_RACE, |_| true, || migrator.run(&pool)).await?;
        Ok(PgStore { pool })
    }

    /// Connect to `url` inside a fresh schema `schema` (created if missing): tests and
    /// side-by-side deployments share one database without seeing each other's rows.
    pub async fn open_in_schema(url: &str, schema: &str) -> Result<PgStore, StoreError> {
        check_name("schema", schema)?;
        if schema.contains(['.', '-']) {
            return Err(StoreError::Invalid(format!(
                "schema `{schema}` must be [A-Za-z0-9_]"
            )));
        }
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(sqlx::postgres::PgConnectOptions::from_str(url)?)
            .await?;
        let create = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
        settle(
            STARTUP_RACE,
            |_| true,
            || sqlx::query(sqlx::AssertSqlSafe(create.clone())).execute(&admin),
        )
        .await?;
        admin.close().await;
        let options =
            sqlx::postgres::PgConnectOptions::from_str(url)?.options([("search_path", schema)]);
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        let migrator = sqlx::migrate!("migrations/postgres");
        settle(STARTUP_RACE, |_| true, || migrator.run(&pool)).await?;
        Ok(PgStore { pool })
    }
}

/// How long a SQLite connection waits on another's lock, and how long opening retries the
/// journal-mode switch that SQLite's own wait does not cover (`settle`).
const SQLITE_BUSY_WAIT: Duration = Duration::from_secs(30);

/// SQLite's primary result codes for contention: another connection holds the lock
/// (`SQLITE_BUSY`, 5) or a table in a shared cache (`SQLITE_LOCKED`, 6). The driver reports the
/// extended code, whose low byte is the primary one.
fn is_lock_contention(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    db.code()
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| matches!(c & 0xff, 5 | 6))
}

/// Run a start-up step that several processes may race on (creating a schema, migrating a
/// fresh database: SQLite's migrator takes no lock, and concurrent `CREATE SCHEMA IF NOT EXISTS`
/// can collide in PostgreSQL; switching a SQLite file into WAL), retrying the errors `transient`
/// accepts while the winner finishes, for at most `budget`; any other error returns at once. The
/// step is idempotent.
async fn settle<T, E, F, Fut>(
    budget: Duration,
    transient: impl Fn(&E) -> bool,
    mut step: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    StoreError: From<E>,
{
    let deadline = tokio::time::Instant::now() + budget;
    let mut attempt = 0u64;
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) if transient(&e) && tokio::time::Instant::now() < deadline => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(25 * attempt.min(8))).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// How long opening a store retries a step that races with other processes' start-up
/// (`settle`): another process's migrations or schema creation take well under this.
const STARTUP_RACE: Duration = Duration::from_secs(8);

// Registrations (check, then insert) hold a transaction-scoped advisory lock, the counterpart of
// SQLite's write lock: two writers of one version never both see it absent. Rollouts need no
// lock: `ON CONFLICT DO NOTHING` makes a duplicate wait for the first writer, then skip.
// Rollouts are ordered by their identity column (migration 0003).
store_impl!(
    PgStore,
    "BEGIN",
    "SELECT pg_advisory_xact_lock(7417272730)",
    "seq"
);

/// A store chosen at run time from a URL: `sqlite://PATH` (or `sqlite:PATH`) or
/// `postgres://...` (`postgresql://...`; add `?schema=NAME` to keep the tables in schema NAME).
#[derive(Clone)]
pub enum AnyStore {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl AnyStore {
    pub async fn open(url: &str) -> Result<AnyStore, StoreError> {
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err(StoreError::Invalid("sqlite URL has no file path".into()));
            }
            let path = std::path::Path::new(path);
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Invalid(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
            return Ok(AnyStore::Sqlite(SqliteStore::open(path).await?));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // Our own parameter `schema=NAME`: keep the registry's tables in that schema.
            if let Some((base, query)) = url.split_once('?') {
                let mut schema = None;
                let rest: Vec<&str> = query
                    .split('&')
                    .filter(|kv| match kv.strip_prefix("schema=") {
                        Some(name) => {
                            schema = Some(name.to_string());
                            false
                        }
                        None => true,
                    })
                    .collect();
                if let Some(schema) = schema {
                    let url = if rest.is_empty() {
                        base.to_string()
                    } else {
                        format!("{base}?{}", rest.join("&"))
                    };
                    return Ok(AnyStore::Postgres(
                        PgStore::open_in_schema(&url, &schema).await?,
                    ));
                }
            }
            return Ok(AnyStore::Postgres(PgStore::open(url).await?));
        }
        Err(StoreError::Invalid(format!(
            "unknown database URL `{url}`: use sqlite://PATH or postgres://USER@HOST:PORT/DB"
        )))
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Sqlite($s) => $e.await,
            AnyStore::Postgres($s) => $e.await,
        }
    };
}

impl Store for AnyStore {
    async fn put_environment(&self, env: &EnvironmentRecord) -> Result<Put, StoreError> {
        delegate!(self, s => s.put_environment(env))
    }
    async fn environment(
        &self,
        id: &str,
        version: &str,
    ) -> Result<Option<EnvironmentRecord>, StoreError> {
        delegate!(self, s => s.environment(id, version))
    }
    async fn environments(&self, q: &EnvironmentQuery) -> Result<EnvironmentPage, StoreError> {
        delegate!(self, s => s.environments(q))
    }
    async fn put_task_set(
        &self,
        name: &str,
        version: &str,
        members: &[(String, Task)],
    ) -> Result<Put, StoreError> {
        delegate!(self, s => s.put_task_set(name, version, members))
    }
    async fn task_set(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Option<TaskSetRecord>, StoreError> {
        delegate!(self, s => s.task_set(name, version))
    }
    async fn task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        delegate!(self, s => s.task(id))
    }
    async fn count_tasks(&self, f: &TaskFilter) -> Result<u64, StoreError> {
        delegate!(self, s => s.count_tasks(f))
    }
    async fn task_ids(
        &self,
        f: &TaskFilter,
        offset: u64,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        delegate!(self, s => s.task_ids(f, offset, limit))
    }
    async fn record_rollouts(&self, r: &[RolloutRecord]) -> Result<u64, StoreError> {
        delegate!(self, s => s.record_rollouts(r))
    }
    async fn difficulties(&self, task_id: &str) -> Result<Vec<Difficulty>, StoreError> {
        delegate!(self, s => s.difficulties(task_id))
    }
    async fn candidates(&self, f: &TaskFilter) -> Result<Vec<String>, StoreError> {
        delegate!(self, s => s.candidates(f))
    }
    async fn outcomes(
        &self,
        policy: &str,
        recent: Option<u32>,
    ) -> Result<Vec<(String, curriculum::Outcomes)>, StoreError> {
        delegate!(self, s => s.outcomes(policy, recent))
    }
    async fn revision(&self) -> Result<u64, StoreError> {
        delegate!(self, s => s.revision())
    }
}
