//! ARCHITECTURE.md's crate-boundary invariants, checked against the manifests.

use std::path::Path;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn manifests() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for group in ["pipeline", "environments"] {
        for e in std::fs::read_dir(Path::new(ROOT).join(group)).unwrap() {
            let m = e.unwrap().path().join("Cargo.toml");
            if m.is_file() {
                out.push((
                    m.display().to_string(),
                    std::fs::read_to_string(&m).unwrap(),
                ));
            }
        }
    }
    assert!(out.len() >= 5);
    out
}

/// Whether the crate's own (non-dev) dependencies name `krate`; tests may use anything.
fn depends_on(manifest: &str, krate: &str) -> bool {
    let own = manifest
        .split("[dev-dependencies]")
        .next()
        .unwrap_or(manifest);
    own.lines().any(|l| {
        l.trim_start().starts_with(&format!("{krate} "))
            || l.trim_start().starts_with(&format!("{krate}."))
    })
}

#[test]
fn heavy_dependencies_stay_in_their_crates() {
    for (krate, owner) in [
        ("arrow", "pipeline/shards"),
        ("parquet", "pipeline/shards"),
        ("minijinja", "pipeline/prompts"),
        ("clap", "pipeline/cli"),
        ("mimalloc", "pipeline/cli"),
        ("wasmtime", "pipeline/sandbox"),
        ("sqlx", "pipeline/registry"),
        ("axum", "pipeline/server"),
        ("hyper", "pipeline/server"),
        ("reqwest", "pipeline/rollout"),
        ("cudarc", "pipeline/policy"),
        ("safetensors", "pipeline/policy"),
        ("tokenizers", "pipeline/policy"),
    ] {
        for (path, text) in manifests() {
            if depends_on(&text, krate) {
                assert!(
                    path.contains(owner),
                    "{path} depends on {krate}; only {owner} may"
                );
            }
        }
    }
}

#[test]
fn generation_uses_no_unseeded_randomness_or_clock() {
    for dir in ["pipeline/core/src", "environments/travel/src"] {
        for e in std::fs::read_dir(Path::new(ROOT).join(dir)).unwrap() {
            let p = e.unwrap().path();
            let text = std::fs::read_to_string(&p).unwrap();
            for banned in [
                "thread_rng",
                "StdRng",
                "SystemTime",
                "Instant::now",
                "HashMap",
            ] {
                assert!(!text.contains(banned), "{} uses {banned}", p.display());
            }
        }
    }
}
