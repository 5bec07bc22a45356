//! Single-constraint mutants of a planted plan, one per constraint of the task. Each breaks its
//! target constraint and tries to leave the others alone; certification requires that the
//! verifier rejects each one with its target check named.

use envsynth_core::Mutant;

use crate::plan::{Plan, plan_cost};
use crate::query::{Query, ids, room_type_ok};
use crate::world::{Accommodation, Mode, World, id_index};

fn mutant(target: &'static str, solution: Option<Plan>) -> Option<Mutant<Plan>> {
    solution.map(|solution| Mutant {
        target: target.into(),
        solution,
    })
}

/// Indices of days that stay in one city.
fn still_days(p: &Plan) -> impl Iterator<Item = usize> + '_ {
    p.days
        .iter()
        .enumerate()
        .filter(|(_, d)| d.travel.is_none())
        .map(|(i, _)| i)
}

/// Which restaurants (by index) the plan already uses.
fn taken_restaurants(w: &World, p: &Plan) -> Vec<bool> {
    let mut taken = vec![false; w.restaurants.len()];
    for m in p.days.iter().flat_map(|d| d.meals().into_iter().flatten()) {
        if let Some(i) = id_index(m, b'R').filter(|&i| i < taken.len()) {
            taken[i] = true;
        }
    }
    taken
}

/// Index of a world restaurant (its id encodes it).
fn ri(r: &crate::world::Restaurant) -> usize {
    id_index(&r.id, b'R').unwrap_or(usize::MAX)
}

fn is_taken(taken: &[bool], r: &crate::world::Restaurant) -> bool {
    taken.get(ri(r)).copied().unwrap_or(true)
}

/// Replace every stay at one accommodation with `pick(city, nights, current)`, trying each stay.
fn swap_stay(
    w: &World,
    p: &Plan,
    pick: impl Fn(&Accommodation, u32) -> Option<String>,
) -> Option<Plan> {
    let mut i = 0;
    while i < p.days.len() {
        let Some(h) = p.days[i].accommodation.clone() else {
            i += 1;
            continue;
        };
        let mut j = i;
        while j < p.days.len() && p.days[j].accommodation.as_ref() == Some(&h) {
            j += 1;
        }
        if let Some(cur) = w.accommodation(&h)
            && let Some(new) = pick(cur, (j - i) as u32)
        {
            let mut m = p.clone();
            for d in &mut m.days[i..j] {
                d.accommodation = Some(new.clone());
            }
            return Some(m);
        }
        i = j;
    }
    None
}

/// Accommodations in `cur`'s city that are otherwise as acceptable as `cur`, filtered by `bad`.
fn alternative<'w>(
    w: &'w World,
    q: &Query,
    cur: &Accommodation,
    nights: u32,
    skip: &str,
    bad: impl Fn(&Accommodation) -> bool,
) -> Option<&'w Accommodation> {
    w.accommodations
        .iter()
        .filter(|h| h.city == cur.city && h.id != cur.id && bad(h))
        .filter(|h| q.accepts_stay(h, nights, Some(skip)))
        .min_by_key(|h| (h.nightly_price, h.id.clone()))
        // No listing breaks only the target: accept one that breaks others too (still names it).
        .or_else(|| {
            w.accommodations
                .iter()
                .filter(|h| h.city == cur.city && h.id != cur.id && bad(h))
                .min_by_key(|h| (h.nightly_price, h.id.clone()))
        })
}

pub fn mutants(w: &World, q: &Query, p: &Plan) -> Vec<Mutant<Plan>> {
    let mut out = Vec::new();
    let mut push = |m: Option<Mutant<Plan>>| out.extend(m);
    let still: Vec<usize> = still_days(p).collect();

    // Hallucinated restaurant id.
    push(mutant(ids::WITHIN_SANDBOX, {
        let mut m = p.clone();
        if let Some(d) = m.days.last_mut() {
            d.lunch = Some(format!("R{}", w.restaurants.len() + 100));
        }
        Some(m)
    }));
    // An attraction-less day without travel.
    push(mutant(
        ids::COMPLETE_INFORMATION,
        still.first().map(|&i| {
            let mut m = p.clone();
            m.days[i].attractions.clear();
            m
        }),
    ));
    // An attraction from another city.
    push(mutant(
        ids::WITHIN_CURRENT_CITY,
        still.first().and_then(|&i| {
            let city = &p.days[i].city;
            let cur = p.days[i]
                .attractions
                .first()
                .and_then(|a| w.attraction(a))?;
            let other = w
                .attractions
                .iter()
                .filter(|a| {
                    a.city != *city && !p.days.iter().any(|d| d.attractions.contains(&a.id))
                })
                .min_by_key(|a| (a.ticket_price.max(cur.ticket_price), a.id.clone()))?;
            let mut m = p.clone();
            m.days[i].attractions = vec![other.id.clone()];
            Some(m)
        }),
    ));
    // Revisit: go back to the first city instead of returning home, or (single-city trips) never
    // leave the destination.
    push(mutant(ids::REASONABLE_CITY_ROUTE, {
        let mut m = p.clone();
        let n = m.days.len();
        if n >= 2 {
            let last = &mut m.days[n - 1];
            last.travel = None;
            last.city = p.days[n - 2].city.clone();
            if last.attractions.is_empty() {
                // keep the day complete: reuse nothing, pick a fresh attraction in that city
                let fresh = w.attractions.iter().find(|a| {
                    a.city == last.city && !p.days.iter().any(|d| d.attractions.contains(&a.id))
                });
                last.attractions = fresh.map(|a| vec![a.id.clone()]).unwrap_or_default();
            }
        }
        Some(m)
    }));
    // The same restaurant for breakfast and lunch on a day that stays put (the cheaper one twice).
    push(mutant(
        ids::DIVERSE_RESTAURANTS,
        still.first().and_then(|&i| {
            let d = &p.days[i];
            let (b, l) = (
                w.restaurant(d.breakfast.as_ref()?)?,
                w.restaurant(d.lunch.as_ref()?)?,
            );
            let mut m = p.clone();
            let keep = if b.average_cost <= l.average_cost {
                b
            } else {
                l
            };
            m.days[i].breakfast = Some(keep.id.clone());
            m.days[i].lunch = Some(keep.id.clone());
            Some(m)
        }),
    ));
    // Visit an already-visited attraction again on the day of arrival in its city.
    push(mutant(
        ids::DIVERSE_ATTRACTIONS,
        still.first().and_then(|&i| {
            let a = p.days[i].attractions.first()?.clone();
            let arrival = (0..i).rev().find(|&k| {
                p.days[k]
                    .travel
                    .as_ref()
                    .is_some_and(|t| t.to == p.days[i].city)
            })?;
            let mut m = p.clone();
            m.days[arrival].attractions.push(a);
            Some(m)
        }),
    ));
    // Self-driving mixed with a taxi.
    push(mutant(ids::NON_CONFLICTING_TRANSPORT, {
        let legs: Vec<usize> = (0..p.days.len())
            .filter(|&k| p.days[k].travel.is_some())
            .collect();
        let mode_of = |k: usize| {
            p.days[k]
                .travel
                .as_ref()
                .and_then(|t| w.route(&t.transport))
                .map(|r| r.mode)
        };
        let with_mode = |k: usize, mode: Mode| {
            let t = p.days[k].travel.as_ref()?;
            w.routes
                .iter()
                .find(|r| r.mode == mode && r.from == t.from && r.to == t.to)
                .map(|r| r.id.clone())
        };
        let mut m = p.clone();
        let driving = legs.iter().any(|&k| mode_of(k) == Some(Mode::SelfDriving));
        let (a, b) = (legs.first().copied(), legs.last().copied());
        match (a, b) {
            (Some(a), Some(b)) if a != b => {
                let (ma, mb) = if driving {
                    (Mode::SelfDriving, Mode::Taxi)
                } else {
                    (Mode::Taxi, Mode::SelfDriving)
                };
                let ok = [(a, ma), (b, mb)]
                    .into_iter()
                    .all(|(k, mode)| match with_mode(k, mode) {
                        Some(id) => {
                            if let Some(t) = m.days[k].travel.as_mut() {
                                t.transport = id;
                            }
                            true
                        }
                        None => false,
                    });
                ok.then_some(m)
            }
            _ => None,
        }
    }));
    // A stay shorter than its minimum nights.
    push(mutant(
        ids::MINIMUM_NIGHTS,
        swap_stay(w, p, |cur, nights| {
            alternative(w, q, cur, nights, ids::MINIMUM_NIGHTS, |h| {
                h.min_nights > nights
            })
            .map(|h| h.id.clone())
        }),
    ));

    // Over budget: the priciest acceptable stays, then the priciest free restaurants.
    push(mutant(ids::BUDGET, {
        let mut m = p.clone();
        let mut i = 0;
        while i < m.days.len() {
            let Some(h) = m.days[i].accommodation.clone() else {
                i += 1;
                continue;
            };
            let mut j = i;
            while j < m.days.len() && m.days[j].accommodation.as_ref() == Some(&h) {
                j += 1;
            }
            if let Some(cur) = w.accommodation(&h) {
                let nights = (j - i) as u32;
                let dear = w
                    .accommodations
                    .iter()
                    .filter(|x| x.city == cur.city && q.accepts_stay(x, nights, None))
                    .max_by_key(|x| {
                        (
                            x.nightly_price as u64
                                * crate::plan::vehicles(q.people, x.max_occupancy),
                            x.id.clone(),
                        )
                    });
                if let Some(dear) = dear {
                    for d in &mut m.days[i..j] {
                        d.accommodation = Some(dear.id.clone());
                    }
                }
            }
            i = j;
        }
        if plan_cost(w, q.people, &m).total <= q.budget as u64 {
            let mut taken = taken_restaurants(w, &m);
            for d in &mut m.days {
                for slot in 0..3 {
                    let Some(cur) = d.meal_mut(slot).as_ref().and_then(|r| w.restaurant(r)) else {
                        continue;
                    };
                    let dear = w
                        .restaurants
                        .iter()
                        .filter(|r| {
                            r.city == cur.city
                                && !is_taken(&taken, r)
                                && r.average_cost > cur.average_cost
                        })
                        .filter(|r| {
                            cur.cuisines
                                .iter()
                                .all(|c| !q.cuisines.contains(c) || r.cuisines.contains(c))
                        })
                        .max_by_key(|r| (r.average_cost, r.id.clone()));
                    if let Some(dear) = dear {
                        taken[ri(dear)] = true;
                        *d.meal_mut(slot) = Some(dear.id.clone());
                    }
                }
            }
        }
        (plan_cost(w, q.people, &m).total > q.budget as u64).then_some(m)
    }));
    if let Some(rule) = &q.room_rule {
        push(mutant(
            ids::ROOM_RULE,
            swap_stay(w, p, |cur, n| {
                alternative(w, q, cur, n, ids::ROOM_RULE, |h| h.forbids.contains(rule))
                    .map(|h| h.id.clone())
            }),
        ));
    }
    if let Some(t) = &q.room_type {
        push(mutant(
            ids::ROOM_TYPE,
            swap_stay(w, p, |cur, n| {
                alternative(w, q, cur, n, ids::ROOM_TYPE, |h| {
                    !room_type_ok(t, &h.room_type)
                })
                .map(|h| h.id.clone())
            }),
        ));
    }
    if let Some(min) = q.min_accommodation_rating {
        push(mutant(
            ids::ACCOMMODATION_RATING,
            swap_stay(w, p, |cur, n| {
                alternative(w, q, cur, n, ids::ACCOMMODATION_RATING, |h| h.rating < min)
                    .map(|h| h.id.clone())
            }),
        ));
    }
    // Drop the first required cuisine from every meal that serves it.
    if let Some(c) = q.cuisines.first() {
        push(mutant(ids::CUISINE, {
            let mut m = p.clone();
            let mut taken = taken_restaurants(w, p);
            let mut ok = true;
            for d in &mut m.days {
                for slot in 0..3 {
                    let Some(cur) = d.meal_mut(slot).as_ref().and_then(|r| w.restaurant(r)) else {
                        continue;
                    };
                    if !cur.cuisines.contains(c) {
                        continue;
                    }
                    let keep: Vec<&String> = cur
                        .cuisines
                        .iter()
                        .filter(|x| *x != c && q.cuisines.contains(x))
                        .collect();
                    let candidates = || {
                        w.restaurants.iter().filter(|r| {
                            r.city == cur.city && !is_taken(&taken, r) && !r.cuisines.contains(c)
                        })
                    };
                    let sub = candidates()
                        .filter(|r| keep.iter().all(|k| r.cuisines.contains(k)))
                        .min_by_key(|r| (r.average_cost.abs_diff(cur.average_cost), r.id.clone()))
                        .or_else(|| {
                            candidates().min_by_key(|r| {
                                (r.average_cost.abs_diff(cur.average_cost), r.id.clone())
                            })
                        });
                    match sub {
                        Some(r) => {
                            taken[ri(r)] = true;
                            *d.meal_mut(slot) = Some(r.id.clone());
                        }
                        None => ok = false,
                    }
                }
            }
            ok.then_some(m)
        }));
    }
    // Use an excluded mode on some leg.
    if let Some(&mode) = q.excluded_modes.first() {
        push(mutant(
            ids::TRANSPORT,
            (0..p.days.len()).find_map(|k| {
                let t = p.days[k].travel.as_ref()?;
                let date = q.date(k as u32 + 1);
                let r = w.routes.iter().find(|r| {
                    r.mode == mode
                        && r.from == t.from
                        && r.to == t.to
                        && r.date.as_ref().is_none_or(|d| *d == date)
                })?;
                let mut m = p.clone();
                if let Some(t) = m.days[k].travel.as_mut() {
                    t.transport = r.id.clone();
                }
                Some(m)
            }),
        ));
    }
    // Break the tier day's rules: low-rated restaurants, or a too-expensive attraction.
    if let Some(rule) = &q.tiered {
        push(mutant(ids::TIERED_DINING, tier_mutant(w, q, p, rule)));
    }
    out
}

fn tier_mutant(w: &World, q: &Query, p: &Plan, rule: &crate::query::TierRule) -> Option<Plan> {
    let k = (rule.day as usize).checked_sub(1)?;
    let day = p.days.get(k)?;
    let hotel = w.accommodation(day.accommodation.as_ref()?)?;
    let tier = rule.tier_for(hotel.nightly_price)?;
    let taken = taken_restaurants(w, p);
    // Which meals to replace: one is enough under "all", every one under "any".
    let slots: Vec<usize> = match tier.quantifier {
        crate::query::Quantifier::All => vec![0],
        crate::query::Quantifier::Any => vec![0, 1, 2],
    };
    for keep_cuisines in [true, false] {
        let mut m = p.clone();
        let mut fresh: Vec<String> = Vec::new();
        let ok = slots.iter().all(|&slot| {
            let Some(cur) = m.days[k]
                .meal_mut(slot)
                .as_ref()
                .and_then(|r| w.restaurant(r))
            else {
                return false;
            };
            if cur.rating < tier.min_rating {
                return true;
            }
            let sub = w
                .restaurants
                .iter()
                .filter(|r| r.city == cur.city && r.rating < tier.min_rating)
                .filter(|r| !is_taken(&taken, r) && !fresh.contains(&r.id))
                .filter(|r| {
                    !keep_cuisines
                        || cur
                            .cuisines
                            .iter()
                            .all(|c| !q.cuisines.contains(c) || r.cuisines.contains(c))
                })
                .min_by_key(|r| (r.average_cost, r.id.clone()));
            match sub {
                Some(r) => {
                    fresh.push(r.id.clone());
                    *m.days[k].meal_mut(slot) = Some(r.id.clone());
                    true
                }
                None => false,
            }
        });
        if ok {
            return Some(m);
        }
    }
    let cap = tier.max_ticket?;
    let a = w
        .attractions
        .iter()
        .filter(|a| a.city == day.city && a.ticket_price >= cap)
        .filter(|a| !p.days.iter().any(|d| d.attractions.contains(&a.id)))
        .min_by_key(|a| (a.ticket_price, a.id.clone()))?;
    let mut m = p.clone();
    m.days[k].attractions.push(a.id.clone());
    Some(m)
}
