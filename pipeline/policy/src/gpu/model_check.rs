//! The whole model on the GPU against the CPU reference, and its end-to-end decode throughput.

use std::time::Instant;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::check::{Check, check, f64s, rel_err};
use super::model::{GpuModel, GpuOptions, GpuSeq, PAGE, attention_splits};
use super::{Gpu, GpuError};
use crate::ModelError;
use crate::checkpoint::Tensors;
use crate::config::Preset;
use crate::init::random_tensors;
use crate::model::{AttentionMode, Cache, Choices, Forward, Logits, Model, Segment, Selection};
use crate::sample::argmax;

/// Relative error bound of whole-model logits (with the GPU's discrete choices): the GPU rounds
/// every matrix product's inputs and the attention probabilities to bf16 (8 significant bits)
/// where the CPU reference is f32 throughout.
pub const MODEL_BF16_BOUND: f64 = 2e-2;

fn model_err(e: crate::ModelError) -> GpuError {
    GpuError::Cuda(format!("model: {e}"))
}

/// Random bf16-exact weights at the small preset's shapes with `index_topk` lowered, so both
/// sides hold the same numbers and top-k < context in most rows, and `heads` query heads.
pub fn check_model(
    seed: u64,
    index_topk: usize,
    positions: usize,
    heads: usize,
) -> Result<Model, GpuError> {
    let mut cfg = Preset::Small.config();
    cfg.index_topk = index_topk;
    cfg.num_attention_heads = heads;
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

/// Two sequences prefilled together (one call; MHA mode on the CPU), then decoded together for
/// four steps (absorbed mode on the CPU). The CPU reference takes the GPU's discrete choices
/// (top-k positions, experts) so every row's numerics are compared; the choices themselves are
/// compared with the ones the CPU makes on its own. Then the same with the indexer in FP8: its
/// logits are held to the same bound (the CPU replays its choices), its top-k choices to the
/// looser one e4m3 rounding allows.
pub fn model_checks(gpu: &Gpu, rng: &mut ChaCha8Rng) -> Result<Vec<Check>, GpuError> {
    let topk = 256;
    let model = check_model(rng.random(), topk, 2048, 64)?;
    let vocab = model.cfg.vocab_size as u32;
    let lens = [600usize, 333];
    let prompts: Vec<Vec<u32>> = lens
        .iter()
        .map(|&l| (0..l).map(|_| rng.random_range(0..vocab)).collect())
        .collect();
    let steps = 4;
    let fed: Vec<[u32; 2]> = (0..steps)
        .map(|_| [rng.random_range(0..vocab), rng.random_range(0..vocab)])
        .collect();
    let options = |fp8_indexer| GpuOptions {
        cache_tokens: 4096,
        fp8_indexer,
        decode_rows: 0,
    };
    let mut gm = GpuModel::new(gpu.clone(), &model, options(false)).map_err(model_err)?;
    let run = against_cpu(&mut gm, &model, &prompts, &fed)?;
    let prefill_detail = format!(
        "small preset, random bf16 weights, 2 sequences of {} and {} tokens in one call, top-k {topk}",
        lens[0], lens[1]
    );
    let decode_detail = format!("batch 2, {steps} steps after the prefill, top-k {topk}");
    let extend_detail = format!(
        "{} and {} tokens more on the two caches after the decode steps, in one call (a next turn's prefill), top-k {topk}",
        EXTEND[0], EXTEND[1]
    );
    let agree = &run.agree;
    let mut out = vec![
        logits_check(
            "model_prefill_logits",
            &run.prefill.0,
            &run.prefill.1,
            prefill_detail.clone(),
        ),
        logits_check(
            "model_decode_logits",
            &run.decode.0,
            &run.decode.1,
            decode_detail.clone(),
        ),
        logits_check(
            "model_extend_logits",
            &run.extend.0,
            &run.extend.1,
            extend_detail.clone(),
        ),
        check(
            "model_topk_choices",
            "share of the CPU's top-k positions the GPU chose",
            1.0 - agree.topk_share(),
            TOPK_DISAGREE_BOUND,
            format!(
                "{} of {} positions over {} rows × layers; the rest are near-ties tipped by bf16 rounding",
                agree.topk_same, agree.topk_total, agree.topk_rows
            ),
        ),
        check(
            "model_expert_choices",
            "share of rows whose experts differ",
            1.0 - agree.expert_share(),
            EXPERT_DISAGREE_BOUND,
            format!(
                "{} of {} rows chose the same experts",
                agree.experts_same, agree.expert_rows
            ),
        ),
    ];
    // The same decode again without reading choices back: the first step runs plainly, the
    // second is captured as a CUDA graph, the rest replay it.
    let mut again = [gm.new_seq(), gm.new_seq()];
    {
        let [a0, a1] = &mut again;
        gm.forward(
            &mut [(a0, prompts[0].as_slice()), (a1, prompts[1].as_slice())],
            Logits::Last,
        )
        .map_err(model_err)?;
    }
    let mut replayed = Vec::new();
    for next in &fed {
        let [a0, a1] = &mut again;
        replayed.extend(
            gm.forward(&mut [(a0, &next[..1]), (a1, &next[1..])], Logits::Last)
                .map_err(model_err)?,
        );
    }
    out.push(check(
        "model_decode_graph_replay",
        "captured and replayed decode steps against plain ones",
        rel_err(&f64s(&replayed.concat()), &f64s(&run.decode.0.concat())),
        1e-6,
        format!("{steps} steps of batch 2: one plain, one captured, the rest replayed"),
    ));
    for seq in again {
        gm.release(seq);
    }
    // A fork of a sequence's prompt (its pages copied after it decoded on, the last one partly
    // past the prompt) decodes as a fresh prefill of the prompt does, bitwise.
    let fork_err = {
        let p0 = prompts[0].as_slice();
        let [mut src, mut fresh] = [gm.new_seq(), gm.new_seq()];
        gm.forward(&mut [(&mut src, p0)], Logits::Last)
            .map_err(model_err)?;
        for next in &fed[..2] {
            gm.forward(&mut [(&mut src, &next[..1])], Logits::Last)
                .map_err(model_err)?;
        }
        let mut forked = gm.fork(&src, p0.len()).map_err(model_err)?;
        gm.forward(&mut [(&mut fresh, p0)], Logits::Last)
            .map_err(model_err)?;
        let (mut from_fork, mut from_prefill) = (Vec::new(), Vec::new());
        for next in &fed {
            for (seq, out) in [
                (&mut forked, &mut from_fork),
                (&mut fresh, &mut from_prefill),
            ] {
                let l = gm
                    .forward(&mut [(seq, &next[1..])], Logits::Last)
                    .map_err(model_err)?;
                out.extend(l.concat());
            }
        }
        for seq in [src, forked, fresh] {
            gm.release(seq);
        }
        rel_err(&f64s(&from_fork), &f64s(&from_prefill))
    };
    out.push(check(
        "model_fork_prefix",
        "decode logits of a forked prompt against a fresh prefill of it",
        fork_err,
        0.0,
        format!(
            "{} tokens forked (5 pages, the last partial) after 2 decode steps, then {steps} steps, bitwise",
            prompts[0].len()
        ),
    ));
    drop(gm);

    // Under `decode_rows`, sequence 0 decoded among 65 others (fourth of 66 rows) and alone
    // gives the same bytes. At this top-k, 66 rows and one take different attention splits (2
    // and 4), so without the option the two differ (the detail says how far).
    let rows = 66;
    let among_and_alone = |decode_rows| -> Result<(Vec<f32>, Vec<f32>), ModelError> {
        let opts = GpuOptions {
            cache_tokens: (rows + 16) * PAGE,
            decode_rows,
            ..options(false)
        };
        let mut gm = GpuModel::new(gpu.clone(), &model, opts)?;
        let mut others: Vec<GpuSeq> = (1..rows).map(|_| gm.new_seq()).collect();
        let (mut a, mut alone) = (gm.new_seq(), gm.new_seq());
        for (i, seq) in others.iter_mut().enumerate() {
            let p = &prompts[1][..20 + i % 50];
            gm.forward(&mut [(seq, p)], Logits::Last)?;
        }
        gm.forward(&mut [(&mut a, prompts[0].as_slice())], Logits::Last)?;
        gm.forward(&mut [(&mut alone, prompts[0].as_slice())], Logits::Last)?;
        let (mut among, mut by_itself) = (Vec::new(), Vec::new());
        for next in &fed {
            let mut segs: Vec<(&mut GpuSeq, &[u32])> =
                others.iter_mut().map(|s| (s, &next[1..])).collect();
            segs.insert(3, (&mut a, &next[..1]));
            let l = gm.forward(&mut segs, Logits::Last)?;
            among.extend(&l[3]);
            let l = gm.forward(&mut [(&mut alone, &next[..1])], Logits::Last)?;
            by_itself.extend(&l[0]);
        }
        for seq in others.into_iter().chain([a, alone]) {
            gm.release(seq);
        }
        Ok((among, by_itself))
    };
    let (among, by_itself) = among_and_alone(rows).map_err(model_err)?;
    let (among0, by_itself0) = among_and_alone(0).map_err(model_err)?;
    out.push(check(
        "model_decode_batch_invariance",
        "a sequence's decode logits among 66 rows against alone, steps computed as 66 rows",
        rel_err(&f64s(&among), &f64s(&by_itself)),
        0.0,
        format!(
            "{steps} steps, bitwise; without decode_rows ({} attention splits among them, {} alone) the two differ by {:.1e}",
            attention_splits(rows, gpu.multiprocessors as usize, topk),
            attention_splits(1, gpu.multiprocessors as usize, topk),
            rel_err(&f64s(&among0), &f64s(&by_itself0))
        ),
    ));

    let mut gm8 = GpuModel::new(gpu.clone(), &model, options(true)).map_err(model_err)?;
    let run8 = against_cpu(&mut gm8, &model, &prompts, &fed)?;
    let agree = &run8.agree;
    out.push(logits_check(
        "model_fp8_prefill_logits",
        &run8.prefill.0,
        &run8.prefill.1,
        format!("{prefill_detail}; FP8 indexer"),
    ));
    out.push(logits_check(
        "model_fp8_decode_logits",
        &run8.decode.0,
        &run8.decode.1,
        format!("{decode_detail}; FP8 indexer"),
    ));
    out.push(logits_check(
        "model_fp8_extend_logits",
        &run8.extend.0,
        &run8.extend.1,
        format!("{extend_detail}; FP8 indexer"),
    ));
    out.push(check(
        "model_fp8_topk_choices",
        "share of the CPU's top-k positions the GPU chose",
        1.0 - agree.topk_share(),
        FP8_TOPK_DISAGREE_BOUND,
        format!(
            "{} of {} positions over {} rows × layers, the GPU's indexer in e4m3 against the CPU's in f32",
            agree.topk_same, agree.topk_total, agree.topk_rows
        ),
    ));
    drop(gm8);

    // DeepSeek-V3.2's 128 query heads (the attention runs two blocks a query; the indexer keeps
    // its 64): the same prefill, decode and extend against the CPU.
    let model128 = check_model(rng.random(), topk, 2048, 128)?;
    let mut gm128 = GpuModel::new(gpu.clone(), &model128, options(false)).map_err(model_err)?;
    let run128 = against_cpu(&mut gm128, &model128, &prompts, &fed)?;
    for (name, (got, want), detail) in [
        (
            "model_128_heads_prefill_logits",
            &run128.prefill,
            &prefill_detail,
        ),
        (
            "model_128_heads_decode_logits",
            &run128.decode,
            &decode_detail,
        ),
        (
            "model_128_heads_extend_logits",
            &run128.extend,
            &extend_detail,
        ),
    ] {
        out.push(logits_check(
            name,
            got,
            want,
            format!("{detail}; 128 query heads"),
        ));
    }
    drop(gm128);
    out.push(grouped_gemm_check(gpu, rng)?);
    Ok(out)
}

/// What [`against_cpu`] compared: (GPU, CPU) logits of the prefill and of the decode steps, and
/// how far their own choices agree.
struct CpuComparison {
    prefill: Pair,
    decode: Pair,
    /// The prefill that continues both caches after the decode steps (a conversation's next
    /// turn, as the batcher's `extend` runs it).
    extend: Pair,
    agree: Agreement,
}

/// Logits per row, the GPU's then the CPU's.
type Pair = (Vec<Vec<f32>>, Vec<Vec<f32>>);

/// The tokens [`against_cpu`] appends to its two sequences after decoding them: one turn's
/// worth and a short one.
const EXTEND: [usize; 2] = [37, 5];

/// Prefills `prompts` (two sequences, one call) on the GPU model and the CPU reference, then
/// decodes the token pairs `fed` on both, then continues both caches with a prefill of
/// [`EXTEND`] tokens (the prompts' first ones again); the CPU takes the GPU's choices.
fn against_cpu(
    gm: &mut GpuModel,
    model: &Model,
    prompts: &[Vec<u32>],
    fed: &[[u32; 2]],
) -> Result<CpuComparison, GpuError> {
    let seqs = [gm.new_seq(), gm.new_seq()];
    let mut both = Both {
        gm,
        model,
        seqs,
        caches: [Cache::new(model), Cache::new(model)],
        agree: Agreement::default(),
        theirs: Choices::default(),
        mine: Choices::default(),
    };
    let prefill = Forward {
        mode: AttentionMode::Mha,
        selection: Selection::Sparse,
        logits: Logits::All,
    };
    let first = both.step([&prompts[0], &prompts[1]], prefill)?;
    let (mut got_d, mut want_d) = (Vec::new(), Vec::new());
    for next in fed {
        let (g, w) = both.step([&next[..1], &next[1..]], Forward::DECODE)?;
        got_d.extend(g);
        want_d.extend(w);
    }
    let extend = both.step(
        [&prompts[0][..EXTEND[0]], &prompts[1][..EXTEND[1]]],
        prefill,
    )?;
    let Both {
        gm, seqs, agree, ..
    } = both;
    for seq in seqs {
        gm.release(seq);
    }
    Ok(CpuComparison {
        prefill: first,
        decode: (got_d, want_d),
        extend,
        agree,
    })
}

/// Two sequences on the GPU model and on the CPU reference, stepped together.
struct Both<'a> {
    gm: &'a mut GpuModel,
    model: &'a Model,
    seqs: [GpuSeq; 2],
    caches: [Cache; 2],
    agree: Agreement,
    theirs: Choices,
    mine: Choices,
}

impl Both<'_> {
    /// One call on each: the GPU's (recording its top-k positions and experts) and the CPU's
    /// (`how`, taking the GPU's choices, comparing its own); their (GPU, CPU) logits.
    fn step(&mut self, tokens: [&[u32]; 2], how: Forward) -> Result<Pair, GpuError> {
        let got = {
            let [s0, s1] = &mut self.seqs;
            self.gm
                .forward_recording(
                    &mut [(s0, tokens[0]), (s1, tokens[1])],
                    how.logits,
                    Some(&mut self.theirs),
                )
                .map_err(model_err)?
        };
        let want = {
            let [c0, c1] = &mut self.caches;
            let mut segs = [
                Segment {
                    cache: c0,
                    tokens: tokens[0],
                },
                Segment {
                    cache: c1,
                    tokens: tokens[1],
                },
            ];
            self.model
                .forward_with(&mut segs, how, Some(&self.theirs), &mut self.mine)
                .map_err(model_err)?
        };
        self.agree.add(&self.theirs, &self.mine);
        Ok((got, want))
    }
}

/// The grouped expert product against an f64 reference: 150 tokens × 4 experts of 16, expert 0
/// chosen by every token (three tiles), experts 14 and 15 by none.
pub fn grouped_gemm_check(gpu: &Gpu, rng: &mut ChaCha8Rng) -> Result<Check, GpuError> {
    let (tokens, k, experts, n, kin) = (150usize, 4usize, 16usize, 256usize, 64usize);
    let mut ids = Vec::with_capacity(tokens * k);
    for _ in 0..tokens {
        let mut row = vec![0i32];
        while row.len() < k {
            let e = rng.random_range(1..14);
            if !row.contains(&e) {
                row.push(e);
            }
        }
        row.sort_unstable();
        ids.extend(row);
    }
    let (a_bits, a) = super::check::random_bf16(rng, tokens * kin);
    let (w_bits, w) = super::check::random_bf16(rng, experts * n * kin);
    let total = tokens * k;
    let (d_ids, d_a, d_w) = (
        gpu.upload(&ids)?,
        gpu.upload(&a_bits)?,
        gpu.upload(&w_bits)?,
    );
    let token_of = gpu.zeros::<i32>(total)?;
    let pos = gpu.zeros::<i32>(total)?;
    let off = gpu.zeros::<i32>(experts + 1)?;
    let tiles = gpu.zeros::<i32>(experts + 1)?;
    let c = gpu.zeros::<f32>(total * n)?;
    let p = |s: &cudarc::driver::CudaSlice<i32>| gpu.ptr(s);
    gpu.moe_sort_raw(
        gpu.ptr(&d_ids),
        total,
        experts,
        k,
        p(&token_of),
        p(&pos),
        p(&off),
        p(&tiles),
    )?;
    gpu.grouped_gemm_raw(
        gpu.ptr(&d_a),
        p(&token_of),
        true,
        gpu.ptr(&d_w),
        gpu.ptr(&c),
        p(&off),
        p(&tiles),
        experts,
        total,
        n,
        kin,
    )?;
    let (got, pos) = (gpu.download(&c)?, gpu.download(&pos)?);
    let (mut g, mut want) = (Vec::with_capacity(total * n), Vec::with_capacity(total * n));
    for (i, (&e, &at)) in ids.iter().zip(&pos).enumerate() {
        let r = i / k;
        g.extend(
            got[at as usize * n..(at as usize + 1) * n]
                .iter()
                .map(|&v| v as f64),
        );
        for col in 0..n {
            let wr = &w[(e as usize * n + col) * kin..][..kin];
            want.push(
                a[r * kin..(r + 1) * kin]
                    .iter()
                    .zip(wr)
                    .map(|(x, y)| *x as f64 * *y as f64)
                    .sum::<f64>(),
            );
        }
    }
    Ok(check(
        "grouped_expert_gemm",
        "bf16 in, f32 accumulate",
        rel_err(&g, &want),
        1e-5,
        format!(
            "{tokens} tokens × {k} of {experts} experts (one in every row, two in none), {n} × {kin}"
        ),
    ))
}

/// The share of top-k positions and of expert sets the GPU may choose differently from the CPU
/// (bf16 rounding tips near-ties; a wrong kernel disagrees wholesale).
pub const TOPK_DISAGREE_BOUND: f64 = 2e-2;
pub const EXPERT_DISAGREE_BOUND: f64 = 5e-2;
/// With the indexer in e4m3 (3 mantissa bits, up to 6% relative rounding of each operand) more
/// near-ties tip: 0.6% of positions on the H200 (bf16: 0.1%). A broken FP8 path (a scale
/// misapplied, the wrong cache rows) disagrees on most of them.
pub const FP8_TOPK_DISAGREE_BOUND: f64 = 5e-2;

#[derive(Default)]
struct Agreement {
    topk_same: usize,
    topk_total: usize,
    topk_rows: usize,
    experts_same: usize,
    expert_rows: usize,
}

impl Agreement {
    fn add(&mut self, gpu: &Choices, cpu: &Choices) {
        for (g, c) in gpu.topk.iter().zip(&cpu.topk) {
            for (gr, cr) in g.iter().zip(c) {
                self.topk_rows += 1;
                self.topk_total += cr.len();
                self.topk_same += cr.iter().filter(|p| gr.binary_search(p).is_ok()).count();
            }
        }
        for (g, c) in gpu.experts.iter().zip(&cpu.experts) {
            for (gr, cr) in g.iter().zip(c) {
                self.expert_rows += 1;
                self.experts_same += usize::from(gr == cr);
            }
        }
    }

    fn topk_share(&self) -> f64 {
        self.topk_same as f64 / self.topk_total.max(1) as f64
    }

    fn expert_share(&self) -> f64 {
        self.experts_same as f64 / self.expert_rows.max(1) as f64
    }
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
        "bf16 products, f32 elsewhere; the GPU's top-k and experts",
        err,
        MODEL_BF16_BOUND,
        format!(
            "{detail}; {} rows, worst row {worst:.2e}, same argmax in {argmax_agree}",
            want.len()
        ),
    )
}

/// End-to-end greedy decoding on the GPU at one batch size.
#[derive(Clone, Debug, Serialize)]
pub struct E2e {
    /// Whether the model ran its indexer in FP8.
    pub fp8_indexer: bool,
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

/// Untimed decode steps before the timed ones, on both sides of the comparison: ours runs the
/// batch's first step plainly and records its CUDA graph on the second (as a server does when it
/// starts), and PyTorch's first steps at a new batch size settle cuBLAS and its allocator.
/// `tests/gpu/eager_decode.py` runs the same number.
pub const E2E_WARM_STEPS: usize = 2;

/// Prefills `batch` prompts of `prompt` tokens, runs [`E2E_WARM_STEPS`] greedy decode steps, then
/// times `steps` more of all of them together (host argmax and the token round trip included).
/// A sequence needs room for `prompt + E2E_WARM_STEPS + steps + 1` tokens.
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
    let mut started = Instant::now();
    for step in 0..E2E_WARM_STEPS + steps {
        if step == E2E_WARM_STEPS {
            started = Instant::now();
        }
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
        fp8_indexer: gm.fp8_indexer(),
        batch,
        prompt,
        steps,
        prefill_s,
        decode_s,
        decode_tokens_per_s: (batch * steps) as f64 / decode_s,
        tokens0,
    })
}
