//! Query strings and the task filter. Query strings are read by hand so that an unknown or
//! repeated parameter is an error naming it, and numbers are checked with the parameter named.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::Deserialize;

use envsynth_registry::{PassBand, TaskFilter};

use crate::ApiError;

/// A query string's parameters, consumed one by one; whatever is left over is unknown.
pub struct Params(BTreeMap<String, String>);

impl Params {
    pub fn new(pairs: Vec<(String, String)>) -> Result<Params, ApiError> {
        let mut map = BTreeMap::new();
        for (k, v) in pairs {
            if map.contains_key(&k) {
                return Err(ApiError::bad_request(format!(
                    "query parameter `{k}` is given more than once"
                )));
            }
            map.insert(k, v);
        }
        Ok(Params(map))
    }

    pub fn text(&mut self, key: &str) -> Option<String> {
        self.0.remove(key)
    }

    pub fn number<T: FromStr>(&mut self, key: &str) -> Result<Option<T>, ApiError> {
        match self.0.remove(key) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!(
                    "query parameter `{key}`: `{}` is not a valid number here",
                    v.escape_debug()
                ))
            }),
        }
    }

    /// Refuse parameters nobody read.
    pub fn finish(self, known: &[&str]) -> Result<(), ApiError> {
        match self.0.keys().next() {
            None => Ok(()),
            Some(k) => Err(ApiError::bad_request(format!(
                "unknown query parameter `{}` (known: {})",
                k.escape_debug(),
                known.join(", ")
            ))),
        }
    }
}

/// Which tasks: the same fields in a query string and in a JSON body.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterFields {
    /// Environment id.
    pub env: Option<String>,
    /// Generator difficulty level.
    pub level: Option<String>,
    /// Task set, `name@version`.
    pub set: Option<String>,
    /// Split of the task set.
    pub split: Option<String>,
    /// Measured difficulty band: the policy whose rollouts count ...
    pub policy: Option<String>,
    /// ... and the pass-rate range.
    pub min_pass: Option<f64>,
    pub max_pass: Option<f64>,
    pub min_attempts: Option<u64>,
}

pub const FILTER_KEYS: [&str; 8] = [
    "env",
    "level",
    "set",
    "split",
    "policy",
    "min_pass",
    "max_pass",
    "min_attempts",
];

impl FilterFields {
    pub fn from_params(p: &mut Params) -> Result<FilterFields, ApiError> {
        Ok(FilterFields {
            env: p.text("env"),
            level: p.text("level"),
            set: p.text("set"),
            split: p.text("split"),
            policy: p.text("policy"),
            min_pass: p.number("min_pass")?,
            max_pass: p.number("max_pass")?,
            min_attempts: p.number("min_attempts")?,
        })
    }

    /// Check the combination and build the store's filter; `at` prefixes field names in
    /// messages (`filter.` in a body, empty in a query string).
    pub fn into_filter(self, at: &str) -> Result<TaskFilter, ApiError> {
        let set = match self.set {
            None => None,
            Some(s) => match s.split_once('@') {
                Some((name, version)) if !name.is_empty() && !version.is_empty() => {
                    Some((name.to_string(), version.to_string()))
                }
                _ => {
                    return Err(ApiError::invalid(format!(
                        "{at}set: `{}` is not `name@version`",
                        s.escape_debug()
                    )));
                }
            },
        };
        if self.split.is_some() && set.is_none() {
            return Err(ApiError::invalid(format!(
                "{at}split: a split belongs to a task set; give `set` too"
            )));
        }
        let banded =
            self.min_pass.is_some() || self.max_pass.is_some() || self.min_attempts.is_some();
        let pass_band = match self.policy {
            None if banded => {
                return Err(ApiError::invalid(format!(
                    "{at}policy: a difficulty band (min_pass, max_pass, min_attempts) is measured for a policy; give `policy`"
                )));
            }
            None => None,
            Some(policy) => {
                let (min, max) = (self.min_pass.unwrap_or(0.0), self.max_pass.unwrap_or(1.0));
                for (name, v) in [("min_pass", min), ("max_pass", max)] {
                    if !(0.0..=1.0).contains(&v) {
                        return Err(ApiError::invalid(format!(
                            "{at}{name}: {v} is not a pass rate in [0, 1]"
                        )));
                    }
                }
                if min > max {
                    return Err(ApiError::invalid(format!(
                        "{at}min_pass: {min} is above max_pass {max}"
                    )));
                }
                Some(PassBand {
                    policy,
                    min,
                    max,
                    min_attempts: self.min_attempts.unwrap_or(1).max(1),
                })
            }
        };
        Ok(TaskFilter {
            env_id: self.env,
            level: self.level,
            set,
            split: self.split,
            pass_band,
        })
    }
}

/// A stable key of a filter, for caching what it selects.
pub fn filter_key(f: &TaskFilter) -> String {
    let band = f
        .pass_band
        .as_ref()
        .map(|b| format!("{:?}|{}|{}|{}", b.policy, b.min, b.max, b.min_attempts));
    format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}",
        f.env_id, f.level, f.set, f.split, band
    )
}
