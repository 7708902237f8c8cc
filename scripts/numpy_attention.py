"""Dense attention forward + backward in numpy (float32): the CPU baseline of `deno task bench:cpu`.

Reads one JSON object from argv[1]: {"seqlen", "heads", "head_dim", "causal", "repeats"}. Computes the
whole S x S score matrix per head (dense: every cell, masked cells set to -inf when causal), softmax with
its log-sum-exp, then dV, dP, dS, dQ, dK by matrix products. Prints one JSON line:
{"forward_s", "backward_s", "total_s" (medians over repeats), "samples" (each repeat), "numpy", "blas"}.
"""

import json
import sys
import time

import numpy as np


def blas_name():
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - older numpy: the name is informational only
        return "unknown"


def main():
    params = json.loads(sys.argv[1])
    seqlen = int(params["seqlen"])
    heads = int(params["heads"])
    head_dim = int(params["head_dim"])
    causal = bool(params.get("causal", True))
    repeats = int(params.get("repeats", 3))
    rng = np.random.default_rng(0)
    shape = (heads, seqlen, head_dim)
    q = rng.standard_normal(shape, dtype=np.float32)
    k = rng.standard_normal(shape, dtype=np.float32)
    v = rng.standard_normal(shape, dtype=np.float32)
    dout = rng.standard_normal(shape, dtype=np.float32)
    scale = np.float32(1.0 / np.sqrt(head_dim))
    # The mask as an additive bias (0 or -inf), built once outside the timed region like a flex key.
    bias = None
    if causal:
        bias = np.where(np.triu(np.ones((seqlen, seqlen), dtype=bool), k=1), np.float32(-np.inf), np.float32(0))

    def forward():
        # In-place elementwise steps: one S x S buffer per head, as a careful numpy user would write it.
        probs = np.matmul(q, k.transpose(0, 2, 1))
        probs *= scale
        if bias is not None:
            probs += bias
        row_max = probs.max(axis=-1, keepdims=True)
        probs -= row_max
        np.exp(probs, out=probs)
        row_sum = probs.sum(axis=-1, keepdims=True)
        probs /= row_sum
        out = np.matmul(probs, v)
        lse = (row_max + np.log(row_sum))[..., 0]
        return out, lse, probs

    def backward(out, probs):
        dv = np.matmul(probs.transpose(0, 2, 1), dout)
        dscores = np.matmul(dout, v.transpose(0, 2, 1))
        dscores -= (dout * out).sum(axis=-1, keepdims=True)
        dscores *= probs
        dscores *= scale
        dq = np.matmul(dscores, k)
        dk = np.matmul(dscores.transpose(0, 2, 1), q)
        return dq, dk, dv

    forward_times, backward_times, total_times = [], [], []
    for _ in range(repeats + 1):  # the first run warms up (page faults, thread start) and is dropped
        start = time.perf_counter()
        out, _lse, probs = forward()
        middle = time.perf_counter()
        backward(out, probs)
        end = time.perf_counter()
        forward_times.append(middle - start)
        backward_times.append(end - middle)
        total_times.append(end - start)
    median = lambda values: float(np.median(values[1:]))  # noqa: E731
    print(json.dumps({
        "forward_s": median(forward_times),
        "backward_s": median(backward_times),
        "total_s": median(total_times),
        "samples": [
            {"forward_s": f, "backward_s": b, "total_s": t}
            for f, b, t in zip(forward_times[1:], backward_times[1:], total_times[1:])
        ],
        "numpy": np.__version__,
        "blas": blas_name(),
    }))


if __name__ == "__main__":
    main()
