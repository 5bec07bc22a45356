//! Static generator data from `data/travel/`, embedded at build time and parsed once.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::Deserialize;

pub const GEOGRAPHY_JSON: &str = include_str!("../../../data/travel/geography.json");
pub const CATALOG_JSON: &str = include_str!("../../../data/travel/catalog.json");
pub const NAMES_JSON: &str = include_str!("../../../data/travel/names.json");

#[derive(Debug, Deserialize)]
pub struct Geography {
    pub states: Vec<StateData>,
}

#[derive(Debug, Deserialize)]
pub struct StateData {
    pub name: String,
    pub x: f64,
    pub y: f64,
    pub cities: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct Catalog {
    pub cuisines: Vec<String>,
    pub room_types: Vec<String>,
    pub house_rules: Vec<String>,
    pub attraction_categories: Vec<String>,
    pub airlines: Vec<String>,
    pub ground_operators: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Deserialize)]
pub struct Names {
    pub accommodation_prefixes: Vec<String>,
    pub accommodation_nouns: Vec<String>,
    pub restaurant_prefixes: Vec<String>,
    pub restaurant_nouns: Vec<String>,
    pub attraction_prefixes: Vec<String>,
    pub attraction_nouns: BTreeMap<String, Vec<String>>,
}

pub struct Data {
    pub geography: Geography,
    pub catalog: Catalog,
    pub names: Names,
}

/// The parsed data files. They are part of the build, so a parse failure is a build defect that
/// the test suite catches (`data_files_parse`), not a user input error.
pub fn data() -> &'static Data {
    static DATA: OnceLock<Data> = OnceLock::new();
    DATA.get_or_init(|| Data {
        geography: serde_json::from_str(GEOGRAPHY_JSON).expect("data/travel/geography.json"),
        catalog: serde_json::from_str(CATALOG_JSON).expect("data/travel/catalog.json"),
        names: serde_json::from_str(NAMES_JSON).expect("data/travel/names.json"),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn data_files_parse() {
        let d = super::data();
        assert!(d.geography.states.len() >= 4);
        assert!(d.geography.states.iter().all(|s| s.cities.len() >= 6));
        assert_eq!(d.catalog.room_types.len(), 3);
        for cat in &d.catalog.attraction_categories {
            assert!(
                d.names.attraction_nouns.contains_key(cat),
                "no nouns for category {cat}"
            );
        }
        for mode in ["train", "bus"] {
            assert!(d.catalog.ground_operators.contains_key(mode));
        }
    }
}
