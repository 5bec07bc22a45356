use envsynth_core::{Environment, TaskRequest};
use envsynth_travel::TravelPlanning;
use std::collections::BTreeMap;

#[test]
#[ignore]
fn probe_rejections() {
    let env = TravelPlanning::new();
    for level in ["easy", "medium", "hard"] {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        let mut ok = 0;
        for index in 0..300 {
            let req = TaskRequest {
                seed: 1,
                index,
                level: level.into(),
                overrides: serde_json::Value::Null,
            };
            match env.generate_attempt(&req, 0) {
                Ok(_) => ok += 1,
                Err(r) => {
                    if true {
                        eprintln!("{level}: {r}");
                    }
                    *counts.entry(r.key()).or_default() += 1
                }
            }
        }
        eprintln!("{level}: ok {ok}/300 {counts:?}");
    }
}

#[test]
#[ignore]
fn probe_tier() {
    let env = TravelPlanning::new();
    let mut shown = 0;
    for index in 0..300 {
        let req = TaskRequest {
            seed: 1,
            index,
            level: "medium".into(),
            overrides: serde_json::Value::Null,
        };
        if let Err(r) = env.generate_attempt(&req, 0) {
            if r.detail.contains("tiered") && shown < 3 {
                shown += 1;
                let p = env.generate_parts(&req, 0).unwrap();
                let rule = p.query.tiered.as_ref().unwrap();
                let day = &p.plan.days[rule.day as usize - 1];
                let h = p
                    .world
                    .accommodation(day.accommodation.as_ref().unwrap())
                    .unwrap();
                eprintln!(
                    "day {} hotel price {} tier {:?}",
                    rule.day,
                    h.nightly_price,
                    rule.tier_for(h.nightly_price)
                );
                for m in day.meals().into_iter().flatten() {
                    let r = p.world.restaurant(m).unwrap();
                    eprintln!("  {} {} {} {:?}", r.id, r.city, r.rating, r.cuisines);
                }
                eprintln!("  cuisines {:?} travel {:?}", p.query.cuisines, day.travel);
                let c = p
                    .world
                    .restaurant(day.breakfast.as_ref().unwrap())
                    .unwrap()
                    .city
                    .clone();
                let low: Vec<_> = p
                    .world
                    .restaurants
                    .iter()
                    .filter(|r| r.city == c && r.rating < 4.0)
                    .map(|r| (&r.id, r.rating))
                    .collect();
                eprintln!("  low in {c}: {low:?}");
            }
        }
    }
}
