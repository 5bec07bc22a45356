//! The CPU reference model: mode equivalences, sparse vs dense, caches, batching, sampling,
//! checkpoint loading and its refusals, and the independent NumPy reference.

use std::path::Path;

use envsynth_policy::checkpoint::{NamedTensor, StoreAs, Tensors, e4m3_to_f32, f32_to_e4m3};
use envsynth_policy::init::{random_tensors, write_checkpoint};
use envsynth_policy::model::index_scores;
use envsynth_policy::ops::hadamard;
use envsynth_policy::{
    Cache, Config, Forward, Logits, Model, Preset, Sampler, SamplingParams, Segment, Selection,
    Stop, generate, generate_batch, tokenizer,
};

fn tiny_config() -> Config {
    Preset::Tiny.config()
}

fn tiny_model(seed: u64) -> Model {
    let cfg = tiny_config();
    Model::from_tensors(cfg.clone(), Tensors::from_named(random_tensors(&cfg, seed)))
        .expect("builds")
}

fn tokens(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 131 + 7 + salt * 17) % 512)
        .collect()
}

fn corpus() -> Vec<String> {
    (0..40)
        .map(|i| {
            format!(
                "Plan day {i}: visit the museum, dine at restaurant {i}, hotel under {} CNY.",
                300 + i * 10
            )
        })
        .collect()
}

fn write_tiny(dir: &Path, tensors: &[NamedTensor], store: StoreAs) {
    let tok = tokenizer::train_bpe(&corpus(), 300).expect("train");
    write_checkpoint(dir, &tiny_config(), tensors, store, &tok).expect("write");
}

fn logits_all(model: &Model, toks: &[u32], how: Forward) -> Vec<Vec<f32>> {
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

/// max |a - b| / max |b| over a whole row.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

#[test]
fn prefill_in_mha_mode_equals_decode_in_absorbed_mode_token_by_token() {
    let model = tiny_model(1);
    let toks = tokens(64, 0); // top-k 8 < context from position 8 on
    let prefill = logits_all(
        &model,
        &toks,
        Forward {
            mode: envsynth_policy::AttentionMode::Mha,
            ..Forward::PREFILL
        },
    );
    let mut cache = Cache::new(&model);
    for (i, &t) in toks.iter().enumerate() {
        let step = model.decode(&mut cache, t).expect("decode");
        let e = rel_err(&step, &prefill[i]);
        assert!(e < 1e-4, "position {i}: relative error {e}");
    }
    assert_eq!(cache.len(), 64);
    // Chunked prefill (a second MHA call continuing the cache) agrees as well.
    let mut cache = Cache::new(&model);
    model.prefill(&mut cache, &toks[..40]).expect("prefill");
    let rest = model
        .forward(
            &mut [Segment {
                cache: &mut cache,
                tokens: &toks[40..],
            }],
            Forward {
                logits: Logits::All,
                ..Forward::PREFILL
            },
        )
        .expect("continue");
    for (i, row) in rest.iter().enumerate() {
        assert!(
            rel_err(row, &prefill[40 + i]) < 1e-4,
            "chunked position {}",
            40 + i
        );
    }
}

#[test]
fn sparse_attention_equals_dense_when_top_k_covers_the_context() {
    let mut model = tiny_model(2);
    let toks = tokens(48, 1);
    let dense = logits_all(
        &model,
        &toks,
        Forward {
            selection: Selection::Dense,
            ..Forward::PREFILL
        },
    );
    let sparse = logits_all(&model, &toks, Forward::PREFILL);
    assert_ne!(
        dense, sparse,
        "top-k 8 of 48 must differ from dense attention"
    );
    // Exactly equal up to position 8, where top-k still covers everything.
    assert_eq!(dense[..8], sparse[..8]);
    model.cfg.index_topk = 48;
    for mode in [
        envsynth_policy::AttentionMode::Mha,
        envsynth_policy::AttentionMode::Absorbed,
    ] {
        let sparse = logits_all(
            &model,
            &toks,
            Forward {
                mode,
                ..Forward::PREFILL
            },
        );
        let dense = logits_all(
            &model,
            &toks,
            Forward {
                mode,
                selection: Selection::Dense,
                ..Forward::PREFILL
            },
        );
        assert_eq!(sparse, dense, "{mode:?}");
    }
}

#[test]
fn hadamard_on_both_q_and_k_leaves_indexer_scores_unchanged() {
    let d = 128;
    let val = |i: usize, s: usize| (((i * 2654435761 + s * 40503) % 1000) as f32 / 500.0) - 1.0;
    let q: Vec<f32> = (0..4 * d).map(|i| val(i, 1)).collect();
    let keys: Vec<f32> = (0..10 * d).map(|i| val(i, 2)).collect();
    let w = vec![0.3, -0.2, 0.5, 0.1];
    let plain = index_scores(&q, &w, &keys, d);
    let rotate = |v: &[f32]| {
        let mut v = v.to_vec();
        v.chunks_exact_mut(d).for_each(hadamard);
        v
    };
    let both = index_scores(&rotate(&q), &w, &rotate(&keys), d);
    for (a, b) in plain.iter().zip(&both) {
        assert!((a - b).abs() < 1e-4 * (1.0 + a.abs()), "{a} vs {b}");
    }
    let only_q = index_scores(&rotate(&q), &w, &keys, d);
    assert!(
        plain.iter().zip(&only_q).any(|(a, b)| (a - b).abs() > 1e-2),
        "rotating q alone must change scores"
    );
}

#[test]
fn batched_decode_equals_one_sequence_at_a_time() {
    let model = tiny_model(4);
    let prompts: Vec<Vec<u32>> = (0..3).map(|s| tokens(10 + 7 * s as usize, s)).collect();
    let mut caches: Vec<Cache> = prompts.iter().map(|_| Cache::new(&model)).collect();
    let mut alone: Vec<Cache> = prompts.iter().map(|_| Cache::new(&model)).collect();
    for ((p, c), a) in prompts.iter().zip(&mut caches).zip(&mut alone) {
        model.prefill(c, p).expect("prefill");
        model.prefill(a, p).expect("prefill");
    }
    for step in 0..5u32 {
        let next = [3 + step, 40 + step, 90 + step];
        let mut batch: Vec<(&mut Cache, u32)> = caches.iter_mut().zip(next).collect();
        let together = model.decode_batch(&mut batch).expect("batch");
        for (i, a) in alone.iter_mut().enumerate() {
            assert_eq!(
                together[i],
                model.decode(a, next[i]).expect("decode"),
                "sequence {i} step {step}"
            );
        }
    }
    assert!(caches[0].bytes() > 0);
}

#[test]
fn seeded_sampling_and_generation_are_reproducible() {
    let model = tiny_model(5);
    let prompt = tokens(12, 2);
    let stop = Stop {
        eos: vec![1],
        max_new_tokens: 20,
        strings: vec![],
    };
    let run = |seed| {
        let mut s = Sampler::new(
            SamplingParams {
                temperature: 1.0,
                top_p: 0.95,
                top_k: 50,
            },
            seed,
        )
        .expect("valid");
        generate(&model, &prompt, &mut s, &stop, |_| String::new()).expect("generate")
    };
    let a = run(11);
    assert_eq!(a, run(11));
    assert_ne!(a.tokens, run(12).tokens);
    assert!(!a.tokens.is_empty() && a.tokens.len() <= 20);
    // A stop string ends generation as soon as the decoded text contains it.
    let text = |t: &[u32]| t.iter().map(|x| format!("<{x}>")).collect::<String>();
    let marker = format!("<{}>", a.tokens[2]);
    let first = a
        .tokens
        .iter()
        .position(|t| format!("<{t}>") == marker)
        .expect("present");
    let mut s = Sampler::new(
        SamplingParams {
            temperature: 1.0,
            top_p: 0.95,
            top_k: 50,
        },
        11,
    )
    .expect("valid");
    let stopped = generate(
        &model,
        &prompt,
        &mut s,
        &Stop {
            strings: vec![marker],
            ..stop.clone()
        },
        text,
    )
    .expect("generate");
    assert_eq!(stopped.finish, envsynth_policy::Finish::StopString);
    assert_eq!(stopped.tokens, a.tokens[..=first]);
    // Generating several prompts together gives each the tokens it gets alone.
    let prompts = vec![prompt.clone(), tokens(20, 3)];
    let params = SamplingParams::default();
    let mut samplers = vec![
        Sampler::new(params, 1).expect("valid"),
        Sampler::new(params, 2).expect("valid"),
    ];
    let together =
        generate_batch(&model, &prompts, &mut samplers, &stop, |_| String::new()).expect("batch");
    for (i, p) in prompts.iter().enumerate() {
        let mut s = Sampler::new(params, 1 + i as u64).expect("valid");
        assert_eq!(
            together[i],
            generate(&model, p, &mut s, &stop, |_| String::new()).expect("alone")
        );
    }
    // The context limit ends generation instead of failing.
    let long = tokens(126, 4);
    let mut s = Sampler::new(params, 3).expect("valid");
    let g = generate(
        &model,
        &long,
        &mut s,
        &Stop {
            eos: vec![],
            max_new_tokens: 50,
            strings: vec![],
        },
        |_| String::new(),
    )
    .expect("generate");
    assert_eq!(g.finish, envsynth_policy::Finish::Context);
    assert_eq!(
        long.len() + g.tokens.len(),
        129,
        "fills positions up to 128, then one sampled token"
    );
}

/// What a checkpoint stored as `store` holds, computed here independently of the writer:
/// bf16 rounding, or e4m3 with a power-of-two scale per 128 × 128 block for projections.
fn as_stored(t: &NamedTensor, store: StoreAs) -> Vec<f32> {
    let bf16 = |v: f32| half::bf16::from_f32(v).to_f32();
    match store {
        StoreAs::F32 => t.data.clone(),
        StoreAs::Fp8 if t.projection => {
            let (out, inp) = (t.shape[0], t.shape[1]);
            let mut w = vec![0.0; out * inp];
            for bo in (0..out).step_by(128) {
                for bi in (0..inp).step_by(128) {
                    let cells = || {
                        (bo..(bo + 128).min(out))
                            .flat_map(move |o| (bi..(bi + 128).min(inp)).map(move |i| o * inp + i))
                    };
                    let amax = cells().fold(0.0f32, |m, c| m.max(t.data[c].abs()));
                    let scale = 2f32.powi((amax.max(1e-4) / 448.0).log2().ceil() as i32);
                    for c in cells() {
                        w[c] = e4m3_to_f32(f32_to_e4m3(t.data[c] / scale)) * scale;
                    }
                }
            }
            w
        }
        StoreAs::Bf16 | StoreAs::Fp8 => t.data.iter().map(|&v| bf16(v)).collect(),
    }
}

#[test]
fn checkpoints_round_trip_in_f32_bf16_and_fp8() {
    let cfg = tiny_config();
    let tensors = random_tensors(&cfg, 6);
    let toks = tokens(24, 5);
    let mut seen = Vec::new();
    for store in [StoreAs::F32, StoreAs::Bf16, StoreAs::Fp8] {
        let dir = tempfile::tempdir().expect("tmp");
        write_tiny(dir.path(), &tensors, store);
        let loaded = logits_all(
            &Model::load(dir.path()).expect("loads"),
            &toks,
            Forward::PREFILL,
        );
        let expected: Vec<NamedTensor> = tensors
            .iter()
            .map(|t| NamedTensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                data: as_stored(t, store),
                projection: t.projection,
            })
            .collect();
        let built =
            Model::from_tensors(cfg.clone(), Tensors::from_named(expected)).expect("builds");
        assert_eq!(
            loaded,
            logits_all(&built, &toks, Forward::PREFILL),
            "{store:?}"
        );
        if store == StoreAs::Fp8 {
            let config = std::fs::read_to_string(dir.path().join("config.json")).expect("config");
            assert!(config.contains("\"quant_method\": \"fp8\""), "{config}");
        }
        seen.push(loaded);
    }
    assert!(
        seen[0] != seen[1] && seen[1] != seen[2],
        "each storage changes the weights"
    );
}

fn load_err(dir: &Path) -> String {
    match Model::load(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn loading_refuses_missing_unknown_and_misshaped_tensors() {
    let cfg = tiny_config();
    let base = || random_tensors(&cfg, 7);

    let dir = tempfile::tempdir().expect("tmp");
    let missing: Vec<NamedTensor> = base()
        .into_iter()
        .filter(|t| t.name != "model.layers.1.self_attn.indexer.wk.weight")
        .collect();
    write_tiny(dir.path(), &missing, StoreAs::Bf16);
    let e = load_err(dir.path());
    assert!(
        e.contains("missing tensor model.layers.1.self_attn.indexer.wk.weight"),
        "{e}"
    );

    let dir = tempfile::tempdir().expect("tmp");
    let mut extra = base();
    extra.push(NamedTensor {
        name: "model.layers.0.self_attn.rotary_emb.inv_freq".into(),
        shape: vec![8],
        data: vec![0.0; 8],
        projection: false,
    });
    write_tiny(dir.path(), &extra, StoreAs::Bf16);
    let e = load_err(dir.path());
    assert!(
        e.contains("unknown tensor model.layers.0.self_attn.rotary_emb.inv_freq"),
        "{e}"
    );

    let dir = tempfile::tempdir().expect("tmp");
    let mut shaped = base();
    let t = shaped
        .iter_mut()
        .find(|t| t.name == "model.layers.2.mlp.experts.3.up_proj.weight")
        .expect("exists");
    t.shape = vec![256, 128];
    write_tiny(dir.path(), &shaped, StoreAs::Bf16);
    let e = load_err(dir.path());
    assert!(e.contains("model.layers.2.mlp.experts.3.up_proj.weight has shape [256, 128]; config.json needs [128, 256]"), "{e}");

    // An FP8 weight without its block scales.
    let dir = tempfile::tempdir().expect("tmp");
    write_tiny(dir.path(), &base(), StoreAs::Fp8);
    let bytes = std::fs::read(dir.path().join("model.safetensors")).expect("read");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse");
    let kept: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != "model.layers.0.self_attn.o_proj.weight_scale_inv")
        .collect();
    let rewritten = safetensors::serialize(kept, None).expect("serialize");
    std::fs::write(dir.path().join("model.safetensors"), rewritten).expect("write");
    let e = load_err(dir.path());
    assert!(
        e.contains("missing tensor model.layers.0.self_attn.o_proj.weight_scale_inv"),
        "{e}"
    );

    // The multi-token-prediction layer after the last one is skipped, as published checkpoints need.
    let dir = tempfile::tempdir().expect("tmp");
    let mut mtp_cfg = cfg.clone();
    mtp_cfg.num_nextn_predict_layers = 1;
    let mut with_mtp = base();
    with_mtp.push(NamedTensor {
        name: "model.layers.3.eh_proj.weight".into(),
        shape: vec![256, 512],
        data: vec![0.0; 256 * 512],
        projection: true,
    });
    let tok = tokenizer::train_bpe(&corpus(), 300).expect("train");
    write_checkpoint(dir.path(), &mtp_cfg, &with_mtp, StoreAs::Bf16, &tok).expect("write");
    Model::load(dir.path()).expect("MTP tensors are skipped");
}

#[test]
fn bad_configs_name_the_field() {
    let dir = tempfile::tempdir().expect("tmp");
    write_tiny(
        dir.path(),
        &random_tensors(&tiny_config(), 8),
        StoreAs::Bf16,
    );
    let path = dir.path().join("config.json");
    let good: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
    for (field, value, expect) in [
        ("model_type", serde_json::json!("deepseek_v3"), "model_type"),
        ("n_group", serde_json::json!(3), "n_group"),
        ("index_head_dim", serde_json::json!(96), "index_head_dim"),
        ("q_lora_rank", serde_json::Value::Null, "q_lora_rank"),
        ("hidden_size", serde_json::json!("wide"), "hidden_size"),
    ] {
        let mut bad = good.clone();
        bad[field] = value;
        std::fs::write(&path, serde_json::to_vec(&bad).expect("json")).expect("write");
        let e = load_err(dir.path());
        assert!(e.contains(expect), "{field}: {e}");
    }
    std::fs::remove_file(&path).expect("rm");
    assert!(load_err(dir.path()).contains("config.json"));
}

#[test]
fn tokenizer_training_is_deterministic_and_round_trips() {
    let a = tokenizer::train_bpe(&corpus(), 320).expect("train");
    assert_eq!(a, tokenizer::train_bpe(&corpus(), 320).expect("train"));
    let tok: tokenizers::Tokenizer = a.parse().expect("loads");
    assert_eq!(tok.token_to_id(envsynth_prompts::deepseek::BOS), Some(0));
    assert_eq!(tok.token_to_id(envsynth_prompts::deepseek::EOS), Some(1));
    let text = format!(
        "{}<｜User｜>Plan day 3: visit the museum 東京.<｜Assistant｜></think>ok{}",
        envsynth_prompts::deepseek::BOS,
        envsynth_prompts::deepseek::EOS
    );
    let ids = tokenizer::encode(&tok, &text).expect("encode");
    assert_eq!(ids[0], 0);
    assert_eq!(*ids.last().expect("non-empty"), 1);
    assert!(
        ids.len() < text.len() / 2,
        "merges shorten the text: {} ids",
        ids.len()
    );
    assert_eq!(tokenizer::decode(&tok, &ids).expect("decode"), text);
    assert!(tokenizer::train_bpe(&corpus(), 100).is_err());
}

/// The independent reference: a NumPy forward written from dsa.md reads the same checkpoint
/// files and must agree with these logits to 1e-4 relative error (tests/dsa_reference.py).
#[test]
fn numpy_reference_agrees_with_the_rust_forward() {
    for store in [StoreAs::Bf16, StoreAs::Fp8] {
        let dir = tempfile::tempdir().expect("tmp");
        write_tiny(dir.path(), &random_tensors(&tiny_config(), 9), store);
        let model = Model::load(dir.path()).expect("loads");
        let toks = tokens(40, 6);
        let prefill = logits_all(&model, &toks, Forward::PREFILL);
        let mut cache = Cache::new(&model);
        let decode: Vec<Vec<f32>> = toks
            .iter()
            .map(|&t| model.decode(&mut cache, t).expect("decode"))
            .collect();
        let out = dir.path().join("rust_logits.json");
        let body = serde_json::json!({"tokens": toks, "prefill": prefill, "decode": decode});
        std::fs::write(&out, serde_json::to_vec(&body).expect("json")).expect("write");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/dsa_reference.py");
        let run = std::process::Command::new("python3")
            .arg(&script)
            .arg(dir.path())
            .arg(&out)
            .output()
            .expect("python3 runs (CI installs numpy from .ci/requirements.txt)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(
            run.status.success(),
            "{store:?}: NumPy reference disagrees:\n{text}"
        );
        assert!(text.contains("max relative error"), "{text}");
        eprintln!("{store:?}:\n{text}");
    }
}

/// Continuous batching: concurrent requests (more than the batch holds, of different lengths,
/// joining while others decode) get exactly the tokens each gets alone.
#[test]
fn continuous_batching_gives_each_request_its_own_tokens() {
    let model = std::sync::Arc::new(tiny_model(10));
    let batcher = envsynth_policy::Batcher::start(
        model.clone(),
        std::sync::Arc::new(|_: &[u32]| String::new()),
        3,
    );
    let stop = |n: usize| Stop {
        eos: vec![1],
        max_new_tokens: n,
        strings: vec![],
    };
    let params = SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        top_k: 40,
    };
    let jobs: Vec<(Vec<u32>, u64, usize)> = (0..7)
        .map(|i| (tokens(5 + 9 * i, i as u32), 100 + i as u64, 4 + 3 * i))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let together: Vec<envsynth_policy::Generation> = rt.block_on(async {
        let handles: Vec<_> = jobs
            .iter()
            .cloned()
            .map(|(prompt, seed, n)| {
                let b = batcher.clone();
                tokio::spawn(async move {
                    b.generate(prompt, Sampler::new(params, seed).expect("valid"), stop(n))
                        .await
                })
            })
            .collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.expect("task").expect("generation"));
        }
        out
    });
    for ((prompt, seed, n), got) in jobs.iter().zip(&together) {
        let mut s = Sampler::new(params, *seed).expect("valid");
        let alone = generate(&model, prompt, &mut s, &stop(*n), |_| String::new()).expect("alone");
        assert_eq!(got, &alone, "prompt of {} tokens", prompt.len());
    }
    // A request that cannot start is answered with the reason, and the batcher keeps serving.
    let too_long = tokens(200, 9);
    let e = rt
        .block_on(batcher.generate(too_long, Sampler::new(params, 1).expect("valid"), stop(3)))
        .expect_err("longer than the context");
    assert!(e.to_string().contains("max_position_embeddings"), "{e}");
    let again = rt.block_on(batcher.generate(
        tokens(6, 1),
        Sampler::new(params, 5).expect("valid"),
        stop(3),
    ));
    assert!(again.is_ok());
}

/// Across turns the local policy continues its own tokens: the second turn's prompt is the
/// first turn's prompt and completion as generated (closed by EOS when cut short), then the
/// tokens of the template's text after the reply, even though the reply's text, parsed and
/// rendered again, would not tokenize to what the model wrote. A prefix the conversation does
/// not begin with falls back to tokenizing the whole conversation.
#[test]
fn the_local_policy_continues_its_own_tokens_across_turns() {
    use envsynth_core::chat::{ChatMessage, ChatRequest, TokenPrefix, WireFunction, WireToolCall};
    use envsynth_policy::LocalPolicy;
    use envsynth_policy::local::LocalOptions;
    use envsynth_prompts::deepseek::{DeepSeekV32, EOS};
    use envsynth_rollout::Policy;

    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = tiny_config();
    cfg.max_position_embeddings = 1024;
    let tok = tokenizer::train_bpe(&corpus(), 300).expect("train");
    write_checkpoint(
        dir.path(),
        &cfg,
        &random_tensors(&cfg, 12),
        StoreAs::Bf16,
        &tok,
    )
    .expect("write");
    let tok: tokenizers::Tokenizer = tok.parse().expect("loads");
    let eos = tok.token_to_id(EOS).expect("EOS");
    let policy = LocalPolicy::load(
        dir.path(),
        LocalOptions {
            max_new_tokens: 6,
            ..LocalOptions::default()
        },
    )
    .expect("loads");
    let chat = DeepSeekV32::new().expect("template");
    let render = |m: &[ChatMessage]| chat.render(m, &[], false).expect("renders");
    let encode = |text: &str| tokenizer::encode(&tok, text).expect("encodes");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let complete = |messages: &[ChatMessage], prefix: Option<TokenPrefix>| {
        rt.block_on(policy.complete(&ChatRequest {
            model: "local".into(),
            messages: messages.to_vec(),
            tools: vec![],
            seed: Some(4),
            temperature: None,
            max_tokens: None,
            prefix: prefix.map(std::sync::Arc::new),
        }))
        .expect("completes")
    };

    let mut messages = vec![
        ChatMessage::text("system", "Plan day 1."),
        ChatMessage::text("user", "Visit the museum, dine at restaurant 3."),
    ];
    let first = complete(&messages, None);
    let t1 = first
        .tokens
        .clone()
        .expect("the local policy reports its tokens");
    assert_eq!(t1.prompt_ids, encode(&render(&messages)));
    assert!(!t1.completion_ids.is_empty() && t1.completion_ids.len() <= 6);
    assert_eq!(t1.completion_logprobs.len(), t1.completion_ids.len());
    assert!(
        t1.completion_logprobs
            .iter()
            .all(|l| l.is_finite() && *l <= 0.0),
        "{:?}",
        t1.completion_logprobs
    );
    assert_eq!(
        first.usage.completion_tokens,
        t1.completion_ids.len() as u64
    );

    // The reply as the conversation keeps it: parsed, and here given a tool call, so that
    // rendering it again cannot give back the generated tokens.
    let mut reply = first.message.clone();
    reply.tool_calls = vec![WireToolCall {
        id: "call_0".into(),
        kind: "function".into(),
        function: WireFunction {
            name: "search".into(),
            arguments: "{\"city\": \"Hangzhou\"}".into(),
        },
    }];
    messages.push(reply);
    let covered = messages.len();
    messages.push(ChatMessage {
        role: "tool".into(),
        content: Some("{\"status\":\"ok\"}".into()),
        tool_call_id: Some("call_0".into()),
        ..ChatMessage::default()
    });
    let mut ids = t1.prompt_ids.clone();
    ids.extend(&t1.completion_ids);
    let second = complete(
        &messages,
        Some(TokenPrefix {
            ids: ids.clone(),
            messages: covered,
            continuation: None,
        }),
    );
    let t2 = second.tokens.expect("tokens");
    let whole = render(&messages);
    let rest = whole
        .strip_prefix(render(&messages[..covered]).as_str())
        .expect("the template renders a conversation's beginning as its prefix");
    let mut want = ids.clone();
    if want.last() != Some(&eos) {
        want.push(eos);
    }
    want.extend(encode(rest));
    assert_eq!(t2.prompt_ids, want);
    assert_ne!(
        t2.prompt_ids,
        encode(&whole),
        "re-tokenizing the conversation would have changed the first turn's tokens"
    );
    assert_eq!(second.usage.prompt_tokens, want.len() as u64);
    // With the first turn's continuation the prompt is the same; its cache is continued
    // (batch::tests counts what is prefilled), and the reply holds the next continuation.
    let resumed = complete(
        &messages,
        Some(TokenPrefix {
            ids: ids.clone(),
            messages: covered,
            continuation: t1.continuation.clone(),
        }),
    );
    let t2k = resumed.tokens.expect("tokens");
    assert_eq!(t2k.prompt_ids, want);
    assert!(t1.continuation.is_some() && t2k.continuation.is_some());
    assert!(
        t2k.completion_logprobs
            .iter()
            .all(|l| l.is_finite() && *l <= 0.0)
    );

    // A prefix that does not cover the conversation's beginning (its last covered message is
    // not a reply) is not continued: the whole conversation is tokenized.
    let third = complete(
        &messages,
        Some(TokenPrefix {
            ids,
            messages: covered + 1,
            continuation: None,
        }),
    );
    assert_eq!(third.tokens.expect("tokens").prompt_ids, encode(&whole));
}
