//! `envsynth`: generate certified task shards, verify submissions, inspect tasks, benchmark.

mod bench;
mod bench_api;
mod bench_rollout;
mod bench_turns;
mod calibrate;
mod duplicates;
mod envs;
mod generate;
mod model;
mod plugin;
mod registry;
mod rollout;
mod serve;
mod show;
mod synthesize;
mod verify;
mod view;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Generation and verification allocate many small strings; mimalloc is markedly faster at that
/// than glibc malloc (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "envsynth",
    version,
    about = "Manufacture verifiable environments for training LLM agents with RL."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate certified tasks and write them as training shards.
    Generate(generate::Args),
    /// Verify submissions against the tasks of a shard; write verdicts and print aggregate metrics.
    Verify(verify::Args),
    /// Print one task readably.
    Show(show::Args),
    /// Have a model write whole environments from briefs: each attempt is built, loaded in the
    /// sandbox and put through the integrity suite, and what failed goes back to the model.
    Synthesize(synthesize::Args),
    /// Look at a finished rollout run: its rollouts listed and filtered, one in full (the
    /// conversation and every check), or all of them as a self-contained HTML page.
    View(view::Args),
    /// Find rows that pose the same problem (or show the same prompt), within each dataset and
    /// in the datasets named before it: duplicates, and held-out rows that training has seen.
    Duplicates(duplicates::Args),
    /// List the environments with their versions and content hashes.
    Envs,
    /// Measure certified tasks/s and verdicts/s on one core, against baselines.
    Bench(bench::Args),
    /// Build plugins, check them against an environment's integrity suite, register environments.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Import datasets into the environment registry (SQLite or PostgreSQL) and export task sets.
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// Serve the registry over HTTP: environments, task discovery and sampling, server-side
    /// verification, rollout results, difficulty statistics (OpenAPI at /openapi.json).
    Serve(serve::Args),
    /// Play tasks with a policy (an OpenAI-compatible server or the simulated one), score every
    /// rollout with the verifier, write scored trajectories and pass@k.
    Rollout(rollout::Args),
    /// Score a finished rollout run again with this build's verifiers, without the policy
    /// (e.g. after a verifier fix); write its trajectories and pass@k into another directory.
    Rescore(rollout::RescoreArgs),
    /// Keep the tasks whose measured pass@k lies in a band; record the statistics (and, with
    /// --db, the rollouts in the registry).
    Calibrate(calibrate::Args),
    /// Serve the simulated OpenAI-compatible policy (oracle, noisy, random) for the given tasks.
    SimulatePolicy(rollout::SimArgs),
    /// Load-test the HTTP API on loopback: task sampling and verification, against in-process
    /// baselines, on SQLite or PostgreSQL.
    BenchApi(bench_api::Args),
    /// Measure the rollout engine: rollouts/s and tool steps/s against the simulated policy,
    /// and the engine's own cost per tool step on one core.
    BenchRollout(bench_rollout::Args),
    /// The local policy model (DeepSeek-V3.2's architecture): random-weight checkpoints,
    /// tokenizer training, generation, CPU benchmark.
    #[command(subcommand)]
    Model(model::ModelCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Show(a) => show::run(a),
        Command::Duplicates(a) => duplicates::run(a),
        Command::View(a) => view::run(a),
        Command::Synthesize(a) => synthesize::run(a),
        Command::Envs => envs::print(),
        Command::Bench(a) => bench::run(a),
        Command::Plugin(c) => plugin::run(c),
        Command::Registry(c) => registry::run(c),
        Command::Serve(a) => serve::run(a),
        Command::Rollout(a) => rollout::run(a),
        Command::Rescore(a) => rollout::rescore(a),
        Command::SimulatePolicy(a) => rollout::simulate(a),
        Command::Calibrate(a) => calibrate::run(a),
        Command::BenchApi(a) => bench_api::run(a),
        Command::BenchRollout(a) => bench_rollout::run(a),
        Command::Model(c) => model::run(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes joined by ": ", leaving out a cause whose text ends the message
/// before it (libraries that print their source in their own message, as sqlx does, would
/// otherwise say it twice or three times).
fn report(e: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut last = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !last.is_empty() && last.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
        last = text;
    }
    out
}

/// A path argument that must exist.
pub fn existing(path: &std::path::Path, what: &str) -> anyhow::Result<()> {
    if !path.exists() {
        anyhow::bail!("{what} {} does not exist", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::report;

    #[derive(Debug)]
    struct Leaf;
    impl std::fmt::Display for Leaf {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("(code: 5) database is locked")
        }
    }
    impl std::error::Error for Leaf {}

    /// Prints its source in its own message, as sqlx's errors do.
    #[derive(Debug)]
    struct Wrapper(Leaf);
    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "error returned from database: {}", self.0)
        }
    }
    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        let e = anyhow::Error::new(Wrapper(Leaf)).context("opening the registry at sqlite:///x.db");
        assert_eq!(
            report(&e),
            "opening the registry at sqlite:///x.db: error returned from database: (code: 5) database is locked"
        );
        // Causes that add something are all kept.
        let e = anyhow::Error::new(Leaf)
            .context("importing")
            .context("step 2");
        assert_eq!(
            report(&e),
            "step 2: importing: (code: 5) database is locked"
        );
    }
}
