// DSA kernels for Hopper (sm_90a), compiled at run time by NVRTC. No headers: bf16 values are
// carried as `unsigned short` and converted by hand. The prefill indexer and sparse MLA multiply on
// warpgroup tensor-core instructions (wgmma) reading 128-byte-swizzled shared memory; the decode
// indexer and the grouped expert product use mma.sync m16n8k16 fed by ldmatrix. All accumulate
// in f32.
//
// Layouts (row-major, contiguous):
//   indexer q   [T, HI, 128] bf16 (RoPE and Hadamard applied), k [S, 128] bf16, w [T, HI] f32
//   logits      [T, ld] f32
//   mla q       [T, H, 576] bf16 (absorbed nope | rope), kv [S, 576] bf16 (latent | rope key)
//   indices     [T, topk] int32, -1 = no position
//   partial out [T, splits, H, 512] f32 and lse [T, splits, H] f32 (log2 domain)

typedef unsigned short bf16;

__device__ __forceinline__ float bf16_to_f32(bf16 x) {
    return __uint_as_float(((unsigned)x) << 16);
}

__device__ __forceinline__ bf16 f32_to_bf16(float f) {
    unsigned u = __float_as_uint(f);
    u += 0x7FFFu + ((u >> 16) & 1u);  // round to nearest even
    return (bf16)(u >> 16);
}

// Two f32 to a bf16 pair, rounded to nearest even (one instruction); `lo` in the low half.
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void ldmatrix_x4(unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3,
                                            const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(smem_u32(p)));
}

__device__ __forceinline__ void mma_bf16(float* c, unsigned a0, unsigned a1, unsigned a2,
                                         unsigned a3, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Sum (or, with MAX, maximum) of `v` over the block (at most 1024 threads); every thread gets
// the result. `part` is 32 floats of shared memory, free again on return.
template <bool MAX>
__device__ __forceinline__ float block_reduce(float v, float* part) {
    const float none = MAX ? -__int_as_float(0x7f800000) : 0.f;
    for (int o = 16; o > 0; o >>= 1) {
        float x = __shfl_xor_sync(0xffffffffu, v, o);
        v = MAX ? fmaxf(v, x) : v + x;
    }
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        float x = threadIdx.x < (blockDim.x >> 5) ? part[threadIdx.x] : none;
        for (int o = 16; o > 0; o >>= 1) {
            float y = __shfl_xor_sync(0xffffffffu, x, o);
            x = MAX ? fmaxf(x, y) : x + y;
        }
        if (threadIdx.x == 0) part[0] = x;
    }
    __syncthreads();
    float r = part[0];
    __syncthreads();
    return r;
}

// ---------------------------------------------------------------------------------------------
// Elementwise kernels (f32).

// RMSNorm of `rows` rows of width n: y = x / sqrt(mean(x^2) + eps) * w. One block per row.
extern "C" __global__ void rms_norm_f32(const float* x, const float* w, float* y, int n, float eps) {
    const float* xr = x + (size_t)blockIdx.x * n;
    float* yr = y + (size_t)blockIdx.x * n;
    __shared__ float part[32];
    float s = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += xr[i] * xr[i];
    s = block_reduce<false>(s, part);
    float r = rsqrtf(s / n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = xr[i] * r * w[i];
}

// RoPE in place on `count` vectors of `stride` floats, rotating `dim` dims starting at `offset`
// of each, for position positions[v / per_position]. interleaved: pairs (2i, 2i+1); else pairs
// (i, i + dim/2). cos/sin tables are [max_pos, dim/2].
extern "C" __global__ void rope_f32(float* x, const int* positions, const float* cos_t,
                                    const float* sin_t, int count, int per_position, int stride,
                                    int offset, int dim, int interleaved) {
    int half = dim / 2;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count * half) return;
    int v = i / half, p = i % half;
    int pos = positions[v / per_position];
    float c = cos_t[pos * half + p], s = sin_t[pos * half + p];
    float* base = x + (size_t)v * stride + offset;
    int ia = interleaved ? 2 * p : p;
    int ib = interleaved ? 2 * p + 1 : p + half;
    float a = base[ia], b = base[ib];
    base[ia] = a * c - b * s;
    base[ib] = a * s + b * c;
}

// SwiGLU: out = silu(gate) * up, elementwise over n.
extern "C" __global__ void swiglu_f32(const float* gate, const float* up, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float g = gate[i];
        out[i] = g / (1.f + __expf(-g)) * up[i];
    }
}

// ---------------------------------------------------------------------------------------------
// Lightning indexer logits: logits[t, s] = sum_h w[t, h] * relu(q[t, h] . k[s]) for s <= pos(t),
// -inf beyond. HI must be 64, the head dim 128.
//
// The indexer's prefill logits on Hopper's warpgroup matrix instructions (wgmma), bf16 or e4m3
// operands. A block of WGS warpgroups takes 4·WGS queries (256 head rows per warpgroup, kept in
// shared memory) against up to IX_CHUNK keys, streamed in tiles of 64 through a 4-stage cp.async
// ring. It computes K·Qᵀ with keys as rows: warpgroup g multiplies the 64-key tile by the 256
// head rows of queries 4g..4g+3. Both operands sit in shared memory in the 128-byte-swizzled
// K-major layout wgmma reads directly: a row's 128-byte slab holds 8 chunks of 16 bytes, chunk c
// stored at c ^ (row & 7). Both precisions step 32 bytes per instruction (k16 bf16 or k32 e4m3).
//
// The warpgroups take turns on the tensor cores (named barriers order their issues), so one
// reduces a tile while the next multiplies; ring stages are handed over with mbarriers (full:
// every thread's copies landed; empty: every warpgroup is done with it), not block barriers.
// The reduction over heads differs by precision:
//   bf16: ReLU and weight on the CUDA cores in f32, summed along each thread's accumulator
//         columns and then across the 4 lanes of a quad (a reduce-scatter, 6 shuffles).
//   e4m3: S accumulates in f16 (see IX_FP8_MAX), and one more product on the tensor cores sums
//         the heads: ReLU(S), one f16x2 max a register right in the accumulator layout (the A
//         operand of wgmma from registers), times the weights (f16, 8 x 256, block diagonal),
//         f32 accumulate. It needs a quarter of the instructions of the bf16 way, which is what
//         lets three warpgroups keep the FP8 units busy. q's scale is folded into the weights
//         and k's applied after the sum (ReLU(a x) = a ReLU(x) for a > 0).

#define IX_D 128
#define IX_HEADS 64
#define IX_WGS_BF16 2       // warpgroups per block (4 queries each), bf16 operands
#define IX_WGS_FP8 3        // and e4m3
#define IX_TILE 64          // keys per tile
#define IX_STAGES 4         // key tiles in the ring (3 in flight ahead)
#define IX_CHUNK 8192       // keys per block
// The FP8 indexer's q and k rows are scaled (by a power of two each) to at most IX_FP8_MAX, not
// to e4m3's own 448: a 128-long product of such rows then stays within 128 · 16 · 16 = 32,768,
// and so does every partial sum, inside f16's ±65,504, so S can accumulate in f16. That halves
// its registers, and its ReLU becomes one f16x2 max a register where rounding f32 pairs to bf16
// took a conversion, which issues at a fraction of the ALU rate. A power-of-two scale only moves e4m3's
// exponent, so the values are those a ±448 scale gives, except that the smallest, below 2^-6
// · 16 (1/1,024 of the row's largest), fall to e4m3's subnormal steps of 2^-9.
#define IX_FP8_MAX 16.f

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
                 "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
                 "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// With a page table, key s lives in cache row pages[s / 128] * 128 + s % 128 (a page holds 128
// keys, so a tile of 64 is contiguous).
__device__ __forceinline__ size_t ix_key_row(const int* pages, int s) {
    return pages ? (size_t)pages[s / 128] * 128 + s % 128 : (size_t)s;
}

// Byte offset of (row, byte) in a swizzled tile of `rows` rows: slab (byte / 128) after slab.
__device__ __forceinline__ int swz(int rows, int row, int byte) {
    return (byte >> 7) * rows * 128 + row * 128 + ((((byte >> 4) & 7) ^ (row & 7)) << 4) + (byte & 15);
}

// A wgmma shared-memory descriptor: K-major, 128-byte swizzle, 8-row groups 1024 bytes apart.
// `lbo` only matters for N-major operands (`_bt`): the byte distance between 64-wide groups of N.
__device__ __forceinline__ unsigned long long wg_desc(const void* p, unsigned lbo = 16) {
    return (unsigned long long)((smem_u32(p) & 0x3FFFF) >> 4) | ((unsigned long long)(lbo >> 4) << 16) |
           (64ull << 32) | (1ull << 62);
}
__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
// Pins accumulator registers after a wgmma wait: the compiler sees the asm outputs as ready at
// the mma itself, so without this it may read them before the wait.
template <int N>
__device__ __forceinline__ void reg_fence(float* r) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(r[i])::"memory");
}
template <int N>
__device__ __forceinline__ void reg_fence(unsigned* r) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+r"(r[i])::"memory");
}
__device__ __forceinline__ void fence_async_smem() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// Shared-memory barriers (mbarrier) for rings whose stages are filled and freed by different
// warpgroups at different times, and named barriers for ordering warpgroups.
__device__ __forceinline__ void mbar_init(unsigned long long* bar, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(unsigned long long* bar) {
    asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(smem_u32(bar)) : "memory");
}
// Arrives once this thread's earlier cp.async copies have landed (counted in the init count).
__device__ __forceinline__ void mbar_arrive_cp_async(unsigned long long* bar) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(smem_u32(bar)) : "memory");
}
// Waits until the barrier's phase of parity `parity` has completed.
__device__ __forceinline__ void mbar_wait(unsigned long long* bar, unsigned parity) {
    unsigned done = 0;
    while (!done) {
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(smem_u32(bar)), "r"(parity)
            : "memory");
    }
}
__device__ __forceinline__ void named_bar_sync(int id, int threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_bar_arrive(int id, int threads) {
    asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// D (+)= A·B on a warpgroup, A and B in shared memory (descriptors), f32 accumulators; `TAIL`
// is the scale (and, for 16-bit types, transpose) immediates. One macro per accumulator width, so
// the long operand lists are written once.
#define WG_REGS128 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}"
#define WG_OUT128(d) \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), \
    "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), \
    "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), \
    "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), \
    "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), \
    "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), \
    "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), \
    "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), \
    "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), \
    "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), \
    "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), \
    "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), \
    "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), \
    "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), \
    "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), \
    "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), \
    "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), \
    "+f"(d[127])
#define WGMMA_N256(NAME, SHAPE_TYPES, TAIL)                                                      \
    __device__ __forceinline__ void NAME(float* d, unsigned long long a, unsigned long long b,    \
                                         int accumulate) {                                       \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"                               \
                     "wgmma.mma_async.sync.aligned." SHAPE_TYPES " " WG_REGS128                 \
                     ", %128, %129, p" TAIL ";\n}\n"                                             \
                     : WG_OUT128(d)                                                              \
                     : "l"(a), "l"(b), "r"(accumulate));                                         \
    }
WGMMA_N256(wgmma_n256_bf16, "m64n256k16.f32.bf16.bf16", ", 1, 1, 0, 0")
// B stored N-major (transposed).
WGMMA_N256(wgmma_n256_bf16_bt, "m64n256k16.f32.bf16.bf16", ", 1, 1, 0, 1")

// The same with 64 accumulator registers of type T (constraint C): f32 for half the value
// columns (`sparse_mla_bf16_vsplit`), or f16 pairs for a full 256-column FP8 tile.
#define WGMMA_R64(NAME, T, C, SHAPE_TYPES, TAIL)                                                    \
    __device__ __forceinline__ void NAME(T* d, unsigned long long a, unsigned long long b,          \
                                         int accumulate) {                                          \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                   \
                     "wgmma.mma_async.sync.aligned." SHAPE_TYPES " "                                \
                     "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "      \
                     "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, "       \
                     "%30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, "       \
                     "%44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, "       \
                     "%58, %59, %60, %61, %62, %63}, %64, %65, p" TAIL ";\n}\n"                     \
                     : C(d[0]), C(d[1]), C(d[2]), C(d[3]), C(d[4]), C(d[5]),                        \
                       C(d[6]), C(d[7]), C(d[8]), C(d[9]), C(d[10]), C(d[11]),                      \
                       C(d[12]), C(d[13]), C(d[14]), C(d[15]), C(d[16]),                            \
                       C(d[17]), C(d[18]), C(d[19]), C(d[20]), C(d[21]),                            \
                       C(d[22]), C(d[23]), C(d[24]), C(d[25]), C(d[26]),                            \
                       C(d[27]), C(d[28]), C(d[29]), C(d[30]), C(d[31]),                            \
                       C(d[32]), C(d[33]), C(d[34]), C(d[35]), C(d[36]),                            \
                       C(d[37]), C(d[38]), C(d[39]), C(d[40]), C(d[41]),                            \
                       C(d[42]), C(d[43]), C(d[44]), C(d[45]), C(d[46]),                            \
                       C(d[47]), C(d[48]), C(d[49]), C(d[50]), C(d[51]),                            \
                       C(d[52]), C(d[53]), C(d[54]), C(d[55]), C(d[56]),                            \
                       C(d[57]), C(d[58]), C(d[59]), C(d[60]), C(d[61]),                            \
                       C(d[62]), C(d[63])                                                           \
                     : "l"(a), "l"(b), "r"(accumulate));                                            \
    }
WGMMA_R64(wgmma_n128_bf16_bt, float, "+f", "m64n128k16.f32.bf16.bf16", ", 1, 1, 0, 1")
WGMMA_R64(wgmma_n256_e4m3_f16, unsigned, "+r", "m64n256k32.f16.e4m3.e4m3", ", 1, 1")

// The m64n32 bf16 product's opening and its 16 f32 accumulators (operands %0..%15), shared by the
// forms with A in shared memory and in registers.
#define WGMMA_N32_OP "wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 " \
                     "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
#define WGMMA_N32_D(d)                                                                             \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),    \
        "+f"(d[15])

__device__ __forceinline__ void wgmma_n32_bf16(float* d, unsigned long long a, unsigned long long b,
                                               int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n" WGMMA_N32_OP "%16, %17, p, 1, 1, 0, 0;\n}\n"
                 : WGMMA_N32_D(d)
                 : "l"(a), "l"(b), "r"(accumulate));
}

// The same with A (64 x 16 bf16) from registers: a thread holds rows g and g + 8 of its warp's 16,
// columns 2·tig, 2·tig + 1 and those + 8, two to a register (a[0..3]: row g, row g + 8, then the
// same 8 columns on).
__device__ __forceinline__ void wgmma_n32_bf16_rs(float* d, const unsigned* a, unsigned long long b,
                                                  int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %21, 0;\n" WGMMA_N32_OP "{%16, %17, %18, %19}, %20, p, 1, 1, 0;\n}\n"
                 : WGMMA_N32_D(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate));
}

// D (+)= A·B with A (64 x 16 f16) from registers in the accumulator-fragment layout, B (16 x 8)
// from shared memory: the FP8 indexer's head sum.
__device__ __forceinline__ void wgmma_n8_f16_rs(float* d, const unsigned* a, unsigned long long b,
                                                int accumulate) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %9, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n8k16.f32.f16.f16 {%0, %1, %2, %3}, {%4, %5, %6, %7}, %8, p, 1, 1, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate));
}

// ReLU of an f16 pair (one instruction).
__device__ __forceinline__ unsigned relu_f16x2(unsigned x) {
    unsigned r;
    asm("max.f16x2 %0, %1, %2;\n" : "=r"(r) : "r"(x), "r"(0u));
    return r;
}

__device__ __forceinline__ unsigned short f32_to_f16(float f) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;\n" : "=h"(h) : "f"(f));
    return h;
}

// Queues the copy of key tile s0..s0+63 into `dst` (swizzled) and, with e4m3 keys, of their
// scales into `scale_dst`; keys at or past S are zero-filled. NT threads; a tile starts on a
// multiple of 64, so it lies in one page and its rows are contiguous.
template <int ROW, int NT>
__device__ __forceinline__ void ix_load_keys(unsigned char* dst, const unsigned char* k, int s0, int S,
                                             const int* pages, const float* k_scale, float* scale_dst) {
    constexpr int CHUNKS = ROW / 16;  // 16-byte chunks per row
    size_t row0 = ix_key_row(pages, s0);
    const unsigned char* src = k + row0 * ROW;
    int rows = S - s0;  // valid rows in the tile, if fewer than 64
#pragma unroll
    for (int u = 0; u < (IX_TILE * CHUNKS + NT - 1) / NT; u++) {
        int i = threadIdx.x + NT * u;
        if (IX_TILE * CHUNKS % NT != 0 && i >= IX_TILE * CHUNKS) break;
        int r = i / CHUNKS, c = i % CHUNKS;
        bool ok = r < rows;
        cp_async16(dst + swz(IX_TILE, r, c * 16), ok ? src + r * ROW + c * 16 : src, ok);
    }
    if (k_scale && threadIdx.x < IX_TILE) {
        bool ok = (int)threadIdx.x < rows;
        cp_async4(scale_dst + threadIdx.x, k_scale + row0 + (ok ? threadIdx.x : 0), ok);
    }
}

template <bool FP8, int WGS>
__device__ __forceinline__ void indexer_tiles(const unsigned char* q, const float* q_scale,
                                              const unsigned char* k, const float* k_scale,
                                              const float* w, float* logits, int T, int S, int ld,
                                              int first_pos, const int* pages) {
    constexpr int ROW = FP8 ? IX_D : 2 * IX_D;  // bytes of one row of 128 values
    constexpr int TOK = 4 * WGS, NT = 128 * WGS;  // queries and threads per block
    constexpr int QROWS = TOK * IX_HEADS;
    constexpr int STAGE = IX_TILE * ROW;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    // The swizzle pattern repeats every 1,024 bytes, so the tiles start on such a boundary.
    unsigned char* qs = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);  // QROWS rows
    unsigned char* kbuf = qs + QROWS * ROW;                        // IX_STAGES tiles
    // e4m3 only: per warpgroup, the head weights as the B operand of the head sum (8 x 256 bf16,
    // swizzled; row n holds query n's weights in columns 64n..64n+63, zero elsewhere), and a ring
    // of the key tiles' scales.
    unsigned char* wsum = kbuf + IX_STAGES * STAGE;                      // WGS x 4 KB
    float* kscale = reinterpret_cast<float*>(wsum + (FP8 ? WGS * 4096 : 0));  // IX_STAGES x 64

    // Query groups from the last (the most causal keys) down: blocks start in launch order, so
    // the heaviest go first and the last wave is made of light ones.
    int t0 = (gridDim.y - 1 - blockIdx.y) * TOK;
    int last_pos = first_pos + min(t0 + TOK, T) - 1;
    int s_begin = blockIdx.x * IX_CHUNK;
    // Tiles at or before the block's last query position (later keys are every query's future).
    int s_end = min(min(S, last_pos + 1), s_begin + IX_CHUNK);
    if (s_begin >= s_end) return;
    int tiles = (s_end - s_begin + IX_TILE - 1) / IX_TILE;

    // Ring stage st holds tile j (j % IX_STAGES == st). full[st]: all NT threads' copies of the
    // tile landed; empty[st]: every warpgroup's products on it are done.
    __shared__ __align__(8) unsigned long long full[IX_STAGES], empty[IX_STAGES];
    if (threadIdx.x == 0) {
        for (int st = 0; st < IX_STAGES; st++) {
            mbar_init(&full[st], NT);
            mbar_init(&empty[st], WGS);
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < QROWS * (ROW / 16); i += blockDim.x) {
        int r = i / (ROW / 16), c = i % (ROW / 16);
        bool ok = t0 + r / IX_HEADS < T;
        cp_async16(qs + swz(QROWS, r, c * 16), ok ? q + ((size_t)t0 * IX_HEADS + r) * ROW + c * 16 : q, ok);
    }
#pragma unroll
    for (int st = 0; st < IX_STAGES - 1; st++) {
        if (st < tiles) {
            ix_load_keys<ROW, NT>(kbuf + st * STAGE, k, s_begin + st * IX_TILE, S, pages, k_scale,
                                  kscale + st * IX_TILE);
            mbar_arrive_cp_async(&full[st]);  // the queries ride with the first tile
        }
    }

    // The warpgroup, broadcast from lane 0 so that the compiler knows it is the same across the
    // warp: the wgmma descriptors built from it then stay in uniform registers, one uniform add
    // each, instead of 64-bit arithmetic and moves per instruction (see BENCHMARKS.md).
    int wg = __shfl_sync(0xffffffffu, (int)(threadIdx.x >> 7), 0);
    int wq = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
    int tig = lane & 3, row0 = 16 * wq + (lane >> 2);  // this thread's keys: row0, row0 + 8
    int t = t0 + 4 * wg + tig;                          // bf16: the query this lane writes
    // bf16: the head weights of this thread's columns stay in registers: [query][head group],
    // heads 8·jj + 2·tig and +1 (shared-memory loads here would contend with wgmma's operand
    // reads). e4m3: they go to shared memory as the head sum's B operand.
    float2 wr[4][8];
    if constexpr (FP8) {
        for (int i = threadIdx.x; i < WGS * 8 * 256; i += NT) {
            int g = i / (8 * 256), n = (i / 256) % 8, c = i % 256;
            int tt = t0 + 4 * g + n;
            float v = 0.f;
            if (n == c / 64 && tt < T) {
                size_t at = (size_t)tt * IX_HEADS + c % 64;
                v = w[at] * q_scale[at];
            }
            *reinterpret_cast<unsigned short*>(wsum + g * 4096 + swz(8, n, 2 * c)) = f32_to_f16(v);
        }
        fence_async_smem();  // read by wgmma
        __syncthreads();
    } else {
#pragma unroll
        for (int tok = 0; tok < 4; tok++) {
            int tt = t0 + 4 * wg + tok;
#pragma unroll
            for (int jj = 0; jj < 8; jj++) {
                size_t at = (size_t)tt * IX_HEADS + 8 * jj + 2 * tig;
                wr[tok][jj] = tt < T ? make_float2(w[at], w[at + 1]) : make_float2(0.f, 0.f);
            }
        }
    }
    const unsigned char* qg = qs + wg * 256 * 128;     // this warpgroup's 256 head rows
    const unsigned long long desc_q = wg_desc(qg), desc_k = wg_desc(kbuf), desc_w = wg_desc(wsum + wg * 4096);

    // The warpgroups take turns on the tensor cores: warpgroup g issues after g - 1 (named
    // barrier 1 + g), warpgroup 0 after the last one's previous tile, so while one runs its
    // products for a tile the others reduce theirs.
    for (int j = 0; j < tiles; j++) {
        int st = j % IX_STAGES;
        mbar_wait(&full[st], (j / IX_STAGES) & 1);
        fence_async_smem();  // the copies (generic proxy) become visible to wgmma (async proxy)
        if (wg > 0 || j > 0) named_bar_sync(1 + wg, 256);
        // bf16: f32 accumulators. e4m3: f16 ones, two to a register (the quantization keeps
        // every partial sum inside f16's range; see IX_FP8_MAX).
        float d[FP8 ? 1 : 128];
        unsigned h[FP8 ? 64 : 1];
        wg_fence();
#pragma unroll
        for (int kb = 0; kb < ROW; kb += 32) {
            // Descriptors advance by address / 16 in their low bits.
            unsigned long long da = desc_k + ((st * STAGE + (kb >> 7) * IX_TILE * 128 + (kb & 127)) >> 4);
            unsigned long long db = desc_q + (((kb >> 7) * QROWS * 128 + (kb & 127)) >> 4);
            if constexpr (FP8) wgmma_n256_e4m3_f16(h, da, db, kb > 0);
            else wgmma_n256_bf16(d, da, db, kb > 0);
        }
        wg_commit();
        if (wg + 1 < WGS) named_bar_arrive(2 + wg, 256);
        else if (j + 1 < tiles) named_bar_arrive(1, 256);
        // Refill the stage of tile j - 1 with tile j + IX_STAGES - 1 once every warpgroup is
        // done with it.
        int nj = j + IX_STAGES - 1;
        if (nj < tiles) {
            int ns = nj % IX_STAGES;
            if (j > 0) mbar_wait(&empty[ns], ((j - 1) / IX_STAGES) & 1);
            ix_load_keys<ROW, NT>(kbuf + ns * STAGE, k, s_begin + nj * IX_TILE, S, pages, k_scale,
                                  kscale + ns * IX_TILE);
            mbar_arrive_cp_async(&full[ns]);
        }
        int s0 = s_begin + j * IX_TILE;
        wg_wait0();
        if constexpr (FP8) reg_fence<64>(h);
        else reg_fence<128>(d);
        // The last reads of the stage; then it may be refilled.
        float ksc_lo = FP8 ? kscale[st * IX_TILE + row0] : 1.f, ksc_hi = FP8 ? kscale[st * IX_TILE + row0 + 8] : 1.f;
        if ((threadIdx.x & 127) == 0) mbar_arrive(&empty[st]);

        if constexpr (FP8) {
            // The head sum on the tensor cores: ReLU(S), f16 pairs as they lie in the
            // accumulators, is the A operand (columns 16kk..16kk+15 of S are k-step kk), times
            // the weights; out[key][n] is query n's logit. The ReLU goes into registers of its
            // own: an instruction other than wgmma writing an accumulator register makes ptxas
            // serialize every wgmma of the kernel.
            unsigned a[64];
#pragma unroll
            for (int i = 0; i < 64; i++) a[i] = relu_f16x2(h[i]);
            float o[4];
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < 16; kk++)
                wgmma_n8_f16_rs(o, a + 4 * kk, desc_w + ((kk >> 2) * 1024 + (kk & 3) * 32) / 16, kk > 0);
            wg_commit();
            wg_wait0();
            reg_fence<4>(o);
            // Lanes 0 and 1 of each quad hold queries 2·tig and 2·tig + 1.
            if (tig < 2) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int tq = t0 + 4 * wg + 2 * tig + (e & 1);
                    int s = s0 + row0 + 8 * (e >> 1);
                    if (tq < T && s < S)
                        logits[(size_t)tq * ld + s] =
                            s > first_pos + tq ? -__int_as_float(0x7f800000) : o[e] * ((e >> 1) ? ksc_hi : ksc_lo);
                }
            }
        } else {
            // Per query of the warpgroup: ReLU, weight by head, sum the thread's 16 heads (two
            // partial sums per key keep 16 chains of fused multiply-adds in flight).
            float lo[4], hi[4];  // keys row0 and row0 + 8
#pragma unroll
            for (int tok = 0; tok < 4; tok++) {
                float la = 0.f, lb = 0.f, ha = 0.f, hb = 0.f;
#pragma unroll
                for (int jj = 0; jj < 8; jj++) {
                    int n = 8 * tok + jj;
                    float2 wt = wr[tok][jj];
                    la = fmaf(wt.x, fmaxf(d[4 * n], 0.f), la);
                    lb = fmaf(wt.y, fmaxf(d[4 * n + 1], 0.f), lb);
                    ha = fmaf(wt.x, fmaxf(d[4 * n + 2], 0.f), ha);
                    hb = fmaf(wt.y, fmaxf(d[4 * n + 3], 0.f), hb);
                }
                lo[tok] = la + lb;
                hi[tok] = ha + hb;
            }
            // Reduce-scatter over the quad: lane tig ends with query tig's sums.
            bool b1 = tig & 2, b0 = tig & 1;
            float l2[2], h2[2];
#pragma unroll
            for (int i = 0; i < 2; i++) {
                float sl = b1 ? lo[i] : lo[2 + i], sh = b1 ? hi[i] : hi[2 + i];
                l2[i] = (b1 ? lo[2 + i] : lo[i]) + __shfl_xor_sync(0xffffffffu, sl, 2);
                h2[i] = (b1 ? hi[2 + i] : hi[i]) + __shfl_xor_sync(0xffffffffu, sh, 2);
            }
            float vl = (b0 ? l2[1] : l2[0]) + __shfl_xor_sync(0xffffffffu, b0 ? l2[0] : l2[1], 1);
            float vh = (b0 ? h2[1] : h2[0]) + __shfl_xor_sync(0xffffffffu, b0 ? h2[0] : h2[1], 1);
            if (t < T) {
#pragma unroll
                for (int half = 0; half < 2; half++) {
                    int s = s0 + row0 + 8 * half;
                    if (s < S) {
                        float v = half ? vh : vl;
                        logits[(size_t)t * ld + s] = s > first_pos + t ? -__int_as_float(0x7f800000) : v;
                    }
                }
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(128 * IX_WGS_BF16, 1)
indexer_logits_bf16(const bf16* q, const bf16* k, const float* w, float* logits, int T, int S,
                    int ld, int first_pos, const int* pages) {
    indexer_tiles<false, IX_WGS_BF16>(reinterpret_cast<const unsigned char*>(q), nullptr,
                         reinterpret_cast<const unsigned char*>(k), nullptr, w, logits, T, S, ld,
                         first_pos, pages);
}

extern "C" __global__ void __launch_bounds__(128 * IX_WGS_FP8, 1)
indexer_logits_fp8(const unsigned char* q, const float* q_scale, const unsigned char* k,
                   const float* k_scale, const float* w, float* logits, int T, int S, int ld,
                   int first_pos, const int* pages) {
    indexer_tiles<true, IX_WGS_FP8>(q, q_scale, k, k_scale, w, logits, T, S, ld, first_pos, pages);
}

// ---------------------------------------------------------------------------------------------
// Top-k per row by radix select (four 8-bit histogram passes, no sort), then an in-order
// compaction: every key above the threshold, then ties at the threshold in index order, so the
// result equals a stable sort's first k. Output indices ascend; rows shorter than k are padded
// with -1. Row t considers its first len(t) = first_pos + t + 1 entries (capped at ld).

__device__ __forceinline__ unsigned order_key(float f) {
    unsigned u = __float_as_uint(f);
    return u ^ ((unsigned)((int)u >> 31) | 0x80000000u);  // negative: ~u; else u | 2^31
}

// The inclusive sum of `v` over the warp's lanes 0..lane (every lane of the warp calls it).
template <typename T>
__device__ __forceinline__ T warp_inclusive_sum(T v) {
    int lane = threadIdx.x & 31;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
        T n = __shfl_up_sync(0xffffffffu, v, d);
        if (lane >= d) v += n;
    }
    return v;
}

// Exclusive prefix sum of `v` over the block in thread order (at most 1024 threads); returns
// the block's total. `warp_tot` is 33 values of shared memory.
template <typename T>
__device__ __forceinline__ T block_exclusive_sum(T v, T* prefix, T* warp_tot) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    T incl = warp_inclusive_sum(v);
    if (lane == 31) warp_tot[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        T w = lane < (int)(blockDim.x >> 5) ? warp_tot[lane] : T(0);
        T x = warp_inclusive_sum(w);
        warp_tot[lane] = x - w;  // exclusive
        if (lane == 31) warp_tot[32] = x;
    }
    __syncthreads();
    *prefix = warp_tot[warp] + incl - v;
    T total = warp_tot[32];
    __syncthreads();
    return total;
}

#define TK_BINS 2048
#define TK_CHUNK 1024
#define TK_MAX_LEN 131072  // longer rows take the one-block fallback
#define TK_WORDS (TK_MAX_LEN / 32)  // a bitmap over a row
#define TK_THREADS 512  // threads of a topk_decode_fused block

// The search step of find_bin_block and find_bin_pair: this thread's run of bins [lo, hi), with
// `run` keys counted above it and `sum` in it, holds the want-th key (or thread 0's run, the
// highest, is past it), so the run is walked from the top and the bin and the count above it
// written to the block's answer.
__device__ __forceinline__ void search_run(const int* hist, int lo, int hi, int run, int sum, int want, int* res_b,
                                           int* res_above) {
    if (hi > lo && run + sum >= want && (threadIdx.x == 0 || run < want)) {
        for (int b = hi - 1; b >= lo; b--) {
            if (run + hist[b] >= want) {
                *res_b = b;
                *res_above = run;
                break;
            }
            run += hist[b];
        }
    }
}

// The highest bin b of `hist` with (count above b) < want <= (count above b) + hist[b], and the
// count above it (bin 0 and the total when `want` exceeds it), found by the whole block with
// every thread getting the answer: each thread sums a run of bins (highest first), a block scan
// gives the count above each run, and the one run where the count reaches `want` is searched.
// A few barriers, where one warp would take bins/32 sequential steps. `warp_tot` is 33 ints of
// shared memory.
__device__ int find_bin_block(const int* hist, int bins, int want, int* above_out, int* warp_tot) {
    __shared__ int res_b, res_above;
    int per = (bins + blockDim.x - 1) / blockDim.x;
    int hi = bins - (int)threadIdx.x * per, lo = max(0, hi - per);  // this thread's bins [lo, hi)
    int sum = 0;
    for (int b = lo; b < hi; b++) sum += hist[b];
    int above;
    int total = block_exclusive_sum(sum, &above, warp_tot);
    if (threadIdx.x == 0) {
        res_b = 0;
        res_above = total;  // `want` beyond the total: bin 0, everything above it
    }
    __syncthreads();
    search_run(hist, lo, hi, above, sum, want, &res_b, &res_above);
    __syncthreads();
    int b = res_b;
    *above_out = res_above;
    __syncthreads();  // res_b is free for the next call
    return b;
}

// find_bin_block over TK_BINS bins of shared memory by one warp, no barriers, for a block whose
// other warps can only wait for the answer (the decode top-k's head and finish): lane l sums the
// 64 bins of its run (the highest run first), a warp scan and a ballot pick the run holding the
// answer, and the same over that run's 64 bins, two a lane, picks the bin. A lane's 16 loads
// start at a rotated offset ((i + l) mod 16), so the eight lanes of each 16-byte load phase hit
// eight different bank quads where the plain order put all eight on one. find_bin_block's
// scan and search behind six barriers took about 2,100 cycles of the 128K decode top-k's finish.
__device__ int find_bin_warp(const int* hist, int want, int* above_out) {
    static_assert(TK_BINS == 32 * 64, "32 runs of 64 bins");
    const unsigned all = 0xffffffffu;
    int lane = threadIdx.x & 31;
    if (want <= 0) {  // as find_bin_block: the highest bin, nothing above it
        *above_out = 0;
        return TK_BINS - 1;
    }
    int hi = TK_BINS - 64 * lane;  // this lane's run: bins [hi - 64, hi)
    const int4* run = reinterpret_cast<const int4*>(hist + hi - 64);
    int sum = 0;
#pragma unroll
    for (int i = 0; i < 16; i++) {
        int4 v = run[(i + lane) & 15];
        sum += v.x + v.y + v.z + v.w;
    }
    int inc = warp_inclusive_sum(sum);
    unsigned hit = __ballot_sync(all, inc - sum < want && want <= inc);
    if (!hit) {  // beyond the total: bin 0, everything above it
        *above_out = __shfl_sync(all, inc, 31);
        return 0;
    }
    int r = __ffs(hit) - 1;
    int base = __shfl_sync(all, inc - sum, r), top = TK_BINS - 64 * r;
    int ca = hist[top - 2 * lane - 1], cb = hist[top - 2 * lane - 2];
    int pair = ca + cb, inc2 = warp_inclusive_sum(pair);
    unsigned hit2 = __ballot_sync(all, base + inc2 - pair < want && want <= base + inc2);
    int q = __ffs(hit2) - 1;
    int above = base + __shfl_sync(all, inc2 - pair, q), first = __shfl_sync(all, ca, q);
    if (above + first >= want) {
        *above_out = above;
        return top - 2 * q - 1;
    }
    *above_out = above + first;
    return top - 2 * q - 2;
}

// find_bin_block for two searches at once, in `ha` for `want_a` and in `hb` for `want_b` (the
// same histogram or two; at most 2^31 keys each): one block scan of both counts, packed, where
// two calls took two. Bins and counts above them land in bin[0..1] and above[0..1].
__device__ void find_bin_pair(const int* ha, int want_a, const int* hb, int want_b, int* bin, int* above) {
    __shared__ unsigned long long tot[33];
    __shared__ int res[4];
    int per = (TK_BINS + blockDim.x - 1) / blockDim.x;
    int hi = TK_BINS - (int)threadIdx.x * per, lo = max(0, hi - per);  // this thread's bins [lo, hi)
    int sa = 0, sb = 0;
    for (int b = lo; b < hi; b++) {
        sa += ha[b];
        sb += hb[b];
    }
    unsigned long long before;
    unsigned long long total = block_exclusive_sum(((unsigned long long)sa << 32) | (unsigned)sb, &before, tot);
    if (threadIdx.x == 0) {  // a want beyond the total: bin 0, everything above it
        res[0] = res[2] = 0;
        res[1] = (int)(total >> 32);
        res[3] = (int)(total & 0xffffffffull);
    }
    __syncthreads();
    search_run(ha, lo, hi, (int)(before >> 32), sa, want_a, &res[0], &res[1]);
    search_run(hb, lo, hi, (int)(before & 0xffffffffull), sb, want_b, &res[2], &res[3]);
    __syncthreads();
    bin[0] = res[0];
    above[0] = res[1];
    bin[1] = res[2];
    above[1] = res[3];
    __syncthreads();  // res is free for the next call
}

// One block selects the top k of `row[0..len)` into `o`.
__device__ void topk_row_block(const float* row, int len, int k, int* o) {
    __shared__ int hist[256];
    __shared__ int warp_tot[33];
    if (len <= k) {
        for (int i = threadIdx.x; i < k; i += blockDim.x) o[i] = i < len ? i : -1;
        return;
    }
    // Every thread follows the same threshold prefix, 8 bits a round.
    unsigned prefix = 0, mask = 0;
    int remaining = k;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        for (int i = threadIdx.x; i < len; i += blockDim.x) {
            unsigned key = order_key(row[i]);
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1);
        }
        __syncthreads();
        int above;
        int b = find_bin_block(hist, 256, remaining, &above, warp_tot);
        remaining -= above;
        prefix |= (unsigned)b << shift;
        mask |= 255u << shift;
    }
    unsigned thr = prefix;
    int ties = remaining;  // how many keys equal to thr to take
    int taken_ties = 0, written = 0;
    for (int base = 0; base < len; base += blockDim.x) {
        int i = base + threadIdx.x;
        unsigned key = i < len ? order_key(row[i]) : 0u;
        int eq = (i < len && key == thr) ? 1 : 0;
        int eq_before;
        int eq_total = block_exclusive_sum(eq, &eq_before, warp_tot);
        int take = (i < len) && (key > thr || (eq && taken_ties + eq_before < ties));
        int pos;
        int n = block_exclusive_sum(take, &pos, warp_tot);
        if (take) o[written + pos] = i;
        written += n;
        taken_ties += eq_total;
    }
}


// ---------------------------------------------------------------------------------------------
// Sparse MLA, absorbed (MQA) form (the cache flat, or paged through a page table): for query
// token t and each of its heads h,
//   o[h] = softmax_j(scale * q[h] . kv[idx_j]) . kv[idx_j][:512]
// over the token's selected positions. A block takes 64 heads; a model with 64·G heads (G = 2 for
// DeepSeek-V3.2's 128) runs G blocks a query, each gathering the same rows, the later ones
// mostly from L2. Grid (splits, T·G, value parts): split p takes a contiguous
// share of the index list in tiles of 64 positions and writes its normalized partial output and
// its log-sum-exp (log2); `mla_combine` merges the splits.
//
// On wgmma, two warpgroups: warpgroup g scores the tile's keys 32g..32g+31 against all 64 heads
// (S = Q·Kᵀ, 36 steps over the 576 dims), the two exchange row maxima, each writes its half of
// P = exp2(S - m) to shared memory as bf16, and then each accumulates O[:, 256g..256g+255] +=
// P·V, reading V from the same gathered rows as an N-major operand. Query, both gather stages
// and P are stored in the 128-byte-swizzled layout (see the indexer), so the next tile's gather
// (cp.async) runs under the current tile's products, its indices already in shared memory.
// Row sums stay per thread until the end. The query's first MLA_QREG score steps are held in
// registers as A operands (loaded once a block): a step with A in registers reads only its
// 1 KB of K from shared memory, not Q's 2 KB too, and the scores' m64n32 products, which read
// their operands for half the work of an m64n64 one, finish sooner (3.8% of the kernel at
// 16 steps, under ncu's locked clocks; 250 registers). The kernel is otherwise bound by the
// latency of each tile's chain with 2 warps a scheduler, not by the gather or by instruction
// issue: keep per-tile work out of the loop (see BENCHMARKS.md). Data
// for a later tile must travel by cp.async: a plain load into registers is waited for at the
// next bar.sync (its memory ordering covers loads), so it never overlaps a barrier.

#define MLA_H 64
#define MLA_DQK 576
#define MLA_DV 512
#define MLA_BN 64
#define MLA_TILE (MLA_BN * MLA_DQK * 2)  // 64 rows of 576 bf16: 9 slabs of 8 KB
#define MLA_SLACK 8.f
#define MLA_QREG 16  // score steps with the query in registers (of 36), where a block computes all 512 columns

// Queue the copy of index-list entries j0..j0+63 into shared memory (`dst`, 64 ints), so the
// gather that reads them a tile later never waits on a global load.
__device__ __forceinline__ void mla_fetch_indices(int* dst, const int* idx, int j0, int topk) {
    if (threadIdx.x < MLA_BN) cp_async4(dst + threadIdx.x, idx + j0 + threadIdx.x, j0 + (int)threadIdx.x < topk);
}

// Queue the gather of index-list entries j0..j0+63 (their values in shared memory, `idx_s`)
// into `dst` (missing rows zero-filled) and record which are valid. 256 threads: 4 per row.
__device__ __forceinline__ void mla_gather(unsigned char* dst, int* ok, const bf16* kv, const int* idx_s,
                                           int j0, int topk, int S, const int* page_table,
                                           int page_size) {
    int r = threadIdx.x >> 2, part = threadIdx.x & 3;
    int s = j0 + r < topk ? idx_s[r] : -1;
    bool valid = s >= 0 && s < S;
    // A paged cache keeps position s in page page_table[s / page_size].
    size_t phys = !valid ? 0 : page_table ? (size_t)page_table[s / page_size] * page_size + s % page_size : (size_t)s;
    const unsigned char* src = reinterpret_cast<const unsigned char*>(kv + phys * MLA_DQK) + part * 16;
    // This thread's chunks are part, part + 4, ...: in the swizzled tile they alternate between
    // two offsets within a slab (see swz), one slab every two chunks.
    int sw[2] = {r * 128 + ((part ^ (r & 7)) << 4), r * 128 + (((part + 4) ^ (r & 7)) << 4)};
#pragma unroll
    for (int i = 0; i < MLA_DQK / 32; i++)
        cp_async16(dst + (i >> 1) * (MLA_BN * 128) + sw[i & 1], src + 64 * i, valid);
    if (part == 0) ok[r] = valid;
}

// NV: the value columns each warpgroup accumulates. 256: a block computes all 512. 128
// (`sparse_mla_bf16_vsplit`, grid z = 2): block z computes columns 256z..256z+255 only, both
// blocks scoring the same tiles in full, so a split's partial output leaves from two
// multiprocessors. For few rows (a batch-1 decode fills 32 of 132 multiprocessors), where one
// multiprocessor writing its 128 KB partial took longer than all its products (see BENCHMARKS).
template <int NV>
__device__ __forceinline__ void sparse_mla_body(const bf16* q, const bf16* kv, const int* indices, float* o_part,
                                                float* lse_part, int topk, int S, int splits, float scale_log2,
                                                const int* page_table, int page_size, int groups, int after_indices) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    unsigned char* qs = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);  // 64 heads
    unsigned char* kvs = qs + MLA_TILE;                                  // 2 gather stages
    unsigned char* ps = kvs + 2 * MLA_TILE;                              // P: 64 x 64 bf16
    float* red_max = reinterpret_cast<float*>(ps + MLA_H * 128);         // [2][64]
    float* red_l = red_max;                                              // [2][64], after the loop
    int* ok = reinterpret_cast<int*>(red_max + 2 * MLA_H);               // [2 stages][64]
    int* idx_s = ok + 2 * MLA_BN;                                        // [2 stages][64]

    const float NEG_INF = -__int_as_float(0x7f800000);
    // Row t of the grid is one group of 64 heads: query t / groups, heads 64 (t % groups)..
    int t = blockIdx.y, split = blockIdx.x;
    int wg = __shfl_sync(0xffffffffu, (int)(threadIdx.x >> 7), 0);  // uniform, as in the indexer
    int wq = (threadIdx.x >> 5) & 3, lane = threadIdx.x & 31;
    int g = lane >> 2, tig = lane & 3;
    int r0 = 16 * wq + g;  // this thread's head rows: r0, r0 + 8
    const int* idx = indices + (size_t)(t / groups) * topk;
    int blocks = (topk + MLA_BN - 1) / MLA_BN;
    int per = (blocks + splits - 1) / splits;
    int b_begin = split * per, b_end = min(blocks, b_begin + per);

    // The first tile's indices go in a copy group of their own, ahead of the query's 72 KB, so
    // the first gather waits for them alone and runs alongside the query's copy; so does the load
    // of the share's last entry (below), issued before the query's copies queue up. After that,
    // tile b + 2's indices are copied while tile b computes, and tile b + 1's gather reads them
    // from shared memory.
    int j_end = min(b_end * MLA_BN, topk), last = j_end - 1;
    int s_last = 0;
    // With `after_indices` the kernel was launched with programmatic stream serialization after
    // the kernel that writes its indices (the decode top-k, or map_pages), which lets dependents
    // start early: the query, written before that kernel started, is copied while it finishes,
    // and only then does the block wait for the indices (griddepcontrol.wait). 1.1 us of the
    // 128K batch-1 step (BENCHMARKS.md).
    auto copy_query = [&]() {
        for (int i = threadIdx.x; i < MLA_H * (MLA_DQK / 8); i += blockDim.x) {
            int r = i / (MLA_DQK / 8), c = i % (MLA_DQK / 8);
            cp_async16(qs + swz(MLA_H, r, c * 16),
                       reinterpret_cast<const unsigned char*>(q + ((size_t)t * MLA_H + r) * MLA_DQK) + c * 16, true);
        }
        cp_async_commit();
    };
    if (after_indices) {
        copy_query();
        asm volatile("griddepcontrol.wait;" ::: "memory");
    }
    if (b_begin < b_end) {
        mla_fetch_indices(idx_s, idx, b_begin * MLA_BN, topk);
        s_last = idx[last];
    }
    cp_async_commit();
    if (!after_indices) copy_query();
    if (b_begin < b_end) {
        // Tiles after the split's last valid entry add nothing: a row shorter than top-k (a
        // short prompt, an early position) is padded with -1 at its end. When the share's last
        // entry is valid (every full row) that is all; otherwise the share is scanned, under the
        // first copies, each warp's answer going to the second stage's flags, not yet in use.
        const bool scan = s_last < 0 || s_last >= S;  // the same for every thread
        if (scan) {
            last = -1;
            for (int j = b_begin * MLA_BN + threadIdx.x; j < j_end; j += blockDim.x) {
                int s = idx[j];
                if (s >= 0 && s < S) last = j;
            }
            last = __reduce_max_sync(0xffffffffu, last);
            if (lane == 0) ok[MLA_BN + (threadIdx.x >> 5)] = last;
        }
        // The indices; the query may still be in flight (copied first after the top-k: both).
        if (after_indices) cp_async_wait<0>();
        else cp_async_wait<1>();
        __syncthreads();
        if (scan) {
#pragma unroll
            for (int w = 0; w < 8; w++) last = max(last, ok[MLA_BN + w]);
            b_end = last < 0 ? b_begin : last / MLA_BN + 1;
        }
    }
    if (b_begin < b_end) {
        mla_gather(kvs, ok, kv, idx_s, b_begin * MLA_BN, topk, S, page_table, page_size);
        if (b_begin + 1 < b_end) mla_fetch_indices(idx_s + MLA_BN, idx, (b_begin + 1) * MLA_BN, topk);
    }
    cp_async_commit();

    float o[NV / 2];
#pragma unroll
    for (int i = 0; i < NV / 2; i++) o[i] = 0.f;
    const int vcol = blockIdx.z * 2 * NV + wg * NV;  // this warpgroup's first value column
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};
    // Descriptors are computed once; a step adds its byte offset / 16 to the address field
    // (which cannot carry: shared memory is under 256 KB).
    const unsigned long long desc_q = wg_desc(qs), desc_p = wg_desc(ps);
    // Not in the value split: it computes one tile a block (a batch-1 decode), so there is
    // nothing to reuse the registers over.
    constexpr int QREG = NV == 256 ? MLA_QREG : 0;
    unsigned qa[QREG > 0 ? QREG : 1][4];
    if constexpr (QREG > 0) {
        cp_async_wait<0>();  // the query (the first tile's wait, a little early)
        __syncthreads();
#pragma unroll
        for (int k = 0; k < QREG; k++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                qa[k][e] = *reinterpret_cast<const unsigned*>(
                    qs + swz(MLA_H, r0 + 8 * (e & 1), 2 * (16 * k + 2 * tig + 8 * (e >> 1))));
    }

    for (int b = b_begin; b < b_end; b++) {
        int st = (b - b_begin) & 1;
        cp_async_wait<0>();
        fence_async_smem();
        __syncthreads();  // tile b landed; both warpgroups are done with tile b - 1
        const unsigned char* ks = kvs + st * MLA_TILE;
        const int* okb = ok + st * MLA_BN;

        float s[16];
        const unsigned long long desc_k = wg_desc(ks + wg * 32 * 128);
        const unsigned long long desc_v = wg_desc(ks + (vcol / 64) * (MLA_BN * 128), MLA_BN * 128);
        wg_fence();
#pragma unroll
        for (int kb = 0; kb < MLA_DQK * 2; kb += 32) {
            const unsigned long long dk = desc_k + (((kb >> 7) * (MLA_BN * 128) + (kb & 127)) >> 4);
            if (kb / 32 < QREG) wgmma_n32_bf16_rs(s, qa[kb / 32], dk, kb > 0);
            else wgmma_n32_bf16(s, desc_q + (((kb >> 7) * (MLA_H * 128) + (kb & 127)) >> 4), dk, kb > 0);
        }
        wg_commit();
        // The next tile's gather is queued while the scores compute.
        if (b + 1 < b_end)
            mla_gather(kvs + (st ^ 1) * MLA_TILE, ok + (st ^ 1) * MLA_BN, kv, idx_s + (st ^ 1) * MLA_BN,
                       (b + 1) * MLA_BN, topk, S, page_table, page_size);
        // Tile b's indices were read by its gather a tile ago: their stage takes tile b + 2's.
        if (b + 2 < b_end) mla_fetch_indices(idx_s + st * MLA_BN, idx, (b + 2) * MLA_BN, topk);
        cp_async_commit();
        wg_wait0();
        reg_fence<16>(s);

        // Scale into the log2 domain, mask missing positions, row maxima over both halves.
        float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int2 valid = *reinterpret_cast<const int2*>(okb + 32 * wg + 8 * j + 2 * tig);
#pragma unroll
            for (int i = 4 * j; i < 4 * j + 4; i++) {
                float v = ((i & 1) ? valid.y : valid.x) ? s[i] * scale_log2 : NEG_INF;
                s[i] = v;
                mx[(i >> 1) & 1] = fmaxf(mx[(i >> 1) & 1], v);
            }
        }
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        }
        if (tig == 0) {
            red_max[wg * MLA_H + r0] = mx[0];
            red_max[wg * MLA_H + r0 + 8] = mx[1];
        }
        __syncthreads();
        // The running maximum m only moves when the tile's exceeds it by more than MLA_SLACK
        // (log2 units): P = 2^(S - m) then stays below 2^MLA_SLACK, harmless in bf16 and f32,
        // and most tiles skip rescaling O (128 multiplies a thread). Exact either way: m is
        // only the reference that P, l and O share.
        float alpha[2] = {1.f, 1.f};
        bool moved = false;
#pragma unroll
        for (int r = 0; r < 2; r++) {
            int row = r0 + 8 * r;
            float m_tile = fmaxf(red_max[row], red_max[MLA_H + row]);
            if (m_tile > m[r] + MLA_SLACK) {
                // A row with nothing valid keeps m = -inf, so exp2 below gives 0, not NaN.
                alpha[r] = exp2f(m[r] - m_tile);
                m[r] = m_tile;
                l[r] *= alpha[r];
                moved = true;
            }
        }
        // With every score -inf so far, m stays -inf; subtract 0 instead so P is 0, not NaN.
        float mr[2] = {m[0] == NEG_INF ? 0.f : m[0], m[1] == NEG_INF ? 0.f : m[1]};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            float p0 = exp2f(s[4 * j] - mr[0]), p1 = exp2f(s[4 * j + 1] - mr[0]);
            float p2 = exp2f(s[4 * j + 2] - mr[1]), p3 = exp2f(s[4 * j + 3] - mr[1]);
            l[0] += p0 + p1;
            l[1] += p2 + p3;
            int col = 32 * wg + 8 * j + 2 * tig;
            *reinterpret_cast<unsigned*>(ps + swz(MLA_H, r0, 2 * col)) = pack_bf16(p0, p1);
            *reinterpret_cast<unsigned*>(ps + swz(MLA_H, r0 + 8, 2 * col)) = pack_bf16(p2, p3);
        }
        if (__any_sync(0xffffffffu, moved)) {
#pragma unroll
            for (int n = 0; n < NV / 8; n++) {
                o[4 * n] *= alpha[0];
                o[4 * n + 1] *= alpha[0];
                o[4 * n + 2] *= alpha[1];
                o[4 * n + 3] *= alpha[1];
            }
        }
        fence_async_smem();
        __syncthreads();  // all of P is written
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < MLA_BN / 16; kk++)
            if constexpr (NV == 256) wgmma_n256_bf16_bt(o, desc_p + ((kk * 32) >> 4), desc_v + ((kk * 16 * 128) >> 4), 1);
            else wgmma_n128_bf16_bt(o, desc_p + ((kk * 32) >> 4), desc_v + ((kk * 16 * 128) >> 4), 1);
        wg_commit();
        wg_wait0();
        reg_fence<NV / 2>(o);
    }
    cp_async_wait<0>();  // a split with no tiles still queued its query copy
#pragma unroll
    for (int r = 0; r < 2; r++) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    }
    if (tig == 0) {
        red_l[wg * MLA_H + r0] = l[0];
        red_l[wg * MLA_H + r0 + 8] = l[1];
    }
    __syncthreads();
    // Normalize and write this split's partial result.
    float l0 = red_l[r0] + red_l[MLA_H + r0], l1 = red_l[r0 + 8] + red_l[MLA_H + r0 + 8];
    float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
    size_t base = ((size_t)t * splits + split) * MLA_H;
#pragma unroll
    for (int n = 0; n < NV / 8; n++) {
        int col = vcol + n * 8 + tig * 2;
        float2* p0 = reinterpret_cast<float2*>(o_part + (base + r0) * MLA_DV + col);
        float2* p1 = reinterpret_cast<float2*>(o_part + (base + r0 + 8) * MLA_DV + col);
        *p0 = make_float2(o[4 * n] * inv0, o[4 * n + 1] * inv0);
        *p1 = make_float2(o[4 * n + 2] * inv1, o[4 * n + 3] * inv1);
    }
    if (blockIdx.z == 0 && wg == 0 && tig == 0) {
        lse_part[base + r0] = l0 > 0.f ? m[0] + log2f(l0) : NEG_INF;
        lse_part[base + r0 + 8] = l1 > 0.f ? m[1] + log2f(l1) : NEG_INF;
    }
}

extern "C" __global__ void __launch_bounds__(256, 1)
sparse_mla_bf16(const bf16* q, const bf16* kv, const int* indices, float* o_part, float* lse_part,
                int topk, int S, int splits, float scale_log2, const int* page_table, int page_size,
                int groups, int after_indices) {
    sparse_mla_body<256>(q, kv, indices, o_part, lse_part, topk, S, splits, scale_log2, page_table, page_size,
                          groups, after_indices);
}

extern "C" __global__ void __launch_bounds__(256, 1)
sparse_mla_bf16_vsplit(const bf16* q, const bf16* kv, const int* indices, float* o_part, float* lse_part,
                       int topk, int S, int splits, float scale_log2, const int* page_table, int page_size,
                       int groups, int after_indices) {
    sparse_mla_body<128>(q, kv, indices, o_part, lse_part, topk, S, splits, scale_log2, page_table, page_size,
                          groups, after_indices);
}

// out[t, h, :] = sum_p 2^(lse_p - M) o_p / sum_p 2^(lse_p - M). Block (t·H + h, y) takes
// columns y·blockDim.x.. of (t, h): launched as two blocks of 256 threads, since at batch 1 a
// block waits mostly for its share of the 4 MB of partials. The split weights are computed once
// in shared memory (by one warp, with shuffles, for at most 32 splits), then each thread sums
// its columns with the loads of all splits in flight together.
// At most 1024 splits. The first MLA_EARLY splits of a thread's first column are loaded right
// after the log-sum-exps, before the weights are known, so both waits overlap (at batch 1, with
// 32 splits, that is every load).
#define MLA_EARLY 32
extern "C" __global__ void mla_combine(const float* o_part, const float* lse_part, float* out,
                                       int H, int splits, int dv) {
    __shared__ float wts[1024];
    __shared__ float part[32];
    const float NEG_INF = -__int_as_float(0x7f800000);
    int t = blockIdx.x / H, h = blockIdx.x % H, lane = threadIdx.x & 31;
    const float* lse = lse_part + (size_t)t * splits * H + h;  // split p at p · H
    const float* src = o_part + ((size_t)t * splits * H + h) * dv;  // split p at p · H · dv
    size_t stride = (size_t)H * dv;
    bool one_warp = splits <= 32;
    float v = one_warp && threadIdx.x < 32 && lane < splits ? lse[(size_t)lane * H] : NEG_INF;
    // Block y of the grid takes columns y·blockDim.x.. (then every gridDim.y·blockDim.x-th).
    int c0 = blockIdx.y * blockDim.x + threadIdx.x, c_step = gridDim.y * blockDim.x;
    float early[MLA_EARLY];
#pragma unroll
    for (int p = 0; p < MLA_EARLY; p++) early[p] = p < splits && c0 < dv ? src[p * stride + c0] : 0.f;
    float total;
    if (one_warp) {
        if (threadIdx.x < 32) {
            float M = v;
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
            float w = v == NEG_INF ? 0.f : exp2f(v - M);
            float sum = w;
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
            if (lane < splits) wts[lane] = w;
            if (lane == 0) part[0] = sum;
        }
        __syncthreads();
        total = part[0];
    } else {
        float m = NEG_INF;
        for (int p = threadIdx.x; p < splits; p += blockDim.x) {
            wts[p] = lse[(size_t)p * H];
            m = fmaxf(m, wts[p]);
        }
        float M = block_reduce<true>(m, part);
        float sum = 0.f;
        for (int p = threadIdx.x; p < splits; p += blockDim.x) {
            float w = wts[p] == NEG_INF ? 0.f : exp2f(wts[p] - M);
            wts[p] = w;
            sum += w;
        }
        total = block_reduce<false>(sum, part);  // its barriers also publish wts
    }
    float inv = total > 0.f ? 1.f / total : 0.f;
    for (int c = c0; c < dv; c += c_step) {
        float acc = 0.f;
        int p = 0;
        if (c == c0) {
#pragma unroll
            for (int e = 0; e < MLA_EARLY; e++)
                if (e < splits) acc += wts[e] * early[e];
            p = MLA_EARLY;
        }
#pragma unroll 8
        for (; p < splits; p++) acc += wts[p] * src[p * stride + c];
        out[((size_t)t * H + h) * dv + c] = acc * inv;
    }
}

// ---------------------------------------------------------------------------------------------
// Decode: one query per row (its own position), so the prefill kernels' 8-query tiles and
// one-CTA-per-row top-k would waste the GPU. The indexer takes one query per block (one
// warpgroup) against `tiles_per_block` tiles of 64 keys streamed through a ring of IXD_STAGES;
// top-k splits each long row over many blocks. Each block walks its tiles in a chain (copy,
// product, head sum, store), so the launch gives a block as few tiles as keep every block
// resident at once, at most IXD_TILES (IXD_TILES_FP8): one at a batch-1 8K step, six at 128K.
//
// Each tile is one product on the tensor cores, S = K·Qᵀ (m64n64k16 × 8: 64 keys by the query's
// 64 heads, both operands in shared memory in the prefill indexer's swizzled layout). A thread
// then holds 16 heads of keys row0 and row0 + 8: ReLU, weight and sum them, then add across the
// quad. The kernel streams the key cache, so what matters is keeping copies in flight: three
// tiles ahead, and three blocks on each multiprocessor.
//
// With e4m3 operands (the FP8 indexer below: rows of 128 bytes, m64n64k32) the same tile is
// half the bytes. The query's per-head scales are folded into the head weights and each key's
// scale multiplies its logit after the head sum (ReLU(a·x) = a·ReLU(x) for a > 0); the key
// scales travel with their tile through the ring.

#define IX_KEYS 64      // keys per tile (one page of 128 holds two)
#define IXD_TILES 8     // the most tiles a block takes (the query is loaded once for them)
#define IXD_STAGES 3    // ring stages (3 tiles in flight ahead)
// e4m3: tiles of half the bytes, so twice the blocks (each one's chain of tiles half as long).
// Side by side at 128K: 12.9 µs against 13.6 for 8 tiles a block (17.8 for bf16); see BENCHMARKS.
#define IXD_TILES_FP8 4
#define IXD_STAGES_FP8 3

#define WGMMA_N64(NAME, SHAPE_TYPES, TAIL)                                                        \
    __device__ __forceinline__ void NAME(float* d, unsigned long long a, unsigned long long b,    \
                                         int accumulate) {                                       \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                \
                     "wgmma.mma_async.sync.aligned." SHAPE_TYPES " "                             \
                     "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "  \
                     "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, "    \
                     "%30, %31}, %32, %33, p" TAIL ";\n}\n"                                     \
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]),   \
                       "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), \
                       "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),          \
                       "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),          \
                       "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]),          \
                       "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])           \
                     : "l"(a), "l"(b), "r"(accumulate));                                         \
    }
WGMMA_N64(wgmma_n64_bf16, "m64n64k16.f32.bf16.bf16", ", 1, 1, 0, 0")
WGMMA_N64(wgmma_n64_e4m3, "m64n64k32.f32.e4m3.e4m3", ", 1, 1")

template <bool FP8>
__device__ __forceinline__ void indexer_decode_tiles(const unsigned char* q, const float* q_scale,
                                                     const unsigned char* k, const float* k_scale,
                                                     const float* w, float* logits, const int* lens, int S,
                                                     int ld, const int* pages, int pages_stride, int* hist,
                                                     int hist_k, int tiles_per_block) {
    static_assert(IX_KEYS == IX_TILE, "decode tiles use the prefill tile layout");
    constexpr int ROW = FP8 ? IX_D : 2 * IX_D, STAGE = IX_KEYS * ROW;
    constexpr int STAGES = FP8 ? IXD_STAGES_FP8 : IXD_STAGES;
    // More than a block may declare statically, so it is dynamic shared memory; the swizzled
    // tiles start on a 1,024-byte boundary.
    extern __shared__ __align__(16) unsigned char smem_raw[];
    unsigned char* qs = smem_raw + ((1024 - (smem_u32(smem_raw) & 1023)) & 1023);  // 64 rows
    unsigned char* kbuf = qs + IX_HEADS * ROW;                                       // the ring
    float* ksc = reinterpret_cast<float*>(kbuf + STAGES * STAGE);  // e4m3: the tiles' scales
    int* hh = reinterpret_cast<int*>(ksc + (FP8 ? STAGES * IX_KEYS : 0));        // TK_BINS
    // The top-k launched after it may start placing blocks; each waits for this grid's end.
    asm volatile("griddepcontrol.launch_dependents;");
    int t = blockIdx.y, s_begin = blockIdx.x * IX_KEYS * tiles_per_block;
    int len = min(lens[t], S);
    if (s_begin >= len) return;
    // With `hist`, the block also adds its logits to the row's top-11-bit histogram (phase 1 of
    // topk_decode_fused, which then skips it) for rows longer than hist_k.
    bool histogram = hist && len > hist_k;
    if (histogram)
        for (int i = threadIdx.x; i < TK_BINS; i += blockDim.x) hh[i] = 0;
    int tiles = min(tiles_per_block, (len - s_begin + IX_KEYS - 1) / IX_KEYS);
    const int* row_pages = pages ? pages + (size_t)t * pages_stride : nullptr;
    const unsigned char* qrow = q + (size_t)t * IX_HEADS * ROW;
    for (int i = threadIdx.x; i < IX_HEADS * (ROW / 16); i += blockDim.x) {
        int r = i / (ROW / 16), c = i % (ROW / 16);
        cp_async16(qs + swz(IX_HEADS, r, c * 16), qrow + r * ROW + c * 16, true);
    }
    // Tile j goes to stage j % STAGES, keys past the row's length zero-filled. One commit
    // group per tile slot (empty past the last tile), so wait_group counts stay uniform.
    auto load = [&](int j) {
        if (j < tiles)
            ix_load_keys<ROW, 128>(kbuf + (j % STAGES) * STAGE, k, s_begin + j * IX_KEYS, len, row_pages,
                                   FP8 ? k_scale : nullptr, ksc + (j % STAGES) * IX_KEYS);
        cp_async_commit();
    };
#pragma unroll
    for (int j = 0; j < STAGES - 1; j++) load(j);  // the query rides with tile 0

    int wq = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;
    // This thread's heads 8n + 2·tig (+1), n = 0..7, with e4m3 their query scales folded in.
    float2 wr[8];
#pragma unroll
    for (int n = 0; n < 8; n++) {
        wr[n] = *reinterpret_cast<const float2*>(w + (size_t)t * IX_HEADS + 8 * n + 2 * tig);
        if (FP8) {
            float2 sc = *reinterpret_cast<const float2*>(q_scale + (size_t)t * IX_HEADS + 8 * n + 2 * tig);
            wr[n].x *= sc.x;
            wr[n].y *= sc.y;
        }
    }
    const unsigned long long desc_q = wg_desc(qs), desc_k = wg_desc(kbuf);

    for (int j = 0; j < tiles; j++) {
        cp_async_wait<STAGES - 2>();
        fence_async_smem();  // this thread's copies (generic proxy) become visible to wgmma
        __syncthreads();     // every thread's copies of tile j landed; tile j - 1 is done with
        load(j + STAGES - 1);  // into the stage tile j - 1 used
        int st = j % STAGES;
        float d[32];
        wg_fence();
#pragma unroll
        for (int kb = 0; kb < ROW; kb += 32) {
            unsigned long long da = desc_k + ((st * STAGE + (kb >> 7) * IX_KEYS * 128 + (kb & 127)) >> 4);
            unsigned long long db = desc_q + (((kb >> 7) * IX_HEADS * 128 + (kb & 127)) >> 4);
            if (FP8) wgmma_n64_e4m3(d, da, db, kb > 0);
            else wgmma_n64_bf16(d, da, db, kb > 0);
        }
        wg_commit();
        wg_wait0();
        reg_fence<32>(d);
        float lo = 0.f, hi = 0.f;  // keys row0 and row0 + 8
#pragma unroll
        for (int n = 0; n < 8; n++) {
            lo = fmaf(wr[n].x, fmaxf(d[4 * n], 0.f), lo);
            lo = fmaf(wr[n].y, fmaxf(d[4 * n + 1], 0.f), lo);
            hi = fmaf(wr[n].x, fmaxf(d[4 * n + 2], 0.f), hi);
            hi = fmaf(wr[n].y, fmaxf(d[4 * n + 3], 0.f), hi);
        }
#pragma unroll
        for (int o = 1; o < 4; o <<= 1) {
            lo += __shfl_xor_sync(0xffffffffu, lo, o);
            hi += __shfl_xor_sync(0xffffffffu, hi, o);
        }
        if (tig < 2) {
            int r = 16 * wq + g + 8 * tig, s = s_begin + j * IX_KEYS + r;
            float v = tig ? hi : lo;
            if (FP8) v *= ksc[st * IX_KEYS + r];
            if (s < len) {
                logits[(size_t)t * ld + s] = v;
                if (histogram) atomicAdd(&hh[order_key(v) >> 21], 1);
            }
        }
    }
    if (histogram) {
        __syncthreads();
        for (int i = threadIdx.x; i < TK_BINS; i += blockDim.x)
            if (hh[i]) atomicAdd(&hist[(size_t)t * 2 * TK_BINS + i], hh[i]);
    }
}

extern "C" __global__ void __launch_bounds__(128)
indexer_decode_bf16(const bf16* q, const bf16* k, const float* w, float* logits, const int* lens,
                    int S, int ld, const int* pages, int pages_stride, int* hist, int hist_k,
                    int tiles_per_block) {
    indexer_decode_tiles<false>(reinterpret_cast<const unsigned char*>(q), nullptr,
                                reinterpret_cast<const unsigned char*>(k), nullptr, w, logits, lens, S, ld,
                                pages, pages_stride, hist, hist_k, tiles_per_block);
}

// e4m3 q and k with their scales (hadamard_quant_e4m3): one per head of q, one per key.
extern "C" __global__ void __launch_bounds__(128)
indexer_decode_fp8(const unsigned char* q, const float* q_scale, const unsigned char* k, const float* k_scale,
                   const float* w, float* logits, const int* lens, int S, int ld, const int* pages,
                   int pages_stride, int* hist, int hist_k, int tiles_per_block) {
    indexer_decode_tiles<true>(q, q_scale, k, k_scale, w, logits, lens, S, ld, pages, pages_stride, hist,
                               hist_k, tiles_per_block);
}

// Multi-block top-k for few long rows (decode), one launch in up to four phases, each row
// staying in L2:
//   1. histogram of the key's top 11 bits            (units of TK_CHUNK keys of a row)
//   2. histogram of the next 11 bits inside bin b1    (b1 found by each unit from phase 1), only
//      for rows whose bin b1 holds more than `cap` keys
//   3. every key above the threshold prefix (b1, or (b1, b2)) is taken (marked in the row's
//      bitmap); keys sharing it are candidates, and with prefix b1 their next 11 bits are
//      counted into the second histogram (phase 2 did not use it)
//   4. the last block to finish collecting a unit of the row finds the threshold bin b2 in
//      that histogram if it has to, picks the best candidates (stable: higher key, then lower
//      index) and writes the k indices in ascending order.
// Phases 1 to 3 are separated by grid-wide barriers; the barrier before phase 3 is skipped when
// there is one row and it needs no phase 2, so a batch-1 decode step with the indexer's
// histogram ready runs phases 3 and 4 without waiting on the grid.
// Work buffers per row: hist 2 x 2048 ints, counters 4 ints (the candidate slot allocator,
// one unused, then the units' 64-bit report of tk_done), a bitmap of taken keys (TK_WORDS),
// candidates `cap` (key, index) pairs;
// one barrier of 2 ints for the call. All start zeroed and phase 4 zeroes hist and counters
// again, so a call needs no memset. A row whose candidates overflow `cap` is done in phase 4 by
// the one-block select. Data other blocks wrote is read with __ldcg (L2), never from a possibly
// stale L1 line.

// A barrier across the whole grid, for a launch whose blocks are all resident at once (at most
// one per multiprocessor). bar[0] counts arrivals; the last arrival resets it and advances the
// generation bar[1], which the others wait for.
__device__ void grid_sync(unsigned* bar) {
    __syncthreads();
    if (threadIdx.x == 0) {
        volatile unsigned* gen = bar + 1;
        unsigned g = *gen;
        __threadfence();  // this block's writes before the arrival
        if (atomicAdd(bar, 1u) == gridDim.x - 1) {
            atomicExch(bar, 0u);
            __threadfence();
            atomicAdd(bar + 1, 1u);
        } else {
            while (*gen == g) __nanosleep(32);
        }
        __threadfence();
    }
    __syncthreads();
}

// Phase 1 for keys chunk·TK_CHUNK.. of row t; `h` is TK_BINS ints of shared memory.
__device__ void tk_hist1(const float* logits, int len, int ld, int* hist, int t, int chunk, int* h) {
    for (int i = threadIdx.x; i < TK_BINS; i += blockDim.x) h[i] = 0;
    __syncthreads();
    const float* row = logits + (size_t)t * ld;
    int end = min(len, (chunk + 1) * TK_CHUNK);
    for (int i = chunk * TK_CHUNK + threadIdx.x; i < end; i += blockDim.x)
        atomicAdd(&h[order_key(row[i]) >> 21], 1);
    __syncthreads();
    for (int i = threadIdx.x; i < TK_BINS; i += blockDim.x)
        if (h[i]) atomicAdd(&hist[(size_t)t * 2 * TK_BINS + i], h[i]);
    __syncthreads();  // `h` is free for the next unit
}

// Copies N ints of a histogram from global memory (L2: other blocks built it) to shared memory
// `dst`, by a block of TK_THREADS threads, every load in flight before the first store. A loop
// that stores each value before it loads the next waits on L2 once per iteration.
template <int N>
__device__ __forceinline__ void tk_hist_to_smem(int* dst, const int* src) {
    static_assert(N % (4 * TK_THREADS) == 0, "whole int4s for every thread");
    constexpr int PER = N / (4 * TK_THREADS);
    int4 v[PER];
#pragma unroll
    for (int j = 0; j < PER; j++) v[j] = __ldcg(reinterpret_cast<const int4*>(src) + j * TK_THREADS + threadIdx.x);
#pragma unroll
    for (int j = 0; j < PER; j++) reinterpret_cast<int4*>(dst)[j * TK_THREADS + threadIdx.x] = v[j];
}

// Whether row t is collected on its top 11 bits: its threshold bin of phase 1 (`*b1`, the bin
// holding its k-th key) holds at most `cap` keys. The block reads the histogram into `h` (TK_BINS
// ints of shared memory) in one coalesced pass and one warp searches it there (find_bin_warp).
__device__ bool tk_fits(const int* hist, int k, int cap, int t, int* h, unsigned* b1) {
    __shared__ int found;
    tk_hist_to_smem<TK_BINS>(h, hist + (size_t)t * 2 * TK_BINS);
    __syncthreads();
    if (threadIdx.x < 32) {
        int above, b = find_bin_warp(h, k, &above);
        if (threadIdx.x == 0) found = b;
    }
    __syncthreads();
    *b1 = (unsigned)found;
    bool fits = h[*b1] <= cap;
    __syncthreads();  // `h` and `found` are free for the caller
    return fits;
}

// Phase 2 for the same unit (nothing for a row that fits).
__device__ void tk_hist2(const float* logits, int len, int ld, int k, int cap, int* hist, int t, int chunk,
                         int* h) {
    unsigned b1;
    if (tk_fits(hist, k, cap, t, h, &b1)) return;
    for (int i = threadIdx.x; i < TK_BINS; i += blockDim.x) h[i] = 0;
    __syncthreads();
    const float* row = logits + (size_t)t * ld;
    int end = min(len, (chunk + 1) * TK_CHUNK);
    for (int i = chunk * TK_CHUNK + threadIdx.x; i < end; i += blockDim.x) {
        unsigned key = order_key(row[i]);
        if ((key >> 21) == b1) atomicAdd(&h[(key >> 10) & (TK_BINS - 1)], 1);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < TK_BINS; i += blockDim.x)
        if (h[i]) atomicAdd(&hist[(size_t)t * 2 * TK_BINS + TK_BINS + i], h[i]);
    __syncthreads();
}

// A unit's report to its row's finish: units done (bits 48 and up), candidates (24-47) and taken
// keys (0-23), added by one 64-bit atomic to the row's counters[4t + 2..3], so the block that
// finishes the row learns its totals from that atomic's answer rather than a further read.
__device__ __forceinline__ unsigned long long tk_done(int taken, int cands) {
    return (1ull << 48) | ((unsigned long long)cands << 24) | (unsigned long long)taken;
}

// Phase 3 for the same unit; `h` is 2 · TK_BINS ints of shared memory. Returns the bit below the
// threshold prefix (21 or 10), sets `done` (one thread) to the unit's report (tk_done), and
// takes the row's candidate slots from the allocator counters[4t]. `fit_b1`, when not
// negative, is the row's threshold bin, already known to fit. With `use_pre`, `pre` holds this
// thread's logits of the unit, loaded by the caller (TK_PER_THREAD of them, as below).
#define TK_PER_THREAD (TK_CHUNK / TK_THREADS)
__device__ __forceinline__ int tk_collect(const float* logits, int len, int ld, int k, int cap, int* hist,
                                           int* counters, unsigned* taken, unsigned long long* cand, int t,
                                           int chunk, int* h, int fit_b1, bool use_pre,
                                           const float (&pre)[TK_PER_THREAD], unsigned long long& done) {
    __shared__ int warp_tot[33];
    // The threshold prefix: the top 11 bits when their bin fits, else 22 (phase 2 ran).
    unsigned prefix = (unsigned)fit_b1;
    int shift = 21;
    if (fit_b1 < 0) {
        tk_hist_to_smem<2 * TK_BINS>(h, hist + (size_t)t * 2 * TK_BINS);
        __syncthreads();
        int above1, above2;
        int b1 = find_bin_block(h, TK_BINS, k, &above1, warp_tot);
        prefix = (unsigned)b1;
        if (h[b1] > cap) {
            int b2 = find_bin_block(h + TK_BINS, TK_BINS, k - above1, &above2, warp_tot);
            prefix = (prefix << 11) | (unsigned)b2;
            shift = 10;
        }
    }
    const float* row = logits + (size_t)t * ld;
    int begin = chunk * TK_CHUNK, end = min(len, begin + TK_CHUNK);
    int lane = threadIdx.x & 31;
    unsigned below = (1u << lane) - 1u;
    // The unit's keys in 32 words of 32 (a warp's ballot each): the taken ones go to the row's
    // bitmap as they are, a word a ballot, and are counted; the candidates take their places
    // with one atomic for the block (a counter every block of the row hit once per word would
    // serialize thousands of atomics in L2).
    static_assert(TK_CHUNK == 32 * 32 && TK_CHUNK % TK_THREADS == 0, "32 words of 32 keys");
    constexpr int IT = TK_PER_THREAD;
    __shared__ int slot_t[32], slot_c[32];
    unsigned key[IT], mc[IT];
#pragma unroll
    for (int j = 0; j < IT; j++) {  // both loads in flight
        int i = begin + j * TK_THREADS + threadIdx.x;
        key[j] = i < end ? order_key(use_pre ? pre[j] : __ldcg(&row[i])) : 0u;
    }
#pragma unroll
    for (int j = 0; j < IT; j++) {
        int i = begin + j * TK_THREADS + threadIdx.x;
        unsigned top = key[j] >> shift;
        unsigned mt = __ballot_sync(0xffffffffu, i < end && top > prefix);
        mc[j] = __ballot_sync(0xffffffffu, i < end && top == prefix);
        if (lane == 0) {
            int slot = (j * TK_THREADS + threadIdx.x) >> 5;
            slot_t[slot] = __popc(mt);
            slot_c[slot] = __popc(mc[j]);
            if ((i >> 5) < TK_WORDS) taken[(size_t)t * TK_WORDS + (i >> 5)] = mt;
        }
    }
    __syncthreads();
    if (threadIdx.x < 32) {  // the taken count, and the candidates' offsets: a scan, one atomic
        int a = slot_t[lane], b = slot_c[lane], ib = warp_inclusive_sum(b);
        a = __reduce_add_sync(0xffffffffu, a);
        int base_c = 0;
        if (lane == 31) {
            if (ib) base_c = atomicAdd(&counters[4 * t], ib);
            done = tk_done(a, ib);
        }
        slot_c[lane] = __shfl_sync(0xffffffffu, base_c, 31) + ib - b;
    }
    __syncthreads();
    // Collected on the top 11 bits, the candidates' next 11 bits are counted too (the row's
    // second histogram, unused then), so the finish starts from the 22-bit threshold prefix.
    int* hist2 = shift == 21 ? hist + (size_t)t * 2 * TK_BINS + TK_BINS : nullptr;
#pragma unroll
    for (int j = 0; j < IT; j++) {
        int i = begin + j * TK_THREADS + threadIdx.x, slot = (j * TK_THREADS + threadIdx.x) >> 5;
        if ((mc[j] >> lane) & 1u) {
            int at = slot_c[slot] + __popc(mc[j] & below);
            if (at < cap) cand[(size_t)t * cap + at] = ((unsigned long long)key[j] << 32) | (unsigned)i;
            if (hist2) atomicAdd(&hist2[(key[j] >> 10) & (TK_BINS - 1)], 1);
        }
    }
    __syncthreads();  // `h` and the slots are free for the next unit
    return shift;
}

// Both top-k paths finish a row the same way (resolve_candidates, then emit_selected): the keys
// above the threshold prefix are taken; among the candidates (the keys sharing it) histograms of
// the remaining bits find the exact threshold key, everything above it is taken, and of the keys
// equal to it the lowest indices fill the rest. Selected positions are marked in a bitmap over
// the row and written out in ascending order with a block scan, so the result equals a stable
// sort's first k.

// The last step of both top-k paths. `sel` marks the positions already chosen and `tie` those
// equal to the threshold key (bitmaps of `words` words over the row, 16-byte aligned, at most
// 8 · blockDim.x words): the first `ties_needed` ties in index order join, and every chosen
// position is written to `o` in ascending order. Thread i owns `per` words from per · i: the
// fewest of 1, 2, 4 or 8 that cover the row, so a short row's positions spread over the whole
// block (at 8K, 256 threads writing 8 positions each, not 32 writing 64: 4 µs of the top-k).
// Four or eight words are read as 16-byte vectors (a warp reads 1 KB without bank conflicts).
// One block scan of the (chosen, tied) counts gives each thread both how many ties come before
// it and where its output starts, since the ties before it that join number
// min(ties_needed, ties before).
__device__ void emit_selected(const unsigned* sel, const unsigned* tie, int ties_needed, int words, int* o) {
    __shared__ unsigned long long tot[33];
    int per = 8;
    while (per > 1 && (per / 2) * (int)blockDim.x >= words) per /= 2;
    int w0 = threadIdx.x * per;
    // This thread's words w0 + 4h .. w0 + 4h + 3 (fewer when per < 4), zero past them and past
    // the row (stale words of an earlier use). Read twice, for the counts and for the output,
    // rather than held in 16 registers: topk_rows runs three blocks of 512 threads a
    // multiprocessor only at 40 registers.
    auto quad = [&](const unsigned* bits, int h) {
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (per >= 4) {
            if (4 * h < per && w0 + 4 * h < words) v = *reinterpret_cast<const uint4*>(bits + w0 + 4 * h);
        } else if (h == 0 && w0 < words) {
            v.x = bits[w0];
            if (per == 2) v.y = bits[w0 + 1];
        }
        int n = words - (w0 + 4 * h);
        if (n < 4) {
            v.w = 0u;
            if (n < 3) v.z = 0u;
            if (n < 2) v.y = 0u;
            if (n < 1) v.x = 0u;
        }
        return v;
    };
    int n_sel = 0, n_tie = 0;
#pragma unroll
    for (int h = 0; h < 2; h++) {
        uint4 a = quad(sel, h), b = quad(tie, h);
        n_sel += __popc(a.x) + __popc(a.y) + __popc(a.z) + __popc(a.w);
        n_tie += __popc(b.x) + __popc(b.y) + __popc(b.z) + __popc(b.w);
    }
    unsigned long long before;
    block_exclusive_sum(((unsigned long long)n_sel << 32) | (unsigned)n_tie, &before, tot);
    int sel_before = (int)(before >> 32), ties_before = (int)(before & 0xffffffffull);
    int join = min(n_tie, max(0, ties_needed - ties_before));
    int at = sel_before + min(ties_needed, ties_before);
    for (int h = 0; h < 2; h++) {
        uint4 a = quad(sel, h), b = quad(tie, h);
        unsigned sa[4] = {a.x, a.y, a.z, a.w}, tb[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
        for (int j = 0; j < 4; j++) {
            unsigned t = tb[j], s = sa[j];
            while (join > 0 && t) {
                unsigned bit = t & (0u - t);
                s |= bit;
                t ^= bit;
                join--;
            }
            while (s) {
                o[at++] = (w0 + 4 * h + j) * 32 + __ffs(s) - 1;
                s &= s - 1;
            }
        }
    }
}

// The last passes of both top-k paths, by one block. `cand` holds `n` candidates in shared
// memory, each (key << 32) | position, whose keys' bits above `shift` are `prefix` or more: those
// above it are taken; of those sharing it, `need` are to be chosen. Histograms of the remaining
// bits, 11 at a time and 10 last (11, 11, 10 from shift 32, where every candidate shares the
// empty prefix), find the exact threshold key: every candidate above it is marked in `sel`,
// every one equal to it in `tie`. Returns how many ties join (for emit_selected). `hist` holds
// 2,048 ints of shared memory and `warp_tot` 33.
//
// `n_share` is how many candidates share the prefix, as the caller's histograms counted them.
// When at most 32 do (one or two near the threshold of a 128K decode row, after 22 bits), one
// pass moves them into shared memory and one warp ranks them by their full keys, where each
// histogram round zeroes 1,024 or 2,048 bins and searches them behind eight barriers. A count
// the pass finds above 32 falls through to the rounds (marks are idempotent).
__device__ int resolve_candidates(const unsigned long long* cand, int n, unsigned prefix, int shift, int need,
                                  int n_share, unsigned* sel, unsigned* tie, int* hist, int* warp_tot) {
    if (n_share <= 32) {
        __shared__ unsigned long long few[32];
        __shared__ int n_few, joined;
        auto top = [shift](unsigned key) { return shift < 32 ? key >> shift : 0u; };
        if (threadIdx.x == 0) n_few = 0;  // free: the previous call read it before its last barrier
        __syncthreads();                  // and `sel` and `cand` are written
        for (int c = threadIdx.x; c < n; c += blockDim.x) {
            unsigned long long ci = cand[c];
            unsigned key = (unsigned)(ci >> 32), tk = top(key);
            int i = (int)(unsigned)(ci & 0xffffffffull);
            if (tk == prefix) {
                int at = atomicAdd(&n_few, 1);
                if (at < 32) few[at] = ci;
            } else if (tk > prefix) {
                atomicOr(&sel[i >> 5], 1u << (i & 31));
            }
        }
        __syncthreads();
        int m = n_few;
        if (m <= 32) {
            if (threadIdx.x < 32) {
                int lane = threadIdx.x;
                unsigned long long ci = lane < m ? few[lane] : 0ull;
                unsigned key = (unsigned)(ci >> 32);
                int i = (int)(unsigned)(ci & 0xffffffffull), gt = 0, ge = 0;
                for (int j = 0; j < m; j++) {
                    unsigned kj = (unsigned)(few[j] >> 32);
                    gt += kj > key;
                    ge += kj >= key;
                }
                // The threshold is the key with fewer than `need` above it and `need` or more at
                // or above it; with none (need beyond m, or none wanted) every key or none is taken.
                unsigned at_t = __ballot_sync(0xffffffffu, lane < m && gt < need && need <= ge);
                int src = at_t ? __ffs(at_t) - 1 : 0;
                unsigned t_key = __shfl_sync(0xffffffffu, key, src);
                int above = __shfl_sync(0xffffffffu, gt, src);
                if (!at_t) above = need > 0 ? m : 0;
                if (lane < m) {
                    bool take = at_t ? key > t_key : need > 0;
                    if (take) atomicOr(&sel[i >> 5], 1u << (i & 31));
                    else if (at_t && key == t_key) atomicOr(&tie[i >> 5], 1u << (i & 31));
                }
                if (lane == 0) joined = need - above;
            }
            __syncthreads();  // every mark is in place, and `joined` written
            return joined;
        }
    }
    unsigned cur = prefix;  // the threshold key's bits above `hi`, found so far
    for (int hi = shift; hi > 0;) {
        const bool first = hi == shift;
        int s = hi > 11 ? hi - 11 : 0, nb = 1 << (hi - s);
        // The key's bits above `hi` (none at 32: a shift by 32 is undefined).
        auto top = [hi](unsigned key) { return hi < 32 ? key >> hi : 0u; };
        __syncthreads();  // every thread is done with `hist` (and `sel` and `cand` are written)
        for (int i = threadIdx.x; i < nb; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        for (int c = threadIdx.x; c < n; c += blockDim.x) {
            unsigned key = (unsigned)(cand[c] >> 32);
            if (top(key) == cur) atomicAdd(&hist[(key >> s) & (nb - 1)], 1);
        }
        __syncthreads();
        int above;
        unsigned b = (unsigned)find_bin_block(hist, nb, need, &above, warp_tot);
        for (int c = threadIdx.x; c < n; c += blockDim.x) {
            unsigned long long ci = cand[c];
            unsigned key = (unsigned)(ci >> 32);
            int i = (int)(unsigned)(ci & 0xffffffffull);
            if (top(key) != cur) {
                if (first && top(key) > cur) atomicOr(&sel[i >> 5], 1u << (i & 31));
                continue;
            }
            unsigned v = (key >> s) & (nb - 1);
            if (v > b) atomicOr(&sel[i >> 5], 1u << (i & 31));
            else if (v == b && s == 0) atomicOr(&tie[i >> 5], 1u << (i & 31));
        }
        need -= above;
        cur = (cur << (hi - s)) | b;
        hi = s;
    }
    __syncthreads();  // every mark is in place
    return need;
}

// One block selects the top k of `row[0..len)` into `o`. Every row ends with one marking pass:
// the keys above a band [lo, hi] of order keys are marked in a bitmap (one ballot per 32
// positions), the keys inside it are kept as candidates in shared memory, where histograms of
// their bits find the exact threshold key, and emit_selected resolves ties by index.
//
// A row of at least TKS_MIN keys first takes its band from a sample (tk_sample_band), so that
// one pass over the row settles it when the band holds the k-th key: at most k keys above it,
// at least k with it, at most TKR_CAP inside. Otherwise (a sample that misled, many equal keys)
// and for shorter rows, histograms find the threshold prefix exactly, in one pass over the row
// (its top 11 bits) or two (the next 11, when that bin holds more than TKR_CAP keys), and the
// band is the prefix's keys. Rows longer than TK_MAX_LEN, or with more than TKR_CAP keys sharing
// the exact prefix (e.g. many equal keys), take topk_row_block. `smem` is TKR_SMEM bytes.
#define TKR_CAP 4096
// Threads of a topk_rows block (mod.rs launches this many). Three blocks of 512 share a
// multiprocessor (40 registers a thread), where two of 1,024 did (32): a row's light phases
// (its sample, its threshold, its emit) then leave two other rows reading, not one. 0.94 ->
// 0.86 ms for the last 4,096 rows of a 128K prefill (BENCHMARKS.md).
#define TKR_THREADS 512
#define TKR_BLOCKS 3
static_assert(8 * TKR_THREADS >= TK_WORDS, "emit_selected: at most eight bitmap words a thread");
#define TKR_SMEM (TK_BINS * 4 + 2 * TK_WORDS * 4 + TKR_CAP * 8)
#define TKS_EVERY 16                   // one key in 16 is sampled
#define TKS_RUNS 256                   // runs of 32 sampled keys, at most
#define TKS_MIN (64 * 32 * TKS_EVERY)  // 32,768: shorter rows are not sampled

// The marking pass over `row` for the band [lo, hi] (TKR_THREADS threads): keys above `hi` are
// marked in `sel` (every word of the row written), keys inside it are appended to `cand` (the
// first TKR_CAP of them; `*n_cand` counts them all), in no particular order. Its first form was
// bound by instruction issue (ncu: 0.8 warps issued a cycle per scheduler, about 55
// instructions a key), so a round is kept short: each thread loads R keys at fixed offsets from one address (bounds checked only
// in the last round), two ballots a key give its bitmap word and its candidates, and one shared
// atomic a warp a round places all of the round's candidates, where a lane-0 atomic per 32 keys
// came with the compiler's warp-aggregation sequence each time. With the exact path alone this
// took the last 4,096 rows of a 128K prefill from 1.48 to 1.30 ms (BENCHMARKS.md).
//
// R is 12, the most that fits 40 registers without spilling (13 spills). A block's reading rate
// is its loads in flight over their latency, and while a third of the blocks are in a row's
// light phases the others do not read faster unless each keeps more in flight: eight a thread
// took 0.85-0.90 ms for those rows, twelve 0.76-0.82 (ten 0.86-0.88; BENCHMARKS.md).
__device__ void tk_mark_band(const float* row, int len, unsigned lo, unsigned hi, unsigned* sel,
                             unsigned long long* cand, int* n_cand) {
    constexpr int R = 12, SPAN = R * TKR_THREADS;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    unsigned below = (1u << lane) - 1u, width = hi - lo;  // in the band: key - lo <= width
    for (int base = 0; base < len; base += SPAN) {
        const float* p = row + base + threadIdx.x;
        unsigned* sw = sel + (base >> 5) + warp;
        const bool tail = base + SPAN > len;  // the same in every thread
        float v[R];
#pragma unroll
        for (int u = 0; u < R; u++) v[u] = !tail || base + u * TKR_THREADS + (int)threadIdx.x < len ? p[u * TKR_THREADS] : 0.f;
        unsigned mc[R];
        int n = 0;
#pragma unroll
        for (int u = 0; u < R; u++) {
            unsigned key = order_key(v[u]);
            bool in = !tail || base + u * TKR_THREADS + (int)threadIdx.x < len;
            unsigned mt = __ballot_sync(0xffffffffu, in && key > hi);
            mc[u] = __ballot_sync(0xffffffffu, in && key - lo <= width);
            if (lane == 0 && (!tail || base + u * TKR_THREADS + 32 * warp < len)) sw[u * (TKR_THREADS / 32)] = mt;
            n += __popc(mc[u]);
        }
        if (n) {  // the same in every lane
            int at;
            if (lane == 0) asm volatile("atom.shared.add.u32 %0, [%1], %2;" : "=r"(at) : "r"(smem_u32(n_cand)), "r"(n));
            at = __shfl_sync(0xffffffffu, at, 0);
#pragma unroll
            for (int u = 0; u < R; u++) {
                if (mc[u] == 0u) continue;  // most groups of 32 keys of a long row hold no candidate
                int slot = at + __popc(mc[u] & below);
                if (((mc[u] >> lane) & 1u) && slot < TKR_CAP)
                    cand[slot] = ((unsigned long long)order_key(v[u]) << 32) | (unsigned)(base + u * TKR_THREADS + threadIdx.x);
                at += __popc(mc[u]);
            }
        }
    }
}

// The sampled band of a row of at least TKS_MIN keys: runs of 32 keys (one warp's 128-byte load)
// spread evenly over the row, one key in TKS_EVERY. About r = k·m/len of the m sampled keys lie
// above the row's k-th key; the band runs from the sample's key of rank r + δ (from the top) to
// its key of rank r - δ, δ = 5√r + 16 (five standard deviations of a binomial count, and some),
// each found to 22 bits by two histograms: the 11-bit bin, then the next 11 bits in it, each
// end widened to its whole 22-bit bin. A rank past the sample leaves that end open. Returns
// false, with nothing read, when the expected band would not fit three quarters of TKR_CAP
// (large k against len). The sample's keys are loaded together, then wait in `keys` (32 ·
// TKS_RUNS) for the three loops over them: topk_rows runs three blocks a multiprocessor only
// at 40 registers a thread. `h1` and `h2` are 2,048-int histograms.
__device__ bool tk_sample_band(const float* row, int len, int k, unsigned* keys, int* h1, int* h2, unsigned* lo,
                               unsigned* hi) {
    int runs = min(TKS_RUNS, len / (32 * TKS_EVERY)), m = 32 * runs;
    float r = (float)k * (float)m / (float)len, d = 5.f * sqrtf(r) + 16.f;
    if (2.f * d * (float)len / (float)m > 0.75f * TKR_CAP) return false;
    int spacing = len / runs;  // at least 32 · TKS_EVERY, so a run stays inside its share
    // Eight loads a thread in flight together, in as many rounds as the sample needs (two of
    // 32 · TKS_RUNS keys at TKR_THREADS 512).
    for (int j0 = 0; j0 < m; j0 += 8 * TKR_THREADS) {
        float v[8];
#pragma unroll
        for (int u = 0; u < 8; u++) {
            int j = j0 + u * TKR_THREADS + threadIdx.x;
            v[u] = j < m ? row[(j >> 5) * spacing + (j & 31)] : 0.f;
        }
#pragma unroll
        for (int u = 0; u < 8; u++) {
            int j = j0 + u * TKR_THREADS + threadIdx.x;
            if (j < m) keys[j] = order_key(v[u]);
        }
    }
    for (int i = threadIdx.x; i < TK_BINS; i += blockDim.x) h1[i] = h2[i] = 0;
    __syncthreads();
    for (int j = threadIdx.x; j < m; j += blockDim.x) atomicAdd(&h1[keys[j] >> 21], 1);
    __syncthreads();
    int want_hi = (int)floorf(r - d), want_lo = (int)ceilf(r + d);
    bool open_hi = want_hi < 1, open_lo = want_lo > m;  // the same in every thread
    // Both ends searched together (an open end searches for rank 1, unused).
    int b1[2], above[2];
    find_bin_pair(h1, open_hi ? 1 : want_hi, h1, open_lo ? 1 : want_lo, b1, above);
    for (int i = threadIdx.x; i < TK_BINS; i += blockDim.x) h1[i] = 0;  // read by all before find_bin_pair's last barrier
    __syncthreads();
    for (int j = threadIdx.x; j < m; j += blockDim.x) {
        unsigned key = keys[j];
        int top = (int)(key >> 21), next = (int)((key >> 10) & (TK_BINS - 1));
        if (!open_hi && top == b1[0]) atomicAdd(&h1[next], 1);
        if (!open_lo && top == b1[1]) atomicAdd(&h2[next], 1);
    }
    __syncthreads();
    int b2[2], unused[2];
    find_bin_pair(h1, open_hi ? 1 : want_hi - above[0], h2, open_lo ? 1 : want_lo - above[1], b2, unused);
    *hi = open_hi ? 0xffffffffu : ((unsigned)b1[0] << 21) | ((unsigned)b2[0] << 10) | 1023u;
    *lo = open_lo ? 0u : ((unsigned)b1[1] << 21) | ((unsigned)b2[1] << 10);
    return true;
}

__device__ void topk_row_fast(const float* row, int len, int k, int* o, unsigned char* smem) {
    __shared__ int warp_tot[33];
    __shared__ int n_cand_s, n_above_s;
    if (len <= k) {
        for (int i = threadIdx.x; i < k; i += blockDim.x) o[i] = i < len ? i : -1;
        return;
    }
    if (len > TK_MAX_LEN) {
        topk_row_block(row, len, k, o);
        return;
    }
    int* hist = reinterpret_cast<int*>(smem);                         // TK_BINS
    unsigned* sel = reinterpret_cast<unsigned*>(hist + TK_BINS);      // TK_WORDS
    unsigned* tie = sel + TK_WORDS;                                   // TK_WORDS
    unsigned long long* cand = reinterpret_cast<unsigned long long*>(tie + TK_WORDS);  // TKR_CAP
    int words = (len + 31) / 32;
    for (int i = threadIdx.x; i < words; i += blockDim.x) tie[i] = 0u;
    if (threadIdx.x == 0) n_cand_s = n_above_s = 0;

    // The sampled band: its keys wait in the candidates' space and its second histogram in the
    // bitmap's, both free until the marking pass; its barriers publish the zeroed counts.
    unsigned lo, hi;
    if (len >= TKS_MIN &&
        tk_sample_band(row, len, k, reinterpret_cast<unsigned*>(cand), hist, reinterpret_cast<int*>(sel), &lo, &hi)) {
        tk_mark_band(row, len, lo, hi, sel, cand, &n_cand_s);
        __syncthreads();
        // The keys above the band, from the bitmap (counted in the pass, the count took a
        // register the pass could not spare: it spilled).
        int above = 0;
        for (int w = threadIdx.x; w < words; w += blockDim.x) above += __popc(sel[w]);
        above = __reduce_add_sync(0xffffffffu, above);
        if ((threadIdx.x & 31) == 0 && above) atomicAdd(&n_above_s, above);
        __syncthreads();
        int n_cand = n_cand_s, need = k - n_above_s;
        if (need >= 0 && need <= n_cand && n_cand <= TKR_CAP) {
            // The k-th key is a candidate, found among them from their full keys.
            int ties = need > 0 ? resolve_candidates(cand, n_cand, 0u, 32, need, n_cand, sel, tie, hist, warp_tot) : 0;
            emit_selected(sel, tie, ties, words, o);
            return;
        }
        __syncthreads();  // every thread has read the counts
        if (threadIdx.x == 0) n_cand_s = 0;
    }

    // Histograms over the row, 11 bits at a time, until the threshold prefix's bin is small.
    int need = k, count = 0;
    unsigned prefix = 0;
    int shift = 32;  // keys share prefix in their bits above `shift`
    while (shift == 32 || (shift == 21 && count > TKR_CAP)) {
        int s = shift - 11;
        __syncthreads();
        for (int i = threadIdx.x; i < TK_BINS; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        // Each thread issues eight loads, then their atomics. Loaded one at a time, every load
        // was waited for: 2.29 -> 1.48 ms for the last 4,096 rows of a 128K prefill (with the
        // same change in the marking pass).
        auto add = [&](float v) {
            unsigned key = order_key(v);
            if (shift == 32 || (key >> shift) == prefix) atomicAdd(&hist[(key >> s) & (TK_BINS - 1)], 1);
        };
        int i = threadIdx.x;
        for (; i + 7 * TKR_THREADS < len; i += 8 * TKR_THREADS) {
            const float* p = row + i;
            float v[8];
#pragma unroll
            for (int u = 0; u < 8; u++) v[u] = p[u * TKR_THREADS];
#pragma unroll
            for (int u = 0; u < 8; u++) add(v[u]);
        }
        for (; i < len; i += TKR_THREADS) add(row[i]);
        __syncthreads();
        int above;
        int b = find_bin_block(hist, TK_BINS, need, &above, warp_tot);
        count = hist[b];
        need -= above;
        prefix = (shift == 32 ? 0u : prefix << 11) | (unsigned)b;
        shift = s;
    }
    lo = prefix << shift;
    tk_mark_band(row, len, lo, lo | ((1u << shift) - 1u), sel, cand, &n_cand_s);
    __syncthreads();
    int n_cand = n_cand_s;
    if (n_cand > TKR_CAP) {
        topk_row_block(row, len, k, o);
        return;
    }
    need = resolve_candidates(cand, n_cand, prefix, shift, need, n_cand, sel, tie, hist, warp_tot);
    emit_selected(sel, tie, need, words, o);
}


// Phase 4 for row t; `smem` holds TKF_SMEM bytes. The row's candidates, its bitmap of taken
// keys and (collected on 11 bits) its second histogram are copied into it first (at most TK_CAP
// candidates: `cap` must not exceed it), so the passes over them wait on shared memory rather
// than L2.
#define TK_CAP 8192
#define TKF_SMEM (TK_CAP * 8 + 2 * TK_WORDS * 4 + TK_BINS * 4)
__device__ void tk_finish(const float* logits, int len, int ld, int k, int* hist, int* counters,
                          const unsigned* taken, const unsigned long long* cand, int cap, int* out, int t,
                          int n_taken, int n_cand, int shift, unsigned char* smem) {
    unsigned long long* cs = reinterpret_cast<unsigned long long*>(smem);  // TK_CAP
    unsigned* sel = reinterpret_cast<unsigned*>(cs + TK_CAP);              // TK_WORDS
    unsigned* tie = sel + TK_WORDS;                                        // TK_WORDS
    int* hb = reinterpret_cast<int*>(tie + TK_WORDS);                      // TK_BINS
    __shared__ int warp_tot[33];
    int* o = out + (size_t)t * k;
    int* row_hist = hist + (size_t)t * 2 * TK_BINS;
    __syncthreads();  // the block is done with the previous unit's shared memory
    bool select = len > k && n_cand <= cap && len <= TK_MAX_LEN;
    int words = (len + 31) / 32;
    // Every load in one round, 16 bytes each: a thread's share of the candidates (two a load),
    // of the bitmap and (collected on 11 bits) of the second histogram. These loads wait on L2,
    // once; the same loads a value at a time, stored before the next, waited once per load.
    if (select) {
        static_assert(TK_CAP % (2 * TK_THREADS) == 0 && TK_WORDS <= 8 * TK_THREADS && TK_BINS == 4 * TK_THREADS,
                      "whole 16-byte loads, one round");
        constexpr int CPT = TK_CAP / 2 / TK_THREADS;  // candidate pairs a thread
        const ulonglong2* c = reinterpret_cast<const ulonglong2*>(cand + (size_t)t * cap);
        const uint4* w = reinterpret_cast<const uint4*>(taken + (size_t)t * TK_WORDS);
        int pairs = (n_cand + 1) / 2, quads = (words + 3) / 4;  // within the buffers: cap, TK_WORDS
        ulonglong2 cv[CPT];
        uint4 wv[2];
        int4 hv;
#pragma unroll
        for (int j = 0; j < CPT; j++) {
            int i = j * TK_THREADS + threadIdx.x;
            if (i < pairs) cv[j] = __ldcg(&c[i]);
        }
#pragma unroll
        for (int j = 0; j < 2; j++) {
            int i = j * TK_THREADS + threadIdx.x;
            if (i < quads) wv[j] = __ldcg(&w[i]);
        }
        if (shift == 21) hv = __ldcg(reinterpret_cast<const int4*>(row_hist + TK_BINS) + threadIdx.x);
#pragma unroll
        for (int j = 0; j < CPT; j++) {
            int i = j * TK_THREADS + threadIdx.x;
            if (i < pairs) {
                cs[2 * i] = cv[j].x;
                if (2 * i + 1 < n_cand) cs[2 * i + 1] = cv[j].y;
            }
        }
        // Whole quads: words past the row are masked by emit_selected.
#pragma unroll
        for (int j = 0; j < 2; j++) {
            int i = j * TK_THREADS + threadIdx.x;
            if (i < quads) {
                reinterpret_cast<uint4*>(sel)[i] = wv[j];
                reinterpret_cast<uint4*>(tie)[i] = make_uint4(0u, 0u, 0u, 0u);
            }
        }
        if (shift == 21) reinterpret_cast<int4*>(hb)[threadIdx.x] = hv;
    }
    // The row's histograms are read for the last time and its counters are done with (the
    // totals came with the last report): zero both for the next call (every thread has read the
    // histogram before the barrier).
    __syncthreads();
    for (int i = threadIdx.x; i < 2 * TK_BINS; i += blockDim.x) row_hist[i] = 0;
    if (threadIdx.x < 4) counters[4 * t + threadIdx.x] = 0;
    if (len <= k) {
        for (int i = threadIdx.x; i < k; i += blockDim.x) o[i] = i < len ? i : -1;
        return;
    }
    if (!select) {  // the candidates overflowed: one block does the row
        topk_row_block(logits + (size_t)t * ld, len, k, o);
        return;
    }
    // Every candidate shares the threshold prefix (a row of more than k keys has at least one).
    // Collected on 11 bits, the second histogram extends it to 22 first.
    unsigned prefix = (unsigned)(cs[0] >> 32) >> shift;
    int need = k - n_taken, n_share = n_cand;
    if (shift == 21) {
        __shared__ int found[2];
        if (threadIdx.x < 32) {
            int above, b = find_bin_warp(hb, need, &above);
            if (threadIdx.x == 0) found[0] = b, found[1] = above;
        }
        __syncthreads();
        unsigned b2 = (unsigned)found[0];
        int above = found[1];
        need -= above;
        n_share = hb[b2];
        prefix = (prefix << 11) | b2;
        shift = 10;
    }
    need = resolve_candidates(cs, n_cand, prefix, shift, need, n_share, sel, tie, hb, warp_tot);
    emit_selected(sel, tie, need, words, o);
}

// The decode top-k in one launch: grid = min(multiprocessors, rows x chunks) blocks of 512, all
// resident (a cooperative launch), each taking units (row, chunk) in turn; `bar` is the grid
// barrier (2 ints, zeroed).
// With `hist_ready`, indexer_decode_bf16 has built phase 1's histograms already.
extern "C" __global__ void __launch_bounds__(TK_THREADS)
topk_decode_fused(const float* logits, const int* lens, int ld, int k, int* hist, int* counters,
                  unsigned* taken, unsigned long long* cand, int cap, int* out, unsigned* bar, int rows,
                  int hist_ready) {
    extern __shared__ __align__(16) unsigned char tk_smem[];
    __shared__ int last;
    __shared__ unsigned long long done, total;  // this unit's report (tk_done), the row's after it
    int* h = reinterpret_cast<int*>(tk_smem);
    // The attention launched after it may start placing blocks (each waits for this grid's end
    // before reading the indices; see sparse_mla_body); they take the multiprocessors this
    // grid's blocks leave.
    asm volatile("griddepcontrol.launch_dependents;");
    int chunks = (ld + TK_CHUNK - 1) / TK_CHUNK, units = rows * chunks;
    // Launched after the indexer that writes its logits and histogram: wait for that grid's end.
    asm volatile("griddepcontrol.wait;" ::: "memory");
    if (!hist_ready) {
        for (int u = blockIdx.x; u < units; u += gridDim.x) {
            int t = u / chunks, chunk = u % chunks, len = min(lens[t], ld);
            if (len > k && chunk * TK_CHUNK < len) tk_hist1(logits, len, ld, hist, t, chunk, h);
        }
        grid_sync(bar);
    }
    // One row whose threshold bin fits needs neither phase 2 nor the barrier after it (every
    // block reads the same histogram, so all agree).
    unsigned b1 = 0;
    bool skip2 = false;
    // One row: the block's first unit is chunk blockIdx.x, and its logits are loaded here, with
    // the histogram, not after it (keys past the row's length are masked by tk_collect).
    float pre[TK_PER_THREAD];
    if (rows == 1) {
#pragma unroll
        for (int j = 0; j < TK_PER_THREAD; j++) {
            int i = blockIdx.x * TK_CHUNK + j * TK_THREADS + threadIdx.x;
            pre[j] = i < ld ? __ldcg(&logits[i]) : 0.f;
        }
        // The histogram is read before the length is known, so the two loads overlap; a row of at
        // most k keys has an empty histogram, and its answer is not used.
        bool fits = tk_fits(hist, k, cap, 0, h, &b1);
        skip2 = min(lens[0], ld) <= k || fits;
    }
    if (!skip2) {
        for (int u = blockIdx.x; u < units; u += gridDim.x) {
            int t = u / chunks, chunk = u % chunks, len = min(lens[t], ld);
            if (len > k && chunk * TK_CHUNK < len) tk_hist2(logits, len, ld, k, cap, hist, t, chunk, h);
        }
        grid_sync(bar);
    }
    for (int u = blockIdx.x; u < units; u += gridDim.x) {
        int t = u / chunks, chunk = u % chunks, len = min(lens[t], ld);
        // A row's units: its chunks, or one for a row of at most k keys (nothing to collect).
        int row_units = len > k ? (len + TK_CHUNK - 1) / TK_CHUNK : 1;
        if (chunk >= row_units) continue;
        int shift = 0;
        if (len > k)
            shift = tk_collect(logits, len, ld, k, cap, hist, counters, taken, cand, t, chunk, h,
                               skip2 ? (int)b1 : -1, rows == 1 && u == (int)blockIdx.x, pre, done);
        else if (threadIdx.x == 0)
            done = tk_done(0, 0);
        // The last block to finish collecting a unit of the row finishes it (no grid-wide wait):
        // each block's fence-then-report orders its writes before the finisher's reads. Rows
        // of up to 2^24 keys are counted exactly; longer ones are not selected from candidates.
        __syncthreads();
        if (threadIdx.x == 0) {
            __threadfence();
            unsigned long long* report = reinterpret_cast<unsigned long long*>(counters + 4 * t + 2);
            total = atomicAdd(report, done) + done;
            last = (int)(total >> 48) == row_units;
            __threadfence();
        }
        __syncthreads();
        if (last) {
            int n_taken = (int)(total & 0xffffff), n_cand = (int)((total >> 24) & 0xffffff);
            tk_finish(logits, len, ld, k, hist, counters, taken, cand, cap, out, t, n_taken, n_cand, shift,
                      tk_smem);
            __syncthreads();  // the next unit reuses the shared memory
        }
    }
}

// ---------------------------------------------------------------------------------------------
// FP8 indexer (the production path of dsa.md §1.3): q and k are rotated by the 128-point
// Hadamard transform, then quantized to e4m3 with one power-of-two scale per 128 values (per
// token for k, per token and head for q). Because ReLU(a·x) = a·ReLU(x) for a > 0, the scales
// leave the matrix product: q's scale is folded into the head weight, k's is applied after the
// head sum.

// A row's scale from its largest magnitude: ue8m0, the smallest power of two that keeps the row
// within ±IX_FP8_MAX.
__device__ __forceinline__ float e4m3_row_scale(float amax) {
    return exp2f(ceilf(log2f(fmaxf(amax, 1e-4f) / IX_FP8_MAX)));
}

// v[0..3] · inv as four e4m3 codes, v[0] in the low byte.
__device__ __forceinline__ unsigned pack_e4m3x4(const float* v, float inv) {
    unsigned short lo, hi;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(lo) : "f"(v[1] * inv), "f"(v[0] * inv));
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(hi) : "f"(v[3] * inv), "f"(v[2] * inv));
    return (unsigned)lo | ((unsigned)hi << 16);
}

// One warp's row of 128 values, lane l holding 4l..4l+3, to e4m3 at `q8` with its scale at
// `scale`.
__device__ __forceinline__ void quant_e4m3_row(const float* v, int lane, unsigned char* q8, float* scale) {
    float amax = 0.f;
#pragma unroll
    for (int i = 0; i < 4; i++) amax = fmaxf(amax, fabsf(v[i]));
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    float s = e4m3_row_scale(amax);
    *reinterpret_cast<unsigned*>(q8 + lane * 4) = pack_e4m3x4(v, 1.f / s);
    if (lane == 0) *scale = s;
}

// Eight lanes per row of 128 bf16, four rows a warp: Walsh–Hadamard rotation (scaled by
// 128^-0.5), amax, e4m3. Lane j of a row's eight holds elements 16j..16j+15, read and written 16
// bytes at a time; strides 1 to 8 stay in the lane and only 16 to 64 cross lanes (13 shuffles a
// row where a warp to a row took 25). The stages run stride 1 first, each pair's lower element
// taking the sum and the upper the difference, as in the warp-per-row kernels, so every value
// is the same bits. Rows start 16-byte aligned (the operands are whole allocations).
extern "C" __global__ void __launch_bounds__(256)
hadamard_quant_e4m3(const bf16* x, unsigned char* q8, float* scale, int rows) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 3, j = threadIdx.x & 7;
    // A row's eight lanes live or leave together, so they shuffle among the live ones.
    unsigned live = __ballot_sync(0xffffffffu, row < rows);
    if (row >= rows) return;
    const uint4* src = reinterpret_cast<const uint4*>(x + (size_t)row * 128 + j * 16);
    uint4 in[2] = {src[0], src[1]};
    const unsigned* w = reinterpret_cast<const unsigned*>(in);
    float v[16];
#pragma unroll
    for (int i = 0; i < 8; i++) {
        v[2 * i] = bf16_to_f32((bf16)(w[i] & 0xffffu));
        v[2 * i + 1] = bf16_to_f32((bf16)(w[i] >> 16));
    }
#pragma unroll
    for (int h = 1; h < 16; h <<= 1)
#pragma unroll
        for (int i = 0; i < 16; i++)
            if (!(i & h)) {
                float a = v[i], b = v[i + h];
                v[i] = a + b;
                v[i + h] = a - b;
            }
#pragma unroll
    for (int m = 1; m < 8; m <<= 1) {
        bool upper = (j & m) != 0;
#pragma unroll
        for (int i = 0; i < 16; i++) {
            float other = __shfl_xor_sync(live, v[i], m);
            v[i] = upper ? other - v[i] : v[i] + other;
        }
    }
    float amax = 0.f;
#pragma unroll
    for (int i = 0; i < 16; i++) {
        v[i] *= 0.08838834764831845f;  // 128^-0.5
        amax = fmaxf(amax, fabsf(v[i]));
    }
    for (int m = 1; m < 8; m <<= 1) amax = fmaxf(amax, __shfl_xor_sync(live, amax, m));
    float sc = e4m3_row_scale(amax), inv = 1.f / sc;
    *reinterpret_cast<uint4*>(q8 + (size_t)row * 128 + j * 16) =
        make_uint4(pack_e4m3x4(v, inv), pack_e4m3x4(v + 4, inv), pack_e4m3x4(v + 8, inv), pack_e4m3x4(v + 12, inv));
    if (j == 0) scale[row] = sc;
}


// ---------------------------------------------------------------------------------------------
// MoE routing (noaux_tc), one warp per token: sigmoid scores, + correction bias for choosing,
// the best `topk_group` groups by their two best experts, the best `k` experts inside them
// (ties to the lower index), weights = plain scores renormalized and scaled. Experts are written
// in ascending order, as the CPU reference returns them. E <= 256, k <= 32, groups <= 32.
extern "C" __global__ void moe_route(const float* logits, const float* bias, int* ids, float* weights,
                                     int T, int E, int groups, int topk_group, int k, int norm,
                                     float scale) {
    __shared__ float sc[8][256];
    __shared__ float ch[8][256];
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int t = blockIdx.x * 8 + w;
    if (t >= T) return;
    float* score = sc[w];
    float* choice = ch[w];
    for (int e = lane; e < E; e += 32) {
        float s = 1.f / (1.f + expf(-logits[(size_t)t * E + e]));
        score[e] = s;
        choice[e] = s + bias[e];
    }
    __syncwarp();
    int per = E / groups;
    // Group scores: lane g sums its group's two best choices.
    float gs = -__int_as_float(0x7f800000);
    if (lane < groups) {
        float b1 = -__int_as_float(0x7f800000), b2 = b1;
        for (int i = 0; i < per; i++) {
            float v = choice[lane * per + i];
            if (v > b1) { b2 = b1; b1 = v; } else if (v > b2) { b2 = v; }
        }
        gs = b1 + b2;
    }
    // Keep the best topk_group groups: repeated warp argmax (ties to the lower group).
    unsigned kept = 0u;
    for (int r = 0; r < topk_group; r++) {
        float v = (lane < groups && !((kept >> lane) & 1u)) ? gs : -__int_as_float(0x7f800000);
        int idx = lane;
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, v, o);
            int oi = __shfl_xor_sync(0xffffffffu, idx, o);
            if (ov > v || (ov == v && oi < idx)) { v = ov; idx = oi; }
        }
        kept |= 1u << idx;
    }
    // The best k experts of the kept groups.
    unsigned long long taken[4] = {0ull, 0ull, 0ull, 0ull};  // bitmask over 256 experts
    float my_weight = 0.f;
    int my_id = -1;
    for (int r = 0; r < k; r++) {
        float v = -__int_as_float(0x7f800000);
        int idx = 0x7fffffff;
        for (int e = lane; e < E; e += 32) {
            bool ok = ((kept >> (e / per)) & 1u) && !((taken[e >> 6] >> (e & 63)) & 1ull);
            float c = ok ? choice[e] : -__int_as_float(0x7f800000);
            if (c > v || (c == v && e < idx)) { v = c; idx = e; }
        }
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, v, o);
            int oi = __shfl_xor_sync(0xffffffffu, idx, o);
            if (ov > v || (ov == v && oi < idx)) { v = ov; idx = oi; }
        }
        taken[idx >> 6] |= 1ull << (idx & 63);
        if (lane == r) { my_id = idx; my_weight = score[idx]; }
    }
    float sum = lane < k ? my_weight : 0.f;
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    float wgt = (norm ? my_weight / (sum + 1e-20f) : my_weight) * scale;
    // Ascending expert order: rank of my id among the chosen.
    int rank = 0;
    for (int j = 0; j < k; j++) {
        int other = __shfl_sync(0xffffffffu, my_id, j);
        if (lane < k && other < my_id) rank++;
    }
    if (lane < k) {
        ids[(size_t)t * k + rank] = my_id;
        weights[(size_t)t * k + rank] = wgt;
    }
}

// ---------------------------------------------------------------------------------------------
// The whole model's glue (gpu/model.rs). Activations stay f32 between steps; whatever feeds a
// matrix product is written as bf16. Caches are paged in pages of 128 rows: MLA rows of 576 bf16
// (RMSNorm'd latent | interleaved-RoPE key), indexer rows of 128 bf16 (LayerNorm, NeoX RoPE on
// the leading 64 dims, Hadamard). `rows[i]` is the cache row token i is written to. RoPE tables
// are [positions, 32] (rope dim 64).

// RMSNorm of row blockIdx.x (x rows `ldx` floats apart) into bf16 rows of n.
extern "C" __global__ void rms_norm_bf16(const float* x, const float* w, bf16* y, int n, float eps,
                                         int ldx) {
    const float* xr = x + (size_t)blockIdx.x * ldx;
    bf16* yr = y + (size_t)blockIdx.x * n;
    __shared__ float part[32];
    float s = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += xr[i] * xr[i];
    s = block_reduce<false>(s, part);
    float r = rsqrtf(s / n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = f32_to_bf16(xr[i] * r * w[i]);
}

// One thread keeps the stream busy for `ns` nanoseconds of GPU time. A benchmark queues it ahead
// of the work it times, so the work is queued before the GPU reaches it and the interval between
// its events is the GPU's time, not the host's launch latency.
extern "C" __global__ void hold(long long ns) {
    long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        __nanosleep(1000);
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while (t - t0 < ns);
}

extern "C" __global__ void embed_rows(const float* table, const int* tokens, float* out, int d) {
    const float* src = table + (size_t)tokens[blockIdx.x] * d;
    float* dst = out + (size_t)blockIdx.x * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) dst[i] = src[i];
}

extern "C" __global__ void to_bf16(const float* x, bf16* y, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = f32_to_bf16(x[i]);
}

// gu holds rows of [gate (inter) | up (inter)]; out[r, i] = silu(gate) * up, as bf16.
extern "C" __global__ void swiglu_bf16(const float* gu, bf16* out, long long rows, int inter) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * inter) return;
    long long r = i / inter;
    int c = (int)(i % inter);
    float g = gu[r * 2 * inter + c], u = gu[r * 2 * inter + inter + c];
    out[i] = f32_to_bf16(g / (1.f + __expf(-g)) * u);
}

// One warp per token: the MLA cache row from kv_a's output [n, 576]: RMSNorm of the latent
// (512), interleaved RoPE of the shared key (64).
extern "C" __global__ void kv_prep(const float* kv, const float* norm_w, const int* positions,
                                   const float* cos_t, const float* sin_t, const int* rows,
                                   bf16* cache, int n, float eps) {
    int tok = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (tok >= n) return;
    const float* x = kv + (size_t)tok * 576;
    bf16* o = cache + (size_t)rows[tok] * 576;
    float v[16], s = 0.f;
#pragma unroll
    for (int i = 0; i < 16; i++) {
        v[i] = x[lane * 16 + i];
        s += v[i] * v[i];
    }
    for (int m = 16; m > 0; m >>= 1) s += __shfl_xor_sync(0xffffffffu, s, m);
    float r = rsqrtf(s / 512.f + eps);
#pragma unroll
    for (int i = 0; i < 16; i++) o[lane * 16 + i] = f32_to_bf16(v[i] * r * norm_w[lane * 16 + i]);
    int pos = positions[tok];
    float c = cos_t[pos * 32 + lane], sn = sin_t[pos * 32 + lane];
    float a = x[512 + 2 * lane], b = x[513 + 2 * lane];
    o[512 + 2 * lane] = f32_to_bf16(a * c - b * sn);
    o[513 + 2 * lane] = f32_to_bf16(a * sn + b * c);
}

// NeoX RoPE on the leading 64 of a 128-vector held 4 per lane (pairs (p, p + 32)), then the
// Hadamard rotation scaled by 128^-0.5.
__device__ __forceinline__ void index_rope_hadamard(float* v, int lane, int pos, const float* cos_t,
                                                    const float* sin_t) {
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float other = __shfl_xor_sync(0xffffffffu, v[i], 8);
        if (lane < 16) {
            int p = 4 * (lane & 7) + i;
            float c = cos_t[pos * 32 + p], s = sin_t[pos * 32 + p];
            v[i] = lane < 8 ? v[i] * c - other * s : other * s + v[i] * c;
        }
    }
    float a0 = v[0] + v[1], a1 = v[0] - v[1], a2 = v[2] + v[3], a3 = v[2] - v[3];
    v[0] = a0 + a2; v[2] = a0 - a2; v[1] = a1 + a3; v[3] = a1 - a3;
#pragma unroll
    for (int m = 1; m < 32; m <<= 1) {
        bool upper = (lane & m) != 0;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float other = __shfl_xor_sync(0xffffffffu, v[i], m);
            v[i] = upper ? other - v[i] : v[i] + other;
        }
    }
#pragma unroll
    for (int i = 0; i < 4; i++) v[i] *= 0.08838834764831845f;
}

// One warp per token: the indexer key (LayerNorm with eps 1e-6, RoPE, Hadamard) into the cache:
// bf16, or with `cache8` e4m3 and its scale into `scale8` (the FP8 indexer's cache).
extern "C" __global__ void index_key_prep(const float* k, const float* w, const float* b,
                                          const int* positions, const float* cos_t,
                                          const float* sin_t, const int* rows, bf16* cache,
                                          unsigned char* cache8, float* scale8, int n) {
    int tok = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (tok >= n) return;
    float v[4], s = 0.f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        v[i] = k[(size_t)tok * 128 + lane * 4 + i];
        s += v[i];
    }
    for (int m = 16; m > 0; m >>= 1) s += __shfl_xor_sync(0xffffffffu, s, m);
    float mean = s / 128.f, var = 0.f;
#pragma unroll
    for (int i = 0; i < 4; i++) var += (v[i] - mean) * (v[i] - mean);
    for (int m = 16; m > 0; m >>= 1) var += __shfl_xor_sync(0xffffffffu, var, m);
    float r = rsqrtf(var / 128.f + 1e-6f);
#pragma unroll
    for (int i = 0; i < 4; i++) v[i] = (v[i] - mean) * r * w[lane * 4 + i] + b[lane * 4 + i];
    index_rope_hadamard(v, lane, positions[tok], cos_t, sin_t);
    size_t row = rows[tok];
    if (cache8) {
        quant_e4m3_row(v, lane, cache8 + row * 128, scale8 + row);
        return;
    }
    bf16* o = cache + row * 128 + lane * 4;
#pragma unroll
    for (int i = 0; i < 4; i++) o[i] = f32_to_bf16(v[i]);
}

// One warp per (token, indexer head): RoPE and Hadamard of the query [n, 64, 128] into bf16, or
// with `out8` into e4m3 with one scale per head into `scale8`.
extern "C" __global__ void index_query_prep(const float* q, const int* positions, const float* cos_t,
                                            const float* sin_t, bf16* out, unsigned char* out8,
                                            float* scale8, int n) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (row >= n * 64) return;
    float v[4];
#pragma unroll
    for (int i = 0; i < 4; i++) v[i] = q[(size_t)row * 128 + lane * 4 + i];
    index_rope_hadamard(v, lane, positions[row / 64], cos_t, sin_t);
    if (out8) {
        quant_e4m3_row(v, lane, out8 + (size_t)row * 128, scale8 + row);
        return;
    }
#pragma unroll
    for (int i = 0; i < 4; i++) out[(size_t)row * 128 + lane * 4 + i] = f32_to_bf16(v[i]);
}

// One warp per (token, head): the rope part of the absorbed query. q is q_b's output
// [n, H, 192] (nope 128 | rope 64); out is the MLA query [n, H, 576], whose first 512 the
// absorption product wrote.
extern "C" __global__ void q_rope_pack(const float* q, const int* positions, const float* cos_t,
                                       const float* sin_t, bf16* out, int n, int heads) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (row >= n * heads) return;
    int pos = positions[row / heads];
    const float* x = q + (size_t)row * 192 + 128;
    float c = cos_t[pos * 32 + lane], s = sin_t[pos * 32 + lane];
    float a = x[2 * lane], b = x[2 * lane + 1];
    out[(size_t)row * 576 + 512 + 2 * lane] = f32_to_bf16(a * c - b * s);
    out[(size_t)row * 576 + 513 + 2 * lane] = f32_to_bf16(a * s + b * c);
}

// Logical positions chosen by top-k ([n, k], -1 = none) to cache rows through each row's page
// table (rows `stride` ints apart; pages of 128).
extern "C" __global__ void map_pages(const int* idx, int* out, const int* pages, int stride, int k,
                                     int n) {
    asm volatile("griddepcontrol.launch_dependents;");  // the attention after it: see sparse_mla_body
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * k) return;
    int r = (int)(i / k), s = idx[i];
    out[i] = s < 0 ? -1 : pages[(size_t)r * stride + s / 128] * 128 + s % 128;
}


// ---------------------------------------------------------------------------------------------
// Grouped expert products. `moe_sort` (one block) groups the (token, slot) pairs of the routing
// by expert: expert e's rows are sorted rows off[e]..off[e+1], cut into tiles of GG_BM rows
// starting at tile number tiles[e]; sorted row p belongs to token token_of[p], and pair
// (token r, slot j) sits at sorted row pos[r * k + j]. Within an expert the order of rows does
// not affect any value. E <= 256.

#define GG_BM 64
#define GG_BN 128
#define GG_BK 32
#define GG_PITCH (GG_BK + 8)

extern "C" __global__ void __launch_bounds__(1024)
moe_sort(const int* ids, int total, int E, int* token_of, int* pos, int* off, int* tiles, int k) {
    __shared__ int count[256], start[256], cursor[256];
    __shared__ int warp_tot[33];
    for (int e = threadIdx.x; e < 256; e += blockDim.x) count[e] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < total; i += blockDim.x) atomicAdd(&count[ids[i]], 1);
    __syncthreads();
    int c = threadIdx.x < E ? count[threadIdx.x] : 0;
    int t = threadIdx.x < E ? (c + GG_BM - 1) / GG_BM : 0;
    int c_before, t_before;
    int c_all = block_exclusive_sum(c, &c_before, warp_tot);
    int t_all = block_exclusive_sum(t, &t_before, warp_tot);
    if (threadIdx.x < E) {
        start[threadIdx.x] = c_before;
        cursor[threadIdx.x] = 0;
        off[threadIdx.x] = c_before;
        tiles[threadIdx.x] = t_before;
    }
    if (threadIdx.x == 0) {
        off[E] = c_all;
        tiles[E] = t_all;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < total; i += blockDim.x) {
        int e = ids[i];
        int p = start[e] + atomicAdd(&cursor[e], 1);
        token_of[p] = i / k;
        pos[i] = p;
    }
}

// C[p, :] = A[row(p), :] · W_e[N, K]ᵀ for every sorted row p of expert e, with row(p) =
// token_of[p] (gather) or p; bf16 in, f32 out. Block (x, y): columns x·128.., tile y of the
// experts' tiles. 8 warps as 2 × 4, each 32 × 32 of the 64 × 128 tile. K % 32 == 0, N % 128 == 0.
extern "C" __global__ void __launch_bounds__(256)
grouped_gemm_bf16(const bf16* A, const int* token_of, int gather, const bf16* W, float* C,
                  const int* off, const int* tiles, int E, int N, int K) {
    __shared__ __align__(16) bf16 as[GG_BM * GG_PITCH];
    __shared__ __align__(16) bf16 ws[GG_BN * GG_PITCH];
    __shared__ int e_s;
    int y = blockIdx.y;
    if (threadIdx.x == 0) {
        int e = -1;
        for (int i = 0; i < E; i++)
            if (tiles[i] <= y && y < tiles[i + 1]) { e = i; break; }
        e_s = e;
    }
    __syncthreads();
    int e = e_s;
    if (e < 0) return;
    int row_begin = off[e] + (y - tiles[e]) * GG_BM, row_end = off[e + 1];
    int n0 = blockIdx.x * GG_BN;
    const bf16* We = W + (size_t)e * N * K;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int wm = (warp >> 2) * 32, wn = (warp & 3) * 32;
    int g = lane >> 2, tig = lane & 3;
    // The A row this thread loads (one 16-byte piece per k step).
    int a_r = threadIdx.x >> 2, a_c = threadIdx.x & 3;
    int a_p = row_begin + a_r;
    const bf16* a_src = nullptr;
    if (a_p < row_end) a_src = A + (size_t)(gather ? token_of[a_p] : a_p) * K;
    float acc[2][4][4];
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) acc[m][n][i] = 0.f;
    for (int k0 = 0; k0 < K; k0 += GG_BK) {
        uint4 v = make_uint4(0, 0, 0, 0);
        if (a_src) v = *reinterpret_cast<const uint4*>(a_src + k0 + a_c * 8);
        *reinterpret_cast<uint4*>(as + a_r * GG_PITCH + a_c * 8) = v;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            int i = threadIdx.x + h * 256;
            int r = i >> 2, c = i & 3;
            *reinterpret_cast<uint4*>(ws + r * GG_PITCH + c * 8) =
                *reinterpret_cast<const uint4*>(We + (size_t)(n0 + r) * K + k0 + c * 8);
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < GG_BK; kk += 16) {
            unsigned a[2][4];
#pragma unroll
            for (int m = 0; m < 2; m++)
                ldmatrix_x4(a[m][0], a[m][1], a[m][2], a[m][3],
                            as + (wm + m * 16 + (lane & 15)) * GG_PITCH + kk + (lane >> 4) * 8);
#pragma unroll
            for (int n = 0; n < 4; n += 2) {
                unsigned b0, b1, b2, b3;
                int wrow = wn + n * 8 + (lane & 7) + ((lane >> 4) << 3);
                ldmatrix_x4(b0, b1, b2, b3, ws + wrow * GG_PITCH + kk + ((lane >> 3) & 1) * 8);
#pragma unroll
                for (int m = 0; m < 2; m++) {
                    mma_bf16(acc[m][n], a[m][0], a[m][1], a[m][2], a[m][3], b0, b1);
                    mma_bf16(acc[m][n + 1], a[m][0], a[m][1], a[m][2], a[m][3], b2, b3);
                }
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int i = 0; i < 4; i++) {
                int p = row_begin + wm + m * 16 + g + (i >= 2 ? 8 : 0);
                int col = n0 + wn + n * 8 + tig * 2 + (i & 1);
                if (p < row_end) C[(size_t)p * N + col] = acc[m][n][i];
            }
}

// hidden[r] += sum_j w[r, j] * y[pos[r * k + j]] over the token's k experts (y in sorted rows).
extern "C" __global__ void moe_combine_sorted(float* hidden, const float* y, const int* pos,
                                              const float* w, int k, int d) {
    int r = blockIdx.x;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        float acc = 0.f;
        for (int j = 0; j < k; j++) acc += w[r * k + j] * y[(size_t)pos[r * k + j] * d + c];
        hidden[(size_t)r * d + c] += acc;
    }
}

// Top-k per row, one block per row (prefill: row t sees first_pos + t + 1 positions).
extern "C" __global__ void __launch_bounds__(TKR_THREADS, TKR_BLOCKS)
topk_rows(const float* logits, int* out, int ld, int k, int first_pos) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    int t = blockIdx.x;
    topk_row_fast(logits + (size_t)t * ld, min(first_pos + t + 1, ld), k, out + (size_t)t * k, smem_raw);
}

// Top-k of rows with their own lengths (decode with many sequences): one block per row.
extern "C" __global__ void __launch_bounds__(TKR_THREADS, TKR_BLOCKS)
topk_rows_lens(const float* logits, const int* lens, int* out, int ld, int k) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    int t = blockIdx.x;
    topk_row_fast(logits + (size_t)t * ld, min(lens[t], ld), k, out + (size_t)t * k, smem_raw);
}
