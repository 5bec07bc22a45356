//! TravelPlanner's metric groups over a set of verdicts: delivery rate, commonsense and hard
//! constraint micro/macro pass rates, and final pass rate. Check groups come from check ids
//! (`commonsense.*`, `hard.*`).

use serde::Serialize;

use crate::verdict::{FailureKind, Verdict};

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Metrics {
    /// Number of verdicts.
    pub n: usize,
    /// Verdicts masked as infrastructure or task failures (excluded from every rate below).
    pub masked: usize,
    pub delivery_rate: f64,
    pub commonsense_micro: f64,
    pub commonsense_macro: f64,
    pub hard_micro: f64,
    pub hard_macro: f64,
    pub final_pass_rate: f64,
    pub mean_reward: f64,
}

fn ratio(num: usize, den: usize) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// Aggregate verdicts. Masked verdicts are counted but excluded from the rates.
pub fn aggregate<'a>(verdicts: impl IntoIterator<Item = &'a Verdict>) -> Metrics {
    let (mut n, mut masked, mut scored, mut delivered, mut final_pass) = (0, 0, 0, 0, 0);
    let (mut cs_pass, mut cs_total, mut cs_all) = (0, 0, 0);
    let (mut hard_pass, mut hard_total, mut hard_all) = (0, 0, 0);
    let mut reward = 0.0;
    for v in verdicts {
        n += 1;
        if v.mask {
            masked += 1;
            continue;
        }
        scored += 1;
        reward += v.reward;
        if !matches!(
            v.failure_kind,
            FailureKind::EmptySubmission | FailureKind::MalformedSubmission
        ) {
            delivered += 1;
        }
        let (mut cs_ok, mut hard_ok) = (true, true);
        for c in &v.checks {
            match c.group() {
                "commonsense" => {
                    cs_total += 1;
                    cs_pass += c.passed() as usize;
                    cs_ok &= c.passed();
                }
                "hard" => {
                    hard_total += 1;
                    hard_pass += c.passed() as usize;
                    hard_ok &= c.passed();
                }
                _ => {}
            }
        }
        cs_all += cs_ok as usize;
        hard_all += hard_ok as usize;
        final_pass += v.passed as usize;
    }
    Metrics {
        n,
        masked,
        delivery_rate: ratio(delivered, scored),
        commonsense_micro: ratio(cs_pass, cs_total),
        commonsense_macro: ratio(cs_all, scored),
        hard_micro: ratio(hard_pass, hard_total),
        hard_macro: ratio(hard_all, scored),
        final_pass_rate: ratio(final_pass, scored),
        mean_reward: if scored == 0 {
            0.0
        } else {
            reward / scored as f64
        },
    }
}

/// The unbiased pass@k estimator over `n` attempts with `c` passes, 1 - C(n-c, k) / C(n, k)
/// (Chen et al., 2021); `None` when there are fewer than `k` attempts.
pub fn pass_at_k(n: u64, c: u64, k: u64) -> Option<f64> {
    if k == 0 || n < k || c > n {
        return None;
    }
    if n - c < k {
        return Some(1.0);
    }
    let mut fail = 1.0;
    for i in (n - c + 1)..=n {
        fail *= 1.0 - k as f64 / i as f64;
    }
    Some(1.0 - fail)
}

/// The unbiased pass^k estimator over `n` attempts with `c` passes, C(c, k) / C(n, k): the
/// chance that k attempts drawn from them all pass (τ-bench's reliability measure); `None`
/// when there are fewer than `k` attempts.
pub fn pass_hat_k(n: u64, c: u64, k: u64) -> Option<f64> {
    if k == 0 || n < k || c > n {
        return None;
    }
    Some((0..k).fold(1.0, |p, i| {
        p * (c.saturating_sub(i)) as f64 / (n - i) as f64
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Check;

    /// Both estimators against counting the k-subsets of the attempts directly.
    #[test]
    fn pass_at_k_and_pass_hat_k_count_the_subsets_of_attempts() {
        for n in 1..=7u64 {
            for c in 0..=n {
                for k in 1..=n {
                    // Attempts 0..c pass; count the k-subsets with any pass and with all.
                    let (mut any, mut all, mut subsets) = (0u64, 0u64, 0u64);
                    for mask in 0u32..(1 << n) {
                        if u64::from(mask.count_ones()) != k {
                            continue;
                        }
                        subsets += 1;
                        let passed = u64::from((mask & ((1u32 << c) - 1)).count_ones());
                        any += u64::from(passed > 0);
                        all += u64::from(passed == k);
                    }
                    let at = pass_at_k(n, c, k).unwrap();
                    let hat = pass_hat_k(n, c, k).unwrap();
                    assert!(
                        (at - any as f64 / subsets as f64).abs() < 1e-12,
                        "{n} {c} {k}"
                    );
                    assert!(
                        (hat - all as f64 / subsets as f64).abs() < 1e-12,
                        "{n} {c} {k}"
                    );
                }
            }
        }
        assert_eq!((pass_at_k(2, 1, 3), pass_hat_k(2, 1, 3)), (None, None));
        assert_eq!((pass_at_k(2, 1, 0), pass_hat_k(2, 1, 0)), (None, None));
    }

    #[test]
    fn groups_and_masking() {
        let ok = Verdict::from_checks(
            "a",
            vec![
                Check::new("commonsense.x", true, String::new()),
                Check::new("hard.y", true, String::new()),
            ],
        );
        let bad = Verdict::from_checks(
            "b",
            vec![
                Check::new("commonsense.x", true, String::new()),
                Check::new("hard.y", false, String::new()),
            ],
        );
        let empty = Verdict::rejected(
            "c",
            FailureKind::EmptySubmission,
            "empty".into(),
            ["commonsense.x".into(), "hard.y".into()],
        );
        let broken = Verdict::rejected("d", FailureKind::InvalidTask, "bad".into(), []);
        let m = aggregate([&ok, &bad, &empty, &broken]);
        assert_eq!((m.n, m.masked), (4, 1));
        assert!((m.delivery_rate - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.commonsense_micro - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.hard_micro - 1.0 / 3.0).abs() < 1e-12);
        assert!((m.hard_macro - 1.0 / 3.0).abs() < 1e-12);
        assert!((m.final_pass_rate - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn pass_at_k_is_the_unbiased_estimator() {
        assert!((super::pass_at_k(10, 3, 1).unwrap() - 0.3).abs() < 1e-12);
        // 1 - C(7,5)/C(10,5) = 1 - 21/252
        assert!((super::pass_at_k(10, 3, 5).unwrap() - (1.0 - 21.0 / 252.0)).abs() < 1e-12);
        assert_eq!(super::pass_at_k(10, 6, 5), Some(1.0));
        assert_eq!(super::pass_at_k(4, 0, 4), Some(0.0));
        assert_eq!(super::pass_at_k(3, 1, 4), None);
    }
}
