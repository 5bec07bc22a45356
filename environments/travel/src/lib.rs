//! The constrained multi-day travel-planning environment (the flagship): a seeded synthetic world,
//! TravelPlanner's commonsense and hard constraints plus DeepSeek-V3.2-style conditional ones, a
//! planted and certified reference plan, the agent's tools and the verifier.
//!
//! Generation is a pure function of (seed, index, level, overrides, attempt); verification of
//! (task, submission). Nothing here does I/O.

pub mod data;
pub mod date;
pub mod generate;
pub mod mutate;
pub mod params;
pub mod plan;
pub mod query;
pub mod tools;
pub mod verify;
pub mod world;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use envsynth_core::env::Difficulty;
use envsynth_core::model::{EnvironmentSpec, Message, Task, ToolCall, ToolResult, ToolSpec};
use envsynth_core::stages::{self, Draft, Stages};
use envsynth_core::{
    Environment, Expect, FailureKind, PreparedTask, Probe, Rejection, Stage, TaskError,
    TaskRequest, Verdict, hash,
};
use envsynth_prompts::Templates;
use rand_chacha::ChaCha8Rng;

use crate::params::{Knobs, LEVELS};
use crate::plan::Plan;
use crate::query::Query;
use crate::world::World;

pub const ENV_ID: &str = "travel-planning";
/// Bump whenever generated tasks or verdicts change for the same inputs.
pub const VERSION: &str = "0.1.0";

const SYSTEM_TEMPLATE: &str = include_str!("../../../prompts/travel/system.j2");
const USER_TEMPLATE: &str = include_str!("../../../prompts/travel/user.j2");

pub struct TravelPlanning {
    spec: EnvironmentSpec,
    templates: Templates,
}

impl Default for TravelPlanning {
    fn default() -> Self {
        Self::new()
    }
}

impl TravelPlanning {
    pub fn new() -> TravelPlanning {
        let content_hash = hash::sha256_parts([
            ("version", VERSION.as_bytes()),
            (
                "data/travel/geography.json",
                data::GEOGRAPHY_JSON.as_bytes(),
            ),
            ("data/travel/catalog.json", data::CATALOG_JSON.as_bytes()),
            ("data/travel/names.json", data::NAMES_JSON.as_bytes()),
            ("prompts/travel/system.j2", SYSTEM_TEMPLATE.as_bytes()),
            ("prompts/travel/user.j2", USER_TEMPLATE.as_bytes()),
            ("schema/plan.schema.json", plan::PLAN_SCHEMA_JSON.as_bytes()),
            ("schema/tools.json", tools::TOOLS_JSON.as_bytes()),
        ]);
        let templates = Templates::new(&[("system", SYSTEM_TEMPLATE), ("user", USER_TEMPLATE)])
            .expect("prompts/travel templates compile (covered by tests)");
        TravelPlanning {
            spec: EnvironmentSpec {
                id: ENV_ID.into(),
                version: VERSION.into(),
                content_hash,
                description: "Constrained multi-day travel planning over a seeded synthetic world \
                    (TravelPlanner's constraints plus DeepSeek-V3.2-style conditional rules)."
                    .into(),
                levels: LEVELS.iter().map(|s| s.to_string()).collect(),
                tags: ["planning", "tool-use", "constraints", "travel"]
                    .map(String::from)
                    .to_vec(),
                license: "Apache-2.0".into(),
            },
            templates,
        }
    }

    /// The typed products of the stages up to planting (used by tests and benchmarks).
    pub fn generate_parts(&self, request: &TaskRequest, attempt: u32) -> Result<Parts, Rejection> {
        stages::draft(self, request, attempt)
    }

    fn render(
        &self,
        world: &World,
        q: &Query,
        constraints: &[envsynth_core::model::Constraint],
    ) -> Result<Vec<Message>, Rejection> {
        #[derive(Serialize)]
        struct Ctx<'a> {
            days: u32,
            people: u32,
            origin: &'a world::City,
            start_date: String,
            end_date: String,
            destination_city: Option<&'a world::City>,
            destination_state: &'a str,
            visiting_cities: u32,
            budget: u32,
            constraints: &'a [envsynth_core::model::Constraint],
        }
        let ctx = Ctx {
            days: q.days,
            people: q.people,
            origin: &world.cities[0],
            start_date: q.date(1),
            end_date: q.date(q.days),
            destination_city: q.destination_city.as_deref().and_then(|c| world.city(c)),
            destination_state: &q.destination_state,
            visiting_cities: q.visiting_cities,
            budget: q.budget,
            constraints,
        };
        let render = |name| {
            self.templates
                .render(name, &ctx)
                .map_err(|e| Rejection::new(Stage::Render, "template", e.to_string()))
        };
        Ok(vec![
            Message {
                role: "system".into(),
                content: render("system")?,
            },
            Message {
                role: "user".into(),
                content: render("user")?,
            },
        ])
    }
}

/// The typed products of the generator stages for one attempt.
pub type Parts = Draft<TravelPlanning>;

impl Stages for TravelPlanning {
    type Params = generate::Sampled;
    type World = World;
    type Query = Query;
    type Solution = Plan;

    fn key(&self) -> (&str, &str) {
        (ENV_ID, VERSION)
    }
    fn sample_params(
        &self,
        rng: &mut ChaCha8Rng,
        request: &TaskRequest,
    ) -> Result<generate::Sampled, Rejection> {
        let knobs = Knobs::resolve(&request.level, &request.overrides)
            .map_err(|e| Rejection::new(Stage::SampleParams, "invalid_request", e.to_string()))?;
        Ok(generate::sample_params(rng, &knobs))
    }
    fn build_world(&self, rng: &mut ChaCha8Rng, params: &generate::Sampled) -> World {
        generate::world(rng, params)
    }
    fn compose(&self, rng: &mut ChaCha8Rng, params: &generate::Sampled, world: &World) -> Query {
        generate::compose(rng, params, world)
    }
    fn plant(
        &self,
        params: &generate::Sampled,
        world: &World,
        query: &mut Query,
    ) -> Result<Plan, Rejection> {
        generate::plant(params, world, query)
    }
    fn check_ids(&self, query: &Query) -> Vec<&'static str> {
        query.check_ids()
    }
    fn verify(&self, world: &World, query: &Query, plan: &Plan) -> Verdict {
        verify::verify_plan(world, query, "", plan)
    }
    fn mutants(
        &self,
        world: &World,
        query: &Query,
        plan: &Plan,
    ) -> Vec<envsynth_core::Mutant<Plan>> {
        mutate::mutants(world, query, plan)
    }
}

fn raw(v: &impl Serialize) -> Box<RawValue> {
    // Plain data always serializes (and to_raw_value does not re-parse what it wrote).
    serde_json::value::to_raw_value(v).expect("serializable")
}

impl Environment for TravelPlanning {
    fn spec(&self) -> &EnvironmentSpec {
        &self.spec
    }

    fn tool_specs(&self) -> &[ToolSpec] {
        &tools::toolset().specs
    }

    fn validate_request(&self, request: &TaskRequest) -> Result<(), TaskError> {
        Knobs::resolve(&request.level, &request.overrides).map(|_| ())
    }

    fn generate_attempt(&self, request: &TaskRequest, attempt: u32) -> Result<Task, Rejection> {
        let draft = stages::draft(self, request, attempt)?;
        let certificate = stages::certify_draft(self, &draft)?;
        let Draft {
            params: sampled,
            world,
            query,
            solution: plan,
        } = draft;
        let knobs = &sampled.knobs;
        let required = query.check_ids();
        let names = |id: &str| {
            world
                .city(id)
                .map(|c| c.name.clone())
                .unwrap_or_else(|| id.to_string())
        };
        let constraints = query.to_constraints(&names);
        let prompt = self.render(&world, &query, &constraints)?;
        let mut params = serde_json::to_value(knobs).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut params {
            m.insert(
                "realized".into(),
                json!({
                    "days": query.days,
                    "people": query.people,
                    "visiting_cities": query.visiting_cities,
                    "hard_constraints": required.iter().filter(|id| id.starts_with("hard.")).count(),
                    "budget_slack": (sampled.slack * 1000.0).round() / 1000.0,
                    "search_space": world.routes.len() + world.accommodations.len() + world.restaurants.len() + world.attractions.len(),
                }),
            );
        }
        let mut task = Task {
            id: String::new(),
            environment: self.spec.env_ref(),
            seed: request.seed,
            index: request.index,
            difficulty: Difficulty {
                level: request.level.clone(),
                params,
            },
            prompt,
            tools: std::sync::Arc::clone(&tools::toolset().specs),
            constraints,
            world: raw(&world),
            reference_solution: raw(&plan),
            certificate,
        };
        task.id = task.compute_id();
        Ok(task)
    }

    fn tool_probes(&self, task: &Task) -> Result<Vec<ToolCall>, TaskError> {
        let world: World = serde_json::from_str(task.world.get())
            .map_err(|e| TaskError::Malformed(format!("world: {e}")))?;
        let query = Query::from_constraints(&task.constraints)?;
        let plan: Value = serde_json::from_str(task.reference_solution.get())
            .map_err(|e| TaskError::Malformed(format!("reference_solution: {e}")))?;
        let parsed: Plan = serde_json::from_value(plan.clone())
            .map_err(|e| TaskError::Malformed(format!("reference_solution: {e}")))?;
        let mut calls = Vec::new();
        let mut call = |name: &str, arguments: Value| {
            calls.push(ToolCall {
                name: name.into(),
                arguments,
            })
        };
        call("list_states", json!({}));
        for s in world.states.iter().take(2) {
            call("list_cities", json!({"state": s.name}));
        }
        call("list_cities", json!({"state": "Atlantis"}));
        // Valid searches along the planted route, with and without filters.
        let cities: Vec<&str> = {
            let mut c: Vec<&str> = parsed.days.iter().map(|d| d.city.as_str()).collect();
            c.dedup();
            c
        };
        for d in &parsed.days {
            if let Some(t) = &d.travel {
                let args =
                    json!({"origin": t.from, "destination": t.to, "date": query.date(d.day)});
                call("search_flights", args.clone());
                call("search_ground_transport", args);
                call(
                    "get_distance",
                    json!({"origin": t.from, "destination": t.to}),
                );
            }
        }
        for (i, c) in cities.iter().enumerate().take(3) {
            call("get_city", json!({"city": c}));
            call("search_accommodations", json!({"city": c}));
            call(
                "search_accommodations",
                json!({"city": c, "max_price": 150 + 50 * i, "min_rating": 3.5, "allows": "pets"}),
            );
            call(
                "search_accommodations",
                json!({"city": c, "room_type": "entire home", "max_price": 200.0}),
            );
            call("search_restaurants", json!({"city": c}));
            call("search_attractions", json!({"city": c}));
        }
        if let Some(r) = world.restaurants.iter().find(|r| !r.cuisines.is_empty()) {
            call(
                "search_restaurants",
                json!({"city": r.city, "cuisine": r.cuisines[0].to_uppercase(), "max_cost": 40, "min_rating": 4}),
            );
        }
        if let Some(a) = world.attractions.first() {
            call(
                "search_attractions",
                json!({"city": a.city, "category": a.category.to_lowercase(), "max_price": 20}),
            );
        }
        // One record of each kind the plan names, and hallucinated ones.
        let mut ids: Vec<String> = Vec::new();
        for d in &parsed.days {
            ids.extend(d.travel.iter().map(|t| t.transport.clone()));
            ids.extend(d.meals().into_iter().flatten().cloned());
            ids.extend(d.attractions.iter().cloned());
            ids.extend(d.accommodation.iter().cloned());
            ids.push(d.city.clone());
        }
        let mut kinds = std::collections::BTreeSet::new();
        ids.retain(|id| kinds.insert(id.bytes().next()));
        ids.extend(["H99999", "R0x", "Z1", "", "T", "héllo"].map(String::from));
        for id in ids {
            call("get_details", json!({"id": id}));
        }
        call("estimate_cost", json!({"plan": plan}));
        call("submit_plan", json!({"plan": plan}));
        let mut hallucinated = plan.clone();
        if let Some(day) = hallucinated.pointer_mut("/days/0") {
            day["breakfast"] = json!("R99999");
            day["attractions"] = json!(["A99999", "nonsense"]);
        }
        call("estimate_cost", json!({"plan": hallucinated}));
        // Not found, invalid arguments, unknown tools.
        let c0 = world.cities[0].id.clone();
        call("get_city", json!({"city": "C99999"}));
        call(
            "search_flights",
            json!({"origin": "C99999", "destination": c0, "date": query.date(1)}),
        );
        call(
            "search_ground_transport",
            json!({"origin": c0, "destination": "nowhere", "date": query.date(1)}),
        );
        call(
            "search_flights",
            json!({"origin": c0, "destination": c0, "date": "2027-02-30"}),
        );
        call(
            "search_flights",
            json!({"origin": c0, "destination": c0, "date": "2027-2-3"}),
        );
        call("get_city", json!({"city": c0, "verbose": true}));
        call("get_city", json!({}));
        call("get_city", json!({"city": 7}));
        call("get_city", json!({"city": "C".repeat(65)}));
        call("get_city", json!(["C00"]));
        call(
            "search_accommodations",
            json!({"city": c0, "room_type": "castle"}),
        );
        call(
            "search_accommodations",
            json!({"city": c0, "max_price": -1}),
        );
        call(
            "search_accommodations",
            json!({"city": c0, "max_price": 12.5}),
        );
        call("search_restaurants", json!({"city": c0, "min_rating": 7}));
        call("estimate_cost", json!({"plan": "a plan"}));
        call("estimate_cost", json!({"plan": {}}));
        call(
            "submit_plan",
            json!({"plan": {"days": [{"day": "one", "city": 7}]}}),
        );
        call("submit_plan", json!({"plan": {"days": []}}));
        call("book_hotel", json!({"city": c0}));
        Ok(calls)
    }

    fn probes(&self, task: &Task) -> Result<Vec<Probe>, TaskError> {
        let world: World = serde_json::from_str(task.world.get())
            .map_err(|e| TaskError::Malformed(format!("world: {e}")))?;
        let query = Query::from_constraints(&task.constraints)?;
        let plan: Plan = serde_json::from_str(task.reference_solution.get())
            .map_err(|e| TaskError::Malformed(format!("reference_solution: {e}")))?;
        let value = |p: &Plan| serde_json::to_value(p).unwrap_or(Value::Null);
        let probe = |name: &str, submission: Value, expect: Expect| Probe {
            name: name.to_string(),
            submission,
            expect,
        };
        let mut out = vec![probe("planted", value(&plan), Expect::Pass)];
        for m in mutate::mutants(&world, &query, &plan) {
            out.push(probe(
                &format!("mutant:{}", m.target),
                value(&m.solution),
                Expect::FailCheck(m.target.to_string()),
            ));
        }
        let empty = Expect::Zero(FailureKind::EmptySubmission);
        let malformed = Expect::Zero(FailureKind::MalformedSubmission);
        out.push(probe("empty:null", Value::Null, empty.clone()));
        out.push(probe("empty:days", json!({"days": []}), empty));
        out.push(probe(
            "garbage:text",
            json!("I booked everything, trust me."),
            malformed.clone(),
        ));
        out.push(probe("garbage:number", json!(42), malformed.clone()));
        out.push(probe(
            "garbage:wrong-types",
            json!({"days": [{"day": "one", "city": 7}]}),
            malformed.clone(),
        ));
        out.push(probe(
            "garbage:huge-string",
            json!({"days": [{"day": 1, "city": "C".repeat(1 << 20)}]}),
            malformed,
        ));
        // Listing every option: every attraction of the world on every day.
        let mut greedy = plan.clone();
        let all: Vec<String> = world
            .attractions
            .iter()
            .take(16)
            .map(|a| a.id.clone())
            .collect();
        for d in &mut greedy.days {
            d.attractions = all.clone();
        }
        out.push(probe(
            "adversarial:every-attraction",
            value(&greedy),
            Expect::FailCheck(query::ids::DIVERSE_ATTRACTIONS.into()),
        ));
        // Hallucinated ids.
        let mut fake = plan.clone();
        for d in &mut fake.days {
            d.breakfast = Some("R999".into());
        }
        out.push(probe(
            "adversarial:hallucinated-ids",
            value(&fake),
            Expect::FailCheck(query::ids::WITHIN_SANDBOX.into()),
        ));
        Ok(out)
    }

    fn describe_solution(&self, task: &Task) -> String {
        let (Ok(world), Ok(plan)) = (
            serde_json::from_str::<World>(task.world.get()),
            serde_json::from_str::<Plan>(task.reference_solution.get()),
        ) else {
            return task.reference_solution.get().to_string();
        };
        let city = |id: &str| {
            world
                .city(id)
                .map(|c| format!("{} ({id})", c.name))
                .unwrap_or_else(|| id.to_string())
        };
        let venue = |id: Option<&String>| -> String {
            let Some(id) = id else { return "-".into() };
            let name = world
                .restaurant(id)
                .map(|r| format!("{}, {} ${}", r.name, r.cuisines.join("/"), r.average_cost))
                .or_else(|| {
                    world
                        .attraction(id)
                        .map(|a| format!("{}, ${}", a.name, a.ticket_price))
                })
                .or_else(|| {
                    world
                        .accommodation(id)
                        .map(|h| format!("{}, {} ${}/night", h.name, h.room_type, h.nightly_price))
                })
                .unwrap_or_else(|| "?".into());
            format!("{name} [{id}]")
        };
        let mut out = String::new();
        for d in &plan.days {
            out.push_str(&format!("Day {}: {}\n", d.day, city(&d.city)));
            if let Some(t) = &d.travel {
                let how = world
                    .route(&t.transport)
                    .map(|r| {
                        format!(
                            "{} {} ${}",
                            r.mode.name(),
                            r.service.clone().unwrap_or_default(),
                            r.price
                        )
                    })
                    .unwrap_or_default();
                out.push_str(&format!(
                    "  travel     {} -> {} by {how} [{}]\n",
                    city(&t.from),
                    city(&t.to),
                    t.transport
                ));
            }
            out.push_str(&format!(
                "  breakfast  {}\n  lunch      {}\n  dinner     {}\n",
                venue(d.breakfast.as_ref()),
                venue(d.lunch.as_ref()),
                venue(d.dinner.as_ref())
            ));
            for a in &d.attractions {
                out.push_str(&format!("  attraction {}\n", venue(Some(a))));
            }
            out.push_str(&format!(
                "  stay       {}\n",
                venue(d.accommodation.as_ref())
            ));
        }
        if let Ok(q) = Query::from_constraints(&task.constraints) {
            let cost = plan::plan_cost(&world, q.people, &plan);
            out.push_str(&format!(
                "Cost: transport ${} + meals ${} + attractions ${} + stays ${} = ${} (budget ${})\n",
                cost.transport, cost.meals, cost.attractions, cost.accommodation, cost.total, q.budget
            ));
        }
        out
    }

    fn prepare(&self, task: &Task) -> Result<Box<dyn PreparedTask>, TaskError> {
        if task.environment != self.spec.env_ref() {
            return Err(TaskError::WrongEnvironment {
                expected: self.spec.env_ref().to_string(),
                found: task.environment.to_string(),
            });
        }
        let world: World = serde_json::from_str(task.world.get())
            .map_err(|e| TaskError::Malformed(format!("world: {e}")))?;
        let query = Query::from_constraints(&task.constraints)?;
        if world.city(&query.origin).is_none() {
            return Err(TaskError::Malformed(format!(
                "origin {} is not a city of the world",
                query.origin
            )));
        }
        Ok(Box::new(Prepared {
            task_id: task.id.clone(),
            world,
            query,
        }))
    }
}

/// A parsed travel task, ready to verify submissions and serve tool calls.
pub struct Prepared {
    pub task_id: String,
    pub world: World,
    pub query: Query,
}

impl PreparedTask for Prepared {
    fn verify(&self, submission: &Value) -> Verdict {
        verify::verify_submission(&self.world, &self.query, &self.task_id, submission)
    }
    fn verify_text(&self, text: &str) -> Verdict {
        verify::verify_submission_text(&self.world, &self.query, &self.task_id, text)
    }
    fn call_tool(&self, call: &ToolCall) -> ToolResult {
        tools::call(&self.world, &self.query, &call.name, &call.arguments)
    }
}
