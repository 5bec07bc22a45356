//! Seeded sampling: temperature, top-k, top-p (nucleus). Same seed and logits, same token.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::ModelError;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 picks the most likely token (lowest id on ties).
    pub temperature: f32,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p` (1 = off).
    pub top_p: f32,
    /// Keep the `top_k` most likely tokens (0 = off).
    pub top_k: usize,
}

impl Default for SamplingParams {
    fn default() -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
        }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<(), ModelError> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(ModelError::Sampling(format!(
                "temperature {} must be a finite number ≥ 0",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(ModelError::Sampling(format!(
                "top_p {} must be in (0, 1]",
                self.top_p
            )));
        }
        Ok(())
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams, seed: u64) -> Result<Sampler, ModelError> {
        params.validate()?;
        Ok(Sampler {
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
        })
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = self.params;
        // Candidates from most to least likely, ties to the lower id.
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if p.temperature == 0.0 {
            return order[0] as u32;
        }
        if p.top_k > 0 {
            order.truncate(p.top_k);
        }
        let max = logits[order[0]];
        let mut probs: Vec<f64> = order
            .iter()
            .map(|&i| (((logits[i] - max) / p.temperature) as f64).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|v| *v /= total);
        if p.top_p < 1.0 {
            let mut mass = 0.0;
            let keep = probs
                .iter()
                .position(|v| {
                    mass += v;
                    mass >= p.top_p as f64
                })
                .map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            order.truncate(keep);
            let kept: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|v| *v /= kept);
        }
        let u: f64 = self.rng.random();
        let mut acc = 0.0;
        for (&i, &pr) in order.iter().zip(&probs) {
            acc += pr;
            if u < acc {
                return i as u32;
            }
        }
        order[order.len() - 1] as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..64).map(|i| ((i * 7919) % 97) as f32 / 20.0).collect()
    }

    #[test]
    fn same_seed_same_tokens_other_seed_other_tokens() {
        let p = SamplingParams::default();
        let draw = |seed| {
            let mut s = Sampler::new(p, seed).expect("valid");
            (0..50).map(|_| s.sample(&logits())).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn greedy_top_k_and_top_p_restrict_the_choice() {
        let l = logits();
        let best = (0..64)
            .max_by(|&a, &b| l[a].total_cmp(&l[b]).then(b.cmp(&a)))
            .expect("non-empty");
        let mut g = Sampler::new(
            SamplingParams {
                temperature: 0.0,
                ..Default::default()
            },
            1,
        )
        .expect("valid");
        assert_eq!(g.sample(&l), best as u32);
        let mut k1 = Sampler::new(
            SamplingParams {
                top_k: 1,
                ..Default::default()
            },
            1,
        )
        .expect("valid");
        let mut p0 = Sampler::new(
            SamplingParams {
                top_p: 1e-6,
                ..Default::default()
            },
            1,
        )
        .expect("valid");
        for _ in 0..20 {
            assert_eq!(k1.sample(&l), best as u32);
            assert_eq!(p0.sample(&l), best as u32);
        }
        let mut k3 = Sampler::new(
            SamplingParams {
                top_k: 3,
                temperature: 5.0,
                ..Default::default()
            },
            2,
        )
        .expect("valid");
        let mut order: Vec<usize> = (0..64).collect();
        order.sort_by(|&a, &b| l[b].total_cmp(&l[a]).then(a.cmp(&b)));
        let seen: std::collections::BTreeSet<u32> = (0..200).map(|_| k3.sample(&l)).collect();
        let allowed: std::collections::BTreeSet<u32> =
            order[..3].iter().map(|&i| i as u32).collect();
        assert_eq!(seen, allowed);
    }

    #[test]
    fn bad_parameters_are_named() {
        let e = Sampler::new(
            SamplingParams {
                top_p: 0.0,
                ..Default::default()
            },
            0,
        )
        .err()
        .expect("refused");
        assert!(e.to_string().contains("top_p"), "{e}");
        let e = Sampler::new(
            SamplingParams {
                temperature: -1.0,
                ..Default::default()
            },
            0,
        )
        .err()
        .expect("refused");
        assert!(e.to_string().contains("temperature"), "{e}");
    }
}
