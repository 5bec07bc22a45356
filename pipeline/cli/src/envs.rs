//! The environments this binary knows.

use anyhow::{Result, bail};

use envsynth_core::Environment;
use envsynth_travel::TravelPlanning;

pub fn all() -> Vec<Box<dyn Environment>> {
    vec![Box::new(TravelPlanning::new())]
}

/// Find an environment by `id` or `id@version`.
pub fn find(name: &str) -> Result<Box<dyn Environment>> {
    let (id, version) = match name.split_once('@') {
        Some((id, v)) => (id, Some(v)),
        None => (name, None),
    };
    let envs = all();
    let known: Vec<String> = envs
        .iter()
        .map(|e| format!("{}@{}", e.spec().id, e.spec().version))
        .collect();
    for env in envs {
        if env.spec().id == id {
            if let Some(v) = version
                && env.spec().version != v
            {
                bail!(
                    "environment {id} is at version {}, not {v}",
                    env.spec().version
                );
            }
            return Ok(env);
        }
    }
    bail!("unknown environment `{name}` (known: {})", known.join(", "))
}

pub fn print() {
    for env in all() {
        let s = env.spec();
        println!("{}@{}", s.id, s.version);
        println!("  content hash  {}", s.content_hash);
        println!("  levels        {}", s.levels.join(", "));
        println!(
            "  tools         {}",
            env.tool_specs()
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!("  {}", s.description);
    }
}
