//! The travel verifier: a structured plan in, a verdict that names every check out.
//! A pure function of (world, query, submission).

use std::borrow::Cow;
use std::collections::HashSet;

use serde_json::Value;

use envsynth_core::{Check, FailureKind, Verdict};

use crate::plan::{Plan, parse_submission, plan_cost};
use crate::query::{Quantifier, Query, ids, room_type_ok};
use crate::world::{Mode, World};

/// Verify an arbitrary JSON submission (a plan object, or text containing one).
pub fn verify_submission(world: &World, q: &Query, task_id: &str, submission: &Value) -> Verdict {
    verdict_of(world, q, task_id, parse_submission(submission))
}

fn verdict_of(
    world: &World,
    q: &Query,
    task_id: &str,
    parsed: Result<Option<Plan>, String>,
) -> Verdict {
    let all_ids = || q.check_ids().into_iter().map(Cow::Borrowed);
    match parsed {
        Ok(Some(plan)) => verify_plan(world, q, task_id, &plan),
        Ok(None) => Verdict::rejected(
            task_id,
            FailureKind::EmptySubmission,
            "the submission is empty".into(),
            all_ids(),
        ),
        Err(e) => Verdict::rejected(task_id, FailureKind::MalformedSubmission, e, all_ids()),
    }
}

/// Verify a submission given as text (see [`crate::plan::parse_submission_text`]).
pub fn verify_submission_text(world: &World, q: &Query, task_id: &str, text: &str) -> Verdict {
    verdict_of(world, q, task_id, crate::plan::parse_submission_text(text))
}

/// Up to three offenders, for reasons.
fn list(items: &[String]) -> String {
    let mut s = items.iter().take(3).cloned().collect::<Vec<_>>().join("; ");
    if items.len() > 3 {
        s.push_str(&format!("; and {} more", items.len() - 3));
    }
    s
}

fn check(id: &'static str, problems: Vec<String>, ok: impl FnOnce() -> String) -> Check {
    if problems.is_empty() {
        Check::new(id, true, ok())
    } else {
        Check::new(id, false, list(&problems))
    }
}

pub fn verify_plan(world: &World, q: &Query, task_id: &str, plan: &Plan) -> Verdict {
    let mut checks = Vec::with_capacity(16);
    let n = plan.days.len();

    // 1. Within sandbox: every id exists, and every route connects the stated cities on that date.
    let mut bad = Vec::new();
    for d in &plan.days {
        let k = d.day;
        if world.city(&d.city).is_none() {
            bad.push(format!("day {k}: unknown city {}", d.city));
        }
        if let Some(t) = &d.travel {
            match world.route(&t.transport) {
                None => bad.push(format!("day {k}: unknown transport {}", t.transport)),
                Some(r) => {
                    if r.from != t.from || r.to != t.to {
                        bad.push(format!(
                            "day {k}: {} runs {}→{}, not {}→{}",
                            r.id, r.from, r.to, t.from, t.to
                        ));
                    }
                    if let Some(date) = &r.date
                        && *date != q.date(k)
                    {
                        bad.push(format!(
                            "day {k}: {} runs on {date}, not {}",
                            r.id,
                            q.date(k)
                        ));
                    }
                }
            }
        }
        for m in d.meals().into_iter().flatten() {
            if world.restaurant(m).is_none() {
                bad.push(format!("day {k}: unknown restaurant {m}"));
            }
        }
        for a in &d.attractions {
            if world.attraction(a).is_none() {
                bad.push(format!("day {k}: unknown attraction {a}"));
            }
        }
        if let Some(h) = &d.accommodation
            && world.accommodation(h).is_none()
        {
            bad.push(format!("day {k}: unknown accommodation {h}"));
        }
    }
    let sandbox_ok = bad.is_empty();
    checks.push(check(ids::WITHIN_SANDBOX, bad, || {
        "every id exists and every route matches its day".into()
    }));

    // 2. Complete information.
    let mut bad = Vec::new();
    if n != q.days as usize {
        bad.push(format!("{n} days given, {} required", q.days));
    }
    for (i, d) in plan.days.iter().enumerate() {
        let k = d.day;
        if k as usize != i + 1 {
            bad.push(format!("entry {} is numbered day {k}", i + 1));
        }
        for (slot, m) in ["breakfast", "lunch", "dinner"].iter().zip(d.meals()) {
            if m.is_none() {
                bad.push(format!("day {k}: no {slot}"));
            }
        }
        if d.travel.is_none() && d.attractions.is_empty() {
            bad.push(format!("day {k}: no attraction on a day without travel"));
        }
        let last = i + 1 == n;
        match (&d.accommodation, last) {
            (None, false) => bad.push(format!("day {k}: no accommodation")),
            (Some(h), true) => {
                bad.push(format!("day {k}: accommodation {h} booked on the last day"))
            }
            _ => {}
        }
    }
    let complete_ok = bad.is_empty();
    checks.push(check(ids::COMPLETE_INFORMATION, bad, || {
        format!("{n} complete days")
    }));

    // 3. Within current city.
    let mut bad = Vec::new();
    for (i, d) in plan.days.iter().enumerate() {
        let k = d.day;
        if let Some(t) = &d.travel {
            if t.to != d.city {
                bad.push(format!(
                    "day {k}: travels to {} but ends in {}",
                    t.to, d.city
                ));
            }
            if i > 0 && t.from != plan.days[i - 1].city {
                bad.push(format!(
                    "day {k}: leaves from {} but day {} ended in {}",
                    t.from,
                    k - 1,
                    plan.days[i - 1].city
                ));
            }
        } else if i > 0 && d.city != plan.days[i - 1].city {
            bad.push(format!(
                "day {k}: ends in {} without travelling from {}",
                d.city,
                plan.days[i - 1].city
            ));
        }
        for m in d.meals().into_iter().flatten() {
            if let Some(r) = world.restaurant(m)
                && !d.touches(&r.city)
            {
                bad.push(format!("day {k}: restaurant {m} is in {}", r.city));
            }
        }
        for a in &d.attractions {
            if let Some(x) = world.attraction(a)
                && !d.touches(&x.city)
            {
                bad.push(format!("day {k}: attraction {a} is in {}", x.city));
            }
        }
        if let Some(h) = d
            .accommodation
            .as_ref()
            .and_then(|h| world.accommodation(h))
            && h.city != d.city
        {
            bad.push(format!(
                "day {k}: accommodation {} is in {}, the day ends in {}",
                h.id, h.city, d.city
            ));
        }
    }
    checks.push(check(ids::WITHIN_CURRENT_CITY, bad, || {
        "every venue lies in its day's cities".into()
    }));

    // 4. Reasonable city route.
    let mut bad = Vec::new();
    match plan.days.first().and_then(|d| d.travel.as_ref()) {
        Some(t) if t.from == q.origin => {}
        Some(t) => bad.push(format!(
            "day 1 departs from {}, not the origin {}",
            t.from, q.origin
        )),
        None => bad.push("day 1 does not depart from the origin".into()),
    }
    match plan.days.last() {
        Some(d) if d.city == q.origin && d.travel.is_some() => {}
        Some(d) => bad.push(format!(
            "the last day ends in {}, not back at the origin {}",
            d.city, q.origin
        )),
        None => bad.push("no days".into()),
    }
    let mut visited: Vec<&str> = Vec::new();
    for d in plan.days.iter().take(n.saturating_sub(1)) {
        if d.city == q.origin {
            bad.push(format!(
                "day {}: back at the origin before the last day",
                d.day
            ));
        } else if visited.last() != Some(&d.city.as_str()) {
            if visited.contains(&d.city.as_str()) {
                bad.push(format!("day {}: revisits {}", d.day, d.city));
            } else {
                visited.push(&d.city);
            }
        }
    }
    if visited.len() != q.visiting_cities as usize {
        bad.push(format!(
            "visits {} cities, {} required",
            visited.len(),
            q.visiting_cities
        ));
    }
    for c in &visited {
        if let Some(city) = world.city(c) {
            if city.state != q.destination_state {
                bad.push(format!(
                    "{c} is in {}, not {}",
                    city.state, q.destination_state
                ));
            } else if q.destination_city.as_deref().is_some_and(|dc| dc != *c) {
                bad.push(format!("{c} is not the destination city"));
            }
        }
    }
    checks.push(check(ids::REASONABLE_CITY_ROUTE, bad, || {
        format!("closed route through {}", visited.join(", "))
    }));

    // 5, 6. Diversity.
    for (id, what, items) in [
        (
            ids::DIVERSE_RESTAURANTS,
            "restaurant",
            plan.days
                .iter()
                .flat_map(|d| d.meals().into_iter().flatten())
                .collect::<Vec<_>>(),
        ),
        (
            ids::DIVERSE_ATTRACTIONS,
            "attraction",
            plan.days
                .iter()
                .flat_map(|d| d.attractions.iter())
                .collect(),
        ),
    ] {
        let mut seen = HashSet::with_capacity(items.len());
        let dup: Vec<String> = items
            .iter()
            .filter(|x| !seen.insert(**x))
            .map(|x| format!("{what} {x} repeated"))
            .collect();
        checks.push(check(id, dup, || {
            format!("{} distinct {what}s", items.len())
        }));
    }

    // 7. Non-conflicting transport.
    let modes: Vec<Mode> = plan
        .days
        .iter()
        .filter_map(|d| {
            d.travel
                .as_ref()
                .and_then(|t| world.route(&t.transport))
                .map(|r| r.mode)
        })
        .collect();
    let driving = modes.contains(&Mode::SelfDriving);
    let mut bad = Vec::new();
    for other in [Mode::Flight, Mode::Taxi] {
        if driving && modes.contains(&other) {
            bad.push(format!("self-driving combined with {}", other.phrase()));
        }
    }
    checks.push(check(ids::NON_CONFLICTING_TRANSPORT, bad, || {
        "transport modes are compatible".into()
    }));

    // 8. Minimum nights: each run of consecutive nights at one place is long enough.
    let mut bad = Vec::new();
    let mut i = 0;
    while i < n {
        let Some(h) = plan.days[i].accommodation.as_ref() else {
            i += 1;
            continue;
        };
        let mut j = i;
        while j < n && plan.days[j].accommodation.as_ref() == Some(h) {
            j += 1;
        }
        if let Some(acc) = world.accommodation(h)
            && ((j - i) as u32) < acc.min_nights
        {
            bad.push(format!(
                "{h}: {} nights from day {}, minimum {}",
                j - i,
                i + 1,
                acc.min_nights
            ));
        }
        i = j;
    }
    checks.push(check(ids::MINIMUM_NIGHTS, bad, || {
        "every stay meets its minimum nights".into()
    }));

    // Hard constraints: only meaningful over a complete plan of real ids (TravelPlanner's rule).
    let hard_ids = q
        .check_ids()
        .into_iter()
        .filter(|id| id.starts_with("hard."));
    if !(sandbox_ok && complete_ok) {
        for id in hard_ids {
            checks.push(Check::skipped(
                id,
                "not evaluated: the plan is incomplete or names unknown ids",
            ));
        }
        return Verdict::from_checks(task_id, checks);
    }
    let stays: Vec<_> = plan
        .days
        .iter()
        .filter_map(|d| {
            d.accommodation
                .as_ref()
                .and_then(|h| world.accommodation(h))
        })
        .collect();
    let cost = plan_cost(world, q.people, plan);
    checks.push(Check::new(
        ids::BUDGET,
        cost.total <= q.budget as u64,
        format!(
            "total cost ${} against a budget of ${}",
            cost.total, q.budget
        ),
    ));
    if let Some(rule) = &q.room_rule {
        let bad: Vec<String> = stays
            .iter()
            .filter(|h| h.forbids.contains(rule))
            .map(|h| format!("{} forbids {rule}", h.id))
            .collect();
        checks.push(check(ids::ROOM_RULE, bad, || {
            format!("every stay allows {rule}")
        }));
    }
    if let Some(t) = &q.room_type {
        let bad: Vec<String> = stays
            .iter()
            .filter(|h| !room_type_ok(t, &h.room_type))
            .map(|h| format!("{} is a {}", h.id, h.room_type))
            .collect();
        checks.push(check(ids::ROOM_TYPE, bad, || {
            format!("every stay is a {t}")
        }));
    }
    if !q.cuisines.is_empty() {
        let meals: Vec<_> = plan
            .days
            .iter()
            .flat_map(|d| d.meals().into_iter().flatten())
            .filter_map(|m| world.restaurant(m))
            .filter(|r| r.city != q.origin)
            .collect();
        let bad: Vec<String> = q
            .cuisines
            .iter()
            .filter(|c| !meals.iter().any(|r| r.cuisines.contains(c)))
            .map(|c| format!("no {c} meal"))
            .collect();
        checks.push(check(ids::CUISINE, bad, || {
            format!("{} all served", q.cuisines.join(", "))
        }));
    }
    if !q.excluded_modes.is_empty() {
        let bad: Vec<String> = modes
            .iter()
            .filter(|m| q.excluded_modes.contains(m))
            .map(|m| format!("uses {}", m.phrase()))
            .collect();
        checks.push(check(ids::TRANSPORT, bad, || {
            "no excluded transport".into()
        }));
    }
    if let Some(min) = q.min_accommodation_rating {
        let bad: Vec<String> = stays
            .iter()
            .filter(|h| h.rating < min)
            .map(|h| format!("{} is rated {:.1}", h.id, h.rating))
            .collect();
        checks.push(check(ids::ACCOMMODATION_RATING, bad, || {
            format!("every stay rated at least {min:.1}")
        }));
    }
    if let Some(rule) = &q.tiered {
        checks.push(tiered_check(world, rule, plan));
    }
    Verdict::from_checks(task_id, checks)
}

fn tiered_check(world: &World, rule: &crate::query::TierRule, plan: &Plan) -> Check {
    let id = ids::TIERED_DINING;
    let Some(day) = (rule.day as usize)
        .checked_sub(1)
        .and_then(|i| plan.days.get(i))
    else {
        return Check::new(id, false, format!("there is no day {}", rule.day));
    };
    let Some(h) = day
        .accommodation
        .as_ref()
        .and_then(|h| world.accommodation(h))
    else {
        return Check::new(
            id,
            false,
            format!("day {} has no accommodation to set the tier", rule.day),
        );
    };
    let Some(tier) = rule.tier_for(h.nightly_price) else {
        return Check::new(
            id,
            true,
            format!("${} per night falls in no tier", h.nightly_price),
        );
    };
    let meals: Vec<_> = day
        .meals()
        .into_iter()
        .flatten()
        .filter_map(|m| world.restaurant(m))
        .collect();
    let mut bad = Vec::new();
    if let Some(cap) = tier.max_meal_cost {
        let sum: u32 = meals.iter().map(|r| r.average_cost).sum();
        if sum >= cap {
            bad.push(format!(
                "day {} meals cost ${sum} per person, limit below ${cap}",
                rule.day
            ));
        }
    }
    let rated = meals.iter().filter(|r| r.rating >= tier.min_rating).count();
    let rating_ok = match tier.quantifier {
        Quantifier::All => rated == meals.len(),
        Quantifier::Any => rated >= 1,
    };
    if !rating_ok {
        bad.push(format!(
            "day {}: {rated} of {} restaurants rated at least {:.1}",
            rule.day,
            meals.len(),
            tier.min_rating
        ));
    }
    if let Some(cap) = tier.max_ticket {
        for a in day.attractions.iter().filter_map(|a| world.attraction(a)) {
            if a.ticket_price >= cap {
                bad.push(format!(
                    "day {}: {} costs ${}, limit below ${cap}",
                    rule.day, a.id, a.ticket_price
                ));
            }
        }
    }
    check(id, bad, || {
        format!(
            "day {} follows the ${}+ tier's rules",
            rule.day, tier.min_price
        )
    })
}
