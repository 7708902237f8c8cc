#!/usr/bin/env python3
"""PyTorch peers of the magi-attn benchmark: cuDNN SDPA, flash SDPA and FlexAttention.

Usage: python3 scripts/bench/peers.py <cases.json> <out.json> [--peers cudnn,flash,flex] [--fake]

cases.json is written by scripts/bench/main.ts. Every case carries its shape, its area (visible cells; the
FLOPs of every peer are counted from this same area, so TFLOP/s compare like for like) and the semantic
description of its mask, from which this script rebuilds the SAME mask as a FlexAttention mask_mod. The
mask_mod's area is recounted on the GPU and compared with the case's area before any timing.

Inputs are the same values as ours, rebuilt here on the GPU from cases.json's "distribution": "randn"
(standard normal, scripts/bench/inputs.ts randnBf16 = randn_bf16 here) or "hashed" (the bounded pools of
earlier runs, hashBf16 = hash_bf16 here). So each peer's out, dq, dk and dv are compared with the rows of
ours that scripts/bench/main.ts put in cases.json (checks: ours_vs_<peer>_<tensor>_rel_err), and
FlexAttention's out with the SDPA backends'.

Timing: CUDA events, warm-up first, median. Forward (with autograd on, as in training): batches of
back-to-back calls (about 10 ms) between two events, divided by the batch size. Backward: each iteration
runs a fresh forward (untimed), then records an event, runs torch.autograd.grad, records an event: only the
backward's GPU work lies between the two events. FlexAttention's compilation and block-mask creation are
timed separately (compile_s, block_mask_ms) and kept out of its TFLOP/s.

--fake writes made-up numbers in the same schema without torch (for `deno task bench --dry-run`).
Progress goes to stderr; out.json is rewritten after every case, so a run cut short keeps what it did.
"""

import json
import math
import os
import statistics
import sys
import time
import traceback


def log(message):
    print(f"[peers {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


try:
    import torch
    import torch.nn.functional as F
except Exception as error:  # no torch: say so in the output file, do not crash the Deno side's parsing
    torch = None
    TORCH_IMPORT_ERROR = f"{type(error).__name__}: {error}"
else:
    TORCH_IMPORT_ERROR = None

# Timing knobs, the same as scripts/bench/main.ts uses for ours: 20 samples, or 0.5 s once there are 5.
MIN_TIME_S = 0.5
MAX_SAMPLES = 20
MIN_SAMPLES = 5
WARMUP = 3


def enough(samples, began):
    elapsed = time.perf_counter() - began
    return len(samples) >= MAX_SAMPLES or (len(samples) >= MIN_SAMPLES and elapsed >= MIN_TIME_S)


def time_forward(fn):
    """Median milliseconds per call of fn() (launches GPU work), from event-timed batches."""
    for _ in range(WARMUP):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    single_ms = max(start.elapsed_time(end), 1e-3)
    batch = max(1, min(32, int(10.0 / single_ms)))  # batches of about 10 ms
    samples = []
    began = time.perf_counter()
    while True:
        start.record()
        for _ in range(batch):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / batch)
        if enough(samples, began):
            break
    return statistics.median(samples), len(samples) * batch


def time_backward(forward, inputs, grad_out):
    """Median milliseconds of torch.autograd.grad(forward(), inputs, grad_out): the backward only."""
    def one(start=None, end=None):
        out = forward()
        if start is not None:
            start.record()
        grads = torch.autograd.grad(out, inputs, grad_out)
        if end is not None:
            end.record()
        return grads

    for _ in range(WARMUP):
        one()
    torch.cuda.synchronize()
    samples = []
    began = time.perf_counter()
    while True:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        grads = one(start, end)
        end.synchronize()
        del grads
        samples.append(start.elapsed_time(end))
        if enough(samples, began):
            break
    return statistics.median(samples), len(samples)


def timed_run(forward, inputs, dout, result):
    """Times the forward and the backward into result, then returns result, the output and its gradients."""
    ms_fwd, iters_fwd = time_forward(forward)
    ms_bwd, iters_bwd = time_backward(forward, inputs, dout)
    out = forward()
    grads = torch.autograd.grad(out, inputs, dout)
    result.update(ms_fwd=ms_fwd, ms_bwd=ms_bwd, iters_fwd=iters_fwd, iters_bwd=iters_bwd)
    return result, out.detach(), grads


def ceilings():
    """Measured chip ceilings: bf16 matmul 8192^3 TFLOP/s and device-to-device copy GB/s."""
    result = {}
    try:
        n = 8192
        a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
        c = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
        ms, iters = time_forward(lambda: torch.matmul(a, b, out=c))
        result["matmul_bf16_8192_tflops"] = 2 * n**3 / (ms * 1e-3) / 1e12
        result["matmul_ms"] = ms
        del a, b, c
    except Exception as error:
        result["matmul_error"] = f"{type(error).__name__}: {error}"
    try:
        count = 1 << 30  # 1 GiB of bytes as uint8
        src = torch.empty(count, device="cuda", dtype=torch.uint8).random_(0, 255)
        dst = torch.empty_like(src)
        ms, _ = time_forward(lambda: dst.copy_(src))
        result["copy_gbps"] = 2 * count / (ms * 1e-3) / 1e9  # bytes read plus bytes written
        del src, dst
    except Exception as error:
        result["copy_error"] = f"{type(error).__name__}: {error}"
    torch.cuda.empty_cache()
    return result


# ----- masks ---------------------------------------------------------------------------------------------


def token_owner(lengths, total, device):
    """int32 tensor [total]: index of the document/node each token belongs to (laid out in order)."""
    owner = torch.repeat_interleave(
        torch.arange(len(lengths), dtype=torch.int32), torch.tensor(lengths, dtype=torch.int64)
    )
    if owner.numel() != total:
        raise ValueError(f"lengths sum to {owner.numel()}, expected {total}")
    return owner.to(device)


def build_mask_mod(case, device):
    """The case's mask as a FlexAttention mask_mod (None for full: no block mask at all)."""
    mask = case["mask"]
    kind = mask["kind"]
    total = case["S"]
    if kind == "full":
        return None
    if kind == "causal":
        def causal(b, h, q_idx, kv_idx):
            return q_idx >= kv_idx
        return causal
    if kind in ("varlen", "sliding_window"):
        document = token_owner(mask["seqlens"], total, device)
        if kind == "varlen":
            left, right = -1, (0 if mask["causal"] else -1)
        else:
            left, right = int(mask["left"]), int(mask["right"])
        single_document = len(mask["seqlens"]) == 1
        # Separate closures per pattern: FlexAttention traces the function, so no runtime branching on flags.
        if left < 0 and right == 0:
            def document_causal(b, h, q_idx, kv_idx):
                return (document[q_idx] == document[kv_idx]) & (q_idx >= kv_idx)
            return document_causal
        if left < 0 and right < 0:
            def document_full(b, h, q_idx, kv_idx):
                return document[q_idx] == document[kv_idx]
            return document_full
        if single_document:
            def window(b, h, q_idx, kv_idx):
                ok = (kv_idx >= q_idx - left) if left >= 0 else (kv_idx >= 0)
                return ok & ((kv_idx <= q_idx + right) if right >= 0 else (kv_idx >= 0))
            return window

        def document_window(b, h, q_idx, kv_idx):
            ok = document[q_idx] == document[kv_idx]
            if left >= 0:
                ok = ok & (kv_idx >= q_idx - left)
            if right >= 0:
                ok = ok & (kv_idx <= q_idx + right)
            return ok
        return document_window
    if kind == "prefix_tree":
        node_lengths = mask["node_lengths"]
        node_count = len(node_lengths)
        node = token_owner(node_lengths, total, device)
        sees = torch.zeros(node_count, node_count, dtype=torch.bool)
        for path in mask["paths"]:
            for position, current in enumerate(path):
                for earlier in path[: position + 1]:
                    sees[current, earlier] = True
        sees = sees.to(device)

        def prefix_tree(b, h, q_idx, kv_idx):
            query_node, key_node = node[q_idx], node[kv_idx]
            return sees[query_node, key_node] & ((query_node != key_node) | (q_idx >= kv_idx))
        return prefix_tree
    raise ValueError(f"unknown mask kind {kind!r}")


def mask_area(mask_mod, total, device, rows_per_chunk=1024):
    """Visible cells of mask_mod over total x total, counted densely on the GPU in row chunks."""
    if mask_mod is None:
        return total * total
    zero = torch.zeros((), dtype=torch.int32, device=device)
    kv_idx = torch.arange(total, device=device, dtype=torch.int32)[None, :]
    area = 0
    for start in range(0, total, rows_per_chunk):
        q_idx = torch.arange(start, min(start + rows_per_chunk, total), device=device, dtype=torch.int32)[:, None]
        area += int(mask_mod(zero, zero, q_idx, kv_idx).sum().item())
    return area


# ----- inputs and cross-checks ----------------------------------------------------------------------------


def mul32(a, b):
    """(a * b) mod 2^32 for int64 tensors a in [0, 2^32) and a constant b, without int64 overflow."""
    return ((a & 0xFFFF) * b + (((a >> 16) * (b & 0xFFFF)) << 16)) & 0xFFFFFFFF


def hash_bf16(count, seed, exp_lo, exp_hi, device):
    """The same bf16 values as scripts/bench/inputs.ts hashBf16: element i from fmix32((i+1)*0x9E3779B1 ^ seed)."""
    h = fmix_counter(torch.arange(1, count + 1, device=device, dtype=torch.int64), seed)
    exponent = exp_lo + ((h >> 7) & 0xFFFF) % (exp_hi - exp_lo + 1)
    bits = ((h >> 31) << 15) | (exponent << 7) | (h & 0x7F)
    bits = torch.where(bits >= 32768, bits - 65536, bits).to(torch.int16)
    return bits.view(torch.bfloat16)


def fmix_counter(counter, seed):
    """MurmurHash3's finalizer of (counter * 0x9E3779B1 mod 2^32) XOR seed, for int64 counters < 2^32."""
    h = mul32(counter, 0x9E3779B1) ^ seed
    h = h ^ (h >> 16)
    h = mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def randn_bf16(count, seed, device):
    """The same bf16 values as scripts/bench/inputs.ts randnBf16: standard normal by Box-Muller over pairs.

    Pair m: u1 = (h(2m+1) + 1) / 2^32, u2 = h(2m+2) / 2^32, r = sqrt(-2 ln u1), theta = 2 pi u2; element 2m
    is r cos theta, element 2m+1 is r sin theta, computed in float64, rounded to float32, then to bf16
    (nearest even, on the float32 bits as ours does).
    """
    pairs = (count + 1) // 2
    pair = torch.arange(pairs, device=device, dtype=torch.int64)
    u1 = (fmix_counter(2 * pair + 1, seed).to(torch.float64) + 1.0) / 4294967296.0
    u2 = fmix_counter(2 * pair + 2, seed).to(torch.float64) / 4294967296.0
    radius = torch.sqrt(-2.0 * torch.log(u1))
    angle = (2.0 * math.pi) * u2
    values = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], 1).reshape(-1)[:count]
    f32 = values.to(torch.float32).view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    bits = ((f32 + 0x7FFF + ((f32 >> 16) & 1)) >> 16) & 0xFFFF
    bits = torch.where(bits >= 32768, bits - 65536, bits).to(torch.int16)
    return bits.view(torch.bfloat16)


def make_input(recipe, distribution, tokens, heads, dim, device):
    """Our thd tensor [tokens, heads, dim] as the peers' layout [1, heads, tokens, dim] (contiguous)."""
    count = tokens * heads * dim
    if distribution == "randn":
        flat = randn_bf16(count, recipe["seed"], device)
    else:
        flat = hash_bf16(count, recipe["seed"], recipe["exp_lo"], recipe["exp_hi"], device)
    return flat.view(tokens, heads, dim).permute(1, 0, 2).unsqueeze(0).contiguous()


def bits_to_rows(bits, rows, heads, dim, device):
    """bf16 bit patterns [rows, heads, dim] (a flat list of 0..65535) as a float32 tensor."""
    raw = torch.tensor(bits, dtype=torch.int32)
    raw = torch.where(raw >= 32768, raw - 65536, raw).to(torch.int16)
    return raw.view(torch.bfloat16).view(len(rows), heads, dim).float().to(device)


def compare_with_ours(case, peer, out, grads, entry):
    """Relative errors of this peer's out/dq/dk/dv against our rows (scripts/bench/main.ts sent them in cases.json)."""
    samples = case.get("ours_samples")
    if not samples:
        return
    rows = samples["rows"]
    index = torch.tensor(rows, device=out.device, dtype=torch.int64)
    tensors = {"out": out, "dq": grads[0], "dk": grads[1], "dv": grads[2]}
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        heads = tensor.shape[1]
        if name in ("dk", "dv") and heads != case["Hkv"]:
            continue  # kv heads were repeated for this peer: its dk/dv are per query head
        theirs = tensor[0].index_select(1, index).permute(1, 0, 2).float()  # [rows, heads, dim]
        ours = bits_to_rows(samples[name], rows, heads, case["D"], out.device)
        entry["checks"][f"ours_vs_{peer}_{name}_rel_err"] = rel_error(ours, theirs)


# ----- peers ---------------------------------------------------------------------------------------------


def tflops(flops, ms):
    return flops / (ms * 1e-3) / 1e12 if ms and ms > 0 else None


def rel_error(a, b):
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def run_sdpa(case, backend_name, q, k, v, dout):
    """cuDNN or flash SDPA (full / causal only): timings and the output of one forward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[backend_name]
    is_causal = case["mask"]["kind"] == "causal"
    gqa = case["Hq"] != case["Hkv"]
    result = {"gqa_mode": None}
    k_use, v_use = k, v
    with sdpa_kernel([backend]):
        def attend(kk, vv, **extra):
            return F.scaled_dot_product_attention(q, kk, vv, is_causal=is_causal, **extra)

        extra = {}
        if gqa:
            try:
                with torch.no_grad():
                    attend(k, v, enable_gqa=True)
                extra = {"enable_gqa": True}
                result["gqa_mode"] = "enable_gqa"
            except Exception as error:  # this backend lacks GQA: repeat kv heads (leaf tensors, same FLOPs)
                log(f"  {backend_name}: enable_gqa failed ({type(error).__name__}: {str(error)[:120]}); repeating kv")
                groups = case["Hq"] // case["Hkv"]
                k_use = k.detach().repeat_interleave(groups, dim=1).requires_grad_(True)
                v_use = v.detach().repeat_interleave(groups, dim=1).requires_grad_(True)
                result["gqa_mode"] = "repeat_kv"

        def forward():
            return attend(k_use, v_use, **extra)

        return timed_run(forward, (q, k_use, v_use), dout, result)


def run_flex(case, compiled_flex, q, k, v, dout, device):
    from torch.nn.attention.flex_attention import create_block_mask

    result = {}
    mask_mod = build_mask_mod(case, device)
    began = time.perf_counter()
    area = mask_area(mask_mod, case["S"], device)
    result["area_check_s"] = time.perf_counter() - began
    result["mask_area"] = area
    if area != case["area"]:
        raise RuntimeError(f"mask_mod area {area} != case area {case['area']}: peer mask differs from ours")
    block_mask = None
    if mask_mod is not None:
        torch.cuda.synchronize()
        began = time.perf_counter()
        block_mask = create_block_mask(mask_mod, B=None, H=None, Q_LEN=case["S"], KV_LEN=case["S"], device=device)
        torch.cuda.synchronize()
        result["block_mask_ms"] = (time.perf_counter() - began) * 1e3
        result["block_mask_sparsity"] = float(block_mask.sparsity()) if hasattr(block_mask, "sparsity") else None
    gqa = case["Hq"] != case["Hkv"]
    extra = {"enable_gqa": True} if gqa else {}
    if gqa:
        result["gqa_mode"] = "enable_gqa"

    def forward():
        return compiled_flex(q, k, v, block_mask=block_mask, **extra)

    # First calls compile (Dynamo + Inductor + Triton): timed separately, kept out of the TFLOP/s.
    began = time.perf_counter()
    out = forward()
    torch.autograd.grad(out, (q, k, v), dout)
    torch.cuda.synchronize()
    result["compile_s"] = time.perf_counter() - began
    del out
    return timed_run(forward, (q, k, v), dout, result)


def finish(result, case):
    if "ms_fwd" in result:
        result["tflops_fwd"] = tflops(case["flops_fwd"], result["ms_fwd"])
        result["tflops_bwd"] = tflops(case["flops_bwd"], result["ms_bwd"])
    return result


def finite_json(value):
    """value with NaN/inf floats replaced by None (JSON has no NaN; Deno's JSON.parse rejects it)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


def error_text(error):
    text = f"{type(error).__name__}: {error}"
    return text if len(text) < 600 else text[:600] + "…"


def fake_case(case, peers, entry, last):
    """--fake (scripts/bench/main.ts --dry-run): deterministic made-up numbers in the real schema, no torch, no GPU.
    cuDNN "fails" on the last case, to exercise the error path."""
    samples = case.get("ours_samples")
    if samples:
        rows = len(samples["rows"])
        for name, heads in (("out", case["Hq"]), ("dq", case["Hq"]), ("dk", case["Hkv"]), ("dv", case["Hkv"])):
            if len(samples[name]) != rows * heads * case["D"]:
                raise ValueError(f"ours_samples.{name} has {len(samples[name])} values, expected {rows * heads * case['D']}")
    kind = case["mask"]["kind"]
    for number, peer in enumerate(peers):
        if peer in ("cudnn", "flash") and kind not in ("full", "causal"):
            continue
        if peer == "cudnn" and last:
            entry["peers"][peer] = {"error": "OutOfMemoryError: fake failure (dry run) to exercise the error path"}
            continue
        fraction = (sum(map(ord, case["name"])) * (number + 3)) % 97 / 97
        tflops_fwd, tflops_bwd = 250 + 350 * fraction, 150 + 300 * fraction
        result = {"ms_fwd": case["flops_fwd"] / (tflops_fwd * 1e12) * 1e3, "ms_bwd": case["flops_bwd"] / (tflops_bwd * 1e12) * 1e3}
        if peer == "flex":
            result.update(compile_s=5.0 + fraction, block_mask_ms=(0.0 if kind == "full" else 2.0 + fraction))
        entry["peers"][peer] = finish(result, case)
        if samples:
            for name in ("out", "dq", "dk", "dv"):
                entry["checks"][f"ours_vs_{peer}_{name}_rel_err"] = 0.002 + 0.01 * fraction


def main():
    args = sys.argv[1:]
    positional = [arg for index, arg in enumerate(args) if not arg.startswith("--") and (index == 0 or args[index - 1] != "--peers")]
    if len(positional) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cases_path, out_path = positional[0], positional[1]
    peers = ["cudnn", "flash", "flex"]
    if "--peers" in args:
        peers = args[args.index("--peers") + 1].split(",")
    fake = "--fake" in args
    with open(cases_path) as handle:
        spec = json.load(handle)
    cases, recipes = spec["cases"], spec["inputs"]
    # Files written before --inputs existed carry no distribution: their inputs were the hashed pools.
    distribution = spec.get("distribution", "hashed")

    report = {"torch_version": None, "cases": {}, "peers": peers, "fake": fake, "inputs": distribution}

    def save():
        temporary = out_path + ".tmp"
        with open(temporary, "w") as handle:
            json.dump(finite_json(report), handle, indent=1, allow_nan=False, default=str)
        os.replace(temporary, out_path)

    if fake:
        log(f"FAKE run (no torch, no GPU): {len(cases)} case(s), peers {','.join(peers)}")
        report.update(gpu_name="fake", ceilings={"matmul_bf16_8192_tflops": 700.0, "copy_gbps": 2900.0})
        for index, case in enumerate(cases):
            entry = {"peers": {}, "checks": {}}
            report["cases"][case["name"]] = entry
            try:
                fake_case(case, peers, entry, index == len(cases) - 1)
            except Exception as error:
                entry["error"] = error_text(error)
            log(f"  {case['name']}: {', '.join(sorted(entry['peers']))}" + (f" ERROR {entry['error']}" if "error" in entry else ""))
        save()
        log(f"wrote {out_path}")
        return 0

    if torch is None:
        report["error"] = f"torch import failed: {TORCH_IMPORT_ERROR}"
        save()
        log(report["error"])
        return 1
    report["torch_version"] = torch.__version__
    report["cuda_version"] = torch.version.cuda
    if not torch.cuda.is_available():
        report["error"] = "torch.cuda.is_available() is False"
        save()
        log(report["error"])
        return 1
    device = "cuda"
    report["gpu_name"] = torch.cuda.get_device_name(0)
    try:
        report["cudnn_version"] = torch.backends.cudnn.version()
    except Exception:
        report["cudnn_version"] = None
    try:
        import triton
        report["triton_version"] = triton.__version__
    except Exception:
        report["triton_version"] = None
    log(f"torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN {report['cudnn_version']}) on {report['gpu_name']}")

    log("ceilings: bf16 matmul 8192^3 and a 1 GiB device copy")
    report["ceilings"] = ceilings()
    log(f"ceilings: {json.dumps(report['ceilings'])}")
    save()

    compiled_flex = None
    if "flex" in peers:
        try:
            import importlib

            # A plain `import torch._dynamo` here would make `torch` local to main() (UnboundLocalError).
            dynamo = importlib.import_module("torch._dynamo")
            from torch.nn.attention.flex_attention import flex_attention

            # One compilation per case (each mask_mod is new code to trace): raise the recompile limit so
            # Dynamo never falls back to eager flex_attention, which would time a different (slow) path.
            for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit"):
                if hasattr(dynamo.config, name):
                    setattr(dynamo.config, name, max(getattr(dynamo.config, name), 256))
            compiled_flex = torch.compile(flex_attention, dynamic=False)
        except Exception as error:
            report["flex_setup_error"] = error_text(error)
            log(f"flex setup failed: {report['flex_setup_error']}")

    for index, case in enumerate(cases):
        name = case["name"]
        log(
            f"case {index + 1}/{len(cases)} {name}: S={case['S']} Hq={case['Hq']} Hkv={case['Hkv']} D={case['D']} "
            f"mask={case['mask']['kind']}"
        )
        entry = {"peers": {}, "checks": {}}
        report["cases"][name] = entry
        try:
            # The same values as ours (scripts/bench/inputs.ts), in the [1, H, S, D] layout.
            q = make_input(recipes["q"], distribution, case["S"], case["Hq"], case["D"], device).requires_grad_(True)
            k = make_input(recipes["k"], distribution, case["S"], case["Hkv"], case["D"], device).requires_grad_(True)
            v = make_input(recipes["v"], distribution, case["S"], case["Hkv"], case["D"], device).requires_grad_(True)
            dout = make_input(recipes["dout"], distribution, case["S"], case["Hq"], case["D"], device)
        except Exception as error:
            entry["error"] = error_text(error)
            log(f"  inputs failed: {entry['error']}")
            save()
            continue
        outputs = {}
        kind = case["mask"]["kind"]
        for peer in peers:
            if peer in ("cudnn", "flash") and kind not in ("full", "causal"):
                continue  # SDPA takes no arbitrary masks without a dense mask tensor: not a like-for-like peer
            if peer == "flex" and compiled_flex is None:
                entry["peers"]["flex"] = {"error": report.get("flex_setup_error", "flex unavailable")}
                continue
            began = time.perf_counter()
            try:
                if peer == "flex":
                    result, out, grads = run_flex(case, compiled_flex, q, k, v, dout, device)
                else:
                    result, out, grads = run_sdpa(case, peer, q, k, v, dout)
                entry["peers"][peer] = finish(result, case)
                outputs[peer] = out
                compare_with_ours(case, peer, out, grads, entry)
                del grads
                ours_errors = [
                    f"{key.split('_')[3]} {value:.1e}"
                    for key, value in entry["checks"].items()
                    if key.startswith(f"ours_vs_{peer}_")
                ]
                log(
                    f"  {peer:5s}: fwd {result['ms_fwd']:.3f} ms {result['tflops_fwd']:.1f} TFLOP/s, "
                    f"bwd {result['ms_bwd']:.3f} ms {result['tflops_bwd']:.1f} TFLOP/s "
                    f"({time.perf_counter() - began:.1f} s"
                    + (f", compile {result['compile_s']:.1f} s" if "compile_s" in result else "")
                    + (f", block mask {result['block_mask_ms']:.1f} ms" if "block_mask_ms" in result else "")
                    + ")"
                    + (f"; ours vs {peer} rel err: {', '.join(ours_errors)}" if ours_errors else "")
                )
            except Exception as error:
                entry["peers"][peer] = {"error": error_text(error)}
                log(f"  {peer:5s}: FAILED {error_text(error)}")
                if os.environ.get("PEERS_TRACEBACK"):
                    traceback.print_exc()
            finally:
                q.grad = k.grad = v.grad = None
                torch.cuda.empty_cache()
        # FlexAttention's output against each SDPA backend's (same inputs).
        if "flex" in outputs:
            for peer in ("cudnn", "flash"):
                if peer in outputs:
                    error = rel_error(outputs["flex"], outputs[peer])
                    entry["checks"][f"flex_vs_{peer}_rel_err"] = error
                    log(f"  check: ||flex - {peer}|| / ||{peer}|| = {error:.2e}")
        del q, k, v, dout, outputs
        torch.cuda.empty_cache()
        save()
    save()
    log(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
