//! Sampling toward the tasks a policy can learn from now.
//!
//! A GRPO-style trainer learns nothing from a group of rollouts that all pass or all fail: every
//! advantage is zero (DAPO's dynamic sampling throws such groups away after paying for them).
//! So a task's weight is the probability that a group of `group` fresh rollouts of it is
//! *mixed*, `1 - E[p^G] - E[(1-p)^G]`, under the posterior of its pass rate `p` given the
//! policy's recorded outcomes. The prior is a Beta fitted to the whole population's outcomes
//! (maximum marginal likelihood on a fixed grid), so when most tasks are always passed or
//! never passed, a few agreeing outcomes are enough to push a task down, and a task nobody has
//! tried keeps the weight the population suggests. Pure functions: the same outcomes, seed
//! and count give the same sample.

use std::collections::{BTreeMap, HashSet};

use rand::{Rng, SeedableRng};
use serde::Serialize;

/// One task's recorded outcomes for one policy (masked rollouts left out).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Outcomes {
    pub attempts: u64,
    pub passes: u64,
}

/// A Beta(alpha, beta) prior over a task's pass rate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Prior {
    pub alpha: f64,
    pub beta: f64,
}

impl Prior {
    /// Uniform: what is assumed before any task has two outcomes.
    pub const UNIFORM: Prior = Prior {
        alpha: 1.0,
        beta: 1.0,
    };

    /// Tasks with two outcomes or more that a fit needs: single outcomes say nothing about
    /// how spread pass rates are, and a handful of tasks would fit a prior to themselves.
    pub const MIN_FIT_TASKS: usize = 10;

    /// The Beta prior on a grid of means and concentrations that makes the population's
    /// outcomes most likely (beta-binomial marginal likelihood); uniform until
    /// [`Prior::MIN_FIT_TASKS`] tasks have two outcomes or more.
    pub fn fit(population: &[Outcomes]) -> Prior {
        let mut counts: BTreeMap<Outcomes, u64> = BTreeMap::new();
        for o in population.iter().filter(|o| o.attempts > 0) {
            *counts.entry(*o).or_default() += 1;
        }
        let informative: u64 = counts
            .iter()
            .filter(|(o, _)| o.attempts >= 2)
            .map(|(_, &n)| n)
            .sum();
        if informative < Prior::MIN_FIT_TASKS as u64 {
            return Prior::UNIFORM;
        }
        const MEANS: [f64; 13] = [
            0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98,
        ];
        const CONCENTRATIONS: [f64; 10] = [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0];
        let mut best = (f64::NEG_INFINITY, Prior::UNIFORM);
        for s in CONCENTRATIONS {
            for m in MEANS {
                let (a, b) = (m * s, (1.0 - m) * s);
                let (la, lb, lab) = (ln_gamma(a), ln_gamma(b), ln_gamma(a + b));
                let mut ll = 0.0;
                for (o, &count) in &counts {
                    let (n, k) = (o.attempts as f64, o.passes.min(o.attempts) as f64);
                    ll += count as f64
                        * (ln_gamma(a + k) - la + ln_gamma(b + n - k) - lb + lab
                            - ln_gamma(a + b + n));
                }
                if ll > best.0 {
                    best = (ll, Prior { alpha: a, beta: b });
                }
            }
        }
        best.1
    }

    /// The probability that `group` fresh rollouts of a task with these outcomes are neither
    /// all passed nor all failed. Zero for a group of one.
    pub fn mixed_group(&self, o: Outcomes, group: u32) -> f64 {
        let passes = o.passes.min(o.attempts) as f64;
        let a = self.alpha + passes;
        let b = self.beta + (o.attempts as f64 - passes);
        // E[p^G] under Beta(a, b) is the product of (a + i) / (a + b + i) for i < G.
        let (mut all_pass, mut all_fail) = (1.0f64, 1.0f64);
        for i in 0..group {
            let i = f64::from(i);
            all_pass *= (a + i) / (a + b + i);
            all_fail *= (b + i) / (a + b + i);
        }
        (1.0 - all_pass - all_fail).max(0.0)
    }
}

/// ln Γ(x) for x > 0: the recurrence up to 10, then Stirling's series (error below 1e-14).
fn ln_gamma(mut x: f64) -> f64 {
    let mut shift = 0.0;
    while x < 10.0 {
        shift -= x.ln();
        x += 1.0;
    }
    let inv = 1.0 / x;
    let inv2 = inv * inv;
    let series =
        inv * (1.0 / 12.0 - inv2 * (1.0 / 360.0 - inv2 * (1.0 / 1260.0 - inv2 * (1.0 / 1680.0))));
    shift + (x - 0.5) * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI).ln() + series
}

/// `n` distinct positions of `weights` (fewer if it runs out), none whose id is in `exclude`,
/// drawn without replacement with probability proportional to weight (Efraimidis–Spirakis
/// keys from a ChaCha generator seeded by `seed`, one draw per position, so excluding one task
/// leaves every other task's key as it was). Zero weights are drawn only after every positive
/// one. Returned in the order drawn (largest key first).
pub fn weighted_sample(
    ids: &[String],
    weights: &[f64],
    seed: u64,
    n: usize,
    exclude: &HashSet<&str>,
) -> Vec<usize> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut keys: Vec<(f64, usize)> = Vec::with_capacity(ids.len());
    for (i, (id, &w)) in ids.iter().zip(weights).enumerate() {
        let u: f64 = 1.0 - rng.random::<f64>(); // in (0, 1]
        if exclude.contains(id.as_str()) {
            continue;
        }
        // ln(u) / w: larger for larger weights; -inf for weight zero.
        let key = if w > 0.0 {
            u.ln() / w
        } else {
            f64::NEG_INFINITY
        };
        keys.push((key, i));
    }
    keys.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)));
    keys.into_iter().take(n).map(|(_, i)| i).collect()
}

/// A curriculum draw and what it was drawn from.
#[derive(Clone, Debug, PartialEq)]
pub struct Draw {
    /// The prior fitted to the population's outcomes.
    pub prior: Prior,
    /// Members of the population with at least one outcome.
    pub tried: usize,
    /// The mean weight over the population: the share of mixed groups a uniform draw expects.
    pub population_mixed: f64,
    /// The drawn positions of the population, in order, each with its weight.
    pub drawn: Vec<(usize, f64)>,
}

/// Draw `n` members of `population` for groups of `group` rollouts, given the outcomes known
/// by task id (tasks absent from `outcomes` are untried): fit the prior, weigh every member,
/// and draw with [`weighted_sample`].
pub fn draw(
    population: &[String],
    outcomes: &[(String, Outcomes)],
    group: u32,
    seed: u64,
    n: usize,
    exclude: &HashSet<&str>,
) -> Draw {
    let known: std::collections::HashMap<&str, Outcomes> =
        outcomes.iter().map(|(id, o)| (id.as_str(), *o)).collect();
    let seen: Vec<Outcomes> = population
        .iter()
        .map(|id| known.get(id.as_str()).copied().unwrap_or_default())
        .collect();
    let prior = Prior::fit(&seen);
    let weights: Vec<f64> = seen.iter().map(|&o| prior.mixed_group(o, group)).collect();
    let population_mixed = if weights.is_empty() {
        0.0
    } else {
        weights.iter().sum::<f64>() / weights.len() as f64
    };
    Draw {
        prior,
        tried: seen.iter().filter(|o| o.attempts > 0).count(),
        population_mixed,
        drawn: weighted_sample(population, &weights, seed, n, exclude)
            .into_iter()
            .map(|i| (i, weights[i]))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_matches_factorials_and_half_integers() {
        let mut fact = 1.0f64;
        for n in 1..30u32 {
            // Γ(n) = (n-1)!
            assert!((ln_gamma(f64::from(n)) - fact.ln()).abs() < 1e-12, "{n}");
            fact *= f64::from(n);
        }
        let sqrt_pi_ln = 0.5 * std::f64::consts::PI.ln();
        assert!((ln_gamma(0.5) - sqrt_pi_ln).abs() < 1e-12);
        // Γ(0.1) = 9.513507698668732
        assert!((ln_gamma(0.1) - 9.513_507_698_668_732f64.ln()).abs() < 1e-12);
    }

    /// The closed form against a numerical integral of the posterior.
    #[test]
    fn mixed_group_is_the_posterior_probability_of_a_mixed_group() {
        let prior = Prior {
            alpha: 0.3,
            beta: 0.7,
        };
        for (attempts, passes, group) in [(0, 0, 8), (5, 2, 8), (16, 16, 4), (3, 0, 16), (1, 1, 2)]
        {
            let o = Outcomes { attempts, passes };
            let (a, b) = (0.3 + passes as f64, 0.7 + (attempts - passes) as f64);
            // The mixed-group integrand vanishes at both ends, so the midpoint rule converges;
            // the normaliser B(a, b) is exact.
            let steps = 2_000_000;
            let mut mixed = 0.0;
            for s in 0..steps {
                let p = (s as f64 + 0.5) / steps as f64;
                let d = p.powf(a - 1.0) * (1.0 - p).powf(b - 1.0);
                mixed += d * (1.0 - p.powi(group as i32) - (1.0 - p).powi(group as i32));
            }
            let beta_fn = (ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)).exp();
            let want = mixed / steps as f64 / beta_fn;
            let got = prior.mixed_group(o, group);
            assert!(
                (got - want).abs() < 2e-3,
                "{o:?} G={group}: {got} vs {want}"
            );
        }
        assert_eq!(Prior::UNIFORM.mixed_group(Outcomes::default(), 1), 0.0);
    }

    #[test]
    fn the_fitted_prior_follows_the_population() {
        let none = Prior::fit(&[Outcomes {
            attempts: 1,
            passes: 1,
        }]);
        assert_eq!(
            none,
            Prior::UNIFORM,
            "one outcome a task says nothing of spread"
        );
        let few = Prior::fit(
            &[Outcomes {
                attempts: 8,
                passes: 8,
            }; Prior::MIN_FIT_TASKS - 1],
        );
        assert_eq!(few, Prior::UNIFORM, "too few tasks to fit");
        // Most tasks always or never passed: a U-shaped prior (both parameters below 1).
        let mut pop = vec![
            Outcomes {
                attempts: 8,
                passes: 8
            };
            40
        ];
        pop.extend(vec![
            Outcomes {
                attempts: 8,
                passes: 0
            };
            40
        ]);
        pop.extend(vec![
            Outcomes {
                attempts: 8,
                passes: 4
            };
            20
        ]);
        let u = Prior::fit(&pop);
        assert!(u.alpha < 1.0 && u.beta < 1.0, "{u:?}");
        // Every task near a pass rate of 0.3: a concentrated prior around it.
        let c = Prior::fit(&vec![
            Outcomes {
                attempts: 10,
                passes: 3
            };
            50
        ]);
        let mean = c.alpha / (c.alpha + c.beta);
        assert!(
            (mean - 0.3).abs() < 0.05 && c.alpha + c.beta >= 20.0,
            "{c:?}"
        );
        // With the U-shaped prior, agreeing outcomes push a task down hard and mixed ones up.
        let solved = u.mixed_group(
            Outcomes {
                attempts: 8,
                passes: 8,
            },
            8,
        );
        let mixed = u.mixed_group(
            Outcomes {
                attempts: 8,
                passes: 4,
            },
            8,
        );
        let fresh = u.mixed_group(Outcomes::default(), 8);
        assert!(mixed > 0.9 && solved < 0.2 && fresh > solved && fresh < mixed);
    }

    /// A training run in miniature: hidden pass rates, groups of 8 played on each drawn task,
    /// outcomes recorded, the next batch drawn from them. Returns the share of mixed groups
    /// over the whole run and over its last 20 steps.
    fn simulate(curriculum: bool) -> (f64, f64) {
        const TASKS: usize = 2_000;
        const BATCH: usize = 128;
        const STEPS: u64 = 60;
        const GROUP: u32 = 8;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2026);
        // 45% never solved, 35% always, 20% in between.
        let rates: Vec<f64> = (0..TASKS)
            .map(|_| match rng.random::<f64>() {
                x if x < 0.45 => 0.0,
                x if x < 0.80 => 1.0,
                _ => rng.random_range(0.1..0.9),
            })
            .collect();
        let ids: Vec<String> = (0..TASKS).map(|i| format!("t{i}")).collect();
        let mut seen = vec![Outcomes::default(); TASKS];
        let (mut mixed, mut groups) = (0u64, 0u64);
        let mut late = 0u64;
        let none = HashSet::new();
        for step in 0..STEPS {
            let drawn: Vec<usize> = if curriculum {
                let prior = Prior::fit(&seen);
                let w: Vec<f64> = seen.iter().map(|&o| prior.mixed_group(o, GROUP)).collect();
                weighted_sample(&ids, &w, step, BATCH, &none)
            } else {
                let index: std::collections::HashMap<&str, usize> = ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| (id.as_str(), i))
                    .collect();
                crate::seeded_sample(&ids, step, BATCH, &none)
                    .into_iter()
                    .map(|id| index[id])
                    .collect()
            };
            for i in drawn {
                let passes = (0..GROUP)
                    .filter(|_| rng.random::<f64>() < rates[i])
                    .count() as u64;
                let m = u64::from(passes > 0 && passes < u64::from(GROUP));
                mixed += m;
                if step >= STEPS - 20 {
                    late += m;
                }
                groups += 1;
                seen[i].attempts += u64::from(GROUP);
                seen[i].passes += passes;
            }
        }
        (
            mixed as f64 / groups as f64,
            late as f64 / (20 * BATCH) as f64,
        )
    }

    /// `cargo test -p envsynth-registry --lib curriculum -- --nocapture` prints the figures the
    /// README quotes.
    #[test]
    fn a_curriculum_draws_more_mixed_groups_than_a_uniform_draw() {
        let (uniform, weighted) = (simulate(false), simulate(true));
        println!(
            "mixed groups of 8, 60 steps of 128 tasks out of 2,000 (20% neither always nor never solved): \
             uniform {:.1}% (last 20 steps {:.1}%), curriculum {:.1}% (last 20 steps {:.1}%)",
            100.0 * uniform.0,
            100.0 * uniform.1,
            100.0 * weighted.0,
            100.0 * weighted.1
        );
        assert!(weighted.0 > 2.0 * uniform.0, "{uniform:?} vs {weighted:?}");
        assert!(weighted.1 > 2.5 * uniform.1, "{uniform:?} vs {weighted:?}");
    }

    #[test]
    fn weighted_sample_is_proportional_reproducible_and_honours_exclusions() {
        let ids: Vec<String> = (0..4).map(|i| format!("t{i}")).collect();
        let weights = [1.0, 2.0, 4.0, 0.0];
        let none = HashSet::new();
        let mut firsts = [0u32; 4];
        for seed in 0..7000 {
            let s = weighted_sample(&ids, &weights, seed, 2, &none);
            assert_eq!(s.len(), 2);
            assert_ne!(s[0], s[1]);
            assert!(
                !s.contains(&3),
                "a zero weight comes after every positive one"
            );
            firsts[s[0]] += 1;
        }
        // First draws in proportion 1 : 2 : 4 (expected 1000, 2000, 4000).
        for (i, want) in [(0, 1000.0), (1, 2000.0), (2, 4000.0)] {
            let got = f64::from(firsts[i]);
            assert!((got - want).abs() < 0.1 * want, "{firsts:?}");
        }
        assert_eq!(
            weighted_sample(&ids, &weights, 5, 3, &none),
            weighted_sample(&ids, &weights, 5, 3, &none)
        );
        assert_eq!(weighted_sample(&ids, &weights, 5, 9, &none).len(), 4);
        let excluded: HashSet<&str> = ["t2"].into();
        let s = weighted_sample(&ids, &weights, 5, 4, &excluded);
        assert_eq!(s.len(), 3);
        assert!(!s.contains(&2));
        // Excluding one task leaves the others' relative order as it was.
        let all: Vec<usize> = weighted_sample(&ids, &weights, 5, 4, &none)
            .into_iter()
            .filter(|&i| i != 2)
            .collect();
        assert_eq!(s, all);
    }
}
