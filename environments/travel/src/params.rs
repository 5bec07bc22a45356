//! Difficulty: named levels and the numeric knobs they resolve to.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use envsynth_core::TaskError;

pub const LEVELS: [&str; 3] = ["easy", "medium", "hard"];

/// The numeric difficulty knobs. A level fixes them; any of them can be overridden.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Knobs {
    /// Trip lengths to draw from (each 3, 5 or 7).
    pub days: Vec<u32>,
    /// Travellers, inclusive range.
    pub people_min: u32,
    pub people_max: u32,
    /// Hard constraints beyond the budget (0..=6).
    pub extra_constraints: u32,
    /// Whether the transport-mode exclusion is always among the extra constraints.
    pub require_transport_constraint: bool,
    /// Budget = reference plan cost × (1 + slack), slack drawn from this range.
    pub budget_slack_min: f64,
    pub budget_slack_max: f64,
    /// Search-space size: cities in the destination state, venues per city, flight density.
    pub state_cities: u32,
    pub accommodations_per_city: u32,
    pub restaurants_per_city: u32,
    pub attractions_per_city: u32,
    /// Probability that a given route has a flight (or a train/bus service) on a given date.
    pub flight_density: f64,
}

impl Knobs {
    pub fn for_level(level: &str) -> Option<Knobs> {
        Some(match level {
            "easy" => Knobs {
                days: vec![3, 5, 7],
                people_min: 1,
                people_max: 1,
                extra_constraints: 0,
                require_transport_constraint: false,
                budget_slack_min: 0.30,
                budget_slack_max: 0.50,
                state_cities: 4,
                accommodations_per_city: 8,
                restaurants_per_city: 14,
                attractions_per_city: 6,
                flight_density: 0.5,
            },
            "medium" => Knobs {
                days: vec![3, 5, 7],
                people_min: 1,
                people_max: 4,
                extra_constraints: 2,
                require_transport_constraint: false,
                budget_slack_min: 0.15,
                budget_slack_max: 0.30,
                state_cities: 5,
                accommodations_per_city: 12,
                restaurants_per_city: 18,
                attractions_per_city: 8,
                flight_density: 0.5,
            },
            "hard" => Knobs {
                days: vec![3, 5, 7],
                people_min: 2,
                people_max: 8,
                extra_constraints: 4,
                require_transport_constraint: true,
                budget_slack_min: 0.03,
                budget_slack_max: 0.12,
                state_cities: 6,
                accommodations_per_city: 16,
                restaurants_per_city: 24,
                attractions_per_city: 10,
                flight_density: 0.6,
            },
            _ => return None,
        })
    }

    /// The level's knobs with `overrides` (a JSON object of knob names) applied and checked.
    pub fn resolve(level: &str, overrides: &Value) -> Result<Knobs, TaskError> {
        let base = Knobs::for_level(level).ok_or_else(|| {
            TaskError::InvalidRequest(format!(
                "unknown level `{level}` (expected one of {LEVELS:?})"
            ))
        })?;
        let knobs = match overrides {
            Value::Null => base,
            Value::Object(o) if o.is_empty() => base,
            Value::Object(o) => {
                let mut merged = serde_json::to_value(&base)
                    .map_err(|e| TaskError::InvalidRequest(e.to_string()))?;
                if let Value::Object(m) = &mut merged {
                    for (k, v) in o {
                        if !m.contains_key(k) {
                            return Err(TaskError::InvalidRequest(format!(
                                "unknown difficulty parameter `{k}` (known: {})",
                                m.keys().cloned().collect::<Vec<_>>().join(", ")
                            )));
                        }
                        m.insert(k.clone(), v.clone());
                    }
                }
                serde_json::from_value(merged)
                    .map_err(|e| TaskError::InvalidRequest(format!("difficulty parameters: {e}")))?
            }
            other => {
                return Err(TaskError::InvalidRequest(format!(
                    "difficulty overrides must be a JSON object, got {other}"
                )));
            }
        };
        knobs.check()?;
        Ok(knobs)
    }

    fn check(&self) -> Result<(), TaskError> {
        let bad = |field: &str, why: &str| {
            Err(TaskError::InvalidRequest(format!(
                "difficulty parameter `{field}` {why}"
            )))
        };
        if self.days.is_empty() || self.days.iter().any(|d| ![3, 5, 7].contains(d)) {
            return bad("days", "must be a non-empty list of 3, 5 or 7");
        }
        if self.people_min < 1 || self.people_max > 8 || self.people_min > self.people_max {
            return bad(
                "people_min/people_max",
                "must satisfy 1 <= people_min <= people_max <= 8",
            );
        }
        if self.extra_constraints > 6 {
            return bad("extra_constraints", "must be at most 6");
        }
        if !(0.0..=5.0).contains(&self.budget_slack_min)
            || !(0.0..=5.0).contains(&self.budget_slack_max)
            || self.budget_slack_min > self.budget_slack_max
        {
            return bad(
                "budget_slack_min/budget_slack_max",
                "must satisfy 0 <= min <= max <= 5",
            );
        }
        if !(3..=8).contains(&self.state_cities) {
            return bad("state_cities", "must be between 3 and 8");
        }
        if !(4..=60).contains(&self.accommodations_per_city) {
            return bad("accommodations_per_city", "must be between 4 and 60");
        }
        if !(6..=80).contains(&self.restaurants_per_city) {
            return bad("restaurants_per_city", "must be between 6 and 80");
        }
        if !(3..=60).contains(&self.attractions_per_city) {
            return bad("attractions_per_city", "must be between 3 and 60");
        }
        if !(0.0..=1.0).contains(&self.flight_density) {
            return bad("flight_density", "must be between 0 and 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn overrides_are_checked_and_named() {
        assert_eq!(
            Knobs::resolve("hard", &json!({"people_max": 3, "people_min": 2}))
                .unwrap()
                .people_max,
            3
        );
        let e = Knobs::resolve("medium", &json!({"peeple": 3}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("peeple"), "{e}");
        let e = Knobs::resolve("medium", &json!({"days": [4]}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`days`"), "{e}");
        let e = Knobs::resolve("medium", &json!({"state_cities": "many"}))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("state_cities") || e.contains("invalid type"),
            "{e}"
        );
        assert!(
            Knobs::resolve("legendary", &Value::Null)
                .unwrap_err()
                .to_string()
                .contains("legendary")
        );
    }
}
