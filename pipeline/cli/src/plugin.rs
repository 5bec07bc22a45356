//! `envsynth plugin`: build verifier/toolset/environment plugins from source and check them
//! against an environment's integrity suite.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use envsynth_core::{TaskRequest, env::generate};
use envsynth_sandbox::{Limits, Sandbox, World, plugin_verdict};

/// The WIT contract, compiled into the binary so that builds need no checkout.
const WIT: &str = include_str!("../../../verifiers/wit/envsynth.wit");

#[derive(clap::Subcommand)]
pub enum PluginCommand {
    /// Build a component from a Python source file (componentize-py, installed from PyPI).
    Build(BuildArgs),
    /// Run an environment's integrity suite against a verifier component: planted solutions must
    /// pass, every single-constraint mutant must fail naming its constraint, empty, garbage and
    /// adversarial submissions must score 0; verdicts must equal the native verifier's.
    Check(CheckArgs),
}

#[derive(clap::Args)]
pub struct BuildArgs {
    /// The plugin's source: a Python module (`verifier.py`) defining `class WitWorld`.
    pub source: PathBuf,
    /// Which world of verifiers/wit/envsynth.wit it implements.
    #[arg(long, default_value = "verifier", value_parser = ["verifier", "toolset", "environment"])]
    pub world: String,
    /// Output component (default: the source path with `.wasm`).
    #[arg(short, long)]
    pub out: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct CheckArgs {
    /// The verifier component (`.wasm`).
    pub component: PathBuf,
    /// The environment whose tasks and integrity suite to use.
    #[arg(long, default_value = "travel-planning")]
    pub env: String,
    /// Tasks per level.
    #[arg(long, default_value_t = 5)]
    pub count: u64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(c: PluginCommand) -> Result<()> {
    match c {
        PluginCommand::Build(a) => build(a),
        PluginCommand::Check(a) => check(a),
    }
}

fn world(name: &str) -> World {
    match name {
        "toolset" => World::Toolset,
        "environment" => World::Environment,
        _ => World::Verifier,
    }
}

fn build(a: BuildArgs) -> Result<()> {
    crate::existing(&a.source, "source")?;
    let ext = a.source.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext != "py" {
        bail!(
            "{}: only Python sources (.py) can be built so far; JavaScript (componentize-js) is not supported yet",
            a.source.display()
        );
    }
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| a.source.with_extension("wasm"));
    let out = std::path::absolute(&out).with_context(|| format!("{}", out.display()))?;
    let dir = a
        .source
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let module = a
        .source
        .file_stem()
        .and_then(|s| s.to_str())
        .context("source has no file name")?;
    let wit_dir = std::env::temp_dir().join(format!("envsynth-wit-{}", std::process::id()));
    std::fs::create_dir_all(&wit_dir)?;
    std::fs::write(wit_dir.join("envsynth.wit"), WIT)?;
    let status = Command::new("componentize-py")
        .arg("-d")
        .arg(&wit_dir)
        .args(["-w", &a.world, "componentize", module, "-o"])
        .arg(&out)
        .current_dir(dir)
        .status();
    let _ = std::fs::remove_dir_all(&wit_dir);
    match status {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "componentize-py is not installed: `python3 -m pip install componentize-py==0.25.1`"
            )
        }
        Err(e) => return Err(e).context("running componentize-py"),
        Ok(s) if !s.success() => bail!(
            "componentize-py failed ({s}) building {}",
            a.source.display()
        ),
        Ok(_) => {}
    }
    // Prove the result loads as the world it claims.
    let sandbox = Sandbox::new(Some(&cache_dir())).map_err(|e| anyhow::anyhow!("{e}"))?;
    sandbox
        .load_file(&out, world(&a.world))
        .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    eprintln!("built {} (world {})", out.display(), a.world);
    Ok(())
}

/// Where compiled components are cached: `$ENVSYNTH_CACHE`, else `$XDG_CACHE_HOME/envsynth`,
/// else `~/.cache/envsynth`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ENVSYNTH_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("envsynth").join("components")
}

fn check(a: CheckArgs) -> Result<()> {
    crate::existing(&a.component, "component")?;
    let env = crate::envs::find(&a.env)?;
    let sandbox = Sandbox::new(Some(&cache_dir())).map_err(|e| anyhow::anyhow!("{e}"))?;
    let plugin = sandbox
        .load_file(&a.component, World::Verifier)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.component.display()))?;
    let limits = Limits::default();
    let (mut passed, mut failed) = (0usize, Vec::<String>::new());
    for level in env.spec().levels.clone() {
        for index in 0..a.count {
            let req = TaskRequest {
                seed: a.seed,
                index,
                level: level.clone(),
                overrides: Value::Null,
            };
            let task = generate(env.as_ref(), &req)?.task;
            let task_json = serde_json::to_string(&task)?;
            let native = env.prepare(&task)?;
            for probe in env.probes(&task)? {
                let sub = probe.submission.to_string();
                let got = plugin_verdict(&plugin, &limits, &task.id, &task_json, &sub);
                let want = native.verify(&probe.submission);
                let mut problems = Vec::new();
                if let Err(e) = probe.expect.check(&got) {
                    problems.push(e);
                }
                if (got.reward, got.passed, got.failure_kind, &got.checks)
                    != (want.reward, want.passed, want.failure_kind, &want.checks)
                {
                    problems.push("differs from the native verifier's verdict".into());
                }
                if problems.is_empty() {
                    passed += 1;
                } else {
                    failed.push(format!(
                        "{level}/{index} {}: {}",
                        probe.name,
                        problems.join("; ")
                    ));
                }
            }
        }
    }
    println!(
        "{}: {passed} probe(s) passed, {} failed",
        a.component.display(),
        failed.len()
    );
    for f in failed.iter().take(20) {
        println!("  FAIL {f}");
    }
    if failed.len() > 20 {
        println!("  ... and {} more", failed.len() - 20);
    }
    if !failed.is_empty() {
        bail!(
            "{} failed {} of {} integrity probes",
            a.component.display(),
            failed.len(),
            failed.len() + passed
        );
    }
    Ok(())
}
