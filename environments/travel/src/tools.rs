//! The agent's tools: pure functions of (world, query, arguments). Arguments are validated
//! against each tool's JSON Schema; a bad call returns a structured error, never a panic.

use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::{Value, json};

use envsynth_core::model::{ToolErrorCode, ToolResult, ToolSpec};

use crate::plan::{Plan, parse_submission, plan_cost};
use crate::query::Query;
use crate::world::{Route, World};

pub const TOOLS_JSON: &str = include_str!("../schema/tools.json");

pub struct Toolset {
    pub specs: std::sync::Arc<Vec<ToolSpec>>,
    validators: Vec<jsonschema::Validator>,
}

#[derive(Deserialize)]
struct ToolsFile {
    tools: Vec<ToolSpec>,
}

/// The tool specs and their compiled argument validators (built once per process).
pub fn toolset() -> &'static Toolset {
    static T: OnceLock<Toolset> = OnceLock::new();
    T.get_or_init(|| {
        let file: ToolsFile = serde_json::from_str(TOOLS_JSON).expect("schema/tools.json parses");
        let validators = file
            .tools
            .iter()
            .map(|t| {
                jsonschema::validator_for(&t.parameters).expect("tool parameter schema compiles")
            })
            .collect();
        Toolset {
            specs: std::sync::Arc::new(file.tools),
            validators,
        }
    })
}

fn err(code: ToolErrorCode, message: impl Into<String>) -> ToolResult {
    ToolResult::Error {
        code,
        message: message.into(),
    }
}

fn route_json(r: &Route) -> Value {
    let per_vehicle = r.mode.vehicle_capacity();
    json!({
        "id": r.id, "mode": r.mode, "from": r.from, "to": r.to, "date": r.date, "service": r.service,
        "departure": r.departure, "duration_min": r.duration_min, "distance_km": r.distance_km, "price": r.price,
        "price_basis": if per_vehicle.is_some() { "per_vehicle" } else { "per_person" },
        "vehicle_capacity": per_vehicle,
    })
}

fn s<'a>(args: &'a Value, key: &str) -> &'a str {
    args.get(key).and_then(Value::as_str).unwrap_or("")
}

pub fn call(world: &World, q: &Query, name: &str, args: &Value) -> ToolResult {
    let tools = toolset();
    let Some(i) = tools.specs.iter().position(|t| t.name == name) else {
        let names: Vec<&str> = tools.specs.iter().map(|t| t.name.as_str()).collect();
        return err(
            ToolErrorCode::UnknownTool,
            format!("no tool named `{name}`; tools are {}", names.join(", ")),
        );
    };
    if let Some(e) = tools.validators[i].iter_errors(args).next() {
        let at = e.instance_path().to_string();
        let at = if at.is_empty() {
            "arguments".to_string()
        } else {
            format!("arguments{at}")
        };
        return err(
            ToolErrorCode::InvalidArguments,
            format!("{name}: {at}: {e}"),
        );
    }
    let city = |key: &str| {
        let id = s(args, key);
        world.city(id).ok_or_else(|| {
            err(
                ToolErrorCode::NotFound,
                format!("{name}: no city with id `{id}` (use list_cities)"),
            )
        })
    };
    let result = match name {
        "list_states" => json!({"states": world.states}),
        "list_cities" => {
            let state = s(args, "state");
            if !world.states.iter().any(|x| x.name == state) {
                return err(
                    ToolErrorCode::NotFound,
                    format!("list_cities: no state named `{state}` (use list_states)"),
                );
            }
            json!({"cities": world.cities.iter().filter(|c| c.state == state).collect::<Vec<_>>()})
        }
        "get_city" => match city("city") {
            Ok(c) => json!({"city": c}),
            Err(e) => return e,
        },
        "search_flights" | "search_ground_transport" => {
            let (from, to) = match (city("origin"), city("destination")) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) => return e,
            };
            let date = s(args, "date");
            if crate::date::parse_iso(date).is_none() {
                return err(
                    ToolErrorCode::InvalidArguments,
                    format!("{name}: arguments/date: `{date}` is not a calendar date"),
                );
            }
            let flights = name == "search_flights";
            let found: Vec<Value> = world
                .routes
                .iter()
                .filter(|r| r.from == from.id && r.to == to.id)
                .filter(|r| (r.mode == crate::world::Mode::Flight) == flights)
                .filter(|r| r.date.as_deref().is_none_or(|d| d == date))
                .map(route_json)
                .collect();
            if flights {
                json!({"flights": found})
            } else {
                json!({"routes": found})
            }
        }
        "get_distance" => match (city("origin"), city("destination")) {
            (Ok(a), Ok(b)) => match world.routes.iter().find(|r| r.from == a.id && r.to == b.id) {
                Some(r) => json!({"distance_km": r.distance_km, "duration_min": r.duration_min}),
                None => json!({"distance_km": 0, "duration_min": 0}),
            },
            (Err(e), _) | (_, Err(e)) => return e,
        },
        "search_accommodations" => {
            let c = match city("city") {
                Ok(c) => c,
                Err(e) => return e,
            };
            let room_type = args.get("room_type").and_then(Value::as_str);
            let max_price = args.get("max_price").and_then(Value::as_u64);
            let min_rating = args.get("min_rating").and_then(Value::as_f64);
            let allows = args.get("allows").and_then(Value::as_str);
            let mut found: Vec<_> = world
                .accommodations
                .iter()
                .filter(|h| h.city == c.id)
                .filter(|h| room_type.is_none_or(|t| h.room_type == t))
                .filter(|h| max_price.is_none_or(|m| h.nightly_price as u64 <= m))
                .filter(|h| min_rating.is_none_or(|m| h.rating >= m))
                .filter(|h| allows.is_none_or(|a| !h.forbids.iter().any(|f| f == a)))
                .collect();
            found.sort_by_key(|h| (h.nightly_price, h.id.clone()));
            json!({"accommodations": found})
        }
        "search_restaurants" => {
            let c = match city("city") {
                Ok(c) => c,
                Err(e) => return e,
            };
            let cuisine = args.get("cuisine").and_then(Value::as_str);
            let max_cost = args.get("max_cost").and_then(Value::as_u64);
            let min_rating = args.get("min_rating").and_then(Value::as_f64);
            let mut found: Vec<_> = world
                .restaurants
                .iter()
                .filter(|r| r.city == c.id)
                .filter(|r| {
                    cuisine.is_none_or(|x| r.cuisines.iter().any(|y| y.eq_ignore_ascii_case(x)))
                })
                .filter(|r| max_cost.is_none_or(|m| r.average_cost as u64 <= m))
                .filter(|r| min_rating.is_none_or(|m| r.rating >= m))
                .collect();
            found.sort_by_key(|r| (r.average_cost, r.id.clone()));
            json!({"restaurants": found})
        }
        "search_attractions" => {
            let c = match city("city") {
                Ok(c) => c,
                Err(e) => return e,
            };
            let category = args.get("category").and_then(Value::as_str);
            let max_price = args.get("max_price").and_then(Value::as_u64);
            let mut found: Vec<_> = world
                .attractions
                .iter()
                .filter(|a| a.city == c.id)
                .filter(|a| category.is_none_or(|x| a.category.eq_ignore_ascii_case(x)))
                .filter(|a| max_price.is_none_or(|m| a.ticket_price as u64 <= m))
                .collect();
            found.sort_by_key(|a| (a.ticket_price, a.id.clone()));
            json!({"attractions": found})
        }
        "get_details" => {
            let id = s(args, "id");
            let found = match id.as_bytes().first() {
                Some(b'H') => world.accommodation(id).map(|x| ("accommodation", json!(x))),
                Some(b'R') => world.restaurant(id).map(|x| ("restaurant", json!(x))),
                Some(b'A') => world.attraction(id).map(|x| ("attraction", json!(x))),
                Some(b'T') => world.route(id).map(|x| ("route", route_json(x))),
                Some(b'C') => world.city(id).map(|x| ("city", json!(x))),
                _ => None,
            };
            match found {
                Some((kind, record)) => json!({"kind": kind, "record": record}),
                None => {
                    return err(
                        ToolErrorCode::NotFound,
                        format!("get_details: no record with id `{id}`"),
                    );
                }
            }
        }
        "estimate_cost" | "submit_plan" => {
            let plan: Plan = match parse_submission(&args["plan"]) {
                Ok(Some(p)) => p,
                Ok(None) => {
                    return err(
                        ToolErrorCode::InvalidArguments,
                        format!("{name}: arguments/plan: the plan is empty"),
                    );
                }
                Err(e) => {
                    return err(
                        ToolErrorCode::InvalidArguments,
                        format!("{name}: arguments/plan: {e}"),
                    );
                }
            };
            if name == "submit_plan" {
                json!({"accepted": true, "days": plan.days.len()})
            } else {
                let c = plan_cost(world, q.people, &plan);
                let mut unknown: Vec<String> = Vec::new();
                for d in &plan.days {
                    let refs = d
                        .travel
                        .iter()
                        .map(|t| (&t.transport, world.route(&t.transport).is_some()))
                        .chain(
                            d.meals()
                                .into_iter()
                                .flatten()
                                .map(|m| (m, world.restaurant(m).is_some())),
                        )
                        .chain(
                            d.attractions
                                .iter()
                                .map(|a| (a, world.attraction(a).is_some())),
                        )
                        .chain(
                            d.accommodation
                                .iter()
                                .map(|h| (h, world.accommodation(h).is_some())),
                        );
                    unknown.extend(refs.filter(|(_, ok)| !ok).map(|(id, _)| id.clone()));
                }
                json!({"transport": c.transport, "meals": c.meals, "attractions": c.attractions,
                       "accommodation": c.accommodation, "total": c.total, "unknown_ids": unknown})
            }
        }
        other => {
            return err(
                ToolErrorCode::UnknownTool,
                format!("tool `{other}` is declared but not implemented"),
            );
        }
    };
    ToolResult::Ok { result }
}
