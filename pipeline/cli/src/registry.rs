//! `envsynth registry`: import generated datasets into the environment registry as task sets,
//! and export task sets back to shards.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::json;

use envsynth_core::Task;
use envsynth_registry::{AnyStore, EnvironmentMetadata, EnvironmentRecord, Put, Store, TaskFilter};
use envsynth_shards::Manifest;

#[derive(clap::Subcommand)]
pub enum RegistryCommand {
    /// Import a dataset written by `envsynth generate` (a directory with manifest.json) as an
    /// immutable task set, registering its environment version. Importing it again changes
    /// nothing; a damaged or partial dataset is refused, naming the file (and row).
    Import(ImportArgs),
    /// Export a task set as shards: `<out>/<split>/part-00000-of-00001.{parquet,jsonl}`.
    Export(ExportArgs),
}

#[derive(clap::Args)]
pub struct Db {
    /// The registry database: `sqlite://PATH` or `postgres://USER@HOST:PORT/DB` (default:
    /// `$ENVSYNTH_DB`, else `sqlite://$ENVSYNTH_HOME/registry.db`).
    #[arg(long)]
    pub db: Option<String>,
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The dataset directory.
    pub dir: PathBuf,
    #[command(flatten)]
    pub db: Db,
    /// Task set name (default: the environment id).
    #[arg(long)]
    pub set: Option<String>,
    /// Task set version (default: the first 12 hex digits of the generation request's hash, so
    /// the same dataset always imports as the same version).
    #[arg(long)]
    pub set_version: Option<String>,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub db: Db,
    #[arg(long)]
    pub set: String,
    #[arg(long)]
    pub set_version: String,
    #[arg(long)]
    pub out: PathBuf,
}

/// The database URL from `--db`, `$ENVSYNTH_DB` or the default file.
pub fn db_url(db: &Db) -> String {
    db.db
        .clone()
        .or_else(|| std::env::var("ENVSYNTH_DB").ok())
        .unwrap_or_else(|| {
            let home = crate::envs::plugin_dir()
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            format!("sqlite://{}", home.join("registry.db").display())
        })
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

pub fn run(c: RegistryCommand) -> Result<()> {
    let rt = runtime()?;
    match c {
        RegistryCommand::Import(a) => rt.block_on(import(a)),
        RegistryCommand::Export(a) => rt.block_on(export(a)),
    }
}

/// Read and check a dataset: its manifest, every file's hash and row count, every task's id and
/// environment.
pub fn read_dataset(dir: &Path) -> Result<(Manifest, String, Vec<Task>)> {
    crate::existing(dir, "dataset")?;
    let mpath = dir.join("manifest.json");
    let text = std::fs::read_to_string(&mpath).with_context(|| {
        format!(
            "{}: no readable manifest.json, so the dataset is incomplete (generate writes it last)",
            dir.display()
        )
    })?;
    let manifest: Manifest =
        serde_json::from_str(&text).with_context(|| format!("{}", mpath.display()))?;
    let split = manifest
        .request
        .get("split")
        .and_then(|v| v.as_str())
        .unwrap_or("train")
        .to_string();
    let mut tasks = Vec::new();
    let mut parquet_stems = std::collections::BTreeSet::new();
    for f in &manifest.files {
        let path = dir.join(&f.name);
        let hash = envsynth_shards::sha256_file(&path).with_context(|| {
            format!("{}: listed in the manifest but unreadable", path.display())
        })?;
        if hash != f.sha256 {
            bail!(
                "{}: content does not match the manifest (sha256 {hash}, expected {}): the file is damaged or partial",
                path.display(),
                f.sha256
            );
        }
        if let Some(stem) = f.name.strip_suffix(".parquet") {
            parquet_stems.insert(stem.to_string());
        }
    }
    for f in &manifest.files {
        let path = dir.join(&f.name);
        // Parquet and JSONL of one part hold the same tasks: read one of them.
        if let Some(stem) = f.name.strip_suffix(".jsonl")
            && parquet_stems.contains(stem)
        {
            continue;
        }
        let part = envsynth_shards::read_tasks(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
        if part.len() as u64 != f.rows {
            bail!(
                "{}: {} rows, the manifest says {}",
                path.display(),
                part.len(),
                f.rows
            );
        }
        for (row, t) in part.iter().enumerate() {
            if t.environment != manifest.environment.env_ref() {
                bail!(
                    "{} row {row}: task of {}, but the dataset is {}",
                    path.display(),
                    t.environment,
                    manifest.environment.env_ref()
                );
            }
        }
        tasks.extend(part);
    }
    if tasks.len() as u64 != manifest.rows {
        bail!(
            "{}: {} tasks in the files, the manifest says {}",
            dir.display(),
            tasks.len(),
            manifest.rows
        );
    }
    Ok((manifest, split, tasks))
}

async fn import(a: ImportArgs) -> Result<()> {
    let (manifest, split, tasks) = read_dataset(&a.dir)?;
    let url = db_url(&a.db);
    let store = AnyStore::open(&url)
        .await
        .with_context(|| format!("opening the registry at {url}"))?;
    let spec = &manifest.environment;
    let tools = tasks.first().map(|t| t.tools.to_vec()).unwrap_or_default();
    let verifier = crate::envs::verifier_identity(spec);
    let env = EnvironmentRecord::from_spec(
        spec,
        EnvironmentMetadata {
            tool_specs: tools,
            verifier,
            provenance: json!({"generator": manifest.generator}),
            ..EnvironmentMetadata::of_spec(spec)
        },
    );
    let env_put = store.put_environment(&env).await?;
    let set = a.set.clone().unwrap_or_else(|| spec.id.clone());
    let version = a.set_version.clone().unwrap_or_else(|| {
        manifest
            .request_hash
            .trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect()
    });
    let members: Vec<(String, Task)> = tasks.into_iter().map(|t| (split.clone(), t)).collect();
    let put = store.put_task_set(&set, &version, &members).await?;
    let word = |p: Put| match p {
        Put::Created => "registered",
        Put::Unchanged => "already registered",
    };
    println!(
        "environment {}: {}; task set {set}@{version} ({} tasks, split {split}): {}",
        spec.env_ref(),
        word(env_put),
        members.len(),
        word(put)
    );
    Ok(())
}

async fn export(a: ExportArgs) -> Result<()> {
    let url = db_url(&a.db);
    let store = AnyStore::open(&url)
        .await
        .with_context(|| format!("opening the registry at {url}"))?;
    let Some(set) = store.task_set(&a.set, &a.set_version).await? else {
        bail!("no task set {}@{} in {url}", a.set, a.set_version);
    };
    for (split, n) in set.splits {
        let filter = TaskFilter {
            set: Some((a.set.clone(), a.set_version.clone())),
            split: Some(split.clone()),
            ..TaskFilter::default()
        };
        let mut tasks = Vec::with_capacity(n as usize);
        let mut offset = 0;
        while offset < n {
            for id in store.task_ids(&filter, offset, 1000).await? {
                let task = store
                    .task(&id)
                    .await?
                    .with_context(|| format!("task {id} of the set is missing"))?;
                tasks.push(task);
            }
            offset += 1000;
        }
        let dir = a.out.join(&split);
        std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
        let stem = envsynth_shards::shard_stem(0, 1);
        envsynth_shards::write_parquet(&dir.join(format!("{stem}.parquet")), &tasks, &split)?;
        envsynth_shards::write_jsonl(&dir.join(format!("{stem}.jsonl")), &tasks, &split)?;
        println!("{split}: {} tasks → {}", tasks.len(), dir.display());
    }
    Ok(())
}
