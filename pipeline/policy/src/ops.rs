//! The numerical pieces of the forward pass, in f32, written for reading: one function per
//! operation, row-major `[out, in]` weights as Hugging Face stores them.

use crate::config::{Config, yarn_mscale};

/// A projection `y = W·x` with `W` stored `[out, in]`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub out: usize,
    pub inp: usize,
    pub w: Vec<f32>,
}

impl Linear {
    pub fn row(&self, o: usize) -> &[f32] {
        &self.w[o * self.inp..(o + 1) * self.inp]
    }

    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        self.apply_rows(x, 1)
    }

    /// `rows` inputs laid end to end; returns `rows × out`. Each output is one `dot`, so the
    /// result does not depend on how many rows go together or how the work is split.
    pub fn apply_rows(&self, xs: &[f32], rows: usize) -> Vec<f32> {
        debug_assert_eq!(xs.len(), rows * self.inp);
        let mut y = vec![0.0f32; rows * self.out];
        let work = rows * self.out * self.inp;
        let threads = if work < 1 << 22 { 1 } else { parallelism() };
        let chunk = self.out.div_ceil(threads);
        // Each thread owns a range of output columns; gather them into place afterwards.
        let parts: Vec<(usize, Vec<f32>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let lo = (t * chunk).min(self.out);
                    let hi = ((t + 1) * chunk).min(self.out);
                    scope.spawn(move || {
                        let mut part = vec![0.0f32; rows * (hi - lo)];
                        for o in lo..hi {
                            let w = self.row(o);
                            for r in 0..rows {
                                part[r * (hi - lo) + (o - lo)] =
                                    dot(w, &xs[r * self.inp..(r + 1) * self.inp]);
                            }
                        }
                        (lo, part)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a projection thread panicked"))
                .collect()
        });
        for (lo, part) in parts {
            let width = part.len() / rows.max(1);
            for r in 0..rows {
                y[r * self.out + lo..r * self.out + lo + width]
                    .copy_from_slice(&part[r * width..(r + 1) * width]);
            }
        }
        y
    }
}

fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Dot product with eight running sums (so the compiler can vectorize it); a fixed order, so
/// equal inputs give equal bits.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut tail = 0.0f32;
    for i in chunks * 8..a.len() {
        tail += a[i] * b[i];
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `y += a·x`.
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// RMSNorm: `x / sqrt(mean(x²) + eps) · w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let r = 1.0 / (ms + eps).sqrt();
    x.iter().zip(w).map(|(v, w)| v * r * w).collect()
}

/// LayerNorm with weight and bias (the indexer's key norm).
pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let r = 1.0 / (var + eps).sqrt();
    x.iter()
        .zip(w.iter().zip(b))
        .map(|(v, (w, b))| (v - mean) * r * w + b)
        .collect()
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Softmax in place, subtracting the maximum first.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// Orthonormal Walsh–Hadamard rotation (Sylvester order), `H·x / sqrt(n)`; `n` a power of two.
pub fn hadamard(x: &mut [f32]) {
    let n = x.len();
    debug_assert!(n.is_power_of_two());
    let mut h = 1;
    while h < n {
        for i in (0..n).step_by(2 * h) {
            for j in i..i + h {
                let (a, b) = (x[j], x[j + h]);
                x[j] = a + b;
                x[j + h] = a - b;
            }
        }
        h *= 2;
    }
    let s = (n as f32).powf(-0.5);
    for v in x {
        *v *= s;
    }
}

/// How a rotary embedding pairs the dimensions it rotates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Pairs `(x[2i], x[2i+1])`: the complex view MLA uses.
    Interleaved,
    /// Pairs `(x[i], x[i + d/2])` ("rotate half", NeoX): what the indexer uses.
    Neox,
}

/// Rotary frequencies with YaRN scaling, shared by MLA and the indexer.
#[derive(Clone, Debug)]
pub struct Rope {
    /// One inverse wavelength per rotated pair.
    pub freqs: Vec<f64>,
    /// YaRN's multiplier on cos and sin (1 for DeepSeek's configs, where mscale = mscale_all_dim).
    pub attention_factor: f64,
}

impl Rope {
    pub fn new(cfg: &Config) -> Rope {
        let dim = cfg.qk_rope_head_dim;
        let base = cfg.rope_theta;
        let mut freqs: Vec<f64> = (0..dim / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f64 / dim as f64))
            .collect();
        let mut attention_factor = 1.0;
        if let Some(s) = &cfg.rope_scaling {
            // YaRN: wavelengths longer than the original context are interpolated by `factor`,
            // short ones are kept, with a linear ramp between the correction dimensions.
            let original = s.original_max_position_embeddings as f64;
            let correction_dim = |rotations: f64| {
                dim as f64 * (original / (rotations * 2.0 * std::f64::consts::PI)).ln()
                    / (2.0 * base.ln())
            };
            let low = correction_dim(s.beta_fast).floor().max(0.0);
            let high = correction_dim(s.beta_slow).ceil().min(dim as f64 - 1.0);
            let high = if low == high { high + 0.001 } else { high };
            for (i, f) in freqs.iter_mut().enumerate() {
                let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                let keep = 1.0 - ramp;
                *f = *f / s.factor * (1.0 - keep) + *f * keep;
            }
            attention_factor = if s.mscale != 0.0 && s.mscale_all_dim != 0.0 {
                yarn_mscale(s.factor, s.mscale) / yarn_mscale(s.factor, s.mscale_all_dim)
            } else {
                yarn_mscale(s.factor, 1.0)
            };
        }
        Rope {
            freqs,
            attention_factor,
        }
    }

    /// Rotate `x` (length 2·freqs) for `position`.
    pub fn apply(&self, x: &mut [f32], position: usize, style: RopeStyle) {
        let half = self.freqs.len();
        debug_assert_eq!(x.len(), 2 * half);
        for (i, f) in self.freqs.iter().enumerate() {
            let angle = position as f64 * f;
            let c = (angle.cos() * self.attention_factor) as f32;
            let s = (angle.sin() * self.attention_factor) as f32;
            let (ia, ib) = match style {
                RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                RopeStyle::Neox => (i, i + half),
            };
            let (a, b) = (x[ia], x[ib]);
            x[ia] = a * c - b * s;
            x[ib] = a * s + b * c;
        }
    }
}

/// Indices of the `k` largest values, ties to the lower index, returned in ascending index
/// order. A full sort: this is the reference, not the kernel.
pub fn top_k(scores: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(k);
    order.sort_unstable();
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hadamard_is_orthonormal_and_its_own_inverse() {
        let x: Vec<f32> = (0..128).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
        let mut y = x.clone();
        hadamard(&mut y);
        let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>();
        assert!((norm(&x) - norm(&y)).abs() < 1e-3 * norm(&x));
        assert_ne!(x, y);
        hadamard(&mut y);
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn top_k_breaks_ties_to_the_lower_index_and_returns_ascending() {
        assert_eq!(top_k(&[1.0, 3.0, 3.0, 2.0, 3.0], 2), vec![1, 2]);
        assert_eq!(top_k(&[1.0, 3.0, 0.5], 5), vec![0, 1, 2]);
    }

    #[test]
    fn rope_styles_pair_different_dimensions() {
        let cfg = crate::config::Preset::Tiny.config();
        let rope = Rope::new(&cfg);
        let mut a = vec![0.0f32; 16];
        a[0] = 1.0;
        let mut b = a.clone();
        rope.apply(&mut a, 3, RopeStyle::Interleaved);
        rope.apply(&mut b, 3, RopeStyle::Neox);
        let (c, s) = ((3.0f64).cos() as f32, (3.0f64).sin() as f32);
        assert!((a[0] - c).abs() < 1e-6 && (a[1] - s).abs() < 1e-6);
        assert!((b[0] - c).abs() < 1e-6 && (b[8] - s).abs() < 1e-6 && b[1] == 0.0);
    }

    #[test]
    fn yarn_scales_only_the_long_wavelengths() {
        let cfg = crate::config::Preset::Tiny.config();
        let rope = Rope::new(&cfg);
        // dsa.md §5.1 tiny: rope dim 16, original 32, factor 4: correction range [0, 2].
        let plain = |i: usize| 1.0 / 10_000f64.powf(2.0 * i as f64 / 16.0);
        assert_eq!(rope.freqs[0], plain(0));
        assert!((rope.freqs[1] - (plain(1) / 4.0 * 0.5 + plain(1) * 0.5)).abs() < 1e-15);
        for i in 2..8 {
            assert!((rope.freqs[i] - plain(i) / 4.0).abs() < 1e-15);
        }
    }
}
