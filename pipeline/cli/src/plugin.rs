//! `envsynth plugin`: build verifier/toolset/environment plugins from source and check them
//! against an environment's integrity suite.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use envsynth_core::{Environment, Task, TaskRequest, env::generate, tool_results_agree};
use envsynth_sandbox::{
    Limits, PluginEnvironment, Sandbox, World, plugin_tool_result, plugin_verdict, world_state,
};

/// The WIT contract, compiled into the binary so that builds need no checkout.
pub(crate) const WIT: &str = include_str!("../../../verifiers/wit/envsynth.wit");

#[derive(clap::Subcommand)]
pub enum PluginCommand {
    /// Build a component from a Python (componentize-py, from PyPI) or JavaScript
    /// (componentize-js, from npm) source file.
    Build(BuildArgs),
    /// Run the integrity suite against a component. A verifier: planted solutions must pass, every
    /// single-constraint mutant must fail naming its constraint, empty, garbage and adversarial
    /// submissions must score 0, and verdicts must equal the native verifier's. A toolset: results
    /// of valid, invalid and adversarial calls must equal the native tools'. An environment: it
    /// must generate certified tasks at every level that pass their probes, differ within a
    /// level, and whose tools answer wrong arguments and unknown tools with error results.
    Check(CheckArgs),
    /// Register an environment component so that `envsynth generate --env <id>` uses it.
    Register(RegisterArgs),
}

#[derive(clap::Args)]
pub struct BuildArgs {
    /// The plugin's source: a Python module defining `class WitWorld`, or a JavaScript module
    /// exporting the world's functions.
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
    /// The component (`.wasm`); its world is read from its exports.
    pub component: PathBuf,
    /// The native environment a verifier or toolset is compared with.
    #[arg(long, default_value = "travel-planning")]
    pub env: String,
    /// Tasks per level.
    #[arg(long, default_value_t = 5)]
    pub count: u64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// At most this many probes per task, rotating through each task's probes so that
    /// successive tasks cover all of them (for quick checks of slow plugins over many tasks).
    #[arg(long)]
    pub probes: Option<usize>,
}

/// The probes of the `n`-th task to run: all, or `max` of them in rotation.
fn rotate<T>(probes: Vec<T>, n: usize, max: Option<usize>) -> Vec<T> {
    let Some(max) = max.filter(|m| *m < probes.len()) else {
        return probes;
    };
    let len = probes.len();
    let keep: Vec<usize> = (0..max).map(|j| (n * max + j) % len).collect();
    probes
        .into_iter()
        .enumerate()
        .filter(|(i, _)| keep.contains(i))
        .map(|(_, p)| p)
        .collect()
}

#[derive(clap::Args)]
pub struct RegisterArgs {
    /// The environment component (`.wasm`).
    pub component: PathBuf,
}

pub fn run(c: PluginCommand) -> Result<()> {
    match c {
        PluginCommand::Build(a) => build(a),
        PluginCommand::Check(a) => check(a),
        PluginCommand::Register(a) => {
            let dest = crate::envs::register(&a.component)?;
            eprintln!("registered {}", dest.display());
            Ok(())
        }
    }
}

fn world(name: &str) -> World {
    match name {
        "toolset" => World::Toolset,
        "environment" => World::Environment,
        _ => World::Verifier,
    }
}

/// A build tool: what to run, and how to tell the user to install it.
fn componentizer(lang: &str, source: &Path) -> Result<(PathBuf, &'static str)> {
    match lang {
        "py" => Ok((
            PathBuf::from("componentize-py"),
            "componentize-py is not installed: `python3 -m pip install componentize-py==0.25.1`",
        )),
        "js" => {
            // npm installs it under node_modules/.bin of the project (`npm ci`); look there from
            // the source's directory and the working directory upwards, then on PATH.
            let hint = "componentize-js is not installed: run `npm ci` in the envsynth checkout \
                        (package.json pins @bytecodealliance/componentize-js)";
            let starts = [
                std::path::absolute(source).ok(),
                std::env::current_dir().ok(),
            ];
            for start in starts.into_iter().flatten() {
                for dir in start.ancestors() {
                    let bin = dir.join("node_modules/.bin/componentize-js");
                    if bin.exists() {
                        return Ok((bin, hint));
                    }
                }
            }
            Ok((PathBuf::from("componentize-js"), hint))
        }
        _ => bail!(
            "{}: unsupported source; plugins are built from Python (.py) or JavaScript (.js)",
            source.display()
        ),
    }
}

fn build(a: BuildArgs) -> Result<()> {
    crate::existing(&a.source, "source")?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| a.source.with_extension("wasm"));
    componentize(&a.source, &a.world, &out, None)?;
    // Prove the result loads as the world it claims.
    let sandbox = Sandbox::new(Some(&cache_dir())).map_err(|e| anyhow::anyhow!("{e}"))?;
    sandbox
        .load_file(&out, world(&a.world))
        .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
    eprintln!("built {} (world {})", out.display(), a.world);
    Ok(())
}

/// Build `source` (Python or JavaScript) into a component of `world` at `out`. A failed build's
/// error holds the tool's own report (a Python traceback, a JavaScript syntax error), without
/// the tool's Rust backtrace. With `timeout`, a build still running then is killed: Python
/// runs the module's top-level code while it builds, so a module can loop forever.
pub fn componentize(
    source: &Path,
    world: &str,
    out: &Path,
    timeout: Option<std::time::Duration>,
) -> Result<()> {
    let ext = source.extension().and_then(|e| e.to_str()).unwrap_or("");
    let (tool, hint) = componentizer(ext, source)?;
    let out = std::path::absolute(out).with_context(|| format!("{}", out.display()))?;
    let dir = source
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file = source
        .file_name()
        .and_then(|s| s.to_str())
        .context("source has no file name")?;
    let wit_dir = tempfile::Builder::new()
        .prefix("envsynth-wit-")
        .tempdir()
        .context("creating a directory for the WIT contract")?;
    std::fs::write(wit_dir.path().join("envsynth.wit"), WIT)?;
    let mut cmd = Command::new(&tool);
    if ext == "py" {
        let module = file.trim_end_matches(".py");
        cmd.arg("-d")
            .arg(wit_dir.path())
            .args(["-w", world, "componentize", module, "-o"])
            .arg(&out);
    } else {
        // No HTTP: the sandbox does not provide wasi:http.
        cmd.arg(file)
            .arg("--wit")
            .arg(wit_dir.path())
            .args([
                "--world-name",
                world,
                "--disable",
                "http",
                "fetch-event",
                "-o",
            ])
            .arg(&out);
    }
    cmd.current_dir(dir)
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = match cmd.spawn() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("{hint}"),
        Err(e) => return Err(e).with_context(|| format!("running {}", tool.display())),
        Ok(c) => c,
    };
    let (status, output) =
        wait_with_output(child, timeout).with_context(|| format!("running {}", tool.display()))?;
    match status {
        None => bail!(
            "{} did not finish building {} within {} s (does the module loop forever at import?)",
            tool.display(),
            source.display(),
            timeout.map_or(0, |t| t.as_secs())
        ),
        Some(s) if !s.success() => bail!(
            "{} failed ({s}) building {}:\n{}",
            tool.display(),
            source.display(),
            build_report(&output)
        ),
        Some(_) => Ok(()),
    }
}

/// Wait for `child`, reading its output as it comes; `None` for the status when `timeout`
/// passed first (the child is then killed).
fn wait_with_output(
    mut child: std::process::Child,
    timeout: Option<std::time::Duration>,
) -> std::io::Result<(Option<std::process::ExitStatus>, String)> {
    use std::io::Read;
    fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut text = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
    text.push_str(&String::from_utf8_lossy(&err.join().unwrap_or_default()));
    Ok((status, text))
}

/// What a failed build said, as a person (or a model) needs it: the tool's Rust backtrace
/// dropped, at most the last 60 lines.
pub fn build_report(output: &str) -> String {
    let output = output.split("\nStack backtrace:").next().unwrap_or(output);
    let lines: Vec<&str> = output.trim_end().lines().collect();
    let keep = &lines[lines.len().saturating_sub(60)..];
    keep.join("\n")
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

/// What a component exports decides which suite it gets.
fn detect_world(sandbox: &Sandbox, path: &Path) -> Result<envsynth_sandbox::Plugin> {
    let mut last = None;
    for w in [World::Environment, World::Toolset, World::Verifier] {
        match sandbox.load_file(path, w) {
            Ok(p) => return Ok(p),
            Err(e @ envsynth_sandbox::SandboxError::WrongWorld { .. }) => last = Some(e),
            Err(e) => bail!("{}: {e}", path.display()),
        }
    }
    match last {
        Some(e) => bail!("{}: {e}", path.display()),
        None => bail!("{}: not a component of any envsynth world", path.display()),
    }
}

/// Tallies probes and reports the failures.
#[derive(Default)]
pub struct Report {
    pub passed: usize,
    /// Each failed probe: what it was, then what went wrong.
    pub failed: Vec<String>,
}

impl Report {
    fn record(&mut self, what: String, problems: Vec<String>) {
        if problems.is_empty() {
            self.passed += 1;
        } else {
            self.failed.push(format!("{what}: {}", problems.join("; ")));
        }
    }

    fn finish(self, name: &str, kind: &str) -> Result<()> {
        println!(
            "{name}: {} {kind} probe(s) passed, {} failed",
            self.passed,
            self.failed.len()
        );
        for f in self.failed.iter().take(20) {
            println!("  FAIL {f}");
        }
        if self.failed.len() > 20 {
            println!("  ... and {} more", self.failed.len() - 20);
        }
        if !self.failed.is_empty() {
            bail!(
                "{name} failed {} of {} {kind} probes",
                self.failed.len(),
                self.failed.len() + self.passed
            );
        }
        Ok(())
    }
}

pub(crate) fn tasks(env: &dyn Environment, count: u64, seed: u64) -> Result<Vec<Task>> {
    let mut out = Vec::new();
    for level in env.spec().levels.clone() {
        for index in 0..count {
            let req = TaskRequest {
                seed,
                index,
                level: level.clone(),
                overrides: Value::Null,
            };
            out.push(generate(env, &req)?.task);
        }
    }
    Ok(out)
}

/// `f` over `items` on every core, results in order.
fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..jobs.min(items.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    if let Ok(mut out) = out.lock() {
                        out[i] = Some(r);
                    }
                }
            });
        }
    });
    out.into_inner()
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect()
}

/// Probe outcomes of one task: (what, problems).
type Outcomes = Vec<(String, Vec<String>)>;

fn task_label(t: &Task) -> String {
    format!("{}/{}", t.difficulty.level, t.index)
}

fn check(a: CheckArgs) -> Result<()> {
    crate::existing(&a.component, "component")?;
    let sandbox = Sandbox::new(Some(&cache_dir())).map_err(|e| anyhow::anyhow!("{e}"))?;
    let plugin = detect_world(&sandbox, &a.component)?;
    let name = a.component.display().to_string();
    let limits = Limits::default();
    match plugin.world() {
        World::Environment => {
            let env = PluginEnvironment::new(plugin, limits)
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            check_environment(&env, a.count, a.seed)
        }
        World::Toolset => {
            let env = crate::envs::find(&a.env)?;
            // The specs the agent sees must be the native ones.
            let specs = plugin
                .tool_specs(&limits)
                .map_err(|e| anyhow::anyhow!("{name}: tool-specs(): {e}"))?;
            let specs: Value = serde_json::from_str(&specs.value)
                .with_context(|| format!("{name}: tool-specs() is not JSON"))?;
            let mut spec_problems = Vec::new();
            if specs != serde_json::to_value(env.tool_specs())? {
                spec_problems.push("differ from the native tool specs".to_string());
            }
            let tasks = tasks(env.as_ref(), a.count, a.seed)?;
            let numbered: Vec<(usize, Task)> = tasks.into_iter().enumerate().collect();
            let outcomes = par_map(&numbered, |(n, task)| -> Result<Outcomes> {
                let native = env.prepare(task)?;
                let state = world_state(task);
                Ok(rotate(env.tool_probes(task)?, *n, a.probes)
                    .into_iter()
                    .map(|call| {
                        let got = plugin_tool_result(&plugin, &limits, &state, &call);
                        let want = native.call_tool(&call);
                        let problems = tool_results_agree(&want, &got).err().into_iter();
                        (
                            format!("{} {}", task_label(task), call.name),
                            problems.collect(),
                        )
                    })
                    .collect())
            });
            let mut report = report_all(outcomes)?;
            report.record("tool-specs()".into(), spec_problems);
            report.finish(&name, "tool")
        }
        World::Verifier => {
            let env = crate::envs::find(&a.env)?;
            let tasks = tasks(env.as_ref(), a.count, a.seed)?;
            let numbered: Vec<(usize, Task)> = tasks.into_iter().enumerate().collect();
            let outcomes = par_map(&numbered, |(n, task)| -> Result<Outcomes> {
                let task_json = serde_json::to_string(task)?;
                let native = env.prepare(task)?;
                let mut out = Vec::new();
                for probe in rotate(env.probes(task)?, *n, a.probes) {
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
                    if let (false, Some(e)) = (problems.is_empty(), &got.error) {
                        problems.push(format!("the plugin's error: {}", clip(e, 400)));
                    }
                    out.push((format!("{} {}", task_label(task), probe.name), problems));
                }
                Ok(out)
            });
            report_all(outcomes)?.finish(&name, "verifier")
        }
    }
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn report_all(outcomes: Vec<Result<Outcomes>>) -> Result<Report> {
    let mut report = Report::default();
    for o in outcomes {
        for (what, problems) in o? {
            report.record(what, problems);
        }
    }
    Ok(report)
}

/// The integrity suite of an environment (native or plugin): tasks generate and certify at every
/// level, and every task's probes get the verdicts they must.
pub fn check_environment(env: &dyn Environment, count: u64, seed: u64) -> Result<()> {
    environment_report(env, count, seed)?.finish(&env.spec().env_ref().to_string(), "environment")
}

/// [`check_environment`]'s probes, tallied: a task that fails to generate or certify is an
/// error; a probe with the wrong verdict, a tool that fails on arguments it should refuse, or a
/// level whose tasks all pose the same problem (a generator that ignores its seed and index),
/// is a failure in the report.
pub fn environment_report(env: &dyn Environment, count: u64, seed: u64) -> Result<Report> {
    let mut report = Report::default();
    let tasks = tasks(env, count, seed)?;
    for (i, task) in tasks.iter().enumerate() {
        let prepared = env.prepare(task)?;
        for probe in env.probes(task)? {
            let got = prepared.verify(&probe.submission);
            let problems = probe.expect.check(&got).err().into_iter().collect();
            report.record(format!("{} {}", task_label(task), probe.name), problems);
        }
        // The tools of each level's first task, with arguments an agent gets wrong.
        if (i as u64).is_multiple_of(count) {
            for (what, problem) in tool_robustness(env, prepared.as_ref()) {
                report.record(
                    format!("{} {what}", task_label(task)),
                    problem.into_iter().collect(),
                );
            }
        }
    }
    for level in &env.spec().levels {
        let problems: std::collections::BTreeSet<String> = tasks
            .iter()
            .filter(|t| &t.difficulty.level == level)
            .map(|t| t.problem_hash())
            .collect();
        if count >= 2 {
            let same = (problems.len() < 2).then(|| {
                format!(
                    "all {count} tasks pose the same problem (world, constraints and prompt); \
                     the generator must draw them from the request's seed and index"
                )
            });
            report.record(format!("{level} variety"), same.into_iter().collect());
        }
    }
    Ok(report)
}

/// Calls an agent gets wrong, for every tool: no arguments, arguments of the wrong shape, and a
/// tool that does not exist. Each must come back as a tool result the agent can read (`ok`, or
/// an error such as `invalid_arguments`), never as the environment's failure; the unknown tool
/// as `unknown_tool`. Returns (what was called, the problem if any).
fn tool_robustness(
    env: &dyn Environment,
    prepared: &dyn envsynth_core::PreparedTask,
) -> Vec<(String, Option<String>)> {
    use envsynth_core::model::{ToolCall, ToolErrorCode, ToolResult};
    let mut out = Vec::new();
    let call = |name: &str, arguments: Value| {
        prepared.call_tool(&ToolCall {
            name: name.to_string(),
            arguments,
        })
    };
    for spec in env.tool_specs() {
        for (label, arguments) in [
            ("{}", serde_json::json!({})),
            ("{\"probe\": [[[]]]}", serde_json::json!({"probe": [[[]]]})),
        ] {
            let problem = match call(&spec.name, arguments) {
                ToolResult::Error {
                    code: ToolErrorCode::EnvironmentError,
                    message,
                } => Some(format!(
                    "failed instead of answering with an error result: {}",
                    clip(&message, 600)
                )),
                _ => None,
            };
            out.push((format!("tool {}({label})", spec.name), problem));
        }
    }
    let unknown = "no_such_tool";
    let problem = match call(unknown, serde_json::json!({})) {
        ToolResult::Error {
            code: ToolErrorCode::UnknownTool,
            ..
        } => None,
        other => Some(format!(
            "should be an error result with code unknown_tool, got {}",
            clip(&serde_json::to_string(&other).unwrap_or_default(), 300)
        )),
    };
    out.push((format!("tool {unknown}({{}})"), problem));
    out
}
