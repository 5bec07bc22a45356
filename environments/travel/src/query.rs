//! The trip request and its constraints. Every constraint has a stable id that is also the id of
//! the check that tests it; the typed query round-trips through the task's constraint list.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use envsynth_core::TaskError;
use envsynth_core::model::Constraint;

use crate::world::Mode;

pub mod ids {
    pub const WITHIN_SANDBOX: &str = "commonsense.within_sandbox";
    pub const COMPLETE_INFORMATION: &str = "commonsense.complete_information";
    pub const WITHIN_CURRENT_CITY: &str = "commonsense.within_current_city";
    pub const REASONABLE_CITY_ROUTE: &str = "commonsense.reasonable_city_route";
    pub const DIVERSE_RESTAURANTS: &str = "commonsense.diverse_restaurants";
    pub const DIVERSE_ATTRACTIONS: &str = "commonsense.diverse_attractions";
    pub const NON_CONFLICTING_TRANSPORT: &str = "commonsense.non_conflicting_transport";
    pub const MINIMUM_NIGHTS: &str = "commonsense.minimum_nights";
    pub const BUDGET: &str = "hard.budget";
    pub const ROOM_RULE: &str = "hard.room_rule";
    pub const ROOM_TYPE: &str = "hard.room_type";
    pub const CUISINE: &str = "hard.cuisine";
    pub const TRANSPORT: &str = "hard.transport";
    pub const ACCOMMODATION_RATING: &str = "hard.accommodation_rating";
    pub const TIERED_DINING: &str = "hard.tiered_dining";

    /// TravelPlanner's eight commonsense constraints, in evaluation order.
    pub const COMMONSENSE: [&str; 8] = [
        WITHIN_SANDBOX,
        COMPLETE_INFORMATION,
        WITHIN_CURRENT_CITY,
        REASONABLE_CITY_ROUTE,
        DIVERSE_RESTAURANTS,
        DIVERSE_ATTRACTIONS,
        NON_CONFLICTING_TRANSPORT,
        MINIMUM_NIGHTS,
    ];
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Quantifier {
    /// Every restaurant of the day meets the minimum rating.
    All,
    /// At least one restaurant of the day meets it.
    Any,
}

/// One price tier of the conditional dining rule: applies when the night's accommodation costs
/// `min_price <= nightly_price < max_price` per room.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    pub min_price: u32,
    pub max_price: Option<u32>,
    /// Sum of the day's three meals' average cost per person must be below this.
    pub max_meal_cost: Option<u32>,
    pub min_rating: f64,
    pub quantifier: Quantifier,
    /// Every attraction of the day must cost less than this per person.
    pub max_ticket: Option<u32>,
}

/// DeepSeek-V3.2-style conditional constraint: the accommodation's price tier on `day` decides the
/// dining and sightseeing rules for that day.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TierRule {
    pub day: u32,
    pub tiers: Vec<Tier>,
}

impl TierRule {
    pub fn tier_for(&self, nightly_price: u32) -> Option<&Tier> {
        self.tiers
            .iter()
            .find(|t| nightly_price >= t.min_price && t.max_price.is_none_or(|m| nightly_price < m))
    }
}

/// The room-type requirement, as in TravelPlanner.
pub const ROOM_TYPE_REQUIREMENTS: [&str; 4] = [
    "entire home",
    "private room",
    "shared room",
    "not shared room",
];

pub fn room_type_ok(requirement: &str, room_type: &str) -> bool {
    if requirement == "not shared room" {
        room_type != "shared room"
    } else {
        room_type == requirement
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    pub origin: String,
    pub destination_state: String,
    /// For single-city trips the destination is one named city.
    pub destination_city: Option<String>,
    pub start_day: i64,
    pub days: u32,
    pub visiting_cities: u32,
    pub people: u32,
    pub budget: u32,
    pub room_rule: Option<String>,
    pub room_type: Option<String>,
    pub cuisines: Vec<String>,
    pub excluded_modes: Vec<Mode>,
    pub min_accommodation_rating: Option<f64>,
    pub tiered: Option<TierRule>,
}

fn c(id: &str, description: String, params: Value) -> Constraint {
    Constraint {
        id: id.to_string(),
        description,
        params,
    }
}

fn field<T: serde::de::DeserializeOwned>(con: &Constraint, name: &str) -> Result<T, TaskError> {
    let v = con.params.get(name).cloned().unwrap_or(Value::Null);
    serde_json::from_value(v)
        .map_err(|e| TaskError::Malformed(format!("constraint {}: params.{name}: {e}", con.id)))
}

impl Query {
    pub fn date(&self, day: u32) -> String {
        crate::date::iso(self.start_day + day as i64 - 1)
    }

    /// The constraint list, commonsense first, with descriptions shown to the agent.
    /// `names` maps city ids to display names.
    pub fn to_constraints(&self, city_name: &dyn Fn(&str) -> String) -> Vec<Constraint> {
        use ids::*;
        let dest = match &self.destination_city {
            Some(cid) => city_name(cid),
            None => self.destination_state.clone(),
        };
        let mut out = vec![
            c(WITHIN_SANDBOX, "Use only flights, routes, accommodations, restaurants and attractions that the tools return, by their ids.".into(), json!({})),
            c(COMPLETE_INFORMATION, format!(
                "Give exactly {} days starting {}; every day has breakfast, lunch and dinner, every day without travel has at least one attraction, and every night but the last has an accommodation.",
                self.days, self.date(1)), json!({"days": self.days, "start_date": self.date(1)})),
            c(WITHIN_CURRENT_CITY, "Meals and attractions lie in one of the day's cities; each night's accommodation lies in the city where the day ends; each trip leg starts where the previous day ended.".into(), json!({})),
            c(REASONABLE_CITY_ROUTE, format!(
                "Start from {} on day 1, visit {} distinct {} in {} once each (no revisits), and return to {} on the last day.",
                city_name(&self.origin), self.visiting_cities,
                if self.visiting_cities == 1 { "city" } else { "cities" }, dest, city_name(&self.origin)),
                json!({"origin": self.origin, "destination_state": self.destination_state,
                       "destination_city": self.destination_city, "visiting_cities": self.visiting_cities})),
            c(DIVERSE_RESTAURANTS, "Do not eat at the same restaurant twice.".into(), json!({})),
            c(DIVERSE_ATTRACTIONS, "Do not visit the same attraction twice.".into(), json!({})),
            c(NON_CONFLICTING_TRANSPORT, "Do not combine self-driving with flights or taxis on the same trip.".into(), json!({})),
            c(MINIMUM_NIGHTS, "Stay at each accommodation for at least its minimum number of consecutive nights.".into(), json!({})),
            c(BUDGET, format!(
                "The whole trip for {} {} costs at most ${}.", self.people,
                if self.people == 1 { "traveller" } else { "travellers" }, self.budget),
                json!({"budget": self.budget, "people": self.people})),
        ];
        if let Some(rule) = &self.room_rule {
            out.push(c(
                ROOM_RULE,
                format!("Every accommodation must allow {rule}."),
                json!({"rule": rule}),
            ));
        }
        if let Some(t) = &self.room_type {
            out.push(c(
                ROOM_TYPE,
                format!("Every accommodation must be a {t}."),
                json!({"room_type": t}),
            ));
        }
        if !self.cuisines.is_empty() {
            out.push(c(CUISINE, format!(
                "Across the trip's meals outside {}, include each of these cuisines at least once: {}.",
                city_name(&self.origin), self.cuisines.join(", ")), json!({"cuisines": self.cuisines})));
        }
        if !self.excluded_modes.is_empty() {
            let names: Vec<&str> = self.excluded_modes.iter().map(|m| m.phrase()).collect();
            out.push(c(
                TRANSPORT,
                format!("Do not use {}.", names.join(" or ")),
                json!({"excluded": self.excluded_modes}),
            ));
        }
        if let Some(r) = self.min_accommodation_rating {
            out.push(c(
                ACCOMMODATION_RATING,
                format!("Every accommodation must be rated at least {r:.1}."),
                json!({"min_rating": r}),
            ));
        }
        if let Some(rule) = &self.tiered {
            let mut parts = Vec::new();
            for t in &rule.tiers {
                let range = match t.max_price {
                    Some(m) => format!("${}–${}", t.min_price, m.saturating_sub(1)),
                    None => format!("${} or more", t.min_price),
                };
                let mut s = format!("if that night's accommodation costs {range} per room, ");
                let mut rules = Vec::new();
                if let Some(m) = t.max_meal_cost {
                    rules.push(format!(
                        "the day's three meals must cost less than ${m} per person in total"
                    ));
                }
                rules.push(match t.quantifier {
                    Quantifier::All => format!(
                        "every restaurant that day must be rated at least {:.1}",
                        t.min_rating
                    ),
                    Quantifier::Any => format!(
                        "at least one restaurant that day must be rated at least {:.1}",
                        t.min_rating
                    ),
                });
                if let Some(m) = t.max_ticket {
                    rules.push(format!(
                        "every attraction that day must cost less than ${m} per person"
                    ));
                }
                s.push_str(&rules.join(", "));
                parts.push(s);
            }
            out.push(c(
                TIERED_DINING,
                format!("On day {}: {}.", rule.day, parts.join("; "),),
                serde_json::to_value(rule).unwrap_or(Value::Null),
            ));
        }
        out
    }

    /// Rebuild the query from a task's constraint list, naming the constraint and field on error.
    pub fn from_constraints(constraints: &[Constraint]) -> Result<Query, TaskError> {
        use ids::*;
        let find = |id: &str| constraints.iter().find(|k| k.id == id);
        let need = |id: &str| {
            find(id).ok_or_else(|| TaskError::Malformed(format!("missing constraint {id}")))
        };
        for k in constraints {
            let known = COMMONSENSE.contains(&k.id.as_str())
                || [
                    BUDGET,
                    ROOM_RULE,
                    ROOM_TYPE,
                    CUISINE,
                    TRANSPORT,
                    ACCOMMODATION_RATING,
                    TIERED_DINING,
                ]
                .contains(&k.id.as_str());
            if !known {
                return Err(TaskError::Malformed(format!(
                    "unknown constraint id {}",
                    k.id
                )));
            }
        }
        for id in COMMONSENSE {
            need(id)?;
        }
        let info = need(COMPLETE_INFORMATION)?;
        let route = need(REASONABLE_CITY_ROUTE)?;
        let budget = need(BUDGET)?;
        let start: String = field(info, "start_date")?;
        let start_day = crate::date::parse_iso(&start).ok_or_else(|| {
            TaskError::Malformed(format!(
                "constraint {COMPLETE_INFORMATION}: params.start_date `{start}` is not a date"
            ))
        })?;
        let q = Query {
            origin: field(route, "origin")?,
            destination_state: field(route, "destination_state")?,
            destination_city: field(route, "destination_city")?,
            start_day,
            days: field(info, "days")?,
            visiting_cities: field(route, "visiting_cities")?,
            people: field(budget, "people")?,
            budget: field(budget, "budget")?,
            room_rule: find(ROOM_RULE).map(|k| field(k, "rule")).transpose()?,
            room_type: find(ROOM_TYPE).map(|k| field(k, "room_type")).transpose()?,
            cuisines: find(CUISINE)
                .map(|k| field(k, "cuisines"))
                .transpose()?
                .unwrap_or_default(),
            excluded_modes: find(TRANSPORT)
                .map(|k| field(k, "excluded"))
                .transpose()?
                .unwrap_or_default(),
            min_accommodation_rating: find(ACCOMMODATION_RATING)
                .map(|k| field(k, "min_rating"))
                .transpose()?,
            tiered: find(TIERED_DINING)
                .map(|k| {
                    serde_json::from_value(k.params.clone()).map_err(|e| {
                        TaskError::Malformed(format!("constraint {TIERED_DINING}: params: {e}"))
                    })
                })
                .transpose()?,
        };
        if q.days == 0 || q.days > 31 || q.people == 0 || q.visiting_cities == 0 {
            return Err(TaskError::Malformed(
                "constraints give an empty trip (days, people or visiting_cities is 0)".into(),
            ));
        }
        if let Some(rule) = &q.tiered
            && (rule.day == 0 || rule.day >= q.days || rule.tiers.is_empty())
        {
            return Err(TaskError::Malformed(format!(
                "constraint {TIERED_DINING}: params.day must be a day with a night's stay (1..{}) and tiers non-empty",
                q.days - 1
            )));
        }
        if let Some(t) = &q.room_type
            && !ROOM_TYPE_REQUIREMENTS.contains(&t.as_str())
        {
            return Err(TaskError::Malformed(format!(
                "constraint {ROOM_TYPE}: unknown room type `{t}`"
            )));
        }
        Ok(q)
    }

    /// Whether a stay of `nights` nights at `h` meets every stay constraint of this query
    /// (minimum nights, room rule, room type, rating), except the one whose check id is `skip`.
    pub fn accepts_stay(
        &self,
        h: &crate::world::Accommodation,
        nights: u32,
        skip: Option<&str>,
    ) -> bool {
        let on = |id: &str| skip != Some(id);
        (!on(ids::MINIMUM_NIGHTS) || h.min_nights <= nights)
            && (!on(ids::ROOM_RULE)
                || self
                    .room_rule
                    .as_ref()
                    .is_none_or(|r| !h.forbids.contains(r)))
            && (!on(ids::ROOM_TYPE)
                || self
                    .room_type
                    .as_ref()
                    .is_none_or(|t| room_type_ok(t, &h.room_type)))
            && (!on(ids::ACCOMMODATION_RATING)
                || self.min_accommodation_rating.is_none_or(|m| h.rating >= m))
    }

    /// Ids of every check the verifier reports for this query, in report order.
    pub fn check_ids(&self) -> Vec<&'static str> {
        use ids::*;
        let mut v: Vec<&'static str> = COMMONSENSE.to_vec();
        v.push(BUDGET);
        if self.room_rule.is_some() {
            v.push(ROOM_RULE);
        }
        if self.room_type.is_some() {
            v.push(ROOM_TYPE);
        }
        if !self.cuisines.is_empty() {
            v.push(CUISINE);
        }
        if !self.excluded_modes.is_empty() {
            v.push(TRANSPORT);
        }
        if self.min_accommodation_rating.is_some() {
            v.push(ACCOMMODATION_RATING);
        }
        if self.tiered.is_some() {
            v.push(TIERED_DINING);
        }
        v
    }
}
