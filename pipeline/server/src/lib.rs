//! `envsynth serve`: the registry's HTTP API. Trainers discover environments, draw tasks by
//! environment, split, level, measured difficulty and seed, have submissions verified
//! server-side (native or sandboxed verifiers, through the [`Environment`] trait), and record
//! rollout results. Every error is JSON naming the problem; writes need the bearer token;
//! bodies are size-limited; the OpenAPI document is served at `/openapi.json`.
//!
//! The only crate that names axum. Environments are found through [`Verifiers`], which the
//! binary implements (native environments and registered plugins), so this crate knows neither.

mod api;
mod error;
pub mod loadgen;
mod mcp;
mod params;
pub mod simulated;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use http_body::{Body as HttpBody, Frame, SizeHint};

use envsynth_core::{EnvRef, Environment, PreparedTask};
use envsynth_registry::AnyStore;

pub use error::ApiError;

/// The OpenAPI 3.1 document of this API, checked in next to the code.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// How an environment's verifier is found.
pub trait Verifiers: Send + Sync + 'static {
    /// The environment that verifies tasks of `env`, or why there is none.
    fn environment(&self, env: &EnvRef) -> Result<Resolved, String>;
}

/// A found environment. Sandboxed verifiers take milliseconds, so they run on the blocking
/// pool; native ones take microseconds and run in place.
#[derive(Clone)]
pub struct Resolved {
    pub env: Arc<dyn Environment>,
    pub sandboxed: bool,
}

/// Server settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// The largest request body accepted, in bytes.
    pub max_body: usize,
    /// The bearer token every write must carry; `None` makes the server read-only.
    pub token: Option<String>,
    /// How many prepared tasks (parsed worlds, indexes) stay in memory for verification.
    pub prepared_cache: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_body: 8 << 20,
            token: None,
            prepared_cache: 1024,
        }
    }
}

/// A task ready to verify against, and whether its verifier is sandboxed.
#[derive(Clone)]
pub(crate) struct Ready {
    pub prepared: Arc<dyn PreparedTask>,
    pub sandboxed: bool,
}

/// A bounded first-in-first-out cache. Entries are keyed by content hashes (task ids, filter
/// and revision), so an entry is never stale, only evicted.
pub(crate) struct Cache<V> {
    inner: Mutex<(HashMap<String, V>, VecDeque<String>)>,
    capacity: usize,
}

impl<V: Clone> Cache<V> {
    fn new(capacity: usize) -> Cache<V> {
        Cache {
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
            capacity: capacity.max(1),
        }
    }

    pub fn get(&self, key: &str) -> Option<V> {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.get(key).cloned()
    }

    pub fn put(&self, key: String, value: V) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *guard;
        if map.insert(key.clone(), value).is_none() {
            order.push_back(key);
        }
        while map.len() > self.capacity {
            match order.pop_front() {
                Some(old) => {
                    map.remove(&old);
                }
                None => break,
            }
        }
    }
}

pub(crate) struct App {
    pub store: AnyStore,
    pub verifiers: Arc<dyn Verifiers>,
    pub config: Config,
    pub prepared: Cache<Ready>,
    /// Sampling populations by (filter, revision).
    pub populations: Cache<Arc<Vec<String>>>,
}

/// The API's routes. Keep `openapi.json` in step: a test compares the two.
pub fn router(store: AnyStore, verifiers: Arc<dyn Verifiers>, config: Config) -> Router {
    let max_body = config.max_body;
    let app = Arc::new(App {
        store,
        verifiers,
        prepared: Cache::new(config.prepared_cache),
        populations: Cache::new(64),
        config,
    });
    Router::new()
        .route("/health", get(api::health))
        .route("/openapi.json", get(api::openapi))
        .route("/v1/environments", get(api::list_environments))
        .route(
            "/v1/environments/{id}/{version}",
            get(api::get_environment).put(api::put_environment),
        )
        .route("/v1/task-sets/{name}/{version}", get(api::get_task_set))
        .route("/v1/tasks", get(api::list_tasks))
        .route("/v1/tasks/sample", post(api::sample_tasks))
        .route("/v1/tasks/{task_id}", get(api::get_task))
        .route("/v1/tasks/{task_id}/difficulty", get(api::difficulty))
        .route("/v1/tasks/{task_id}/tools/{name}", post(api::call_tool))
        .route("/v1/tasks/{task_id}/mcp", post(mcp::post))
        .route("/v1/verify", post(api::verify_one))
        .route("/v1/verify/batch", post(api::verify_batch))
        .route("/v1/rollouts", post(api::post_rollouts))
        .fallback(error::not_found_fallback)
        .method_not_allowed_fallback(error::method_not_allowed_fallback)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(close_if_unread))
        .with_state(app)
}

/// Marks the response `Connection: close` when the handler answered without reading its
/// request's body to the end: a 401 before the body, a 413 past the limit, a route that takes
/// none. The server drops such a connection after answering (the rest of the body is still on
/// it), and a client that put it back in its pool would fail its next request with a broken
/// pipe; RFC 9112 §9.6 says to announce the close.
async fn close_if_unread(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    if body.is_end_stream() {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let finished = Arc::new(AtomicBool::new(false));
    let body = Body::new(Watched {
        inner: body,
        finished: finished.clone(),
    });
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if !finished.load(Ordering::Acquire) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A request body that records whether it was read to its end.
struct Watched {
    inner: Body,
    finished: Arc<AtomicBool>,
}

impl HttpBody for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.finished.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serve `router` on `listener` until `shutdown` resolves, then finish the requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
