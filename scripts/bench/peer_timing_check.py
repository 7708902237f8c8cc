#!/usr/bin/env python3
"""Independent check of the benchmark's peer timing (issue 13, "Measurement"): cuDNN SDPA on full-16k and
causal-16k (bf16, B = 1, H = 16, D = 128) timed with a plain CUDA-event loop (N back-to-back calls between
two events, after a warm-up), under each input distribution and autograd setting, so the difference
between the bench's reading and a plain loop can be attributed.

Usage: python3 scripts/bench/peer_timing_check.py [--iters 30] [--methods]
Prints one line per configuration: TFLOP/s of the forward (by mask area) and, where autograd is on, of
the backward (each backward after an untimed forward, events around torch.autograd.grad only).
--methods instead times the same cuDNN forward (randn, autograd on) three ways in one process, three
rounds each, alternating: the bench's own `time_forward` (scripts/bench/peers.py: ~10 ms batches, a
synchronize after each, median), a plain loop of N calls between two events, and the plain loop after
1 s of idle GPU (clocks).
"""

import os
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

S, H, D = 16384, 16, 128
ITERS = int(sys.argv[sys.argv.index("--iters") + 1]) if "--iters" in sys.argv else 30


def hashed(count, seed, exp_lo, exp_hi):
    """The bench's pre-issue-13 inputs (bench/cases.ts hashBf16): bf16 with a uniform exponent in [lo, hi]."""
    index = torch.arange(1, count + 1, device="cuda", dtype=torch.int64)

    def mul32(a, b):
        return ((a & 0xFFFF) * b + (((a >> 16) * (b & 0xFFFF)) << 16)) & 0xFFFFFFFF

    h = mul32(index, 0x9E3779B1) ^ seed
    h = h ^ (h >> 16)
    h = mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = mul32(h, 0xC2B2AE35)
    h = h ^ (h >> 16)
    exponent = exp_lo + ((h >> 7) & 0xFFFF) % (exp_hi - exp_lo + 1)
    bits = ((h >> 31) << 15) | (exponent << 7) | (h & 0x7F)
    bits = torch.where(bits >= 32768, bits - 65536, bits).to(torch.int16)
    return bits.view(torch.bfloat16)


def inputs(kind):
    shape = (1, H, S, D)
    if kind == "randn":
        gen = torch.Generator(device="cuda").manual_seed(0)
        return [torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4)]
    recipes = [(0x51, 124, 127), (0x52, 124, 127), (0x53, 122, 126), (0x54, 122, 126)]
    return [hashed(S * H * D, *r).view(S, H, D).permute(1, 0, 2).unsqueeze(0).contiguous() for r in recipes]


def sm_clock():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip()
    except Exception:  # noqa: BLE001 (a clock reading is optional)
        return "?"


def methods():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import peers  # the bench's own timing loop

    for causal in (False, True):
        area = S * (S + 1) / 2 if causal else S * S
        flops_fwd = 4 * area * H * D
        q, k, v, _ = inputs("randn")
        qq, kk, vv = (t.detach().requires_grad_(True) for t in (q, k, v))
        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
            def fwd():
                return F.scaled_dot_product_attention(qq, kk, vv, is_causal=causal)

            def plain():
                for _ in range(5):
                    fwd()
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(ITERS):
                    fwd()
                end.record()
                end.synchronize()
                return start.elapsed_time(end) / ITERS

            for rnd in range(3):
                bench_ms, _ = peers.time_forward(fwd)
                plain_ms = plain()
                time.sleep(1.0)
                idle_ms = plain()
                name = "causal" if causal else "full"
                print(f"cudnn {name}-16k round {rnd}: bench time_forward {flops_fwd / bench_ms / 1e9:.0f} TFLOP/s | "
                      f"plain loop {flops_fwd / plain_ms / 1e9:.0f} | plain loop after 1 s idle "
                      f"{flops_fwd / idle_ms / 1e9:.0f} | sm clock {sm_clock()}", flush=True)


def main():
    if "--methods" in sys.argv:
        methods()
        return
    for causal in (False, True):
        area = S * (S + 1) / 2 if causal else S * S
        flops_fwd = 4 * area * H * D
        for kind in ("randn", "hashed"):
            q, k, v, dout = inputs(kind)
            for grad in (False, True):
                qq, kk, vv = (t.detach().requires_grad_(grad) for t in (q, k, v))
                with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                    def fwd():
                        return F.scaled_dot_product_attention(qq, kk, vv, is_causal=causal)
                    for _ in range(5):
                        out = fwd()
                    torch.cuda.synchronize()
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    for _ in range(ITERS):
                        out = fwd()
                    end.record()
                    end.synchronize()
                    ms_fwd = start.elapsed_time(end) / ITERS
                    line = (f"cudnn {'causal' if causal else 'full'}-16k inputs={kind:6} autograd={'on ' if grad else 'off'}"
                            f" fwd {ms_fwd:.3f} ms {flops_fwd / ms_fwd / 1e9:.0f} TFLOP/s")
                    if grad:
                        total = 0.0
                        for i in range(ITERS + 3):
                            out = fwd()
                            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                            s.record()
                            torch.autograd.grad(out, (qq, kk, vv), dout)
                            e.record()
                            e.synchronize()
                            if i >= 3:
                                total += s.elapsed_time(e)
                        ms_bwd = total / ITERS
                        line += f" | bwd {ms_bwd:.3f} ms {2.5 * flops_fwd / ms_bwd / 1e9:.0f} TFLOP/s"
                    print(line + f" | sm clock {sm_clock()}", flush=True)


if __name__ == "__main__":
    main()
