//! The seeded synthetic world a task runs against: cities in states, dated flights, ground
//! transport, accommodations, restaurants and attractions. Every venue has a stable id whose
//! number is its index (`H007` is `accommodations[7]`), so lookups are O(1).

use rand::Rng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::data;
use crate::date;
use crate::params::Knobs;

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Flight,
    SelfDriving,
    Taxi,
    Train,
    Bus,
}

impl Mode {
    pub const ALL: [Mode; 5] = [
        Mode::Flight,
        Mode::SelfDriving,
        Mode::Taxi,
        Mode::Train,
        Mode::Bus,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Mode::Flight => "flight",
            Mode::SelfDriving => "self_driving",
            Mode::Taxi => "taxi",
            Mode::Train => "train",
            Mode::Bus => "bus",
        }
    }
    pub fn phrase(self) -> &'static str {
        match self {
            Mode::Flight => "flights",
            Mode::SelfDriving => "self-driving",
            Mode::Taxi => "taxis",
            Mode::Train => "trains",
            Mode::Bus => "buses",
        }
    }
    /// Seats per vehicle for modes priced per vehicle.
    pub fn vehicle_capacity(self) -> Option<u32> {
        match self {
            Mode::SelfDriving => Some(5),
            Mode::Taxi => Some(4),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub name: String,
    pub cities: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct City {
    pub id: String,
    pub name: String,
    pub state: String,
    #[serde(skip)]
    pub pos: (f64, f64),
}

/// A transport option between two cities: a dated flight, train or bus (priced per person) or an
/// undated self-drive or taxi route (priced per vehicle).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Route {
    pub id: String,
    pub mode: Mode,
    pub from: String,
    pub to: String,
    /// Service date for flights, trains and buses; `None` for self-driving and taxis (any day).
    pub date: Option<String>,
    /// Flight number or operator name.
    pub service: Option<String>,
    pub departure: Option<String>,
    pub duration_min: u32,
    pub distance_km: u32,
    /// Per person for flights, trains and buses; per vehicle for self-driving and taxis.
    pub price: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Accommodation {
    pub id: String,
    pub name: String,
    pub city: String,
    pub room_type: String,
    /// Per room per night.
    pub nightly_price: u32,
    pub max_occupancy: u32,
    pub min_nights: u32,
    /// House rules: things guests may not do (`parties`, `pets`, ...).
    pub forbids: Vec<String>,
    pub rating: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Restaurant {
    pub id: String,
    pub name: String,
    pub city: String,
    pub cuisines: Vec<String>,
    /// Per person per meal.
    pub average_cost: u32,
    pub rating: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Attraction {
    pub id: String,
    pub name: String,
    pub city: String,
    pub category: String,
    /// Per person.
    pub ticket_price: u32,
    pub rating: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct World {
    pub states: Vec<State>,
    pub cities: Vec<City>,
    pub routes: Vec<Route>,
    pub accommodations: Vec<Accommodation>,
    pub restaurants: Vec<Restaurant>,
    pub attractions: Vec<Attraction>,
}

/// Index of an id of the form `<prefix><number>`, if it is well-formed.
pub fn id_index(id: &str, prefix: u8) -> Option<usize> {
    let b = id.as_bytes();
    if b.len() < 2 || b[0] != prefix || !b[1..].iter().all(u8::is_ascii_digit) {
        return None;
    }
    id[1..].parse().ok()
}

macro_rules! lookup {
    ($name:ident, $field:ident, $ty:ty, $prefix:expr) => {
        pub fn $name(&self, id: &str) -> Option<&$ty> {
            let i = id_index(id, $prefix)?;
            self.$field.get(i).filter(|x| x.id == id)
        }
    };
}

impl World {
    lookup!(city, cities, City, b'C');
    lookup!(route, routes, Route, b'T');
    lookup!(accommodation, accommodations, Accommodation, b'H');
    lookup!(restaurant, restaurants, Restaurant, b'R');
    lookup!(attraction, attractions, Attraction, b'A');
}

pub fn city_id(i: usize) -> String {
    code("C", i, 2)
}

/// `prefix` followed by `n` zero-padded to `width` digits. World building formats thousands of
/// ids per task; this avoids the general formatting machinery.
pub fn code(prefix: &str, n: usize, width: usize) -> String {
    let mut digits = [0u8; 20];
    let (mut k, mut m) = (0, n);
    loop {
        digits[k] = b'0' + (m % 10) as u8;
        m /= 10;
        k += 1;
        if m == 0 {
            break;
        }
    }
    let mut s = String::with_capacity(prefix.len() + width.max(k));
    s.push_str(prefix);
    for _ in k..width {
        s.push('0');
    }
    for d in digits[..k].iter().rev() {
        s.push(*d as char);
    }
    s
}

/// `HH:MM` of minutes after midnight.
fn hhmm(minutes: u32) -> String {
    let mut s = code("", (minutes / 60) as usize, 2);
    s.push(':');
    s.push_str(&code("", (minutes % 60) as usize, 2));
    s
}

fn join2(a: &str, b: &str) -> String {
    let mut s = String::with_capacity(a.len() + b.len() + 1);
    s.push_str(a);
    s.push(' ');
    s.push_str(b);
    s
}

/// What the world builder needs to know about the trip it is building for.
pub struct WorldPlan {
    pub origin_state: usize,
    pub origin_city: usize,
    pub dest_state: usize,
    /// Indices into the destination state's city list.
    pub dest_cities: Vec<usize>,
    pub start_day: i64,
    pub days: u32,
    /// Most nights spent in one city on this trip (sizes venue lists so a plan always fits).
    pub max_nights: u32,
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Draw `n` distinct (i, j) pairs from an `a` × `b` grid (rejection sampling; n is small).
fn distinct_pairs(rng: &mut ChaCha8Rng, a: usize, b: usize, n: usize) -> Vec<(usize, usize)> {
    let n = n.min(a * b);
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(n);
    while out.len() < n {
        let pair = (rng.random_range(0..a), rng.random_range(0..b));
        if !out.contains(&pair) {
            out.push(pair);
        }
    }
    out
}

/// Draw `n` distinct names `prefix noun` (numbered once the combinations run out).
fn distinct_names(
    rng: &mut ChaCha8Rng,
    prefixes: &[String],
    nouns: &[String],
    n: usize,
) -> Vec<String> {
    let pairs = distinct_pairs(rng, prefixes.len(), nouns.len(), n);
    (0..n)
        .map(|i| match pairs.get(i) {
            Some(&(p, q)) => join2(&prefixes[p], &nouns[q]),
            None => format!(
                "{} {} {}",
                prefixes[i % prefixes.len()],
                nouns[i % nouns.len()],
                i
            ),
        })
        .collect()
}

pub fn build_world(rng: &mut ChaCha8Rng, knobs: &Knobs, plan: &WorldPlan) -> World {
    let d = data();
    let geo = &d.geography.states;
    let cat = &d.catalog;
    let names = &d.names;

    // Cities: the origin, then the destination state's cities.
    let mut cities = Vec::new();
    let place = |rng: &mut ChaCha8Rng, state: usize, city: usize, cities: &mut Vec<City>| {
        let s = &geo[state];
        let r = 180.0 * rng.random::<f64>().sqrt();
        let a = rng.random::<f64>() * std::f64::consts::TAU;
        cities.push(City {
            id: city_id(cities.len()),
            name: s.cities[city].clone(),
            state: s.name.clone(),
            pos: (s.x + r * a.cos(), s.y + r * a.sin()),
        });
    };
    place(rng, plan.origin_state, plan.origin_city, &mut cities);
    for &c in &plan.dest_cities {
        place(rng, plan.dest_state, c, &mut cities);
    }
    let states = vec![
        State {
            name: geo[plan.origin_state].name.clone(),
            cities: vec![cities[0].id.clone()],
        },
        State {
            name: geo[plan.dest_state].name.clone(),
            cities: cities[1..].iter().map(|c| c.id.clone()).collect(),
        },
    ];
    let km = |a: &City, b: &City| {
        let (dx, dy) = (a.pos.0 - b.pos.0, a.pos.1 - b.pos.1);
        ((dx * dx + dy * dy).sqrt() * 1.25).round().max(12.0) as u32
    };

    let dates: Vec<String> = (0..plan.days)
        .map(|d| date::iso(plan.start_day + d as i64))
        .collect();
    // Routes between every ordered pair of cities.
    let mut routes: Vec<Route> = Vec::new();
    let push = |routes: &mut Vec<Route>, r: Route| {
        let id = code("T", routes.len(), 4);
        routes.push(Route { id, ..r });
    };
    for a in 0..cities.len() {
        for b in 0..cities.len() {
            if a == b {
                continue;
            }
            let dist = km(&cities[a], &cities[b]);
            let drive_min = dist * 60 / 80 + 15;
            let (from, to) = (cities[a].id.clone(), cities[b].id.clone());
            let base = Route {
                id: String::new(),
                mode: Mode::SelfDriving,
                from: from.clone(),
                to: to.clone(),
                date: None,
                service: None,
                departure: None,
                duration_min: drive_min,
                distance_km: dist,
                price: ((dist as f64) * 0.06).round().max(5.0) as u32,
            };
            push(&mut routes, base.clone());
            push(
                &mut routes,
                Route {
                    mode: Mode::Taxi,
                    price: ((dist as f64) * 1.1).round() as u32 + 8,
                    ..base.clone()
                },
            );
            for date in &dates {
                if dist >= 150 && rng.random::<f64>() < knobs.flight_density {
                    for _ in 0..rng.random_range(1..=2) {
                        let airline = cat.airlines.choose(rng).map(String::as_str).unwrap_or("NV");
                        let dep = rng.random_range(6 * 60..21 * 60) / 5 * 5;
                        push(
                            &mut routes,
                            Route {
                                mode: Mode::Flight,
                                date: Some(date.clone()),
                                service: Some(code(airline, rng.random_range(100..9999), 0)),
                                departure: Some(hhmm(dep)),
                                duration_min: dist * 60 / 700 + 40,
                                price: 40
                                    + (dist as f64 * rng.random_range(0.08..0.20)).round() as u32,
                                ..base.clone()
                            },
                        );
                    }
                }
                for (mode, per_km) in [(Mode::Train, 0.05..0.12), (Mode::Bus, 0.03..0.07)] {
                    if rng.random::<f64>() < knobs.flight_density * 0.5 {
                        let ops = &cat.ground_operators[mode.name()];
                        let dep = rng.random_range(6 * 60..20 * 60) / 5 * 5;
                        push(
                            &mut routes,
                            Route {
                                mode,
                                date: Some(date.clone()),
                                service: ops.choose(rng).cloned(),
                                departure: Some(hhmm(dep)),
                                duration_min: dist * 60
                                    / if mode == Mode::Train { 110 } else { 70 }
                                    + 10,
                                price: 5 + (dist as f64 * rng.random_range(per_km)).round() as u32,
                                ..base.clone()
                            },
                        );
                    }
                }
            }
        }
    }

    // Venues in every destination city (the origin has none: the trip's meals and stays are away).
    let mut accommodations = Vec::new();
    let mut restaurants = Vec::new();
    let mut attractions = Vec::new();
    let need_meals = (3 * (plan.max_nights + 1) + 4) as usize;
    let categories: Vec<&String> = cat.attraction_categories.iter().collect();
    let all_nouns: Vec<(String, String)> = categories
        .iter()
        .flat_map(|c| {
            names.attraction_nouns[c.as_str()]
                .iter()
                .map(|n| ((*c).clone(), n.clone()))
        })
        .collect();
    for city in &cities[1..] {
        let n_acc = knobs.accommodations_per_city as usize;
        let acc_names = distinct_names(
            rng,
            &names.accommodation_prefixes,
            &names.accommodation_nouns,
            n_acc,
        );
        for (k, name) in acc_names.into_iter().enumerate() {
            let t = rng.random_range(0..cat.room_types.len());
            let (lo, hi, occ) = match t {
                0 => (90, 450, 2..=8),
                1 => (45, 200, 1..=3),
                _ => (20, 90, 1..=2),
            };
            // The last listing of each city is a long-stay rental, as in TravelPlanner's data.
            let min_nights = if k + 1 == n_acc {
                rng.random_range(10..=30)
            } else {
                match rng.random_range(0..10) {
                    0..=6 => 1,
                    7 | 8 => 2,
                    _ => rng.random_range(3..=5),
                }
            };
            let forbids = cat
                .house_rules
                .iter()
                .filter(|_| rng.random::<f64>() < 0.3)
                .cloned()
                .collect();
            accommodations.push(Accommodation {
                id: code("H", accommodations.len(), 3),
                name,
                city: city.id.clone(),
                room_type: cat.room_types[t].clone(),
                nightly_price: rng.random_range(lo..=hi),
                max_occupancy: rng.random_range(occ),
                min_nights,
                forbids,
                rating: round1(rng.random_range(2.5..=5.0)),
            });
        }
        let n_rest = (knobs.restaurants_per_city as usize).max(need_meals);
        for name in distinct_names(
            rng,
            &names.restaurant_prefixes,
            &names.restaurant_nouns,
            n_rest,
        ) {
            let k = rng.random_range(1..=3);
            let mut cuisines: Vec<String> = cat.cuisines.choose_multiple(rng, k).cloned().collect();
            cuisines.sort();
            restaurants.push(Restaurant {
                id: code("R", restaurants.len(), 3),
                name,
                city: city.id.clone(),
                cuisines,
                average_cost: rng.random_range(8..=90),
                rating: round1(rng.random_range(2.0..=5.0)),
            });
        }
        let n_attr = (knobs.attractions_per_city as usize).max(plan.max_nights as usize + 3);
        let picks = distinct_pairs(
            rng,
            names.attraction_prefixes.len(),
            all_nouns.len(),
            n_attr,
        );
        for &(p, q) in &picks {
            let (category, noun) = &all_nouns[q];
            attractions.push(Attraction {
                id: code("A", attractions.len(), 3),
                name: join2(&names.attraction_prefixes[p], noun),
                city: city.id.clone(),
                category: category.clone(),
                ticket_price: if rng.random::<f64>() < 0.3 {
                    0
                } else {
                    rng.random_range(5..=60)
                },
                rating: round1(rng.random_range(2.5..=5.0)),
            });
        }
    }
    World {
        states,
        cities,
        routes,
        accommodations,
        restaurants,
        attractions,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn codes_match_format() {
        for n in [0usize, 7, 42, 999, 1000, 123_456] {
            assert_eq!(super::code("T", n, 4), format!("T{n:04}"));
            assert_eq!(super::code("NV", n, 0), format!("NV{n}"));
        }
        assert_eq!(super::hhmm(6 * 60 + 5), "06:05");
    }
}
