//! The GPU backend's kernels, through cudarc: CUDA is loaded at run time (every build has this
//! code; a machine without a driver gets a clear error, not a crash), kernels are compiled by
//! NVRTC to CUBIN for `sm_90a` and cached on disk by the hash of source, options and NVRTC
//! version. This is the only module of the project that names CUDA.
//!
//! Kernels (`kernels.cu`): RMSNorm, RoPE in both pairings, SwiGLU, the lightning indexer's
//! logits (bf16 tensor cores, ReLU-weighted head sum, causal mask), top-k per row by radix
//! select, sparse MLA in the absorbed form over selected rows with split-KV and a combine step,
//! MoE routing and grouped expert products, and the glue of the whole model. `model` runs the
//! whole forward pass with them (the GPU policy backend); `check` and `model_check` compare
//! kernels and model against the CPU reference and benchmark them.

pub mod check;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, LaunchConfig,
};
use sha2::{Digest, Sha256};

pub const KERNELS: &str = include_str!("kernels.cu");
/// Hopper with its architecture-specific instructions.
pub const ARCH: &str = "sm_90a";

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no CUDA driver: {0}")]
    NoDriver(String),
    #[error("no NVRTC: {0}")]
    NoNvrtc(String),
    #[error("NVRTC could not compile the kernels: {0}")]
    Compile(String),
    #[error("CUDA: {0}")]
    Cuda(String),
    #[error("kernel cache {path}: {source}")]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn cuda(e: impl std::fmt::Debug) -> GpuError {
    GpuError::Cuda(format!("{e:?}"))
}

/// Whether libnvrtc can be loaded (it needs no GPU).
pub fn nvrtc_present() -> bool {
    // SAFETY: only probes for the shared library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Whether libcuda (the driver) can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: only probes for the shared library.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

fn nvrtc_version() -> Result<(i32, i32), GpuError> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two out-pointers to live integers.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    r.result()
        .map_err(|e| GpuError::NoNvrtc(format!("{e:?}")))?;
    Ok((major, minor))
}

fn options() -> Vec<String> {
    vec![
        format!("--gpu-architecture={ARCH}"),
        "--std=c++17".into(),
        "--generate-line-info".into(),
    ]
}

/// Compiles `src` with NVRTC to a CUBIN for [`ARCH`]. Needs libnvrtc, not a GPU.
pub fn compile_cubin(src: &str) -> Result<Vec<u8>, GpuError> {
    if !nvrtc_present() {
        return Err(GpuError::NoNvrtc(
            "libnvrtc.so was not found; install CUDA or the nvidia-cuda-nvrtc wheel and put its lib folder on LD_LIBRARY_PATH".into(),
        ));
    }
    use cudarc::nvrtc::{result, sys};
    let c_src = std::ffi::CString::new(src).map_err(|e| GpuError::Compile(e.to_string()))?;
    let prog =
        result::create_program(&c_src, None).map_err(|e| GpuError::Compile(format!("{e:?}")))?;
    let opts = options();
    // SAFETY: `prog` was just created and is destroyed below, once.
    let compiled = unsafe { result::compile_program(prog, &opts) };
    let out = match compiled {
        Err(e) => {
            // SAFETY: as above.
            let log = unsafe { result::get_program_log(prog) }
                .map(|l| {
                    let bytes: Vec<u8> =
                        l.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
                    String::from_utf8_lossy(&bytes).into_owned()
                })
                .unwrap_or_default();
            Err(GpuError::Compile(format!("{e:?}\n{log}")))
        }
        Ok(()) => {
            let mut size = 0usize;
            // SAFETY: compiled program, out-pointer to a live integer, then a buffer of that size.
            unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }
                .result()
                .map_err(|e| GpuError::Compile(format!("{e:?}")))?;
            let mut cubin = vec![0u8; size];
            unsafe { sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut _) }
                .result()
                .map_err(|e| GpuError::Compile(format!("{e:?}")))?;
            Ok(cubin)
        }
    };
    // SAFETY: created above, destroyed once.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

/// The CUBIN of `src`, from `cache` when it holds one for this source, options and NVRTC.
pub fn cached_cubin(src: &str, cache: &Path) -> Result<(Vec<u8>, bool), GpuError> {
    let (major, minor) = nvrtc_version()?;
    let mut h = Sha256::new();
    h.update(src.as_bytes());
    for o in options() {
        h.update(o.as_bytes());
        h.update([0]);
    }
    h.update(format!("nvrtc {major}.{minor}").as_bytes());
    let key = hex_digest(&h.finalize());
    let path = cache.join(format!("{key}.cubin"));
    if let Ok(bytes) = std::fs::read(&path) {
        return Ok((bytes, true));
    }
    let cubin = compile_cubin(src)?;
    std::fs::create_dir_all(cache).map_err(|source| GpuError::Cache {
        path: cache.to_path_buf(),
        source,
    })?;
    envsynth_core::files::atomic_write(&path, &cubin).map_err(|source| GpuError::Cache {
        path: path.clone(),
        source,
    })?;
    Ok((cubin, false))
}

fn hex_digest(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where compiled kernels are kept: `$ENVSYNTH_HOME/kernels`, else `~/.cache/envsynth/kernels`.
pub fn default_cache() -> PathBuf {
    if let Some(home) = std::env::var_os("ENVSYNTH_HOME") {
        return PathBuf::from(home).join("kernels");
    }
    let base = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    base.join(".cache/envsynth/kernels")
}

/// Scratch buffers of the multi-block top-k (`Gpu::topk_decode`). Its histograms, counters and
/// grid barrier start zeroed, and each call leaves them zeroed again, so calls need no memset;
/// after a failed launch, make a new one rather than reuse it.
pub struct TopkWork {
    hist: CudaSlice<i32>,
    counters: CudaSlice<i32>,
    /// Per row, a bitmap of the keys taken above the threshold prefix (`TK_WORDS` words).
    taken: CudaSlice<u32>,
    cand: CudaSlice<u64>,
    barrier: CudaSlice<u32>,
    rows: usize,
    k: usize,
    /// Set by [`Gpu::indexer_decode`] when it built the first histograms; the next
    /// [`Gpu::topk_decode`] on this work space skips that pass and clears it.
    hist_ready: bool,
}

/// Candidates kept per row before the one-block fallback takes over. A row whose top-11-bit
/// threshold bin holds at most this many keys skips the second histogram; at 128K random keys
/// that bin holds about 4,200.
const TOPK_CAP: usize = 8192;

/// A launch of a `x` × `y` grid of `block`-thread blocks with `smem` bytes of dynamic shared
/// memory.
fn config(x: u32, y: u32, block: u32, smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (x, y, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: smem,
    }
}

/// Launches kernel `$name` of the loaded module on the GPU's stream with `$cfg` and the
/// arguments in order; a failure names the kernel.
macro_rules! launch {
    ($gpu:expr, $name:expr, $cfg:expr, $($arg:expr),+ $(,)?) => {{
        let f = $gpu.function($name)?;
        let mut b = $gpu.stream.launch_builder(&f);
        $( cudarc::driver::PushKernelArg::arg(&mut b, $arg); )+
        // SAFETY: the argument types and their order match the kernel's signature in kernels.cu.
        unsafe { b.launch($cfg) }.map_err(|e| GpuError::Cuda(format!("{}: {e:?}", $name)))?;
    }};
}

/// How [`Gpu::launch_ex`] launches a kernel.
#[derive(Clone, Copy)]
struct Launch {
    /// Under programmatic stream serialization: the kernel may start once the kernel before it
    /// has let its dependents go (`griddepcontrol.launch_dependents`), and must wait for that
    /// kernel (`griddepcontrol.wait`) before it touches what that kernel reads or writes.
    /// Captured into a graph, the dependency becomes a programmatic edge.
    programmatic: bool,
    /// For kernels whose blocks meet at grid-wide barriers: the driver refuses the launch if
    /// the blocks cannot all be resident at once, rather than letting it hang.
    cooperative: bool,
}

/// A kernel argument by address, as [`Gpu::launch_ex`] takes them.
fn at<T>(v: &T) -> *const std::ffi::c_void {
    (v as *const T).cast()
}

/// One GPU with the kernels loaded (clones share the context, stream and module).
#[derive(Clone)]
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    pub name: String,
    pub multiprocessors: i32,
    /// Whether the kernels came from the disk cache.
    pub cached: bool,
    /// Blocks of `indexer_decode_bf16` ([0]) and of `indexer_decode_fp8` ([1]) resident on the
    /// GPU at once.
    indexer_decode_resident: [u32; 2],
}

/// A null device pointer (an absent page table).
const NULL: u64 = 0;

/// Keys one block of `indexer_tiles` takes (IX_CHUNK in kernels.cu), its warpgroups of 4 queries
/// each with bf16 and with e4m3 operands (IX_WGS_BF16, IX_WGS_FP8), and the most 64-key tiles one
/// block of `indexer_decode_bf16` and `indexer_decode_fp8` takes (IXD_TILES, IXD_TILES_FP8).
const IX_CHUNK: u32 = 8192;
const IX_WGS_BF16: u32 = 2;
const IX_WGS_FP8: u32 = 3;
const IXD_TILES: u32 = 8;
const IXD_TILES_FP8: u32 = 4;

/// Tiles of 64 keys a block of the decode indexer takes, over `rows` rows of `s` keys: `cap`
/// (the query loaded once for the most keys), unless at `cap` the blocks would not cover the
/// `multiprocessors`; then the fewest that keep all blocks resident at once (`resident`, from
/// the occupancy API), since a block walks its tiles in a chain of latencies. A batch-1 step at
/// 8K takes one tile a block (128 blocks instead of 16): its indexer 9.9 → 6.1 µs.
fn decode_tiles_per_block(
    rows: usize,
    s: usize,
    cap: u32,
    multiprocessors: u32,
    resident: u32,
) -> u32 {
    let tiles = (rows as u64 * (s as u64).div_ceil(64)).max(1);
    if tiles.div_ceil(cap as u64) >= multiprocessors as u64 {
        return cap;
    }
    tiles.div_ceil(resident.max(1) as u64).clamp(1, cap as u64) as u32
}

/// The grid of the prefill indexer over `t` queries and `s` keys, `wgs` warpgroups a block.
fn indexer_grid(t: usize, s: usize, wgs: u32, smem: u32) -> LaunchConfig {
    config(
        (s as u32).div_ceil(IX_CHUNK),
        (t as u32).div_ceil(4 * wgs),
        128 * wgs,
        smem,
    )
}

/// Shared memory of `indexer_tiles` with `wgs` warpgroups, bf16 or e4m3 operands (rows of 256 or
/// 128 bytes): 256 query rows a warpgroup and 4 stages of 64 key rows, plus 1 KB so the swizzled
/// tiles can start on a 1,024-byte boundary; with e4m3 also each warpgroup's head-sum weights
/// (4 KB) and the key tiles' scales.
const fn indexer_smem(wgs: usize, fp8: bool) -> u32 {
    let (row, fp8_extra) = if fp8 {
        (128, wgs * 4096 + 4 * 64 * 4)
    } else {
        (256, 0)
    };
    ((wgs * 256 + 4 * 64) * row + 1024 + fp8_extra) as u32
}
const INDEXER_SMEM: u32 = indexer_smem(IX_WGS_BF16 as usize, false);
const INDEXER_FP8_SMEM: u32 = indexer_smem(IX_WGS_FP8 as usize, true);
/// Shared memory of `indexer_decode_bf16`: 64 query rows and a ring of 3 tiles of 64 key rows,
/// 256 bytes each, 1 KB so the swizzled tiles can start on a 1,024-byte boundary, and a
/// 2,048-bin histogram for the top-k.
const INDEXER_DECODE_SMEM: u32 = ((64 + 3 * 64) * 256 + 1024 + 2048 * 4) as u32;
/// Of `indexer_decode_fp8`: the same with rows of 128 bytes, plus the ring's key scales.
const INDEXER_DECODE_FP8_SMEM: u32 = ((64 + 3 * 64) * 128 + 1024 + 3 * 64 * 4 + 2048 * 4) as u32;

/// The indexer's query and key operands (prefill and decode), on device addresses.
#[derive(Clone, Copy)]
pub(crate) enum IndexerOperands {
    Bf16 {
        q: u64,
        k: u64,
    },
    /// e4m3, with one scale per head of q and one per key.
    Fp8 {
        q: u64,
        q_scale: u64,
        k: u64,
        k_scale: u64,
    },
}
/// Dynamic shared memory of `topk_decode_fused` (TKF_SMEM): the candidates (TK_CAP = TOPK_CAP),
/// two bitmaps over 131,072 positions and a 2,048-bin histogram (the histogram phases use less).
const TOPK_DECODE_SMEM: u32 = (TOPK_CAP * 8 + 2 * TOPK_WORDS * 4 + 2048 * 4) as u32;
/// Words of a bitmap over the longest row the multi-block top-k selects itself (TK_WORDS; longer
/// rows take its one-block fallback).
const TOPK_WORDS: usize = 131_072 / 32;
/// Shared memory of `topk_row_fast` (TKR_SMEM): a 2,048-bin histogram, two bitmaps over 131,072
/// positions and 4,096 candidates of 8 bytes.
const TOPK_ROWS_SMEM: u32 = (2048 * 4 + 2 * TOPK_WORDS * 4 + 4096 * 8) as u32;
/// Threads of a `topk_rows` block (TKR_THREADS): the kernel's loads use it as a fixed stride.
const TOPK_ROWS_THREADS: u32 = 512;
/// Shared memory of `sparse_mla_bf16`: the query and two gathered tiles (64 rows of 576 bf16
/// each), P (64 × 64 bf16), row maxima of both warpgroups (their row sums at the end), two
/// stages of valid flags and two of indices, and 1 KB to align the swizzled tiles.
const MLA_SMEM: u32 = (3 * 64 * 576 * 2 + 64 * 64 * 2 + 2 * 64 * 4 + 2 * 2 * 64 * 4 + 1024) as u32;

impl Gpu {
    /// Opens device 0 and loads the kernels; says plainly what is missing.
    pub fn open(cache: &Path) -> Result<Gpu, GpuError> {
        if !driver_present() {
            return Err(GpuError::NoDriver(
                "libcuda.so was not found: this machine has no NVIDIA driver, so the GPU backend cannot run here".into(),
            ));
        }
        let ctx = CudaContext::new(0)
            .map_err(|e| GpuError::NoDriver(format!("no usable GPU (device 0): {e:?}")))?;
        let (major, minor) = ctx.compute_capability().map_err(cuda)?;
        if (major, minor) != (9, 0) {
            return Err(GpuError::Cuda(format!(
                "the kernels are built for sm_90a (Hopper); device 0 is compute capability {major}.{minor}"
            )));
        }
        // One stream: ordering is the stream's, so per-slice event tracking is not needed.
        // SAFETY: all work of this context goes through `stream`.
        unsafe { ctx.disable_event_tracking() };
        let (cubin, cached) = cached_cubin(KERNELS, cache)?;
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
            .map_err(cuda)?;
        let name = ctx.name().map_err(cuda)?;
        let multiprocessors = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(cuda)?;
        // A stream of its own (not the legacy default stream), so work can be captured as a graph.
        let stream = ctx.new_stream().map_err(cuda)?;
        let mut gpu = Gpu {
            stream,
            ctx,
            module,
            name,
            multiprocessors,
            cached,
            indexer_decode_resident: [1, 1],
        };
        for (f, smem) in [
            ("indexer_logits_bf16", INDEXER_SMEM),
            ("indexer_logits_fp8", INDEXER_FP8_SMEM),
            ("indexer_decode_bf16", INDEXER_DECODE_SMEM),
            ("indexer_decode_fp8", INDEXER_DECODE_FP8_SMEM),
            ("sparse_mla_bf16", MLA_SMEM),
            ("sparse_mla_bf16_vsplit", MLA_SMEM),
            ("topk_rows", TOPK_ROWS_SMEM),
            ("topk_rows_lens", TOPK_ROWS_SMEM),
            ("topk_decode_fused", TOPK_DECODE_SMEM),
        ] {
            gpu.function(f)?
                .set_attribute(
                    cudarc::driver::sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as i32,
                )
                .map_err(cuda)?;
        }
        for (i, (f, smem)) in [
            ("indexer_decode_bf16", INDEXER_DECODE_SMEM),
            ("indexer_decode_fp8", INDEXER_DECODE_FP8_SMEM),
        ]
        .into_iter()
        .enumerate()
        {
            let per_sm = gpu
                .function(f)?
                .occupancy_max_active_blocks_per_multiprocessor(128, smem as usize, None)
                .map_err(cuda)?;
            gpu.indexer_decode_resident[i] = per_sm * multiprocessors as u32;
        }
        Ok(gpu)
    }

    fn function(&self, name: &str) -> Result<CudaFunction, GpuError> {
        self.module.load_function(name).map_err(cuda)
    }

    /// Launches kernel `name` on the stream through `cuLaunchKernelEx`, with the attributes
    /// `how` asks for (cudarc's builder takes none).
    ///
    /// # Safety
    /// `params` holds the addresses of the kernel's arguments, in the order and of the types
    /// of its parameters.
    unsafe fn launch_ex(
        &self,
        name: &str,
        cfg: LaunchConfig,
        params: &[*const std::ffi::c_void],
        how: Launch,
    ) -> Result<(), GpuError> {
        use cudarc::driver::sys;
        let f = self.function(name)?;
        // As cudarc's builder does before it launches: the context current on this thread.
        self.ctx.bind_to_thread().map_err(cuda)?;
        let programmatic = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value: sys::CUlaunchAttributeValue {
                programmaticStreamSerializationAllowed: 1,
            },
        };
        let cooperative = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_COOPERATIVE,
            pad: [0; 4],
            value: sys::CUlaunchAttributeValue { cooperative: 1 },
        };
        // The asked-for attributes first, on the stack (this runs for every decode step).
        let mut attrs = [programmatic, cooperative];
        let mut n = 0;
        for (on, attr) in [
            (how.programmatic, programmatic),
            (how.cooperative, cooperative),
        ] {
            if on {
                attrs[n] = attr;
                n += 1;
            }
        }
        let launch = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: attrs.as_mut_ptr(),
            numAttrs: n as u32,
        };
        let mut params = params.to_vec();
        // SAFETY: the caller vouches for `params`; the function belongs to this context's
        // module and `launch` and `attrs` outlive the call.
        unsafe {
            sys::cuLaunchKernelEx(
                &launch,
                f.cu_function(),
                params.as_mut_ptr().cast(),
                std::ptr::null_mut(),
            )
        }
        .result()
        .map_err(|e| GpuError::Cuda(format!("{name}: {e:?}")))
    }

    pub fn upload<T: cudarc::driver::DeviceRepr>(
        &self,
        host: &[T],
    ) -> Result<CudaSlice<T>, GpuError> {
        self.stream
            .clone_htod(host)
            .map_err(|e| GpuError::Cuda(format!("upload of {} values: {e:?}", host.len())))
    }

    pub fn download<T: cudarc::driver::DeviceRepr>(
        &self,
        dev: &CudaSlice<T>,
    ) -> Result<Vec<T>, GpuError> {
        self.stream
            .clone_dtoh(dev)
            .map_err(|e| GpuError::Cuda(format!("download of {} values: {e:?}", dev.len())))
    }

    pub fn zeros<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>, GpuError> {
        self.stream.alloc_zeros(n).map_err(cuda)
    }

    /// Records what `f` enqueues as a CUDA graph (nothing runs while recording).
    pub fn capture(
        &self,
        f: impl FnOnce() -> Result<(), GpuError>,
    ) -> Result<cudarc::driver::CudaGraph, GpuError> {
        self.stream
            .begin_capture(
                cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL,
            )
            .map_err(cuda)?;
        let recorded = f();
        let graph = self
            .stream
            .end_capture(cudarc::driver::sys::CUgraphInstantiate_flags(0))
            .map_err(cuda)?;
        recorded?;
        graph.ok_or_else(|| GpuError::Cuda("stream capture recorded nothing".into()))
    }

    pub fn sync(&self) -> Result<(), GpuError> {
        self.stream.synchronize().map_err(cuda)
    }

    /// Keeps the stream busy for `ns` nanoseconds of GPU time (see `hold` in kernels.cu).
    pub fn hold(&self, ns: i64) -> Result<(), GpuError> {
        launch!(self, "hold", config(1, 1, 1, 0), &ns);
        Ok(())
    }

    /// RMSNorm of `rows` rows of width `n`.
    pub fn rms_norm(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        rows: usize,
        n: usize,
        eps: f32,
    ) -> Result<(), GpuError> {
        let n32 = n as i32;
        let cfg = config(rows as u32, 1, 256, 0);
        launch!(self, "rms_norm_f32", cfg, x, w, y, &n32, &eps);
        Ok(())
    }

    /// RoPE in place (see `rope_f32` in kernels.cu).
    #[allow(clippy::too_many_arguments)]
    pub fn rope(
        &self,
        x: &mut CudaSlice<f32>,
        positions: &CudaSlice<i32>,
        cos: &CudaSlice<f32>,
        sin: &CudaSlice<f32>,
        count: usize,
        per_position: usize,
        stride: usize,
        offset: usize,
        dim: usize,
        interleaved: bool,
    ) -> Result<(), GpuError> {
        let total = (count * dim / 2) as u32;
        let (c, pp, st, off, d, il) = (
            count as i32,
            per_position as i32,
            stride as i32,
            offset as i32,
            dim as i32,
            interleaved as i32,
        );
        let cfg = config(total.div_ceil(256), 1, 256, 0);
        launch!(
            self, "rope_f32", cfg, x, positions, cos, sin, &c, &pp, &st, &off, &d, &il
        );
        Ok(())
    }

    pub fn swiglu(
        &self,
        gate: &CudaSlice<f32>,
        up: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        n: usize,
    ) -> Result<(), GpuError> {
        let n32 = n as i32;
        let cfg = config((n as u32).div_ceil(256), 1, 256, 0);
        launch!(self, "swiglu_f32", cfg, gate, up, out, &n32);
        Ok(())
    }

    /// Indexer logits of `t` queries (absolute positions first_pos..) over `s` keys into rows of
    /// `ld` floats; only tiles at or before each query block's last position are computed.
    #[allow(clippy::too_many_arguments)]
    pub fn indexer_logits(
        &self,
        q: &CudaSlice<u16>,
        k: &CudaSlice<u16>,
        w: &CudaSlice<f32>,
        logits: &mut CudaSlice<f32>,
        t: usize,
        s: usize,
        ld: usize,
        first_pos: usize,
    ) -> Result<(), GpuError> {
        let ops = IndexerOperands::Bf16 {
            q: self.ptr(q),
            k: self.ptr(k),
        };
        let (w, l) = (self.ptr(w), self.ptr(logits));
        self.indexer_logits_raw(ops, w, l, t, s, ld, first_pos, NULL)
    }

    /// [`Gpu::indexer_logits`] on device addresses; with a page table (not [`NULL`]) key `s`
    /// lives in cache row `pages[s / 128] · 128 + s % 128`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn indexer_logits_raw(
        &self,
        ops: IndexerOperands,
        w: u64,
        logits: u64,
        t: usize,
        s: usize,
        ld: usize,
        first_pos: usize,
        pages: u64,
    ) -> Result<(), GpuError> {
        let (t32, s32, ld32, fp) = (t as i32, s as i32, ld as i32, first_pos as i32);
        match ops {
            IndexerOperands::Bf16 { q, k } => {
                let cfg = indexer_grid(t, s, IX_WGS_BF16, INDEXER_SMEM);
                launch!(
                    self,
                    "indexer_logits_bf16",
                    cfg,
                    &q,
                    &k,
                    &w,
                    &logits,
                    &t32,
                    &s32,
                    &ld32,
                    &fp,
                    &pages
                );
            }
            IndexerOperands::Fp8 {
                q,
                q_scale,
                k,
                k_scale,
            } => {
                let cfg = indexer_grid(t, s, IX_WGS_FP8, INDEXER_FP8_SMEM);
                launch!(
                    self,
                    "indexer_logits_fp8",
                    cfg,
                    &q,
                    &q_scale,
                    &k,
                    &k_scale,
                    &w,
                    &logits,
                    &t32,
                    &s32,
                    &ld32,
                    &fp,
                    &pages
                );
            }
        }
        Ok(())
    }

    /// Top-`k` positions per row (ascending, -1 padded) of `rows` logits rows.
    pub fn topk(
        &self,
        logits: &CudaSlice<f32>,
        out: &mut CudaSlice<i32>,
        rows: usize,
        ld: usize,
        k: usize,
        first_pos: usize,
    ) -> Result<(), GpuError> {
        self.topk_raw(self.ptr(logits), self.ptr(out), rows, ld, k, first_pos)
    }

    /// [`Gpu::topk`] on device addresses.
    pub(crate) fn topk_raw(
        &self,
        logits: u64,
        out: u64,
        rows: usize,
        ld: usize,
        k: usize,
        first_pos: usize,
    ) -> Result<(), GpuError> {
        let (ld32, k32, fp) = (ld as i32, k as i32, first_pos as i32);
        let cfg = config(rows as u32, 1, TOPK_ROWS_THREADS, TOPK_ROWS_SMEM);
        launch!(self, "topk_rows", cfg, &logits, &out, &ld32, &k32, &fp);
        Ok(())
    }

    /// Top-`k` positions of `rows` logits rows, one block per row, row `t` considering its first
    /// `lens[t]` entries (decode with many sequences).
    pub(crate) fn topk_rows_lens_raw(
        &self,
        logits: u64,
        lens: u64,
        out: u64,
        rows: usize,
        ld: usize,
        k: usize,
    ) -> Result<(), GpuError> {
        let (ld32, k32) = (ld as i32, k as i32);
        let cfg = config(rows as u32, 1, TOPK_ROWS_THREADS, TOPK_ROWS_SMEM);
        launch!(
            self,
            "topk_rows_lens",
            cfg,
            &logits,
            &lens,
            &out,
            &ld32,
            &k32
        );
        Ok(())
    }

    /// Rotates `rows` rows of 128 bf16 by the Hadamard transform and quantizes each to e4m3
    /// with a power-of-two scale (the FP8 indexer's q and k).
    pub fn hadamard_quant(
        &self,
        x: &CudaSlice<u16>,
        q8: &mut CudaSlice<u8>,
        scale: &mut CudaSlice<f32>,
        rows: usize,
    ) -> Result<(), GpuError> {
        let r32 = rows as i32;
        // Eight lanes a row: 32 rows a block of 256 threads.
        let cfg = config((rows as u32).div_ceil(32), 1, 256, 0);
        launch!(self, "hadamard_quant_e4m3", cfg, x, q8, scale, &r32);
        Ok(())
    }

    /// [`Gpu::indexer_logits`] with e4m3 q and k and their scales.
    #[allow(clippy::too_many_arguments)]
    pub fn indexer_logits_fp8(
        &self,
        q: &CudaSlice<u8>,
        q_scale: &CudaSlice<f32>,
        k: &CudaSlice<u8>,
        k_scale: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        logits: &mut CudaSlice<f32>,
        t: usize,
        s: usize,
        ld: usize,
        first_pos: usize,
    ) -> Result<(), GpuError> {
        let ops = IndexerOperands::Fp8 {
            q: self.ptr(q),
            q_scale: self.ptr(q_scale),
            k: self.ptr(k),
            k_scale: self.ptr(k_scale),
        };
        let (w, l) = (self.ptr(w), self.ptr(logits));
        self.indexer_logits_raw(ops, w, l, t, s, ld, first_pos, NULL)
    }

    /// Group-limited sigmoid routing of `t` tokens from their router logits ([t, E]): the
    /// chosen experts ([t, k], ascending) and their weights, as `model::route` computes them.
    pub fn moe_route(
        &self,
        logits: &CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        ids: &mut CudaSlice<i32>,
        weights: &mut CudaSlice<f32>,
        t: usize,
        cfg: &crate::Config,
    ) -> Result<(), GpuError> {
        self.moe_route_raw(
            self.ptr(logits),
            self.ptr(bias),
            self.ptr(ids),
            self.ptr(weights),
            t,
            cfg,
        )
    }

    /// [`Gpu::moe_route`] on device addresses.
    pub(crate) fn moe_route_raw(
        &self,
        logits: u64,
        bias: u64,
        ids: u64,
        weights: u64,
        t: usize,
        cfg: &crate::Config,
    ) -> Result<(), GpuError> {
        if cfg.n_routed_experts > 256 || cfg.num_experts_per_tok > 32 || cfg.n_group > 32 {
            return Err(GpuError::Cuda(format!(
                "moe_route handles up to 256 experts, 32 per token and 32 groups; the config has {}, {} and {}",
                cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.n_group
            )));
        }
        let (t32, e, g, tg, k) = (
            t as i32,
            cfg.n_routed_experts as i32,
            cfg.n_group as i32,
            cfg.topk_group as i32,
            cfg.num_experts_per_tok as i32,
        );
        let (norm, scale) = (
            i32::from(cfg.norm_topk_prob),
            cfg.routed_scaling_factor as f32,
        );
        let cfg = config((t as u32).div_ceil(8), 1, 256, 0);
        launch!(
            self,
            "moe_route",
            cfg,
            &logits,
            &bias,
            &ids,
            &weights,
            &t32,
            &e,
            &g,
            &tg,
            &k,
            &norm,
            &scale
        );
        Ok(())
    }

    /// Groups the `total` (token, slot) pairs of `ids` ([tokens, k] expert ids) by expert for
    /// [`Gpu::grouped_gemm_raw`]: `token_of` and `pos` get `total` ints, `off` and `tiles` E + 1.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn moe_sort_raw(
        &self,
        ids: u64,
        total: usize,
        experts: usize,
        k: usize,
        token_of: u64,
        pos: u64,
        off: u64,
        tiles: u64,
    ) -> Result<(), GpuError> {
        if experts > 256 {
            return Err(GpuError::Cuda(format!(
                "moe_sort handles up to 256 experts, not {experts}"
            )));
        }
        let (t32, e32, k32) = (total as i32, experts as i32, k as i32);
        let cfg = config(1, 1, 1024, 0);
        launch!(
            self, "moe_sort", cfg, &ids, &t32, &e32, &token_of, &pos, &off, &tiles, &k32
        );
        Ok(())
    }

    /// Each expert's product over its sorted rows: C[p] = A[row(p)] · W_eᵀ with W [E, n, k]
    /// bf16, A rows of k bf16 (gathered through `token_of` when `gather`), C [total, n] f32.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn grouped_gemm_raw(
        &self,
        a: u64,
        token_of: u64,
        gather: bool,
        w: u64,
        c: u64,
        off: u64,
        tiles: u64,
        experts: usize,
        total: usize,
        n: usize,
        k: usize,
    ) -> Result<(), GpuError> {
        if !n.is_multiple_of(128) || !k.is_multiple_of(32) {
            return Err(GpuError::Cuda(format!(
                "the grouped expert product needs widths that are multiples of 128 (out) and 32 (in), not {n} and {k}"
            )));
        }
        let (gather32, e32, n32, k32) = (i32::from(gather), experts as i32, n as i32, k as i32);
        let cfg = config(
            (n / 128) as u32,
            (total.div_ceil(64) + experts) as u32,
            256,
            0,
        );
        launch!(
            self,
            "grouped_gemm_bf16",
            cfg,
            &a,
            &token_of,
            &gather32,
            &w,
            &c,
            &off,
            &tiles,
            &e32,
            &n32,
            &k32
        );
        Ok(())
    }

    /// The device address of a buffer (one stream, so no event bookkeeping).
    pub(crate) fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        let (p, _sync) = s.device_ptr(&self.stream);
        p
    }

    pub fn topk_work(&self, rows: usize, k: usize) -> Result<TopkWork, GpuError> {
        if k > 2048 {
            return Err(GpuError::Cuda(format!(
                "topk_decode handles k up to 2048, not {k}"
            )));
        }
        Ok(TopkWork {
            hist: self.zeros(rows * 2 * 2048)?,
            counters: self.zeros(rows * 4)?,
            taken: self.zeros(rows * TOPK_WORDS)?,
            cand: self.zeros(rows * TOPK_CAP)?,
            barrier: self.zeros(2)?,
            rows,
            k,
            hist_ready: false,
        })
    }

    /// Indexer logits of one query per row (decode): row `t` scores keys `0..lens[t]`. With a
    /// top-k work space it also builds that top-k's first histograms (one pass over the logits
    /// fewer); [`Gpu::topk_decode`] on the same work space and logits must come next.
    #[allow(clippy::too_many_arguments)]
    pub fn indexer_decode(
        &self,
        q: &CudaSlice<u16>,
        k: &CudaSlice<u16>,
        w: &CudaSlice<f32>,
        logits: &mut CudaSlice<f32>,
        lens: &CudaSlice<i32>,
        rows: usize,
        s: usize,
        ld: usize,
        topk: Option<&mut TopkWork>,
    ) -> Result<(), GpuError> {
        let ops = IndexerOperands::Bf16 {
            q: self.ptr(q),
            k: self.ptr(k),
        };
        let (w, l, n) = (self.ptr(w), self.ptr(logits), self.ptr(lens));
        self.indexer_decode_raw(ops, w, l, n, rows, s, ld, NULL, 0, topk)
    }

    /// [`Gpu::indexer_decode`] with e4m3 q and k and their scales (from
    /// [`Gpu::hadamard_quant`]: one per head of q, one per key): half the key bytes to stream.
    #[allow(clippy::too_many_arguments)]
    pub fn indexer_decode_fp8(
        &self,
        q: &CudaSlice<u8>,
        q_scale: &CudaSlice<f32>,
        k: &CudaSlice<u8>,
        k_scale: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        logits: &mut CudaSlice<f32>,
        lens: &CudaSlice<i32>,
        rows: usize,
        s: usize,
        ld: usize,
        topk: Option<&mut TopkWork>,
    ) -> Result<(), GpuError> {
        let ops = IndexerOperands::Fp8 {
            q: self.ptr(q),
            q_scale: self.ptr(q_scale),
            k: self.ptr(k),
            k_scale: self.ptr(k_scale),
        };
        let (w, l, n) = (self.ptr(w), self.ptr(logits), self.ptr(lens));
        self.indexer_decode_raw(ops, w, l, n, rows, s, ld, NULL, 0, topk)
    }

    /// [`decode_tiles_per_block`] on this GPU, for the bf16 or the FP8 decode indexer.
    fn decode_tiles(&self, rows: usize, s: usize, fp8: bool) -> u32 {
        let cap = if fp8 { IXD_TILES_FP8 } else { IXD_TILES };
        let resident = self.indexer_decode_resident[fp8 as usize];
        decode_tiles_per_block(rows, s, cap, self.multiprocessors as u32, resident)
    }

    /// [`Gpu::indexer_decode`] on device addresses; with page tables (not [`NULL`]) row `t`'s
    /// key `s` lives in cache row `pages[t · pages_stride + s / 128] · 128 + s % 128`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn indexer_decode_raw(
        &self,
        ops: IndexerOperands,
        w: u64,
        logits: u64,
        lens: u64,
        rows: usize,
        s: usize,
        ld: usize,
        pages: u64,
        pages_stride: usize,
        topk: Option<&mut TopkWork>,
    ) -> Result<(), GpuError> {
        let (s32, ld32, st32) = (s as i32, ld as i32, pages_stride as i32);
        let (hist, hist_k) = match topk {
            Some(work) => {
                if rows > work.rows {
                    return Err(GpuError::Cuda(format!(
                        "top-k work space holds {} rows, not {rows}",
                        work.rows
                    )));
                }
                work.hist_ready = true;
                (self.ptr(&work.hist), work.k as i32)
            }
            None => (NULL, 0),
        };
        match ops {
            IndexerOperands::Bf16 { q, k } => {
                let tpb = self.decode_tiles(rows, s, false);
                let cfg = config(
                    (s as u32).div_ceil(64 * tpb),
                    rows as u32,
                    128,
                    INDEXER_DECODE_SMEM,
                );
                let tpb = tpb as i32;
                launch!(
                    self,
                    "indexer_decode_bf16",
                    cfg,
                    &q,
                    &k,
                    &w,
                    &logits,
                    &lens,
                    &s32,
                    &ld32,
                    &pages,
                    &st32,
                    &hist,
                    &hist_k,
                    &tpb
                );
            }
            IndexerOperands::Fp8 {
                q,
                q_scale,
                k,
                k_scale,
            } => {
                let tpb = self.decode_tiles(rows, s, true);
                let cfg = config(
                    (s as u32).div_ceil(64 * tpb),
                    rows as u32,
                    128,
                    INDEXER_DECODE_FP8_SMEM,
                );
                let tpb = tpb as i32;
                launch!(
                    self,
                    "indexer_decode_fp8",
                    cfg,
                    &q,
                    &q_scale,
                    &k,
                    &k_scale,
                    &w,
                    &logits,
                    &lens,
                    &s32,
                    &ld32,
                    &pages,
                    &st32,
                    &hist,
                    &hist_k,
                    &tpb
                );
            }
        }
        Ok(())
    }

    /// Top-k of a few long rows (decode), each split over many blocks, in one launch: two
    /// histogram passes (the first skipped when [`Gpu::indexer_decode`] built it), a collect
    /// pass, and a one-block finish per row, meeting at grid-wide barriers; rows with too many
    /// tied candidates are redone by the one-block radix select. Same result as [`Gpu::topk`].
    pub fn topk_decode(
        &self,
        logits: &CudaSlice<f32>,
        lens: &CudaSlice<i32>,
        rows: usize,
        ld: usize,
        work: &mut TopkWork,
        out: &mut CudaSlice<i32>,
    ) -> Result<(), GpuError> {
        self.topk_decode_raw(
            self.ptr(logits),
            self.ptr(lens),
            rows,
            ld,
            work,
            self.ptr(out),
        )
    }

    /// [`Gpu::topk_decode`] on device addresses.
    pub(crate) fn topk_decode_raw(
        &self,
        logits: u64,
        lens: u64,
        rows: usize,
        ld: usize,
        work: &mut TopkWork,
        out: u64,
    ) -> Result<(), GpuError> {
        if rows > work.rows {
            return Err(GpuError::Cuda(format!(
                "top-k work space holds {} rows, not {rows}",
                work.rows
            )));
        }
        let (ld32, k32, cap, rows32) = (ld as i32, work.k as i32, TOPK_CAP as i32, rows as i32);
        let hist_ready = i32::from(std::mem::take(&mut work.hist_ready));
        // Every block resident at once (the kernel's phases meet at grid-wide barriers): at most
        // one per multiprocessor.
        let units = (rows as u32) * (ld as u32).div_ceil(1024);
        let blocks = units.clamp(1, self.multiprocessors as u32);
        let cfg = config(blocks, 1, 512, TOPK_DECODE_SMEM);
        let (hist, counters) = (self.ptr(&work.hist), self.ptr(&work.counters));
        let (taken, cand, barrier) = (
            self.ptr(&work.taken),
            self.ptr(&work.cand),
            self.ptr(&work.barrier),
        );
        let params = [
            at(&logits),
            at(&lens),
            at(&ld32),
            at(&k32),
            at(&hist),
            at(&counters),
            at(&taken),
            at(&cand),
            at(&cap),
            at(&out),
            at(&barrier),
            at(&rows32),
            at(&hist_ready),
        ];
        // Programmatic: the kernel waits for the indexer before it (griddepcontrol.wait), whose
        // blocks let it start placing its own while their last tiles finish.
        let how = Launch {
            programmatic: true,
            cooperative: true,
        };
        // SAFETY: the addresses are of this frame's values, in the order and types of the
        // kernel's parameters in kernels.cu; the driver copies them during the call.
        unsafe { self.launch_ex("topk_decode_fused", cfg, &params, how) }
    }

    /// Sparse MLA (absorbed, d_qk 576, d_v 512) of `t` queries of `heads` heads (a multiple of
    /// 64: the small preset's 64, DeepSeek-V3.2's 128) over their `topk` indices into `s` cache
    /// rows, in `splits` parts per query and group of 64 heads, then combined into `out`
    /// ([t, heads, 512] f32). `part` holds t·splits·heads·512 floats, `lse` t·splits·heads; with
    /// one split the kernel writes `out` itself and `part` is not touched.
    ///
    /// `after_indices`: the kernel just before this on the stream wrote `indices` and lets its
    /// dependents start early (the decode top-k and `map_pages` do), and `q` was written before
    /// that kernel started. The attention is then launched with programmatic stream
    /// serialization: its blocks copy the query while that kernel finishes and wait for it
    /// (`griddepcontrol.wait`) before reading the indices.
    #[allow(clippy::too_many_arguments)]
    pub fn sparse_mla(
        &self,
        q: &CudaSlice<u16>,
        kv: &CudaSlice<u16>,
        indices: &CudaSlice<i32>,
        part: &mut CudaSlice<f32>,
        lse: &mut CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        t: usize,
        heads: usize,
        s: usize,
        topk: usize,
        splits: usize,
        softmax_scale: f32,
        after_indices: bool,
    ) -> Result<(), GpuError> {
        self.sparse_mla_paged(
            q,
            kv,
            None,
            indices,
            part,
            lse,
            out,
            t,
            heads,
            s,
            topk,
            splits,
            softmax_scale,
            after_indices,
        )
    }

    /// [`Gpu::sparse_mla`] over a paged cache: position `p` of the sequence lives in cache row
    /// `page_table[p / page_size] · page_size + p % page_size`.
    #[allow(clippy::too_many_arguments)]
    pub fn sparse_mla_paged(
        &self,
        q: &CudaSlice<u16>,
        kv: &CudaSlice<u16>,
        paging: Option<(&CudaSlice<i32>, usize)>,
        indices: &CudaSlice<i32>,
        part: &mut CudaSlice<f32>,
        lse: &mut CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        t: usize,
        heads: usize,
        s: usize,
        topk: usize,
        splits: usize,
        softmax_scale: f32,
        after_indices: bool,
    ) -> Result<(), GpuError> {
        let (table, page) = paging.map_or((NULL, 0), |(tb, p)| (self.ptr(tb), p));
        let (q, kv, idx) = (self.ptr(q), self.ptr(kv), self.ptr(indices));
        let (part, lse, out) = (self.ptr(part), self.ptr(lse), self.ptr(out));
        self.sparse_mla_raw(
            q,
            kv,
            (table, page),
            idx,
            [part, lse, out],
            t,
            heads,
            s,
            topk,
            splits,
            softmax_scale,
            after_indices,
        )
    }

    /// [`Gpu::sparse_mla_paged`] on device addresses (`[part, lse, out]`; table [`NULL`] for a
    /// flat cache).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn sparse_mla_raw(
        &self,
        q: u64,
        kv: u64,
        (table, page): (u64, usize),
        indices: u64,
        [part, lse, out]: [u64; 3],
        t: usize,
        heads: usize,
        s: usize,
        topk: usize,
        splits: usize,
        softmax_scale: f32,
        after_indices: bool,
    ) -> Result<(), GpuError> {
        if heads == 0 || !heads.is_multiple_of(64) {
            return Err(GpuError::Cuda(format!(
                "sparse MLA takes heads in groups of 64, not {heads}"
            )));
        }
        let groups = heads / 64;
        // One grid row a query and group of 64 heads; a grid's y extent is at most 65,535.
        let rows = t * groups;
        if rows > 65_535 {
            return Err(GpuError::Cuda(format!(
                "sparse MLA launches one block row per query and 64 heads: {t} queries × {groups} groups is over 65,535"
            )));
        }
        let scale_log2 = softmax_scale * std::f32::consts::LOG2_E;
        let (k32, s32, sp, page32) = (topk as i32, s as i32, splits as i32, page as i32);
        let g32 = groups as i32;
        let (kernel, parts) = if value_halves(rows, splits, self.multiprocessors as usize) {
            ("sparse_mla_bf16_vsplit", 2)
        } else {
            ("sparse_mla_bf16", 1)
        };
        let mut cfg = config(splits as u32, rows as u32, 256, MLA_SMEM);
        cfg.grid_dim.2 = parts;
        // One split's normalized partial is the answer ([t, 1, h, dv] is [t, h, dv]): written
        // straight to `out`, with no combine pass.
        let first = if splits == 1 { out } else { part };
        let after = i32::from(after_indices);
        let params = [
            at(&q),
            at(&kv),
            at(&indices),
            at(&first),
            at(&lse),
            at(&k32),
            at(&s32),
            at(&sp),
            at(&scale_log2),
            at(&table),
            at(&page32),
            at(&g32),
            at(&after),
        ];
        let how = Launch {
            programmatic: after_indices,
            cooperative: false,
        };
        // SAFETY: the addresses are of this frame's values, in the order and types of the
        // kernel's parameters in kernels.cu; the driver copies them during the call.
        unsafe { self.launch_ex(kernel, cfg, &params, how) }?;
        if splits > 1 {
            let (h, dv) = (64i32, 512i32);
            let cfg = config((rows * 64) as u32, 2, 256, 0);
            launch!(self, "mla_combine", cfg, &part, &lse, &out, &h, &sp, &dv);
        }
        Ok(())
    }
}

/// Whether sparse MLA splits its value columns over two blocks (`sparse_mla_bf16_vsplit`): when
/// `rows` × `splits` blocks leave room for twice as many on the multiprocessors. A batch-1
/// decode (32 splits) then writes each split's 128 KB partial from two multiprocessors, not one:
/// 1.3–1.5 µs off the step at 128K (BENCHMARKS.md).
fn value_halves(rows: usize, splits: usize, multiprocessors: usize) -> bool {
    2 * rows * splits <= multiprocessors
}

pub mod model;
pub mod model_check;

#[cfg(test)]
mod tests {
    use super::*;

    /// Hopper's opt-in limit of dynamic shared memory per block (227 KB).
    const SM90_MAX_SMEM: u32 = 232_448;

    /// The value of `#define NAME value` in the kernel source.
    fn define(name: &str) -> u32 {
        KERNELS
            .lines()
            .find_map(|l| l.strip_prefix(&format!("#define {name} ")))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("kernels.cu has no numeric #define {name}"))
    }

    #[test]
    fn the_decode_indexer_spreads_short_rows_over_the_multiprocessors() {
        // 132 multiprocessors; bf16: 3 blocks resident on each (396), at most 8 tiles a block.
        let bf16 = |rows, s| decode_tiles_per_block(rows, s, 8, 132, 396);
        assert_eq!(
            bf16(1, 8192),
            1,
            "8K: 128 blocks of one tile, not 16 of eight"
        );
        assert_eq!(bf16(1, 32_768), 2, "32K: 256 blocks, all resident");
        assert_eq!(bf16(1, 65_536), 3, "64K: 342 blocks");
        assert_eq!(
            bf16(1, 131_072),
            8,
            "128K: 256 blocks at the cap cover the GPU"
        );
        assert_eq!(bf16(32, 8192), 8, "a batch covers the GPU at the cap");
        assert_eq!(bf16(1, 1), 1, "one key");
        assert_eq!(bf16(1, 0), 1, "no keys still launches a tile's worth");
        // FP8: 5 resident a multiprocessor (660), at most 4 tiles.
        let fp8 = |rows, s| decode_tiles_per_block(rows, s, 4, 132, 660);
        assert_eq!(fp8(1, 8192), 1);
        assert_eq!(fp8(1, 65_536), 4, "256 blocks at the cap cover the GPU");
        assert_eq!(fp8(1, 131_072), 4);
    }

    #[test]
    fn value_columns_split_only_where_the_blocks_leave_room() {
        // 132 multiprocessors, top-k 2048 (at most 32 splits).
        assert!(value_halves(1, 32, 132), "batch-1 decode: 64 blocks");
        assert!(value_halves(2, 32, 132), "two rows: 128 blocks");
        assert!(!value_halves(3, 32, 132), "three rows would need 192");
        assert!(!value_halves(1, 132, 132), "a dense decode over 132 splits");
        assert!(!value_halves(4096, 1, 132), "prefill");
    }

    /// The FP8 prefill indexer accumulates q·k in f16, which only works while its operands'
    /// bound keeps a 128-long product, and so every partial sum, inside f16's ±65,504. The bound
    /// must itself be an e4m3 value, so that rounding a quantized value never carries it past.
    #[test]
    fn the_fp8_operand_bound_keeps_the_f16_accumulator_in_range() {
        let max: f32 = KERNELS
            .lines()
            .find_map(|l| l.strip_prefix("#define IX_FP8_MAX "))
            .and_then(|v| v.trim().trim_end_matches('f').parse().ok())
            .expect("kernels.cu defines IX_FP8_MAX as a float");
        let worst = 128.0 * max * max;
        assert!(
            worst < 65_504.0,
            "|q·k| could reach {worst}, past f16's range"
        );
        let code = crate::checkpoint::f32_to_e4m3(max);
        assert_eq!(
            crate::checkpoint::e4m3_to_f32(code),
            max,
            "IX_FP8_MAX is no e4m3 value"
        );
    }

    /// `topk_rows` strides its loads by TKR_THREADS, not by the launched block size, so the two
    /// must agree.
    #[test]
    fn the_prefill_top_k_launches_the_block_its_kernel_strides_by() {
        assert_eq!(define("TKR_THREADS"), TOPK_ROWS_THREADS);
    }

    #[test]
    fn every_kernel_fits_in_hoppers_shared_memory() {
        for (name, smem) in [
            ("indexer_logits_bf16", INDEXER_SMEM),
            ("indexer_logits_fp8", INDEXER_FP8_SMEM),
            ("indexer_decode_bf16", INDEXER_DECODE_SMEM),
            ("indexer_decode_fp8", INDEXER_DECODE_FP8_SMEM),
            ("sparse_mla_bf16", MLA_SMEM),
            ("topk_rows", TOPK_ROWS_SMEM),
            ("topk_decode_fused", TOPK_DECODE_SMEM),
        ] {
            assert!(smem <= SM90_MAX_SMEM, "{name} asks for {smem} bytes");
        }
    }

    /// The launch-side sizes follow the kernels' own layout constants, so editing one side alone
    /// fails here rather than as a shared-memory overrun on the GPU.
    #[test]
    fn shared_memory_sizes_match_the_kernel_layouts() {
        let (heads, tile, stages) = (define("IX_HEADS"), define("IX_TILE"), define("IX_STAGES"));
        let (wgs_bf16, wgs_fp8) = (define("IX_WGS_BF16"), define("IX_WGS_FP8"));
        let d = define("IX_D");
        assert_eq!(
            INDEXER_SMEM,
            (4 * wgs_bf16 * heads + stages * tile) * 2 * d + 1024,
            "bf16 indexer"
        );
        // e4m3: each warpgroup's head-sum weights (8 x 256 bf16) and the tiles' scales (f32).
        assert_eq!(
            INDEXER_FP8_SMEM,
            (4 * wgs_fp8 * heads + stages * tile) * d
                + 1024
                + wgs_fp8 * 8 * 256 * 2
                + stages * tile * 4,
            "FP8 indexer"
        );
        assert_eq!(
            INDEXER_DECODE_SMEM,
            (heads + define("IXD_STAGES") * define("IX_KEYS")) * 2 * d
                + 1024
                + define("TK_BINS") * 4,
            "decode indexer"
        );
        let stages_fp8 = define("IXD_STAGES_FP8");
        assert_eq!(
            INDEXER_DECODE_FP8_SMEM,
            (heads + stages_fp8 * define("IX_KEYS")) * d
                + 1024
                + stages_fp8 * define("IX_KEYS") * 4
                + define("TK_BINS") * 4,
            "FP8 decode indexer"
        );
        assert_eq!(
            TOPK_DECODE_SMEM,
            define("TK_CAP") * 8 + 2 * (define("TK_MAX_LEN") / 32) * 4 + define("TK_BINS") * 4,
            "topk_decode_fused (TKF_SMEM)"
        );
        assert_eq!(
            (TOPK_CAP as u32, TOPK_WORDS as u32),
            (define("TK_CAP"), define("TK_MAX_LEN") / 32),
            "the top-k's candidate buffer and bitmap"
        );
        let (bn, dqk) = (define("MLA_BN"), define("MLA_DQK"));
        assert_eq!(
            MLA_SMEM,
            3 * bn * dqk * 2 + bn * bn * 2 + 2 * define("MLA_H") * 4 + 2 * 2 * bn * 4 + 1024,
            "sparse MLA"
        );
        assert_eq!(
            (
                IX_CHUNK,
                IX_WGS_BF16,
                IX_WGS_FP8,
                64,
                IXD_TILES,
                IXD_TILES_FP8
            ),
            (
                define("IX_CHUNK"),
                wgs_bf16,
                wgs_fp8,
                define("IX_KEYS"),
                define("IXD_TILES"),
                define("IXD_TILES_FP8")
            ),
            "the indexer grids"
        );
        let words = define("TK_MAX_LEN") / 32;
        assert_eq!(
            TOPK_ROWS_SMEM,
            define("TK_BINS") * 4 + 2 * words * 4 + define("TKR_CAP") * 8
        );
    }
}
