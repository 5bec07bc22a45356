//! A real Python guest built with componentize-py (installed by `.ci/requirements.txt`): it cannot
//! read files, open sockets, or see the host's environment, clock or randomness.

use std::path::Path;
use std::process::Command;

use envsynth_core::FailureKind;
use envsynth_sandbox::{Limits, Sandbox, SandboxError, World};
use serde_json::Value;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

fn build_probe(out: &Path) {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/python");
    let status = Command::new("componentize-py")
        .arg("-d")
        .arg(Path::new(ROOT).join("verifiers/wit"))
        .args(["-w", "verifier", "componentize", "probe", "-o"])
        .arg(out)
        .current_dir(&fixtures)
        .status()
        .expect("componentize-py is installed (python3 -m pip install -r .ci/requirements.txt)");
    assert!(status.success());
}

#[test]
fn a_python_guest_is_hermetic_and_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("probe.wasm");
    build_probe(&wasm);
    let sb = Sandbox::new(Some(&dir.path().join("cache"))).unwrap();
    let plugin = sb.load_file(&wasm, World::Verifier).unwrap();
    let limits = Limits::default();
    let a = plugin.verify(&limits, r#"{"id": "t1"}"#, "{}").unwrap();
    let b = plugin.verify(&limits, r#"{"id": "t1"}"#, "{}").unwrap();
    assert_eq!(a.value, b.value, "same input, same output");
    assert_eq!(a.fuel_used, b.fuel_used, "same input, same fuel");
    let verdict: Value = serde_json::from_str(&a.value).unwrap();
    assert_eq!(verdict["task_id"], "t1");
    let probes: Value =
        serde_json::from_str(verdict["checks"][0]["reason"].as_str().unwrap()).unwrap();
    assert_ne!(probes["file"], "read", "{probes}");
    assert_ne!(probes["socket"], "connected", "{probes}");
    assert_eq!(probes["env"], 0, "{probes}");
    assert_eq!(probes["time"].as_f64(), Some(1_798_761_600.0), "{probes}");

    let e = plugin
        .verify(&limits, r#"{"id": "t1", "fail": true}"#, "{}")
        .unwrap_err();
    assert_eq!(e, SandboxError::Guest("asked to fail".into()));
    assert_eq!(e.failure_kind(), FailureKind::EnvironmentError);

    // Python needs far more than a trivial guest's fuel: starving it is contained.
    let starved = Limits {
        fuel: 10_000,
        ..limits
    };
    assert!(matches!(
        plugin.verify(&starved, "{}", "{}"),
        Err(SandboxError::FuelExhausted { .. })
    ));
}
