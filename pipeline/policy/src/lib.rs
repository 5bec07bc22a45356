//! The local policy model: DeepSeek-V3.2's architecture (dsa.md) from a Hugging Face checkpoint.
//!
//! - [`config`]: `config.json`, explicit defaults, the tiny and small presets.
//! - [`checkpoint`]: safetensors by the published names; bf16/f16/f32 and FP8 e4m3 with block
//!   scales, dequantized on load; the writer behind `envsynth model init`.
//! - [`model`]: the CPU reference forward (MLA in MHA and absorbed modes, the lightning indexer,
//!   top-k sparse attention, MoE), per-sequence caches, batched decode.
//! - [`sample`], [`generate`]: seeded sampling and generation with stop conditions;
//!   [`batch`]: continuous batching of concurrent requests on one worker.
//! - [`tokenizer`]: tokenizer.json through the `tokenizers` crate, and byte-level BPE training.
//! - [`init`]: random-weight checkpoints.
//! - [`local`]: the rollout engine's `local:DIR` policy.
//! - [`gpu`]: the GPU backend (cudarc; CUDA and NVRTC loaded at run time): its kernels, the
//!   whole model on the GPU (`gpu::model`), and the program that checks both against this CPU
//!   reference and benchmarks them.

pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod generate;
pub mod gpu;
pub mod init;
pub mod local;
pub mod model;
pub mod ops;
pub mod sample;
pub mod tokenizer;

use std::path::{Path, PathBuf};

pub use batch::Batcher;
pub use config::{Config, Preset};
pub use generate::{Finish, Generation, Stop, generate, generate_batch};
pub use local::LocalPolicy;
pub use model::{AttentionMode, Cache, Forward, Logits, Model, Segment, Selection};
pub use sample::{Sampler, SamplingParams, full_sort_distribution};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Config(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("context: {tokens} tokens exceed max_position_embeddings {limit}")]
    Context { tokens: usize, limit: usize },
    #[error("token id {token} is outside the vocabulary (vocab_size {vocab})")]
    Token { token: u32, vocab: usize },
    #[error("sampling: {0}")]
    Sampling(String),
    #[error("no tokens to run")]
    Empty,
    #[error("batcher: {0}")]
    Batcher(String),
    #[error("GPU: {0}")]
    Gpu(String),
}

impl ModelError {
    pub fn io(path: &Path, source: std::io::Error) -> ModelError {
        ModelError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
