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
    /// Every token's weight in id order, when nothing is cut; kept between calls, so a token
    /// allocates nothing.
    weights: Vec<f32>,
    /// The tokens a cut works on, kept likewise.
    cut: Vec<Cand>,
}

/// A token a top-k or top-p cut orders by likelihood: the higher logit first, then the lower id.
#[derive(Clone, Copy, Debug)]
struct Cand {
    logit: f32,
    id: usize,
    weight: f32,
}

impl Cand {
    fn likelier(&self, other: &Cand) -> std::cmp::Ordering {
        other
            .logit
            .total_cmp(&self.logit)
            .then(self.id.cmp(&other.id))
    }
}

/// The candidates a draw walks, in its order: every token by id, or what a cut kept.
enum Candidates<'a> {
    All(&'a [f32]),
    Cut(&'a [Cand]),
}

impl Candidates<'_> {
    fn len(&self) -> usize {
        match self {
            Candidates::All(w) => w.len(),
            Candidates::Cut(c) => c.len(),
        }
    }
    /// Token and weight of the `j`-th.
    fn get(&self, j: usize) -> (usize, f32) {
        match self {
            Candidates::All(w) => (j, w[j]),
            Candidates::Cut(c) => (c[j].id, c[j].weight),
        }
    }
}

impl Sampler {
    pub fn new(params: SamplingParams, seed: u64) -> Result<Sampler, ModelError> {
        params.validate()?;
        Ok(Sampler {
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
            weights: Vec::new(),
            cut: Vec::new(),
        })
    }

    /// One token from `logits`. Greedy takes the first maximum. Otherwise the token is drawn
    /// with probability proportional to exp((logit − max) / temperature) among the candidates:
    /// every token, or the `top_k` most likely (ties to the lower id), cut to the nucleus when
    /// `top_p` < 1 (the fewest most likely whose probability reaches it). That is
    /// [`full_sort_distribution`], drawn without sorting the vocabulary, since the batcher draws a
    /// token per sequence while the accelerator waits: a selection finds the top k, a
    /// selection weighted by probability finds the nucleus, and the draw walks the candidates in
    /// the order those leave them (the order changes which token a given random number picks,
    /// not any token's probability). Expected cost linear in the vocabulary.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        self.draw(logits).0
    }

    /// [`Sampler::sample`]'s token and its log-probability under the distribution it was drawn
    /// from: temperature, top-k and top-p applied, renormalized over what they kept. That is the
    /// behaviour policy's probability an off-policy correction needs (and, with the cut, the
    /// sampling mask DeepSeek-V3.2 keeps for training). Greedy picks, and the fallback for logits
    /// with nothing finite to weigh, have probability 1: log-probability 0.
    pub fn draw(&mut self, logits: &[f32]) -> (u32, f32) {
        if self.params.temperature == 0.0 || logits.len() < 2 {
            return (argmax(logits), 0.0);
        }
        let u: f64 = self.rng.random();
        let c = self.candidates(logits);
        let total: f64 = (0..c.len()).map(|j| f64::from(c.get(j).1)).sum();
        if !(total.is_finite() && total > 0.0) {
            // Nothing finite to weigh (every logit -inf, or a NaN or +inf among them): the
            // likeliest by total order.
            return (argmax(logits), 0.0);
        }
        let chosen = |(id, w): (usize, f32)| (id as u32, (f64::from(w) / total).ln() as f32);
        let target = u * total;
        let mut acc = 0.0;
        for j in 0..c.len() {
            let (id, w) = c.get(j);
            acc += f64::from(w);
            if target < acc {
                return chosen((id, w));
            }
        }
        // Rounding left the target at the very end: the last candidate with weight.
        (0..c.len())
            .rev()
            .map(|j| c.get(j))
            .find(|&(_, w)| w > 0.0)
            .map_or((0, 0.0), chosen)
    }

    /// The candidates with their weights (not normalized).
    fn candidates(&mut self, logits: &[f32]) -> Candidates<'_> {
        let p = self.params;
        let n = logits.len();
        let max = logits[argmax(logits) as usize];
        let weight = |l: f32| ((l - max) / p.temperature).exp();
        let cut_k = p.top_k > 0 && p.top_k < n;
        if !cut_k && p.top_p >= 1.0 {
            self.weights.clear();
            self.weights.extend(logits.iter().map(|&l| weight(l)));
            return Candidates::All(&self.weights);
        }
        self.cut.clear();
        self.cut
            .extend(logits.iter().enumerate().map(|(id, &logit)| Cand {
                logit,
                id,
                weight: 0.0,
            }));
        let k = if cut_k {
            self.cut.select_nth_unstable_by(p.top_k - 1, Cand::likelier);
            p.top_k
        } else {
            n
        };
        let kept = &mut self.cut[..k];
        let mut total = 0.0;
        for c in kept.iter_mut() {
            c.weight = weight(c.logit);
            total += f64::from(c.weight);
        }
        let m = if p.top_p < 1.0 && total.is_finite() {
            nucleus(kept, f64::from(p.top_p) * total)
        } else {
            k
        };
        Candidates::Cut(&self.cut[..m])
    }
}

/// Reorders `c` so that its first m entries are the nucleus, the fewest most likely whose weight
/// reaches `need`, and returns m: a quickselect that keeps or drops a side by its weight.
fn nucleus(c: &mut [Cand], need: f64) -> usize {
    // c[..lo] is in (likelier than everything after it), c[hi..] is out, `acc` is c[..lo]'s weight.
    let (mut lo, mut hi, mut acc) = (0, c.len(), 0.0);
    while hi - lo > 16 {
        // Median of three as the pivot, parked at the end; then the likelier to the front.
        let mid = lo + (hi - lo) / 2;
        let mut three = [lo, mid, hi - 1];
        three.sort_unstable_by(|&a, &b| c[a].likelier(&c[b]));
        c.swap(three[1], hi - 1);
        let pivot = c[hi - 1];
        let mut split = lo;
        let mut upper = 0.0;
        for i in lo..hi - 1 {
            if c[i].likelier(&pivot).is_lt() {
                upper += f64::from(c[i].weight);
                c.swap(i, split);
                split += 1;
            }
        }
        c.swap(split, hi - 1);
        if acc + upper >= need {
            hi = split;
        } else {
            acc += upper + f64::from(pivot.weight);
            if acc >= need {
                return split + 1;
            }
            lo = split + 1;
        }
    }
    c[lo..hi].sort_unstable_by(Cand::likelier);
    for (i, x) in c[lo..hi].iter().enumerate() {
        acc += f64::from(x.weight);
        if acc >= need {
            return lo + i + 1;
        }
    }
    // Rounding kept the rest just short: all of it.
    hi
}

/// The distribution [`Sampler::sample`] draws from, computed the plain way: sort every token,
/// most likely first (ties to the lower id), cut to top_k, weigh, cut to the nucleus. Returns
/// (token, probability) by token id; empty for greedy sampling or no logits. The sampler is
/// checked against it, and `cargo bench -p envsynth-policy --bench sampling` times it as the
/// baseline (it was the sampler's own method first).
pub fn full_sort_distribution(logits: &[f32], p: SamplingParams) -> Vec<(usize, f64)> {
    if logits.is_empty() || p.temperature == 0.0 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
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
        order.truncate(keep);
        probs.truncate(keep);
    }
    let kept: f64 = probs.iter().sum();
    let mut out: Vec<(usize, f64)> = order
        .into_iter()
        .zip(probs.into_iter().map(|v| v / kept))
        .collect();
    out.sort_by_key(|&(i, _)| i);
    out
}

/// The most likely token by total order (a NaN above everything, ties to the lower id).
pub(crate) fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, l) in logits.iter().enumerate().skip(1) {
        if l.total_cmp(&logits[best]).is_gt() {
            best = i;
        }
    }
    best as u32
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
    fn candidates_match_a_full_sort_without_sorting_the_vocabulary() {
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        let params = [
            (1.0, 1.0, 0),
            (0.7, 1.0, 50),
            (1.0, 0.95, 0),
            (1.3, 0.9, 40),
            (0.5, 0.3, 0),
            (1.0, 1.0, 5000),
        ];
        // Peaked and nearly flat logits (a random-weight model's are), some tied, some masked.
        for (vocab, spread) in [
            (3usize, 8.0f32),
            (64, 8.0),
            (4096, 8.0),
            (4096, 0.01),
            (20_000, 8.0),
        ] {
            let logits: Vec<f32> = (0..vocab)
                .map(|i| match i % 97 {
                    0 => f32::NEG_INFINITY,
                    1 => spread / 3.0,
                    _ => rng.random_range(-spread..spread),
                })
                .collect();
            for &(temperature, top_p, top_k) in &params {
                let p = SamplingParams {
                    temperature,
                    top_p,
                    top_k,
                };
                let mut s = Sampler::new(p, 0).expect("valid");
                let c = s.candidates(&logits);
                if top_p >= 1.0 && (top_k == 0 || top_k >= vocab) {
                    // No cut: the candidates are every token, in id order.
                    assert!(
                        matches!(c, Candidates::All(w) if w.len() == vocab),
                        "{vocab} {p:?}"
                    );
                }
                let mass: f64 = (0..c.len()).map(|j| f64::from(c.get(j).1)).sum();
                let mut got: Vec<(usize, f64)> = (0..c.len())
                    .map(|j| (c.get(j).0, f64::from(c.get(j).1) / mass))
                    .collect();
                got.sort_by_key(|&(i, _)| i);
                let want = full_sort_distribution(&logits, p);
                assert_eq!(got.len(), want.len(), "{vocab} {p:?}");
                for ((gi, gp), (wi, wp)) in got.iter().zip(&want) {
                    assert_eq!(gi, wi, "{vocab} {p:?}");
                    assert!(
                        (gp - wp).abs() <= 1e-6 * wp.max(1e-12),
                        "{vocab} {p:?} token {gi}: {gp} vs {wp}"
                    );
                }
            }
        }
    }

    #[test]
    fn draws_follow_the_distribution() {
        // 16 tokens of distinct probability, 40,000 draws each way: every token's frequency
        // within 5 standard deviations of its probability.
        let logits: Vec<f32> = (0..16).map(|i| (i as f32 * 0.37).sin() * 2.0).collect();
        for p in [
            SamplingParams::default(),
            SamplingParams {
                top_p: 0.8,
                ..Default::default()
            },
            SamplingParams {
                top_k: 5,
                temperature: 0.8,
                ..Default::default()
            },
        ] {
            let want = full_sort_distribution(&logits, p);
            let mut s = Sampler::new(p, 9).expect("valid");
            let n = 40_000;
            let mut seen = [0usize; 16];
            for _ in 0..n {
                seen[s.sample(&logits) as usize] += 1;
            }
            let mut allowed = [false; 16];
            for &(i, prob) in &want {
                allowed[i] = true;
                let f = seen[i] as f64 / n as f64;
                let sd = (prob * (1.0 - prob) / n as f64).sqrt();
                assert!(
                    (f - prob).abs() <= 5.0 * sd + 1e-9,
                    "{p:?} token {i}: {f} vs {prob}"
                );
            }
            for i in 0..16 {
                assert!(
                    allowed[i] || seen[i] == 0,
                    "{p:?}: token {i} is outside the candidates"
                );
            }
        }
    }

    #[test]
    fn a_draw_reports_its_tokens_log_probability_under_the_cut_distribution() {
        let logits: Vec<f32> = (0..300).map(|i| ((i * 37) % 101) as f32 / 9.0).collect();
        for p in [
            SamplingParams::default(),
            SamplingParams {
                temperature: 0.6,
                ..Default::default()
            },
            SamplingParams {
                top_p: 0.7,
                ..Default::default()
            },
            SamplingParams {
                top_k: 20,
                top_p: 0.9,
                temperature: 1.3,
            },
        ] {
            let want: std::collections::BTreeMap<usize, f64> =
                full_sort_distribution(&logits, p).into_iter().collect();
            let mut s = Sampler::new(p, 5).expect("valid");
            for _ in 0..200 {
                let (token, logprob) = s.draw(&logits);
                let prob = want[&(token as usize)];
                assert!(
                    (f64::from(logprob) - prob.ln()).abs() < 1e-5,
                    "{p:?} token {token}: {logprob} vs ln {prob}"
                );
            }
        }
        let mut greedy = Sampler::new(
            SamplingParams {
                temperature: 0.0,
                ..Default::default()
            },
            5,
        )
        .expect("valid");
        assert_eq!(greedy.draw(&logits), (argmax(&logits), 0.0));
    }

    #[test]
    fn degenerate_logits_fall_back_to_the_likeliest() {
        let mut s = Sampler::new(SamplingParams::default(), 3).expect("valid");
        assert_eq!(s.sample(&[f32::NEG_INFINITY; 8]), 0);
        let mut l = vec![0.0f32; 8];
        l[5] = f32::INFINITY;
        assert_eq!(s.sample(&l), 5);
        l[2] = f32::NAN;
        assert_eq!(s.sample(&l), 2);
        assert_eq!(s.sample(&[1.5]), 0);
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
