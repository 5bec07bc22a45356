//! `envsynth serve`: the registry's HTTP API (see pipeline/server), with this binary's
//! environments (native and registered plugins) as the verifiers.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};

use envsynth_core::EnvRef;
use envsynth_registry::AnyStore;
use envsynth_server::{Config, Resolved, Verifiers};

use crate::registry::{Db, db_url};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub db: Db,
    /// Address to listen on (port 0: any free port; the chosen one is printed).
    #[arg(long, default_value = "127.0.0.1:8700")]
    pub addr: SocketAddr,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    pub max_body: usize,
    /// Prepared tasks kept in memory for verification.
    #[arg(long, default_value_t = 1024)]
    pub prepared_cache: usize,
}

/// Environments by `id@version`, loaded once each.
#[derive(Default)]
pub struct BinaryVerifiers {
    loaded: Mutex<BTreeMap<EnvRef, Resolved>>,
}

impl Verifiers for BinaryVerifiers {
    fn environment(&self, env: &EnvRef) -> Result<Resolved, String> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = loaded.get(env) {
            return Ok(r.clone());
        }
        let found = crate::envs::find(&env.to_string()).map_err(|e| format!("{e:#}"))?;
        let sandboxed = crate::envs::verifier_identity(found.spec()).kind == "wasm";
        let r = Resolved {
            env: Arc::from(found),
            sandboxed,
        };
        loaded.insert(env.clone(), r.clone());
        Ok(r)
    }
}

/// The write token from `$ENVSYNTH_TOKEN` (unset: the server is read-only).
pub fn token() -> Result<Option<String>> {
    match std::env::var("ENVSYNTH_TOKEN") {
        Ok(t) if t.trim().len() < 16 => {
            bail!("ENVSYNTH_TOKEN must be at least 16 characters (it guards every write)")
        }
        Ok(t) => Ok(Some(t.trim().to_string())),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(e) => bail!("ENVSYNTH_TOKEN: {e}"),
    }
}

pub fn run(a: Args) -> Result<()> {
    let config = Config {
        max_body: a.max_body,
        token: token()?,
        prepared_cache: a.prepared_cache,
    };
    let url = db_url(&a.db);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let store = AnyStore::open(&url)
            .await
            .with_context(|| format!("opening the registry at {url}"))?;
        let listener = tokio::net::TcpListener::bind(a.addr)
            .await
            .with_context(|| format!("listening on {}", a.addr))?;
        let local = listener.local_addr()?;
        let writes = if config.token.is_some() {
            "writes need the bearer token"
        } else {
            "read-only: set ENVSYNTH_TOKEN to accept writes"
        };
        println!("envsynth serve: listening on http://{local} ({writes})");
        std::io::stdout().flush()?;
        let router = envsynth_server::router(store, Arc::new(BinaryVerifiers::default()), config);
        envsynth_server::serve(listener, router, shutdown_signal())
            .await
            .context("serving")?;
        Ok(())
    })
}

/// Ctrl-C or SIGTERM: stop accepting, finish what is in flight.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
