#!/usr/bin/env python3
"""Makes the Qwen2 fixture that tests/qwen2_fixture_test.ts checks our TypeScript decoder against.

Usage (on a machine with PyTorch, transformers and safetensors; no network, no GPU needed):

    python3 examples/qwen2/make_fixture.py tests/fixtures/qwen2-tiny

It builds a random-initialised transformers Qwen2ForCausalLM (2 layers, hidden 256, 4 query / 2 KV heads of
64, vocab 1000, intermediate 384, untied LM head) with a fixed seed, saves it with save_pretrained in bf16,
reloads the saved weights as float32 with the "eager" attention implementation, and runs transformers'
forward on the CPU on every sample of a prefix tree of rollouts (each root-to-leaf path alone, positions
0..n-1) and on every document of a packed-documents input (each alone). It writes into the folder:

    config.json, model.safetensors   the checkpoint, as save_pretrained wrote it
    generation_config.json           if save_pretrained writes one
    expected.safetensors             float32 logits "logits/<kind>/<i>" [tokens, 1000] per sample, and
                                     __metadata__["fixture"]: JSON with the inputs, the layout and versions

The run is deterministic (seeded weights and inputs, CPU float32, one thread). Each step that differs
between transformers versions (config keywords, dtype keywords, loading) tries the 5.x spelling first and
falls back; the reloaded weights are checked bit for bit against the saved bf16 values before any logits
are computed.
"""

import hashlib
import json
import math
import os
import random
import struct
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FORMAT = "magi-attn/qwen2-fixture/1"
SEED = 1234
VOCAB = 1000
ROPE_THETA = 10000.0
BASE_CONFIG = dict(
    vocab_size=VOCAB,
    hidden_size=256,
    intermediate_size=384,
    num_hidden_layers=2,
    num_attention_heads=4,  # head dim 256 / 4 = 64
    num_key_value_heads=2,
    hidden_act="silu",
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    use_sliding_window=False,
    attention_dropout=0.0,
    initializer_range=0.02,
)
# The prefix tree: node 0 the prompt, node 1 a shared continuation, nodes 2-4 completions.
TREE_NODE_LENGTHS = [20, 6, 9, 4, 12]
TREE_SAMPLE_PATHS = [[0, 1, 2], [0, 1, 3], [0, 4]]
# Packed documents (each causal on its own, positions restarting at 0).
DOCUMENT_LENGTHS = [17, 5, 11]
MAX_FILES = 6
MAX_FOLDER_BYTES = 4 * 1024 * 1024
OUR_FILES = ["config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
             "expected.safetensors"]


def log(message):
    print(message, flush=True)


def fail(message):
    print("make_fixture.py: ERROR: " + message, file=sys.stderr, flush=True)
    sys.exit(1)


def effective_rope_theta(config):
    parameters = getattr(config, "rope_parameters", None)
    if isinstance(parameters, dict) and parameters.get("rope_theta") is not None:
        return float(parameters["rope_theta"]), parameters.get("rope_type", "default")
    scaling = getattr(config, "rope_scaling", None)
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) if isinstance(scaling, dict) else "default"
    theta = getattr(config, "rope_theta", None)
    if isinstance(scaling, dict) and scaling.get("rope_theta") is not None:
        theta = scaling["rope_theta"]
    return (float(theta) if theta is not None else None), rope_type


def make_config(Qwen2Config):
    attempts = [
        ("rope_parameters", dict(BASE_CONFIG, rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA})),
        ("rope_theta", dict(BASE_CONFIG, rope_theta=ROPE_THETA)),
    ]
    errors = []
    for label, kwargs in attempts:
        try:
            config = Qwen2Config(**kwargs)
        except Exception as error:  # noqa: BLE001 - try the other spelling
            errors.append("%s: %r" % (label, error))
            continue
        theta, rope_type = effective_rope_theta(config)
        if theta == ROPE_THETA and rope_type == "default":
            log("config: Qwen2Config(..., %s) -> rope_theta %s, rope_type %s" % (label, theta, rope_type))
            return config
        errors.append("%s: gave rope_theta %r, rope_type %r" % (label, theta, rope_type))
    fail("could not build a Qwen2Config with rope_theta %s: %s" % (ROPE_THETA, "; ".join(errors)))


def set_eager(model):
    """Makes sure the model's attention runs transformers' eager implementation."""
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter):
        try:
            setter("eager")
        except Exception as error:  # noqa: BLE001
            log("note: set_attn_implementation('eager') failed (%r); setting the config field" % (error,))
    try:
        if getattr(model.config, "_attn_implementation", None) != "eager":
            model.config._attn_implementation = "eager"
    except Exception as error:  # noqa: BLE001
        log("note: could not set config._attn_implementation (%r)" % (error,))
    return getattr(model.config, "_attn_implementation", None)


def randomize(model, torch):
    """Seeded weights that make the check sharp: attention far from uniform, biases and norm scales not
    at their trivial initial values (so a forgotten bias or scale shows), unit-scale logits."""
    generator = torch.Generator(device="cpu").manual_seed(SEED)
    names = []
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters(), key=lambda item: item[0]):
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
            if name.endswith("norm.weight"):
                values = 1.0 + 0.25 * torch.tanh(noise)
            elif name.endswith(".bias"):
                values = 0.5 * noise
            elif name.endswith("embed_tokens.weight"):
                values = noise
            elif parameter.dim() == 2:
                gain = 1.5 if (".q_proj." in name or ".k_proj." in name) else 1.0
                values = noise * (gain / math.sqrt(parameter.shape[1]))
            else:
                fail("unexpected parameter %s %s" % (name, tuple(parameter.shape)))
            parameter.copy_(values.to(parameter.dtype))
            names.append("%s %s" % (name, list(parameter.shape)))
    needed = [".self_attn.q_proj.bias", ".self_attn.k_proj.bias", ".self_attn.v_proj.bias", "lm_head.weight"]
    for piece in needed:
        if not any(piece in entry for entry in names):
            fail("the model has no parameter %s; is this transformers' Qwen2?" % piece)
    if any(".o_proj.bias" in entry for entry in names):
        fail("the model has an o_proj bias; Qwen2 has none")
    log("parameters (%d): %s" % (len(names), ", ".join(names[:4]) + ", ..."))


def read_safetensors_header(path):
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        return json.loads(handle.read(length).decode("utf-8"))


def read_bf16_safetensors(path, torch):
    """The BF16 tensors of a safetensors file, by name."""
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length).decode("utf-8"))
        data = bytearray(handle.read())
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] != "BF16":
            raise RuntimeError("%s is %s, not BF16" % (name, entry["dtype"]))
        begin, end = entry["data_offsets"]
        bits = torch.frombuffer(data[begin:end], dtype=torch.int16) if end > begin else torch.zeros(0, dtype=torch.int16)
        tensors[name] = bits.view(torch.bfloat16).reshape(entry["shape"]).clone()
    return tensors


def save_checkpoint(model, out_dir):
    errors = []
    for kwargs in ({"safe_serialization": True}, {}):
        try:
            model.save_pretrained(out_dir, **kwargs)
            break
        except Exception as error:  # noqa: BLE001
            errors.append(repr(error))
    else:
        fail("save_pretrained failed: %s" % "; ".join(errors))
    if os.path.exists(os.path.join(out_dir, "model.safetensors.index.json")):
        fail("save_pretrained sharded the checkpoint; expected one model.safetensors")
    weights = os.path.join(out_dir, "model.safetensors")
    if not os.path.exists(weights):
        fail("save_pretrained wrote no model.safetensors (files: %s)" % sorted(os.listdir(out_dir)))
    header = read_safetensors_header(weights)
    dtypes = sorted({entry["dtype"] for name, entry in header.items() if name != "__metadata__"})
    if dtypes != ["BF16"]:
        fail("model.safetensors holds dtypes %s, expected only BF16" % dtypes)
    names = sorted(name for name in header if name != "__metadata__")
    log("saved %d BF16 tensors: %s ... %s" % (len(names), names[0], names[-1]))
    return names


def load_reference(Qwen2ForCausalLM, config, out_dir, saved_state, torch):
    """transformers' model with the saved weights as float32, eager attention, eval mode. Tries
    from_pretrained (5.x `dtype`, then 4.x `torch_dtype`), then a manual load; keeps the first whose weights
    equal the saved bf16 values exactly."""

    def manual():
        # Our own reader of the file save_pretrained wrote (no safetensors package needed).
        model = Qwen2ForCausalLM(config)
        state = {name: tensor.to(torch.float32) for name, tensor in read_bf16_safetensors(
            os.path.join(out_dir, "model.safetensors"), torch).items()}
        result = model.load_state_dict(state, strict=False)
        missing = [name for name in result.missing_keys if not name.endswith("rotary_emb.inv_freq")]
        if missing or result.unexpected_keys:
            raise RuntimeError("missing %s, unexpected %s" % (missing, result.unexpected_keys))
        return model

    attempts = [
        ("from_pretrained(dtype=float32, attn_implementation='eager')",
         lambda: Qwen2ForCausalLM.from_pretrained(out_dir, dtype=torch.float32, attn_implementation="eager")),
        ("from_pretrained(torch_dtype=float32, attn_implementation='eager')",
         lambda: Qwen2ForCausalLM.from_pretrained(out_dir, torch_dtype=torch.float32, attn_implementation="eager")),
        ("manual load_state_dict", manual),
    ]
    errors = []
    for label, load in attempts:
        try:
            model = load()
            model = model.to(device="cpu", dtype=torch.float32)
            model.eval()
            implementation = set_eager(model)
            state = model.state_dict()
            for name, saved in saved_state.items():
                if name not in state:
                    raise RuntimeError("no weight %s after loading" % name)
                if state[name].dtype != torch.float32 or not torch.equal(state[name], saved.to(torch.float32)):
                    raise RuntimeError("weight %s differs from the saved bf16 values" % name)
            log("reference model: %s, attention %r, weights equal the saved bf16 values" % (label, implementation))
            return model, label, implementation
        except Exception as error:  # noqa: BLE001
            errors.append("%s: %r" % (label, error))
            log("note: %s failed: %r" % (label, error))
    fail("could not load the saved checkpoint as float32: %s" % "; ".join(errors))


def forward_logits(model, ids, torch):
    input_ids = torch.tensor([ids], dtype=torch.long)
    position_ids = torch.arange(len(ids), dtype=torch.long)[None, :]
    with torch.no_grad():
        try:
            output = model(input_ids=input_ids, position_ids=position_ids, use_cache=False)
        except TypeError:
            output = model(input_ids=input_ids, position_ids=position_ids)
    logits = output.logits if hasattr(output, "logits") else output[0]
    logits = logits[0].detach().to(torch.float32).contiguous()
    if tuple(logits.shape) != (len(ids), VOCAB):
        fail("logits have shape %s for %d tokens" % (tuple(logits.shape), len(ids)))
    if not bool(torch.isfinite(logits).all()):
        fail("non-finite logits")
    return logits


def tree_position_ids():
    offsets, total = [], 0
    for length in TREE_NODE_LENGTHS:
        offsets.append(total)
        total += length
    positions = [None] * total
    for path in TREE_SAMPLE_PATHS:
        start = 0
        for node in path:
            for token in range(TREE_NODE_LENGTHS[node]):
                positions[offsets[node] + token] = start + token
            start += TREE_NODE_LENGTHS[node]
    if any(position is None for position in positions):
        fail("a tree node is on no path")
    return positions


def write_safetensors(path, tensors, metadata):
    """Writes float32 tensors (a list of (name, tensor)) and string metadata in the safetensors format."""
    header = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name, tensor in tensors:
        values = tensor.reshape(-1).tolist()
        blob = struct.pack("<%df" % len(values), *values)
        header[name] = {"dtype": "F32", "shape": list(tensor.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)))
        handle.write(text)
        for blob in blobs:
            handle.write(blob)


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        fail("usage: python3 examples/qwen2/make_fixture.py OUT_DIR")
    out_dir = argv[1]
    import torch
    import transformers
    from transformers import Qwen2Config, Qwen2ForCausalLM

    try:
        transformers.logging.set_verbosity_error()
    except Exception:  # noqa: BLE001
        pass
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    try:
        torch.use_deterministic_algorithms(True)
    except Exception as error:  # noqa: BLE001
        log("note: deterministic algorithms unavailable (%r)" % (error,))
    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import safetensors

        versions["safetensors"] = safetensors.__version__
    except Exception:  # noqa: BLE001
        pass
    log("versions: %s" % json.dumps(versions))

    os.makedirs(out_dir, exist_ok=True)
    for name in OUR_FILES:
        if os.path.exists(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))

    config = make_config(Qwen2Config)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    model.eval()
    randomize(model, torch)
    model = model.to(torch.bfloat16)
    saved_state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()
                   if not name.endswith("rotary_emb.inv_freq")}
    saved_names = save_checkpoint(model, out_dir)
    renamed = sorted(set(saved_state) ^ set(saved_names))
    if renamed:
        # Not fatal: the reload below checks the weights by the model's own names; the TypeScript loader
        # will say which checkpoint names it does not know.
        log("WARNING: checkpoint names differ from the model's state_dict names: %s" % renamed)
    del model

    reference, load_label, implementation = load_reference(Qwen2ForCausalLM, config, out_dir, saved_state, torch)

    rng = random.Random(SEED)
    node_tokens = [[rng.randrange(VOCAB) for _ in range(length)] for length in TREE_NODE_LENGTHS]
    documents = [[rng.randrange(VOCAB) for _ in range(length)] for length in DOCUMENT_LENGTHS]
    samples, tensors = [], []
    runs = [("tree", index, [token for node in path for token in node_tokens[node]])
            for index, path in enumerate(TREE_SAMPLE_PATHS)]
    runs += [("document", index, tokens) for index, tokens in enumerate(documents)]
    log("")
    log("sample       tokens   max|logit|   mean|logit|")
    for kind, index, ids in runs:
        logits = forward_logits(reference, ids, torch)
        name = "%s/%d" % (kind, index)
        max_abs = float(logits.abs().max())
        log("%-12s %6d   %10.5f   %11.5f" % (name, len(ids), max_abs, float(logits.abs().mean())))
        samples.append({
            "name": name,
            "kind": kind,
            "index": index,
            "input_ids": ids,
            "position_ids": list(range(len(ids))),
            "logits": "logits/" + name,
            "max_abs_logit": max_abs,
        })
        tensors.append(("logits/" + name, logits))

    # Consistency checks that need no TypeScript: the shared prompt rows of the tree samples agree.
    prompt_rows = TREE_NODE_LENGTHS[0]
    first = tensors[0][1][:prompt_rows]
    for name, logits in tensors[1:len(TREE_SAMPLE_PATHS)]:
        if not torch.allclose(logits[:prompt_rows], first, rtol=0, atol=1e-5):
            fail("%s: the prompt's logits differ from tree/0's" % name)

    # A second opinion from transformers' sdpa attention (not stored; printed and recorded).
    eager_vs_sdpa = None
    try:
        reference.set_attn_implementation("sdpa")
        worst = 0.0
        for (_, _, ids), (_, logits) in zip(runs, tensors):
            worst = max(worst, float((forward_logits(reference, ids, torch) - logits).abs().max()))
        eager_vs_sdpa = worst
        log("transformers sdpa vs eager: max |logit diff| %.3e" % worst)
        set_eager(reference)
    except Exception as error:  # noqa: BLE001
        log("note: no sdpa cross-check (%r)" % (error,))

    fixture = {
        "format": FORMAT,
        "seed": SEED,
        "versions": versions,
        "reference": {"attn_implementation": str(implementation), "dtype": "float32", "device": "cpu",
                      "loaded_with": load_label,
                      "eager_vs_sdpa_max_abs": "n/a" if eager_vs_sdpa is None else "%.3e" % eager_vs_sdpa},
        "config": {key: value for key, value in BASE_CONFIG.items()},
        "prefix_tree": {
            "node_lengths": TREE_NODE_LENGTHS,
            "node_tokens": node_tokens,
            "sample_paths": TREE_SAMPLE_PATHS,
            "packed_position_ids": tree_position_ids(),
        },
        "documents": {"lengths": DOCUMENT_LENGTHS, "tokens": documents},
        "samples": samples,
    }
    fixture["config"]["rope_theta"] = ROPE_THETA
    fixture["reference"] = {key: str(value) for key, value in fixture["reference"].items()}
    expected_path = os.path.join(out_dir, "expected.safetensors")
    write_safetensors(expected_path, tensors, {"fixture": json.dumps(fixture, separators=(",", ":"))})

    # Read the expected file back with the safetensors package, where it is installed.
    try:
        from safetensors.torch import load_file

        loaded = load_file(expected_path)
        for name, logits in tensors:
            if not torch.equal(loaded[name], logits):
                fail("expected.safetensors does not read back: %s" % name)
        log("expected.safetensors reads back with the safetensors package")
    except ImportError:
        log("note: safetensors package missing; expected.safetensors not read back")

    log("")
    files = sorted(os.listdir(out_dir))
    total = 0
    for name in files:
        path = os.path.join(out_dir, name)
        with open(path, "rb") as handle:
            digest = hashlib.sha256(handle.read()).hexdigest()[:16]
        size = os.path.getsize(path)
        total += size
        log("%-24s %9d bytes  sha256 %s..." % (name, size, digest))
    log("%-24s %9d bytes (%.2f MiB) in %d files" % ("total", total, total / 2**20, len(files)))
    if len(files) > MAX_FILES or total > MAX_FOLDER_BYTES:
        log("WARNING: the fixture should stay within %d files and %d bytes" % (MAX_FILES, MAX_FOLDER_BYTES))
    log("OK: wrote the Qwen2 fixture to %s" % out_dir)


if __name__ == "__main__":
    main(sys.argv)
