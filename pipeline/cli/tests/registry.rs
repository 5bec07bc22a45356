//! `envsynth registry import/export` against SQLite and PostgreSQL: idempotent imports,
//! several importing processes at once, damaged and partial datasets refused with the file named.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_envsynth");

fn cmd(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args);
    c
}

fn ok(args: &[&str]) -> String {
    let out = cmd(args).output().unwrap();
    assert!(
        out.status.success(),
        "envsynth {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(args: &[&str], needle: &str) {
    let out = cmd(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "envsynth {args:?} should fail");
    assert!(err.contains(needle), "`{needle}` not in: {err}");
}

fn generate(dir: &Path, seed: u64, count: u64) -> PathBuf {
    let out = dir.join(format!("ds-{seed}"));
    ok(&[
        "generate",
        "--count",
        &count.to_string(),
        "--seed",
        &seed.to_string(),
        "--mix",
        "easy=1,hard=1",
        "--shard-size",
        "7",
        "--format",
        "both",
        "--out",
        out.to_str().unwrap(),
    ]);
    out
}

fn pg_url(schema: &str) -> String {
    let base = std::env::var("ENVSYNTH_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    format!("{base}?schema={schema}_{}", std::process::id())
}

fn wait(children: Vec<Child>) -> Vec<Output> {
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

fn import_and_export(db: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let datasets: Vec<PathBuf> = (0..4).map(|s| generate(tmp.path(), 100 + s, 20)).collect();

    // Four processes import four datasets at once, and a fifth re-imports the first.
    let mut children = Vec::new();
    for d in datasets.iter().chain(std::iter::once(&datasets[0])) {
        children.push(
            cmd(&[
                "registry",
                "import",
                d.to_str().unwrap(),
                "--db",
                db,
                "--set",
                &format!("set-{}", d.file_name().unwrap().to_str().unwrap()),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
        );
    }
    for out in wait(children) {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Importing again changes nothing.
    let again = ok(&[
        "registry",
        "import",
        datasets[1].to_str().unwrap(),
        "--db",
        db,
        "--set",
        "set-ds-101",
    ]);
    assert!(again.contains("already registered"), "{again}");
    let version = again
        .split("set-ds-101@")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap()
        .to_string();

    // Export gives back exactly the tasks that were generated.
    let out = tmp.path().join("export");
    ok(&[
        "registry",
        "export",
        "--db",
        db,
        "--set",
        "set-ds-101",
        "--set-version",
        &version,
        "--out",
        out.to_str().unwrap(),
    ]);
    let mut want: Vec<String> = envsynth_shards::shard_files(&datasets[1])
        .unwrap()
        .iter()
        .flat_map(|f| envsynth_shards::read_tasks(f).unwrap())
        .map(|t| t.id)
        .collect();
    let mut got: Vec<String> =
        envsynth_shards::read_tasks(&out.join("train/part-00000-of-00001.parquet"))
            .unwrap()
            .into_iter()
            .map(|t| t.id)
            .collect();
    assert_eq!(got.len(), 20);
    want.sort();
    got.sort();
    assert_eq!(got, want);
    fails(
        &[
            "registry",
            "export",
            "--db",
            db,
            "--set",
            "nope",
            "--set-version",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
        "no task set nope@1",
    );

    // A damaged file is refused, naming it; nothing of it is imported.
    let damaged = tmp.path().join("damaged");
    std::fs::create_dir_all(&damaged).unwrap();
    for e in std::fs::read_dir(&datasets[2]).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, damaged.join(p.file_name().unwrap())).unwrap();
    }
    let victim = damaged.join("part-00001-of-00003.jsonl");
    let mut bytes = std::fs::read(&victim).unwrap();
    let n = bytes.len();
    bytes.truncate(n / 2);
    std::fs::write(&victim, bytes).unwrap();
    fails(
        &[
            "registry",
            "import",
            damaged.to_str().unwrap(),
            "--db",
            db,
            "--set",
            "damaged",
        ],
        "part-00001-of-00003.jsonl: content does not match the manifest",
    );
    std::fs::remove_file(damaged.join("manifest.json")).unwrap();
    fails(
        &["registry", "import", damaged.to_str().unwrap(), "--db", db],
        "the dataset is incomplete",
    );
    fails(
        &[
            "registry",
            "import",
            datasets[0].to_str().unwrap(),
            "--db",
            "mysql://x",
        ],
        "unknown database URL",
    );
}

#[test]
fn import_is_idempotent_and_concurrent_on_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", tmp.path().join("registry.db").display());
    import_and_export(&db);
}

#[test]
fn import_is_idempotent_and_concurrent_on_postgres() {
    import_and_export(&pg_url("cli_import"));
}
