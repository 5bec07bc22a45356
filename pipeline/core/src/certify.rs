//! Certification: a task is written only if its verifier accepts the planted solution and rejects
//! every single-constraint mutant of it, naming the constraint the mutant breaks.

use serde::{Deserialize, Serialize};

use crate::env::{Rejection, Stage};
use crate::verdict::Verdict;

/// A copy of the planted solution changed to break exactly one constraint.
pub struct Mutant<S> {
    /// The id of the check the mutant must fail.
    pub target: std::borrow::Cow<'static, str>,
    pub solution: S,
}

/// The record of a passed certification, kept in the task.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Certificate {
    /// Check ids whose mutant was rejected with that check failed.
    pub mutants_rejected: Vec<String>,
}

/// Certify `planted` and `mutants` against `verify`. `required` lists every check id that must be
/// covered by at least one mutant.
pub fn certify<S>(
    verify: impl Fn(&S) -> Verdict,
    planted: &S,
    mutants: &[Mutant<S>],
    required: &[&str],
) -> Result<Certificate, Rejection> {
    let verdict = verify(planted);
    if !verdict.passed {
        let failed: Vec<&str> = verdict.failed_checks().collect();
        return Err(Rejection::new(
            Stage::Certify,
            "planted_rejected",
            format!("the planted solution fails {failed:?}"),
        ));
    }
    let mut covered: Vec<String> = Vec::with_capacity(mutants.len());
    for m in mutants {
        let verdict = verify(&m.solution);
        let named = verdict.check(&m.target).is_some_and(|c| !c.passed());
        if verdict.passed || !named {
            let failed: Vec<&str> = verdict.failed_checks().collect();
            return Err(Rejection::new(
                Stage::Certify,
                "mutant_not_caught",
                format!(
                    "mutant for {} was not rejected by that check (failed: {failed:?})",
                    m.target
                ),
            ));
        }
        if !covered.iter().any(|c| *c == m.target) {
            covered.push(m.target.to_string());
        }
    }
    if let Some(missing) = required.iter().find(|id| !covered.iter().any(|c| c == *id)) {
        return Err(Rejection::new(
            Stage::Certify,
            "no_mutant",
            format!("no mutant could be built for {missing}"),
        ));
    }
    Ok(Certificate {
        mutants_rejected: covered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Check;

    fn verify(x: &i32) -> Verdict {
        Verdict::from_checks(
            "t",
            vec![
                Check::new("a.positive", *x > 0, String::new()),
                Check::new("a.small", *x < 10, String::new()),
            ],
        )
    }

    #[test]
    fn accepts_good_and_rejects_uncaught_mutants() {
        let good = [
            Mutant {
                target: "a.positive".into(),
                solution: -1,
            },
            Mutant {
                target: "a.small".into(),
                solution: 11,
            },
        ];
        let cert = certify(verify, &5, &good, &["a.positive", "a.small"]).unwrap();
        assert_eq!(cert.mutants_rejected, vec!["a.positive", "a.small"]);

        let wrong_name = [Mutant {
            target: "a.small".into(),
            solution: -1,
        }];
        assert_eq!(
            certify(verify, &5, &wrong_name, &[]).unwrap_err().code,
            "mutant_not_caught"
        );
        assert_eq!(
            certify(verify, &5, &good[..1], &["a.small"])
                .unwrap_err()
                .code,
            "no_mutant"
        );
        assert_eq!(
            certify(verify, &50, &good, &[]).unwrap_err().code,
            "planted_rejected"
        );
    }
}
