//! `cargo bench -p envsynth-policy --bench sampling`: what drawing one token costs the host,
//! `Sampler::sample` against the full sort of the vocabulary it used to do (the baseline,
//! [`full_sort_distribution`] plus one draw), side by side on the same logits. The batcher draws
//! a token per running sequence between two decode steps while the accelerator waits, so at a
//! batch of 128 this cost is paid 128 times a step.

use std::hint::black_box;
use std::time::Instant;

use envsynth_policy::{Sampler, SamplingParams, full_sort_distribution};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Distinct logit rows cycled through, so no row stays in cache.
const ROWS: usize = 8;

fn main() {
    let cases = [
        ("temperature 1", SamplingParams::default()),
        (
            "top-p 0.95",
            SamplingParams {
                top_p: 0.95,
                ..Default::default()
            },
        ),
        (
            "top-k 50, top-p 0.95",
            SamplingParams {
                top_k: 50,
                top_p: 0.95,
                ..Default::default()
            },
        ),
    ];
    println!("| vocabulary | sampling | Sampler::sample | full sort (baseline) | speed-up |");
    println!("|---:|---|---:|---:|---:|");
    // The small preset's vocabulary, and DeepSeek-V3's.
    for vocab in [4096usize, 129_280] {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let rows: Vec<Vec<f32>> = (0..ROWS)
            .map(|_| {
                (0..vocab)
                    .map(|_| rng.random_range(-12.0f32..12.0))
                    .collect()
            })
            .collect();
        let draws = (1 << 24) / vocab;
        for (name, params) in cases {
            let mut sampler = Sampler::new(params, 7).expect("valid parameters");
            let ours = per_draw(draws, |i| {
                black_box(sampler.sample(&rows[i % ROWS]));
            });
            let mut u = ChaCha8Rng::seed_from_u64(7);
            let baseline = per_draw(draws / 4, |i| {
                let dist = full_sort_distribution(&rows[i % ROWS], params);
                let target: f64 = u.random();
                let mut acc = 0.0;
                let pick = dist.iter().position(|&(_, p)| {
                    acc += p;
                    target < acc
                });
                black_box(pick);
            });
            println!(
                "| {vocab} | {name} | {:.1} µs | {:.1} µs | {:.1}× |",
                ours * 1e6,
                baseline * 1e6,
                baseline / ours
            );
        }
    }
}

/// Seconds per call of `f` over `n` calls, after `n / 8` untimed ones.
fn per_draw(n: usize, mut f: impl FnMut(usize)) -> f64 {
    for i in 0..n / 8 {
        f(i);
    }
    let started = Instant::now();
    for i in 0..n {
        f(i);
    }
    started.elapsed().as_secs_f64() / n as f64
}
