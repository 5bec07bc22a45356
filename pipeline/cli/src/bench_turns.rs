//! `envsynth model bench-turns`: multi-turn conversations through the local policy's batcher,
//! each turn continuing the cache the previous turn kept (what rollouts do) against the same
//! conversations re-prefilled whole every turn (what they did before), side by side in one run.
//! Every turn generates exactly `--new-tokens` (no end-of-sequence stop), then `--suffix-tokens`
//! of made-up tool results are appended, so both ways do the same decoding.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use rand::Rng;
use serde_json::json;

use envsynth_policy::local::{Device, start_batcher};
use envsynth_policy::{Batcher, Model, Sampler, SamplingParams, Stop};

#[derive(clap::Args)]
pub struct BenchTurnsArgs {
    /// Checkpoint folder (`model init` writes one).
    #[arg(long)]
    pub model: PathBuf,
    /// cpu, gpu or gpu-fp8.
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// Conversations in flight together (the batch bound).
    #[arg(long, default_value_t = 32)]
    pub conversations: usize,
    #[arg(long, default_value_t = 4)]
    pub turns: usize,
    /// The first turn's prompt.
    #[arg(long, default_value_t = 2000)]
    pub prompt_tokens: usize,
    /// Generated per turn.
    #[arg(long, default_value_t = 64)]
    pub new_tokens: usize,
    /// Appended after each reply (a tool result and the next turn's opener).
    #[arg(long, default_value_t = 300)]
    pub suffix_tokens: usize,
    /// Rounds of the two ways, alternated; the fastest of each is reported.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One conversation's made-up tokens: the prompt and each turn's suffix.
struct Script {
    prompt: Vec<u32>,
    suffixes: Vec<Vec<u32>>,
}

/// Plays every conversation to the end, continuing kept caches (`resume`) or not; the
/// conversations' final lengths.
async fn play(
    batcher: &Batcher,
    scripts: &Arc<Vec<Script>>,
    new_tokens: usize,
    resume: bool,
) -> Result<Vec<usize>> {
    let mut tasks = Vec::new();
    for c in 0..scripts.len() {
        let (batcher, scripts) = (batcher.clone(), scripts.clone());
        tasks.push(tokio::spawn(async move {
            let script = &scripts[c];
            let mut ids = script.prompt.clone();
            let mut kept = None;
            for (t, suffix) in script.suffixes.iter().enumerate() {
                let sampler = Sampler::new(SamplingParams::default(), (c * 1000 + t) as u64)?;
                let stop = Stop {
                    eos: Vec::new(),
                    max_new_tokens: new_tokens,
                    strings: Vec::new(),
                };
                let g = if resume {
                    let (g, k) = batcher
                        .turn(ids.clone(), sampler, stop, kept.take())
                        .await?;
                    kept = Some(Arc::new(k));
                    g
                } else {
                    batcher.generate(ids.clone(), sampler, stop).await?
                };
                ids.extend(&g.tokens);
                ids.extend(suffix);
            }
            anyhow::Ok(ids.len())
        }));
    }
    let mut lens = Vec::new();
    for t in tasks {
        lens.push(t.await??);
    }
    Ok(lens)
}

pub fn run(a: BenchTurnsArgs) -> Result<()> {
    if a.conversations == 0 || a.turns == 0 || a.prompt_tokens == 0 || a.new_tokens == 0 {
        bail!("--conversations, --turns, --prompt-tokens and --new-tokens must be positive");
    }
    if a.rounds == 0 {
        bail!("--rounds must be positive");
    }
    let model = Model::load(&a.model).with_context(|| format!("--model {}", a.model.display()))?;
    let (vocab, context) = (model.cfg.vocab_size, model.cfg.max_position_embeddings);
    // The last turn's prompt: the first prompt, every earlier turn's reply and suffix.
    let longest = a.prompt_tokens + (a.turns - 1) * (a.new_tokens + a.suffix_tokens);
    if longest + a.new_tokens > context {
        bail!(
            "a conversation reaches {} tokens; the model's context is {context} (max_position_embeddings)",
            longest + a.new_tokens
        );
    }
    let mut rng =
        envsynth_core::seed::task_rng("envsynth/bench-turns", "1", a.seed, 0, 0, "tokens");
    let mut tokens =
        |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(0..vocab as u32)).collect() };
    let scripts: Arc<Vec<Script>> = Arc::new(
        (0..a.conversations)
            .map(|_| Script {
                prompt: tokens(a.prompt_tokens),
                suffixes: (0..a.turns).map(|_| tokens(a.suffix_tokens)).collect(),
            })
            .collect(),
    );
    let batcher = start_batcher(model, a.device, a.conversations)?;
    let rt = tokio::runtime::Runtime::new()?;
    let (mut best_full, mut best_kept) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..a.rounds {
        for resume in [false, true] {
            let t = Instant::now();
            let lens = rt.block_on(play(&batcher, &scripts, a.new_tokens, resume))?;
            let secs = t.elapsed().as_secs_f64();
            let want = longest + a.new_tokens + a.suffix_tokens;
            if lens.iter().any(|&l| l != want) {
                bail!("a conversation ended at a length other than {want}: {lens:?}");
            }
            let best = if resume {
                &mut best_kept
            } else {
                &mut best_full
            };
            *best = best.min(secs);
        }
    }
    // Tokens prefilled per conversation: every turn's whole prompt, against the first prompt
    // then each later turn's new tokens (the previous reply's last token and the suffix).
    let turn_prompts: usize = (0..a.turns)
        .map(|t| a.prompt_tokens + t * (a.new_tokens + a.suffix_tokens))
        .sum();
    let continued = a.prompt_tokens + (a.turns - 1) * (1 + a.suffix_tokens);
    let n = a.conversations;
    println!(
        "{n} conversations × {} turns: prompt {}, {} generated and {} appended a turn, on {:?}",
        a.turns, a.prompt_tokens, a.new_tokens, a.suffix_tokens, a.device
    );
    println!(
        "| each turn | tokens prefilled | wall (best of {}) |",
        a.rounds
    );
    println!("|---|---:|---:|");
    println!(
        "| re-prefills the conversation | {} | {best_full:.3} s |",
        n * turn_prompts
    );
    println!(
        "| continues the kept cache | {} | {best_kept:.3} s |",
        n * continued
    );
    println!("speed-up: {:.2}×", best_full / best_kept);
    if let Some(path) = &a.json {
        let body = json!({
            "device": format!("{:?}", a.device),
            "conversations": n,
            "turns": a.turns,
            "prompt_tokens": a.prompt_tokens,
            "new_tokens": a.new_tokens,
            "suffix_tokens": a.suffix_tokens,
            "rounds": a.rounds,
            "reprefill": {"tokens_prefilled": n * turn_prompts, "seconds": best_full},
            "continue": {"tokens_prefilled": n * continued, "seconds": best_kept},
        });
        envsynth_core::files::atomic_write(path, &serde_json::to_vec_pretty(&body)?)?;
    }
    Ok(())
}
