//! Runs WebAssembly components (verifiers, toolsets, whole environments; see
//! `verifiers/wit/envsynth.wit`) under hard limits. The only crate that names wasmtime: it narrows
//! wasmtime to what envsynth needs.
//!
//! - One [`Engine`] per [`Sandbox`] with the pooling allocator. Components are compiled once and
//!   cached on disk by (content hash, wasmtime version, engine configuration). Each [`Plugin`]
//!   keeps an `InstancePre`, so a call only instantiates it, in a fresh store.
//! - Every call has limits ([`Limits`]). Fuel is deterministic, and the fuel used is reported. An
//!   epoch deadline is the wall-clock backstop. Each linear memory has a cap, and the returned
//!   payload and the captured stdout/stderr have a size cap.
//! - Guests get WASI preview 2 without the outside world: no preopened directories, no sockets,
//!   no name lookup, no environment variables or arguments, a fixed clock, and seeded randomness.
//! - Every limit breach, trap or malformed guest becomes a typed [`SandboxError`] with a masked
//!   `failure_kind`. It never crashes the host, and it never produces a reward of 0.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wasmtime::component::{Component, InstancePre, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter, Store,
    Trap,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::random::Deterministic;
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};

use envsynth_core::FailureKind;

pub mod environment;
pub use environment::{PluginEnvironment, plugin_tool_result, world_state};

/// A hand-written WAT component of the `verifier` world with two placeholders, `@BODY@` (the
/// core `verify` function's body) and `@EXTRA@` (more core functions). With `(call $ok)` as the
/// body it returns a fixed passing verdict for task `t`. Used by the hostile-guest tests and by
/// `envsynth bench` as the trivial guest.
pub const VERIFIER_TEMPLATE_WAT: &str = include_str!("../fixtures/verifier.wat.in");

/// The trivial verifier guest: [`VERIFIER_TEMPLATE_WAT`] answering at once.
pub fn trivial_verifier_wat() -> String {
    VERIFIER_TEMPLATE_WAT
        .replace("@BODY@", "(call $ok)")
        .replace("@EXTRA@", "")
}

/// Per-call limits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Fuel per call. Wasmtime charges about one unit per instruction, so the count is
    /// deterministic: the same guest and input use the same fuel everywhere.
    pub fuel: u64,
    /// Wall-clock backstop per call, for time that fuel does not count (host calls,
    /// descheduling). It is enforced with epochs at [`TICK`] granularity.
    pub timeout: Duration,
    /// Cap on each linear memory of the guest, in bytes.
    pub memory_bytes: usize,
    /// Cap on the returned payload, and separately on captured stdout and stderr.
    pub output_bytes: usize,
}

impl Default for Limits {
    /// Sized for interpreted guests: a componentize-py verifier starts with a memory image of
    /// tens of MB and a trivial call uses about 263k fuel.
    fn default() -> Limits {
        Limits {
            fuel: 2_000_000_000,
            timeout: Duration::from_secs(5),
            memory_bytes: 256 << 20,
            output_bytes: 8 << 20,
        }
    }
}

/// The epoch tick: the granularity of the wall-clock backstop.
pub const TICK: Duration = Duration::from_millis(10);
/// Largest memory any call may be given (the pooling allocator reserves slots of this size).
pub const MAX_MEMORY_BYTES: usize = 1 << 30;
/// Component instances that can be alive at once across all threads.
pub const MAX_CONCURRENT_INSTANCES: u32 = 64;
/// What guests see as the current time: 2027-01-01T00:00:00Z, always.
pub const FIXED_UNIX_TIME: Duration = Duration::from_secs(1_798_761_600);

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SandboxError {
    #[error("the guest ran out of fuel ({fuel} units)")]
    FuelExhausted { fuel: u64 },
    #[error("the guest ran past the {ms} ms wall-clock limit")]
    Timeout { ms: u64 },
    #[error("the guest tried to grow a memory past {limit} bytes")]
    MemoryLimit { limit: usize },
    #[error("the guest returned {bytes} bytes, over the {limit}-byte output limit")]
    OutputTooLarge { bytes: usize, limit: usize },
    #[error("the guest overflowed its stack")]
    StackOverflow,
    #[error("the guest trapped: {0}")]
    Trap(String),
    #[error("the guest reported an error: {0}")]
    Guest(String),
    #[error("not a loadable WebAssembly component: {0}")]
    InvalidComponent(String),
    #[error("the component does not implement world `{world}`: {detail}")]
    WrongWorld { world: &'static str, detail: String },
    #[error("sandbox host error: {0}")]
    Host(String),
}

impl SandboxError {
    /// The verdict failure kind this error becomes. Every one is masked: none says anything
    /// about the agent.
    pub fn failure_kind(&self) -> FailureKind {
        match self {
            SandboxError::FuelExhausted { .. } => FailureKind::SandboxFuelExhausted,
            SandboxError::Timeout { .. } => FailureKind::SandboxTimeout,
            SandboxError::MemoryLimit { .. } => FailureKind::SandboxMemoryExceeded,
            SandboxError::OutputTooLarge { .. } => FailureKind::SandboxOutputTooLarge,
            SandboxError::StackOverflow | SandboxError::Trap(_) => FailureKind::SandboxTrap,
            SandboxError::InvalidComponent(_) | SandboxError::WrongWorld { .. } => {
                FailureKind::InvalidPlugin
            }
            SandboxError::Guest(_) | SandboxError::Host(_) => FailureKind::EnvironmentError,
        }
    }
}

fn host_err(e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Host(e.to_string())
}

/// Per-call guest state: WASI context, resource table, and what the limiter saw.
struct Guest {
    wasi: WasiCtx,
    table: ResourceTable,
    memory_cap: usize,
    memory_exceeded: bool,
}

impl WasiView for Guest {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl ResourceLimiter for Guest {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            // Trap at once rather than hand the guest a failed grow it might loop on.
            self.memory_exceeded = true;
            wasmtime::bail!("memory limit of {} bytes reached", self.memory_cap);
        }
        Ok(true)
    }
    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

struct FixedClock;

impl HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        FIXED_UNIX_TIME
    }
}

impl HostMonotonicClock for FixedClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Advances the engine's epoch every [`TICK`] until the sandbox is dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: &Engine) -> Result<Ticker, SandboxError> {
        let stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("envsynth-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(host_err)?;
        Ok(Ticker {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A wasmtime engine configured for envsynth, with an optional on-disk cache of compiled
/// components.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<Guest>,
    cache_dir: Option<PathBuf>,
    ticker: Arc<Ticker>,
}

fn config(pooling: bool) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true);
    c.consume_fuel(true);
    c.epoch_interruption(true);
    c.max_wasm_stack(1 << 20);
    if pooling {
        let mut p = PoolingAllocationConfig::default();
        let n = MAX_CONCURRENT_INSTANCES;
        p.total_component_instances(n);
        p.total_core_instances(n * 32);
        p.total_memories(n * 4);
        p.total_tables(n * 8);
        p.total_stacks(n);
        p.max_core_instances_per_component(32);
        p.max_memories_per_component(4);
        p.max_tables_per_component(8);
        p.max_memory_size(MAX_MEMORY_BYTES);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
    }
    c
}

impl Sandbox {
    /// A sandbox whose compiled components are cached under `cache_dir` (if given).
    pub fn new(cache_dir: Option<&Path>) -> Result<Sandbox, SandboxError> {
        // The pooling allocator reserves virtual address space up front; where that is not
        // available (a tight `ulimit -v`), fall back to on-demand allocation.
        let engine = Engine::new(&config(true))
            .or_else(|_| Engine::new(&config(false)))
            .map_err(host_err)?;
        let mut linker: Linker<Guest> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(host_err)?;
        if let Some(dir) = cache_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| SandboxError::Host(format!("{}: {e}", dir.display())))?;
        }
        let ticker = Ticker::start(&engine)?;
        Ok(Sandbox {
            engine,
            linker,
            cache_dir: cache_dir.map(Path::to_path_buf),
            ticker: Arc::new(ticker),
        })
    }

    /// The cache key of a component: its content hash, the wasmtime version and the engine's
    /// compatibility hash (target, tunables, features).
    fn cache_key(&self, bytes: &[u8]) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        envsynth_core::hash::sha256_parts([
            ("component", bytes),
            ("wasmtime", env!("CARGO_PKG_VERSION").as_bytes()),
            ("engine", &h.finish().to_le_bytes()),
        ])
    }

    fn compile(&self, bytes: &[u8]) -> Result<Component, SandboxError> {
        let invalid = |e: wasmtime::Error| SandboxError::InvalidComponent(format!("{e:#}"));
        let Some(dir) = &self.cache_dir else {
            return Component::new(&self.engine, bytes).map_err(invalid);
        };
        let key = self.cache_key(bytes);
        let path = dir.join(format!("{}.cwasm", key.trim_start_matches("sha256:")));
        if path.is_file() {
            // Map a private copy rather than the cache file itself or a read buffer: a Python or
            // JavaScript component compiles to about 40 MB, and mapping avoids copying it through
            // user space twice. The copy is unlinked at once, so nothing can truncate it under the
            // live mapping (a truncated mapped file kills the process with SIGBUS); a copy torn by
            // a concurrent writer fails to deserialize and is recompiled.
            static COPIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = COPIES.fetch_add(1, Ordering::Relaxed);
            let private = path.with_extension(format!("{}-{n}.map", std::process::id()));
            if std::fs::copy(&path, &private).is_ok() {
                // SAFETY: `private` is this process's own copy of a file this sandbox wrote from
                // `precompile_component`, under a key that includes the engine's compatibility
                // hash; it is unlinked below and never written again.
                let loaded = unsafe { Component::deserialize_file(&self.engine, &private) };
                let _ = std::fs::remove_file(&private);
                if let Ok(c) = loaded {
                    return Ok(c);
                }
            }
        }
        let compiled = self.engine.precompile_component(bytes).map_err(invalid)?;
        // A per-process temporary name: concurrent loaders of one component never share it.
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        std::fs::write(&tmp, &compiled)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| SandboxError::Host(format!("{}: {e}", path.display())))?;
        // SAFETY: `compiled` came from this engine's `precompile_component` just now.
        unsafe { Component::deserialize(&self.engine, &compiled) }.map_err(invalid)
    }

    /// Load a component (binary or WAT text) and check that it exports `world`'s functions.
    pub fn load(&self, bytes: &[u8], world: World) -> Result<Plugin, SandboxError> {
        let component = self.compile(bytes)?;
        let exports: Vec<String> = component
            .component_type()
            .exports(&self.engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let missing: Vec<&str> = world
            .exports()
            .iter()
            .copied()
            .filter(|e| !exports.iter().any(|x| x == e))
            .collect();
        if !missing.is_empty() {
            return Err(SandboxError::WrongWorld {
                world: world.name(),
                detail: format!(
                    "missing export(s) {} (it exports: {})",
                    missing.join(", "),
                    exports.join(", ")
                ),
            });
        }
        let pre =
            self.linker
                .instantiate_pre(&component)
                .map_err(|e| SandboxError::WrongWorld {
                    world: world.name(),
                    detail: format!("it imports something the sandbox does not provide: {e:#}"),
                })?;
        Ok(Plugin {
            pre,
            engine: self.engine.clone(),
            _ticker: Arc::clone(&self.ticker),
            world,
            hash: envsynth_core::hash::sha256_id(bytes),
        })
    }

    pub fn load_file(&self, path: &Path, world: World) -> Result<Plugin, SandboxError> {
        let bytes = std::fs::read(path)
            .map_err(|e| SandboxError::InvalidComponent(format!("{}: {e}", path.display())))?;
        self.load(&bytes, world)
    }
}

/// The worlds of `verifiers/wit/envsynth.wit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum World {
    Verifier,
    Toolset,
    Environment,
}

impl World {
    pub fn name(self) -> &'static str {
        match self {
            World::Verifier => "verifier",
            World::Toolset => "toolset",
            World::Environment => "environment",
        }
    }
    pub fn exports(self) -> &'static [&'static str] {
        match self {
            World::Verifier => &["verify"],
            World::Toolset => &["tool-specs", "call"],
            World::Environment => &["spec", "generate", "tool-specs", "call", "verify"],
        }
    }
}

/// What a call returned, and what it cost.
#[derive(Clone, Debug, PartialEq)]
pub struct CallOutput {
    pub value: String,
    pub fuel_used: u64,
    /// What the guest printed (capped at the output limit); useful for diagnosing plugins.
    pub stdout: String,
    pub stderr: String,
}

/// A loaded component, ready to be instantiated for each call.
pub struct Plugin {
    pre: InstancePre<Guest>,
    engine: Engine,
    /// Keeps the epoch ticker running for as long as any plugin of the sandbox lives.
    _ticker: Arc<Ticker>,
    world: World,
    hash: String,
}

type TwoStrings<'a> = (&'a str, &'a str);

impl Plugin {
    /// `sha256:` of the component's bytes.
    pub fn hash(&self) -> &str {
        &self.hash
    }
    pub fn world(&self) -> World {
        self.world
    }

    /// `verify(task, submission)`: returns the guest's verdict JSON.
    pub fn verify(
        &self,
        limits: &Limits,
        task: &str,
        submission: &str,
    ) -> Result<CallOutput, SandboxError> {
        self.call_result::<TwoStrings>(limits, "verify", (task, submission))
    }

    /// `call(world, tool-name, arguments)`: returns the guest's tool result JSON.
    pub fn call_tool(
        &self,
        limits: &Limits,
        world: &str,
        tool: &str,
        arguments: &str,
    ) -> Result<CallOutput, SandboxError> {
        self.call_result::<(&str, &str, &str)>(limits, "call", (world, tool, arguments))
    }

    /// `tool-specs()`: returns the tool specs JSON.
    pub fn tool_specs(&self, limits: &Limits) -> Result<CallOutput, SandboxError> {
        self.call_typed::<(), (String,)>(limits, "tool-specs", ())
            .map(|(out, (v,))| CallOutput { value: v, ..out })
    }

    /// `spec()`: returns the environment spec JSON.
    pub fn spec(&self, limits: &Limits) -> Result<CallOutput, SandboxError> {
        self.call_typed::<(), (String,)>(limits, "spec", ())
            .map(|(out, (v,))| CallOutput { value: v, ..out })
    }

    /// `generate(request)`: returns a task record without its id, or the guest's rejection.
    pub fn generate(
        &self,
        limits: &Limits,
        request: &str,
    ) -> Result<Result<CallOutput, String>, SandboxError> {
        let (out, (r,)) =
            self.call_typed::<(&str,), (Result<String, String>,)>(limits, "generate", (request,))?;
        self.check_size(limits, r.as_ref().map_or_else(String::len, String::len))?;
        Ok(r.map(|v| CallOutput { value: v, ..out }))
    }

    fn call_result<P>(
        &self,
        limits: &Limits,
        name: &str,
        params: P,
    ) -> Result<CallOutput, SandboxError>
    where
        P: wasmtime::component::ComponentNamedList + wasmtime::component::Lower + Send + Sync,
    {
        let (out, (r,)) = self.call_typed::<P, (Result<String, String>,)>(limits, name, params)?;
        match r {
            Ok(v) => {
                self.check_size(limits, v.len())?;
                Ok(CallOutput { value: v, ..out })
            }
            Err(e) => {
                let mut e = e;
                e.truncate(4096);
                Err(SandboxError::Guest(e))
            }
        }
    }

    fn check_size(&self, limits: &Limits, bytes: usize) -> Result<(), SandboxError> {
        if bytes > limits.output_bytes {
            return Err(SandboxError::OutputTooLarge {
                bytes,
                limit: limits.output_bytes,
            });
        }
        Ok(())
    }

    /// Instantiate in a fresh store under `limits` and call one export.
    fn call_typed<P, R>(
        &self,
        limits: &Limits,
        name: &str,
        params: P,
    ) -> Result<(CallOutput, R), SandboxError>
    where
        P: wasmtime::component::ComponentNamedList + wasmtime::component::Lower + Send + Sync,
        R: wasmtime::component::ComponentNamedList + wasmtime::component::Lift + Send + Sync,
    {
        if limits.memory_bytes > MAX_MEMORY_BYTES {
            return Err(SandboxError::Host(format!(
                "memory limit {} exceeds the sandbox maximum {MAX_MEMORY_BYTES}",
                limits.memory_bytes
            )));
        }
        let stdout = MemoryOutputPipe::new(limits.output_bytes);
        let stderr = MemoryOutputPipe::new(limits.output_bytes);
        // Seeded randomness: the same component and input see the same bytes.
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&self.hash.as_bytes()[7..39]);
        let mut rng = ChaCha8Rng::from_seed(seed);
        let mut bytes = vec![0u8; 4096];
        rng.fill_bytes(&mut bytes);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .wall_clock(FixedClock)
            .monotonic_clock(FixedClock)
            .secure_random(Deterministic::new(bytes.clone()))
            .insecure_random(Deterministic::new(bytes))
            .insecure_random_seed(0x5eed)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let guest = Guest {
            wasi,
            table: ResourceTable::new(),
            memory_cap: limits.memory_bytes,
            memory_exceeded: false,
        };
        let mut store = Store::new(&self.engine, guest);
        store.limiter(|g| g as &mut dyn ResourceLimiter);
        store.set_fuel(limits.fuel).map_err(host_err)?;
        let ticks = (limits.timeout.as_nanos() / TICK.as_nanos()).max(1) as u64 + 1;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();

        let classify = |e: wasmtime::Error, store: &Store<Guest>| -> SandboxError {
            if store.data().memory_exceeded {
                return SandboxError::MemoryLimit {
                    limit: limits.memory_bytes,
                };
            }
            match e.downcast_ref::<Trap>() {
                Some(Trap::OutOfFuel) => SandboxError::FuelExhausted { fuel: limits.fuel },
                Some(Trap::Interrupt) => SandboxError::Timeout {
                    ms: limits.timeout.as_millis() as u64,
                },
                Some(Trap::StackOverflow) => SandboxError::StackOverflow,
                _ => {
                    let mut msg = format!("{e:#}");
                    let err = String::from_utf8_lossy(&stderr.contents()).into_owned();
                    if !err.is_empty() {
                        let tail: String = err
                            .chars()
                            .rev()
                            .take(2000)
                            .collect::<Vec<_>>()
                            .into_iter()
                            .rev()
                            .collect();
                        msg.push_str(&format!("; stderr: {tail}"));
                    }
                    SandboxError::Trap(msg)
                }
            }
        };
        let instance = match self.pre.instantiate(&mut store) {
            Ok(i) => i,
            Err(e) => return Err(classify(e, &store)),
        };
        let func = instance
            .get_typed_func::<P, R>(&mut store, name)
            .map_err(|e| SandboxError::WrongWorld {
                world: self.world.name(),
                detail: format!("export `{name}` has the wrong type: {e:#}"),
            })?;
        let result = match func.call(&mut store, params) {
            Ok(r) => r,
            Err(e) => return Err(classify(e, &store)),
        };
        let fuel_used = limits.fuel - store.get_fuel().map_err(host_err)?;
        let out = CallOutput {
            value: String::new(),
            fuel_used,
            stdout: String::from_utf8_lossy(&stdout.contents()).into_owned(),
            stderr: String::from_utf8_lossy(&stderr.contents()).into_owned(),
        };
        Ok((out, result))
    }
}

/// Verify one submission with a verifier plugin and turn whatever happens into a verdict. A limit
/// breach, trap or guest error becomes a masked verdict of the matching `failure_kind`; so does
/// output that is not a valid verdict for this task (`invalid_plugin`). The fuel used is recorded.
pub fn plugin_verdict(
    plugin: &Plugin,
    limits: &Limits,
    task_id: &str,
    task_json: &str,
    submission_json: &str,
) -> envsynth_core::Verdict {
    use envsynth_core::Verdict;
    let out = match plugin.verify(limits, task_json, submission_json) {
        Ok(out) => out,
        Err(e) => return Verdict::rejected(task_id, e.failure_kind(), e.to_string(), []),
    };
    let invalid = |why: String| {
        let mut v = Verdict::rejected(task_id, FailureKind::InvalidPlugin, why, []);
        v.fuel = Some(out.fuel_used);
        v
    };
    let mut v: Verdict = match serde_json::from_str(&out.value) {
        Ok(v) => v,
        Err(e) => {
            return invalid(format!(
                "the plugin returned something that is not a verdict: {e}"
            ));
        }
    };
    if v.task_id != task_id {
        return invalid(format!(
            "the plugin's verdict is for task {}, not {task_id}",
            v.task_id
        ));
    }
    if !(0.0..=1.0).contains(&v.reward) {
        return invalid(format!(
            "the plugin's reward {} is outside [0, 1]",
            v.reward
        ));
    }
    if v.mask != v.failure_kind.is_masked() || v.passed != (v.failure_kind == FailureKind::None) {
        return invalid(format!(
            "the plugin's verdict is inconsistent: passed={}, mask={}, failure_kind={:?}",
            v.passed, v.mask, v.failure_kind
        ));
    }
    v.fuel = Some(out.fuel_used);
    v
}
