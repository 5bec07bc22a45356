#!/usr/bin/env python3
"""A/B timing of the prefill indexer between versions of kernels.cu, in one process.

Run-to-run noise between GPU calls is 5-10%, more than most kernel changes are worth, so both
versions are compiled here with NVRTC (the same options as the Rust loader), loaded side by side
through the driver API, run alternately on the same inputs, and their logits compared with the
first version's. Used while
tuning kernels; the acceptance figures come from `envsynth model gpu-check` (tests/gpu/run.sh).

usage: kernel_ab.py A.cu B.cu [C.cu ...]    (needs torch and the NVRTC wheel on LD_LIBRARY_PATH;
       the context is $CONTEXT, 131072 by default; $PREC picks bf16 or fp8, both by default)
"""

import ctypes
import os
import sys

import torch

CHUNK = 4096  # queries per launch, as in gpu-check's benchmark
IH, ID = 64, 128


def load(name):
    return ctypes.CDLL(name)


nvrtc = load("libnvrtc.so.13")
cuda = load("libcuda.so.1")


def check(rc, what):
    if rc != 0:
        raise RuntimeError(f"{what} failed with {rc}")


def compile_cubin(path):
    src = open(path, "rb").read()
    prog = ctypes.c_void_p()
    check(nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src, b"kernels.cu", 0, None, None), "nvrtcCreateProgram")
    opts = [b"--gpu-architecture=sm_90a", b"--std=c++17", b"--generate-line-info"]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = nvrtc.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(prog, log)
    if rc != 0:
        raise RuntimeError(f"{path}: {log.value.decode()}")
    nvrtc.nvrtcGetCUBINSize(prog, ctypes.byref(size))
    cubin = ctypes.create_string_buffer(size.value)
    check(nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
    return cubin


def define(path, name, default):
    """The value of `#define NAME value` in the source, or `default`."""
    for line in open(path):
        if line.startswith(f"#define {name} "):
            return int(line.split()[2])
    return default


def warpgroups(path, prec):
    """Warpgroups per block (4 queries each) as the source's IX_WGS_<PREC> says; 2 if absent."""
    return define(path, f"IX_WGS_{prec.upper()}", 2)


class Module:
    def __init__(self, path):
        self.path = path
        self.cubin = compile_cubin(path)
        self.mod = ctypes.c_void_p()
        check(cuda.cuModuleLoadData(ctypes.byref(self.mod), self.cubin), "cuModuleLoadData")

    def function(self, name, smem):
        f = ctypes.c_void_p()
        check(cuda.cuModuleGetFunction(ctypes.byref(f), self.mod, name.encode()), name)
        # CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
        check(cuda.cuFuncSetAttribute(f, 8, smem), "cuFuncSetAttribute")
        regs = ctypes.c_int()
        cuda.cuFuncGetAttribute(ctypes.byref(regs), 4, f)  # CU_FUNC_ATTRIBUTE_NUM_REGS
        local = ctypes.c_int()
        cuda.cuFuncGetAttribute(ctypes.byref(local), 3, f)  # LOCAL_SIZE_BYTES
        print(f"  {name}: {regs.value} registers, {local.value} bytes local")
        return f


def sm_count():
    return torch.cuda.get_device_properties(0).multi_processor_count


def resident(f, block, smem):
    """Blocks of `f` (`block` threads, `smem` bytes of dynamic shared memory) that fit on the
    whole GPU at once."""
    n = ctypes.c_int()
    check(cuda.cuOccupancyMaxActiveBlocksPerMultiprocessor(ctypes.byref(n), f, block, ctypes.c_size_t(smem)),
          "cuOccupancyMaxActiveBlocksPerMultiprocessor")
    return n.value * sm_count()


def decode_tiles_per_block(path, f, smem, keys, cap):
    """The decode indexer's tiles a block for one row of `keys` keys, as the model picks them
    (`decode_tiles_per_block` in gpu/mod.rs), for a version whose kernel takes
    `tiles_per_block`; None for one with a fixed count."""
    if "int tiles_per_block" not in open(path).read():
        return None
    tiles = (keys + 63) // 64
    if -(-tiles // cap) >= sm_count():
        return cap
    return min(cap, max(1, -(-tiles // resident(f, 128, smem))))


def e4m3_decode_operands(q, k, gen):
    """The FP8 decode indexer's operands from bf16 query `q` [64, 128] and keys `k` [L, 128]:
    both as e4m3 codes, with random per-head and per-key scales in [0.5, 1.5)."""
    q8 = q.clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8)
    k8 = k.clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8)
    qsc = torch.rand(q.shape[0], device="cuda", generator=gen) + 0.5
    ksc = torch.rand(k.shape[0], device="cuda", generator=gen) + 0.5
    return q8, qsc, k8, ksc


def decode_fp8_smem(path):
    """`indexer_decode_fp8`'s dynamic shared memory in version `path`: 1 KB for alignment, the
    query and a ring of IXD_STAGES_FP8 key tiles (rows of 128 bytes), the tiles' key scales and
    the 2,048-bin histogram."""
    stages = define(path, "IXD_STAGES_FP8", 3)
    return 1024 + (64 + stages * 64) * 128 + stages * 64 * 4 + 8192


class _LaunchAttr(ctypes.Structure):
    """CUlaunchAttribute: an id, padding, a 64-byte value (an int here)."""
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_int), ("rest", ctypes.c_char * 60)]


class _LaunchConfig(ctypes.Structure):
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("smem", ctypes.c_uint),
                ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(_LaunchAttr)), ("n_attrs", ctypes.c_uint)]


def launch(f, grid, block, smem, args, pdl=False, cooperative=False):
    """With `pdl`, launched with programmatic stream serialization (cuLaunchKernelEx): the kernel
    may start once the previous one has triggered its dependents, and waits for it with
    griddepcontrol.wait. With `cooperative` as well, its blocks must all be resident at once
    (the driver refuses the launch otherwise)."""
    holders = []
    for a in args:
        if isinstance(a, torch.Tensor):
            holders.append(ctypes.c_uint64(a.data_ptr()))
        elif isinstance(a, int):
            holders.append(ctypes.c_int32(a))
        elif isinstance(a, float):
            holders.append(ctypes.c_float(a))
        elif a is None:
            holders.append(ctypes.c_uint64(0))
        elif isinstance(a, ctypes._SimpleCData):  # a parameter of another width, e.g. c_int64
            holders.append(a)
        else:
            raise TypeError(a)
    ptrs = (ctypes.c_void_p * len(holders))(*[ctypes.cast(ctypes.pointer(h), ctypes.c_void_p) for h in holders])
    stream = torch.cuda.current_stream().cuda_stream
    if pdl:
        # CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION (6), CU_LAUNCH_ATTRIBUTE_COOPERATIVE (2)
        attrs = (_LaunchAttr * 2)(_LaunchAttr(id=6, value=1), _LaunchAttr(id=2, value=1))
        cfg = _LaunchConfig((grid[0], grid[1], grid[2] if len(grid) > 2 else 1), (block, 1, 1), smem,
                            ctypes.c_void_p(stream), attrs, 2 if cooperative else 1)
        check(cuda.cuLaunchKernelEx(ctypes.byref(cfg), f, ptrs, None), "cuLaunchKernelEx")
        return
    check(
        cuda.cuLaunchKernel(f, grid[0], grid[1], grid[2] if len(grid) > 2 else 1, block, 1, 1, smem,
                          ctypes.c_void_p(stream), ptrs, None),
        "cuLaunchKernel",
    )


def median_ms(run, reps):
    """The median time of `reps` calls of `run`, in milliseconds, each between two events."""
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        run()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def main():
    paths = sys.argv[1:]
    l = int(os.environ.get("CONTEXT", "131072"))
    precs = os.environ.get("PREC", "bf16,fp8").split(",")
    torch.cuda.init()
    torch.zeros(1, device="cuda")
    mods = [Module(p) for p in paths]
    gen = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(CHUNK * IH, ID, device="cuda", generator=gen).to(torch.bfloat16)
    k = torch.randn(l, ID, device="cuda", generator=gen).to(torch.bfloat16)
    w = torch.randn(CHUNK * IH, device="cuda", generator=gen) * ID**-0.5
    q8 = q.clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8)
    k8 = k.clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8)
    qsc = torch.rand(CHUNK * IH, device="cuda", generator=gen) + 0.5
    ksc = torch.rand(l, device="cuda", generator=gen) + 0.5
    logits = [torch.zeros(CHUNK, l, device="cuda") for _ in mods]
    flop = sum(2.0 * IH * ID * (c0 + r + 1) for c0 in range(0, l, CHUNK) for r in range(min(CHUNK, l - c0)))
    for prec, name in [("bf16", "indexer_logits_bf16"), ("fp8", "indexer_logits_fp8")]:
        if prec not in precs:
            continue
        smem = 225 * 1024  # the most a block may have, so a candidate may grow its ring
        fns = [m.function(name, smem) for m in mods]

        wgs = [warpgroups(m.path, prec) for m in mods]
        chunk_keys = [define(m.path, "IX_CHUNK", 8192) for m in mods]

        def sweep(i, out):
            for c0 in range(0, l, CHUNK):
                t = min(CHUNK, l - c0)
                s = c0 + t
                grid = ((s + chunk_keys[i] - 1) // chunk_keys[i], (t + 4 * wgs[i] - 1) // (4 * wgs[i]))
                if prec == "bf16":
                    args = [q, k, w, out, t, s, l, c0, None]
                else:
                    args = [q8, qsc, k8, ksc, w, out, t, s, l, c0, None]
                launch(fns[i], grid, 128 * wgs[i], smem, args)

        times = [[] for _ in mods]
        for rep in range(4):
            for i in range(len(mods)):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                sweep(i, logits[i])
                end.record()
                torch.cuda.synchronize()
                if rep > 0:
                    times[i].append(start.elapsed_time(end))
        # Compare the last chunk's logits (the sweep's final launch wrote them) with the first's.
        # Only the causal part: a block leaves the keys past its last query as they were, and the
        # versions may group queries differently.
        c0 = (l - 1) // CHUNK * CHUNK
        t_last = l - c0
        rows = torch.arange(CHUNK, device="cuda")[:, None]
        cols = torch.arange(l, device="cuda")[None, :]
        causal = (rows < t_last) & (cols <= c0 + rows)
        a = logits[0]
        fin = torch.isfinite(a) & causal
        ta = sorted(times[0])[1]
        for i, path in enumerate(paths):
            b = logits[i]
            same_mask = torch.equal(fin, torch.isfinite(b) & causal)
            diff = ((a - b).abs()[fin].max() / a[fin].abs().max()).item() if same_mask else float("inf")
            norm = ((a - b)[fin].double().norm() / a[fin].double().norm()).item() if same_mask else float("inf")
            tb = sorted(times[i])[1]
            print(
                f"{prec} {l} {path}: {tb:.1f} ms, {flop / tb / 1e9:.0f} TFLOP/s, {tb / ta:.3f} of the first, "
                f"max rel diff {diff:.2e}, norm rel diff {norm:.2e}"
            )


if __name__ == "__main__":
    main()
