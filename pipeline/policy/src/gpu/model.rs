//! The whole model on the GPU: the forward pass of [`crate::Model`] with its weights in bf16,
//! matrix products through cuBLAS (bf16 in, f32 accumulate), the DSA kernels of `kernels.cu` for
//! the indexer, top-k and sparse MLA, and paged caches shared by many sequences.
//!
//! Every token takes the absorbed (MQA) path: prefill and decode differ only in how the indexer
//! and top-k run (one sequence's queries against its keys, or one query per sequence). MoE
//! layers sort the (token, expert) pairs by expert on the GPU and run grouped products over
//! each expert's rows, so no host round trip is needed and a step can be captured. Activations are f32 between steps and rounded to bf16 where they feed a product;
//! `check` states the resulting bound against the f32 CPU reference.

use cudarc::cublas::{CudaBlas, result as blas, sys as bsys};
use cudarc::driver::{CudaSlice, DevicePtr, PinnedHostSlice};

use super::{Gpu, GpuError, IndexerOperands, NULL, TopkWork, config, cuda};
use crate::model::{Choices, FeedForward, IndexRope, Logits, Model};
use crate::ops::Linear;
use crate::{Config, ModelError};

/// Rows per cache page (one indexer key tile).
pub const PAGE: usize = 128;
/// Queries per indexer + top-k pass in prefill (bounds the logits buffer to PREFILL_CHUNK rows).
const PREFILL_CHUNK: usize = 1024;
const WORKSPACE: usize = 32 << 20;
/// Decode lengths are rounded up to a multiple of this for the graph shapes (a multiple of PAGE).
const DECODE_BUCKET: usize = 2048;

/// A bf16 weight matrix [out, inp] on the GPU.
struct W {
    buf: CudaSlice<u16>,
    out: usize,
    inp: usize,
}

/// One per layer, so the size difference of the variants does not matter.
#[allow(clippy::large_enum_variant)]
enum Ffn {
    Dense {
        gate_up: W,
        down: W,
    },
    Moe {
        router: W,
        bias: CudaSlice<f32>,
        /// [E, 2I, d]: each expert's gate rows, then its up rows.
        gate_up: CudaSlice<u16>,
        /// [E, d, I]
        down: CudaSlice<u16>,
        inter: usize,
        shared: Option<(W, W)>,
    },
}

struct Layer {
    input_norm: CudaSlice<f32>,
    post_norm: CudaSlice<f32>,
    q_a: W,
    q_a_norm: CudaSlice<f32>,
    q_b: W,
    kv_a: W,
    kv_a_norm: CudaSlice<f32>,
    kv_b: W,
    o: W,
    iq: W,
    ik: W,
    k_norm_w: CudaSlice<f32>,
    k_norm_b: CudaSlice<f32>,
    iw: W,
    ffn: Ffn,
    /// Paged caches: MLA rows [pool, 576], bf16, and the indexer's keys [pool, 128].
    kv_cache: CudaSlice<u16>,
    ix_cache: IndexCache,
}

/// The indexer's paged key cache: bf16, or e4m3 with one scale per row (half the bytes the
/// decode indexer streams).
enum IndexCache {
    Bf16(CudaSlice<u16>),
    Fp8 {
        keys: CudaSlice<u8>,
        scales: CudaSlice<f32>,
    },
}

/// One sequence's place in the paged caches. Hand it back with [`GpuModel::release`].
#[derive(Debug, Default)]
pub struct GpuSeq {
    pages: Vec<i32>,
    len: usize,
}

impl GpuSeq {
    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// How big the paged caches are.
#[derive(Clone, Copy, Debug)]
pub struct GpuOptions {
    /// Cache rows shared by all sequences (rounded up to whole pages).
    pub cache_tokens: usize,
    /// Run the indexer in FP8, as DeepSeek-V3.2 does: queries and cached keys Hadamard-rotated
    /// and quantized to e4m3 (one power-of-two scale per 128 values). Off, it runs in bf16, which
    /// is what the CPU reference's top-k agrees with to within rounding.
    pub fp8_indexer: bool,
    /// Decode steps compute as though at least this many sequences took part (0: as many as
    /// do), so that a sequence's logits do not depend on which others share its step: cuBLAS
    /// chooses its kernels by the number of rows, and the attention its splits. With it, the
    /// products run over this many rows (the extra ones ignored) and the splits are chosen for
    /// it. The batcher's bound, so that rollouts replay byte for byte however they batched.
    pub decode_rows: usize,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            cache_tokens: 1 << 20,
            fp8_indexer: false,
            decode_rows: 0,
        }
    }
}

/// The model on one GPU.
pub struct GpuModel {
    pub cfg: Config,
    gpu: Gpu,
    blas: CudaBlas,
    _workspace: CudaSlice<u8>,
    embed: CudaSlice<f32>,
    head: W,
    norm: CudaSlice<f32>,
    cos: CudaSlice<f32>,
    sin: CudaSlice<f32>,
    layers: Vec<Layer>,
    pool: PagePool,
    pool_rows: usize,
    arena: Option<CudaSlice<u8>>,
    ints: Option<CudaSlice<i32>>,
    topk_work: Option<TopkWork>,
    /// Decode steps captured as CUDA graphs, by (batch, length bucket).
    graphs: Vec<((usize, usize), SendGraph)>,
    /// Decode shapes run once already (captured on their second step).
    seen: Vec<(usize, usize)>,
    /// Page-locked staging for the logits read back each call, so the copy (2 MB at batch 128)
    /// goes straight over PCIe instead of through the driver's pageable bounce buffer.
    logits_host: Option<PinnedHostSlice<f32>>,
    /// [`GpuOptions::decode_rows`].
    decode_rows: usize,
    /// The rows every cuBLAS product of the current call runs over, when more than its tokens
    /// (a decode step under `decode_rows`); 0 otherwise.
    gemm_rows: usize,
}

/// A captured graph. CUDA graphs must not be used from two threads at once; the model is only
/// used through `&mut self`, so moving it (and its graphs) to another thread is sound.
struct SendGraph(cudarc::driver::CudaGraph);
// SAFETY: see above; every use of the graph goes through `&mut GpuModel`.
unsafe impl Send for SendGraph {}

fn ptr<T>(s: &CudaSlice<T>, gpu: &Gpu) -> u64 {
    let (p, _sync) = s.device_ptr(&gpu.stream);
    p
}

fn unsupported(cfg: &Config) -> Option<String> {
    let want = [
        ("kv_lora_rank", cfg.kv_lora_rank, 512),
        ("qk_rope_head_dim", cfg.qk_rope_head_dim, 64),
        ("qk_nope_head_dim", cfg.qk_nope_head_dim, 128),
        ("v_head_dim", cfg.v_head_dim, 128),
        ("index_n_heads", cfg.index_n_heads, 64),
        ("index_head_dim", cfg.index_head_dim, 128),
    ];
    if cfg.num_attention_heads != 64 && cfg.num_attention_heads != 128 {
        return Some(format!(
            "the GPU kernels run the FlashMLA shapes (num_attention_heads = 64 or 128, DeepSeek-V3.2's); the config has {}",
            cfg.num_attention_heads
        ));
    }
    for (name, got, need) in want {
        if got != need {
            return Some(format!(
                "the GPU kernels run the FlashMLA shapes ({name} = {need}); the config has {got}"
            ));
        }
    }
    if cfg.q_lora_rank.is_none() {
        return Some("the GPU backend needs q_lora_rank (a compressed query)".into());
    }
    if cfg.index_topk > 2048 || cfg.index_topk == 0 {
        return Some(format!(
            "the GPU top-k handles index_topk 1..=2048; the config has {}",
            cfg.index_topk
        ));
    }
    if !cfg.hidden_size.is_multiple_of(128) || !cfg.moe_intermediate_size.is_multiple_of(64) {
        return Some(format!(
            "the grouped expert products need hidden_size a multiple of 128 and moe_intermediate_size of 64; the config has {} and {}",
            cfg.hidden_size, cfg.moe_intermediate_size
        ));
    }
    if cfg.n_routed_experts > 256 || cfg.num_experts_per_tok > 32 || cfg.n_group > 32 {
        return Some("the GPU router handles up to 256 experts, 32 per token, 32 groups".into());
    }
    None
}

impl From<GpuError> for ModelError {
    fn from(e: GpuError) -> ModelError {
        ModelError::Gpu(e.to_string())
    }
}

/// Carves 256-byte-aligned pieces out of one device allocation.
struct Carve {
    base: u64,
    end: u64,
}

impl Carve {
    fn take<T>(&mut self, n: usize) -> u64 {
        let at = self.end.next_multiple_of(256);
        self.end = at + (n * std::mem::size_of::<T>()) as u64;
        self.base + at
    }
}

/// Where the scratch of one forward call lives (device addresses).
struct Scratch {
    hidden: u64,
    xb: u64,
    qa: u64,
    qrb: u64,
    q: u64,
    qb: u64,
    mlaq: u64,
    kv: u64,
    ikf: u64,
    iqf: u64,
    iqb: u64,
    iq8: u64,
    iqs: u64,
    iwf: u64,
    logits: u64,
    idx: u64,
    idxp: u64,
    part: u64,
    lse: u64,
    olat: u64,
    olatb: u64,
    ob: u64,
    gu: u64,
    act: u64,
    rl: u64,
    ids: u64,
    wts: u64,
    token_of: u64,
    pos: u64,
    off: u64,
    tiles: u64,
    gus: u64,
    acts: u64,
    ys: u64,
    out: u64,
}

/// Sizes that shape one forward call.
struct Shape {
    n: usize,
    /// Rows the work space holds: n, or more for products padded to `decode_rows`.
    rows: usize,
    logit_rows: usize,
    ld: usize,
    splits: usize,
}

impl GpuModel {
    /// Uploads `model`'s weights (as bf16) and allocates the paged caches.
    pub fn new(gpu: Gpu, model: &Model, opts: GpuOptions) -> Result<GpuModel, ModelError> {
        let cfg = model.cfg.clone();
        if let Some(why) = unsupported(&cfg) {
            return Err(ModelError::Gpu(why));
        }
        if model.index_rope != IndexRope::V32 {
            return Err(ModelError::Gpu(
                "the GPU indexer uses DeepSeek-V3.2's RoPE convention".into(),
            ));
        }
        gpu.ctx.bind_to_thread().map_err(cuda)?;
        let blas = CudaBlas::new(gpu.stream.clone()).map_err(cuda)?;
        let workspace: CudaSlice<u8> = gpu.zeros(WORKSPACE)?;
        // SAFETY: the workspace outlives the handle (both are fields of the model; the handle is
        // dropped first, being declared first).
        unsafe {
            bsys::cublasSetWorkspace_v2(*blas.handle(), ptr(&workspace, &gpu) as *mut _, WORKSPACE)
        }
        .result()
        .map_err(cuda)?;
        let up_w = |l: &Linear| -> Result<W, GpuError> {
            Ok(W {
                buf: gpu.upload(&bf16s(&l.w))?,
                out: l.out,
                inp: l.inp,
            })
        };
        let cat = |a: &Linear, b: &Linear| -> Result<W, GpuError> {
            let mut w = bf16s(&a.w);
            w.extend(bf16s(&b.w));
            Ok(W {
                buf: gpu.upload(&w)?,
                out: a.out + b.out,
                inp: a.inp,
            })
        };
        let pages = opts.cache_tokens.div_ceil(PAGE).max(1);
        let pool_rows = pages * PAGE;
        let mut layers = Vec::with_capacity(model.layers.len());
        for l in &model.layers {
            let a = &l.attn;
            let ffn = match &l.ffn {
                FeedForward::Dense(m) => Ffn::Dense {
                    gate_up: cat(&m.gate, &m.up)?,
                    down: up_w(&m.down)?,
                },
                FeedForward::Moe(m) => {
                    let (mut gu, mut down) = (Vec::new(), Vec::new());
                    for e in &m.experts {
                        gu.extend(bf16s(&e.gate.w));
                        gu.extend(bf16s(&e.up.w));
                        down.extend(bf16s(&e.down.w));
                    }
                    Ffn::Moe {
                        router: up_w(&m.router)?,
                        bias: gpu.upload(&m.bias)?,
                        gate_up: gpu.upload(&gu)?,
                        down: gpu.upload(&down)?,
                        inter: cfg.moe_intermediate_size,
                        shared: match &m.shared {
                            Some(s) => Some((cat(&s.gate, &s.up)?, up_w(&s.down)?)),
                            None => None,
                        },
                    }
                }
            };
            layers.push(Layer {
                input_norm: gpu.upload(&l.input_norm)?,
                post_norm: gpu.upload(&l.post_norm)?,
                q_a: up_w(&a.q_a)?,
                q_a_norm: gpu.upload(&a.q_a_norm)?,
                q_b: up_w(&a.q_b)?,
                kv_a: up_w(&a.kv_a)?,
                kv_a_norm: gpu.upload(&a.kv_a_norm)?,
                kv_b: up_w(&a.kv_b)?,
                o: up_w(&a.o)?,
                iq: up_w(&a.indexer.wq_b)?,
                ik: up_w(&a.indexer.wk)?,
                k_norm_w: gpu.upload(&a.indexer.k_norm_w)?,
                k_norm_b: gpu.upload(&a.indexer.k_norm_b)?,
                iw: up_w(&a.indexer.weights_proj)?,
                ffn,
                kv_cache: gpu.zeros(pool_rows * 576)?,
                ix_cache: if opts.fp8_indexer {
                    IndexCache::Fp8 {
                        keys: gpu.zeros(pool_rows * 128)?,
                        scales: gpu.zeros(pool_rows)?,
                    }
                } else {
                    IndexCache::Bf16(gpu.zeros(pool_rows * 128)?)
                },
            });
        }
        let head = match &model.lm_head {
            Some(h) => up_w(h)?,
            None => W {
                buf: gpu.upload(&bf16s(&model.embed))?,
                out: cfg.vocab_size,
                inp: cfg.hidden_size,
            },
        };
        let positions = cfg.max_position_embeddings;
        let (mut cos, mut sin) = (
            Vec::with_capacity(positions * 32),
            Vec::with_capacity(positions * 32),
        );
        for p in 0..positions {
            for f in &model.rope.freqs {
                cos.push(((p as f64 * f).cos() * model.rope.attention_factor) as f32);
                sin.push(((p as f64 * f).sin() * model.rope.attention_factor) as f32);
            }
        }
        Ok(GpuModel {
            embed: gpu.upload(&model.embed)?,
            norm: gpu.upload(&model.norm)?,
            cos: gpu.upload(&cos)?,
            sin: gpu.upload(&sin)?,
            head,
            layers,
            pool: PagePool::new(pages),
            pool_rows,
            arena: None,
            ints: None,
            topk_work: None,
            graphs: Vec::new(),
            seen: Vec::new(),
            logits_host: None,
            decode_rows: opts.decode_rows,
            gemm_rows: 0,
            _workspace: workspace,
            blas,
            gpu,
            cfg,
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Whether the indexer runs in FP8 ([`GpuOptions::fp8_indexer`]).
    pub fn fp8_indexer(&self) -> bool {
        matches!(
            self.layers.first().map(|l| &l.ix_cache),
            Some(IndexCache::Fp8 { .. })
        )
    }

    /// A new, empty sequence.
    pub fn new_seq(&self) -> GpuSeq {
        GpuSeq::default()
    }

    /// A new sequence holding the first `len` tokens of `seq` (at most all of them), as
    /// prefilling those tokens leaves it: their pages are copied on the GPU, in stream order.
    pub fn fork(&mut self, seq: &GpuSeq, len: usize) -> Result<GpuSeq, ModelError> {
        let len = len.min(seq.len);
        let mut pages = Vec::new();
        self.pool.grow(&mut [(&mut pages, len)])?;
        self.gpu.ctx.bind_to_thread().map_err(cuda)?;
        let g = &self.gpu;
        let stream = g.stream.cu_stream();
        // (buffer, bytes a row) of every cache.
        let mut caches = Vec::new();
        for layer in &self.layers {
            caches.push((ptr(&layer.kv_cache, g), 576 * 2));
            match &layer.ix_cache {
                IndexCache::Bf16(keys) => caches.push((ptr(keys, g), 128 * 2)),
                IndexCache::Fp8 { keys, scales } => {
                    caches.push((ptr(keys, g), 128));
                    caches.push((ptr(scales, g), 4));
                }
            }
        }
        for (&from, &to) in seq.pages.iter().zip(&pages) {
            for &(base, row) in &caches {
                let at = |page: i32| base + (page as u64) * (PAGE * row) as u64;
                // SAFETY: both pages lie inside the pool every cache was allocated for, and the
                // copy is queued on the stream that every kernel reading them runs on.
                unsafe {
                    cudarc::driver::result::memcpy_dtod_async(at(to), at(from), PAGE * row, stream)
                }
                .map_err(cuda)?;
            }
        }
        Ok(GpuSeq { pages, len })
    }

    /// Returns a finished sequence's pages to the pool.
    pub fn release(&mut self, seq: GpuSeq) {
        self.pool.give_back(seq.pages);
    }

    /// Cache rows not yet given to any sequence.
    pub fn free_tokens(&self) -> usize {
        self.pool.free.len() * PAGE
    }

    /// Runs each sequence's new tokens through the model, appending to its cache; logits rows as
    /// [`Model::forward`] returns them. When every sequence brings one token this is a batched
    /// decode step; otherwise each sequence's queries are indexed against its own keys.
    pub fn forward(
        &mut self,
        segs: &mut [(&mut GpuSeq, &[u32])],
        logits: Logits,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        self.forward_recording(segs, logits, None)
    }

    /// [`GpuModel::forward`], also reading back every layer's top-k positions and experts into
    /// `choices` (for [`Model::forward_with`]).
    pub fn forward_recording(
        &mut self,
        segs: &mut [(&mut GpuSeq, &[u32])],
        logits: Logits,
        mut choices: Option<&mut Choices>,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        // The caller's thread may be new to CUDA (the batcher's worker).
        self.gpu.ctx.bind_to_thread().map_err(cuda)?;
        if let Some(c) = choices.as_deref_mut() {
            *c = Choices {
                topk: vec![Vec::new(); self.layers.len()],
                experts: vec![Vec::new(); self.layers.len()],
            };
        }
        let cfg = self.cfg.clone();
        let n: usize = segs.iter().map(|(_, t)| t.len()).sum();
        if n == 0 {
            return Err(ModelError::Empty);
        }
        // Validate everything before taking pages, so a refused call changes nothing.
        for (seq, toks) in segs.iter() {
            let end = seq.len + toks.len();
            if end > cfg.max_position_embeddings {
                return Err(ModelError::Context {
                    tokens: end,
                    limit: cfg.max_position_embeddings,
                });
            }
            if let Some(&tok) = toks.iter().find(|&&t| t as usize >= cfg.vocab_size) {
                return Err(ModelError::Token {
                    token: tok,
                    vocab: cfg.vocab_size,
                });
            }
        }
        let mut wants: Vec<(&mut Vec<i32>, usize)> = segs
            .iter_mut()
            .map(|(seq, toks)| {
                let end = seq.len + toks.len();
                (&mut seq.pages, end)
            })
            .collect();
        self.pool.grow(&mut wants)?;
        let decode = segs.iter().all(|(_, t)| t.len() == 1);
        let max_len = segs.iter().map(|(s, t)| s.len + t.len()).max().unwrap_or(1);
        // Decode steps of the same batch size and length bucket have the same shapes (lengths
        // beyond a row's own are masked by `lens`), so one captured graph serves them all.
        let ld = if decode {
            max_len.next_multiple_of(DECODE_BUCKET)
        } else {
            max_len
        };
        let stride = if decode {
            ld / PAGE
        } else {
            segs.iter().map(|(s, _)| s.pages.len()).max().unwrap_or(1)
        };
        // Host-side row data: tokens, positions, cache rows, visible lengths, per-row page tables.
        let (mut tokens, mut positions, mut rows, mut lens) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let mut tables = Vec::with_capacity(n * stride);
        let mut seg_of_row = Vec::with_capacity(n);
        for (i, (seq, toks)) in segs.iter().enumerate() {
            for (j, &t) in toks.iter().enumerate() {
                let pos = seq.len + j;
                tokens.push(t as i32);
                positions.push(pos as i32);
                rows.push(seq.pages[pos / PAGE] * PAGE as i32 + (pos % PAGE) as i32);
                lens.push(pos as i32 + 1);
                tables.extend(&seq.pages);
                tables.resize(tables.len() + stride - seq.pages.len(), 0);
                seg_of_row.push(i);
            }
        }
        let k = cfg.index_topk;
        // Under `decode_rows`, a step's products and attention splits are those of a step of
        // that many rows, whatever its own count.
        let step_rows = if decode { n.max(self.decode_rows) } else { n };
        self.gemm_rows = if decode { step_rows } else { 0 };
        let splits = attention_splits(step_rows, self.gpu.multiprocessors as usize, k);
        let shape = Shape {
            n,
            rows: step_rows,
            logit_rows: if decode { n } else { n.min(PREFILL_CHUNK) },
            ld,
            splits,
        };
        let buffers_before = self.buffers();
        let s = self.scratch(&shape)?;
        let mut ints = tokens;
        let off_pos = ints.len();
        ints.extend(&positions);
        let off_rows = ints.len();
        ints.extend(&rows);
        let off_lens = ints.len();
        ints.extend(&lens);
        let off_tables = ints.len();
        ints.extend(&tables);
        self.ints_of(ints.len())?;
        if self.buffers() != buffers_before {
            // Captured graphs hold the old addresses.
            self.graphs.clear();
        }
        let ibuf = self.ints.as_mut().ok_or(ModelError::Empty)?;
        self.gpu
            .stream
            .memcpy_htod(&ints, &mut *ibuf)
            .map_err(cuda)?;
        let ib = ptr(ibuf, &self.gpu);
        let at = |off: usize| ib + 4 * off as u64;
        let (d_tok, d_pos, d_rows, d_lens, d_tab) = (
            at(0),
            at(off_pos),
            at(off_rows),
            at(off_lens),
            at(off_tables),
        );

        if decode
            && multi_block_topk(n, ld, self.gpu.multiprocessors as usize)
            && self.topk_work.as_ref().is_none_or(|w| w.rows < n)
        {
            self.topk_work = Some(self.gpu.topk_work(n.next_power_of_two(), k)?);
            self.graphs.clear();
        }
        // The final norm and the LM head over the wanted rows (every row, in decode).
        let wanted: Vec<usize> = match logits {
            Logits::All => (0..n).collect(),
            Logits::Last => (0..n)
                .filter(|&r| r + 1 == n || seg_of_row[r + 1] != seg_of_row[r])
                .collect(),
        };
        let ptrs = [d_tok, d_pos, d_rows, d_lens, d_tab];
        let mut topk_work = self.topk_work.take();
        let segs_ro: &[(&mut GpuSeq, &[u32])] = segs;
        let mut step = |me: &Self, choices: Option<&mut Choices>| -> Result<(), GpuError> {
            me.layers_forward(
                &s,
                &shape,
                segs_ro,
                decode,
                stride,
                ld,
                ptrs,
                &mut topk_work,
                choices,
            )?;
            me.head(&s, n, &wanted)
        };
        let key = (n, ld);
        let result = if !decode || choices.is_some() {
            step(self, choices)
        } else if let Some((_, graph)) = self.graphs.iter().find(|(k, _)| *k == key) {
            graph.0.launch().map_err(cuda)
        } else if self.seen.contains(&key) {
            // Second step of this shape: record it (the first ran plainly, so cuBLAS has made
            // its choices outside a capture) and replay it from now on.
            let captured = self.gpu.capture(|| step(self, None));
            match captured {
                Ok(graph) => {
                    let launched = graph.launch().map_err(cuda);
                    self.graphs.push((key, SendGraph(graph)));
                    launched
                }
                Err(e) => Err(e),
            }
        } else {
            self.seen.push(key);
            step(self, None)
        };
        self.topk_work = topk_work;
        result?;
        for (seq, toks) in segs.iter_mut() {
            seq.len += toks.len();
        }
        let v = cfg.vocab_size;
        let len = wanted.len() * v;
        if self.logits_host.as_ref().is_none_or(|h| h.len() < len) {
            // SAFETY: flags 0 is plain page-locked memory (not write-combined, so host reads are
            // cached), and only elements the copy below has written are read.
            let host = unsafe { self.gpu.ctx.alloc_pinned_with_flags::<f32>(len, 0) };
            self.logits_host = Some(host.map_err(cuda)?);
        }
        let host = self.logits_host.as_mut().ok_or(ModelError::Empty)?;
        let arena = self.arena.as_ref().ok_or(ModelError::Empty)?;
        let off = (s.out - ptr(arena, &self.gpu)) as usize;
        // SAFETY: the view covers the logits just written: f32 values at a 256-byte-aligned offset.
        let view = unsafe { arena.slice(off..off + len * 4).transmute::<f32>(len) }
            .ok_or_else(|| ModelError::Gpu("logits view out of range".into()))?;
        self.gpu.stream.memcpy_dtoh(&view, host).map_err(cuda)?;
        // The copy into page-locked memory is asynchronous, and with event tracking off (Gpu::new)
        // the slice records no event to wait on: wait for the stream.
        self.gpu.stream.synchronize().map_err(cuda)?;
        let rows = host.as_slice().map_err(cuda)?[..len].chunks_exact(v);
        Ok(rows.map(|c| c.to_vec()).collect())
    }

    /// Embedding and every layer of one call, leaving the residual stream in `s.hidden`.
    #[allow(clippy::too_many_arguments)]
    fn layers_forward(
        &self,
        s: &Scratch,
        shape: &Shape,
        segs: &[(&mut GpuSeq, &[u32])],
        decode: bool,
        stride: usize,
        max_len: usize,
        [d_tok, d_pos, d_rows, d_lens, d_tab]: [u64; 5],
        topk_work: &mut Option<TopkWork>,
        mut record: Option<&mut Choices>,
    ) -> Result<(), GpuError> {
        let cfg = &self.cfg;
        let g = &self.gpu;
        let (n, splits) = (shape.n, shape.splits);
        let k = cfg.index_topk;
        let d = cfg.hidden_size;
        let h = cfg.num_attention_heads; // query heads: 64 or 128 (the indexer's stay 64)
        let eps = cfg.rms_norm_eps as f32;
        let (n32, d32) = (n as i32, d as i32);
        let embed = ptr(&self.embed, g);
        launch!(
            g,
            "embed_rows",
            config(n as u32, 1, 256, 0),
            &embed,
            &d_tok,
            &s.hidden,
            &d32
        );
        let (cos, sin) = (ptr(&self.cos, g), ptr(&self.sin, g));
        let warps = |count: usize| config((count as u32).div_ceil(8), 1, 256, 0);
        let elems = |count: usize| config((count as u32).div_ceil(256), 1, 256, 0);
        for (li, layer) in self.layers.iter().enumerate() {
            let kvc = ptr(&layer.kv_cache, g);
            // The indexer's operands for the query of scratch row r: bf16, or e4m3 and scales.
            let (ixc, ixc8, ixs) = match &layer.ix_cache {
                IndexCache::Bf16(c) => (ptr(c, g), NULL, NULL),
                IndexCache::Fp8 { keys, scales } => (NULL, ptr(keys, g), ptr(scales, g)),
            };
            let fp8 = ixc8 != NULL;
            let ops_at = |r: u64| {
                if fp8 {
                    IndexerOperands::Fp8 {
                        q: s.iq8 + r * 64 * 128,
                        q_scale: s.iqs + r * 64 * 4,
                        k: ixc8,
                        k_scale: ixs,
                    }
                } else {
                    IndexerOperands::Bf16 {
                        q: s.iqb + r * 64 * 128 * 2,
                        k: ixc,
                    }
                }
            };
            let (iq8, iqs) = if fp8 { (s.iq8, s.iqs) } else { (NULL, NULL) };
            self.norm_bf16(s.hidden, &layer.input_norm, s.xb, n, d, eps)?;
            // Queries.
            self.linear(&layer.q_a, s.xb, n, s.qa, false, 1.0, 0.0)?;
            self.norm_bf16(s.qa, &layer.q_a_norm, s.qrb, n, layer.q_a.out, eps)?;
            self.linear(&layer.q_b, s.qrb, n, s.q, false, 1.0, 0.0)?;
            let qn = (n * h * 192) as i64;
            launch!(g, "to_bf16", elems(qn as usize), &s.q, &s.qb, &qn);
            // Absorb W_UK: per head, q_nope [n, 128] · W_UK [128, 512] into the MLA query.
            self.gemm(
                false,
                512,
                n,
                128,
                1.0,
                ptr(&layer.kv_b.buf, g),
                512,
                256 * 512,
                s.qb,
                h * 192,
                192,
                0.0,
                s.mlaq,
                true,
                h * 576,
                576,
                h,
            )?;
            let heads = h as i32;
            launch!(
                g,
                "q_rope_pack",
                warps(n * h),
                &s.q,
                &d_pos,
                &cos,
                &sin,
                &s.mlaq,
                &n32,
                &heads
            );
            // Keys into the caches.
            self.linear(&layer.kv_a, s.xb, n, s.kv, false, 1.0, 0.0)?;
            let kv_norm = ptr(&layer.kv_a_norm, g);
            launch!(
                g,
                "kv_prep",
                warps(n),
                &s.kv,
                &kv_norm,
                &d_pos,
                &cos,
                &sin,
                &d_rows,
                &kvc,
                &n32,
                &eps
            );
            self.linear(&layer.ik, s.xb, n, s.ikf, false, 1.0, 0.0)?;
            let (knw, knb) = (ptr(&layer.k_norm_w, g), ptr(&layer.k_norm_b, g));
            launch!(
                g,
                "index_key_prep",
                warps(n),
                &s.ikf,
                &knw,
                &knb,
                &d_pos,
                &cos,
                &sin,
                &d_rows,
                &ixc,
                &ixc8,
                &ixs,
                &n32
            );
            // Indexer queries and head weights (with the heads^-0.5 and d^-0.5 factors).
            self.linear(&layer.iq, s.qrb, n, s.iqf, false, 1.0, 0.0)?;
            launch!(
                g,
                "index_query_prep",
                warps(n * 64),
                &s.iqf,
                &d_pos,
                &cos,
                &sin,
                &s.iqb,
                &iq8,
                &iqs,
                &n32
            );
            let w_scale = (64f32).powf(-0.5) * (128f32).powf(-0.5);
            self.linear(&layer.iw, s.xb, n, s.iwf, false, w_scale, 0.0)?;
            // Top-k positions per query.
            let k32 = k as i32;
            if decode {
                // For the multi-block top-k the indexer builds its first histograms as it
                // writes the logits.
                let mut work = if multi_block_topk(n, max_len, g.multiprocessors as usize) {
                    Some(
                        topk_work
                            .as_mut()
                            .ok_or(GpuError::Cuda("no top-k work space".into()))?,
                    )
                } else {
                    None
                };
                g.indexer_decode_raw(
                    ops_at(0),
                    s.iwf,
                    s.logits,
                    d_lens,
                    n,
                    max_len,
                    max_len,
                    d_tab,
                    stride,
                    work.as_deref_mut(),
                )?;
                match work {
                    Some(work) => g.topk_decode_raw(s.logits, d_lens, n, max_len, work, s.idx)?,
                    None => g.topk_rows_lens_raw(s.logits, d_lens, s.idx, n, max_len, k)?,
                }
            } else {
                let mut row0 = 0;
                for (seq, toks) in segs.iter() {
                    let table = d_tab + 4 * (row0 * stride) as u64;
                    let mut c0 = 0;
                    while c0 < toks.len() {
                        let t = (toks.len() - c0).min(PREFILL_CHUNK);
                        let first = seq.len + c0;
                        let keys = first + t;
                        let r = (row0 + c0) as u64;
                        let (w_at, idx_at) = (s.iwf + r * 64 * 4, s.idx + r * k as u64 * 4);
                        g.indexer_logits_raw(
                            ops_at(r),
                            w_at,
                            s.logits,
                            t,
                            keys,
                            keys,
                            first,
                            table,
                        )?;
                        g.topk_raw(s.logits, idx_at, t, keys, k, first)?;
                        c0 += t;
                    }
                    row0 += toks.len();
                }
            }
            if let Some(c) = record.as_deref_mut() {
                c.topk[li] = self.read_rows(s.idx, n, k)?;
            }
            let (st32, nk) = (stride as i32, n as i32);
            launch!(
                g,
                "map_pages",
                elems(n * k),
                &s.idx,
                &s.idxp,
                &d_tab,
                &st32,
                &k32,
                &nk
            );
            // Sparse MLA over the chosen rows, then W_UV and the output projection.
            g.sparse_mla_raw(
                s.mlaq,
                kvc,
                (NULL, 0),
                s.idxp,
                [s.part, s.lse, s.olat],
                n,
                h,
                self.pool_rows,
                k,
                splits,
                cfg.softmax_scale(),
                true, // after map_pages, which wrote s.idxp; the query came before the indexer
            )?;
            let on = (n * h * 512) as i64;
            launch!(g, "to_bf16", elems(on as usize), &s.olat, &s.olatb, &on);
            self.gemm(
                true,
                128,
                n,
                512,
                1.0,
                ptr(&layer.kv_b.buf, g) + 2 * 128 * 512,
                512,
                256 * 512,
                s.olatb,
                h * 512,
                512,
                0.0,
                s.ob,
                true,
                h * 128,
                128,
                h,
            )?;
            self.linear(&layer.o, s.ob, n, s.hidden, false, 1.0, 1.0)?;
            // Feed-forward.
            self.norm_bf16(s.hidden, &layer.post_norm, s.xb, n, d, eps)?;
            match &layer.ffn {
                Ffn::Dense { gate_up, down } => self.mlp(gate_up, down, s.xb, n, s)?,
                Ffn::Moe {
                    router,
                    bias,
                    gate_up,
                    down,
                    inter,
                    shared,
                } => {
                    let e = cfg.n_routed_experts;
                    let i = *inter;
                    self.linear(router, s.xb, n, s.rl, false, 1.0, 0.0)?;
                    g.moe_route_raw(s.rl, ptr(bias, g), s.ids, s.wts, n, cfg)?;
                    if let Some(c) = record.as_deref_mut() {
                        c.experts[li] = self.read_rows(s.ids, n, cfg.num_experts_per_tok)?;
                    }
                    if let Some((gu, dn)) = shared {
                        self.mlp(gu, dn, s.xb, n, s)?;
                    }
                    // Grouped expert products over the (token, expert) pairs, sorted by expert.
                    let kk = cfg.num_experts_per_tok;
                    let total = n * kk;
                    g.moe_sort_raw(s.ids, total, e, kk, s.token_of, s.pos, s.off, s.tiles)?;
                    g.grouped_gemm_raw(
                        s.xb,
                        s.token_of,
                        true,
                        ptr(gate_up, g),
                        s.gus,
                        s.off,
                        s.tiles,
                        e,
                        total,
                        2 * i,
                        d,
                    )?;
                    let (rows_t, i32_) = (total as i64, i as i32);
                    launch!(
                        g,
                        "swiglu_bf16",
                        elems(total * i),
                        &s.gus,
                        &s.acts,
                        &rows_t,
                        &i32_
                    );
                    g.grouped_gemm_raw(
                        s.acts,
                        s.token_of,
                        false,
                        ptr(down, g),
                        s.ys,
                        s.off,
                        s.tiles,
                        e,
                        total,
                        d,
                        i,
                    )?;
                    let kk32 = kk as i32;
                    launch!(
                        g,
                        "moe_combine_sorted",
                        config(n as u32, 1, 256, 0),
                        &s.hidden,
                        &s.ys,
                        &s.pos,
                        &s.wts,
                        &kk32,
                        &d32
                    );
                }
            }
        }
        Ok(())
    }

    /// Lays out (and grows, when needed) the scratch of one call.
    fn scratch(&mut self, sh: &Shape) -> Result<Scratch, GpuError> {
        let plan = |base: u64, cfg: &Config| -> (Scratch, u64) {
            let mut c = Carve { base, end: 0 };
            let (n, d) = (sh.rows, cfg.hidden_size);
            let ql = cfg.q_lora();
            let e = cfg.n_routed_experts.max(1);
            let ie = cfg.moe_intermediate_size;
            let dense = cfg
                .intermediate_size
                .max(cfg.moe_intermediate_size * cfg.n_shared_experts);
            let k = cfg.index_topk;
            let h = cfg.num_attention_heads;
            let pairs = n * cfg.num_experts_per_tok.max(1);
            let s = Scratch {
                hidden: c.take::<f32>(n * d),
                xb: c.take::<u16>(n * d),
                qa: c.take::<f32>(n * ql),
                qrb: c.take::<u16>(n * ql),
                q: c.take::<f32>(n * h * 192),
                qb: c.take::<u16>(n * h * 192),
                mlaq: c.take::<u16>(n * h * 576),
                kv: c.take::<f32>(n * 576),
                ikf: c.take::<f32>(n * 128),
                iqf: c.take::<f32>(n * 64 * 128),
                iqb: c.take::<u16>(n * 64 * 128),
                iq8: c.take::<u8>(n * 64 * 128),
                iqs: c.take::<f32>(n * 64),
                iwf: c.take::<f32>(n * 64),
                logits: c.take::<f32>(sh.logit_rows * sh.ld),
                idx: c.take::<i32>(n * k),
                idxp: c.take::<i32>(n * k),
                part: c.take::<f32>(n * sh.splits * h * 512),
                lse: c.take::<f32>(n * sh.splits * h),
                olat: c.take::<f32>(n * h * 512),
                olatb: c.take::<u16>(n * h * 512),
                ob: c.take::<u16>(n * h * 128),
                gu: c.take::<f32>(n * 2 * dense),
                act: c.take::<u16>(n * dense),
                rl: c.take::<f32>(n * e),
                ids: c.take::<i32>(n * cfg.num_experts_per_tok.max(1)),
                wts: c.take::<f32>(n * cfg.num_experts_per_tok.max(1)),
                token_of: c.take::<i32>(pairs),
                pos: c.take::<i32>(pairs),
                off: c.take::<i32>(e + 1),
                tiles: c.take::<i32>(e + 1),
                gus: c.take::<f32>(pairs * 2 * ie),
                acts: c.take::<u16>(pairs * ie),
                ys: c.take::<f32>(pairs * d),
                out: c.take::<f32>(n * cfg.vocab_size),
            };
            (s, c.end)
        };
        let (_, size) = plan(0, &self.cfg);
        let size = size as usize + 256;
        if self.arena.as_ref().is_none_or(|a| a.len() < size) {
            self.arena = None;
            self.arena = Some(self.gpu.zeros(size)?);
        }
        let base = ptr(self.arena.as_ref().expect("allocated above"), &self.gpu);
        Ok(plan(base, &self.cfg).0)
    }

    /// `rows` rows of `width` indices at `addr` in the scratch, without the -1 padding.
    fn read_rows(&self, addr: u64, rows: usize, width: usize) -> Result<Vec<Vec<usize>>, GpuError> {
        let bytes = self.read_scratch(addr, rows * width * 4)?;
        let vals: Vec<i32> = bytes
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        Ok(vals
            .chunks_exact(width)
            .map(|r| r.iter().filter(|&&v| v >= 0).map(|&v| v as usize).collect())
            .collect())
    }

    /// `len` bytes at `addr` in the scratch arena.
    fn read_scratch(&self, addr: u64, len: usize) -> Result<Vec<u8>, GpuError> {
        let arena = self
            .arena
            .as_ref()
            .ok_or_else(|| GpuError::Cuda("no scratch allocated".into()))?;
        let off = (addr - ptr(arena, &self.gpu)) as usize;
        let mut bytes = vec![0u8; len];
        self.gpu
            .stream
            .memcpy_dtoh(&arena.slice(off..off + len), bytes.as_mut_slice())
            .map_err(cuda)?;
        Ok(bytes)
    }

    fn ints_of(&mut self, n: usize) -> Result<(), GpuError> {
        if self.ints.as_ref().is_none_or(|b| b.len() < n) {
            self.ints = Some(self.gpu.zeros(n.next_power_of_two())?);
        }
        Ok(())
    }

    /// The final norm and the LM head of `wanted` rows into `s.out`.
    fn head(&self, s: &Scratch, n: usize, wanted: &[usize]) -> Result<(), GpuError> {
        let (d, v) = (self.cfg.hidden_size, self.cfg.vocab_size);
        self.norm_bf16(
            s.hidden,
            &self.norm,
            s.xb,
            n,
            d,
            self.cfg.rms_norm_eps as f32,
        )?;
        if wanted.len() == n {
            return self.linear(&self.head, s.xb, n, s.out, false, 1.0, 0.0);
        }
        for (j, &r) in wanted.iter().enumerate() {
            self.linear(
                &self.head,
                s.xb + (r * d * 2) as u64,
                1,
                s.out + (j * v * 4) as u64,
                false,
                1.0,
                0.0,
            )?;
        }
        Ok(())
    }

    /// The addresses and sizes of the buffers a captured graph refers to.
    fn buffers(&self) -> [(u64, usize); 2] {
        [
            self.arena
                .as_ref()
                .map_or((0, 0), |a| (ptr(a, &self.gpu), a.len())),
            self.ints
                .as_ref()
                .map_or((0, 0), |a| (ptr(a, &self.gpu), a.len())),
        ]
    }

    fn norm_bf16(
        &self,
        x: u64,
        w: &CudaSlice<f32>,
        y: u64,
        rows: usize,
        n: usize,
        eps: f32,
    ) -> Result<(), GpuError> {
        let g = &self.gpu;
        let n32 = n as i32;
        let w = ptr(w, g);
        launch!(
            g,
            "rms_norm_bf16",
            config(rows as u32, 1, 256, 0),
            &x,
            &w,
            &y,
            &n32,
            &eps,
            &n32
        );
        Ok(())
    }

    /// SwiGLU MLP with gate and up fused in one product; adds into the residual stream.
    fn mlp(&self, gate_up: &W, down: &W, x: u64, n: usize, s: &Scratch) -> Result<(), GpuError> {
        let g = &self.gpu;
        self.linear(gate_up, x, n, s.gu, false, 1.0, 0.0)?;
        let (rows, inter) = (n as i64, (gate_up.out / 2) as i32);
        let cfg = config(((n * gate_up.out / 2) as u32).div_ceil(256), 1, 256, 0);
        launch!(g, "swiglu_bf16", cfg, &s.gu, &s.act, &rows, &inter);
        self.linear(down, s.act, n, s.hidden, false, 1.0, 1.0)
    }

    /// y [n, out] = alpha · x [n, inp] · Wᵀ + beta · y.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        w: &W,
        x: u64,
        n: usize,
        y: u64,
        y_bf16: bool,
        alpha: f32,
        beta: f32,
    ) -> Result<(), GpuError> {
        self.gemm(
            true,
            w.out,
            n,
            w.inp,
            alpha,
            ptr(&w.buf, &self.gpu),
            w.inp,
            0,
            x,
            w.inp,
            0,
            beta,
            y,
            y_bf16,
            w.out,
            0,
            1,
        )
    }

    /// cuBLAS (column-major): C = alpha · op(A) · B + beta · C, bf16 A and B, f32 accumulate,
    /// C in f32 or bf16; `batch` products `sa`, `sb`, `sc` elements apart.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        transpose_a: bool,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: u64,
        lda: usize,
        sa: i64,
        b: u64,
        ldb: usize,
        sb: i64,
        beta: f32,
        c: u64,
        c_bf16: bool,
        ldc: usize,
        sc: i64,
        batch: usize,
    ) -> Result<(), GpuError> {
        use bsys::{cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType};
        let ta = if transpose_a {
            cublasOperation_t::CUBLAS_OP_T
        } else {
            cublasOperation_t::CUBLAS_OP_N
        };
        let nb = cublasOperation_t::CUBLAS_OP_N;
        let bf = cudaDataType::CUDA_R_16BF;
        let ct = if c_bf16 { bf } else { cudaDataType::CUDA_R_32F };
        let compute = cublasComputeType_t::CUBLAS_COMPUTE_32F;
        let algo = cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT;
        let h = *self.blas.handle();
        let (alpha_p, beta_p) = (
            &alpha as *const f32 as *const _,
            &beta as *const f32 as *const _,
        );
        let n = n.max(self.gemm_rows);
        let (m, n, k) = (m as i32, n as i32, k as i32);
        // SAFETY: the pointers address live device buffers sized by the callers for these shapes.
        // One call for single and batched products (a batch of one ignores the strides).
        let r = unsafe {
            blas::gemm_strided_batched_ex(
                h,
                ta,
                nb,
                m,
                n,
                k,
                alpha_p,
                a as *const _,
                bf,
                lda as i32,
                sa,
                b as *const _,
                bf,
                ldb as i32,
                sb,
                beta_p,
                c as *mut _,
                ct,
                ldc as i32,
                sc,
                batch as i32,
                compute,
                algo,
            )
        };
        r.map_err(|e| GpuError::Cuda(format!("cuBLAS gemm {m}x{n}x{k} (batch {batch}): {e:?}")))
    }
}

/// The cache pages no sequence holds.
struct PagePool {
    free: Vec<i32>,
}

impl PagePool {
    fn new(pages: usize) -> PagePool {
        PagePool {
            free: (0..pages as i32).rev().collect(),
        }
    }

    /// Gives each page list enough pages for its token count, or, when the pool cannot cover
    /// them all, gives none and says so.
    fn grow(&mut self, wants: &mut [(&mut Vec<i32>, usize)]) -> Result<(), ModelError> {
        let need: usize = wants
            .iter()
            .map(|(pages, end)| end.div_ceil(PAGE).saturating_sub(pages.len()))
            .sum();
        if need > self.free.len() {
            return Err(ModelError::Gpu(format!(
                "the GPU cache is full: {need} more pages of {PAGE} tokens needed, {} free (raise cache_tokens)",
                self.free.len()
            )));
        }
        for (pages, end) in wants.iter_mut() {
            while pages.len() * PAGE < *end {
                let page = self.free.pop().expect("counted above");
                pages.push(page);
            }
        }
        Ok(())
    }

    fn give_back(&mut self, pages: Vec<i32>) {
        self.free.extend(pages);
    }
}

/// Whether decode's top-k splits each row over many blocks (a few long rows) rather than giving
/// each row one block (many rows, or short ones).
fn multi_block_topk(rows: usize, len: usize, multiprocessors: usize) -> bool {
    len >= 16_384 && rows * 4 < multiprocessors
}

/// Splits of each row's selected positions in the sparse attention: enough that rows x splits
/// fills the multiprocessors once (a block of `sparse_mla_bf16` takes a whole one), at most one
/// per 64-row tile. More splits only add partial outputs for `mla_combine` to read: at batch 128
/// the earlier rule (two blocks per multiprocessor) gave 3 splits, whose combine took 62 µs per
/// layer under ncu, 40% of the attention's own time, for no gain.
pub(crate) fn attention_splits(rows: usize, multiprocessors: usize, topk: usize) -> usize {
    (multiprocessors / rows.max(1)).clamp(1, topk.div_ceil(64))
}

fn bf16s(v: &[f32]) -> Vec<u16> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x).to_bits())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    #[test]
    fn attention_splits_fill_the_multiprocessors_once() {
        // An H200 has 132 multiprocessors; top-k 2048 is 32 tiles of 64.
        let splits = |rows| attention_splits(rows, 132, 2048);
        assert_eq!(
            splits(1),
            32,
            "batch 1: one tile a block, capped by the tiles"
        );
        assert_eq!(splits(32), 4);
        assert_eq!(splits(66), 2);
        assert_eq!(splits(128), 1, "batch 128: no partial outputs to combine");
        assert_eq!(splits(4096), 1, "prefill-sized calls");
        assert_eq!(
            attention_splits(1, 132, 100),
            2,
            "short top-k: at most one split a tile"
        );
    }

    #[test]
    fn the_page_pool_gives_all_or_nothing() {
        let mut pool = PagePool::new(4);
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        pool.grow(&mut [(&mut a, 200), (&mut b, 129)])
            .expect("4 pages cover 2 + 2");
        assert_eq!((a.len(), b.len()), (2, 2));
        let mut all: Vec<i32> = a.iter().chain(&b).copied().collect();
        all.sort_unstable();
        assert_eq!(all, [0, 1, 2, 3], "no page is handed out twice");
        // Growing within a page takes nothing; a new page from an empty pool is refused, and
        // the refused call changes no list.
        pool.grow(&mut [(&mut a, 256)]).expect("still 2 pages");
        let err = pool
            .grow(&mut [(&mut c, 1), (&mut a, 257)])
            .expect_err("the pool is empty");
        assert!(err.to_string().contains("cache is full"), "{err}");
        assert_eq!((a.len(), c.len()), (2, 0));
        pool.give_back(std::mem::take(&mut b));
        pool.grow(&mut [(&mut c, 1), (&mut a, 257)])
            .expect("b's pages came back");
        assert_eq!((a.len(), c.len()), (3, 1));
    }

    #[test]
    fn configs_the_kernels_do_not_run_are_refused_by_field() {
        assert_eq!(unsupported(&Preset::Small.config()), None);
        let tiny = unsupported(&Preset::Tiny.config()).expect("tiny has 4 heads");
        assert!(tiny.contains("num_attention_heads"), "{tiny}");
        let mut cfg = Preset::Small.config();
        cfg.num_attention_heads = 128;
        assert_eq!(unsupported(&cfg), None, "DeepSeek-V3.2's 128 query heads");
        cfg.num_attention_heads = 192;
        let why = unsupported(&cfg).expect("192 heads");
        assert!(
            why.contains("num_attention_heads") && why.contains("192"),
            "{why}"
        );
        let mut cfg = Preset::Small.config();
        cfg.index_topk = 4096;
        let why = unsupported(&cfg).expect("top-k above 2048");
        assert!(why.contains("index_topk"), "{why}");
        let mut cfg = Preset::Small.config();
        cfg.moe_intermediate_size = 500;
        let why = unsupported(&cfg).expect("not a multiple of 64");
        assert!(why.contains("moe_intermediate_size"), "{why}");
    }
}
