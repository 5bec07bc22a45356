// DSA kernels for Hopper (sm_90a), compiled at run time by NVRTC. No headers: bf16 values are
// carried as `unsigned short` and converted by hand; matrix products use mma.sync m16n8k16
// (bf16 in, f32 accumulate) fed by ldmatrix from shared memory.
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

__device__ __forceinline__ unsigned pack_bf16(float lo, float hi) {
    return (unsigned)f32_to_bf16(lo) | ((unsigned)f32_to_bf16(hi) << 16);
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

__device__ __forceinline__ void ldmatrix_x4_trans(unsigned& r0, unsigned& r1, unsigned& r2,
                                                  unsigned& r3, const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
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
// -inf beyond. A block takes 4 query tokens (4 x 64 head rows) against 128 keys; warp w owns
// rows 32w..32w+31 (half of one token's heads). HI must be 64, the head dim 128.

#define IX_D 128
#define IX_HEADS 64
#define IX_TOK 4
#define IX_KEYS 128
#define IX_STRIDE (IX_D + 8)

#define IX_TILES 8  // key tiles per block: the queries are loaded once for 1024 keys

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
                 "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Queue the copy of keys s0..s0+127 (zero rows past S) into `dst`: rows of ROW bytes, stored
// PITCH bytes apart (16 bytes of padding, so ldmatrix's eight rows fall in different banks).
// With a page table, key s lives in cache row pages[s / 128] * 128 + s % 128 (a page is one
// tile of 128 keys, so a tile is contiguous).
__device__ __forceinline__ size_t ix_key_row(const int* pages, int s) {
    return pages ? (size_t)pages[s / IX_KEYS] * IX_KEYS + s % IX_KEYS : (size_t)s;
}

template <int ROW>
__device__ __forceinline__ void ix_load_keys(unsigned char* dst, const unsigned char* k, int s0, int S,
                                             const int* pages) {
    for (int i = threadIdx.x; i < IX_KEYS * (ROW / 16); i += blockDim.x) {
        int r = i / (ROW / 16), c = i % (ROW / 16);
        bool ok = s0 + r < S;
        cp_async16(dst + r * (ROW + 16) + c * 16, ok ? k + ix_key_row(pages, s0 + r) * ROW + c * 16 : k, ok);
    }
}

__device__ __forceinline__ void mma_e4m3(float* c, unsigned a0, unsigned a1, unsigned a2,
                                         unsigned a3, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// The indexer's prefill logits, bf16 or e4m3 operands. A block takes 4 queries (4 x 64 head
// rows) against up to 8 tiles of 128 keys, keeping the queries in shared memory and
// double-buffering the keys with cp.async. It computes K·Qᵀ, keys as rows and heads as columns,
// so the sum over heads runs along each thread's own columns plus two shuffles. Warp w owns 32
// keys (32·(w & 3)) against the 128 head rows of two queries (2·(w >> 2), +1). Both precisions
// step 32 bytes of the 128 values per mma (16 bf16 or 32 e4m3), so the fragment addressing is the
// same. With e4m3, q's scale is folded into the head weight and k's applied after the head sum
// (ReLU(a x) = a ReLU(x) for a > 0).
template <bool FP8>
__device__ __forceinline__ void indexer_tiles(const unsigned char* q, const float* q_scale,
                                              const unsigned char* k, const float* k_scale,
                                              const float* w, float* logits, int T, int S, int ld,
                                              int first_pos, const int* pages) {
    constexpr int ROW = FP8 ? IX_D : 2 * IX_D;  // bytes of one row of 128 values
    constexpr int PITCH = ROW + 16;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    unsigned char* qs = smem_raw;                                          // 256 rows
    unsigned char* kbuf = qs + IX_TOK * IX_HEADS * PITCH;                  // 2 x 128 rows
    float* ws = reinterpret_cast<float*>(kbuf + 2 * IX_KEYS * PITCH);      // 256
    float* kss = ws + IX_TOK * IX_HEADS;                                   // 2 x 128

    int t0 = blockIdx.y * IX_TOK;
    int last_pos = first_pos + min(t0 + IX_TOK, T) - 1;
    int s_begin = blockIdx.x * IX_KEYS * IX_TILES;
    // Tiles at or before the block's last query position (later keys are every query's future).
    int s_end = min(min(S, last_pos + 1), s_begin + IX_KEYS * IX_TILES);
    if (s_begin >= s_end) return;
    int tiles = (s_end - s_begin + IX_KEYS - 1) / IX_KEYS;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

    for (int i = threadIdx.x; i < IX_TOK * IX_HEADS * (ROW / 16); i += blockDim.x) {
        int r = i / (ROW / 16), c = i % (ROW / 16);
        bool ok = t0 + r / IX_HEADS < T;
        cp_async16(qs + r * PITCH + c * 16, ok ? q + ((size_t)t0 * IX_HEADS + r) * ROW + c * 16 : q, ok);
    }
    ix_load_keys<ROW>(kbuf, k, s_begin, S, pages);
    cp_async_commit();
    for (int i = threadIdx.x; i < IX_TOK * IX_HEADS; i += blockDim.x) {
        size_t at = (size_t)t0 * IX_HEADS + i;
        ws[i] = t0 + i / IX_HEADS < T ? w[at] * (FP8 ? q_scale[at] : 1.f) : 0.f;
    }
    int key0 = 32 * (warp & 3);        // this warp's keys within a tile
    int hrow0 = 128 * (warp >> 2);     // this warp's head rows: queries 2·(warp >> 2), +1
    int g = lane >> 2, tig = lane & 3;

    for (int j = 0; j < tiles; j++) {
        int s0 = s_begin + j * IX_KEYS;
        for (int i = threadIdx.x; i < IX_KEYS; i += blockDim.x)
            kss[(j & 1) * IX_KEYS + i] = FP8 ? (s0 + i < S ? k_scale[ix_key_row(pages, s0 + i)] : 0.f) : 1.f;
        if (j + 1 < tiles) {
            ix_load_keys<ROW>(kbuf + ((j + 1) & 1) * IX_KEYS * PITCH, k, s0 + IX_KEYS, S, pages);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const unsigned char* ks = kbuf + (j & 1) * IX_KEYS * PITCH;

        float acc[2][16][4];  // [key m-tile][head n-tile][fragment]
#pragma unroll
        for (int m = 0; m < 2; m++)
#pragma unroll
            for (int n = 0; n < 16; n++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[m][n][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < ROW; kk += 32) {
            unsigned a[2][4];
#pragma unroll
            for (int m = 0; m < 2; m++)
                ldmatrix_x4(a[m][0], a[m][1], a[m][2], a[m][3],
                            ks + (key0 + m * 16 + (lane & 15)) * PITCH + kk + (lane >> 4) * 16);
#pragma unroll
            for (int n = 0; n < 16; n += 2) {
                unsigned b0, b1, b2, b3;
                int hrow = hrow0 + n * 8 + (lane & 7) + ((lane >> 4) << 3);
                ldmatrix_x4(b0, b1, b2, b3, qs + hrow * PITCH + kk + ((lane >> 3) & 1) * 16);
#pragma unroll
                for (int m = 0; m < 2; m++) {
                    if constexpr (FP8) {
                        mma_e4m3(acc[m][n], a[m][0], a[m][1], a[m][2], a[m][3], b0, b1);
                        mma_e4m3(acc[m][n + 1], a[m][0], a[m][1], a[m][2], a[m][3], b2, b3);
                    } else {
                        mma_bf16(acc[m][n], a[m][0], a[m][1], a[m][2], a[m][3], b0, b1);
                        mma_bf16(acc[m][n + 1], a[m][0], a[m][1], a[m][2], a[m][3], b2, b3);
                    }
                }
            }
        }
        // Per query: ReLU, weight by head, sum the thread's 16 heads, then the 4 lanes of a row.
#pragma unroll
        for (int tt = 0; tt < 2; tt++) {
            int t = t0 + 2 * (warp >> 2) + tt;
#pragma unroll
            for (int m = 0; m < 2; m++) {
                float lo = 0.f, hi = 0.f;  // keys g and g + 8 of m-tile m
#pragma unroll
                for (int n = 8 * tt; n < 8 * tt + 8; n++) {
                    float w0 = ws[hrow0 + n * 8 + 2 * tig], w1 = ws[hrow0 + n * 8 + 2 * tig + 1];
                    lo += w0 * fmaxf(acc[m][n][0], 0.f) + w1 * fmaxf(acc[m][n][1], 0.f);
                    hi += w0 * fmaxf(acc[m][n][2], 0.f) + w1 * fmaxf(acc[m][n][3], 0.f);
                }
                lo += __shfl_xor_sync(0xffffffffu, lo, 1);
                lo += __shfl_xor_sync(0xffffffffu, lo, 2);
                hi += __shfl_xor_sync(0xffffffffu, hi, 1);
                hi += __shfl_xor_sync(0xffffffffu, hi, 2);
                if (tig == 0 && t < T) {
#pragma unroll
                    for (int half = 0; half < 2; half++) {
                        int c = key0 + m * 16 + g + 8 * half, s = s0 + c;
                        if (s < S) {
                            float v = (half ? hi : lo) * kss[(j & 1) * IX_KEYS + c];
                            logits[(size_t)t * ld + s] = s > first_pos + t ? -__int_as_float(0x7f800000) : v;
                        }
                    }
                }
            }
        }
        __syncthreads();  // every warp is done with this key buffer before it is refilled
    }
}

extern "C" __global__ void __launch_bounds__(256, 1)
indexer_logits_bf16(const bf16* q, const bf16* k, const float* w, float* logits, int T, int S,
                    int ld, int first_pos, const int* pages) {
    indexer_tiles<false>(reinterpret_cast<const unsigned char*>(q), nullptr,
                         reinterpret_cast<const unsigned char*>(k), nullptr, w, logits, T, S, ld,
                         first_pos, pages);
}

extern "C" __global__ void __launch_bounds__(256, 1)
indexer_logits_fp8(const unsigned char* q, const float* q_scale, const unsigned char* k,
                   const float* k_scale, const float* w, float* logits, int T, int S, int ld,
                   int first_pos, const int* pages) {
    indexer_tiles<true>(q, q_scale, k, k_scale, w, logits, T, S, ld, first_pos, pages);
}

// ---------------------------------------------------------------------------------------------
// Top-k per row by radix select (four 8-bit histogram passes, no sort), then an in-order
// compaction: every key above the threshold, then ties at the threshold in index order, so the
// result equals a stable sort's first k. Output indices ascend; rows shorter than k are padded
// with -1. Row t considers its first len(t) = first_pos + t + 1 entries (capped at ld).

__device__ __forceinline__ unsigned order_key(float f) {
    unsigned u = __float_as_uint(f);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Exclusive prefix sum of `v` over the block in thread order (at most 1024 threads); returns
// the block's total. `warp_tot` is 33 ints of shared memory.
__device__ __forceinline__ int block_exclusive_sum(int v, int* prefix, int* warp_tot) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int incl = v;
    for (int d = 1; d < 32; d <<= 1) {
        int n = __shfl_up_sync(0xffffffffu, incl, d);
        if (lane >= d) incl += n;
    }
    if (lane == 31) warp_tot[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        int w = lane < (blockDim.x >> 5) ? warp_tot[lane] : 0;
        int x = w;
        for (int d = 1; d < 32; d <<= 1) {
            int n = __shfl_up_sync(0xffffffffu, x, d);
            if (lane >= d) x += n;
        }
        warp_tot[lane] = x - w;  // exclusive
        if (lane == 31) warp_tot[32] = x;
    }
    __syncthreads();
    *prefix = warp_tot[warp] + incl - v;
    int total = warp_tot[32];
    __syncthreads();
    return total;
}

#define TK_BINS 2048
#define TK_CHUNK 1024

__device__ __forceinline__ int find_bin_n(const int* hist, int bins, int want, int* above_out) {
    // Highest bin b with (count above b) < want <= (count above b) + hist[b]; one warp, `bins`
    // a multiple of 32.
    int lane = threadIdx.x & 31;
    int above = 0;
    for (int base = bins - 32; base >= 0; base -= 32) {
        int c = hist[base + lane];
        // inclusive suffix sum within the warp, from lane 31 down
        int incl = c;
        for (int o = 1; o < 32; o <<= 1) {
            int n = __shfl_down_sync(0xffffffffu, incl, o);
            if (lane + o < 32) incl += n;
        }
        int total = __shfl_sync(0xffffffffu, incl, 0);
        if (above + total >= want) {
            // the bin is in this group: the highest lane whose suffix reaches want
            unsigned hit = __ballot_sync(0xffffffffu, above + incl >= want);
            int b = 31 - __clz(hit);
            int above_b = above + __shfl_sync(0xffffffffu, incl, b) - __shfl_sync(0xffffffffu, c, b);
            *above_out = above_b;
            return base + b;
        }
        above += total;
    }
    *above_out = above;
    return 0;
}

__device__ __forceinline__ int find_bin(const int* hist, int want, int* above_out) {
    return find_bin_n(hist, TK_BINS, want, above_out);
}

// One block selects the top k of `row[0..len)` into `o`.
__device__ void topk_row_block(const float* row, int len, int k, int* o) {
    __shared__ int hist[256];
    __shared__ int warp_tot[33];
    __shared__ unsigned sh_prefix, sh_mask;
    __shared__ int sh_remaining;
    if (len <= k) {
        for (int i = threadIdx.x; i < k; i += blockDim.x) o[i] = i < len ? i : -1;
        return;
    }
    if (threadIdx.x == 0) {
        sh_prefix = 0;
        sh_mask = 0;
        sh_remaining = k;
    }
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
        __syncthreads();
        unsigned prefix = sh_prefix, mask = sh_mask;
        for (int i = threadIdx.x; i < len; i += blockDim.x) {
            unsigned key = order_key(row[i]);
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1);
        }
        __syncthreads();
        if (threadIdx.x < 32) {
            int remaining = sh_remaining, above;
            int b = find_bin_n(hist, 256, remaining, &above);
            if (threadIdx.x == 0) {
                sh_remaining = remaining - above;
                sh_prefix = prefix | ((unsigned)b << shift);
                sh_mask = mask | (255u << shift);
            }
        }
        __syncthreads();
    }
    unsigned thr = sh_prefix;
    int ties = sh_remaining;  // how many keys equal to thr to take
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

extern "C" __global__ void __launch_bounds__(1024, 1)
topk_rows(const float* logits, int* out, int ld, int k, int first_pos) {
    int t = blockIdx.x;
    topk_row_block(logits + (size_t)t * ld, min(first_pos + t + 1, ld), k, out + (size_t)t * k);
}

// ---------------------------------------------------------------------------------------------
// Sparse MLA, absorbed (MQA) form (the cache flat, or paged through a page table): for query
// token t and each of H = 64 heads,
//   o[h] = softmax_j(scale * q[h] . kv[idx_j]) . kv[idx_j][:512]
// over the token's selected positions. Grid (splits, T): split p takes a contiguous share of the
// index list in blocks of 64 positions and writes its normalized partial output and its
// log-sum-exp (log2); `mla_combine` merges the splits.

#define MLA_H 64
#define MLA_DQK 576
#define MLA_DV 512
#define MLA_BN 64
#define MLA_STRIDE (MLA_DQK + 8)
#define P_STRIDE (MLA_BN + 8)

extern "C" __global__ void __launch_bounds__(256, 1)
sparse_mla_bf16(const bf16* q, const bf16* kv, const int* indices, float* o_part, float* lse_part,
                int topk, int S, int splits, float scale_log2, const int* page_table, int page_size) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* qs = reinterpret_cast<bf16*>(smem_raw);           // 64 x MLA_STRIDE
    bf16* ks = qs + MLA_H * MLA_STRIDE;                      // 64 x MLA_STRIDE
    bf16* ps = ks + MLA_BN * MLA_STRIDE;                     // 64 x P_STRIDE
    float* red_max = reinterpret_cast<float*>(ps + MLA_H * P_STRIDE);  // 2 x 64
    float* red_sum = red_max + 2 * MLA_H;                    // 2 x 64
    float* m_s = red_sum + 2 * MLA_H;                        // 64
    float* l_s = m_s + MLA_H;                                // 64
    float* alpha_s = l_s + MLA_H;                            // 64
    int* col_ok = reinterpret_cast<int*>(alpha_s + MLA_H);   // 64
    const bf16** rows = reinterpret_cast<const bf16**>(col_ok + MLA_BN);  // 64 pointers

    int t = blockIdx.y, split = blockIdx.x;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int g = lane >> 2, tig = lane & 3;
    const int* idx = indices + (size_t)t * topk;
    int blocks = (topk + MLA_BN - 1) / MLA_BN;
    int per = (blocks + splits - 1) / splits;
    int b_begin = split * per, b_end = min(blocks, b_begin + per);

    for (int i = threadIdx.x; i < MLA_H; i += blockDim.x) {
        m_s[i] = -__int_as_float(0x7f800000);
        l_s[i] = 0.f;
    }
    for (int i = threadIdx.x; i < MLA_H * (MLA_DQK / 8); i += blockDim.x) {
        int r = i / (MLA_DQK / 8), c = i % (MLA_DQK / 8);
        cp_async16(qs + r * MLA_STRIDE + c * 8, q + ((size_t)t * MLA_H + r) * MLA_DQK + c * 8, true);
    }
    cp_async_commit();

    // S tile: warp owns rows 16*(warp&3) and key columns 32*(warp>>2). O: same rows, value
    // columns 256*(warp>>2).
    int srow = 16 * (warp & 3), scol = 32 * (warp >> 2), half = warp >> 2;
    float o[32][4];
#pragma unroll
    for (int n = 0; n < 32; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) o[n][e] = 0.f;

    for (int b = b_begin; b < b_end; b++) {
        __syncthreads();  // the previous block's readers of ks and ps are done
        for (int i = threadIdx.x; i < MLA_BN; i += blockDim.x) {
            int j = b * MLA_BN + i;
            int s = j < topk ? idx[j] : -1;
            int ok = s >= 0 && s < S;
            col_ok[i] = ok;
            // A paged cache keeps position s in page page_table[s / page_size].
            size_t phys = page_table ? (size_t)page_table[s / page_size] * page_size + s % page_size : (size_t)s;
            rows[i] = ok ? kv + phys * MLA_DQK : 0;
        }
        __syncthreads();
        // Gather the selected rows with every copy in flight at once (cp.async; missing rows
        // are zero-filled).
        for (int i = threadIdx.x; i < MLA_BN * (MLA_DQK / 8); i += blockDim.x) {
            int r = i / (MLA_DQK / 8), c = i % (MLA_DQK / 8);
            const bf16* src = rows[r];
            cp_async16(ks + r * MLA_STRIDE + c * 8, src ? src + c * 8 : kv, src != 0);
        }
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();

        float sacc[4][4];
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) sacc[n][e] = 0.f;
#pragma unroll 4
        for (int kk = 0; kk < MLA_DQK; kk += 16) {
            unsigned a0, a1, a2, a3;
            ldmatrix_x4(a0, a1, a2, a3, qs + (srow + (lane & 15)) * MLA_STRIDE + kk + (lane >> 4) * 8);
#pragma unroll
            for (int n = 0; n < 4; n += 2) {
                unsigned b0, b1, b2, b3;
                int krow = scol + n * 8 + (lane & 7) + ((lane >> 4) << 3);
                ldmatrix_x4(b0, b1, b2, b3, ks + krow * MLA_STRIDE + kk + ((lane >> 3) & 1) * 8);
                mma_bf16(sacc[n], a0, a1, a2, a3, b0, b1);
                mma_bf16(sacc[n + 1], a0, a1, a2, a3, b2, b3);
            }
        }
        // Scale into the log2 domain, mask missing positions, row maxima of this warp's half.
        float mx[2] = {-__int_as_float(0x7f800000), -__int_as_float(0x7f800000)};
#pragma unroll
        for (int n = 0; n < 4; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int col = scol + n * 8 + tig * 2 + (e & 1);
                float v = col_ok[col] ? sacc[n][e] * scale_log2 : -__int_as_float(0x7f800000);
                sacc[n][e] = v;
                mx[e >> 1] = fmaxf(mx[e >> 1], v);
            }
#pragma unroll
        for (int r = 0; r < 2; r++) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
        }
        if (tig == 0) {
            red_max[half * MLA_H + srow + g] = mx[0];
            red_max[half * MLA_H + srow + g + 8] = mx[1];
        }
        __syncthreads();
        float m_new[2], alpha[2], sum[2] = {0.f, 0.f};
#pragma unroll
        for (int r = 0; r < 2; r++) {
            int row = srow + g + 8 * r;
            float m_old = m_s[row];
            m_new[r] = fmaxf(m_old, fmaxf(red_max[row], red_max[MLA_H + row]));
            // A row with nothing valid yet keeps m = -inf; use 0 so exp2 gives 0, not NaN.
            float m_use = m_new[r] == -__int_as_float(0x7f800000) ? 0.f : m_new[r];
            alpha[r] = exp2f(m_old - m_use);
            m_new[r] = m_use;
        }
#pragma unroll
        for (int n = 0; n < 4; n++) {
            float p0 = exp2f(sacc[n][0] - m_new[0]), p1 = exp2f(sacc[n][1] - m_new[0]);
            float p2 = exp2f(sacc[n][2] - m_new[1]), p3 = exp2f(sacc[n][3] - m_new[1]);
            sum[0] += p0 + p1;
            sum[1] += p2 + p3;
            int col = scol + n * 8 + tig * 2;
            *reinterpret_cast<unsigned*>(ps + (srow + g) * P_STRIDE + col) = pack_bf16(p0, p1);
            *reinterpret_cast<unsigned*>(ps + (srow + g + 8) * P_STRIDE + col) = pack_bf16(p2, p3);
        }
#pragma unroll
        for (int r = 0; r < 2; r++) {
            sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 1);
            sum[r] += __shfl_xor_sync(0xffffffffu, sum[r], 2);
        }
        if (tig == 0) {
            red_sum[half * MLA_H + srow + g] = sum[0];
            red_sum[half * MLA_H + srow + g + 8] = sum[1];
            if (half == 0) {
                alpha_s[srow + g] = alpha[0];
                alpha_s[srow + g + 8] = alpha[1];
            }
        }
        __syncthreads();
        if (half == 0 && tig == 0) {
#pragma unroll
            for (int r = 0; r < 2; r++) {
                int row = srow + g + 8 * r;
                l_s[row] = l_s[row] * alpha[r] + red_sum[row] + red_sum[MLA_H + row];
                m_s[row] = m_new[r];
            }
        }
        // O = alpha * O + P . V, V = the latent part of the gathered rows.
        float al0 = alpha_s[srow + g], al1 = alpha_s[srow + g + 8];
#pragma unroll
        for (int n = 0; n < 32; n++) {
            o[n][0] *= al0;
            o[n][1] *= al0;
            o[n][2] *= al1;
            o[n][3] *= al1;
        }
        int vcol = 256 * half;
#pragma unroll
        for (int kk = 0; kk < MLA_BN; kk += 16) {
            unsigned a0, a1, a2, a3;
            ldmatrix_x4(a0, a1, a2, a3, ps + (srow + (lane & 15)) * P_STRIDE + kk + (lane >> 4) * 8);
#pragma unroll
            for (int n = 0; n < 32; n += 2) {
                unsigned b0, b1, b2, b3;
                ldmatrix_x4_trans(b0, b1, b2, b3,
                                  ks + (kk + (lane & 15)) * MLA_STRIDE + vcol + n * 8 + (lane >> 4) * 8);
                mma_bf16(o[n], a0, a1, a2, a3, b0, b1);
                mma_bf16(o[n + 1], a0, a1, a2, a3, b2, b3);
            }
        }
    }
    cp_async_wait<0>();  // a split with no blocks still queued its query copy
    __syncthreads();
    // Normalize and write this split's partial result.
    int r0 = srow + g, r1 = srow + g + 8;
    float l0 = l_s[r0], l1 = l_s[r1];
    float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
    size_t base = ((size_t)t * splits + split) * MLA_H;
#pragma unroll
    for (int n = 0; n < 32; n++) {
        int col = 256 * half + n * 8 + tig * 2;
        float* p0 = o_part + (base + r0) * MLA_DV + col;
        float* p1 = o_part + (base + r1) * MLA_DV + col;
        p0[0] = o[n][0] * inv0;
        p0[1] = o[n][1] * inv0;
        p1[0] = o[n][2] * inv1;
        p1[1] = o[n][3] * inv1;
    }
    if (half == 0 && tig == 0) {
        lse_part[base + r0] = l0 > 0.f ? m_s[r0] + log2f(l0) : -__int_as_float(0x7f800000);
        lse_part[base + r1] = l1 > 0.f ? m_s[r1] + log2f(l1) : -__int_as_float(0x7f800000);
    }
}

// out[t, h, :] = sum_p 2^(lse_p - M) o_p / sum_p 2^(lse_p - M). One block per (t, h); the
// split weights are computed once in shared memory, then each thread sums its columns with
// the loads of all splits in flight together. At most 1024 splits.
extern "C" __global__ void mla_combine(const float* o_part, const float* lse_part, float* out,
                                       int H, int splits, int dv) {
    __shared__ float wts[1024];
    __shared__ float part[32];
    int t = blockIdx.x / H, h = blockIdx.x % H;
    float m = -__int_as_float(0x7f800000);
    for (int p = threadIdx.x; p < splits; p += blockDim.x) {
        wts[p] = lse_part[((size_t)t * splits + p) * H + h];
        m = fmaxf(m, wts[p]);
    }
    float M = block_reduce<true>(m, part);
    float sum = 0.f;
    for (int p = threadIdx.x; p < splits; p += blockDim.x) {
        float w = wts[p] == -__int_as_float(0x7f800000) ? 0.f : exp2f(wts[p] - M);
        wts[p] = w;
        sum += w;
    }
    float total = block_reduce<false>(sum, part);  // its barriers also publish wts
    float inv = total > 0.f ? 1.f / total : 0.f;
    for (int c = threadIdx.x; c < dv; c += blockDim.x) {
        float acc = 0.f;
#pragma unroll 8
        for (int p = 0; p < splits; p++)
            acc += wts[p] * o_part[(((size_t)t * splits + p) * H + h) * dv + c];
        out[((size_t)t * H + h) * dv + c] = acc * inv;
    }
}

// ---------------------------------------------------------------------------------------------
// Decode: one query per row (its own position), so the prefill kernels' 4-token tiles and
// one-CTA-per-row top-k would waste the GPU. The indexer takes one query per block (4 warps of
// 16 heads against 128 keys); top-k splits each long row over many blocks.

extern "C" __global__ void __launch_bounds__(128)
indexer_decode_bf16(const bf16* q, const bf16* k, const float* w, float* logits, const int* lens,
                    int S, int ld, const int* pages, int pages_stride) {
    // 54 KB: more than a block may declare statically, so it is dynamic shared memory.
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* qs = reinterpret_cast<bf16*>(smem_raw);                      // 64 x IX_STRIDE
    bf16* ks = qs + IX_HEADS * IX_STRIDE;                               // 128 x IX_STRIDE
    float* red = reinterpret_cast<float*>(ks + IX_KEYS * IX_STRIDE);    // 4 x 128
    float* ws = red + 4 * IX_KEYS;                                      // 64
    int t = blockIdx.y, s0 = blockIdx.x * IX_KEYS;
    int len = min(lens[t], S);
    if (s0 >= len) return;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    for (int i = threadIdx.x; i < IX_HEADS * (IX_D / 8); i += blockDim.x) {
        int r = i / (IX_D / 8), c = i % (IX_D / 8);
        *reinterpret_cast<uint4*>(qs + r * IX_STRIDE + c * 8) =
            *reinterpret_cast<const uint4*>(q + ((size_t)t * IX_HEADS + r) * IX_D + c * 8);
    }
    for (int i = threadIdx.x; i < IX_KEYS * (IX_D / 8); i += blockDim.x) {
        int r = i / (IX_D / 8), c = i % (IX_D / 8);
        uint4 v = make_uint4(0, 0, 0, 0);
        if (s0 + r < len)
            v = *reinterpret_cast<const uint4*>(
                k + ix_key_row(pages ? pages + (size_t)t * pages_stride : nullptr, s0 + r) * IX_D + c * 8);
        *reinterpret_cast<uint4*>(ks + r * IX_STRIDE + c * 8) = v;
    }
    if (threadIdx.x < IX_HEADS) ws[threadIdx.x] = w[(size_t)t * IX_HEADS + threadIdx.x];
    __syncthreads();
    float acc[16][4];
#pragma unroll
    for (int n = 0; n < 16; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[n][e] = 0.f;
    int row0 = warp * 16;
#pragma unroll
    for (int kk = 0; kk < IX_D; kk += 16) {
        unsigned a0, a1, a2, a3;
        ldmatrix_x4(a0, a1, a2, a3, qs + (row0 + (lane & 15)) * IX_STRIDE + kk + (lane >> 4) * 8);
#pragma unroll
        for (int n = 0; n < 16; n += 2) {
            unsigned b0, b1, b2, b3;
            int krow = n * 8 + (lane & 7) + ((lane >> 4) << 3);
            ldmatrix_x4(b0, b1, b2, b3, ks + krow * IX_STRIDE + kk + ((lane >> 3) & 1) * 8);
            mma_bf16(acc[n], a0, a1, a2, a3, b0, b1);
            mma_bf16(acc[n + 1], a0, a1, a2, a3, b2, b3);
        }
    }
    int g = lane >> 2, tig = lane & 3;
    float wa = ws[row0 + g], wb = ws[row0 + g + 8];
#pragma unroll
    for (int n = 0; n < 16; n++) {
        float c0 = wa * fmaxf(acc[n][0], 0.f) + wb * fmaxf(acc[n][2], 0.f);
        float c1 = wa * fmaxf(acc[n][1], 0.f) + wb * fmaxf(acc[n][3], 0.f);
#pragma unroll
        for (int o = 4; o < 32; o <<= 1) {
            c0 += __shfl_xor_sync(0xffffffffu, c0, o);
            c1 += __shfl_xor_sync(0xffffffffu, c1, o);
        }
        if (g == 0) {
            red[warp * IX_KEYS + n * 8 + tig * 2] = c0;
            red[warp * IX_KEYS + n * 8 + tig * 2 + 1] = c1;
        }
    }
    __syncthreads();
    for (int c = threadIdx.x; c < IX_KEYS; c += blockDim.x) {
        int s = s0 + c;
        if (s < len)
            logits[(size_t)t * ld + s] = red[c] + red[IX_KEYS + c] + red[2 * IX_KEYS + c] + red[3 * IX_KEYS + c];
    }
}

// Multi-block top-k for few long rows, in three passes over each row (which stays in L2):
//   1. histogram of the key's top 11 bits            (grid: chunks x rows)
//   2. histogram of the next 11 bits inside bin b1    (b1 found by each block from pass 1)
//   3. every key above (b1, b2) is taken; keys in (b1, b2) are candidates
// then one block per row picks the best candidates (stable: higher key, then lower index) and
// writes the k indices in ascending order. Work buffers per row: hist 2 x 2048 ints, counters
// 2 ints, taken k ints, candidates `cap` (key, index) pairs; zero hist and counters first.
// A row whose candidates overflow `cap` is marked (counter 1 = -1) for the one-block fallback.


extern "C" __global__ void topk_hist1(const float* logits, const int* lens, int ld, int* hist) {
    __shared__ int h[TK_BINS];
    int t = blockIdx.y, len = min(lens[t], ld);
    for (int i = threadIdx.x; i < TK_BINS; i += blockDim.x) h[i] = 0;
    __syncthreads();
    const float* row = logits + (size_t)t * ld;
    int end = min(len, (blockIdx.x + 1) * TK_CHUNK);
    for (int i = blockIdx.x * TK_CHUNK + threadIdx.x; i < end; i += blockDim.x)
        atomicAdd(&h[order_key(row[i]) >> 21], 1);
    __syncthreads();
    for (int i = threadIdx.x; i < TK_BINS; i += blockDim.x)
        if (h[i]) atomicAdd(&hist[(size_t)t * 2 * TK_BINS + i], h[i]);
}

extern "C" __global__ void topk_hist2(const float* logits, const int* lens, int ld, int k, int* hist) {
    __shared__ int h[TK_BINS];
    __shared__ int b1s;
    int t = blockIdx.y, len = min(lens[t], ld);
    if (len <= k) return;
    // One coalesced read of the histogram; the scan then runs in shared memory.
    for (int i = threadIdx.x; i < TK_BINS; i += blockDim.x) h[i] = hist[(size_t)t * 2 * TK_BINS + i];
    __syncthreads();
    if (threadIdx.x < 32) {
        int above;
        int b = find_bin(h, k, &above);
        if (threadIdx.x == 0) b1s = b;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < TK_BINS; i += blockDim.x) h[i] = 0;
    __syncthreads();
    unsigned b1 = b1s;
    const float* row = logits + (size_t)t * ld;
    int end = min(len, (blockIdx.x + 1) * TK_CHUNK);
    for (int i = blockIdx.x * TK_CHUNK + threadIdx.x; i < end; i += blockDim.x) {
        unsigned key = order_key(row[i]);
        if ((key >> 21) == b1) atomicAdd(&h[(key >> 10) & (TK_BINS - 1)], 1);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < TK_BINS; i += blockDim.x)
        if (h[i]) atomicAdd(&hist[(size_t)t * 2 * TK_BINS + TK_BINS + i], h[i]);
}

extern "C" __global__ void topk_collect(const float* logits, const int* lens, int ld, int k,
                                        const int* hist, int* counters, int* taken,
                                        unsigned long long* cand, int cap) {
    __shared__ unsigned prefix_s;
    __shared__ int h[2 * TK_BINS];
    int t = blockIdx.y, len = min(lens[t], ld);
    if (len <= k) return;
    for (int i = threadIdx.x; i < 2 * TK_BINS; i += blockDim.x) h[i] = hist[(size_t)t * 2 * TK_BINS + i];
    __syncthreads();
    if (threadIdx.x < 32) {
        int above1, above2;
        int b1 = find_bin(h, k, &above1);
        int b2 = find_bin(h + TK_BINS, k - above1, &above2);
        if (threadIdx.x == 0) prefix_s = ((unsigned)b1 << 11) | (unsigned)b2;
    }
    __syncthreads();
    unsigned prefix = prefix_s;
    const float* row = logits + (size_t)t * ld;
    int end = min(len, (blockIdx.x + 1) * TK_CHUNK);
    int lane = threadIdx.x & 31;
    unsigned below = (1u << lane) - 1u;
    // Whole warps go round together, so each warp takes its slots with one atomic per kind.
    for (int base = blockIdx.x * TK_CHUNK; base < end; base += blockDim.x) {
        int i = base + threadIdx.x;
        unsigned key = i < end ? order_key(row[i]) : 0u;
        unsigned top = key >> 10;
        bool take = i < end && top > prefix, maybe = i < end && top == prefix;
        unsigned mt = __ballot_sync(0xffffffffu, take), mc = __ballot_sync(0xffffffffu, maybe);
        int at_t = 0, at_c = 0;
        if (lane == 0 && mt) at_t = atomicAdd(&counters[2 * t], __popc(mt));
        if (lane == 0 && mc) at_c = atomicAdd(&counters[2 * t + 1], __popc(mc));
        at_t = __shfl_sync(0xffffffffu, at_t, 0) + __popc(mt & below);
        at_c = __shfl_sync(0xffffffffu, at_c, 0) + __popc(mc & below);
        if (take) taken[(size_t)t * k + at_t] = i;
        if (maybe && at_c < cap) cand[(size_t)t * cap + at_c] = ((unsigned long long)key << 32) | (unsigned)(~i);
    }
}

// Finishes one row: the keys above (b1, b2) are taken; among the candidates (keys in bucket
// (b1, b2)) a third histogram on the low 10 bits finds the exact threshold key, everything above
// it is taken, and of the keys equal to it the lowest indices fill the rest. Selected positions
// are marked in a bitmap over the row and written out in ascending order with a block scan, so
// the result equals a stable sort's first k. Rows longer than TK_MAX_LEN take the fallback.
#define TK_MAX_LEN 131072
#define TK_WORDS (TK_MAX_LEN / 32)

extern "C" __global__ void __launch_bounds__(1024)
topk_finish(const int* lens, int ld, int k, const int* counters, const int* taken,
            const unsigned long long* cand, int cap, int* out) {
    __shared__ unsigned sel[TK_WORDS];
    __shared__ unsigned tie[TK_WORDS];
    __shared__ int h3[1024];
    __shared__ int warp_tot[33];
    __shared__ int b3_s, above3_s;
    int t = blockIdx.x, len = min(lens[t], ld);
    int* o = out + (size_t)t * k;
    if (len <= k) {
        for (int i = threadIdx.x; i < k; i += blockDim.x) o[i] = i < len ? i : -1;
        return;
    }
    int n_taken = counters[2 * t], n_cand = counters[2 * t + 1];
    if (n_cand > cap || len > TK_MAX_LEN) return;  // topk_fallback does this row
    int need = k - n_taken;
    int words = (len + 31) / 32;
    for (int i = threadIdx.x; i < words; i += blockDim.x) {
        sel[i] = 0u;
        tie[i] = 0u;
    }
    for (int i = threadIdx.x; i < 1024; i += blockDim.x) h3[i] = 0;
    __syncthreads();
    const unsigned long long* c = cand + (size_t)t * cap;
    for (int i = threadIdx.x; i < n_taken; i += blockDim.x) {
        int idx = taken[(size_t)t * k + i];
        atomicOr(&sel[idx >> 5], 1u << (idx & 31));
    }
    for (int i = threadIdx.x; i < n_cand; i += blockDim.x)
        atomicAdd(&h3[(unsigned)(c[i] >> 32) & 1023u], 1);
    __syncthreads();
    if (threadIdx.x < 32) {
        int above;
        int b = find_bin_n(h3, 1024, need, &above);
        if (threadIdx.x == 0) {
            b3_s = b;
            above3_s = above;
        }
    }
    __syncthreads();
    unsigned b3 = b3_s;
    int ties_needed = need - above3_s;
    for (int i = threadIdx.x; i < n_cand; i += blockDim.x) {
        unsigned low = (unsigned)(c[i] >> 32) & 1023u;
        int idx = (int)(~(unsigned)(c[i] & 0xffffffffull));
        if (low > b3) atomicOr(&sel[idx >> 5], 1u << (idx & 31));
        else if (low == b3) atomicOr(&tie[idx >> 5], 1u << (idx & 31));
    }
    __syncthreads();
    // Each thread owns a run of consecutive words; ties are taken in index order.
    int per = (words + blockDim.x - 1) / blockDim.x;
    int w0 = min(words, threadIdx.x * per), w1 = min(words, w0 + per);
    int my_ties = 0;
    for (int w = w0; w < w1; w++) my_ties += __popc(tie[w]);
    int ties_before;
    block_exclusive_sum(my_ties, &ties_before, warp_tot);
    int my_sel = 0;
    for (int w = w0; w < w1; w++) {
        unsigned tw = tie[w];
        while (tw && ties_before < ties_needed) {
            unsigned bit = tw & (0u - tw);
            sel[w] |= bit;
            tw ^= bit;
            ties_before++;
        }
        my_sel += __popc(sel[w]);
    }
    int at;
    block_exclusive_sum(my_sel, &at, warp_tot);
    for (int w = w0; w < w1; w++) {
        unsigned sw = sel[w];
        while (sw) {
            int b = __ffs(sw) - 1;
            o[at++] = w * 32 + b;
            sw &= sw - 1;
        }
    }
}

// The rows whose candidates overflowed the multi-block path's buffer, done by one block each.
extern "C" __global__ void __launch_bounds__(1024, 1)
topk_fallback(const float* logits, const int* lens, int ld, int k, const int* counters, int cap, int* out) {
    int t = blockIdx.x;
    int len = min(lens[t], ld);
    if (len <= k || (counters[2 * t + 1] <= cap && len <= TK_MAX_LEN)) return;
    topk_row_block(logits + (size_t)t * ld, len, k, out + (size_t)t * k);
}

// ---------------------------------------------------------------------------------------------
// FP8 indexer (the production path of dsa.md §1.3): q and k are rotated by the 128-point
// Hadamard transform, then quantized to e4m3 with one power-of-two scale per 128 values (per
// token for k, per token and head for q). Because ReLU(a·x) = a·ReLU(x) for a > 0, the scales
// leave the matrix product: q's scale is folded into the head weight, k's is applied after the
// head sum.

// One warp per row of 128 bf16: Walsh–Hadamard rotation (scaled by 128^-0.5), amax, e4m3.
// Lane l holds elements 4l..4l+3; strides 1 and 2 stay in the lane, 4..64 cross lanes.
extern "C" __global__ void hadamard_quant_e4m3(const bf16* x, unsigned char* q8, float* scale,
                                               int rows) {
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (warp >= rows) return;
    const bf16* r = x + (size_t)warp * 128 + lane * 4;
    float v[4];
#pragma unroll
    for (int i = 0; i < 4; i++) v[i] = bf16_to_f32(r[i]);
    // strides 1, 2 inside the lane
    float a0 = v[0] + v[1], a1 = v[0] - v[1], a2 = v[2] + v[3], a3 = v[2] - v[3];
    v[0] = a0 + a2; v[2] = a0 - a2; v[1] = a1 + a3; v[3] = a1 - a3;
    // strides 4..64: partner lane l ^ m; the lower lane keeps the sum, the upper the difference
#pragma unroll
    for (int m = 1; m < 32; m <<= 1) {
        bool upper = (lane & m) != 0;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            float other = __shfl_xor_sync(0xffffffffu, v[i], m);
            v[i] = upper ? other - v[i] : v[i] + other;
        }
    }
    float amax = 0.f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        v[i] *= 0.08838834764831845f;  // 128^-0.5
        amax = fmaxf(amax, fabsf(v[i]));
    }
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    // ue8m0: the smallest power of two that keeps the row within ±448.
    float s = exp2f(ceilf(log2f(fmaxf(amax, 1e-4f) / 448.f)));
    float inv = 1.f / s;
    unsigned short lo, hi;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(lo) : "f"(v[1] * inv), "f"(v[0] * inv));
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(hi) : "f"(v[3] * inv), "f"(v[2] * inv));
    *reinterpret_cast<unsigned*>(q8 + (size_t)warp * 128 + lane * 4) = (unsigned)lo | ((unsigned)hi << 16);
    if (lane == 0) scale[warp] = s;
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

// One warp per token: the indexer key (LayerNorm with eps 1e-6, RoPE, Hadamard) into the cache.
extern "C" __global__ void index_key_prep(const float* k, const float* w, const float* b,
                                          const int* positions, const float* cos_t,
                                          const float* sin_t, const int* rows, bf16* cache, int n) {
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
    bf16* o = cache + (size_t)rows[tok] * 128 + lane * 4;
#pragma unroll
    for (int i = 0; i < 4; i++) o[i] = f32_to_bf16(v[i]);
}

// One warp per (token, indexer head): RoPE and Hadamard of the query [n, 64, 128] into bf16.
extern "C" __global__ void index_query_prep(const float* q, const int* positions, const float* cos_t,
                                            const float* sin_t, bf16* out, int n) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (row >= n * 64) return;
    float v[4];
#pragma unroll
    for (int i = 0; i < 4; i++) v[i] = q[(size_t)row * 128 + lane * 4 + i];
    index_rope_hadamard(v, lane, positions[row / 64], cos_t, sin_t);
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

// Top-k of rows with their own lengths (decode with many sequences): one block per row.
extern "C" __global__ void __launch_bounds__(1024, 1)
topk_rows_lens(const float* logits, const int* lens, int* out, int ld, int k) {
    int t = blockIdx.x;
    topk_row_block(logits + (size_t)t * ld, min(lens[t], ld), k, out + (size_t)t * k);
}
