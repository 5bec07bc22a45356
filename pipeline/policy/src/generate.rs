//! Generation: prefill the prompt, then decode with the caches until a stop condition.

use crate::ModelError;
use crate::model::{Cache, Forward, Model, Segment};
use crate::sample::Sampler;

/// When generation ends.
#[derive(Clone, Debug, Default)]
pub struct Stop {
    /// Tokens that end generation (kept in the output).
    pub eos: Vec<u32>,
    pub max_new_tokens: usize,
    /// Text that ends generation, checked on the decoded output by the caller's `decode`.
    pub strings: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    Eos,
    StopString,
    Length,
    /// The model's context (max_position_embeddings) is full.
    Context,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    pub tokens: Vec<u32>,
    /// Each token's log-probability under the distribution it was drawn from
    /// ([`Sampler::draw`]).
    pub logprobs: Vec<f32>,
    pub finish: Finish,
}

/// Why a sequence that has generated `out` (its last token just sampled, its cache holding
/// `cached` tokens) stops, if it does: EOS, a stop string, the token budget, then the context.
pub(crate) fn stop_reason(
    stop: &Stop,
    out: &[u32],
    cached: usize,
    limit: usize,
    decode: &dyn Fn(&[u32]) -> String,
) -> Option<Finish> {
    let last = *out.last()?;
    if stop.eos.contains(&last) {
        Some(Finish::Eos)
    } else if !stop.strings.is_empty() && {
        let text = decode(out);
        stop.strings.iter().any(|s| text.contains(s.as_str()))
    } {
        Some(Finish::StopString)
    } else if out.len() >= stop.max_new_tokens {
        Some(Finish::Length)
    } else if cached >= limit {
        Some(Finish::Context)
    } else {
        None
    }
}

/// Generates one continuation. `decode` turns generated tokens into text for stop strings
/// (pass `|_| String::new()` when there are none).
pub fn generate(
    model: &Model,
    prompt: &[u32],
    sampler: &mut Sampler,
    stop: &Stop,
    decode: impl Fn(&[u32]) -> String,
) -> Result<Generation, ModelError> {
    let mut out = generate_batch(
        model,
        &[prompt.to_vec()],
        std::slice::from_mut(sampler),
        stop,
        decode,
    )?;
    out.pop().ok_or(ModelError::Empty)
}

/// Generates continuations of several prompts together: each is prefilled on its own, then
/// every unfinished sequence decodes one token per step in a single batched call.
pub fn generate_batch(
    model: &Model,
    prompts: &[Vec<u32>],
    samplers: &mut [Sampler],
    stop: &Stop,
    decode: impl Fn(&[u32]) -> String,
) -> Result<Vec<Generation>, ModelError> {
    assert_eq!(prompts.len(), samplers.len(), "one sampler per prompt");
    let limit = model.cfg.max_position_embeddings;
    let mut caches: Vec<Cache> = prompts.iter().map(|_| Cache::new(model)).collect();
    let mut outs: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let mut logprobs: Vec<Vec<f32>> = vec![Vec::new(); prompts.len()];
    let mut finish: Vec<Option<Finish>> = vec![None; prompts.len()];
    let mut next: Vec<(u32, f32)> = Vec::with_capacity(prompts.len());
    for ((p, cache), sampler) in prompts.iter().zip(&mut caches).zip(samplers.iter_mut()) {
        if p.is_empty() {
            return Err(ModelError::Empty);
        }
        let logits = model.prefill(cache, p)?;
        next.push(sampler.draw(&logits));
    }
    loop {
        // Take the sampled tokens; decide who stops.
        for i in 0..prompts.len() {
            if finish[i].is_some() {
                continue;
            }
            outs[i].push(next[i].0);
            logprobs[i].push(next[i].1);
            finish[i] = stop_reason(stop, &outs[i], caches[i].len(), limit, &decode);
        }
        let active: Vec<usize> = (0..prompts.len())
            .filter(|&i| finish[i].is_none())
            .collect();
        if active.is_empty() {
            break;
        }
        let tokens: Vec<[u32; 1]> = active.iter().map(|&i| [next[i].0]).collect();
        let mut segments: Vec<Segment<'_>> = Vec::with_capacity(active.len());
        let mut rest: &mut [Cache] = &mut caches;
        let mut offset = 0;
        for (&i, t) in active.iter().zip(&tokens) {
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(i - offset);
            let (cache, tail) = tail.split_first_mut().expect("index in range");
            segments.push(Segment { cache, tokens: t });
            rest = tail;
            offset = i + 1;
        }
        let logits = model.forward(&mut segments, Forward::DECODE)?;
        for (&i, l) in active.iter().zip(&logits) {
            next[i] = samplers[i].draw(l);
        }
    }
    Ok(outs
        .into_iter()
        .zip(logprobs)
        .zip(finish)
        .map(|((tokens, logprobs), f)| Generation {
            tokens,
            logprobs,
            finish: f.unwrap_or(Finish::Length),
        })
        .collect())
}
