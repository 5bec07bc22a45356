//! The whole model on the GPU against the CPU reference, and its end-to-end decode throughput.

use std::time::Instant;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::check::{Check, check, f64s, rel_err};
use super::model::{GpuModel, GpuOptions, GpuSeq};
use super::{Gpu, GpuError};
use crate::checkpoint::Tensors;
use crate::config::Preset;
use crate::init::random_tensors;
use crate::model::{AttentionMode, Cache, Forward, Logits, Model, Segment, Selection};

/// Relative error bound of whole-model logits: the GPU rounds every matrix product's inputs to
/// bf16 (8 significant bits) and the attention probabilities too, where the CPU reference is f32
/// throughout; over two layers that is about 1% (measured 0.3–0.6%), with room for the rare
/// top-k or expert choice that the rounding flips.
pub const MODEL_BF16_BOUND: f64 = 3e-2;

fn model_err(e: crate::ModelError) -> GpuError {
    GpuError::Cuda(format!("model: {e}"))
}

/// Random bf16-exact weights at the small preset's shapes with `index_topk` lowered, so both
/// sides hold the same numbers and top-k < context in most rows.
pub fn check_model(seed: u64, index_topk: usize, positions: usize) -> Result<Model, GpuError> {
    let mut cfg = Preset::Small.config();
    cfg.index_topk = index_topk;
    cfg.max_position_embeddings = positions;
    let tensors = random_tensors(&cfg, seed)
        .into_iter()
        .map(|mut t| {
            for v in &mut t.data {
                *v = half::bf16::from_f32(*v).to_f32();
            }
            t
        })
        .collect();
    Model::from_tensors(cfg, Tensors::from_named(tensors)).map_err(model_err)
}

/// Two sequences prefilled together (one call, MHA mode on the CPU), then decoded together for
/// three steps (absorbed mode on the CPU); every logits row compared.
pub fn model_checks(gpu: &Gpu, rng: &mut ChaCha8Rng) -> Result<Vec<Check>, GpuError> {
    let topk = 256;
    let model = check_model(rng.random(), topk, 2048)?;
    let vocab = model.cfg.vocab_size as u32;
    let mut gm =
        GpuModel::new(gpu.clone(), &model, GpuOptions { cache_tokens: 4096 }).map_err(model_err)?;
    let lens = [600usize, 333];
    let prompts: Vec<Vec<u32>> = lens
        .iter()
        .map(|&l| (0..l).map(|_| rng.random_range(0..vocab)).collect())
        .collect();
    let mut caches = [Cache::new(&model), Cache::new(&model)];
    let mut seqs = [gm.new_seq(), gm.new_seq()];
    let all = Forward {
        mode: AttentionMode::Mha,
        selection: Selection::Sparse,
        logits: Logits::All,
    };
    let want = {
        let [c0, c1] = &mut caches;
        let mut segs = [
            Segment {
                cache: c0,
                tokens: &prompts[0],
            },
            Segment {
                cache: c1,
                tokens: &prompts[1],
            },
        ];
        model.forward(&mut segs, all).map_err(model_err)?
    };
    let got = {
        let [s0, s1] = &mut seqs;
        gm.forward(
            &mut [(s0, prompts[0].as_slice()), (s1, prompts[1].as_slice())],
            Logits::All,
        )
        .map_err(model_err)?
    };
    let mut out = vec![logits_check(
        "model_prefill_logits",
        &got,
        &want,
        format!(
            "small preset, random bf16 weights, 2 sequences of {} and {} tokens in one call, top-k {topk}",
            lens[0], lens[1]
        ),
    )];
    let steps = 3;
    let (mut got_d, mut want_d) = (Vec::new(), Vec::new());
    for _ in 0..steps {
        let next = [rng.random_range(0..vocab), rng.random_range(0..vocab)];
        let [c0, c1] = &mut caches;
        want_d.extend(
            model
                .decode_batch(&mut [(c0, next[0]), (c1, next[1])])
                .map_err(model_err)?,
        );
        let [s0, s1] = &mut seqs;
        got_d.extend(
            gm.forward(&mut [(s0, &next[..1]), (s1, &next[1..])], Logits::Last)
                .map_err(model_err)?,
        );
    }
    out.push(logits_check(
        "model_decode_logits",
        &got_d,
        &want_d,
        format!("batch 2, {steps} steps after the prefill, top-k {topk}"),
    ));
    let [s0, s1] = seqs;
    gm.release(s0);
    gm.release(s1);
    Ok(out)
}

fn logits_check(name: &str, got: &[Vec<f32>], want: &[Vec<f32>], detail: String) -> Check {
    let flat = |v: &[Vec<f32>]| f64s(&v.concat());
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| rel_err(&f64s(g), &f64s(w)))
        .fold(0.0f64, f64::max);
    let argmax_agree = got
        .iter()
        .zip(want)
        .filter(|(g, w)| argmax(g) == argmax(w))
        .count();
    let err = if got.len() == want.len() {
        rel_err(&flat(got), &flat(want))
    } else {
        f64::INFINITY
    };
    check(
        name,
        "bf16",
        err,
        MODEL_BF16_BOUND,
        format!(
            "{detail}; {} rows, worst row {worst:.2e}, same argmax in {argmax_agree}",
            want.len()
        ),
    )
}

pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// End-to-end greedy decoding on the GPU at one batch size.
#[derive(Clone, Debug, Serialize)]
pub struct E2e {
    pub batch: usize,
    pub prompt: usize,
    pub steps: usize,
    pub prefill_s: f64,
    pub decode_s: f64,
    pub decode_tokens_per_s: f64,
    /// The greedy tokens of sequence 0 (to compare with another implementation).
    pub tokens0: Vec<u32>,
}

/// Prompt token `i` of sequence `b` (the PyTorch side computes the same).
pub fn prompt_token(b: usize, i: usize, vocab: usize) -> u32 {
    ((i * 131 + b * 977 + 7) % vocab) as u32
}

/// Prefills `batch` prompts of `prompt` tokens, then times `steps` greedy decode steps of all
/// of them together (host argmax and the token round trip included).
pub fn e2e(gm: &mut GpuModel, batch: usize, prompt: usize, steps: usize) -> Result<E2e, GpuError> {
    let vocab = gm.cfg.vocab_size;
    let mut seqs: Vec<GpuSeq> = (0..batch).map(|_| gm.new_seq()).collect();
    let mut next = Vec::with_capacity(batch);
    let started = Instant::now();
    for (b, seq) in seqs.iter_mut().enumerate() {
        let toks: Vec<u32> = (0..prompt).map(|i| prompt_token(b, i, vocab)).collect();
        let logits = gm
            .forward(&mut [(seq, toks.as_slice())], Logits::Last)
            .map_err(model_err)?;
        next.push(argmax(&logits[0]));
    }
    gm.gpu().sync()?;
    let prefill_s = started.elapsed().as_secs_f64();
    let mut tokens0 = vec![next[0]];
    let started = Instant::now();
    for _ in 0..steps {
        let toks: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let mut segs: Vec<(&mut GpuSeq, &[u32])> = seqs
            .iter_mut()
            .zip(&toks)
            .map(|(s, t)| (s, t.as_slice()))
            .collect();
        let logits = gm.forward(&mut segs, Logits::Last).map_err(model_err)?;
        next = logits.iter().map(|l| argmax(l)).collect();
        tokens0.push(next[0]);
    }
    let decode_s = started.elapsed().as_secs_f64();
    for s in seqs {
        gm.release(s);
    }
    Ok(E2e {
        batch,
        prompt,
        steps,
        prefill_s,
        decode_s,
        decode_tokens_per_s: (batch * steps) as f64 / decode_s,
        tokens0,
    })
}
