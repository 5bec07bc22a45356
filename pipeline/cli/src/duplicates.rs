//! `envsynth duplicates`: rows that pose the same problem, within a dataset and across datasets
//! (a held-out split that repeats training problems).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    /// Datasets (shard files or directories), in order: each row is checked against the rows
    /// before it, in its own dataset and in the datasets named before it (name train before test).
    #[arg(required = true)]
    pub datasets: Vec<PathBuf>,
    /// Write the whole report here as JSON, with every group of rows that share a problem or a
    /// prompt (the printout shows the first few).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The two fingerprints compared: the whole problem (prompt, tools, world, constraints) and the
/// prompt alone.
const KINDS: [&str; 2] = ["problem", "prompt"];

#[derive(Serialize)]
struct Report {
    datasets: Vec<DatasetCounts>,
    /// Every fingerprint held by more than one row, in the order its second row was read.
    groups: Vec<Group>,
}

#[derive(Serialize)]
struct DatasetCounts {
    path: String,
    rows: u64,
    problems: Counts,
    prompts: Counts,
}

#[derive(Serialize, Default, Clone, Copy)]
struct Counts {
    /// Fingerprints among this dataset's rows.
    distinct: u64,
    /// Rows whose fingerprint an earlier row of this dataset already had: rows minus distinct.
    repeated: u64,
    /// Rows whose fingerprint a dataset named before this one has.
    in_earlier: u64,
}

#[derive(Serialize)]
struct Group {
    by: &'static str,
    hash: String,
    rows: Vec<RowRef>,
}

#[derive(Serialize, Clone)]
struct RowRef {
    /// Position of the dataset on the command line, from 0.
    dataset: usize,
    index: u64,
    task_id: String,
}

/// Where a fingerprint was first seen, the last dataset that had it, and its group once a second
/// row has it.
struct Seen {
    first: RowRef,
    last_dataset: usize,
    group: Option<usize>,
}

/// Fingerprints of one kind, in the order they were read.
#[derive(Default)]
struct Tally {
    seen: HashMap<String, Seen>,
}

impl Tally {
    /// Counts one row of dataset `d` (datasets are read one after another) into `counts`, and
    /// its group into `groups` if an earlier row has its fingerprint.
    fn add(
        &mut self,
        by: &'static str,
        hash: String,
        row: RowRef,
        counts: &mut Counts,
        groups: &mut Vec<Group>,
    ) {
        let d = row.dataset;
        let Some(s) = self.seen.get_mut(&hash) else {
            counts.distinct += 1;
            self.seen.insert(
                hash,
                Seen {
                    first: row,
                    last_dataset: d,
                    group: None,
                },
            );
            return;
        };
        if s.last_dataset == d {
            counts.repeated += 1;
        } else {
            counts.distinct += 1;
            s.last_dataset = d;
        }
        if s.first.dataset < d {
            counts.in_earlier += 1;
        }
        match s.group {
            Some(g) => groups[g].rows.push(row),
            None => {
                s.group = Some(groups.len());
                groups.push(Group {
                    by,
                    hash,
                    rows: vec![s.first.clone(), row],
                });
            }
        }
    }
}

fn report(datasets: &[PathBuf]) -> Result<Report> {
    let mut tallies = [Tally::default(), Tally::default()];
    let mut groups = Vec::new();
    let mut out = Vec::with_capacity(datasets.len());
    for (d, path) in datasets.iter().enumerate() {
        crate::existing(path, "dataset")?;
        let mut counts = [Counts::default(); 2];
        let mut rows = 0;
        for file in envsynth_shards::shard_files(path)? {
            for t in envsynth_shards::read_tasks(&file)? {
                rows += 1;
                let hashes = [t.problem_hash(), t.prompt_hash()];
                for (k, hash) in hashes.into_iter().enumerate() {
                    let row = RowRef {
                        dataset: d,
                        index: t.index,
                        task_id: t.id.clone(),
                    };
                    tallies[k].add(KINDS[k], hash, row, &mut counts[k], &mut groups);
                }
            }
        }
        out.push(DatasetCounts {
            path: path.display().to_string(),
            rows,
            problems: counts[0],
            prompts: counts[1],
        });
    }
    Ok(Report {
        datasets: out,
        groups,
    })
}

/// Groups printed; `--out` has them all.
const SHOWN: usize = 10;

pub fn run(a: Args) -> Result<()> {
    let r = report(&a.datasets)?;
    println!(
        "{:<32} {:>8}  {:>28}  {:>28}",
        "", "", "problems", "prompts"
    );
    println!(
        "{:<32} {:>8}  {:>8} {:>8} {:>10}  {:>8} {:>8} {:>10}",
        "dataset",
        "rows",
        "distinct",
        "repeated",
        "in earlier",
        "distinct",
        "repeated",
        "in earlier"
    );
    for d in &r.datasets {
        println!(
            "{:<32} {:>8}  {:>8} {:>8} {:>10}  {:>8} {:>8} {:>10}",
            d.path,
            d.rows,
            d.problems.distinct,
            d.problems.repeated,
            d.problems.in_earlier,
            d.prompts.distinct,
            d.prompts.repeated,
            d.prompts.in_earlier
        );
    }
    for g in r.groups.iter().take(SHOWN) {
        let rows: Vec<String> = g
            .rows
            .iter()
            .map(|x| format!("{}#{}", r.datasets[x.dataset].path, x.index))
            .collect();
        println!("same {} {}: {}", g.by, short(&g.hash), rows.join(", "));
    }
    if r.groups.len() > SHOWN {
        println!("... {} more groups", r.groups.len() - SHOWN);
    }
    if let Some(out) = &a.out {
        write(out, &r)?;
    }
    Ok(())
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min("sha256:".len() + 12)]
}

fn write(path: &Path, r: &Report) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(r)?;
    bytes.push(b'\n');
    envsynth_shards::atomic_write(path, &bytes)?;
    Ok(())
}
