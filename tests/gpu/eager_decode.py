"""PyTorch eager implementation of the same DeepSeek-V3.2-architecture model, for the end-to-end
decode comparison (issue 7, acceptance 3). Reads the checkpoint `envsynth model init` writes
(config.json + bf16 model.safetensors), prefills `batch` prompts (the same tokens as
`envsynth model gpu-check --model`), then times greedy decode steps of all of them together.

Plain eager PyTorch in bf16, as one would write it: no torch.compile, no CUDA graphs, no custom
kernels. Prefill masks dense attention to the top-k; decode gathers the top-k rows (sparse);
MoE loops over the experts with the tokens routed to each.

usage: eager_decode.py MODEL_DIR OUT.json [--batches 1,32,128] [--prompt 2560] [--steps 64]
"""

import argparse
import glob
import json
import math
import struct
import time

import torch

DT = torch.bfloat16


def load_safetensors(folder):
    tensors = {}
    for path in sorted(glob.glob(f"{folder}/*.safetensors")):
        with open(path, "rb") as f:
            raw = f.read()
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8 : 8 + n])
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            kind = {"BF16": torch.bfloat16, "F32": torch.float32}[info["dtype"]]
            t = torch.frombuffer(bytearray(raw[base + a : base + b]), dtype=kind)
            tensors[name] = t.reshape(info["shape"])
    return tensors


def yarn_mscale(factor, m):
    return 1.0 if factor <= 1.0 or m == 0.0 else 0.1 * m * math.log(factor) + 1.0


def rope_tables(cfg, positions):
    dim, base = cfg["qk_rope_head_dim"], cfg.get("rope_theta", 10000.0)
    freqs = [1.0 / base ** (2 * i / dim) for i in range(dim // 2)]
    att = 1.0
    s = cfg.get("rope_scaling")
    if s:
        orig = s["original_max_position_embeddings"]

        def corr(rot):
            return dim * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))

        low = max(math.floor(corr(s["beta_fast"])), 0.0)
        high = min(math.ceil(corr(s["beta_slow"])), dim - 1.0)
        if low == high:
            high += 0.001
        for i, f in enumerate(freqs):
            keep = 1.0 - min(max((i - low) / (high - low), 0.0), 1.0)
            freqs[i] = f / s["factor"] * (1 - keep) + f * keep
        if s.get("mscale", 0) and s.get("mscale_all_dim", 0):
            att = yarn_mscale(s["factor"], s["mscale"]) / yarn_mscale(s["factor"], s["mscale_all_dim"])
        else:
            att = yarn_mscale(s["factor"], 1.0)
    f = torch.tensor(freqs, dtype=torch.float64)
    ang = torch.arange(positions, dtype=torch.float64)[:, None] * f[None, :]
    return (ang.cos() * att).float().cuda(), (ang.sin() * att).float().cuda()


def rope(x, cos, sin, interleaved):
    # x [..., T, (heads,) dim] with cos/sin [T, dim/2] broadcast over heads by the caller
    xf = x.float()
    if interleaved:
        a, b = xf[..., 0::2], xf[..., 1::2]
    else:
        h = xf.shape[-1] // 2
        a, b = xf[..., :h], xf[..., h:]
    ra, rb = a * cos - b * sin, a * sin + b * cos
    if interleaved:
        out = torch.stack([ra, rb], dim=-1).flatten(-2)
    else:
        out = torch.cat([ra, rb], dim=-1)
    return out.to(x.dtype)


def rms(x, w, eps):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(DT)


def hadamard_matrix(n):
    h = torch.ones(1, 1, dtype=torch.float32)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return (h / math.sqrt(n)).to(DT).cuda()


class Model:
    def __init__(self, folder):
        self.cfg = json.load(open(f"{folder}/config.json"))
        raw = load_safetensors(folder)
        self.w = {k: v.to(DT).cuda() for k, v in raw.items()}
        c = self.cfg
        self.eps = c.get("rms_norm_eps", 1e-6)
        self.cos, self.sin = rope_tables(c, c["max_position_embeddings"])
        self.had = hadamard_matrix(c["index_head_dim"])
        s = c.get("rope_scaling")
        m = yarn_mscale(s["factor"], s.get("mscale_all_dim", 0)) if s else 1.0
        self.scale = (c["qk_nope_head_dim"] + c["qk_rope_head_dim"]) ** -0.5 * m * m
        h, nope, v, kvl = c["num_attention_heads"], c["qk_nope_head_dim"], c["v_head_dim"], c["kv_lora_rank"]
        self.absorb = []
        for l in range(c["num_hidden_layers"]):
            kvb = self.w[f"model.layers.{l}.self_attn.kv_b_proj.weight"].view(h, nope + v, kvl)
            self.absorb.append((kvb[:, :nope, :], kvb[:, nope:, :]))

    def caches(self, batch, cap):
        c = self.cfg
        kvl, r = c["kv_lora_rank"], c["qk_rope_head_dim"]
        return [
            (
                torch.zeros(batch, cap, kvl, dtype=DT, device="cuda"),
                torch.zeros(batch, cap, r, dtype=DT, device="cuda"),
                torch.zeros(batch, cap, c["index_head_dim"], dtype=DT, device="cuda"),
            )
            for _ in range(c["num_hidden_layers"])
        ]

    def lin(self, x, name):
        return x @ self.w[name + ".weight"].t()

    def attention(self, l, x, p0, cache):
        c, W = self.cfg, self.w
        a = f"model.layers.{l}.self_attn"
        B, T, _ = x.shape
        h, nope, r = c["num_attention_heads"], c["qk_nope_head_dim"], c["qk_rope_head_dim"]
        ih, idim, topk = c["index_n_heads"], c["index_head_dim"], c["index_topk"]
        cos, sin = self.cos[p0 : p0 + T], self.sin[p0 : p0 + T]
        lat_c, pe_c, ix_c = cache
        L = p0 + T
        qr = rms(self.lin(x, f"{a}.q_a_proj"), W[f"{a}.q_a_layernorm.weight"], self.eps)
        q = self.lin(qr, f"{a}.q_b_proj").view(B, T, h, nope + r)
        q_nope, q_pe = q[..., :nope], rope(q[..., nope:], cos[:, None], sin[:, None], True)
        kv = self.lin(x, f"{a}.kv_a_proj_with_mqa")
        lat_c[:, p0:L] = rms(kv[..., : c["kv_lora_rank"]], W[f"{a}.kv_a_layernorm.weight"], self.eps)
        pe_c[:, p0:L] = rope(kv[..., c["kv_lora_rank"] :], cos, sin, True)
        # Indexer keys and queries: LayerNorm (keys), NeoX RoPE on the leading dims, Hadamard.
        ik = torch.nn.functional.layer_norm(
            self.lin(x, f"{a}.indexer.wk").float(), (idim,),
            W[f"{a}.indexer.k_norm.weight"].float(), W[f"{a}.indexer.k_norm.bias"].float(), 1e-6,
        ).to(DT)
        ik = torch.cat([rope(ik[..., :r], cos, sin, False), ik[..., r:]], -1)
        ix_c[:, p0:L] = ik @ self.had
        iq = self.lin(qr, f"{a}.indexer.wq_b").view(B, T, ih, idim)
        iq = torch.cat([rope(iq[..., :r], cos[:, None], sin[:, None], False), iq[..., r:]], -1) @ self.had
        iw = self.lin(x, f"{a}.indexer.weights_proj").float() * (ih ** -0.5) * (idim ** -0.5)
        scores = torch.einsum("bthd,bsd->bths", iq, ix_c[:, :L]).float().relu()
        scores = (scores * iw[..., None]).sum(2)  # [B, T, L]
        pos = torch.arange(p0, L, device="cuda")
        future = torch.arange(L, device="cuda")[None, :] > pos[:, None]  # [T, L]
        scores = scores.masked_fill(future, float("-inf"))
        k = min(topk, L)
        idx = scores.topk(k, dim=-1).indices  # [B, T, k]
        w_uk, w_uv = self.absorb[l]
        q_abs = torch.einsum("bthn,hnc->bthc", q_nope, w_uk)
        if T == 1:
            # Decode: gather the chosen rows (sparse), drop positions beyond the context.
            sel = idx[:, 0]  # [B, k]
            valid = torch.gather(scores[:, 0], 1, sel) > float("-inf")
            lat = torch.gather(lat_c[:, :L], 1, sel[..., None].expand(-1, -1, lat_c.shape[-1]))
            pe = torch.gather(pe_c[:, :L], 1, sel[..., None].expand(-1, -1, r))
            att = torch.einsum("bhc,bsc->bhs", q_abs[:, 0], lat) + torch.einsum("bhr,bsr->bhs", q_pe[:, 0], pe)
            att = (att.float() * self.scale).masked_fill(~valid[:, None, :], float("-inf"))
            o_lat = torch.einsum("bhs,bsc->bhc", att.softmax(-1).to(DT), lat)[:, None]
        else:
            keep = torch.zeros(B, T, L, dtype=torch.bool, device="cuda")
            keep.scatter_(2, idx, True)
            keep &= ~future
            att = torch.einsum("bthc,bsc->bths", q_abs, lat_c[:, :L]) + torch.einsum("bthr,bsr->bths", q_pe, pe_c[:, :L])
            att = (att.float() * self.scale).masked_fill(~keep[:, :, None, :], float("-inf"))
            o_lat = torch.einsum("bths,bsc->bthc", att.softmax(-1).to(DT), lat_c[:, :L])
        o = torch.einsum("bthc,hvc->bthv", o_lat, w_uv).reshape(B, T, -1)
        return self.lin(o, f"{a}.o_proj")

    def mlp(self, x, p):
        g = self.lin(x, f"{p}.gate_proj")
        return self.lin(torch.nn.functional.silu(g) * self.lin(x, f"{p}.up_proj"), f"{p}.down_proj")

    def moe(self, x, l):
        c, W = self.cfg, self.w
        m = f"model.layers.{l}.mlp"
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        E, G, TG, K = c["n_routed_experts"], c["n_group"], c["topk_group"], c["num_experts_per_tok"]
        scores = self.lin(x, f"{m}.gate").float().sigmoid()
        choice = scores + W[f"{m}.gate.e_score_correction_bias"].float()
        gs = choice.view(-1, G, E // G).topk(2, dim=-1).values.sum(-1)
        keep = torch.zeros_like(gs, dtype=torch.bool).scatter_(1, gs.topk(TG, dim=-1).indices, True)
        choice = choice.masked_fill(~keep.repeat_interleave(E // G, 1), float("-inf"))
        ids = choice.topk(K, dim=-1).indices
        wts = torch.gather(scores, 1, ids)
        if c.get("norm_topk_prob", True):
            wts = wts / (wts.sum(-1, keepdim=True) + 1e-20)
        wts = wts * c.get("routed_scaling_factor", 1.0)
        out = self.mlp(x, f"{m}.shared_experts").float() if c.get("n_shared_experts", 0) else torch.zeros_like(x, dtype=torch.float32)
        for e in range(E):
            rows, slot = (ids == e).nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            y = self.mlp(x[rows], f"{m}.experts.{e}").float()
            out.index_add_(0, rows, y * wts[rows, slot][:, None])
        return out.to(DT).reshape(shape)

    def forward(self, tokens, p0, caches):
        c, W = self.cfg, self.w
        x = W["model.embed_tokens.weight"][tokens]  # [B, T, d]
        for l in range(c["num_hidden_layers"]):
            p = f"model.layers.{l}"
            x = x + self.attention(l, rms(x, W[f"{p}.input_layernorm.weight"], self.eps), p0, caches[l])
            y = rms(x, W[f"{p}.post_attention_layernorm.weight"], self.eps)
            moe = l >= c.get("first_k_dense_replace", 0) and c.get("n_routed_experts", 0) > 0
            x = x + (self.moe(y, l) if moe else self.mlp(y, f"{p}.mlp"))
        x = rms(x[:, -1], W["model.norm.weight"], self.eps)
        head = W["lm_head.weight"] if "lm_head.weight" in W else W["model.embed_tokens.weight"]
        return (x @ head.t()).float()


# Untimed decode steps before the timed ones, as envsynth's E2E_WARM_STEPS (model_check.rs): the
# first steps at a new batch size settle cuBLAS and the allocator here, and record the CUDA graph there.
WARM_STEPS = 2


def prompt_token(b, i, vocab):
    return (i * 131 + b * 977 + 7) % vocab


@torch.no_grad()
def run(model, batch, prompt, steps):
    vocab = model.cfg["vocab_size"]
    caches = model.caches(batch, prompt + WARM_STEPS + steps + 1)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    nxt = []
    for b in range(batch):
        one = [(kv[b : b + 1], pe[b : b + 1], ix[b : b + 1]) for kv, pe, ix in caches]
        toks = torch.tensor([[prompt_token(b, i, vocab) for i in range(prompt)]], device="cuda")
        nxt.append(model.forward(toks, 0, one).argmax(-1))
    nxt = torch.cat(nxt)
    torch.cuda.synchronize()
    prefill_s = time.perf_counter() - t0
    tokens0 = [int(nxt[0])]
    t0 = time.perf_counter()
    for s in range(WARM_STEPS + steps):
        if s == WARM_STEPS:
            t0 = time.perf_counter()
        logits = model.forward(nxt[:, None], prompt + s, caches)
        nxt = logits.argmax(-1)
        tokens0.append(int(nxt[0]))  # the host needs each token, as a sampler would
    decode_s = time.perf_counter() - t0
    return {
        "batch": batch,
        "prompt": prompt,
        "steps": steps,
        "prefill_s": prefill_s,
        "decode_s": decode_s,
        "decode_tokens_per_s": batch * steps / decode_s,
        "tokens0": tokens0,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--batches", default="1,32,128")
    ap.add_argument("--prompt", type=int, default=2560)
    ap.add_argument("--steps", type=int, default=64)
    a = ap.parse_args()
    model = Model(a.model)
    run(model, 1, 256, 4)  # warm-up: kernels loaded, allocator primed
    results = [run(model, int(b), a.prompt, a.steps) for b in a.batches.split(",")]
    json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "eager": results}, open(a.out, "w"), indent=1)
    for r in results:
        print(f"eager batch {r['batch']}: {r['decode_tokens_per_s']:.0f} tok/s decode, prefill {r['prefill_s']:.2f} s")


if __name__ == "__main__":
    main()
