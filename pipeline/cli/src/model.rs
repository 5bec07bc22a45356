//! `envsynth model`: random-weight checkpoints in the Hugging Face layout of DeepSeek-V3.2, a
//! byte-level BPE tokenizer trained on generated task text, generation, and a CPU benchmark.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use envsynth_core::chat::{ChatMessage, WireFunction, WireTool, WireToolCall};
use envsynth_core::{TaskRequest, env::generate};
use envsynth_policy::checkpoint::{StoreAs, Tensors};
use envsynth_policy::init::{random_tensors, write_checkpoint};
use envsynth_policy::{
    AttentionMode, Cache, Config, Forward, Logits, Model, Preset, Sampler, SamplingParams, Segment,
    Selection, Stop, tokenizer,
};
use envsynth_prompts::deepseek::{BOS, DeepSeekV32};
use envsynth_travel::TravelPlanning;
use serde_json::Value;

#[derive(clap::Subcommand)]
pub enum ModelCommand {
    /// Write a random-weight checkpoint (config.json, model.safetensors, tokenizer.json).
    Init(InitArgs),
    /// Train a byte-level BPE tokenizer on generated task text; write tokenizer.json.
    Tokenizer(TokenizerArgs),
    /// Print a continuation of a prompt.
    Generate(GenerateArgs),
    /// Measure CPU prefill and decode tokens/s of a preset, sparse (DSA) beside dense attention.
    Bench(BenchArgs),
    /// Multi-turn conversations through the local policy's batcher: each turn continuing the
    /// previous turn's kept cache, against re-prefilling the whole conversation, side by side.
    BenchTurns(crate::bench_turns::BenchTurnsArgs),
    /// On a Hopper GPU: check every kernel against the CPU reference on fresh random inputs,
    /// then benchmark indexer + top-k + sparse attention at the small preset's shapes.
    GpuCheck(GpuCheckArgs),
}

#[derive(clap::Args)]
pub struct GpuCheckArgs {
    /// Context lengths to benchmark (comma-separated); `--checks-only` runs none.
    #[arg(long, value_delimiter = ',', default_value = "8192,32768,65536,131072")]
    pub contexts: Vec<usize>,
    /// Run the correctness checks only, no benchmarks.
    #[arg(long)]
    pub checks_only: bool,
    /// Replay the random inputs of an earlier run (default: a fresh seed, printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Only compile the kernels with NVRTC for sm_90a (needs libnvrtc, not a GPU).
    #[arg(long)]
    pub compile_only: bool,
    /// Write the full report here as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A checkpoint folder (`model init --preset small`) to decode end to end on the GPU.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Batch sizes of the end-to-end decode.
    #[arg(long, value_delimiter = ',', default_value = "1,32,128")]
    pub e2e_batches: Vec<usize>,
    /// Prompt tokens per sequence of the end-to-end decode.
    #[arg(long, default_value_t = 2560)]
    pub e2e_prompt: usize,
    /// Greedy decode steps timed per batch.
    #[arg(long, default_value_t = 64)]
    pub e2e_steps: usize,
}

#[derive(clap::Args)]
pub struct InitArgs {
    /// tiny (dsa.md §5.1) or small (FlashMLA shapes: d_qk 576, d_v 512, 64 heads).
    #[arg(long)]
    pub preset: String,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// f32, bf16, or fp8 (e4m3 projections with 128×128 block scales).
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    /// Override the preset's max_position_embeddings (the context the model accepts).
    #[arg(long)]
    pub max_position_embeddings: Option<usize>,
    /// Override the preset's num_attention_heads (the GPU runs 64, the small preset's, or
    /// DeepSeek-V3.2's 128).
    #[arg(long)]
    pub num_attention_heads: Option<usize>,
}

#[derive(clap::Args)]
pub struct TokenizerArgs {
    #[arg(long)]
    pub vocab_size: usize,
    /// Travel tasks whose prompts, tools and solutions make the corpus.
    #[arg(long, default_value_t = 120)]
    pub tasks: u64,
    /// Output file (tokenizer.json).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// A checkpoint folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Text to continue (the beginning-of-sentence token is put in front).
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    #[arg(long)]
    pub preset: String,
    /// Prompt length (prefill), and the context decode starts from.
    #[arg(long, default_value_t = 256)]
    pub prompt_tokens: usize,
    /// Decode steps measured.
    #[arg(long, default_value_t = 32)]
    pub new_tokens: usize,
    /// Override the preset's index_topk (e.g. below the prompt length for the small preset,
    /// whose top-k 2048 only selects beyond 2048 tokens).
    #[arg(long)]
    pub topk: Option<usize>,
    /// Sequences decoding together in the batched row (beside the single-sequence rows).
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(c: ModelCommand) -> Result<()> {
    match c {
        ModelCommand::Init(a) => init(a),
        ModelCommand::Tokenizer(a) => train_tokenizer(a),
        ModelCommand::Generate(a) => generate_text(a),
        ModelCommand::Bench(a) => bench(a),
        ModelCommand::BenchTurns(a) => crate::bench_turns::run(a),
        ModelCommand::GpuCheck(a) => gpu_check(a),
    }
}

/// Text the project generates: travel tasks' prompts, rendered in DeepSeek-V3.2's chat format
/// with their tools and a submit call carrying the planted solution.
fn corpus(tasks: u64) -> Result<Vec<String>> {
    let env = Arc::new(TravelPlanning::new());
    let chat = DeepSeekV32::new().map_err(|e| anyhow::anyhow!(e))?;
    let levels = ["easy", "medium", "hard"];
    let mut texts = Vec::new();
    for index in 0..tasks {
        let task = generate(
            env.as_ref(),
            &TaskRequest {
                seed: 0x70C,
                index,
                level: levels[index as usize % levels.len()].into(),
                overrides: Value::Null,
            },
        )
        .map_err(|e| anyhow::anyhow!("corpus task {index}: {e}"))?
        .task;
        let tools: Vec<WireTool> = task.tools.iter().map(WireTool::from).collect();
        let mut messages: Vec<ChatMessage> = task
            .prompt
            .iter()
            .map(|m| ChatMessage::text(&m.role, m.content.clone()))
            .collect();
        let submit = tools
            .iter()
            .find(|t| t.function.name.starts_with("submit"))
            .map_or("submit".to_string(), |t| t.function.name.clone());
        let plan: Value = serde_json::from_str(task.reference_solution.get())?;
        let arguments = match tools
            .iter()
            .find(|t| t.function.name == submit)
            .and_then(|t| t.function.parameters["properties"].as_object())
            .and_then(|p| p.keys().next().cloned())
        {
            Some(param) => serde_json::json!({ param: plan }),
            None => plan,
        };
        messages.push(ChatMessage {
            role: "assistant".into(),
            content: Some(String::new()),
            reasoning_content: None,
            tool_calls: vec![WireToolCall {
                id: "call_0".into(),
                kind: "function".into(),
                function: WireFunction {
                    name: submit,
                    arguments: arguments.to_string(),
                },
            }],
            tool_call_id: None,
        });
        texts.push(
            chat.render(&messages, &tools, false)
                .map_err(|e| anyhow::anyhow!(e))?,
        );
    }
    Ok(texts)
}

fn init(a: InitArgs) -> Result<()> {
    let preset = Preset::parse(&a.preset)?;
    let store = StoreAs::parse(&a.dtype)?;
    let mut cfg = preset.config();
    if let Some(n) = a.max_position_embeddings {
        cfg.max_position_embeddings = n;
    }
    if let Some(n) = a.num_attention_heads {
        cfg.num_attention_heads = n;
    }
    cfg.validate()?;
    let started = Instant::now();
    let tok = tokenizer::train_bpe(&corpus(120)?, cfg.vocab_size)?;
    let tensors = random_tensors(&cfg, a.seed);
    let params: usize = tensors.iter().map(|t| t.data.len()).sum();
    write_checkpoint(&a.out, &cfg, &tensors, store, &tok)?;
    eprintln!(
        "model init: {} preset, {:.2}M parameters, {} → {} in {:.1}s",
        a.preset,
        params as f64 / 1e6,
        a.dtype,
        a.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn train_tokenizer(a: TokenizerArgs) -> Result<()> {
    let json = tokenizer::train_bpe(&corpus(a.tasks)?, a.vocab_size)?;
    envsynth_core::files::atomic_write(&a.out, json.as_bytes())
        .with_context(|| format!("{}", a.out.display()))?;
    eprintln!(
        "tokenizer: {} entries (asked for {}) → {}",
        tokenizer::vocab_size(&json)?,
        a.vocab_size,
        a.out.display()
    );
    Ok(())
}

fn generate_text(a: GenerateArgs) -> Result<()> {
    crate::existing(&a.model, "--model")?;
    let model = Model::load(&a.model)?;
    let tok = tokenizer::load(&a.model)?;
    let ids = tokenizer::encode(&tok, &format!("{BOS}{}", a.prompt))?;
    let mut sampler = Sampler::new(
        SamplingParams {
            temperature: a.temperature,
            top_p: a.top_p,
            top_k: a.top_k,
        },
        a.seed,
    )?;
    let stop = Stop {
        eos: model.cfg.eos_token_id.into_iter().collect(),
        max_new_tokens: a.max_new_tokens.max(1),
        strings: Vec::new(),
    };
    let started = Instant::now();
    let g = envsynth_policy::generate(&model, &ids, &mut sampler, &stop, |_| String::new())?;
    let secs = started.elapsed().as_secs_f64();
    println!("{}", tokenizer::decode(&tok, &g.tokens)?);
    eprintln!(
        "generate: {} prompt tokens, {} new tokens ({:?}) in {secs:.2}s",
        ids.len(),
        g.tokens.len(),
        g.finish
    );
    Ok(())
}

#[derive(serde::Serialize)]
struct BenchRow {
    preset: String,
    attention: &'static str,
    prompt_tokens: usize,
    prefill_tokens_per_s: f64,
    decode_tokens_per_s: f64,
    context_at_decode: usize,
    index_topk: usize,
}

fn bench(a: BenchArgs) -> Result<()> {
    let preset = Preset::parse(&a.preset)?;
    if a.prompt_tokens == 0 || a.new_tokens == 0 {
        bail!("--prompt-tokens and --new-tokens must be positive");
    }
    let mut cfg: Config = preset.config();
    if let Some(k) = a.topk {
        cfg.index_topk = k;
    }
    cfg.max_position_embeddings = cfg
        .max_position_embeddings
        .max(a.prompt_tokens + a.new_tokens + 1);
    let model = Model::from_tensors(cfg.clone(), Tensors::from_named(random_tensors(&cfg, 0)))?;
    let prompt: Vec<u32> = (0..a.prompt_tokens as u32)
        .map(|i| i.wrapping_mul(2_654_435_761) % cfg.vocab_size as u32)
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!(
        "model bench: {} preset, prompt {} tokens, {} decode steps, top-k {}, {threads} threads",
        a.preset, a.prompt_tokens, a.new_tokens, cfg.index_topk
    );
    let mut rows = Vec::new();
    // Dense first, then sparse, in one run: the baseline is measured beside the figure.
    for (attention, selection) in [("dense", Selection::Dense), ("sparse", Selection::Sparse)] {
        let mut cache = Cache::new(&model);
        let t = Instant::now();
        let logits = model.forward(
            &mut [Segment {
                cache: &mut cache,
                tokens: &prompt,
            }],
            Forward {
                mode: AttentionMode::Mha,
                selection,
                logits: Logits::Last,
            },
        )?;
        let prefill = t.elapsed().as_secs_f64();
        let mut sampler = Sampler::new(
            SamplingParams {
                temperature: 0.0,
                ..SamplingParams::default()
            },
            0,
        )?;
        let mut next = sampler.sample(&logits[0]);
        let t = Instant::now();
        for _ in 0..a.new_tokens {
            let l = model.forward(
                &mut [Segment {
                    cache: &mut cache,
                    tokens: &[next],
                }],
                Forward {
                    mode: AttentionMode::Absorbed,
                    selection,
                    logits: Logits::Last,
                },
            )?;
            next = sampler.sample(&l[0]);
        }
        let decode = t.elapsed().as_secs_f64();
        rows.push(BenchRow {
            preset: a.preset.clone(),
            attention,
            prompt_tokens: a.prompt_tokens,
            prefill_tokens_per_s: a.prompt_tokens as f64 / prefill,
            decode_tokens_per_s: a.new_tokens as f64 / decode,
            context_at_decode: a.prompt_tokens,
            index_topk: cfg.index_topk,
        });
    }
    // Batched decode: `batch` copies of the prompt's context decoding together (sparse).
    if a.batch > 1 {
        let mut cache = Cache::new(&model);
        let logits = model.prefill(&mut cache, &prompt)?;
        let first = SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        };
        let mut caches: Vec<Cache> = (0..a.batch).map(|_| cache.clone()).collect();
        let mut samplers: Vec<Sampler> = (0..a.batch)
            .map(|_| Sampler::new(first, 0))
            .collect::<Result<_, _>>()?;
        let mut next: Vec<u32> = samplers.iter_mut().map(|s| s.sample(&logits)).collect();
        let t = Instant::now();
        for _ in 0..a.new_tokens {
            let mut batch: Vec<(&mut Cache, u32)> =
                caches.iter_mut().zip(next.iter().copied()).collect();
            let l = model.decode_batch(&mut batch)?;
            for ((n, s), row) in next.iter_mut().zip(&mut samplers).zip(&l) {
                *n = s.sample(row);
            }
        }
        let decode = t.elapsed().as_secs_f64();
        rows.push(BenchRow {
            preset: a.preset.clone(),
            attention: "sparse, batched",
            prompt_tokens: a.prompt_tokens,
            prefill_tokens_per_s: f64::NAN,
            decode_tokens_per_s: (a.batch * a.new_tokens) as f64 / decode,
            context_at_decode: a.prompt_tokens,
            index_topk: cfg.index_topk,
        });
    }
    println!("| preset | attention | prompt | prefill tok/s | decode tok/s |");
    println!("|---|---|---:|---:|---:|");
    for r in &rows {
        let attention = if r.attention == "sparse, batched" {
            format!("sparse, {} sequences together", a.batch)
        } else {
            r.attention.to_string()
        };
        let prefill = if r.prefill_tokens_per_s.is_nan() {
            "".to_string()
        } else {
            format!("{:.1}", r.prefill_tokens_per_s)
        };
        println!(
            "| {} | {attention} | {} | {prefill} | {:.2} |",
            r.preset, r.prompt_tokens, r.decode_tokens_per_s
        );
    }
    if let Some(path) = &a.json {
        let mut bytes = serde_json::to_vec_pretty(&rows)?;
        bytes.push(b'\n');
        envsynth_core::files::atomic_write(path, &bytes)
            .with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}

/// Exit status when the GPU checks could not run on this machine (no driver, no NVRTC): distinct
/// from success and from a failed check, so CI reports them as not run.
pub const GPU_NOT_RUN: u8 = 3;

fn gpu_check(a: GpuCheckArgs) -> Result<()> {
    use envsynth_policy::gpu;
    if a.compile_only {
        let started = Instant::now();
        let cubin = gpu::compile_cubin(gpu::KERNELS)?;
        eprintln!(
            "gpu-check: kernels compiled for {} by NVRTC: {} bytes of CUBIN in {:.1}s",
            gpu::ARCH,
            cubin.len(),
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }
    let g = match gpu::Gpu::open(&gpu::default_cache()) {
        Ok(g) => g,
        Err(e @ (gpu::GpuError::NoDriver(_) | gpu::GpuError::NoNvrtc(_))) => {
            eprintln!("gpu-check: NOT RUN: {e}");
            std::process::exit(i32::from(GPU_NOT_RUN));
        }
        Err(e) => return Err(e.into()),
    };
    let seed = a.seed.unwrap_or_else(gpu::check::fresh_seed);
    eprintln!(
        "gpu-check: {} ({} SMs), seed {seed}, kernels {}",
        g.name,
        g.multiprocessors,
        if g.cached {
            "from the cache"
        } else {
            "compiled now"
        }
    );
    let contexts = if a.checks_only {
        Vec::new()
    } else {
        a.contexts.clone()
    };
    let mut report = gpu::check::run(&g, seed, &contexts, !a.checks_only)?;
    if let Some(dir) = &a.model {
        report.e2e = e2e(&g, dir, &a)?;
    }
    println!("| check | precision | rel. error | bound | result |");
    println!("|---|---|---:|---:|---|");
    for c in &report.checks {
        println!(
            "| {} | {} | {:.2e} | {:.0e} | {} |",
            c.name,
            c.precision,
            c.rel_err,
            c.bound,
            if c.passed { "pass" } else { "FAIL" }
        );
    }
    if !report.bench.is_empty() {
        println!();
        println!(
            "| context | indexer ms | top-k ms | sparse attn ms | prefill ms | indexer TFLOP/s | attn TFLOP/s | decode sparse ms | decode dense ms |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for b in &report.bench {
            println!(
                "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {:.3} ({:.3} + {:.3} + {:.3}) | {:.3} |",
                b.context,
                b.prefill_indexer_ms,
                b.prefill_topk_ms,
                b.prefill_attention_ms,
                b.prefill_total_ms,
                b.prefill_indexer_tflops,
                b.prefill_attention_tflops,
                b.decode_sparse_ms,
                b.decode_indexer_ms,
                b.decode_topk_ms,
                b.decode_attention_ms,
                b.decode_dense_ms
            );
        }
    }
    if !report.bench.is_empty() {
        println!();
        println!(
            "| context | FP8 indexer ms | FP8 indexer TFLOP/s | prefill ms with the FP8 indexer | decode sparse ms with the FP8 indexer (its indexer) | q quantization ms, prefill / decode (apart) |"
        );
        println!("|---:|---:|---:|---:|---:|---:|");
        for b in &report.bench {
            println!(
                "| {} | {:.2} | {:.0} | {:.2} | {:.3} ({:.3}) | {:.3} / {:.4} |",
                b.context,
                b.prefill_indexer_fp8_ms,
                b.prefill_indexer_fp8_tflops,
                b.prefill_total_fp8_ms,
                b.decode_sparse_fp8_ms,
                b.decode_indexer_fp8_ms,
                b.prefill_query_quant_ms,
                b.decode_query_quant_ms
            );
        }
    }
    if !report.bench.is_empty() {
        println!();
        println!(
            "| context, 128 heads | sparse attn ms | attn TFLOP/s | prefill ms, bf16 / FP8 indexer | decode sparse ms, bf16 / FP8 indexer (attention) | decode dense ms |"
        );
        println!("|---:|---:|---:|---:|---:|---:|");
        for b in &report.bench {
            println!(
                "| {} | {:.2} | {:.0} | {:.2} / {:.2} | {:.3} / {:.3} ({:.3}) | {:.3} |",
                b.context,
                b.prefill_attention_h128_ms,
                b.prefill_attention_h128_tflops,
                b.prefill_total_h128_ms,
                b.prefill_total_fp8_h128_ms,
                b.decode_sparse_h128_ms,
                b.decode_sparse_fp8_h128_ms,
                b.decode_attention_h128_ms,
                b.decode_dense_h128_ms
            );
        }
    }
    if let Some(tflops) = report.decode_batch_tflops {
        println!(
            "sparse decode, batch {} × 64 heads, top-k 2048: {tflops:.0} TFLOP/s",
            report.decode_batch
        );
    }
    if !report.e2e.is_empty() {
        println!();
        println!(
            "| indexer | batch | prompt | prefill s | decode steps | decode s | decode tok/s |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for r in &report.e2e {
            println!(
                "| {} | {} | {} | {:.2} | {} | {:.3} | {:.0} |",
                if r.fp8_indexer { "FP8" } else { "bf16" },
                r.batch,
                r.prompt,
                r.prefill_s,
                r.steps,
                r.decode_s,
                r.decode_tokens_per_s
            );
        }
    }
    if let Some(path) = &a.json {
        let mut bytes = serde_json::to_vec_pretty(&report)?;
        bytes.push(b'\n');
        envsynth_core::files::atomic_write(path, &bytes)
            .with_context(|| format!("{}", path.display()))?;
    }
    if !report.passed() {
        bail!("gpu-check: some kernels disagree with the CPU reference (seed {seed})");
    }
    Ok(())
}

/// End-to-end greedy decoding of the checkpoint in `dir` on the GPU, one batch size after
/// another, all sequences of a batch decoding together: with the bf16 indexer, then the FP8 one.
fn e2e(
    g: &envsynth_policy::gpu::Gpu,
    dir: &std::path::Path,
    a: &GpuCheckArgs,
) -> Result<Vec<envsynth_policy::gpu::model_check::E2e>> {
    use envsynth_policy::gpu::{model, model_check};
    if a.e2e_prompt == 0 || a.e2e_steps == 0 || a.e2e_batches.contains(&0) {
        bail!("--e2e-prompt, --e2e-steps and --e2e-batches must be positive");
    }
    let cpu = envsynth_policy::Model::load(dir)?;
    let most = a.e2e_batches.iter().copied().max().unwrap_or(1);
    let per_seq = (a.e2e_prompt + model_check::E2E_WARM_STEPS + a.e2e_steps + 1)
        .next_multiple_of(model::PAGE);
    let mut out = Vec::new();
    for fp8_indexer in [false, true] {
        let mut gm = model::GpuModel::new(
            g.clone(),
            &cpu,
            model::GpuOptions {
                cache_tokens: most * per_seq,
                fp8_indexer,
                decode_rows: 0,
            },
        )?;
        model_check::e2e(&mut gm, 1, 256, 4)?; // warm-up
        for &b in &a.e2e_batches {
            out.push(model_check::e2e(&mut gm, b, a.e2e_prompt, a.e2e_steps)?);
        }
    }
    Ok(out)
}
