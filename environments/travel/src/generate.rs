//! The generator stages: sample parameters → build world → compose constraints → plant a
//! solution (and fix the budget from its cost). Certification and rendering live in `lib.rs`.

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand_chacha::ChaCha8Rng;

use envsynth_core::{Rejection, Stage};

use crate::data::data;
use crate::date;
use crate::params::Knobs;
use crate::plan::{DayPlan, Plan, Travel, plan_cost, route_cost, vehicles};
use crate::query::{Quantifier, Query, ROOM_TYPE_REQUIREMENTS, Tier, TierRule};
use crate::world::{Accommodation, Mode, World, WorldPlan, build_world, city_id};

/// Which optional hard constraints a task carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extra {
    Cuisine,
    RoomType,
    RoomRule,
    Transport,
    Rating,
    Tiered,
}

const EXTRAS: [Extra; 6] = [
    Extra::Cuisine,
    Extra::RoomType,
    Extra::RoomRule,
    Extra::Transport,
    Extra::Rating,
    Extra::Tiered,
];

/// Output of the sample-parameters stage.
pub struct Sampled {
    pub knobs: Knobs,
    pub world_plan: WorldPlan,
    pub people: u32,
    /// World city indices of the visited cities, in visiting order (origin is city 0).
    pub route: Vec<usize>,
    /// Nights in each visited city.
    pub nights: Vec<u32>,
    pub extras: Vec<Extra>,
    pub slack: f64,
}

pub fn sample_params(rng: &mut ChaCha8Rng, knobs: &Knobs) -> Sampled {
    let geo = &data().geography.states;
    let days = *knobs.days.choose(rng).unwrap_or(&3);
    let visiting = (days - 1) / 2;
    let origin_state = rng.random_range(0..geo.len());
    let mut dest_state = rng.random_range(0..geo.len() - 1);
    if dest_state >= origin_state {
        dest_state += 1;
    }
    let origin_city = rng.random_range(0..geo[origin_state].cities.len());
    let n_dest = (knobs.state_cities as usize).min(geo[dest_state].cities.len());
    let mut dest_cities: Vec<usize> = (0..geo[dest_state].cities.len()).collect();
    dest_cities.shuffle(rng);
    dest_cities.truncate(n_dest);
    // Visit `visiting` of the destination cities (world indices 1..), in random order.
    let mut route: Vec<usize> = (1..=n_dest).collect();
    route.shuffle(rng);
    route.truncate(visiting as usize);
    // Split days-1 nights into `visiting` runs of at least one night.
    let mut nights = vec![1u32; visiting as usize];
    for _ in 0..(days - 1 - visiting) {
        let i = rng.random_range(0..nights.len());
        nights[i] += 1;
    }
    let mut extras: Vec<Extra> = Vec::new();
    if knobs.require_transport_constraint && knobs.extra_constraints > 0 {
        extras.push(Extra::Transport);
    }
    let mut pool: Vec<Extra> = EXTRAS
        .iter()
        .copied()
        .filter(|e| !extras.contains(e))
        .collect();
    pool.shuffle(rng);
    extras.extend(
        pool.into_iter()
            .take(knobs.extra_constraints as usize - extras.len()),
    );
    extras.sort_by_key(|e| EXTRAS.iter().position(|x| x == e));
    let start_day = date::days_from_civil(2027, 1, 1) + rng.random_range(0..365);
    Sampled {
        people: rng.random_range(knobs.people_min..=knobs.people_max),
        slack: rng.random_range(knobs.budget_slack_min..=knobs.budget_slack_max),
        world_plan: WorldPlan {
            origin_state,
            origin_city,
            dest_state,
            dest_cities,
            start_day,
            days,
            max_nights: nights.iter().copied().max().unwrap_or(1),
        },
        knobs: knobs.clone(),
        route,
        nights,
        extras,
    }
}

pub fn world(rng: &mut ChaCha8Rng, s: &Sampled) -> World {
    build_world(rng, &s.knobs, &s.world_plan)
}

/// Compose the query: concrete constraint values drawn so that the world can satisfy them.
/// The budget is left at 0 until a solution is planted.
pub fn compose(rng: &mut ChaCha8Rng, s: &Sampled, w: &World) -> Query {
    let cat = &data().catalog;
    let days = s.world_plan.days;
    let mut q = Query {
        origin: city_id(0),
        destination_state: w.states[1].name.clone(),
        destination_city: (s.route.len() == 1).then(|| city_id(s.route[0])),
        start_day: s.world_plan.start_day,
        days,
        visiting_cities: s.route.len() as u32,
        people: s.people,
        budget: 0,
        room_rule: None,
        room_type: None,
        cuisines: Vec::new(),
        excluded_modes: Vec::new(),
        min_accommodation_rating: None,
        tiered: None,
    };
    for e in &s.extras {
        match e {
            Extra::RoomRule => q.room_rule = cat.house_rules.choose(rng).cloned(),
            Extra::RoomType => {
                q.room_type = ROOM_TYPE_REQUIREMENTS.choose(rng).map(|t| t.to_string())
            }
            Extra::Cuisine => {
                let route_ids: Vec<String> = s.route.iter().map(|&c| city_id(c)).collect();
                let mut available: Vec<&String> = w
                    .restaurants
                    .iter()
                    .filter(|r| route_ids.contains(&r.city))
                    .flat_map(|r| r.cuisines.iter())
                    .collect();
                available.sort();
                available.dedup();
                let k = rng.random_range(1..=3.min(available.len().max(1)));
                let mut picked: Vec<String> = available
                    .choose_multiple(rng, k)
                    .map(|c| (*c).clone())
                    .collect();
                picked.sort();
                q.cuisines = picked;
            }
            Extra::Transport => {
                // Exclude flights only where a leg could fly, so the constraint is never vacuous.
                let l = layout(s);
                let can_fly = (0..l.end.len()).any(|d| {
                    l.from[d].is_some_and(|f| {
                        let (fid, tid, dt) = (
                            city_id(f),
                            city_id(l.end[d]),
                            date::iso(q.start_day + d as i64),
                        );
                        w.routes.iter().any(|r| {
                            r.mode == Mode::Flight
                                && r.from == fid
                                && r.to == tid
                                && r.date.as_ref() == Some(&dt)
                        })
                    })
                });
                let mode = if can_fly && rng.random::<bool>() {
                    Mode::Flight
                } else {
                    Mode::SelfDriving
                };
                q.excluded_modes = vec![mode];
            }
            Extra::Rating => {
                q.min_accommodation_rating = Some(*[3.0, 3.5, 4.0].choose(rng).unwrap_or(&3.0))
            }
            Extra::Tiered => {
                let low = rng.random_range(12..=18) * 10;
                let high = low + rng.random_range(10..=18) * 10;
                q.tiered = Some(TierRule {
                    day: rng.random_range(1..days),
                    tiers: vec![
                        Tier {
                            min_price: high,
                            max_price: None,
                            max_meal_cost: Some(rng.random_range(9..=16) * 10),
                            min_rating: 4.0,
                            quantifier: Quantifier::All,
                            max_ticket: Some(rng.random_range(5..=8) * 5),
                        },
                        Tier {
                            min_price: low,
                            max_price: Some(high),
                            max_meal_cost: None,
                            min_rating: 4.0,
                            quantifier: Quantifier::Any,
                            max_ticket: Some(rng.random_range(8..=12) * 5),
                        },
                        Tier {
                            min_price: 0,
                            max_price: Some(low),
                            max_meal_cost: None,
                            min_rating: 3.2,
                            quantifier: Quantifier::Any,
                            max_ticket: None,
                        },
                    ],
                })
            }
        }
    }
    q
}

/// The day-by-day shape of the planted route.
pub struct Layout {
    /// Per day (0-based): the city where it ends (world index) and, if it travels, from where.
    pub end: Vec<usize>,
    pub from: Vec<Option<usize>>,
}

pub fn layout(s: &Sampled) -> Layout {
    let days = s.world_plan.days as usize;
    let mut end = Vec::with_capacity(days);
    let mut from = Vec::with_capacity(days);
    let mut prev = 0usize;
    for (&c, &n) in s.route.iter().zip(&s.nights) {
        for k in 0..n {
            end.push(c);
            from.push((k == 0).then_some(prev));
        }
        prev = c;
    }
    end.push(0);
    from.push(Some(prev));
    Layout { end, from }
}

/// The city each meal of a day is eaten in: on a travel day, the non-origin end for all meals
/// when the other end is the origin, else breakfast where you wake and lunch/dinner where you sleep.
pub fn meal_city(l: &Layout, day: usize, slot: usize) -> usize {
    match l.from[day] {
        None => l.end[day],
        Some(0) => l.end[day],
        Some(f) if l.end[day] == 0 => f,
        Some(f) => {
            if slot == 0 {
                f
            } else {
                l.end[day]
            }
        }
    }
}

fn reject(code: &'static str, detail: String) -> Rejection {
    Rejection::new(Stage::Plant, code, detail)
}

/// Plant the cheapest plan this construction finds for the sampled route, then set the budget to
/// its cost × (1 + slack), rounded up to $10.
pub fn plant(s: &Sampled, w: &World, q: &mut Query) -> Result<Plan, Rejection> {
    let plan = plant_plan(s, w, q)?;
    let cost = plan_cost(w, q.people, &plan).total as f64;
    q.budget = ((cost * (1.0 + s.slack)) / 10.0).ceil() as u32 * 10;
    Ok(plan)
}

fn plant_plan(s: &Sampled, w: &World, q: &Query) -> Result<Plan, Rejection> {
    let l = layout(s);
    let days = l.end.len();
    let people = q.people;
    let date = |d: usize| date::iso(q.start_day + d as i64);

    // Transport: all legs self-driven, or each leg's cheapest other mode, whichever is cheaper.
    let legs: Vec<(usize, usize, usize)> = (0..days)
        .filter_map(|d| l.from[d].map(|f| (d, f, l.end[d])))
        .collect();
    let options = &|d: usize, f: usize, t: usize, driving: bool| {
        let (fid, tid, dt) = (&w.cities[f].id, &w.cities[t].id, date(d));
        w.routes
            .iter()
            .filter(move |r| {
                r.from == *fid && r.to == *tid && r.date.as_ref().is_none_or(|x| *x == dt)
            })
            .filter(move |r| {
                (r.mode == Mode::SelfDriving) == driving && !q.excluded_modes.contains(&r.mode)
            })
            .min_by_key(|r| (route_cost(r.mode, r.price, people), r.id.clone()))
    };
    let mut best: Option<(u64, Vec<String>)> = None;
    for driving in [true, false] {
        let picks: Option<Vec<_>> = legs
            .iter()
            .map(|&(d, f, t)| options(d, f, t, driving))
            .collect();
        if let Some(picks) = picks {
            let cost = picks
                .iter()
                .map(|r| route_cost(r.mode, r.price, people))
                .sum();
            if best.as_ref().is_none_or(|(c, _)| cost < *c) {
                best = Some((cost, picks.iter().map(|r| r.id.clone()).collect()));
            }
        }
    }
    let Some((_, transport)) = best else {
        return Err(reject(
            "no_transport",
            "no allowed transport for some leg".into(),
        ));
    };

    let mut plan = Plan {
        days: (0..days)
            .map(|d| DayPlan {
                day: d as u32 + 1,
                travel: None,
                city: city_id(l.end[d]),
                breakfast: None,
                lunch: None,
                dinner: None,
                attractions: Vec::new(),
                accommodation: None,
            })
            .collect(),
    };
    for (&(d, f, t), id) in legs.iter().zip(transport) {
        plan.days[d].travel = Some(Travel {
            from: city_id(f),
            to: city_id(t),
            transport: id,
        });
    }

    // Accommodation per visited city: cheapest eligible; for the tier day's city, the cheapest one
    // whose tier rules the day's meals can then meet.
    let tier_day = q.tiered.as_ref().map(|t| t.day as usize - 1);
    let mut used_r: Vec<bool> = vec![false; w.restaurants.len()];
    let mut used_a: Vec<bool> = vec![false; w.attractions.len()];
    let mut first = 0usize;
    for (&c, &n) in s.route.iter().zip(&s.nights) {
        let cid = city_id(c);
        let mut candidates: Vec<&Accommodation> = w
            .accommodations
            .iter()
            .filter(|h| h.city == cid)
            .filter(|h| q.accepts_stay(h, n, None))
            .collect();
        candidates.sort_by_key(|h| {
            (
                h.nightly_price as u64 * vehicles(people, h.max_occupancy),
                h.id.clone(),
            )
        });
        let nights = first..first + n as usize;
        let holds_tier = tier_day.is_some_and(|t| nights.contains(&t));
        let mut chosen = None;
        for h in candidates {
            if !holds_tier {
                chosen = Some(h);
                break;
            }
            let rule = q.tiered.as_ref().map(|r| r.tier_for(h.nightly_price));
            if let Some(Some(tier)) = rule {
                let t = tier_day.unwrap_or(0);
                if plant_tier_day(w, &l, t, tier, &mut plan.days[t], &mut used_r, &mut used_a) {
                    chosen = Some(h);
                    break;
                }
            }
        }
        let Some(h) = chosen else {
            return Err(reject(
                "no_accommodation",
                format!("no eligible accommodation in {cid} for {n} nights"),
            ));
        };
        for d in nights {
            plan.days[d].accommodation = Some(h.id.clone());
        }
        first += n as usize;
    }

    // Required cuisines: cheapest (slot, restaurant) pair serving each uncovered cuisine.
    let mut open: Vec<(usize, usize)> = (0..days)
        .flat_map(|d| (0..3).map(move |s| (d, s)))
        .filter(|&(d, s)| plan.days[d].meals()[s].is_none())
        .collect();
    for cuisine in &q.cuisines {
        let covered = plan
            .days
            .iter()
            .flat_map(|d| d.meals().into_iter().flatten())
            .any(|m| {
                w.restaurant(m)
                    .is_some_and(|r| r.cuisines.contains(cuisine))
            });
        if covered {
            continue;
        }
        let mut best: Option<(u32, usize, usize)> = None;
        for (k, &(d, slot)) in open.iter().enumerate() {
            let city = &w.cities[meal_city(&l, d, slot)].id;
            for (i, r) in w.restaurants.iter().enumerate() {
                if !used_r[i]
                    && r.city == *city
                    && r.cuisines.contains(cuisine)
                    && best.is_none_or(|b| r.average_cost < b.0)
                {
                    best = Some((r.average_cost, k, i));
                }
            }
        }
        let Some((_, k, i)) = best else {
            return Err(reject(
                "no_cuisine",
                format!("no free meal can serve {cuisine}"),
            ));
        };
        let (d, slot) = open.remove(k);
        *plan.days[d].meal_mut(slot) = Some(w.restaurants[i].id.clone());
        used_r[i] = true;
    }
    for (d, slot) in open {
        let city = &w.cities[meal_city(&l, d, slot)].id;
        let pick = (0..w.restaurants.len())
            .filter(|&i| !used_r[i] && w.restaurants[i].city == *city)
            .min_by_key(|&i| (w.restaurants[i].average_cost, i));
        let Some(i) = pick else {
            return Err(reject(
                "no_restaurant",
                format!("ran out of restaurants in {city}"),
            ));
        };
        *plan.days[d].meal_mut(slot) = Some(w.restaurants[i].id.clone());
        used_r[i] = true;
    }

    // One attraction on each day without travel.
    for d in 0..days {
        if l.from[d].is_some() || !plan.days[d].attractions.is_empty() {
            continue;
        }
        let city = &w.cities[l.end[d]].id;
        let pick = (0..w.attractions.len())
            .filter(|&i| !used_a[i] && w.attractions[i].city == *city)
            .min_by_key(|&i| (w.attractions[i].ticket_price, i));
        let Some(i) = pick else {
            return Err(reject(
                "no_attraction",
                format!("ran out of attractions in {city}"),
            ));
        };
        plan.days[d].attractions.push(w.attractions[i].id.clone());
        used_a[i] = true;
    }

    Ok(plan)
}

/// Fill the tier day's meals (and attraction, if it stays put) so that `tier` holds; false if the
/// city's venues cannot. Leaves nothing marked used on failure.
fn plant_tier_day(
    w: &World,
    l: &Layout,
    d: usize,
    tier: &Tier,
    day: &mut DayPlan,
    used_r: &mut [bool],
    used_a: &mut [bool],
) -> bool {
    let mut picks: Vec<usize> = Vec::with_capacity(3);
    for slot in 0..3 {
        let city = &w.cities[meal_city(l, d, slot)].id;
        let need_rating = tier.quantifier == Quantifier::All || (slot == 0);
        let pick = (0..w.restaurants.len())
            .filter(|&i| !used_r[i] && !picks.contains(&i) && w.restaurants[i].city == *city)
            .filter(|&i| !need_rating || w.restaurants[i].rating >= tier.min_rating)
            .min_by_key(|&i| (w.restaurants[i].average_cost, i));
        match pick {
            Some(i) => picks.push(i),
            None => return false,
        }
    }
    let total: u32 = picks.iter().map(|&i| w.restaurants[i].average_cost).sum();
    if tier.max_meal_cost.is_some_and(|cap| total >= cap) {
        return false;
    }
    let mut attraction = None;
    if l.from[d].is_none() {
        let city = &w.cities[l.end[d]].id;
        attraction = (0..w.attractions.len())
            .filter(|&i| !used_a[i] && w.attractions[i].city == *city)
            .filter(|&i| {
                tier.max_ticket
                    .is_none_or(|m| w.attractions[i].ticket_price < m)
            })
            .min_by_key(|&i| (w.attractions[i].ticket_price, i));
        if attraction.is_none() {
            return false;
        }
    }
    for (slot, &i) in picks.iter().enumerate() {
        used_r[i] = true;
        *day.meal_mut(slot) = Some(w.restaurants[i].id.clone());
    }
    if let Some(i) = attraction {
        used_a[i] = true;
        day.attractions = vec![w.attractions[i].id.clone()];
    }
    true
}
