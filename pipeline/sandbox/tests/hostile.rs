//! Hostile guests: each is contained with the right typed error, the host keeps running, and the
//! pool's memory is given back. The guests are hand-written WAT components, so no toolchain is
//! needed.

use std::time::{Duration, Instant};

use envsynth_core::{FailureKind, Verdict};
use envsynth_sandbox::{Limits, Sandbox, SandboxError, World};

use envsynth_sandbox::VERIFIER_TEMPLATE_WAT as TEMPLATE;

/// A verifier component whose `verify` has `body`, with `extra` core functions beside it.
fn guest(body: &str, extra: &str) -> Vec<u8> {
    TEMPLATE
        .replace("@BODY@", body)
        .replace("@EXTRA@", extra)
        .into_bytes()
}

fn trivial() -> Vec<u8> {
    envsynth_sandbox::trivial_verifier_wat().into_bytes()
}

fn sandbox() -> Sandbox {
    Sandbox::new(None).expect("sandbox starts")
}

fn run(
    sb: &Sandbox,
    wat: &[u8],
    limits: &Limits,
) -> Result<envsynth_sandbox::CallOutput, SandboxError> {
    sb.load(wat, World::Verifier)?
        .verify(limits, "{\"id\":\"t\"}", "{}")
}

#[test]
fn a_trivial_verifier_answers_with_deterministic_fuel() {
    let sb = sandbox();
    let plugin = sb.load(&trivial(), World::Verifier).unwrap();
    let a = plugin.verify(&Limits::default(), "{}", "{}").unwrap();
    let b = plugin
        .verify(
            &Limits::default(),
            "{\"much\": \"longer input\"}",
            "[1,2,3]",
        )
        .unwrap();
    let v: Verdict = serde_json::from_str(&a.value).unwrap();
    assert!(v.passed && v.checks[0].id == "toy.ok");
    assert!(a.fuel_used > 0);
    assert_eq!(
        a.fuel_used, b.fuel_used,
        "this guest's work does not depend on its input"
    );
    assert_eq!(
        plugin.verify(&Limits::default(), "{}", "{}").unwrap(),
        a,
        "same call, same result and fuel"
    );
}

fn expect(
    r: Result<envsynth_sandbox::CallOutput, SandboxError>,
    kind: FailureKind,
) -> SandboxError {
    let e = r.expect_err("the guest must be stopped");
    assert_eq!(e.failure_kind(), kind, "{e}");
    assert!(e.failure_kind().is_masked());
    e
}

#[test]
fn an_infinite_loop_runs_out_of_fuel() {
    let sb = sandbox();
    let limits = Limits {
        fuel: 5_000_000,
        ..Limits::default()
    };
    let e = expect(
        run(&sb, &guest("(loop $l (br $l)) (unreachable)", ""), &limits),
        FailureKind::SandboxFuelExhausted,
    );
    assert_eq!(e, SandboxError::FuelExhausted { fuel: 5_000_000 });
}

#[test]
fn an_infinite_loop_with_ample_fuel_hits_the_wall_clock_deadline() {
    let sb = sandbox();
    let limits = Limits {
        fuel: u64::MAX / 4,
        timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let start = Instant::now();
    let e = expect(
        run(&sb, &guest("(loop $l (br $l)) (unreachable)", ""), &limits),
        FailureKind::SandboxTimeout,
    );
    assert_eq!(e, SandboxError::Timeout { ms: 200 });
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn a_memory_bomb_is_capped() {
    let sb = sandbox();
    let limits = Limits {
        memory_bytes: 32 << 20,
        ..Limits::default()
    };
    let bomb = guest(
        "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) (call $ok)",
        "",
    );
    let e = expect(run(&sb, &bomb, &limits), FailureKind::SandboxMemoryExceeded);
    assert_eq!(e, SandboxError::MemoryLimit { limit: 32 << 20 });
}

#[test]
fn deep_recursion_overflows_the_guest_stack_not_the_host() {
    let sb = sandbox();
    let down =
        "(func $down (param i32) (result i32) (call $down (i32.add (local.get 0) (i32.const 1))))";
    let e = expect(
        run(
            &sb,
            &guest("(drop (call $down (i32.const 0))) (call $ok)", down),
            &Limits::default(),
        ),
        FailureKind::SandboxTrap,
    );
    assert_eq!(e, SandboxError::StackOverflow);
}

#[test]
fn a_giant_output_is_refused() {
    let sb = sandbox();
    // 16 MiB of NUL bytes (valid UTF-8) returned as the verdict.
    let body = "(drop (memory.grow (i32.const 300)))
        (i32.store8 (i32.const 0) (i32.const 0))
        (i32.store (i32.const 4) (i32.const 65536))
        (i32.store (i32.const 8) (i32.const 16777216))
        (i32.const 0)";
    let limits = Limits {
        output_bytes: 1 << 20,
        ..Limits::default()
    };
    let e = expect(
        run(&sb, &guest(body, ""), &limits),
        FailureKind::SandboxOutputTooLarge,
    );
    assert_eq!(
        e,
        SandboxError::OutputTooLarge {
            bytes: 16 << 20,
            limit: 1 << 20
        }
    );
}

#[test]
fn traps_and_bad_results_are_contained() {
    let sb = sandbox();
    let l = Limits::default();
    let e = expect(
        run(
            &sb,
            &guest(
                "(i32.store (i32.const 100) (i32.const 1)) (unreachable)",
                "",
            ),
            &l,
        ),
        FailureKind::SandboxTrap,
    );
    assert!(e.to_string().contains("unreachable"), "{e}");
    // A result string pointing outside memory.
    let oob = "(i32.store8 (i32.const 0) (i32.const 0)) (i32.store (i32.const 4) (i32.const 65000)) (i32.store (i32.const 8) (i32.const 100000)) (i32.const 0)";
    expect(run(&sb, &guest(oob, ""), &l), FailureKind::SandboxTrap);
    // Invalid UTF-8 in the result.
    let bad_utf8 = "(i32.store8 (i32.const 200) (i32.const 255)) (i32.store8 (i32.const 0) (i32.const 0)) (i32.store (i32.const 4) (i32.const 200)) (i32.store (i32.const 8) (i32.const 1)) (i32.const 0)";
    expect(run(&sb, &guest(bad_utf8, ""), &l), FailureKind::SandboxTrap);
    // The guest's own `err`: a masked environment error carrying its message.
    let err = "(i32.store8 (i32.const 0) (i32.const 1)) (i32.store (i32.const 4) (i32.const 64)) (i32.store (i32.const 8) (i32.const 11)) (i32.const 0)";
    let e = expect(run(&sb, &guest(err, ""), &l), FailureKind::EnvironmentError);
    assert_eq!(e, SandboxError::Guest("{\"task_id\":".into()));
}

#[test]
fn wrong_worlds_and_corrupt_files_are_refused_at_load() {
    let sb = sandbox();
    let renamed = String::from_utf8(trivial()).unwrap().replace(
        "(func (export \"verify\") (param \"task\"",
        "(func (export \"check\") (param \"task\"",
    );
    let e = sb.load(renamed.as_bytes(), World::Verifier).err().unwrap();
    assert_eq!(e.failure_kind(), FailureKind::InvalidPlugin);
    assert!(
        e.to_string().contains("missing export(s) verify") && e.to_string().contains("check"),
        "{e}"
    );
    // The right name with the wrong type is caught at the call.
    let one_param = String::from_utf8(trivial())
        .unwrap()
        .replace("(param \"submission\" string) ", "");
    let one_param = one_param.replace(
        "(func (export \"verify\") (param i32 i32 i32 i32)",
        "(func (export \"verify\") (param i32 i32)",
    );
    let e = run(&sb, one_param.as_bytes(), &Limits::default()).unwrap_err();
    assert!(matches!(e, SandboxError::WrongWorld { .. }), "{e}");
    // A verifier is not a toolset.
    assert!(matches!(
        sb.load(&trivial(), World::Toolset).err().unwrap(),
        SandboxError::WrongWorld {
            world: "toolset",
            ..
        }
    ));
    for junk in [
        &b""[..],
        b"\0asm\x0d\x00\x01\x00\xff\xff\xff",
        b"(component (core module $m (func (export \"x\") unreachable)",
        b"\x7fELF not wasm",
    ] {
        let e = sb.load(junk, World::Verifier).err().unwrap();
        assert!(matches!(e, SandboxError::InvalidComponent(_)), "{e}");
    }
    // A core module is not a component.
    let e = sb
        .load(b"(module (func (export \"verify\")))", World::Verifier)
        .err()
        .unwrap();
    assert!(matches!(e, SandboxError::InvalidComponent(_)), "{e}");
}

#[test]
fn guests_see_no_environment_variables_and_a_fixed_clock() {
    // Imports wasi:cli/environment and wasi:clocks/wall-clock; returns ok("") only if the
    // environment is empty and the clock reads the fixed time.
    let wat = r#"
(component
  (import "wasi:cli/environment@0.2.0" (instance $env
    (export "get-environment" (func (result (list (tuple string string)))))))
  (import "wasi:clocks/wall-clock@0.2.0" (instance $clock
    (type $dt (record (field "seconds" u64) (field "nanoseconds" u32)))
    (export "datetime" (type $dt2 (eq $dt)))
    (export "now" (func (result $dt2)))))
  (core module $libc
    (memory (export "memory") 1)
    (global $heap (mut i32) (i32.const 4096))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $p i32)
      (local.set $p (global.get $heap))
      (global.set $heap (i32.add (global.get $heap) (i32.add (local.get 3) (i32.const 8))))
      (local.get $p)))
  (core instance $libc (instantiate $libc))
  (core func $get_env (canon lower (func $env "get-environment") (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))))
  (core func $now (canon lower (func $clock "now") (memory (core memory $libc "memory"))))
  (core module $m
    (import "libc" "memory" (memory 1))
    (import "host" "get-environment" (func $get_env (param i32)))
    (import "host" "now" (func $now (param i32)))
    (func (export "verify") (param i32 i32 i32 i32) (result i32)
      (call $get_env (i32.const 16))
      (call $now (i32.const 32))
      ;; ok(string of length = number of env vars + (clock != fixed))
      (i32.store8 (i32.const 0) (i32.const 0))
      (i32.store (i32.const 4) (i32.const 100))
      (i32.store (i32.const 8)
        (i32.add (i32.load (i32.const 20))
                 (i64.ne (i64.load (i32.const 32)) (i64.const 1798761600))))
      (i32.const 0)))
  (core instance $i (instantiate $m
    (with "libc" (instance $libc))
    (with "host" (instance (export "get-environment" (func $get_env)) (export "now" (func $now))))))
  (func (export "verify") (param "task" string) (param "submission" string) (result (result string (error string)))
    (canon lift (core func $i "verify") (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))))
)"#;
    // SAFETY of the claim: the host process itself has environment variables.
    assert!(std::env::vars().next().is_some());
    let out = run(&sandbox(), wat.as_bytes(), &Limits::default()).unwrap();
    assert_eq!(
        out.value, "",
        "the guest saw environment variables or a real clock"
    );
}

#[test]
fn the_host_survives_and_the_pool_is_reused() {
    let sb = sandbox();
    let bomb = guest(
        "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 64)) (i32.const -1)))) (call $ok)",
        "",
    );
    let looped = guest("(loop $l (br $l)) (unreachable)", "");
    let bomb = sb.load(&bomb, World::Verifier).unwrap();
    let looped = sb.load(&looped, World::Verifier).unwrap();
    let ok = sb.load(&trivial(), World::Verifier).unwrap();
    let small = Limits {
        fuel: 1_000_000,
        memory_bytes: 64 << 20,
        ..Limits::default()
    };
    // Far more calls than the pool has instance slots: every slot must come back.
    for _ in 0..300 {
        assert!(matches!(
            bomb.verify(&small, "{}", "{}"),
            Err(SandboxError::MemoryLimit { .. })
        ));
        assert!(matches!(
            looped.verify(&small, "{}", "{}"),
            Err(SandboxError::FuelExhausted { .. })
        ));
    }
    assert!(ok.verify(&small, "{}", "{}").is_ok());
}

#[test]
fn compiled_components_are_cached_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let sb = Sandbox::new(Some(dir.path())).unwrap();
    let first = sb.load(&trivial(), World::Verifier).unwrap();
    let cached: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(cached.len(), 1);
    assert!(cached[0].extension().is_some_and(|e| e == "cwasm"));
    // A second sandbox loads the cached artifact; a damaged artifact is recompiled.
    let sb2 = Sandbox::new(Some(dir.path())).unwrap();
    let again = sb2.load(&trivial(), World::Verifier).unwrap();
    assert_eq!(first.hash(), again.hash());
    assert_eq!(
        again.verify(&Limits::default(), "{}", "{}").unwrap().value,
        first.verify(&Limits::default(), "{}", "{}").unwrap().value
    );
    std::fs::write(&cached[0], b"damaged").unwrap();
    let third = Sandbox::new(Some(dir.path()))
        .unwrap()
        .load(&trivial(), World::Verifier)
        .unwrap();
    assert!(third.verify(&Limits::default(), "{}", "{}").is_ok());
}

#[test]
fn plugin_output_becomes_a_checked_verdict() {
    use envsynth_sandbox::plugin_verdict;
    let sb = sandbox();
    let l = Limits::default();
    let ok = sb.load(&trivial(), World::Verifier).unwrap();
    let v = plugin_verdict(&ok, &l, "t", "{}", "{}");
    assert!(
        v.passed && !v.mask && v.fuel.is_some_and(|f| f > 0),
        "{v:?}"
    );
    // The fixture's verdict names task "t": for any other task it is refused, masked.
    let v = plugin_verdict(&ok, &l, "u", "{}", "{}");
    assert_eq!(
        (v.failure_kind, v.mask, v.reward),
        (FailureKind::InvalidPlugin, true, 0.0)
    );
    assert!(v.error.unwrap().contains("not u"));
    // Output that is not a verdict.
    let text = String::from_utf8(trivial())
        .unwrap()
        .replace("\\\"reward\\\":1.0", "\\\"reward\\\":7.0");
    let v = plugin_verdict(
        &sb.load(text.as_bytes(), World::Verifier).unwrap(),
        &l,
        "t",
        "{}",
        "{}",
    );
    assert_eq!(v.failure_kind, FailureKind::InvalidPlugin, "{v:?}");
    let looped = sb
        .load(
            &guest("(loop $l (br $l)) (unreachable)", ""),
            World::Verifier,
        )
        .unwrap();
    let v = plugin_verdict(&looped, &Limits { fuel: 10_000, ..l }, "t", "{}", "{}");
    assert_eq!(
        (v.failure_kind, v.mask),
        (FailureKind::SandboxFuelExhausted, true)
    );
}

/// Resident memory of this process in bytes (Linux `/proc/self/statm`).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn memory_a_guest_touched_is_given_back_even_when_it_traps() {
    let sb = sandbox();
    // Grow by 48 MiB, write to every page of it, then trap.
    let toucher = guest(
        "(call $touch) (unreachable)",
        "(func $touch (local $p i32)
           (drop (memory.grow (i32.const 768)))
           (local.set $p (i32.const 65536))
           (loop $l
             (i32.store8 (local.get $p) (i32.const 1))
             (local.set $p (i32.add (local.get $p) (i32.const 4096)))
             (br_if $l (i32.lt_u (local.get $p) (i32.const 50331648)))))",
    );
    let p = sb.load(&toucher, World::Verifier).unwrap();
    let limits = Limits::default();
    for _ in 0..3 {
        assert!(matches!(
            p.verify(&limits, "{}", "{}"),
            Err(SandboxError::Trap(_))
        ));
    }
    let before = resident_bytes();
    for _ in 0..100 {
        assert!(matches!(
            p.verify(&limits, "{}", "{}"),
            Err(SandboxError::Trap(_))
        ));
    }
    let grown = resident_bytes().saturating_sub(before);
    // 100 calls dirtied 4.8 GB between them; kept, that would show here.
    assert!(
        grown < 256 << 20,
        "resident memory grew by {} MiB over 100 calls",
        grown >> 20
    );
}
