//! The environments this binary knows: the native ones compiled in, and environment plugins
//! registered with `envsynth plugin register` (components of the `environment` world, kept as
//! `<id>@<version>.wasm` in the registry directory).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use envsynth_core::Environment;
use envsynth_registry::VerifierIdentity;
use envsynth_sandbox::{Limits, PluginEnvironment, Sandbox, World};
use envsynth_travel::TravelPlanning;

fn native() -> Vec<Box<dyn Environment>> {
    vec![Box::new(TravelPlanning::new())]
}

/// Where registered environment plugins live: `$ENVSYNTH_HOME/environments`, else
/// `$XDG_DATA_HOME/envsynth/environments`, else `~/.local/share/envsynth/environments`.
pub fn plugin_dir() -> PathBuf {
    let home = std::env::var_os("ENVSYNTH_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_DATA_HOME").map(|d| PathBuf::from(d).join("envsynth")))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share/envsynth"))
        })
        .unwrap_or_else(|| std::env::temp_dir().join("envsynth"));
    home.join("environments")
}

/// Registered plugins as (id, version, path), sorted.
fn registered() -> Result<Vec<(String, String, PathBuf)>> {
    let dir = plugin_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("{}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.with_context(|| format!("{}", dir.display()))?.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wasm"))
        else {
            continue;
        };
        if let Some((id, version)) = name.split_once('@') {
            out.push((id.to_string(), version.to_string(), path.clone()));
        }
    }
    out.sort_by(|a, b| (&a.0, version_key(&a.1)).cmp(&(&b.0, version_key(&b.1))));
    Ok(out)
}

fn version_key(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// Load an environment component (checking its spec and tool specs).
pub fn load_plugin(path: &Path) -> Result<PluginEnvironment> {
    let sandbox =
        Sandbox::new(Some(&crate::plugin::cache_dir())).map_err(|e| anyhow::anyhow!("{e}"))?;
    let plugin = sandbox
        .load_file(path, World::Environment)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    PluginEnvironment::new(plugin, Limits::default())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Every environment: native ones, then registered plugins (loading each).
pub fn all() -> Result<Vec<Box<dyn Environment>>> {
    let mut envs = native();
    for (_, _, path) in registered()? {
        envs.push(Box::new(load_plugin(&path)?));
    }
    Ok(envs)
}

/// Find an environment by `id` or `id@version` (a registered plugin without a version: its
/// newest registered version).
pub fn find(name: &str) -> Result<Box<dyn Environment>> {
    let (id, version) = match name.split_once('@') {
        Some((id, v)) => (id, Some(v)),
        None => (name, None),
    };
    for env in native() {
        if env.spec().id == id {
            if let Some(v) = version
                && env.spec().version != v
            {
                bail!(
                    "environment {id} is at version {}, not {v}",
                    env.spec().version
                );
            }
            return Ok(env);
        }
    }
    let plugins = registered()?;
    let found = plugins
        .iter()
        .rfind(|(i, v, _)| i == id && version.is_none_or(|want| want == v));
    if let Some((_, _, path)) = found {
        let env = load_plugin(path)?;
        if env.spec().id != id {
            bail!(
                "{} declares environment {}, not {id}; re-register it",
                path.display(),
                env.spec().env_ref()
            );
        }
        return Ok(Box::new(env));
    }
    let mut known: Vec<String> = native()
        .iter()
        .map(|e| e.spec().env_ref().to_string())
        .collect();
    known.extend(plugins.iter().map(|(i, v, _)| format!("{i}@{v}")));
    bail!("unknown environment `{name}` (known: {})", known.join(", "))
}

/// Which code verifies an environment's tasks: a native environment of this build, else the
/// component whose hash is the spec's content hash.
pub fn verifier_identity(spec: &envsynth_core::EnvironmentSpec) -> VerifierIdentity {
    if native().iter().any(|e| e.spec().id == spec.id) {
        VerifierIdentity {
            kind: "native".into(),
            digest: format!("envsynth {}", env!("CARGO_PKG_VERSION")),
        }
    } else {
        VerifierIdentity {
            kind: "wasm".into(),
            digest: spec.content_hash.clone(),
        }
    }
}

pub fn print() -> Result<()> {
    for env in all()? {
        let s = env.spec();
        println!("{}@{}", s.id, s.version);
        println!("  content hash  {}", s.content_hash);
        println!("  levels        {}", s.levels.join(", "));
        println!(
            "  tools         {}",
            env.tool_specs()
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!("  {}", s.description);
    }
    Ok(())
}

/// Register an environment component: it must load, generate a certified task at every level and
/// pass its probes. Registered versions are immutable: the same `id@version` with other bytes is
/// refused.
pub fn register(path: &Path) -> Result<PathBuf> {
    let env = load_plugin(path)?;
    if let Some(why) = registration_conflict(env.spec(), path) {
        bail!("{why}");
    }
    crate::plugin::check_environment(&env, 2, 0)?;
    let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
    let dir = plugin_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    let dest = dir.join(format!("{}.wasm", env.spec().env_ref()));
    if std::fs::read(&dest).is_ok_and(|existing| existing == bytes) {
        return Ok(dest);
    }
    envsynth_shards::atomic_write(&dest, &bytes)?;
    Ok(dest)
}

/// Whether `id` is a built-in environment's.
pub fn is_native(id: &str) -> bool {
    native().iter().any(|e| e.spec().id == id)
}

/// Why the component at `path`, whose spec is `spec`, cannot be registered: its id is a
/// built-in environment's, or its `id@version` is registered with other bytes.
pub fn registration_conflict(spec: &envsynth_core::EnvironmentSpec, path: &Path) -> Option<String> {
    if is_native(&spec.id) {
        return Some(format!(
            "`{}` is a built-in environment's id; choose another",
            spec.id
        ));
    }
    let dest = plugin_dir().join(format!("{}.wasm", spec.env_ref()));
    let existing = std::fs::read(&dest).ok()?;
    if std::fs::read(path).is_ok_and(|bytes| bytes == existing) {
        return None;
    }
    Some(format!(
        "{} is already registered with different content; bump the version in spec()",
        spec.env_ref()
    ))
}
