//! The GPU check-and-benchmark program (`envsynth model gpu-check`): every kernel against the
//! CPU reference on fresh random inputs, then the DSA kernels at the small preset's shapes for
//! several context lengths. Relative error is ‖gpu − ref‖₂ / ‖ref‖₂ with the reference in f64
//! (or f32 where the CPU reference is the model's own f32 code).

use std::time::{SystemTime, UNIX_EPOCH};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::{Gpu, GpuError, cuda};
use crate::config::Preset;
use crate::model::index_scores;
use crate::ops::{Rope, RopeStyle, rms_norm, top_k};

/// d_qk, d_v and heads of the sparse MLA kernel (the small preset's absorbed shapes).
const H: usize = 64;
const DQK: usize = 576;
const DV: usize = 512;
/// Indexer heads and head dim.
const IH: usize = 64;
const ID: usize = 128;
const TOPK: usize = 2048;

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub precision: &'static str,
    pub rel_err: f64,
    pub bound: f64,
    pub passed: bool,
    pub detail: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Bench {
    pub context: usize,
    /// One sequence of `context` tokens through indexer, top-k and sparse attention.
    pub prefill_indexer_ms: f64,
    pub prefill_topk_ms: f64,
    pub prefill_attention_ms: f64,
    pub prefill_total_ms: f64,
    pub prefill_indexer_tflops: f64,
    /// The same prefill with the FP8 indexer. Both indexers start from their queries as the
    /// model's `index_query_prep` leaves them, rotated and, for FP8, quantized in that one
    /// kernel (the keys as the cache is written); `hadamard_quant_e4m3` makes the e4m3 queries
    /// here, timed on its own (`prefill_query_quant_ms`, summed over the chunks).
    pub prefill_indexer_fp8_ms: f64,
    pub prefill_query_quant_ms: f64,
    pub prefill_indexer_fp8_tflops: f64,
    pub prefill_total_fp8_ms: f64,
    pub prefill_attention_tflops: f64,
    /// One query at the end of the context.
    pub decode_sparse_ms: f64,
    pub decode_dense_ms: f64,
    /// The sparse decode step's stages, each replayed alone.
    pub decode_indexer_ms: f64,
    pub decode_topk_ms: f64,
    pub decode_attention_ms: f64,
    /// The sparse step with the FP8 indexer, from the e4m3 query (as in prefill), that indexer
    /// stage alone, and the query's quantization alone (`hadamard_quant_e4m3`; runs before the
    /// one of 2026-11-30 13:47 UTC counted it in the step and in the prefill indexer).
    pub decode_sparse_fp8_ms: f64,
    pub decode_indexer_fp8_ms: f64,
    pub decode_query_quant_ms: f64,
    /// The same at DeepSeek-V3.2's 128 query heads (the shape of the dense figure): the
    /// indexer and top-k do the same work (64 indexer heads either way), the attention runs two
    /// blocks a query. Prefill totals add the 64-head run's indexer and top-k times.
    pub prefill_attention_h128_ms: f64,
    pub prefill_attention_h128_tflops: f64,
    pub prefill_total_h128_ms: f64,
    pub prefill_total_fp8_h128_ms: f64,
    pub decode_sparse_h128_ms: f64,
    pub decode_sparse_fp8_h128_ms: f64,
    pub decode_attention_h128_ms: f64,
    /// Dense decode over every row at 128 heads: the faster of two splittings (the model's rule
    /// for two block rows, and the 64-head run's split count, twice the blocks).
    pub decode_dense_h128_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub device: String,
    pub multiprocessors: i32,
    pub seed: u64,
    pub kernels_cached: bool,
    pub checks: Vec<Check>,
    pub bench: Vec<Bench>,
    /// Sparse decode throughput at a batch that fills the GPU (128 queries, top-k 2048).
    pub decode_batch: usize,
    pub decode_batch_tflops: Option<f64>,
    /// End-to-end greedy decoding of a checkpoint (`gpu-check --model DIR`).
    pub e2e: Vec<super::model_check::E2e>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }
}

/// A seed that differs every run (printed, so a failure can be replayed with `--seed`).
pub fn fresh_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// What the GPU top-k kernels write for `row`: the positions of its `k` largest values (ties to
/// the lower position) in ascending order, padded with -1 when the row is shorter than `k`.
fn topk_padded(row: &[f32], k: usize) -> Vec<i32> {
    let mut want: Vec<i32> = top_k(row, k.min(row.len()))
        .into_iter()
        .map(|i| i as i32)
        .collect();
    want.resize(k, -1);
    want
}

pub(crate) fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    let num: f64 = got.iter().zip(want).map(|(a, b)| (a - b) * (a - b)).sum();
    let den: f64 = want.iter().map(|b| b * b).sum();
    if got.iter().any(|v| v.is_nan()) {
        return f64::INFINITY;
    }
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

pub(crate) fn check(
    name: &str,
    precision: &'static str,
    err: f64,
    bound: f64,
    detail: String,
) -> Check {
    Check {
        name: name.into(),
        precision,
        rel_err: err,
        bound,
        passed: err <= bound,
        detail,
    }
}

/// Random values in ±1, and the same values rounded to bf16 (bits and f32).
pub(crate) fn random_bf16(rng: &mut ChaCha8Rng, n: usize) -> (Vec<u16>, Vec<f32>) {
    let mut bits = Vec::with_capacity(n);
    let mut vals = Vec::with_capacity(n);
    for _ in 0..n {
        let b = half::bf16::from_f32(rng.random::<f32>() * 2.0 - 1.0);
        bits.push(b.to_bits());
        vals.push(b.to_f32());
    }
    (bits, vals)
}

/// Indexer logits in f64 of query `r` over keys `0..len`: q holds IH heads of ID values per query,
/// k ID values per key, `w` IH head weights per query (the FP8 checks pass dequantized e4m3).
fn logits_f64(q: &[f64], k: &[f64], w: &[f32], r: usize, len: usize) -> Vec<f64> {
    (0..len)
        .map(|key| {
            let kr = &k[key * ID..(key + 1) * ID];
            (0..IH)
                .map(|h| {
                    let qr = &q[(r * IH + h) * ID..(r * IH + h + 1) * ID];
                    let dot: f64 = qr.iter().zip(kr).map(|(a, b)| a * b).sum();
                    w[r * IH + h] as f64 * dot.max(0.0)
                })
                .sum()
        })
        .collect()
}

fn random_f32(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect()
}

pub(crate) fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// CPU reference of sparse MLA for one query (its heads are `q.len() / DQK`): f64 softmax over
/// the valid selected rows.
fn mla_reference(q: &[f32], kv: &[f32], idx: &[i32], s_len: usize, scale: f64) -> Vec<f64> {
    let heads = q.len() / DQK;
    let mut out = vec![0.0f64; heads * DV];
    let valid: Vec<usize> = idx
        .iter()
        .filter(|&&s| s >= 0 && (s as usize) < s_len)
        .map(|&s| s as usize)
        .collect();
    for h in 0..heads {
        let qh = &q[h * DQK..(h + 1) * DQK];
        let scores: Vec<f64> = valid
            .iter()
            .map(|&s| {
                qh.iter()
                    .zip(&kv[s * DQK..(s + 1) * DQK])
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum::<f64>()
                    * scale
            })
            .collect();
        let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|v| (v - m).exp()).collect();
        let z: f64 = e.iter().sum();
        for (&s, p) in valid.iter().zip(&e) {
            for c in 0..DV {
                out[h * DV + c] += p / z * kv[s * DQK + c] as f64;
            }
        }
    }
    out
}

fn checks(gpu: &Gpu, rng: &mut ChaCha8Rng) -> Result<Vec<Check>, GpuError> {
    let mut out = Vec::new();
    let cfg = Preset::Small.config();

    // RMSNorm.
    let (rows, n) = (37, 1024);
    let x = random_f32(rng, rows * n);
    let w = random_f32(rng, n);
    let (dx, dw) = (gpu.upload(&x)?, gpu.upload(&w)?);
    let mut dy = gpu.zeros::<f32>(rows * n)?;
    gpu.rms_norm(&dx, &dw, &mut dy, rows, n, 1e-6)?;
    let got = gpu.download(&dy)?;
    let want: Vec<f32> = x.chunks(n).flat_map(|r| rms_norm(r, &w, 1e-6)).collect();
    out.push(check(
        "rms_norm",
        "f32",
        rel_err(&f64s(&got), &f64s(&want)),
        1e-5,
        format!("{rows} rows × {n}"),
    ));

    // RoPE, both pairings, as MLA (interleaved, rope last of 192) and the indexer (NeoX, rope first of 128).
    let rope = Rope::new(&cfg);
    let half_dim = cfg.qk_rope_head_dim / 2;
    let max_pos = 4096;
    let mut cos = Vec::with_capacity(max_pos * half_dim);
    let mut sin = Vec::with_capacity(max_pos * half_dim);
    for p in 0..max_pos {
        for f in &rope.freqs {
            cos.push(((p as f64 * f).cos() * rope.attention_factor) as f32);
            sin.push(((p as f64 * f).sin() * rope.attention_factor) as f32);
        }
    }
    let (dcos, dsin) = (gpu.upload(&cos)?, gpu.upload(&sin)?);
    for (name, stride, offset, style) in [
        (
            "rope_interleaved_mla",
            192usize,
            128usize,
            RopeStyle::Interleaved,
        ),
        ("rope_neox_indexer", 128, 0, RopeStyle::Neox),
    ] {
        let (tokens, heads) = (29usize, 8usize);
        let positions: Vec<i32> = (0..tokens)
            .map(|_| rng.random_range(0..max_pos as i32))
            .collect();
        let x = random_f32(rng, tokens * heads * stride);
        let mut dx = gpu.upload(&x)?;
        let dpos = gpu.upload(&positions)?;
        let dim = cfg.qk_rope_head_dim;
        gpu.rope(
            &mut dx,
            &dpos,
            &dcos,
            &dsin,
            tokens * heads,
            heads,
            stride,
            offset,
            dim,
            style == RopeStyle::Interleaved,
        )?;
        let got = gpu.download(&dx)?;
        let mut want = x.clone();
        for v in 0..tokens * heads {
            let at = v * stride + offset;
            rope.apply(
                &mut want[at..at + dim],
                positions[v / heads] as usize,
                style,
            );
        }
        out.push(check(
            name,
            "f32",
            rel_err(&f64s(&got), &f64s(&want)),
            1e-5,
            format!("{tokens} tokens × {heads} heads"),
        ));
    }

    // SwiGLU.
    let n = 10_000;
    let (g, u) = (random_f32(rng, n), random_f32(rng, n));
    let (dg, du) = (gpu.upload(&g)?, gpu.upload(&u)?);
    let mut dout = gpu.zeros::<f32>(n)?;
    gpu.swiglu(&dg, &du, &mut dout, n)?;
    let got = gpu.download(&dout)?;
    let want: Vec<f64> = g
        .iter()
        .zip(&u)
        .map(|(&g, &u)| (g as f64 / (1.0 + (-g as f64).exp())) * u as f64)
        .collect();
    out.push(check(
        "swiglu",
        "f32",
        rel_err(&f64s(&got), &want),
        1e-5,
        format!("{n} elements"),
    ));

    // Indexer logits: T queries at positions first_pos.., causal, odd sizes on purpose.
    let (t, first_pos) = (67usize, 203usize);
    let s = first_pos + t;
    let (qb, qv) = random_bf16(rng, t * IH * ID);
    let (kb, kv) = random_bf16(rng, s * ID);
    let w = random_f32(rng, t * IH);
    let w_folded: Vec<f32> = w.iter().map(|v| v * (ID as f32).powf(-0.5)).collect();
    let (dq, dk, dw) = (gpu.upload(&qb)?, gpu.upload(&kb)?, gpu.upload(&w_folded)?);
    let mut dl = gpu.upload(&vec![f32::NAN; t * s])?;
    gpu.indexer_logits(&dq, &dk, &dw, &mut dl, t, s, s, first_pos)?;
    let got = gpu.download(&dl)?;
    let logits_host = got.clone();
    let (mut g64, mut w64, mut masked_ok) = (Vec::new(), Vec::new(), true);
    for r in 0..t {
        let len = first_pos + r + 1;
        let want = index_scores(
            &qv[r * IH * ID..(r + 1) * IH * ID],
            &w[r * IH..(r + 1) * IH],
            &kv[..len * ID],
            ID,
        );
        g64.extend(got[r * s..r * s + len].iter().map(|&v| v as f64));
        w64.extend(want.iter().map(|&v| v as f64));
        // Future positions are -inf where a tile was computed; tiles wholly in every query's
        // future are skipped (top-k reads only the causal prefix) and keep the poison.
        masked_ok &= got[r * s + len..(r + 1) * s]
            .iter()
            .all(|v| *v == f32::NEG_INFINITY || v.is_nan());
    }
    let e = rel_err(&g64, &w64);
    out.push(Check {
        passed: e <= 1e-4 && masked_ok,
        ..check(
            "indexer_logits",
            "bf16 in, f32 accumulate",
            e,
            1e-4,
            format!(
                "{t} queries × {s} keys, every causal entry written, future masked: {masked_ok}"
            ),
        )
    });

    // Top-k on those logits (exact: same floats, same ties), and on a long row with ties.
    let k = 64;
    let mut di = gpu.zeros::<i32>(t * k)?;
    gpu.topk(&dl, &mut di, t, s, k, first_pos)?;
    let got = gpu.download(&di)?;
    let mut mismatched = 0;
    for r in 0..t {
        let len = first_pos + r + 1;
        let row = &logits_host[r * s..(r + 1) * s];
        let n = k.min(len);
        if got[r * k..r * k + n] != topk_padded(&row[..len], k)[..n] {
            mismatched += 1;
        }
    }
    // Long rows: three of 5,000 levels (ties everywhere), one all equal (too many candidates
    // for the sampled band and for the exact prefix: the radix fallback), one continuous, and
    // one whose keys at the sampled positions (the first 32 of every 512) are its largest, so
    // that the sampled band misses its k-th key and the histogram passes take over.
    let (rows, len) = (6usize, 131_072usize);
    let mut long: Vec<f32> = (0..rows * len)
        .map(|_| (rng.random_range(0..5000) as f32) / 100.0)
        .collect();
    long[3 * len..4 * len].iter_mut().for_each(|v| *v = 1.5);
    long[4 * len..5 * len]
        .iter_mut()
        .for_each(|v| *v = rng.random::<f32>() - rng.random::<f32>());
    long[5 * len..].iter_mut().enumerate().for_each(|(i, v)| {
        *v = rng.random::<f32>() + if i % 512 < 32 { 10.0 } else { 0.0 };
    });
    let dlong = gpu.upload(&long)?;
    let mut dli = gpu.zeros::<i32>(rows * TOPK)?;
    gpu.topk(&dlong, &mut dli, rows, len, TOPK, len)?;
    let got = gpu.download(&dli)?;
    for r in 0..rows {
        if got[r * TOPK..(r + 1) * TOPK] != topk_padded(&long[r * len..(r + 1) * len], TOPK)[..] {
            mismatched += 1;
        }
    }
    out.push(Check {
        passed: mismatched == 0,
        ..check(
            "topk",
            "exact",
            mismatched as f64,
            0.0,
            format!("{t} causal rows (k {k}) and {rows} rows of {len} (k {TOPK}): three with ties, one all equal, one continuous, one whose sample misleads; rows differing: {mismatched}"),
        )
    });

    // FP8 indexer: the rotation and quantization against the CPU's Hadamard, the kernel's
    // arithmetic against an f64 sum over the same e4m3 values, and what quantization costs in
    // ranking: overlap of the top 2048 of 8192 keys with the exact bf16 logits.
    let (t, s) = (5usize, 8192usize);
    let (qb, _) = random_bf16(rng, t * IH * ID);
    let (kb, kv) = random_bf16(rng, s * ID);
    let w = random_f32(rng, t * IH);
    let w_folded: Vec<f32> = w.iter().map(|v| v * (ID as f32).powf(-0.5)).collect();
    let (dq, dk, dw) = (gpu.upload(&qb)?, gpu.upload(&kb)?, gpu.upload(&w_folded)?);
    let (mut q8, mut qsc) = (gpu.zeros::<u8>(t * IH * ID)?, gpu.zeros::<f32>(t * IH)?);
    let (mut k8, mut ksc) = (gpu.zeros::<u8>(s * ID)?, gpu.zeros::<f32>(s)?);
    gpu.hadamard_quant(&dq, &mut q8, &mut qsc, t * IH)?;
    gpu.hadamard_quant(&dk, &mut k8, &mut ksc, s)?;
    let (hq8, hqs) = (gpu.download(&q8)?, gpu.download(&qsc)?);
    let (hk8, hks) = (gpu.download(&k8)?, gpu.download(&ksc)?);
    let deq = |b: &[u8], sc: &[f32]| -> Vec<f64> {
        b.iter()
            .enumerate()
            .map(|(i, &x)| crate::checkpoint::e4m3_to_f32(x) as f64 * sc[i / ID] as f64)
            .collect()
    };
    let (qd, kd) = (deq(&hq8, &hqs), deq(&hk8, &hks));
    let mut rotated = kv.clone();
    rotated.chunks_exact_mut(ID).for_each(crate::ops::hadamard);
    out.push(check(
        "hadamard_quant_e4m3",
        "e4m3, power-of-two scale per 128",
        rel_err(&kd, &f64s(&rotated)),
        0.05,
        format!("{s} rows of 128: dequantized against the f32 rotation"),
    ));
    let first_pos = s - t;
    let mut dl = gpu.upload(&vec![f32::NAN; t * s])?;
    gpu.indexer_logits_fp8(&q8, &qsc, &k8, &ksc, &dw, &mut dl, t, s, s, first_pos)?;
    let got = gpu.download(&dl)?;
    let mut dl_exact = gpu.upload(&vec![f32::NAN; t * s])?;
    gpu.indexer_logits(&dq, &dk, &dw, &mut dl_exact, t, s, s, first_pos)?;
    let exact = gpu.download(&dl_exact)?;
    let (mut g64, mut w64, mut overlap) = (Vec::new(), Vec::new(), 0usize);
    for r in 0..t {
        let len = first_pos + r + 1;
        g64.extend(got[r * s..r * s + len].iter().map(|&v| v as f64));
        w64.extend(logits_f64(&qd, &kd, &w_folded, r, len));
        let a = top_k(&got[r * s..r * s + len], TOPK);
        let b: std::collections::BTreeSet<usize> = top_k(&exact[r * s..r * s + len], TOPK)
            .into_iter()
            .collect();
        overlap += a.iter().filter(|i| b.contains(i)).count();
    }
    out.push(check(
        "indexer_logits_fp8",
        // q·k accumulates in f16 on the tensor cores (11-bit mantissa; the operands' scaling
        // keeps it in range), and the head sum runs there too, ReLU(q·k) and the weights in f16
        // with an f32 sum: ~5e-4 relative in all, far below e4m3's own rounding of q and k,
        // which the top-k overlap check below measures. (Rounding ReLU(q·k) to bf16 instead
        // measured ~2.3e-3.)
        "e4m3 in, f16 accumulate, f16 head sum in f32",
        rel_err(&g64, &w64),
        2e-3,
        format!("{t} queries × {s} keys against an f64 sum of the same e4m3 values"),
    ));
    let share = overlap as f64 / (t * TOPK) as f64;
    out.push(Check {
        passed: share >= 0.9,
        ..check(
            "indexer_fp8_topk_overlap",
            "share of the bf16 top-2048 kept",
            1.0 - share,
            0.1,
            format!(
                "{overlap} of {} selected positions agree with the bf16 indexer",
                t * TOPK
            ),
        )
    });

    // Decode: the one-query indexer over per-row lengths (building the top-k's first histograms
    // as it goes, then that top-k), and the multi-block top-k on long rows (with ties), a short
    // row, and a row of equal values (forcing the fallback).
    let (rows, s_len) = (3usize, 5000usize);
    let lens: Vec<i32> = vec![5000, 130, 4097];
    let (qb, qv) = random_bf16(rng, rows * IH * ID);
    let (kb, kv) = random_bf16(rng, s_len * ID);
    let w = random_f32(rng, rows * IH);
    let w_folded: Vec<f32> = w.iter().map(|v| v * (ID as f32).powf(-0.5)).collect();
    let (dq, dk, dw, dlens) = (
        gpu.upload(&qb)?,
        gpu.upload(&kb)?,
        gpu.upload(&w_folded)?,
        gpu.upload(&lens)?,
    );
    let mut dl = gpu.upload(&vec![f32::NAN; rows * s_len])?;
    let mut work = gpu.topk_work(rows, TOPK)?;
    // The top-k right after the indexer, as the model launches them (the top-k may start while
    // the indexer finishes, and waits for it).
    let mut dsel = gpu.upload(&vec![i32::MIN; rows * TOPK])?;
    gpu.indexer_decode(
        &dq,
        &dk,
        &dw,
        &mut dl,
        &dlens,
        rows,
        s_len,
        s_len,
        Some(&mut work),
    )?;
    gpu.topk_decode(&dl, &dlens, rows, s_len, &mut work, &mut dsel)?;
    let got = gpu.download(&dl)?;
    let sel = gpu.download(&dsel)?;
    let mut sel_differ = Vec::new();
    let (mut g64, mut w64) = (Vec::new(), Vec::new());
    for r in 0..rows {
        let len = lens[r] as usize;
        let want = index_scores(
            &qv[r * IH * ID..(r + 1) * IH * ID],
            &w[r * IH..(r + 1) * IH],
            &kv[..len * ID],
            ID,
        );
        g64.extend(got[r * s_len..r * s_len + len].iter().map(|&v| v as f64));
        w64.extend(want.iter().map(|&v| v as f64));
        // The selection from the indexer's histograms, against a sort of the same logits.
        if sel[r * TOPK..(r + 1) * TOPK] != topk_padded(&got[r * s_len..r * s_len + len], TOPK)[..]
        {
            sel_differ.push(r);
        }
    }
    out.push(check(
        "indexer_decode",
        "bf16 in, f32 accumulate",
        rel_err(&g64, &w64),
        1e-4,
        format!("{rows} queries, lengths {lens:?}"),
    ));
    out.push(Check {
        passed: sel_differ.is_empty(),
        ..check(
            "indexer_decode_topk",
            "exact",
            sel_differ.len() as f64,
            0.0,
            format!("top-{TOPK} from the histograms the indexer built, against a sort of its logits; rows differing: {sel_differ:?}"),
        )
    });

    // The same rows through the FP8 decode indexer: its arithmetic against an f64 sum over the
    // same e4m3 values (as for the prefill one), and the top-k from the histograms it built.
    let (mut q8, mut qsc) = (
        gpu.zeros::<u8>(rows * IH * ID)?,
        gpu.zeros::<f32>(rows * IH)?,
    );
    let (mut k8, mut ksc) = (gpu.zeros::<u8>(s_len * ID)?, gpu.zeros::<f32>(s_len)?);
    gpu.hadamard_quant(&dq, &mut q8, &mut qsc, rows * IH)?;
    gpu.hadamard_quant(&dk, &mut k8, &mut ksc, s_len)?;
    let (qd, kd) = (
        deq(&gpu.download(&q8)?, &gpu.download(&qsc)?),
        deq(&gpu.download(&k8)?, &gpu.download(&ksc)?),
    );
    let mut dl = gpu.upload(&vec![f32::NAN; rows * s_len])?;
    let mut dsel = gpu.upload(&vec![i32::MIN; rows * TOPK])?;
    gpu.indexer_decode_fp8(
        &q8,
        &qsc,
        &k8,
        &ksc,
        &dw,
        &mut dl,
        &dlens,
        rows,
        s_len,
        s_len,
        Some(&mut work),
    )?;
    gpu.topk_decode(&dl, &dlens, rows, s_len, &mut work, &mut dsel)?;
    let (got, sel) = (gpu.download(&dl)?, gpu.download(&dsel)?);
    let (mut g64, mut w64, mut sel_differ) = (Vec::new(), Vec::new(), Vec::new());
    for r in 0..rows {
        let len = lens[r] as usize;
        g64.extend(got[r * s_len..r * s_len + len].iter().map(|&v| v as f64));
        w64.extend(logits_f64(&qd, &kd, &w_folded, r, len));
        if sel[r * TOPK..(r + 1) * TOPK] != topk_padded(&got[r * s_len..r * s_len + len], TOPK)[..]
        {
            sel_differ.push(r);
        }
    }
    out.push(check(
        "indexer_decode_fp8",
        // As the prefill FP8 indexer, but the head sum is in f32 on the CUDA cores, so only the
        // tensor cores' ~14-bit accumulation of each 128-long product (~1e-4) remains.
        "e4m3 in, ~14-bit accumulate, f32 head sum",
        rel_err(&g64, &w64),
        1e-3,
        format!("{rows} queries, lengths {lens:?}, against an f64 sum of the same e4m3 values"),
    ));
    out.push(Check {
        passed: sel_differ.is_empty(),
        ..check(
            "indexer_decode_fp8_topk",
            "exact",
            sel_differ.len() as f64,
            0.0,
            format!("top-{TOPK} from the histograms the FP8 indexer built, against a sort of its logits; rows differing: {sel_differ:?}"),
        )
    });

    // Row 0's keys are 0..40 in steps of 0.01: its top-11-bit threshold bin, [32, 40), holds a
    // fifth of the row, more than the candidate buffer, so it takes the second histogram, and
    // its candidates tie. Row 2's keys are continuous (exponential, shifted below 0), so its bin
    // fits and it is collected on 11 bits. Row 3 is all equal (the fallback). Then each of rows
    // 0, 2 and 3 alone: a single row that fits skips the second histogram and its barrier.
    let (rows, len) = (4usize, 131_072usize);
    let mut long: Vec<f32> = (0..rows * len)
        .map(|_| (rng.random_range(0..4000) as f32) / 100.0)
        .collect();
    long[2 * len..3 * len]
        .iter_mut()
        .for_each(|v| *v = -5.0 * (1.0 - rng.random::<f32>()).ln() - 3.0);
    long[3 * len..].iter_mut().for_each(|v| *v = 1.5);
    let lens: Vec<i32> = vec![len as i32, 1000, 70_001, len as i32];
    let (dlong, dlens) = (gpu.upload(&long)?, gpu.upload(&lens)?);
    let mut work = gpu.topk_work(rows, TOPK)?;
    let mut differing = Vec::new();
    // Twice with the same work space: the kernels leave it zeroed for the next call themselves.
    for call in 0..2 {
        let mut dout = gpu.upload(&vec![i32::MIN; rows * TOPK])?;
        gpu.topk_decode(&dlong, &dlens, rows, len, &mut work, &mut dout)?;
        let got = gpu.download(&dout)?;
        for r in 0..rows {
            let l = lens[r] as usize;
            if got[r * TOPK..(r + 1) * TOPK] != topk_padded(&long[r * len..r * len + l], TOPK)[..] {
                differing.push((call, r));
            }
        }
    }
    for r in [0, 2, 3] {
        let l = lens[r] as usize;
        let (drow, dlen) = (
            gpu.upload(&long[r * len..(r + 1) * len])?,
            gpu.upload(&lens[r..=r])?,
        );
        let mut dout = gpu.upload(&vec![i32::MIN; TOPK])?;
        gpu.topk_decode(&drow, &dlen, 1, len, &mut work, &mut dout)?;
        if gpu.download(&dout)? != topk_padded(&long[r * len..r * len + l], TOPK) {
            differing.push((2, r));
        }
    }
    out.push(Check {
        passed: differing.is_empty(),
        ..check(
            "topk_decode",
            "exact",
            differing.len() as f64,
            0.0,
            format!("{rows} rows of {len} (lengths {lens:?}; row 0 with ties past the first histogram, row 2 continuous and collected on 11 bits, row 3 all equal, via the fallback), k {TOPK}, two calls on one work space, then rows 0, 2 and 3 alone (call 2); (call, row) differing: {differing:?}"),
        )
    });

    // Sparse MLA: top-k < context, some invalid indices, one query with fewer valid rows than
    // top-k; split-KV in 1, 3 and 32 parts (1 and 3 leave room to split the value columns over
    // two blocks, `sparse_mla_bf16_vsplit`; 32 splits of 5 queries do not).
    let (t, s_len) = (5usize, 3001usize);
    let scale = (192f64).powf(-0.5);
    let (qb, qv) = random_bf16(rng, t * H * DQK);
    let (kvb, kvv) = random_bf16(rng, s_len * DQK);
    let mut idx = Vec::with_capacity(t * TOPK);
    for r in 0..t {
        let mut chosen: Vec<i32> = (0..s_len as i32).collect();
        for i in 0..TOPK {
            let j = rng.random_range(i..s_len);
            chosen.swap(i, j);
        }
        let mut row: Vec<i32> = chosen[..TOPK].to_vec();
        row.sort_unstable();
        if r == 1 {
            row[100..].iter_mut().for_each(|v| *v = -1); // only 100 valid
        }
        if r == 2 {
            row[7] = -1;
            row[900] = s_len as i32 + 5; // out of range counts as missing
        }
        idx.extend(row);
    }
    let (dq, dkv, didx) = (gpu.upload(&qb)?, gpu.upload(&kvb)?, gpu.upload(&idx)?);
    // The same rows at DeepSeek-V3.2's 128 heads too: two blocks a query and split, one for each
    // group of 64 heads, both reading the query's one index list.
    let (qwb, qwv) = random_bf16(rng, t * 2 * H * DQK);
    let dqw = gpu.upload(&qwb)?;
    for (heads, dqh, qh, all_splits) in [
        (H, &dq, &qv, &[1usize, 3, 32][..]),
        (2 * H, &dqw, &qwv, &[1, 32][..]),
    ] {
        let mut want = Vec::with_capacity(t * heads * DV);
        for r in 0..t {
            want.extend(mla_reference(
                &qh[r * heads * DQK..(r + 1) * heads * DQK],
                &kvv,
                &idx[r * TOPK..(r + 1) * TOPK],
                s_len,
                scale,
            ));
        }
        for &splits in all_splits {
            let mut part = gpu.upload(&vec![f32::NAN; t * splits * heads * DV])?;
            let mut lse = gpu.upload(&vec![f32::NAN; t * splits * heads])?;
            let mut o = gpu.upload(&vec![f32::NAN; t * heads * DV])?;
            gpu.sparse_mla(
                dqh,
                &dkv,
                &didx,
                &mut part,
                &mut lse,
                &mut o,
                t,
                heads,
                s_len,
                TOPK,
                splits,
                scale as f32,
                false,
            )?;
            let got = gpu.download(&o)?;
            let name = if heads == H {
                format!("sparse_mla_splits_{splits}")
            } else {
                format!("sparse_mla_{heads}_heads_splits_{splits}")
            };
            let rows = t * heads / H;
            out.push(check(
                &name,
                "bf16 in, f32 accumulate, bf16 P",
                rel_err(&f64s(&got), &want),
                1e-2,
                format!(
                    "{t} queries, {s_len} cached rows, top-k {TOPK}, {heads} heads ({} block a query and split), d_qk 576, d_v 512, {}",
                    heads / H,
                    if super::value_halves(rows, splits, gpu.multiprocessors as usize) {
                        "value columns over 2 blocks"
                    } else {
                        "one block a split"
                    }
                ),
            ));
        }
    }
    // Launched right after the decode top-k that writes its indices, with programmatic stream
    // serialization (the query copied while the top-k finishes, the indices read after
    // griddepcontrol.wait): the same bits as a plain launch, and within the bound of the f64
    // reference. One query at 128 heads over 32 splits, the batch-1 step's shape; the top-k
    // over random logits of the 3,001 cached rows.
    let logits: Vec<f32> = (0..s_len).map(|_| rng.random::<f32>()).collect();
    let (dlg, dlen) = (gpu.upload(&logits)?, gpu.upload(&[s_len as i32])?);
    let mut work = gpu.topk_work(1, TOPK)?;
    let mut sel = gpu.upload(&vec![i32::MIN; TOPK])?;
    let splits = 32;
    let mut got = Vec::new();
    for after_indices in [false, true] {
        let mut part = gpu.upload(&vec![f32::NAN; splits * 2 * H * DV])?;
        let mut lse = gpu.upload(&vec![f32::NAN; splits * 2 * H])?;
        let mut o = gpu.upload(&vec![f32::NAN; 2 * H * DV])?;
        gpu.topk_decode(&dlg, &dlen, 1, s_len, &mut work, &mut sel)?;
        gpu.sparse_mla(
            &dqw,
            &dkv,
            &sel,
            &mut part,
            &mut lse,
            &mut o,
            1,
            2 * H,
            s_len,
            TOPK,
            splits,
            scale as f32,
            after_indices,
        )?;
        got.push(gpu.download(&o)?);
    }
    let want = mla_reference(
        &qwv[..2 * H * DQK],
        &kvv,
        &topk_padded(&logits, TOPK),
        s_len,
        scale,
    );
    let same_bits = got[0]
        .iter()
        .map(|v| v.to_bits())
        .eq(got[1].iter().map(|v| v.to_bits()));
    let err = rel_err(&f64s(&got[1]), &want);
    out.push(Check {
        passed: same_bits && err <= 1e-2,
        ..check(
            "sparse_mla_after_topk",
            "bf16 in, f32 accumulate, bf16 P",
            err,
            1e-2,
            format!("1 query, {s_len} cached rows, top-k {TOPK} chosen by topk_decode just before, {} heads, {splits} splits, launched to start while the top-k finishes; the same bits as a plain launch: {same_bits}", 2 * H),
        )
    });

    // The same sparse attention over a paged cache (pages of 64 rows in shuffled order) gives
    // the same bits as over the flat cache.
    let page = 64usize;
    let pages = s_len.div_ceil(page);
    let mut order: Vec<i32> = (0..pages as i32).collect();
    for i in (1..pages).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let mut paged = vec![0u16; pages * page * DQK];
    for (p, &slot) in order.iter().enumerate() {
        for o in 0..page {
            let row = p * page + o;
            if row < s_len {
                let phys = slot as usize * page + o;
                paged[phys * DQK..(phys + 1) * DQK]
                    .copy_from_slice(&kvb[row * DQK..(row + 1) * DQK]);
            }
        }
    }
    let (dpaged, dtable) = (gpu.upload(&paged)?, gpu.upload(&order)?);
    let mut results = Vec::new();
    for paging in [None, Some((&dtable, page))] {
        let mut part = gpu.zeros::<f32>(t * 3 * H * DV)?;
        let mut lse = gpu.zeros::<f32>(t * 3 * H)?;
        let mut o = gpu.upload(&vec![f32::NAN; t * H * DV])?;
        let cache = if paging.is_some() { &dpaged } else { &dkv };
        gpu.sparse_mla_paged(
            &dq,
            cache,
            paging,
            &didx,
            &mut part,
            &mut lse,
            &mut o,
            t,
            H,
            s_len,
            TOPK,
            3,
            scale as f32,
            false,
        )?;
        results.push(gpu.download(&o)?);
    }
    let same = results[0] == results[1];
    out.push(Check {
        passed: same,
        ..check(
            "sparse_mla_paged",
            "bitwise against the flat cache",
            if same { 0.0 } else { 1.0 },
            0.0,
            format!("{pages} pages of {page} rows in shuffled order"),
        )
    });

    // MoE routing against model::route, at the small preset's and the 671B model's shapes.
    for preset in [
        Preset::Small.config(),
        serde_json::from_str::<crate::Config>("{}").map_err(|e| GpuError::Cuda(e.to_string()))?,
    ] {
        let tokens = 37usize;
        let e = preset.n_routed_experts;
        let k = preset.num_experts_per_tok;
        let logits: Vec<f32> = (0..tokens * e)
            .map(|_| rng.random::<f32>() * 8.0 - 4.0)
            .collect();
        let bias: Vec<f32> = (0..e).map(|_| rng.random::<f32>() * 0.2 - 0.1).collect();
        let (dlog, dbias) = (gpu.upload(&logits)?, gpu.upload(&bias)?);
        let mut ids = gpu.upload(&vec![-1i32; tokens * k])?;
        let mut wts = gpu.upload(&vec![f32::NAN; tokens * k])?;
        gpu.moe_route(&dlog, &dbias, &mut ids, &mut wts, tokens, &preset)?;
        let (got_ids, got_w) = (gpu.download(&ids)?, gpu.download(&wts)?);
        let (mut want_ids, mut want_w) = (Vec::new(), Vec::new());
        for r in 0..tokens {
            for (id, w) in crate::model::route(&preset, &logits[r * e..(r + 1) * e], &bias) {
                want_ids.push(id as i32);
                want_w.push(w as f64);
            }
        }
        let ids_equal = got_ids == want_ids;
        let err = rel_err(&f64s(&got_w), &want_w);
        out.push(Check {
            passed: ids_equal && err <= 1e-5,
            ..check(
                &format!("moe_route_{e}_experts"),
                "f32; expert ids exact",
                err,
                1e-5,
                format!(
                    "{tokens} tokens, {} groups keep {}, {k} experts each; ids equal: {ids_equal}",
                    preset.n_group, preset.topk_group
                ),
            )
        });
    }
    Ok(out)
}

/// Milliseconds of `f` between two events on the GPU's stream.
fn timed(gpu: &Gpu, f: impl FnOnce() -> Result<(), GpuError>) -> Result<f64, GpuError> {
    let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let a = gpu.ctx.new_event(flags).map_err(cuda)?;
    let b = gpu.ctx.new_event(flags).map_err(cuda)?;
    a.record(&gpu.stream).map_err(cuda)?;
    f()?;
    b.record(&gpu.stream).map_err(cuda)?;
    Ok(a.elapsed_ms(&b).map_err(cuda)? as f64)
}

/// Median milliseconds of each graph over `reps` replays, interleaved, after one warm-up round.
/// Each replay is queued behind a 200 µs `hold`, so its events measure the GPU running the
/// graph whatever the host's launch latency (a batch-1 decode step is tens of µs). The replays
/// stay interleaved rather than back to back: a graph replayed right after itself would find its
/// data in L2, which a model's other layers evict between two steps of one layer.
fn replay<const N: usize>(
    gpu: &Gpu,
    graphs: [&cudarc::driver::CudaGraph; N],
    reps: usize,
) -> Result<[f64; N], GpuError> {
    let mut times: [Vec<f64>; N] = std::array::from_fn(|_| Vec::with_capacity(reps));
    for rep in 0..=reps {
        for (g, t) in graphs.iter().zip(times.iter_mut()) {
            gpu.hold(200_000)?;
            let ms = timed(gpu, || g.launch().map_err(cuda))?;
            if rep > 0 {
                t.push(ms);
            }
        }
    }
    Ok(times.map(median))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench_context(gpu: &Gpu, rng: &mut ChaCha8Rng, l: usize) -> Result<Bench, GpuError> {
    let chunk = l.min(4096);
    let scale = (192f32).powf(-0.5);
    // The cache of one layer: indexer keys and MLA rows for every position.
    let (kb, _) = random_bf16(rng, l * ID);
    let (kvb, _) = random_bf16(rng, l * DQK);
    let (dk, dkv) = (gpu.upload(&kb)?, gpu.upload(&kvb)?);
    // One chunk of queries, reused for every chunk (values do not change the work).
    let (qib, _) = random_bf16(rng, chunk * IH * ID);
    let w: Vec<f32> = random_f32(rng, chunk * IH)
        .iter()
        .map(|v| v * (ID as f32).powf(-0.5))
        .collect();
    // MLA queries for 128 heads; the 64-head runs read the first half ([t, 64, 576]).
    const WIDE: usize = 2 * H;
    let (qmb, _) = random_bf16(rng, chunk * WIDE * DQK);
    let (dqi, dw, dqm) = (gpu.upload(&qib)?, gpu.upload(&w)?, gpu.upload(&qmb)?);
    let mut logits = gpu.zeros::<f32>(chunk * l)?;
    let mut idx = gpu.zeros::<i32>(chunk * TOPK)?;
    let mut part = gpu.zeros::<f32>(chunk * WIDE * DV)?;
    let mut lse = gpu.zeros::<f32>(chunk * WIDE)?;
    let mut o = gpu.zeros::<f32>(chunk * WIDE * DV)?;

    let mut b = Bench {
        context: l,
        ..Bench::default()
    };
    // The FP8 path's operands: keys quantized once (the cache write), queries per chunk (timed
    // apart from the indexer: in the model the kernel that rotates the queries quantizes them).
    let (mut k8, mut ksc) = (gpu.zeros::<u8>(l * ID)?, gpu.zeros::<f32>(l)?);
    gpu.hadamard_quant(&dk, &mut k8, &mut ksc, l)?;
    let (mut q8, mut qsc) = (
        gpu.zeros::<u8>(chunk * IH * ID)?,
        gpu.zeros::<f32>(chunk * IH)?,
    );
    let mut indexer_flop = 0f64;
    let mut attention_flop = 0f64;
    for c0 in (0..l).step_by(chunk) {
        let t = chunk.min(l - c0);
        b.prefill_indexer_ms += timed(gpu, || {
            gpu.indexer_logits(&dqi, &dk, &dw, &mut logits, t, c0 + t, l, c0)
        })?;
        b.prefill_query_quant_ms +=
            timed(gpu, || gpu.hadamard_quant(&dqi, &mut q8, &mut qsc, t * IH))?;
        b.prefill_indexer_fp8_ms += timed(gpu, || {
            gpu.indexer_logits_fp8(&q8, &qsc, &k8, &ksc, &dw, &mut logits, t, c0 + t, l, c0)
        })?;
        b.prefill_topk_ms += timed(gpu, || gpu.topk(&logits, &mut idx, t, l, TOPK, c0))?;
        b.prefill_attention_ms += timed(gpu, || {
            gpu.sparse_mla(
                &dqm, &dkv, &idx, &mut part, &mut lse, &mut o, t, H, l, TOPK, 1, scale, false,
            )
        })?;
        b.prefill_attention_h128_ms += timed(gpu, || {
            gpu.sparse_mla(
                &dqm, &dkv, &idx, &mut part, &mut lse, &mut o, t, WIDE, l, TOPK, 1, scale, false,
            )
        })?;
        for r in 0..t {
            let visible = (c0 + r + 1) as f64;
            indexer_flop += 2.0 * (IH * ID) as f64 * visible;
            attention_flop += 2.0 * (H * (DQK + DV)) as f64 * visible.min(TOPK as f64);
        }
    }
    b.prefill_total_ms = b.prefill_indexer_ms + b.prefill_topk_ms + b.prefill_attention_ms;
    b.prefill_indexer_tflops = indexer_flop / (b.prefill_indexer_ms * 1e-3) / 1e12;
    b.prefill_indexer_fp8_tflops = indexer_flop / (b.prefill_indexer_fp8_ms * 1e-3) / 1e12;
    b.prefill_total_fp8_ms = b.prefill_indexer_fp8_ms + b.prefill_topk_ms + b.prefill_attention_ms;
    b.prefill_attention_tflops = attention_flop / (b.prefill_attention_ms * 1e-3) / 1e12;
    b.prefill_attention_h128_tflops =
        2.0 * attention_flop / (b.prefill_attention_h128_ms * 1e-3) / 1e12;
    b.prefill_total_h128_ms =
        b.prefill_indexer_ms + b.prefill_topk_ms + b.prefill_attention_h128_ms;
    b.prefill_total_fp8_h128_ms =
        b.prefill_indexer_fp8_ms + b.prefill_topk_ms + b.prefill_attention_h128_ms;

    // Decode, batch 1, at the end of the context: sparse (indexer + top-k + 2048 rows) against
    // dense absorbed attention over every cached row (the same kernel, all indices). Both split
    // their rows over the multiprocessors by the model's own rule: the 2,048 selected rows one
    // tile of 64 a block, the dense rows one tile a block at 8K and 16 at 128K.
    let sms = gpu.multiprocessors as usize;
    let splits_sparse = super::model::attention_splits(1, sms, TOPK);
    let dlen = gpu.upload(&[l as i32])?;
    let mut work = gpu.topk_work(1, TOPK)?;
    let all: Vec<i32> = (0..l as i32).collect();
    let dall = gpu.upload(&all)?;
    let splits_dense = super::model::attention_splits(1, sms, l);
    let mut part_d = gpu.zeros::<f32>(splits_dense * H * DV)?;
    let mut lse_d = gpu.zeros::<f32>(splits_dense * H)?;
    let mut part_s = gpu.zeros::<f32>(splits_sparse * H * DV)?;
    let mut lse_s = gpu.zeros::<f32>(splits_sparse * H)?;
    // At 128 heads: two block rows by the model's rule, or the 64-head split count.
    let splits_sparse_w = super::model::attention_splits(2, sms, TOPK);
    let mut part_sw = gpu.zeros::<f32>(splits_sparse_w * WIDE * DV)?;
    let mut lse_sw = gpu.zeros::<f32>(splits_sparse_w * WIDE)?;
    let mut o_w = gpu.zeros::<f32>(WIDE * DV)?;
    let splits_dense_w = [super::model::attention_splits(2, sms, l), splits_dense];
    let most = splits_dense_w[0].max(splits_dense_w[1]);
    let mut part_dw = gpu.zeros::<f32>(most * WIDE * DV)?;
    let mut lse_dw = gpu.zeros::<f32>(most * WIDE)?;
    let mut o_dense_w = gpu.zeros::<f32>(WIDE * DV)?;
    let mut dense_w = Vec::new();
    for sp in splits_dense_w {
        dense_w.push(gpu.capture(|| {
            gpu.sparse_mla(
                &dqm,
                &dkv,
                &dall,
                &mut part_dw,
                &mut lse_dw,
                &mut o_dense_w,
                1,
                WIDE,
                l,
                l,
                sp,
                scale,
                false,
            )
        })?);
    }
    // Each decode step is captured as a CUDA graph and replayed, as a serving engine would, so
    // the figures are GPU time rather than host launch overhead. The sparse step is its three
    // stages: 0 indexer, 1 top-k, 2 attention over the selected rows.
    let mut o_dense = gpu.zeros::<f32>(H * DV)?;
    let dense_graph = gpu.capture(|| {
        gpu.sparse_mla(
            &dqm,
            &dkv,
            &dall,
            &mut part_d,
            &mut lse_d,
            &mut o_dense,
            1,
            H,
            l,
            l,
            splits_dense,
            scale,
            false,
        )
    })?;
    // Stage 3 is the FP8 indexer, in place of stage 0, on the query quantized here once (the
    // model's query kernel writes it so); stage 4 that quantization alone.
    gpu.hadamard_quant(&dqi, &mut q8, &mut qsc, IH)?;
    let mut stage = |which: u8| match which {
        0 => gpu.indexer_decode(&dqi, &dk, &dw, &mut logits, &dlen, 1, l, l, Some(&mut work)),
        1 => gpu.topk_decode(&logits, &dlen, 1, l, &mut work, &mut idx),
        3 => gpu.indexer_decode_fp8(
            &q8,
            &qsc,
            &k8,
            &ksc,
            &dw,
            &mut logits,
            &dlen,
            1,
            l,
            l,
            Some(&mut work),
        ),
        4 => gpu.hadamard_quant(&dqi, &mut q8, &mut qsc, IH),
        5 => gpu.sparse_mla(
            &dqm,
            &dkv,
            &idx,
            &mut part_sw,
            &mut lse_sw,
            &mut o_w,
            1,
            WIDE,
            l,
            TOPK,
            splits_sparse_w,
            scale,
            true,
        ),
        _ => gpu.sparse_mla(
            &dqm,
            &dkv,
            &idx,
            &mut part_s,
            &mut lse_s,
            &mut o,
            1,
            H,
            l,
            TOPK,
            splits_sparse,
            scale,
            true,
        ),
    };
    let sparse_graph = gpu.capture(|| (0..3).try_for_each(&mut stage))?;
    let fp8_graph = gpu.capture(|| [3, 1, 2].into_iter().try_for_each(&mut stage))?;
    // Each sparse step runs after a dense one, which evicts its data from L2 (151 MB at 128K).
    let [sparse, dense, sparse_fp8, _] = replay(
        gpu,
        [&sparse_graph, &dense_graph, &fp8_graph, &dense_graph],
        50,
    )?;
    // Each stage alone (the top-k after its indexer, which leaves the work space as it needs).
    let g_ix = gpu.capture(|| stage(0))?;
    let g_tk = gpu.capture(|| stage(1))?;
    let g_at = gpu.capture(|| stage(2))?;
    let g_ix8 = gpu.capture(|| stage(3))?;
    let g_q8 = gpu.capture(|| stage(4))?;
    let [ix, tk, at] = replay(gpu, [&g_ix, &g_tk, &g_at], 20)?;
    let [ix8, _, q8t] = replay(gpu, [&g_ix8, &g_tk, &g_q8], 20)?;
    // 128 heads: the steps, each after a dense one, then its attention stage alone.
    let sparse_w = gpu.capture(|| [0, 1, 5].into_iter().try_for_each(&mut stage))?;
    let fp8_w = gpu.capture(|| [3, 1, 5].into_iter().try_for_each(&mut stage))?;
    let [sw, dw0, sw8, dw1] = replay(gpu, [&sparse_w, &dense_w[0], &fp8_w, &dense_w[1]], 50)?;
    let g_atw = gpu.capture(|| stage(5))?;
    let [atw] = replay(gpu, [&g_atw], 20)?;
    b.decode_sparse_h128_ms = sw;
    b.decode_sparse_fp8_h128_ms = sw8;
    b.decode_dense_h128_ms = dw0.min(dw1);
    b.decode_attention_h128_ms = atw;
    b.decode_sparse_fp8_ms = sparse_fp8;
    b.decode_indexer_fp8_ms = ix8;
    b.decode_query_quant_ms = q8t;
    b.decode_indexer_ms = ix;
    b.decode_topk_ms = tk;
    b.decode_attention_ms = at;
    b.decode_sparse_ms = sparse;
    b.decode_dense_ms = dense;
    Ok(b)
}

/// Runs the checks, then (unless `contexts` is empty) the benchmarks.
pub fn run(gpu: &Gpu, seed: u64, contexts: &[usize], throughput: bool) -> Result<Report, GpuError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut checks = checks(gpu, &mut rng)?;
    checks.extend(super::model_check::model_checks(gpu, &mut rng)?);
    let mut bench = Vec::new();
    for &l in contexts {
        bench.push(bench_context(gpu, &mut rng, l)?);
    }
    let batch = 128usize;
    let decode_batch_tflops = if throughput {
        Some(decode_throughput(gpu, &mut rng, batch)?)
    } else {
        None
    };
    Ok(Report {
        device: gpu.name.clone(),
        multiprocessors: gpu.multiprocessors,
        seed,
        kernels_cached: gpu.cached,
        checks,
        bench,
        decode_batch: batch,
        decode_batch_tflops,
        e2e: Vec::new(),
    })
}

/// Sparse decode TFLOP/s at a batch that fills the GPU: `batch` queries, each over 2048 rows of
/// a 32K cache.
fn decode_throughput(gpu: &Gpu, rng: &mut ChaCha8Rng, batch: usize) -> Result<f64, GpuError> {
    let l = 32_768usize;
    let (kvb, _) = random_bf16(rng, l * DQK);
    let (qb, _) = random_bf16(rng, batch * H * DQK);
    let idx: Vec<i32> = (0..batch)
        .flat_map(|b| (0..TOPK as i32).map(move |i| (i * 13 + b as i32 * 7) % l as i32))
        .collect();
    let (dkv, dq, didx) = (gpu.upload(&kvb)?, gpu.upload(&qb)?, gpu.upload(&idx)?);
    let mut part = gpu.zeros::<f32>(batch * H * DV)?;
    let mut lse = gpu.zeros::<f32>(batch * H)?;
    let mut o = gpu.zeros::<f32>(batch * H * DV)?;
    let mut times = Vec::new();
    for rep in 0..11 {
        let ms = timed(gpu, || {
            gpu.sparse_mla(
                &dq, &dkv, &didx, &mut part, &mut lse, &mut o, batch, H, l, TOPK, 1, 0.07, false,
            )
        })?;
        if rep > 0 {
            times.push(ms);
        }
    }
    let flop = 2.0 * (batch * H * (DQK + DV) * TOPK) as f64;
    Ok(flop / (median(times) * 1e-3) / 1e12)
}

#[cfg(test)]
mod tests {
    use super::topk_padded;

    #[test]
    fn the_expected_top_k_is_ascending_tie_broken_low_and_padded() {
        assert_eq!(topk_padded(&[1.0, 3.0, 3.0, 2.0], 2), vec![1, 2]);
        assert_eq!(topk_padded(&[1.0, 3.0], 4), vec![0, 1, -1, -1]);
    }
}
