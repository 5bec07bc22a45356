#!/usr/bin/env python3
"""An independent NumPy forward pass of DeepSeek-V3.2, written from the spec (dsa.md §1), in
float64, whole-sequence and matrix-at-a-time. It reads a checkpoint folder (config.json +
model.safetensors, parsed by hand) and the logits the Rust reference wrote, and fails unless
every row agrees to 1e-4 relative error (max |a - b| / max |b| per row).

usage: dsa_reference.py CHECKPOINT_DIR RUST_LOGITS.json
"""

import json
import math
import struct
import sys

import numpy as np

TOLERANCE = 1e-4


def e4m3_table():
    table = np.zeros(256)
    for code in range(256):
        sign = -1.0 if code & 0x80 else 1.0
        exp, man = (code >> 3) & 0xF, code & 0x7
        if exp == 0xF and man == 0x7:
            table[code] = np.nan
        elif exp == 0:
            table[code] = sign * man / 8 * 2.0**-6
        else:
            table[code] = sign * (1 + man / 8) * 2.0 ** (exp - 7)
    return table


def read_safetensors(path):
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        raw = blob[8 + n + start : 8 + n + end]
        kind = info["dtype"]
        if kind == "F32":
            arr = np.frombuffer(raw, "<f4").astype(np.float64)
        elif kind == "BF16":
            arr = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        elif kind == "F8_E4M3":
            arr = e4m3_table()[np.frombuffer(raw, np.uint8)]
        else:
            raise SystemExit(f"{name}: dtype {kind} not handled")
        out[name] = arr.reshape(info["shape"])
    # FP8 projections: multiply each 128 x 128 block by its scale.
    for name in [k for k in out if k.endswith(".weight_scale_inv")]:
        w = out[name[: -len("_scale_inv")]]
        s = np.repeat(np.repeat(out.pop(name), 128, axis=0), 128, axis=1)
        out[name[: -len("_scale_inv")]] = w * s[: w.shape[0], : w.shape[1]]
    return out


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def layer_norm(x, w, b, eps=1e-6):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def silu(x):
    return x * sigmoid(x)


def get_mscale(factor, m):
    return 1.0 if factor <= 1 or not m else 0.1 * m * math.log(factor) + 1.0


def rotary(cfg):
    """Inverse wavelengths with YaRN (long wavelengths divided by factor, a linear ramp between
    the correction dims), and the cos/sin multiplier."""
    d, base = cfg["qk_rope_head_dim"], cfg.get("rope_theta", 10000.0)
    inv = base ** -(np.arange(0, d, 2) / d)
    rs = cfg.get("rope_scaling")
    factor = 1.0
    if rs:
        factor, orig = rs["factor"], rs["original_max_position_embeddings"]

        def dim_for(rotations):
            return d * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

        low = max(math.floor(dim_for(rs.get("beta_fast", 32))), 0)
        high = min(math.ceil(dim_for(rs.get("beta_slow", 1))), d - 1)
        if low == high:
            high += 0.001
        extrapolate = 1 - np.clip((np.arange(d // 2) - low) / (high - low), 0, 1)
        inv = inv / factor * (1 - extrapolate) + inv * extrapolate
        m, m_all = rs.get("mscale", 1.0), rs.get("mscale_all_dim", 0.0)
        attn = get_mscale(factor, m) / get_mscale(factor, m_all) if (m and m_all) else get_mscale(factor, 1.0)
    else:
        attn = 1.0
    return inv, attn


def rope_complex(x, angles, attn):
    """Interleaved RoPE: consecutive pairs are one complex number."""
    z = (x[..., 0::2] + 1j * x[..., 1::2]) * np.exp(1j * angles) * attn
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = z.real, z.imag
    return out


def rope_half(x, angles, attn):
    """Non-interleaved (rotate-half) RoPE: dim i pairs with dim i + d/2."""
    h = x.shape[-1] // 2
    c, s = np.cos(angles) * attn, np.sin(angles) * attn
    return np.concatenate([x[..., :h] * c - x[..., h:] * s, x[..., h:] * c + x[..., :h] * s], axis=-1)


def hadamard_matrix(n):
    h = np.array([[1.0]])
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / math.sqrt(n)


def forward(cfg, W, tokens):
    T = len(tokens)
    H, nope, rope, vd = cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    r = cfg["kv_lora_rank"]
    HI, dI, topk = cfg["index_n_heads"], cfg["index_head_dim"], cfg["index_topk"]
    eps = cfg.get("rms_norm_eps", 1e-6)
    inv, attn_factor = rotary(cfg)
    angles = np.arange(T)[:, None] * inv[None, :]  # T x rope/2
    scale = (nope + rope) ** -0.5
    rs = cfg.get("rope_scaling")
    if rs and rs.get("mscale_all_dim"):
        scale *= get_mscale(rs["factor"], rs["mscale_all_dim"]) ** 2
    Hm = hadamard_matrix(dI)
    causal = np.tril(np.ones((T, T), dtype=bool))

    h = W["model.embed_tokens.weight"][tokens]
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        a = f"{p}.self_attn"
        x = rms_norm(h, W[f"{p}.input_layernorm.weight"], eps)

        # MLA, MHA mode: queries [nope | rope], keys from the latent, shared rope key.
        qr = rms_norm(x @ W[f"{a}.q_a_proj.weight"].T, W[f"{a}.q_a_layernorm.weight"], eps)
        q = (qr @ W[f"{a}.q_b_proj.weight"].T).reshape(T, H, nope + rope)
        q_nope, q_pe = q[..., :nope], rope_complex(q[..., nope:], angles[:, None, :], attn_factor)
        kv = x @ W[f"{a}.kv_a_proj_with_mqa.weight"].T
        latent = rms_norm(kv[:, :r], W[f"{a}.kv_a_layernorm.weight"], eps)
        k_pe = rope_complex(kv[:, r:], angles, attn_factor)
        up = W[f"{a}.kv_b_proj.weight"].reshape(H, nope + vd, r)
        k_nope = np.einsum("hdr,sr->shd", up[:, :nope], latent)
        v = np.einsum("hdr,sr->shd", up[:, nope:], latent)
        scores = (np.einsum("thd,shd->hts", q_nope, k_nope) + np.einsum("thd,sd->hts", q_pe, k_pe)) * scale

        # Lightning indexer: [rope | nope], rotate-half RoPE, Hadamard, ReLU-weighted head sum.
        ix = f"{a}.indexer"
        qi = (qr @ W[f"{ix}.wq_b.weight"].T).reshape(T, HI, dI)
        ki = layer_norm(x @ W[f"{ix}.wk.weight"].T, W[f"{ix}.k_norm.weight"], W[f"{ix}.k_norm.bias"])
        qi = np.concatenate([rope_half(qi[..., :rope], angles[:, None, :], attn_factor), qi[..., rope:]], axis=-1)
        ki = np.concatenate([rope_half(ki[..., :rope], angles, attn_factor), ki[..., rope:]], axis=-1)
        qi, ki = qi @ Hm.T, ki @ Hm.T
        wts = (x @ W[f"{ix}.weights_proj.weight"].T) * HI**-0.5
        index = np.einsum("ths,th->ts", np.maximum(np.einsum("thd,sd->ths", qi, ki), 0), wts) * dI**-0.5
        index = np.where(causal, index, -np.inf)
        keep = np.zeros((T, T), dtype=bool)
        for t in range(T):
            chosen = np.argsort(-index[t], kind="stable")[: min(topk, t + 1)]
            keep[t, chosen] = True

        scores = np.where(keep[None], scores, -np.inf)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        o = np.einsum("hts,shd->thd", probs, v).reshape(T, H * vd)
        h = h + o @ W[f"{a}.o_proj.weight"].T

        x = rms_norm(h, W[f"{p}.post_attention_layernorm.weight"], eps)
        m = f"{p}.mlp"

        def mlp(prefix, xx):
            g = xx @ W[f"{prefix}.gate_proj.weight"].T
            u = xx @ W[f"{prefix}.up_proj.weight"].T
            return (silu(g) * u) @ W[f"{prefix}.down_proj.weight"].T

        if layer < cfg["first_k_dense_replace"]:
            h = h + mlp(m, x)
            continue
        E, G = cfg["n_routed_experts"], cfg["n_group"]
        s = sigmoid(x @ W[f"{m}.gate.weight"].T)
        biased = s + W[f"{m}.gate.e_score_correction_bias"]
        y = mlp(f"{m}.shared_experts", x) if cfg.get("n_shared_experts", 0) else np.zeros_like(x)
        for t in range(T):
            grouped = biased[t].reshape(G, E // G)
            group_score = np.sort(grouped, axis=-1)[:, -2:].sum(-1)
            groups = np.argsort(-group_score, kind="stable")[: cfg["topk_group"]]
            allowed = np.full(E, -np.inf)
            for g in groups:
                allowed[g * (E // G) : (g + 1) * (E // G)] = biased[t, g * (E // G) : (g + 1) * (E // G)]
            experts = np.argsort(-allowed, kind="stable")[: cfg["num_experts_per_tok"]]
            weights = s[t, experts]
            if cfg.get("norm_topk_prob", True):
                weights = weights / (weights.sum() + 1e-20)
            weights = weights * cfg["routed_scaling_factor"]
            for e, wgt in zip(experts, weights):
                y[t] += wgt * mlp(f"{m}.experts.{e}", x[t : t + 1])[0]
        h = h + y

    h = rms_norm(h, W["model.norm.weight"], eps)
    head = W["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else W["lm_head.weight"]
    return h @ head.T


def main():
    folder, logits_path = sys.argv[1], sys.argv[2]
    cfg = json.load(open(f"{folder}/config.json"))
    W = read_safetensors(f"{folder}/model.safetensors")
    rust = json.load(open(logits_path))
    want = forward(cfg, W, np.array(rust["tokens"]))
    worst = 0.0
    for kind in ("prefill", "decode"):
        got = np.array(rust[kind], dtype=np.float64)
        if got.shape != want.shape:
            raise SystemExit(f"{kind}: shape {got.shape}, reference {want.shape}")
        errs = np.abs(got - want).max(axis=1) / np.abs(want).max(axis=1)
        worst = max(worst, errs.max())
        print(f"{kind}: {len(errs)} positions, max relative error {errs.max():.3e} (position {errs.argmax()})")
    if not worst < TOLERANCE:
        raise SystemExit(f"max relative error {worst:.3e} exceeds {TOLERANCE}")


if __name__ == "__main__":
    main()
