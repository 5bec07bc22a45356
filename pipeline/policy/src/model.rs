//! The CPU reference forward pass of DeepSeek-V3.2 (dsa.md §1): MLA in MHA mode (prefill) and
//! absorbed MQA mode (decode), the lightning indexer choosing top-k positions per query, sparse
//! attention over them, dense and MoE feed-forward layers, the LM head. f32 throughout; exact and
//! readable rather than fast. The GPU backend is checked against this.

use std::path::Path;

use crate::ModelError;
use crate::checkpoint::Tensors;
use crate::config::Config;
use crate::ops::{
    Linear, Rope, RopeStyle, axpy, dot, hadamard, layer_norm, rms_norm, sigmoid, silu, softmax,
    top_k,
};

/// The indexer key norm's epsilon (a LayerNorm, not an RMSNorm).
const INDEXER_NORM_EPS: f32 = 1e-6;

/// How attention reads the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionMode {
    /// Expand the latent into per-head keys (nope | rope, d_qk = nope + rope) and values.
    Mha,
    /// Absorb the key up-projection into the query and attend over the latent itself
    /// (d_qk = kv_lora + rope, d_v = kv_lora), then up-project the result.
    Absorbed,
}

/// Which positions a query attends to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The indexer's top-k (DSA).
    Sparse,
    /// Every visible position (dense attention; the indexer is not consulted).
    Dense,
}

/// Which rows of logits a forward call returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    All,
    /// Only each segment's last token (generation).
    Last,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forward {
    pub mode: AttentionMode,
    pub selection: Selection,
    pub logits: Logits,
}

impl Forward {
    pub const PREFILL: Forward = Forward {
        mode: AttentionMode::Mha,
        selection: Selection::Sparse,
        logits: Logits::Last,
    };
    pub const DECODE: Forward = Forward {
        mode: AttentionMode::Absorbed,
        selection: Selection::Sparse,
        logits: Logits::Last,
    };
}

/// The discrete choices of one forward call, per layer and row: the top-k positions (ascending)
/// and, in MoE layers, the experts (ascending).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Choices {
    pub topk: Vec<Vec<Vec<usize>>>,
    pub experts: Vec<Vec<Vec<usize>>>,
}

pub(crate) struct Indexer {
    pub(crate) wq_b: Linear,
    pub(crate) wk: Linear,
    pub(crate) k_norm_w: Vec<f32>,
    pub(crate) k_norm_b: Vec<f32>,
    pub(crate) weights_proj: Linear,
}

pub(crate) struct Attention {
    pub(crate) q_a: Linear,
    pub(crate) q_a_norm: Vec<f32>,
    pub(crate) q_b: Linear,
    pub(crate) kv_a: Linear,
    pub(crate) kv_a_norm: Vec<f32>,
    pub(crate) kv_b: Linear,
    pub(crate) o: Linear,
    pub(crate) indexer: Indexer,
}

pub(crate) struct Mlp {
    pub(crate) gate: Linear,
    pub(crate) up: Linear,
    pub(crate) down: Linear,
}

pub(crate) struct Moe {
    pub(crate) router: Linear,
    pub(crate) bias: Vec<f32>,
    pub(crate) experts: Vec<Mlp>,
    pub(crate) shared: Option<Mlp>,
}

pub(crate) enum FeedForward {
    Dense(Mlp),
    Moe(Moe),
}

pub(crate) struct Layer {
    pub(crate) input_norm: Vec<f32>,
    pub(crate) post_norm: Vec<f32>,
    pub(crate) attn: Attention,
    pub(crate) ffn: FeedForward,
}

pub struct Model {
    pub cfg: Config,
    pub(crate) embed: Vec<f32>,
    pub(crate) layers: Vec<Layer>,
    pub(crate) norm: Vec<f32>,
    pub(crate) lm_head: Option<Linear>,
    pub(crate) rope: Rope,
    /// The indexer's RoPE convention; only tests change it, to show that it matters.
    pub(crate) index_rope: IndexRope,
}

/// Where and how the indexer rotates its q and k.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexRope {
    pub style: RopeStyle,
    /// [rope | nope] (true, DeepSeek-V3.2) or [nope | rope] (MLA's layout).
    pub rope_first: bool,
}

impl IndexRope {
    /// DeepSeek's 2025-11-17 fix: non-interleaved, on the leading dims.
    pub const V32: IndexRope = IndexRope {
        style: RopeStyle::Neox,
        rope_first: true,
    };
}

/// What decode needs of one layer, per position: MLA's compressed latent (kv_lora), its shared
/// rope key, and the indexer key (after RoPE and the Hadamard rotation).
#[derive(Clone, Debug, Default)]
struct LayerCache {
    latent: Vec<f32>,
    k_rope: Vec<f32>,
    index_keys: Vec<f32>,
}

/// One sequence's caches.
#[derive(Clone, Debug)]
pub struct Cache {
    layers: Vec<LayerCache>,
    len: usize,
}

impl Cache {
    pub fn new(model: &Model) -> Cache {
        Cache {
            layers: vec![LayerCache::default(); model.layers.len()],
            len: 0,
        }
    }

    /// Tokens seen so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The cache of this sequence's first `len` tokens (at most all of them), as prefilling
    /// those tokens leaves it: decoding only appends rows.
    pub fn prefix(&self, len: usize) -> Cache {
        let len = len.min(self.len);
        let cut = |v: &Vec<f32>| match v.len().checked_div(self.len) {
            Some(width) => v[..width * len].to_vec(),
            None => Vec::new(),
        };
        Cache {
            layers: self
                .layers
                .iter()
                .map(|l| LayerCache {
                    latent: cut(&l.latent),
                    k_rope: cut(&l.k_rope),
                    index_keys: cut(&l.index_keys),
                })
                .collect(),
            len,
        }
    }

    /// Bytes held, for reporting.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| 4 * (l.latent.len() + l.k_rope.len() + l.index_keys.len()))
            .sum()
    }
}

/// One sequence's share of a forward call: its cache and the tokens that follow it.
pub struct Segment<'a> {
    pub cache: &'a mut Cache,
    pub tokens: &'a [u32],
}

/// Per row of the call: which segment, which position.
#[derive(Clone, Copy)]
struct Row {
    seg: usize,
    pos: usize,
}

impl Model {
    /// Loads `config.json` and the safetensors of a Hugging Face checkpoint folder.
    pub fn load(dir: &Path) -> Result<Model, ModelError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        let cfg = Config::from_json(&text)?;
        let mut tensors = Tensors::read_dir(dir)?;
        let model = Model::build(cfg, &mut tensors)?;
        tensors.finish(&model.cfg)?;
        Ok(model)
    }

    /// A model from tensors already in memory (tests, benchmarks), checked like a checkpoint.
    pub fn from_tensors(cfg: Config, mut tensors: Tensors) -> Result<Model, ModelError> {
        cfg.validate()?;
        let model = Model::build(cfg, &mut tensors)?;
        tensors.finish(&model.cfg)?;
        Ok(model)
    }

    fn build(cfg: Config, t: &mut Tensors) -> Result<Model, ModelError> {
        let d = cfg.hidden_size;
        let h = cfg.num_attention_heads;
        let (ql, kvl, rope) = (cfg.q_lora(), cfg.kv_lora_rank, cfg.qk_rope_head_dim);
        let mlp = |t: &mut Tensors, p: &str, inter: usize| -> Result<Mlp, ModelError> {
            Ok(Mlp {
                gate: t.take_linear(&format!("{p}.gate_proj"), inter, d)?,
                up: t.take_linear(&format!("{p}.up_proj"), inter, d)?,
                down: t.take_linear(&format!("{p}.down_proj"), d, inter)?,
            })
        };
        let embed = t.take("model.embed_tokens.weight", &[cfg.vocab_size, d])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let a = format!("{p}.self_attn");
            let attn = Attention {
                q_a: t.take_linear(&format!("{a}.q_a_proj"), ql, d)?,
                q_a_norm: t.take(&format!("{a}.q_a_layernorm.weight"), &[ql])?,
                q_b: t.take_linear(&format!("{a}.q_b_proj"), h * cfg.qk_head_dim(), ql)?,
                kv_a: t.take_linear(&format!("{a}.kv_a_proj_with_mqa"), kvl + rope, d)?,
                kv_a_norm: t.take(&format!("{a}.kv_a_layernorm.weight"), &[kvl])?,
                kv_b: t.take_linear(
                    &format!("{a}.kv_b_proj"),
                    h * (cfg.qk_nope_head_dim + cfg.v_head_dim),
                    kvl,
                )?,
                o: t.take_linear(&format!("{a}.o_proj"), d, h * cfg.v_head_dim)?,
                indexer: Indexer {
                    wq_b: t.take_linear(
                        &format!("{a}.indexer.wq_b"),
                        cfg.index_n_heads * cfg.index_head_dim,
                        ql,
                    )?,
                    wk: t.take_linear(&format!("{a}.indexer.wk"), cfg.index_head_dim, d)?,
                    k_norm_w: t
                        .take(&format!("{a}.indexer.k_norm.weight"), &[cfg.index_head_dim])?,
                    k_norm_b: t.take(&format!("{a}.indexer.k_norm.bias"), &[cfg.index_head_dim])?,
                    weights_proj: t.take_linear(
                        &format!("{a}.indexer.weights_proj"),
                        cfg.index_n_heads,
                        d,
                    )?,
                },
            };
            let ffn = if cfg.is_moe_layer(l) {
                let m = format!("{p}.mlp");
                let experts = (0..cfg.n_routed_experts)
                    .map(|e| mlp(t, &format!("{m}.experts.{e}"), cfg.moe_intermediate_size))
                    .collect::<Result<Vec<_>, _>>()?;
                let shared = if cfg.n_shared_experts > 0 {
                    Some(mlp(
                        t,
                        &format!("{m}.shared_experts"),
                        cfg.moe_intermediate_size * cfg.n_shared_experts,
                    )?)
                } else {
                    None
                };
                FeedForward::Moe(Moe {
                    router: t.take_linear(&format!("{m}.gate"), cfg.n_routed_experts, d)?,
                    bias: t.take(
                        &format!("{m}.gate.e_score_correction_bias"),
                        &[cfg.n_routed_experts],
                    )?,
                    experts,
                    shared,
                })
            } else {
                FeedForward::Dense(mlp(t, &format!("{p}.mlp"), cfg.intermediate_size)?)
            };
            layers.push(Layer {
                input_norm: t.take(&format!("{p}.input_layernorm.weight"), &[d])?,
                post_norm: t.take(&format!("{p}.post_attention_layernorm.weight"), &[d])?,
                attn,
                ffn,
            });
        }
        let norm = t.take("model.norm.weight", &[d])?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(t.take_linear("lm_head", cfg.vocab_size, d)?)
        };
        let rope = Rope::new(&cfg);
        Ok(Model {
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            rope,
            index_rope: IndexRope::V32,
        })
    }

    /// Runs every segment's new tokens through the model, appending to the caches. Returns one
    /// logits row per new token (`Logits::All`) or per segment (`Logits::Last`), segment-major.
    pub fn forward(
        &self,
        segments: &mut [Segment<'_>],
        how: Forward,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        self.forward_with(segments, how, None, &mut Choices::default())
    }

    /// [`Model::forward`] taking its discrete choices (top-k positions, experts) from `forced`
    /// where given, so another implementation's numerics can be compared row by row even where
    /// rounding tipped a near-tie; `own` receives the choices this model would have made itself.
    pub fn forward_with(
        &self,
        segments: &mut [Segment<'_>],
        how: Forward,
        forced: Option<&Choices>,
        own: &mut Choices,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let cfg = &self.cfg;
        *own = Choices {
            topk: vec![Vec::new(); self.layers.len()],
            experts: vec![Vec::new(); self.layers.len()],
        };
        let d = cfg.hidden_size;
        let mut rows = Vec::new();
        for (seg, s) in segments.iter().enumerate() {
            let end = s.cache.len + s.tokens.len();
            if end > cfg.max_position_embeddings {
                return Err(ModelError::Context {
                    tokens: end,
                    limit: cfg.max_position_embeddings,
                });
            }
            for (i, &tok) in s.tokens.iter().enumerate() {
                if tok as usize >= cfg.vocab_size {
                    return Err(ModelError::Token {
                        token: tok,
                        vocab: cfg.vocab_size,
                    });
                }
                rows.push(Row {
                    seg,
                    pos: s.cache.len + i,
                });
            }
        }
        let mut hidden = Vec::with_capacity(rows.len() * d);
        for s in segments.iter() {
            for &tok in s.tokens {
                hidden.extend_from_slice(&self.embed[tok as usize * d..(tok as usize + 1) * d]);
            }
        }
        for (l, layer) in self.layers.iter().enumerate() {
            let x = norm_rows(&hidden, &layer.input_norm, cfg.rms_norm_eps as f32, d);
            let attn = self.attention(l, &layer.attn, &x, &rows, segments, how, forced, own);
            axpy(&mut hidden, 1.0, &attn);
            let x = norm_rows(&hidden, &layer.post_norm, cfg.rms_norm_eps as f32, d);
            let ffn = match &layer.ffn {
                FeedForward::Dense(m) => m.apply_rows(&x, rows.len()),
                FeedForward::Moe(m) => {
                    let chosen = forced.and_then(|f| f.experts.get(l));
                    self.moe(m, &x, rows.len(), chosen, &mut own.experts[l])
                }
            };
            axpy(&mut hidden, 1.0, &ffn);
        }
        for s in segments.iter_mut() {
            s.cache.len += s.tokens.len();
        }
        let wanted: Vec<usize> = match how.logits {
            Logits::All => (0..rows.len()).collect(),
            Logits::Last => (0..rows.len())
                .filter(|&r| r + 1 == rows.len() || rows[r + 1].seg != rows[r].seg)
                .collect(),
        };
        let mut picked = Vec::with_capacity(wanted.len() * d);
        for &r in &wanted {
            picked.extend(rms_norm(
                &hidden[r * d..(r + 1) * d],
                &self.norm,
                cfg.rms_norm_eps as f32,
            ));
        }
        let logits = match &self.lm_head {
            Some(head) => head.apply_rows(&picked, wanted.len()),
            None => Linear {
                out: cfg.vocab_size,
                inp: d,
                w: self.embed.clone(),
            }
            .apply_rows(&picked, wanted.len()),
        };
        Ok(logits
            .chunks_exact(cfg.vocab_size)
            .map(|c| c.to_vec())
            .collect())
    }

    /// Prefill one sequence (MHA mode); the last token's logits.
    pub fn prefill(&self, cache: &mut Cache, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        self.last(cache, tokens, Forward::PREFILL)
    }

    /// One decode step (absorbed mode); the token's logits.
    pub fn decode(&self, cache: &mut Cache, token: u32) -> Result<Vec<f32>, ModelError> {
        self.last(cache, &[token], Forward::DECODE)
    }

    fn last(
        &self,
        cache: &mut Cache,
        tokens: &[u32],
        how: Forward,
    ) -> Result<Vec<f32>, ModelError> {
        let mut seg = [Segment { cache, tokens }];
        let mut out = self.forward(&mut seg, how)?;
        out.pop().ok_or(ModelError::Empty)
    }

    /// One decode step for several sequences together (absorbed mode); logits per sequence.
    pub fn decode_batch(
        &self,
        batch: &mut [(&mut Cache, u32)],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let tokens: Vec<[u32; 1]> = batch.iter().map(|(_, t)| [*t]).collect();
        let mut segments: Vec<Segment<'_>> = batch
            .iter_mut()
            .zip(&tokens)
            .map(|((cache, _), t)| Segment { cache, tokens: t })
            .collect();
        self.forward(&mut segments, Forward::DECODE)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        l: usize,
        a: &Attention,
        x: &[f32],
        rows: &[Row],
        segments: &mut [Segment<'_>],
        how: Forward,
        forced: Option<&Choices>,
        own: &mut Choices,
    ) -> Vec<f32> {
        let cfg = &self.cfg;
        let eps = cfg.rms_norm_eps as f32;
        let n = rows.len();
        let (h, nope, rope, vd, kvl) = (
            cfg.num_attention_heads,
            cfg.qk_nope_head_dim,
            cfg.qk_rope_head_dim,
            cfg.v_head_dim,
            cfg.kv_lora_rank,
        );
        let dqk = nope + rope;
        let (ih, id) = (cfg.index_n_heads, cfg.index_head_dim);

        // Queries: qr = RMSNorm(x·Wq_a) is shared with the indexer.
        let qr = norm_rows(&a.q_a.apply_rows(x, n), &a.q_a_norm, eps, a.q_a.out);
        let mut q = a.q_b.apply_rows(&qr, n);
        for (r, row) in rows.iter().enumerate() {
            for head in 0..h {
                let at = r * h * dqk + head * dqk + nope;
                self.rope
                    .apply(&mut q[at..at + rope], row.pos, RopeStyle::Interleaved);
            }
        }

        // Keys: the latent and the shared rope key go into the cache.
        let kv = a.kv_a.apply_rows(x, n);
        let ik = a.indexer.wk.apply_rows(x, n);
        for (r, row) in rows.iter().enumerate() {
            let kv_r = &kv[r * (kvl + rope)..(r + 1) * (kvl + rope)];
            let latent = rms_norm(&kv_r[..kvl], &a.kv_a_norm, eps);
            let mut k_pe = kv_r[kvl..].to_vec();
            self.rope.apply(&mut k_pe, row.pos, RopeStyle::Interleaved);
            let key = self.index_key(&a.indexer, &ik[r * id..(r + 1) * id], row.pos);
            let c = &mut segments[row.seg].cache.layers[l];
            c.latent.extend_from_slice(&latent);
            c.k_rope.extend_from_slice(&k_pe);
            c.index_keys.extend_from_slice(&key);
        }

        // Indexer queries and head weights.
        let iq = a.indexer.wq_b.apply_rows(&qr, n);
        let iw = a.indexer.weights_proj.apply_rows(x, n);

        // MHA mode expands every cached latent of each segment into per-head keys and values.
        let expanded: Vec<Option<Vec<f32>>> = segments
            .iter()
            .map(|s| match how.mode {
                AttentionMode::Mha => {
                    let c = &s.cache.layers[l];
                    let len = c.latent.len() / kvl;
                    Some(a.kv_b.apply_rows(&c.latent, len))
                }
                AttentionMode::Absorbed => None,
            })
            .collect();

        let scale = cfg.softmax_scale();
        let mut out = vec![0.0f32; n * h * vd];
        for (r, row) in rows.iter().enumerate() {
            let c = &segments[row.seg].cache.layers[l];
            let visible = row.pos + 1;
            let selected: Vec<usize> = match how.selection {
                Selection::Dense => (0..visible).collect(),
                Selection::Sparse => {
                    let mut qi = iq[r * ih * id..(r + 1) * ih * id].to_vec();
                    for head in 0..ih {
                        self.index_query(&mut qi[head * id..(head + 1) * id], row.pos);
                    }
                    let w: Vec<f32> = iw[r * ih..(r + 1) * ih]
                        .iter()
                        .map(|v| v * (ih as f32).powf(-0.5))
                        .collect();
                    let scores = index_scores(&qi, &w, &c.index_keys[..visible * id], id);
                    let mine = top_k(&scores, cfg.index_topk.min(visible));
                    own.topk[l].push(mine.clone());
                    match forced.and_then(|f| f.topk.get(l)).and_then(|t| t.get(r)) {
                        Some(theirs) => theirs.clone(),
                        None => mine,
                    }
                }
            };
            for head in 0..h {
                let qh = &q[r * h * dqk + head * dqk..r * h * dqk + (head + 1) * dqk];
                let (q_nope, q_pe) = qh.split_at(nope);
                let o = &mut out[(r * h + head) * vd..(r * h + head + 1) * vd];
                let mut p: Vec<f32> = Vec::with_capacity(selected.len());
                match how.mode {
                    AttentionMode::Mha => {
                        let e = expanded[row.seg].as_ref().expect("expanded in MHA mode");
                        let per = h * (nope + vd);
                        for &s in &selected {
                            let k_nope = &e[s * per + head * (nope + vd)..][..nope];
                            let k_pe = &c.k_rope[s * rope..(s + 1) * rope];
                            p.push((dot(q_nope, k_nope) + dot(q_pe, k_pe)) * scale);
                        }
                        softmax(&mut p);
                        for (&s, &ps) in selected.iter().zip(&p) {
                            let v = &e[s * per + head * (nope + vd) + nope..][..vd];
                            axpy(o, ps, v);
                        }
                    }
                    AttentionMode::Absorbed => {
                        // q_nope · W_UK (nope → kv_lora), per head.
                        let mut q_abs = vec![0.0f32; kvl];
                        for (i, &qv) in q_nope.iter().enumerate() {
                            axpy(&mut q_abs, qv, a.kv_b.row(head * (nope + vd) + i));
                        }
                        for &s in &selected {
                            let lat = &c.latent[s * kvl..(s + 1) * kvl];
                            let k_pe = &c.k_rope[s * rope..(s + 1) * rope];
                            p.push((dot(&q_abs, lat) + dot(q_pe, k_pe)) * scale);
                        }
                        softmax(&mut p);
                        let mut o_lat = vec![0.0f32; kvl];
                        for (&s, &ps) in selected.iter().zip(&p) {
                            axpy(&mut o_lat, ps, &c.latent[s * kvl..(s + 1) * kvl]);
                        }
                        // · W_UV (kv_lora → v), per head.
                        for (j, ov) in o.iter_mut().enumerate() {
                            *ov = dot(a.kv_b.row(head * (nope + vd) + nope + j), &o_lat);
                        }
                    }
                }
            }
        }
        a.o.apply_rows(&out, n)
    }

    /// The indexer key of one token: LayerNorm, non-interleaved RoPE on the leading rope dims
    /// ([rope | nope], the reverse of MLA's layout), then the Hadamard rotation.
    fn index_key(&self, ix: &Indexer, projected: &[f32], pos: usize) -> Vec<f32> {
        let mut k = layer_norm(projected, &ix.k_norm_w, &ix.k_norm_b, INDEXER_NORM_EPS);
        self.index_rope(&mut k, pos);
        hadamard(&mut k);
        k
    }

    /// An indexer query head: the same RoPE and rotation as the keys.
    fn index_query(&self, q: &mut [f32], pos: usize) {
        self.index_rope(q, pos);
        hadamard(q);
    }

    fn index_rope(&self, v: &mut [f32], pos: usize) {
        let rope = self.cfg.qk_rope_head_dim;
        let span = if self.index_rope.rope_first {
            0..rope
        } else {
            v.len() - rope..v.len()
        };
        self.rope.apply(&mut v[span], pos, self.index_rope.style);
    }

    fn moe(
        &self,
        m: &Moe,
        x: &[f32],
        n: usize,
        forced: Option<&Vec<Vec<usize>>>,
        own: &mut Vec<Vec<usize>>,
    ) -> Vec<f32> {
        let d = self.cfg.hidden_size;
        let routes: Vec<Vec<(usize, f32)>> = (0..n)
            .map(|r| {
                let logits = m.router.apply(&x[r * d..(r + 1) * d]);
                let mine = choose_experts(&self.cfg, &logits, &m.bias);
                own.push(mine.clone());
                let chosen = forced.and_then(|f| f.get(r)).cloned().unwrap_or(mine);
                weigh_experts(&self.cfg, &logits, chosen)
            })
            .collect();
        let mut out = match &m.shared {
            Some(s) => s.apply_rows(x, n),
            None => vec![0.0; n * d],
        };
        // Each expert runs once over the rows routed to it; rows add experts in index order.
        let mut contributions: Vec<Vec<(usize, f32, Vec<f32>)>> = vec![Vec::new(); n];
        for (e, expert) in m.experts.iter().enumerate() {
            let mine: Vec<(usize, f32)> = routes
                .iter()
                .enumerate()
                .filter_map(|(r, rs)| rs.iter().find(|(re, _)| *re == e).map(|(_, w)| (r, *w)))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let xs: Vec<f32> = mine
                .iter()
                .flat_map(|(r, _)| x[r * d..(r + 1) * d].iter().copied())
                .collect();
            let ys = expert.apply_rows(&xs, mine.len());
            for (i, (r, w)) in mine.into_iter().enumerate() {
                contributions[r].push((e, w, ys[i * d..(i + 1) * d].to_vec()));
            }
        }
        for (r, cs) in contributions.into_iter().enumerate() {
            let mut routed = vec![0.0f32; d];
            for (_, w, y) in cs {
                axpy(&mut routed, w, &y);
            }
            axpy(&mut out[r * d..(r + 1) * d], 1.0, &routed);
        }
        out
    }
}

impl Mlp {
    /// SwiGLU: down(silu(gate·x) ⊙ up·x).
    fn apply_rows(&self, x: &[f32], n: usize) -> Vec<f32> {
        let g = self.gate.apply_rows(x, n);
        let u = self.up.apply_rows(x, n);
        let act: Vec<f32> = g.iter().zip(&u).map(|(g, u)| silu(*g) * u).collect();
        self.down.apply_rows(&act, n)
    }
}

fn norm_rows(x: &[f32], w: &[f32], eps: f32, width: usize) -> Vec<f32> {
    x.chunks_exact(width)
        .flat_map(|r| rms_norm(r, w, eps))
        .collect()
}

/// Group-limited sigmoid routing (noaux_tc) of one token from its router logits: experts are
/// chosen by score + correction bias within the best `topk_group` groups (a group scores by its
/// two best experts), weighted by their plain sigmoid scores, renormalized, then scaled by
/// `routed_scaling_factor`. Returns (expert, weight) in ascending expert order.
pub fn route(cfg: &Config, logits: &[f32], bias: &[f32]) -> Vec<(usize, f32)> {
    weigh_experts(cfg, logits, choose_experts(cfg, logits, bias))
}

/// The experts [`route`] picks, ascending.
fn choose_experts(cfg: &Config, logits: &[f32], bias: &[f32]) -> Vec<usize> {
    let choice: Vec<f32> = logits
        .iter()
        .zip(bias)
        .map(|(&l, b)| sigmoid(l) + b)
        .collect();
    let per = cfg.n_routed_experts / cfg.n_group;
    let group_scores: Vec<f32> = (0..cfg.n_group)
        .map(|g| {
            let best = top_k(&choice[g * per..(g + 1) * per], 2);
            best.iter().map(|&i| choice[g * per + i]).sum()
        })
        .collect();
    let groups = top_k(&group_scores, cfg.topk_group);
    let masked: Vec<f32> = choice
        .iter()
        .enumerate()
        .map(|(e, &c)| {
            if groups.contains(&(e / per)) {
                c
            } else {
                f32::NEG_INFINITY
            }
        })
        .collect();
    top_k(&masked, cfg.num_experts_per_tok)
}

/// The weights of `chosen` experts: plain sigmoid scores, renormalized, scaled.
fn weigh_experts(cfg: &Config, logits: &[f32], chosen: Vec<usize>) -> Vec<(usize, f32)> {
    let scores: Vec<f32> = logits.iter().copied().map(sigmoid).collect();
    let mut weights: Vec<f32> = chosen.iter().map(|&e| scores[e]).collect();
    if cfg.norm_topk_prob {
        let sum: f32 = weights.iter().sum::<f32>() + 1e-20;
        weights.iter_mut().for_each(|w| *w /= sum);
    }
    let f = cfg.routed_scaling_factor as f32;
    chosen
        .into_iter()
        .zip(weights)
        .map(|(e, w)| (e, w * f))
        .collect()
}

/// The lightning indexer's score of every key for one query:
/// I(s) = Σ_j w_j · ReLU(q_j · k_s) · d^-0.5 over the indexer heads j. `q` is heads × d, `keys`
/// is positions × d, `w` already carries the heads^-0.5 factor.
pub fn index_scores(q: &[f32], w: &[f32], keys: &[f32], d: usize) -> Vec<f32> {
    let s = (d as f32).powf(-0.5);
    keys.chunks_exact(d)
        .map(|k| {
            q.chunks_exact(d)
                .zip(w)
                .map(|(qj, wj)| wj * dot(qj, k).max(0.0))
                .sum::<f32>()
                * s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Tensors;
    use crate::config::Preset;
    use crate::init::random_tensors;

    fn tiny() -> Model {
        let cfg = Preset::Tiny.config();
        Model::from_tensors(cfg.clone(), Tensors::from_named(random_tensors(&cfg, 3)))
            .expect("the tiny preset builds")
    }

    fn tokens(n: usize) -> Vec<u32> {
        (0..n as u32).map(|i| (i * 131 + 7) % 512).collect()
    }

    fn all_logits(model: &Model, toks: &[u32], how: Forward) -> Vec<Vec<f32>> {
        let mut cache = Cache::new(model);
        model
            .forward(
                &mut [Segment {
                    cache: &mut cache,
                    tokens: toks,
                }],
                Forward {
                    logits: Logits::All,
                    ..how
                },
            )
            .expect("forward")
    }

    #[test]
    fn forced_choices_are_followed_and_the_own_ones_reported() {
        let model = tiny();
        let toks = tokens(40); // top-k 8 of up to 40 positions
        let how = Forward {
            logits: Logits::All,
            ..Forward::PREFILL
        };
        let run = |forced: Option<&Choices>| {
            let mut cache = Cache::new(&model);
            let mut own = Choices::default();
            let logits = model
                .forward_with(
                    &mut [Segment {
                        cache: &mut cache,
                        tokens: &toks,
                    }],
                    how,
                    forced,
                    &mut own,
                )
                .expect("forward");
            (logits, own)
        };
        let (free, own) = run(None);
        assert_eq!(free, all_logits(&model, &toks, Forward::PREFILL));
        assert_eq!(own.topk[0].len(), toks.len());
        assert!(own.experts[1].iter().all(|e| e.len() == 2));
        assert!(own.experts[0].is_empty(), "layer 0 is dense");
        // Its own choices, forced, change nothing.
        let (same, again) = run(Some(&own));
        assert_eq!(same, free);
        assert_eq!(again, own);
        // Other positions and experts for the last row change its logits, not the choices the
        // model reports as its own for the rows before.
        let mut other = own.clone();
        let last = toks.len() - 1;
        other.topk[0][last] = (0..8).collect();
        other.experts[1][last] = (0..8)
            .filter(|e| !own.experts[1][last].contains(e))
            .take(2)
            .collect();
        assert_ne!(own.topk[0][last], other.topk[0][last]);
        let (changed, theirs) = run(Some(&other));
        assert_eq!(changed[..last], free[..last]);
        assert_ne!(changed[last], free[last]);
        assert_eq!(theirs.topk[0][..last], own.topk[0][..last]);
    }

    #[test]
    fn indexer_rope_is_non_interleaved_on_the_leading_dims() {
        let model = tiny();
        let rope = model.cfg.qk_rope_head_dim; // 16: pairs (i, i + 8)
        let mut v = vec![0.0f32; model.cfg.index_head_dim];
        v[0] = 1.0;
        v[rope] = 2.0; // first nope dim: untouched
        model.index_rope(&mut v, 5);
        let f0 = model.rope.freqs[0];
        let (c, s) = ((5.0 * f0).cos() as f32, (5.0 * f0).sin() as f32);
        assert!(
            (v[0] - c).abs() < 1e-6,
            "dim 0 rotates with dim {}",
            rope / 2
        );
        assert!(
            (v[rope / 2] - s).abs() < 1e-6,
            "the partner of dim 0 is dim rope/2 (NeoX), not dim 1"
        );
        assert_eq!(v[1], 0.0);
        assert_eq!(v[rope], 2.0);
        // MLA's rope key is interleaved: the partner of dim 0 is dim 1.
        let mut k = vec![0.0f32; rope];
        k[0] = 1.0;
        model.rope.apply(&mut k, 5, RopeStyle::Interleaved);
        assert!((k[1] - s).abs() < 1e-6);
    }

    #[test]
    fn swapping_the_indexer_rope_style_or_layout_changes_the_choice() {
        let mut model = tiny();
        let toks = tokens(48); // top-k 8 of up to 48 positions
        let base = all_logits(&model, &toks, Forward::PREFILL);
        for swapped in [
            IndexRope {
                style: RopeStyle::Interleaved,
                rope_first: true,
            },
            IndexRope {
                style: RopeStyle::Neox,
                rope_first: false,
            },
        ] {
            model.index_rope = swapped;
            let other = all_logits(&model, &toks, Forward::PREFILL);
            assert_ne!(
                base, other,
                "{swapped:?} selected the same positions everywhere"
            );
        }
        // With every position selected the convention cannot matter.
        model.cfg.index_topk = 64;
        model.index_rope = IndexRope::V32;
        let dense_a = all_logits(&model, &toks, Forward::PREFILL);
        model.index_rope = IndexRope {
            style: RopeStyle::Interleaved,
            rope_first: false,
        };
        assert_eq!(dense_a, all_logits(&model, &toks, Forward::PREFILL));
    }
}
