//! `config.json` of a DeepSeek-V3.2 checkpoint in the Hugging Face layout.
//!
//! Field names are Hugging Face's. Every field has an explicit default: the published 671B model's
//! value, so a partial config means what it would mean to `transformers`. Fields this crate does
//! not use (`transformers_version`, `initializer_range`, ...) are kept in `extra` and written back
//! unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ModelError;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default = "d::model_type")]
    pub model_type: String,
    #[serde(default = "d::architectures")]
    pub architectures: Vec<String>,
    #[serde(default = "d::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "d::hidden_size")]
    pub hidden_size: usize,
    /// Width of the dense feed-forward layers (the first `first_k_dense_replace`).
    #[serde(default = "d::intermediate_size")]
    pub intermediate_size: usize,
    /// Width of one expert.
    #[serde(default = "d::moe_intermediate_size")]
    pub moe_intermediate_size: usize,
    #[serde(default = "d::num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d::first_k_dense_replace")]
    pub first_k_dense_replace: usize,
    #[serde(default = "d::num_attention_heads")]
    pub num_attention_heads: usize,
    /// DSA needs the query latent: the indexer reads it.
    #[serde(default = "d::q_lora_rank")]
    pub q_lora_rank: Option<usize>,
    #[serde(default = "d::kv_lora_rank")]
    pub kv_lora_rank: usize,
    #[serde(default = "d::qk_nope_head_dim")]
    pub qk_nope_head_dim: usize,
    #[serde(default = "d::qk_rope_head_dim")]
    pub qk_rope_head_dim: usize,
    #[serde(default = "d::v_head_dim")]
    pub v_head_dim: usize,
    #[serde(default = "d::index_n_heads")]
    pub index_n_heads: usize,
    #[serde(default = "d::index_head_dim")]
    pub index_head_dim: usize,
    #[serde(default = "d::index_topk")]
    pub index_topk: usize,
    #[serde(default = "d::n_routed_experts")]
    pub n_routed_experts: usize,
    #[serde(default = "d::n_shared_experts")]
    pub n_shared_experts: usize,
    #[serde(default = "d::num_experts_per_tok")]
    pub num_experts_per_tok: usize,
    #[serde(default = "d::n_group")]
    pub n_group: usize,
    #[serde(default = "d::topk_group")]
    pub topk_group: usize,
    #[serde(default = "d::scoring_func")]
    pub scoring_func: String,
    #[serde(default = "d::topk_method")]
    pub topk_method: String,
    #[serde(default = "d::routed_scaling_factor")]
    pub routed_scaling_factor: f64,
    #[serde(default = "d::yes")]
    pub norm_topk_prob: bool,
    #[serde(default = "d::hidden_act")]
    pub hidden_act: String,
    #[serde(default = "d::rms_norm_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "d::rope_theta")]
    pub rope_theta: f64,
    #[serde(default = "d::rope_scaling")]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default = "d::max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    /// Multi-token-prediction layers stored after the last layer (`model.layers.{n}`); the
    /// forward pass does not use them, so their tensors are skipped on load.
    #[serde(default)]
    pub num_nextn_predict_layers: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization_config: Option<Value>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// YaRN context extension, as in `rope_scaling` of the published config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    #[serde(rename = "type", alias = "rope_type")]
    pub kind: String,
    pub factor: f64,
    pub original_max_position_embeddings: usize,
    #[serde(default = "d::beta_fast")]
    pub beta_fast: f64,
    #[serde(default = "d::beta_slow")]
    pub beta_slow: f64,
    #[serde(default = "d::one")]
    pub mscale: f64,
    #[serde(default)]
    pub mscale_all_dim: f64,
}

mod d {
    use super::RopeScaling;
    pub fn model_type() -> String {
        "deepseek_v32".into()
    }
    pub fn architectures() -> Vec<String> {
        vec!["DeepseekV32ForCausalLM".into()]
    }
    pub fn vocab_size() -> usize {
        129_280
    }
    pub fn hidden_size() -> usize {
        7168
    }
    pub fn intermediate_size() -> usize {
        18_432
    }
    pub fn moe_intermediate_size() -> usize {
        2048
    }
    pub fn num_hidden_layers() -> usize {
        61
    }
    pub fn first_k_dense_replace() -> usize {
        3
    }
    pub fn num_attention_heads() -> usize {
        128
    }
    pub fn q_lora_rank() -> Option<usize> {
        Some(1536)
    }
    pub fn kv_lora_rank() -> usize {
        512
    }
    pub fn qk_nope_head_dim() -> usize {
        128
    }
    pub fn qk_rope_head_dim() -> usize {
        64
    }
    pub fn v_head_dim() -> usize {
        128
    }
    pub fn index_n_heads() -> usize {
        64
    }
    pub fn index_head_dim() -> usize {
        128
    }
    pub fn index_topk() -> usize {
        2048
    }
    pub fn n_routed_experts() -> usize {
        256
    }
    pub fn n_shared_experts() -> usize {
        1
    }
    pub fn num_experts_per_tok() -> usize {
        8
    }
    pub fn n_group() -> usize {
        8
    }
    pub fn topk_group() -> usize {
        4
    }
    pub fn scoring_func() -> String {
        "sigmoid".into()
    }
    pub fn topk_method() -> String {
        "noaux_tc".into()
    }
    pub fn routed_scaling_factor() -> f64 {
        2.5
    }
    pub fn yes() -> bool {
        true
    }
    pub fn hidden_act() -> String {
        "silu".into()
    }
    pub fn rms_norm_eps() -> f64 {
        1e-6
    }
    pub fn rope_theta() -> f64 {
        10_000.0
    }
    pub fn rope_scaling() -> Option<RopeScaling> {
        Some(RopeScaling {
            kind: "yarn".into(),
            factor: 40.0,
            original_max_position_embeddings: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: 1.0,
            mscale_all_dim: 1.0,
        })
    }
    pub fn max_position_embeddings() -> usize {
        163_840
    }
    pub fn beta_fast() -> f64 {
        32.0
    }
    pub fn beta_slow() -> f64 {
        1.0
    }
    pub fn one() -> f64 {
        1.0
    }
}

/// The two presets `envsynth model init` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// dsa.md §5.1: every structural feature at about 3.2M parameters. Selection is exercised
    /// (top-k 8 of contexts up to 128), YaRN is on (128 > 32), one dense layer then MoE layers.
    Tiny,
    /// FlashMLA-compatible attention shapes (d_qk 576, d_v 512, 64 heads, indexer 64 × 128,
    /// top-k 2048) on a narrow, two-layer body: the shapes the GPU kernels are built for.
    Small,
}

impl Preset {
    pub fn parse(name: &str) -> Result<Preset, ModelError> {
        match name {
            "tiny" => Ok(Preset::Tiny),
            "small" => Ok(Preset::Small),
            other => Err(ModelError::Config(format!(
                "unknown preset {other:?}; expected tiny or small"
            ))),
        }
    }

    pub fn config(self) -> Config {
        let base: Config = serde_json::from_value(serde_json::json!({}))
            .expect("an empty object takes every default");
        match self {
            Preset::Tiny => Config {
                vocab_size: 512,
                hidden_size: 256,
                intermediate_size: 512,
                moe_intermediate_size: 128,
                num_hidden_layers: 3,
                first_k_dense_replace: 1,
                num_attention_heads: 4,
                q_lora_rank: Some(128),
                kv_lora_rank: 128,
                qk_nope_head_dim: 32,
                qk_rope_head_dim: 16,
                v_head_dim: 32,
                index_n_heads: 4,
                index_head_dim: 128,
                index_topk: 8,
                n_routed_experts: 8,
                n_shared_experts: 1,
                num_experts_per_tok: 2,
                n_group: 2,
                topk_group: 1,
                rope_scaling: Some(RopeScaling {
                    kind: "yarn".into(),
                    factor: 4.0,
                    original_max_position_embeddings: 32,
                    beta_fast: 32.0,
                    beta_slow: 1.0,
                    mscale: 1.0,
                    mscale_all_dim: 1.0,
                }),
                max_position_embeddings: 128,
                bos_token_id: Some(0),
                eos_token_id: Some(1),
                ..base
            },
            Preset::Small => Config {
                vocab_size: 4096,
                hidden_size: 1024,
                intermediate_size: 2816,
                moe_intermediate_size: 512,
                num_hidden_layers: 2,
                first_k_dense_replace: 1,
                num_attention_heads: 64,
                q_lora_rank: Some(512),
                kv_lora_rank: 512,
                qk_nope_head_dim: 128,
                qk_rope_head_dim: 64,
                v_head_dim: 128,
                index_n_heads: 64,
                index_head_dim: 128,
                index_topk: 2048,
                n_routed_experts: 16,
                n_shared_experts: 1,
                num_experts_per_tok: 4,
                n_group: 4,
                topk_group: 2,
                rope_scaling: Some(RopeScaling {
                    kind: "yarn".into(),
                    factor: 32.0,
                    original_max_position_embeddings: 4096,
                    beta_fast: 32.0,
                    beta_slow: 1.0,
                    mscale: 1.0,
                    mscale_all_dim: 1.0,
                }),
                max_position_embeddings: 131_072,
                bos_token_id: Some(0),
                eos_token_id: Some(1),
                ..base
            },
        }
    }
}

impl Config {
    pub fn from_json(text: &str) -> Result<Config, ModelError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            ModelError::Config(format!("config.json: field {}: {}", e.path(), e.inner()))
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn q_lora(&self) -> usize {
        self.q_lora_rank.unwrap_or(0)
    }

    /// d_qk of MHA mode: nope + rope.
    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    pub fn is_moe_layer(&self, layer: usize) -> bool {
        layer >= self.first_k_dense_replace && self.n_routed_experts > 0
    }

    /// Checks that the forward pass can run this config and says which field is wrong.
    pub fn validate(&self) -> Result<(), ModelError> {
        let fail = |field: &str, why: String| Err(ModelError::Config(format!("{field}: {why}")));
        if self.model_type != "deepseek_v32" {
            return fail(
                "model_type",
                format!("{:?} is not deepseek_v32", self.model_type),
            );
        }
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("kv_lora_rank", self.kv_lora_rank),
            ("qk_nope_head_dim", self.qk_nope_head_dim),
            ("qk_rope_head_dim", self.qk_rope_head_dim),
            ("v_head_dim", self.v_head_dim),
            ("index_n_heads", self.index_n_heads),
            ("index_head_dim", self.index_head_dim),
            ("index_topk", self.index_topk),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (field, v) in positive {
            if v == 0 {
                return fail(field, "must be positive".into());
            }
        }
        match self.q_lora_rank {
            Some(r) if r > 0 => {}
            _ => {
                return fail(
                    "q_lora_rank",
                    "DSA needs a query latent (the indexer reads it)".into(),
                );
            }
        }
        if !self.qk_rope_head_dim.is_multiple_of(2) {
            return fail("qk_rope_head_dim", "must be even".into());
        }
        if !self.index_head_dim.is_power_of_two() || self.index_head_dim < self.qk_rope_head_dim {
            return fail(
                "index_head_dim",
                format!(
                    "{} must be a power of two (the Hadamard rotation) and at least qk_rope_head_dim {}",
                    self.index_head_dim, self.qk_rope_head_dim
                ),
            );
        }
        if self.hidden_act != "silu" {
            return fail("hidden_act", format!("{:?} is not silu", self.hidden_act));
        }
        if self.n_routed_experts > 0 && self.first_k_dense_replace < self.num_hidden_layers {
            if self.scoring_func != "sigmoid" {
                return fail(
                    "scoring_func",
                    format!("{:?} is not sigmoid", self.scoring_func),
                );
            }
            if self.topk_method != "noaux_tc" {
                return fail(
                    "topk_method",
                    format!("{:?} is not noaux_tc", self.topk_method),
                );
            }
            if self.moe_intermediate_size == 0 {
                return fail("moe_intermediate_size", "must be positive".into());
            }
            if self.n_group == 0 || !self.n_routed_experts.is_multiple_of(self.n_group) {
                return fail(
                    "n_group",
                    format!(
                        "{} must divide n_routed_experts {}",
                        self.n_group, self.n_routed_experts
                    ),
                );
            }
            if self.topk_group == 0 || self.topk_group > self.n_group {
                return fail(
                    "topk_group",
                    format!(
                        "{} must be in 1..=n_group {}",
                        self.topk_group, self.n_group
                    ),
                );
            }
            let reachable = self.topk_group * (self.n_routed_experts / self.n_group);
            if self.num_experts_per_tok == 0 || self.num_experts_per_tok > reachable {
                return fail(
                    "num_experts_per_tok",
                    format!(
                        "{} must be in 1..={reachable} (experts in the kept groups)",
                        self.num_experts_per_tok
                    ),
                );
            }
            if self.n_routed_experts / self.n_group < 2 {
                return fail(
                    "n_group",
                    "each group needs at least two experts (a group scores by its top two)".into(),
                );
            }
        }
        if let Some(s) = &self.rope_scaling {
            if s.kind != "yarn" {
                return fail("rope_scaling.type", format!("{:?} is not yarn", s.kind));
            }
            if s.factor.is_nan() || s.factor < 1.0 {
                return fail("rope_scaling.factor", format!("{} must be ≥ 1", s.factor));
            }
            if s.original_max_position_embeddings == 0 {
                return fail(
                    "rope_scaling.original_max_position_embeddings",
                    "must be positive".into(),
                );
            }
        }
        Ok(())
    }

    /// Softmax scale of MLA: d_qk^-0.5, times mscale² under YaRN.
    pub fn softmax_scale(&self) -> f32 {
        let base = (self.qk_head_dim() as f64).powf(-0.5);
        let m = match &self.rope_scaling {
            Some(s) => yarn_mscale(s.factor, s.mscale_all_dim),
            None => 1.0,
        };
        (base * m * m) as f32
    }
}

/// YaRN's attention temperature: 0.1·m·ln(s) + 1 for s > 1 (and 1 when m is 0).
pub fn yarn_mscale(factor: f64, m: f64) -> f64 {
    if factor <= 1.0 || m == 0.0 {
        1.0
    } else {
        0.1 * m * factor.ln() + 1.0
    }
}
