//! Tokenizers: tokenizer.json through the `tokenizers` crate, and training a byte-level BPE one
//! on text the project generates (there are no hub downloads here).

use std::path::Path;

use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

use crate::ModelError;

/// Special tokens of DeepSeek-V3.2's chat format, first in the vocabulary (BOS = 0, EOS = 1).
pub const SPECIAL_TOKENS: [&str; 7] = [
    envsynth_prompts::deepseek::BOS,
    envsynth_prompts::deepseek::EOS,
    "<｜User｜>",
    "<｜Assistant｜>",
    "<think>",
    "</think>",
    "<｜DSML｜",
];

fn err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

pub fn load(dir: &Path) -> Result<Tokenizer, ModelError> {
    let path = dir.join("tokenizer.json");
    if !path.exists() {
        return Err(ModelError::Tokenizer(format!(
            "{} is missing",
            path.display()
        )));
    }
    Tokenizer::from_file(&path)
        .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))
}

/// Trains a byte-level BPE tokenizer with `vocab_size` entries (special tokens included) on
/// `texts`; returns its tokenizer.json. Same texts, same bytes.
pub fn train_bpe(texts: &[String], vocab_size: usize) -> Result<String, ModelError> {
    let floor = 256 + SPECIAL_TOKENS.len();
    if vocab_size < floor {
        return Err(ModelError::Tokenizer(format!(
            "vocab_size {vocab_size} is below {floor} (256 bytes and {} special tokens)",
            SPECIAL_TOKENS.len()
        )));
    }
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(
            SPECIAL_TOKENS
                .iter()
                .map(|s| AddedToken::from(*s, true))
                .collect(),
        )
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let byte_level = ByteLevel::default().add_prefix_space(false);
    let mut tokenizer = TokenizerBuilder::<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(BPE::default())
    .with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(byte_level)))
    .with_post_processor(Some(PostProcessorWrapper::ByteLevel(byte_level)))
    .with_decoder(Some(DecoderWrapper::ByteLevel(byte_level)))
    .build()
    .map_err(err)?;
    tokenizer.train(&mut trainer, texts.iter()).map_err(err)?;
    let json = tokenizer.to_string(true).map_err(err)?;
    // Check what we promise: it loads, and the special tokens hold the first ids.
    let check: Tokenizer = json.parse().map_err(err)?;
    for (id, s) in SPECIAL_TOKENS.iter().enumerate() {
        if check.token_to_id(s) != Some(id as u32) {
            return Err(ModelError::Tokenizer(format!(
                "special token {s} did not get id {id}"
            )));
        }
    }
    Ok(json)
}

/// Entries of a tokenizer.json (added tokens included).
pub fn vocab_size(json: &str) -> Result<usize, ModelError> {
    let t: Tokenizer = json.parse().map_err(err)?;
    Ok(t.get_vocab_size(true))
}

/// Encodes text that already carries its special tokens (a rendered chat prompt).
pub fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, ModelError> {
    Ok(tokenizer
        .encode(text, false)
        .map_err(err)?
        .get_ids()
        .to_vec())
}

/// Decodes ids, keeping special tokens (the chat parser reads them).
pub fn decode(tokenizer: &Tokenizer, ids: &[u32]) -> Result<String, ModelError> {
    tokenizer.decode(ids, false).map_err(err)
}
