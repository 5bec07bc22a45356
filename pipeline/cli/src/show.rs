//! `envsynth show`: one task, readably.

use std::path::PathBuf;

use anyhow::{Result, bail};

#[derive(clap::Args)]
pub struct Args {
    /// A shard file or a directory of shards.
    pub tasks: PathBuf,
    /// Dataset index of the task (default: the first task).
    #[arg(long, conflicts_with = "id")]
    pub index: Option<u64>,
    /// Task id (`sha256:...`, or a unique prefix of its hex).
    #[arg(long)]
    pub id: Option<String>,
}

pub fn run(a: Args) -> Result<()> {
    crate::existing(&a.tasks, "task path")?;
    let mut found = None;
    for file in envsynth_shards::shard_files(&a.tasks)? {
        for t in envsynth_shards::read_tasks(&file)? {
            let hit = match (&a.index, &a.id) {
                (Some(i), _) => t.index == *i,
                (_, Some(id)) => {
                    t.id == *id
                        || t.id
                            .trim_start_matches("sha256:")
                            .starts_with(id.trim_start_matches("sha256:"))
                }
                _ => true,
            };
            if hit {
                found = Some(t);
                break;
            }
        }
        if found.is_some() {
            break;
        }
    }
    let Some(t) = found else {
        bail!("no matching task in {}", a.tasks.display());
    };
    let env = crate::envs::find(&t.environment.to_string())?;
    println!("task        {}", t.id);
    println!("environment {}", t.environment);
    println!("seed/index  {} / {}", t.seed, t.index);
    println!(
        "difficulty  {} {}",
        t.difficulty.level,
        t.difficulty
            .params
            .get("realized")
            .map(|r| r.to_string())
            .unwrap_or_default()
    );
    for m in &t.prompt {
        println!("\n--- {} ---\n{}", m.role, m.content);
    }
    println!("\n--- constraints ---");
    for c in &t.constraints {
        println!("{:<40} {}", c.id, c.description);
    }
    println!(
        "\n--- tools ---\n{}",
        t.tools
            .iter()
            .map(|x| x.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "\n--- reference solution ---\n{}",
        env.describe_solution(&t)
    );
    println!(
        "--- certificate ---\nmutants rejected: {}",
        t.certificate.mutants_rejected.join(", ")
    );
    Ok(())
}
