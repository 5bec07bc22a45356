//! Acceptance tests of the travel-planning environment: determinism, certified planted
//! solutions, single-constraint mutants, bad submissions, tools and metrics.

use envsynth_core::env::{generate, verify_task};
use envsynth_core::metrics::aggregate;
use envsynth_core::model::{ToolCall, ToolErrorCode, ToolResult};
use envsynth_core::{CheckStatus, Environment, FailureKind, Task, TaskRequest, Verdict};
use envsynth_travel::{TravelPlanning, mutate, query::ids};
use serde_json::{Value, json};

fn request(seed: u64, index: u64, level: &str) -> TaskRequest {
    TaskRequest {
        seed,
        index,
        level: level.into(),
        overrides: Value::Null,
    }
}

fn budget_of(t: &Task) -> u64 {
    let c = t
        .constraints
        .iter()
        .find(|c| c.id == ids::BUDGET)
        .expect("every task has a budget");
    c.params["budget"].as_u64().expect("the budget is a number")
}

fn task(env: &TravelPlanning, seed: u64, index: u64, level: &str) -> (Task, u32) {
    let g = generate(env, &request(seed, index, level)).expect("generates");
    (g.task, g.rejections.len() as u32)
}

#[test]
fn same_seed_same_bytes_different_seed_different_task() {
    let env = TravelPlanning::new();
    for level in ["easy", "medium", "hard"] {
        let mut ids = std::collections::BTreeSet::new();
        for index in 0..15 {
            let (a, _) = task(&env, 7, index, level);
            let (b, _) = task(&env, 7, index, level);
            assert_eq!(
                serde_json::to_string(&a).unwrap(),
                serde_json::to_string(&b).unwrap()
            );
            let (c, _) = task(&env, 8, index, level);
            assert_ne!(a.id, c.id, "seed must change the task");
            assert_ne!(a.world.get(), c.world.get());
            assert!(ids.insert(a.id.clone()), "index must change the task");
            assert_eq!(
                Task::from_json(&serde_json::to_string(&a).unwrap())
                    .unwrap()
                    .id,
                a.id
            );
        }
    }
}

#[test]
fn planted_passes_and_every_single_constraint_mutant_is_named() {
    let env = TravelPlanning::new();
    let mut seen_checks = std::collections::BTreeSet::new();
    for level in ["easy", "medium", "hard"] {
        for index in 0..120 {
            let (t, attempt) = task(&env, 3, index, level);
            let prepared = env.prepare(&t).unwrap();
            let planted: Value = serde_json::from_str(t.reference_solution.get()).unwrap();
            let v = prepared.verify(&planted);
            assert!(
                v.passed,
                "{level}/{index}: planted plan fails: {:?}",
                v.failed_checks().collect::<Vec<_>>()
            );
            assert_eq!(
                (v.reward, v.failure_kind, v.mask),
                (1.0, FailureKind::None, false)
            );

            let parts = env
                .generate_parts(&request(3, index, level), attempt)
                .unwrap();
            let mutants = mutate::mutants(&parts.world, &parts.query, &parts.solution);
            for id in parts.query.check_ids() {
                let m = mutants
                    .iter()
                    .find(|m| m.target == id)
                    .unwrap_or_else(|| panic!("no mutant for {id}"));
                let v = prepared.verify(&serde_json::to_value(&m.solution).unwrap());
                assert!(!v.passed && v.reward == 0.0);
                assert_eq!(v.failure_kind, FailureKind::WrongAnswer);
                let c = v.check(id).unwrap();
                assert_eq!(
                    c.status,
                    CheckStatus::Failed,
                    "{level}/{index}: mutant for {id} not named: {v:?}"
                );
                assert!(!c.reason.is_empty());
                seen_checks.insert(id);
            }
            assert_eq!(
                t.certificate.mutants_rejected.len(),
                parts.query.check_ids().len()
            );
        }
    }
    // Every constraint kind occurred somewhere in the sample.
    assert_eq!(seen_checks.len(), 15, "{seen_checks:?}");
}

fn assert_zero(v: &Verdict, kind: FailureKind) {
    assert_eq!(
        (v.reward, v.passed, v.failure_kind, v.mask),
        (0.0, false, kind, false),
        "{v:?}"
    );
    assert!(v.error.as_ref().is_some_and(|e| !e.is_empty()));
    assert!(v.checks.iter().all(|c| c.status == CheckStatus::Skipped));
}

#[test]
fn empty_and_garbage_submissions_score_zero_with_the_right_failure_kind() {
    let env = TravelPlanning::new();
    let (t, _) = task(&env, 1, 0, "medium");
    let p = env.prepare(&t).unwrap();
    for empty in [
        Value::Null,
        json!(""),
        json!("   "),
        json!({}),
        json!({"days": []}),
        json!("```json\n```"),
    ] {
        assert_zero(&p.verify(&empty), FailureKind::EmptySubmission);
    }
    let huge = "x".repeat(1 << 20);
    for (garbage, needle) in [
        (json!(42), ""),
        (json!("not json at all"), "not JSON"),
        (json!([1, 2, 3]), ""),
        (json!({"days": "tomorrow"}), "/days"),
        (json!({"days": [{"day": 1}]}), "/days/0"),
        (json!({"days": [], "extra": 1}), ""),
        (json!({"itinerary": [1]}), ""),
        (
            json!({"days": [{"day": 1, "city": huge, "breakfast": null, "lunch": null, "dinner": null, "attractions": [], "accommodation": null}]}),
            "/days/0/city",
        ),
        (
            json!({"days": [{"day": "one", "city": "C01", "breakfast": null, "lunch": null, "dinner": null, "attractions": [], "accommodation": null}]}),
            "/days/0/day",
        ),
    ] {
        let v = p.verify(&garbage);
        assert_zero(&v, FailureKind::MalformedSubmission);
        assert!(
            v.error.as_ref().unwrap().contains(needle),
            "{needle} not in {:?}",
            v.error
        );
    }
}

#[test]
fn adversarial_plans_fail() {
    let env = TravelPlanning::new();
    let (t, _) = task(&env, 1, 5, "hard");
    let p = env.prepare(&t).unwrap();
    let mut planted: Value = serde_json::from_str(t.reference_solution.get()).unwrap();
    // Every attraction of the world on every day.
    let world: Value = serde_json::from_str(t.world.get()).unwrap();
    let all: Vec<Value> = world["attractions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].clone())
        .collect();
    let mut greedy = planted.clone();
    for d in greedy["days"].as_array_mut().unwrap() {
        d["attractions"] = Value::Array(all.iter().take(16).cloned().collect());
    }
    let v = p.verify(&greedy);
    assert!(!v.passed && v.failure_kind == FailureKind::WrongAnswer);
    // Hallucinated ids everywhere.
    for d in planted["days"].as_array_mut().unwrap() {
        d["breakfast"] = json!("R999");
        d["accommodation"] = json!("Hotel California");
    }
    let v = p.verify(&planted);
    assert_eq!(
        v.check(ids::WITHIN_SANDBOX).unwrap().status,
        CheckStatus::Failed
    );
    assert_eq!(v.check(ids::BUDGET).unwrap().status, CheckStatus::Skipped);
    assert_eq!(v.reward, 0.0);
}

#[test]
fn broken_task_records_are_masked_not_zeroed() {
    let env = TravelPlanning::new();
    let (t, _) = task(&env, 1, 1, "easy");
    let mut world: Value = serde_json::from_str(t.world.get()).unwrap();
    world["accommodations"][0]["nightly_price"] = json!(1);
    let mut tampered = t.clone();
    tampered.world = serde_json::value::RawValue::from_string(world.to_string()).unwrap();
    let text = serde_json::to_string(&tampered).unwrap();
    let err = Task::from_json(&text).unwrap_err();
    assert!(
        matches!(err, envsynth_core::TaskError::IdMismatch { .. }),
        "{err}"
    );

    let mut wrong = t.clone();
    wrong.environment.version = "9.9.9".into();
    let v = verify_task(&env, &wrong, &json!({"days": []}));
    assert_eq!(
        (v.failure_kind, v.mask, v.reward),
        (FailureKind::InvalidTask, true, 0.0)
    );
    assert!(v.error.unwrap().contains("9.9.9"));

    let mut no_budget = t.clone();
    no_budget.constraints.retain(|c| c.id != ids::BUDGET);
    let v = verify_task(&env, &no_budget, &Value::Null);
    assert!(v.mask && v.error.unwrap().contains(ids::BUDGET));
}

#[test]
fn verdicts_match_the_published_schema() {
    let schema: Value = serde_json::from_str(include_str!(
        "../../../verifiers/schema/verdict.schema.json"
    ))
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let env = TravelPlanning::new();
    let (t, _) = task(&env, 2, 2, "hard");
    let p = env.prepare(&t).unwrap();
    let planted: Value = serde_json::from_str(t.reference_solution.get()).unwrap();
    for sub in [planted, Value::Null, json!("junk")] {
        let v = serde_json::to_value(p.verify(&sub)).unwrap();
        assert!(validator.is_valid(&v), "{v}");
    }
}

#[test]
fn tools_validate_arguments_and_return_schema_shaped_results() {
    let env = TravelPlanning::new();
    let (t, _) = task(&env, 4, 0, "medium");
    let p = env.prepare(&t).unwrap();
    let world: Value = serde_json::from_str(t.world.get()).unwrap();
    let plan: Value = serde_json::from_str(t.reference_solution.get()).unwrap();
    let state = world["states"][1]["name"].clone();
    let (origin, dest) = (
        world["cities"][0]["id"].clone(),
        world["cities"][1]["id"].clone(),
    );
    let date = t
        .constraints
        .iter()
        .find(|c| c.id == ids::COMPLETE_INFORMATION)
        .unwrap()
        .params["start_date"]
        .clone();
    let calls = [
        ("list_states", json!({})),
        ("list_cities", json!({"state": state})),
        ("get_city", json!({"city": dest})),
        (
            "search_flights",
            json!({"origin": origin, "destination": dest, "date": date}),
        ),
        (
            "search_ground_transport",
            json!({"origin": origin, "destination": dest, "date": date}),
        ),
        (
            "get_distance",
            json!({"origin": origin, "destination": dest}),
        ),
        (
            "search_accommodations",
            json!({"city": dest, "max_price": 300, "allows": "pets"}),
        ),
        (
            "search_restaurants",
            json!({"city": dest, "min_rating": 3.0}),
        ),
        ("search_attractions", json!({"city": dest})),
        ("get_details", json!({"id": "H000"})),
        ("estimate_cost", json!({"plan": plan})),
        ("submit_plan", json!({"plan": plan})),
    ];
    assert_eq!(
        calls.len(),
        env.tool_specs().len(),
        "every tool is exercised"
    );
    for (name, args) in calls {
        let spec = env.tool_specs().iter().find(|s| s.name == name).unwrap();
        let result_schema = jsonschema::validator_for(&spec.result).unwrap();
        match p.call_tool(&ToolCall {
            name: name.into(),
            arguments: args,
        }) {
            ToolResult::Ok { result } => {
                if let Some(e) = result_schema.iter_errors(&result).next() {
                    panic!(
                        "{name}: result breaks its schema at {}: {e}",
                        e.instance_path()
                    );
                }
            }
            ToolResult::Error { message, .. } => panic!("{name}: {message}"),
        }
    }
    let budget = budget_of(&t);
    let ToolResult::Ok { result } = p.call_tool(&ToolCall {
        name: "estimate_cost".into(),
        arguments: json!({"plan": plan}),
    }) else {
        panic!()
    };
    assert!(result["total"].as_u64().unwrap() <= budget);

    for (name, args, code, needle) in [
        (
            "book_hotel",
            json!({}),
            ToolErrorCode::UnknownTool,
            "book_hotel",
        ),
        (
            "search_flights",
            json!({"origin": origin}),
            ToolErrorCode::InvalidArguments,
            "destination",
        ),
        (
            "search_flights",
            json!({"origin": origin, "destination": dest, "date": "soon"}),
            ToolErrorCode::InvalidArguments,
            "/date",
        ),
        (
            "search_restaurants",
            json!({"city": dest, "min_rating": "high"}),
            ToolErrorCode::InvalidArguments,
            "/min_rating",
        ),
        (
            "search_restaurants",
            json!({"city": "Atlantis"}),
            ToolErrorCode::NotFound,
            "Atlantis",
        ),
        (
            "search_flights",
            json!({"origin": origin, "destination": dest, "date": "2027-02-30"}),
            ToolErrorCode::InvalidArguments,
            "2027-02-30",
        ),
        (
            "get_details",
            json!({"id": "H9999"}),
            ToolErrorCode::NotFound,
            "H9999",
        ),
        (
            "submit_plan",
            json!({"plan": {"days": "x"}}),
            ToolErrorCode::InvalidArguments,
            "/days",
        ),
        (
            "list_cities",
            json!("not an object"),
            ToolErrorCode::InvalidArguments,
            "arguments",
        ),
    ] {
        match p.call_tool(&ToolCall {
            name: name.into(),
            arguments: args,
        }) {
            ToolResult::Error { code: c, message } => {
                assert_eq!(c, code, "{name}: {message}");
                assert!(message.contains(needle), "{needle} not in {message}");
            }
            ToolResult::Ok { result } => panic!("{name} should fail, returned {result}"),
        }
    }
}

#[test]
fn prompt_states_the_request() {
    let env = TravelPlanning::new();
    let (t, _) = task(&env, 5, 3, "hard");
    assert_eq!(t.prompt.len(), 2);
    let user = &t.prompt[1].content;
    let budget = budget_of(&t);
    assert!(user.contains(&format!("${budget}")));
    for c in &t.constraints {
        assert!(user.contains(&c.description), "missing {}", c.id);
    }
    assert!(!user.contains("{{") && !t.prompt[0].content.contains("{%"));
}

#[test]
fn metrics_follow_travelplanner_groups() {
    let env = TravelPlanning::new();
    let mut verdicts = Vec::new();
    for index in 0..10 {
        let (t, attempt) = task(&env, 6, index, "medium");
        let p = env.prepare(&t).unwrap();
        let planted: Value = serde_json::from_str(t.reference_solution.get()).unwrap();
        verdicts.push(p.verify(&planted));
        let parts = env
            .generate_parts(&request(6, index, "medium"), attempt)
            .unwrap();
        let m = mutate::mutants(&parts.world, &parts.query, &parts.solution)
            .into_iter()
            .find(|m| m.target == ids::BUDGET)
            .unwrap();
        verdicts.push(p.verify(&serde_json::to_value(&m.solution).unwrap()));
        verdicts.push(p.verify(&Value::Null));
    }
    let m = aggregate(&verdicts);
    assert_eq!(m.n, 30);
    assert!((m.delivery_rate - 20.0 / 30.0).abs() < 1e-9);
    assert!((m.final_pass_rate - 10.0 / 30.0).abs() < 1e-9);
    assert!(m.hard_macro <= 20.0 / 30.0 && m.hard_macro >= 10.0 / 30.0);
    assert!(m.commonsense_micro > m.final_pass_rate);
}

#[test]
fn difficulty_knobs_change_the_task() {
    let env = TravelPlanning::new();
    let easy: Vec<Task> = (0..10).map(|i| task(&env, 9, i, "easy").0).collect();
    let hard: Vec<Task> = (0..10).map(|i| task(&env, 9, i, "hard").0).collect();
    let hard_count = |t: &Task| {
        t.constraints
            .iter()
            .filter(|c| c.id.starts_with("hard."))
            .count()
    };
    assert!(easy.iter().all(|t| hard_count(t) == 1));
    assert!(hard.iter().all(|t| hard_count(t) == 5));
    let size = |t: &Task| {
        t.difficulty.params["realized"]["search_space"]
            .as_u64()
            .unwrap()
    };
    assert!(hard.iter().map(size).sum::<u64>() > easy.iter().map(size).sum::<u64>());
    let custom = generate(
        &env,
        &TaskRequest {
            seed: 9,
            index: 0,
            level: "medium".into(),
            overrides: json!({"days": [7], "people_min": 8, "people_max": 8}),
        },
    )
    .unwrap()
    .task;
    let realized = &custom.difficulty.params["realized"];
    assert_eq!(
        (realized["days"].as_u64(), realized["people"].as_u64()),
        (Some(7), Some(8))
    );
    let err = generate(
        &env,
        &TaskRequest {
            seed: 9,
            index: 0,
            level: "medium".into(),
            overrides: json!({"dayz": [7]}),
        },
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("dayz"));
}

#[test]
fn text_and_value_submissions_get_identical_verdicts() {
    let env = TravelPlanning::new();
    for index in 0..20 {
        let (t, attempt) = task(&env, 12, index, "hard");
        let p = env.prepare(&t).unwrap();
        let parts = env
            .generate_parts(&request(12, index, "hard"), attempt)
            .unwrap();
        let mut subs: Vec<Value> = vec![serde_json::from_str(t.reference_solution.get()).unwrap()];
        subs.extend(
            mutate::mutants(&parts.world, &parts.query, &parts.solution)
                .iter()
                .map(|m| serde_json::to_value(&m.solution).unwrap()),
        );
        subs.extend([
            json!({}),
            json!({"days": []}),
            json!({"days": [], "x": 1}),
            json!({"days": [{"day": 40, "city": "C01"}]}),
            json!([1]),
        ]);
        for s in &subs {
            assert_eq!(p.verify(s), p.verify_text(&s.to_string()), "{s}");
        }
        // Free text is a string submission.
        assert_eq!(p.verify_text("I give up"), p.verify(&json!("I give up")));
        assert_eq!(
            p.verify_text("  ").failure_kind,
            FailureKind::EmptySubmission
        );
    }
}

#[test]
fn any_valid_plan_passes_not_only_the_planted_one() {
    let env = TravelPlanning::new();
    let mut exercised = 0;
    for index in 0..30 {
        let (t, attempt) = task(&env, 21, index, "easy");
        let p = env.prepare(&t).unwrap();
        let parts = env
            .generate_parts(&request(21, index, "easy"), attempt)
            .unwrap();
        let (w, plan) = (&parts.world, &parts.solution);
        // Swap the first day-without-travel's dinner for another free restaurant in that city.
        let Some(k) = plan.days.iter().position(|d| d.travel.is_none()) else {
            continue;
        };
        let used: Vec<&String> = plan
            .days
            .iter()
            .flat_map(|d| d.meals().into_iter().flatten())
            .collect();
        let city = &plan.days[k].city;
        let Some(alt) = w
            .restaurants
            .iter()
            .find(|r| r.city == *city && !used.contains(&&r.id))
        else {
            continue;
        };
        let mut other = plan.clone();
        other.days[k].dinner = Some(alt.id.clone());
        let cost = envsynth_travel::plan::plan_cost(w, parts.query.people, &other).total;
        let v = p.verify(&serde_json::to_value(&other).unwrap());
        if cost <= parts.query.budget as u64 {
            assert!(
                v.passed,
                "{index}: a different valid plan was rejected: {:?}",
                v.failed_checks().collect::<Vec<_>>()
            );
            exercised += 1;
        } else {
            assert_eq!(v.failed_checks().collect::<Vec<_>>(), vec![ids::BUDGET]);
        }
    }
    assert!(
        exercised >= 20,
        "only {exercised} alternative plans fit the budget"
    );
}

#[test]
fn the_native_verifier_passes_its_own_integrity_suite() {
    let env = TravelPlanning::new();
    for level in ["easy", "medium", "hard"] {
        for index in 0..40 {
            let (t, _) = task(&env, 31, index, level);
            let p = env.prepare(&t).unwrap();
            let probes = env.probes(&t).unwrap();
            assert!(probes.len() >= 9 + 8, "{} probes", probes.len());
            for probe in probes {
                let v = p.verify(&probe.submission);
                if let Err(e) = probe.expect.check(&v) {
                    panic!("{level}/{index} {}: {e}", probe.name);
                }
            }
        }
    }
}

#[test]
fn the_problem_hash_ignores_provenance_and_follows_what_the_agent_sees() {
    let env = TravelPlanning::new();
    let (a, _) = task(&env, 7, 0, "easy");
    // The same problem under another seed, index, level, version and solution: same hashes.
    let mut moved = a.clone();
    moved.seed = 99;
    moved.index = 41;
    moved.difficulty.level = "hard".into();
    moved.environment.version = "9.9.9".into();
    moved.reference_solution = serde_json::value::RawValue::from_string("{}".into()).unwrap();
    moved.id = moved.compute_id();
    assert_ne!(moved.id, a.id);
    assert_eq!(moved.problem_hash(), a.problem_hash());
    assert_eq!(moved.prompt_hash(), a.prompt_hash());
    // Any change to what the agent reads or is judged on changes the problem hash.
    let mut world = a.clone();
    let mut value: Value = serde_json::from_str(world.world.get()).unwrap();
    value["probe"] = json!(1);
    world.world = serde_json::value::RawValue::from_string(value.to_string()).unwrap();
    assert_ne!(world.problem_hash(), a.problem_hash());
    assert_eq!(world.prompt_hash(), a.prompt_hash());
    let mut rule = a.clone();
    rule.constraints.pop();
    assert_ne!(rule.problem_hash(), a.problem_hash());
    assert_eq!(rule.prompt_hash(), a.prompt_hash());
    let mut asked = a.clone();
    asked.prompt[1].content.push('.');
    assert_ne!(asked.problem_hash(), a.problem_hash());
    assert_ne!(asked.prompt_hash(), a.prompt_hash());
    let mut tools = a.clone();
    std::sync::Arc::make_mut(&mut tools.tools).pop();
    assert_ne!(tools.problem_hash(), a.problem_hash());
    // Another index of the same seed is another problem.
    let (b, _) = task(&env, 7, 1, "easy");
    assert_ne!(b.problem_hash(), a.problem_hash());
}
