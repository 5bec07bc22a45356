//! Random-weight checkpoints in the Hugging Face layout (`envsynth model init`).

use std::path::Path;

use rand::Rng;

use crate::ModelError;
use crate::checkpoint::{NamedTensor, StoreAs, serialize};
use crate::config::Config;

/// How a tensor is initialized (and whether FP8 checkpoints quantize it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Init {
    /// Uniform with standard deviation fan_in^-0.5; a projection (FP8-eligible).
    Projection,
    /// Like a projection but kept in bf16 in FP8 checkpoints (router, indexer head weights,
    /// LM head), as DeepSeek's checkpoints do.
    Dense,
    /// Uniform in ±1 (token embeddings).
    Embedding,
    /// 1 ± 0.1 (norm weights).
    NormWeight,
    /// ±0.1 (norm biases, the router's correction bias).
    Offset,
}

/// Every tensor of a model with `cfg`, by its published name, in file order.
fn layout(cfg: &Config) -> Vec<(String, Vec<usize>, Init)> {
    use Init::*;
    let d = cfg.hidden_size;
    let h = cfg.num_attention_heads;
    let mut v: Vec<(String, Vec<usize>, Init)> = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, init: Init| v.push((name, shape, init));
    push(
        "model.embed_tokens.weight".into(),
        vec![cfg.vocab_size, d],
        Embedding,
    );
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        let a = format!("{p}.self_attn");
        push(format!("{p}.input_layernorm.weight"), vec![d], NormWeight);
        push(
            format!("{a}.q_a_proj.weight"),
            vec![cfg.q_lora(), d],
            Projection,
        );
        push(
            format!("{a}.q_a_layernorm.weight"),
            vec![cfg.q_lora()],
            NormWeight,
        );
        push(
            format!("{a}.q_b_proj.weight"),
            vec![h * cfg.qk_head_dim(), cfg.q_lora()],
            Projection,
        );
        push(
            format!("{a}.kv_a_proj_with_mqa.weight"),
            vec![cfg.kv_lora_rank + cfg.qk_rope_head_dim, d],
            Projection,
        );
        push(
            format!("{a}.kv_a_layernorm.weight"),
            vec![cfg.kv_lora_rank],
            NormWeight,
        );
        push(
            format!("{a}.kv_b_proj.weight"),
            vec![
                h * (cfg.qk_nope_head_dim + cfg.v_head_dim),
                cfg.kv_lora_rank,
            ],
            Projection,
        );
        push(
            format!("{a}.o_proj.weight"),
            vec![d, h * cfg.v_head_dim],
            Projection,
        );
        push(
            format!("{a}.indexer.wq_b.weight"),
            vec![cfg.index_n_heads * cfg.index_head_dim, cfg.q_lora()],
            Projection,
        );
        push(
            format!("{a}.indexer.wk.weight"),
            vec![cfg.index_head_dim, d],
            Projection,
        );
        push(
            format!("{a}.indexer.k_norm.weight"),
            vec![cfg.index_head_dim],
            NormWeight,
        );
        push(
            format!("{a}.indexer.k_norm.bias"),
            vec![cfg.index_head_dim],
            Offset,
        );
        push(
            format!("{a}.indexer.weights_proj.weight"),
            vec![cfg.index_n_heads, d],
            Dense,
        );
        push(
            format!("{p}.post_attention_layernorm.weight"),
            vec![d],
            NormWeight,
        );
        let mlp = |push: &mut dyn FnMut(String, Vec<usize>, Init), m: &str, inter: usize| {
            push(format!("{m}.gate_proj.weight"), vec![inter, d], Projection);
            push(format!("{m}.up_proj.weight"), vec![inter, d], Projection);
            push(format!("{m}.down_proj.weight"), vec![d, inter], Projection);
        };
        if cfg.is_moe_layer(l) {
            let m = format!("{p}.mlp");
            push(
                format!("{m}.gate.weight"),
                vec![cfg.n_routed_experts, d],
                Dense,
            );
            push(
                format!("{m}.gate.e_score_correction_bias"),
                vec![cfg.n_routed_experts],
                Offset,
            );
            for e in 0..cfg.n_routed_experts {
                mlp(
                    &mut push,
                    &format!("{m}.experts.{e}"),
                    cfg.moe_intermediate_size,
                );
            }
            if cfg.n_shared_experts > 0 {
                mlp(
                    &mut push,
                    &format!("{m}.shared_experts"),
                    cfg.moe_intermediate_size * cfg.n_shared_experts,
                );
            }
        } else {
            mlp(&mut push, &format!("{p}.mlp"), cfg.intermediate_size);
        }
    }
    push("model.norm.weight".into(), vec![d], NormWeight);
    if !cfg.tie_word_embeddings {
        push("lm_head.weight".into(), vec![cfg.vocab_size, d], Dense);
    }
    v
}

/// Random weights for `cfg`; each tensor has its own ChaCha8 stream keyed by (seed, name).
pub fn random_tensors(cfg: &Config, seed: u64) -> Vec<NamedTensor> {
    layout(cfg)
        .into_iter()
        .map(|(name, shape, init)| {
            let mut rng =
                envsynth_core::seed::task_rng("envsynth-policy/init", "1", seed, 0, 0, &name);
            let n: usize = shape.iter().product();
            let mut uniform = |half_width: f32| (rng.random::<f32>() * 2.0 - 1.0) * half_width;
            let data: Vec<f32> = match init {
                Init::Projection | Init::Dense => {
                    let a = (3.0 / shape[1] as f32).sqrt();
                    (0..n).map(|_| uniform(a)).collect()
                }
                Init::Embedding => (0..n).map(|_| uniform(1.0)).collect(),
                Init::NormWeight => (0..n).map(|_| 1.0 + uniform(0.1)).collect(),
                Init::Offset => (0..n).map(|_| uniform(0.1)).collect(),
            };
            NamedTensor {
                name,
                shape,
                data,
                projection: init == Init::Projection,
            }
        })
        .collect()
}

/// Writes config.json, model.safetensors, tokenizer.json and tokenizer_config.json to `dir`,
/// each atomically.
pub fn write_checkpoint(
    dir: &Path,
    cfg: &Config,
    tensors: &[NamedTensor],
    store: StoreAs,
    tokenizer_json: &str,
) -> Result<(), ModelError> {
    cfg.validate()?;
    let tokenizer: tokenizers::Tokenizer = tokenizer_json
        .parse()
        .map_err(|e| ModelError::Tokenizer(format!("{e}")))?;
    let size = tokenizer.get_vocab_size(true);
    if size > cfg.vocab_size {
        return Err(ModelError::Tokenizer(format!(
            "the tokenizer has {size} tokens; the model's vocab_size is {}",
            cfg.vocab_size
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let mut cfg = cfg.clone();
    cfg.extra
        .insert("torch_dtype".into(), store.torch_dtype().into());
    cfg.quantization_config = (store == StoreAs::Fp8).then(|| {
        serde_json::json!({
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "quant_method": "fp8",
            "scale_fmt": "ue8m0",
            "weight_block_size": [crate::checkpoint::FP8_BLOCK, crate::checkpoint::FP8_BLOCK],
        })
    });
    let special = |i: usize| crate::tokenizer::SPECIAL_TOKENS[i];
    let tokenizer_config = serde_json::json!({
        "add_bos_token": false,
        "add_eos_token": false,
        "bos_token": special(0),
        "eos_token": special(1),
        "model_max_length": cfg.max_position_embeddings,
        "tokenizer_class": "PreTrainedTokenizerFast",
    });
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        envsynth_core::files::atomic_write(&path, bytes).map_err(|e| ModelError::io(&path, e))
    };
    let pretty = |v: &serde_json::Value| {
        let mut s = serde_json::to_vec_pretty(v).expect("JSON values serialize");
        s.push(b'\n');
        s
    };
    // Weights first, config last: a folder with a config.json is a complete checkpoint.
    write("model.safetensors", &serialize(tensors, store)?)?;
    write("tokenizer.json", tokenizer_json.as_bytes())?;
    write("tokenizer_config.json", &pretty(&tokenizer_config))?;
    write(
        "config.json",
        &pretty(&serde_json::to_value(&cfg).map_err(|e| ModelError::Config(e.to_string()))?),
    )?;
    Ok(())
}
