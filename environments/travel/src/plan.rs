//! The submission format (a structured plan) and its cost.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::world::{Mode, World};

pub const PLAN_SCHEMA_JSON: &str = include_str!("../schema/plan.schema.json");

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub days: Vec<DayPlan>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Travel {
    pub from: String,
    pub to: String,
    pub transport: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DayPlan {
    pub day: u32,
    #[serde(default)]
    pub travel: Option<Travel>,
    /// City id where the day ends.
    pub city: String,
    #[serde(default)]
    pub breakfast: Option<String>,
    #[serde(default)]
    pub lunch: Option<String>,
    #[serde(default)]
    pub dinner: Option<String>,
    #[serde(default)]
    pub attractions: Vec<String>,
    #[serde(default)]
    pub accommodation: Option<String>,
}

impl DayPlan {
    pub fn meals(&self) -> [Option<&String>; 3] {
        [
            self.breakfast.as_ref(),
            self.lunch.as_ref(),
            self.dinner.as_ref(),
        ]
    }
    pub fn meal_mut(&mut self, slot: usize) -> &mut Option<String> {
        match slot {
            0 => &mut self.breakfast,
            1 => &mut self.lunch,
            _ => &mut self.dinner,
        }
    }
    /// Is `city` one of this day's cities?
    pub fn touches(&self, city: &str) -> bool {
        self.city == city
            || self
                .travel
                .as_ref()
                .is_some_and(|t| t.from == city || t.to == city)
    }
}

/// The compiled plan schema (used to say precisely where a malformed plan goes wrong).
pub fn plan_validator() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        let schema: Value = serde_json::from_str(PLAN_SCHEMA_JSON).expect("plan schema is JSON");
        jsonschema::validator_for(&schema).expect("plan schema is a valid JSON Schema")
    })
}

/// Parse a submission given as text. Well-formed plans take a direct path (no intermediate
/// JSON tree); anything else goes through [`parse_submission`] for its diagnosis.
pub fn parse_submission_text(text: &str) -> Result<Option<Plan>, String> {
    if let Ok(plan) = serde_json::from_str::<Plan>(text) {
        if plan.days.is_empty() {
            return Ok(None);
        }
        return match size_violation(&plan) {
            None => Ok(Some(plan)),
            Some(e) => Err(e),
        };
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v) => parse_submission(&v),
        Err(_) => parse_submission(&Value::String(text.to_string())),
    }
}

/// Parse a submission into a plan. `Ok(None)` means nothing was delivered.
pub fn parse_submission(submission: &Value) -> Result<Option<Plan>, String> {
    let parsed;
    let value = match submission {
        Value::Null => return Ok(None),
        Value::String(s) => {
            let t = s.trim();
            let t = t
                .strip_prefix("```json")
                .or_else(|| t.strip_prefix("```"))
                .unwrap_or(t);
            let t = t.strip_suffix("```").unwrap_or(t).trim();
            if t.is_empty() {
                return Ok(None);
            }
            parsed = serde_json::from_str::<Value>(t)
                .map_err(|e| format!("the submission text is not JSON: {e}"))?;
            &parsed
        }
        v => v,
    };
    match value {
        Value::Object(o) if o.is_empty() => return Ok(None),
        Value::Object(o)
            if o.len() == 1
                && o.get("days")
                    .and_then(Value::as_array)
                    .is_some_and(|d| d.is_empty()) =>
        {
            return Ok(None);
        }
        _ => {}
    }
    match Plan::deserialize(value) {
        Ok(plan) => {
            // serde accepts what the schema's size limits reject; check those without the
            // (slower) schema validator, which only runs to explain a failure.
            match size_violation(&plan) {
                None => Ok(Some(plan)),
                Some(e) => Err(e),
            }
        }
        Err(serde_err) => match plan_validator().iter_errors(value).next() {
            Some(e) => Err(format!("at `{}`: {e}", e.instance_path())),
            None => Err(serde_err.to_string()),
        },
    }
}

/// The schema's size limits (`maxItems`, `maxLength`, day range), checked on a parsed plan.
fn size_violation(plan: &Plan) -> Option<String> {
    const MAX_ID: usize = 64;
    if plan.days.len() > 31 {
        return Some(format!(
            "at `/days`: {} days, at most 31 allowed",
            plan.days.len()
        ));
    }
    for (i, d) in plan.days.iter().enumerate() {
        if !(1..=31).contains(&d.day) {
            return Some(format!("at `/days/{i}/day`: {} is outside 1..=31", d.day));
        }
        if d.attractions.len() > 16 {
            return Some(format!(
                "at `/days/{i}/attractions`: {} attractions, at most 16 allowed",
                d.attractions.len()
            ));
        }
        let mut fields: Vec<(&str, &str)> = vec![("city", &d.city)];
        for (name, v) in [
            ("breakfast", &d.breakfast),
            ("lunch", &d.lunch),
            ("dinner", &d.dinner),
            ("accommodation", &d.accommodation),
        ] {
            if let Some(v) = v {
                fields.push((name, v));
            }
        }
        if let Some(t) = &d.travel {
            fields.extend([
                ("travel/from", t.from.as_str()),
                ("travel/to", &t.to),
                ("travel/transport", &t.transport),
            ]);
        }
        for (j, a) in d.attractions.iter().enumerate() {
            if a.len() > MAX_ID {
                return Some(format!(
                    "at `/days/{i}/attractions/{j}`: longer than {MAX_ID} characters"
                ));
            }
        }
        if let Some((name, _)) = fields.iter().find(|(_, v)| v.len() > MAX_ID) {
            return Some(format!(
                "at `/days/{i}/{name}`: longer than {MAX_ID} characters"
            ));
        }
    }
    None
}

/// Cost of a plan, by category. Unknown ids cost nothing here; the sandbox check rejects them.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Cost {
    pub transport: u64,
    pub meals: u64,
    pub attractions: u64,
    pub accommodation: u64,
    pub total: u64,
}

pub fn vehicles(people: u32, capacity: u32) -> u64 {
    people.div_ceil(capacity) as u64
}

/// Price of one route for `people` travellers.
pub fn route_cost(mode: Mode, price: u32, people: u32) -> u64 {
    match mode.vehicle_capacity() {
        Some(cap) => price as u64 * vehicles(people, cap),
        None => price as u64 * people as u64,
    }
}

pub fn plan_cost(world: &World, people: u32, plan: &Plan) -> Cost {
    let mut c = Cost::default();
    let p = people as u64;
    for day in &plan.days {
        if let Some(r) = day.travel.as_ref().and_then(|t| world.route(&t.transport)) {
            c.transport += route_cost(r.mode, r.price, people);
        }
        for m in day.meals().into_iter().flatten() {
            if let Some(r) = world.restaurant(m) {
                c.meals += r.average_cost as u64 * p;
            }
        }
        for a in &day.attractions {
            if let Some(a) = world.attraction(a) {
                c.attractions += a.ticket_price as u64 * p;
            }
        }
        if let Some(h) = day
            .accommodation
            .as_ref()
            .and_then(|h| world.accommodation(h))
        {
            c.accommodation += h.nightly_price as u64 * vehicles(people, h.max_occupancy);
        }
    }
    c.total = c.transport + c.meals + c.attractions + c.accommodation;
    c
}
