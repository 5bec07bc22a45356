//! `--policy local:DIR`: the rollout engine plays with the local model. Each request is rendered
//! in DeepSeek-V3.2's chat format (DSML tool calls), tokenized, generated on the blocking pool,
//! and parsed back into an assistant message with tool calls.

use std::path::Path;
use std::sync::Arc;

use envsynth_core::chat::{ChatMessage, ChatRequest, Usage};
use envsynth_prompts::deepseek::{self, DeepSeekV32};
use envsynth_rollout::{Policy, PolicyError};
use rand::Rng;

use crate::ModelError;
use crate::generate::{Stop, generate};
use crate::model::Model;
use crate::sample::{Sampler, SamplingParams};
use crate::tokenizer;

/// How the local policy samples when a request does not say.
#[derive(Clone, Debug)]
pub struct LocalOptions {
    pub sampling: SamplingParams,
    /// Completion tokens per request unless the request's `max_tokens` is smaller.
    pub max_new_tokens: usize,
}

impl Default for LocalOptions {
    fn default() -> LocalOptions {
        LocalOptions {
            sampling: SamplingParams::default(),
            max_new_tokens: 256,
        }
    }
}

struct Engine {
    model: Model,
    tokenizer: tokenizers::Tokenizer,
    chat: DeepSeekV32,
    options: LocalOptions,
    eos: u32,
}

pub struct LocalPolicy {
    name: String,
    engine: Arc<Engine>,
}

impl LocalPolicy {
    /// Loads the checkpoint folder (config.json, safetensors, tokenizer.json).
    pub fn load(dir: &Path, options: LocalOptions) -> Result<LocalPolicy, ModelError> {
        options.sampling.validate()?;
        let model = Model::load(dir)?;
        let tokenizer = tokenizer::load(dir)?;
        let eos = tokenizer.token_to_id(deepseek::EOS).ok_or_else(|| {
            ModelError::Tokenizer(format!("tokenizer.json has no {} token", deepseek::EOS))
        })?;
        let chat = DeepSeekV32::new().map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let name = format!(
            "local:{}",
            dir.file_name().map_or_else(
                || dir.display().to_string(),
                |n| n.to_string_lossy().into_owned()
            )
        );
        Ok(LocalPolicy {
            name,
            engine: Arc::new(Engine {
                model,
                tokenizer,
                chat,
                options,
                eos,
            }),
        })
    }
}

impl Engine {
    fn complete(&self, request: &ChatRequest) -> Result<(ChatMessage, Usage), PolicyError> {
        let refused = |e: String| PolicyError::Refused(e);
        let prompt = self
            .chat
            .render(&request.messages, &request.tools, false)
            .map_err(|e| refused(format!("chat template: {e}")))?;
        let ids =
            tokenizer::encode(&self.tokenizer, &prompt).map_err(|e| refused(e.to_string()))?;
        let limit = self.model.cfg.max_position_embeddings;
        if ids.len() >= limit {
            return Err(refused(format!(
                "the prompt has {} tokens; the model's context is {limit}",
                ids.len()
            )));
        }
        let mut sampling = self.options.sampling;
        if let Some(t) = request.temperature {
            sampling.temperature = t as f32;
        }
        // Each turn of a rollout samples its own stream: (request seed, turn) → ChaCha8.
        let mut stream = envsynth_core::seed::task_rng(
            "envsynth-policy/local",
            "1",
            request.seed.unwrap_or(0),
            request.messages.len() as u64,
            0,
            "sample",
        );
        let mut sampler =
            Sampler::new(sampling, stream.random()).map_err(|e| refused(e.to_string()))?;
        let max_new = request.max_tokens.map_or(self.options.max_new_tokens, |m| {
            (m as usize).min(self.options.max_new_tokens)
        });
        let stop = Stop {
            eos: vec![self.eos],
            max_new_tokens: max_new.max(1),
            strings: Vec::new(),
        };
        let g = generate(&self.model, &ids, &mut sampler, &stop, |_| String::new())
            .map_err(|e| refused(e.to_string()))?;
        let text =
            tokenizer::decode(&self.tokenizer, &g.tokens).map_err(|e| refused(e.to_string()))?;
        let parsed = deepseek::parse(&text, false);
        let message = ChatMessage {
            role: "assistant".into(),
            content: Some(parsed.content),
            reasoning_content: parsed.reasoning,
            tool_calls: parsed.tool_calls,
            tool_call_id: None,
        };
        Ok((
            message,
            Usage {
                prompt_tokens: ids.len() as u64,
                completion_tokens: g.tokens.len() as u64,
            },
        ))
    }
}

impl Policy for LocalPolicy {
    fn name(&self) -> &str {
        &self.name
    }

    async fn complete(&self, request: &ChatRequest) -> Result<(ChatMessage, Usage), PolicyError> {
        let engine = self.engine.clone();
        let request = request.clone();
        tokio::task::spawn_blocking(move || engine.complete(&request))
            .await
            .map_err(|e| PolicyError::Unavailable {
                attempts: 1,
                last: format!("local model task failed: {e}"),
            })?
    }
}
