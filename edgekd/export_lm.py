"""Causal language models as ONNX folders with a KV cache, their weight-only INT4/INT8 quantization, and
the parity check between a folder and the PyTorch model it came from.

A folder is what `optimum.onnxruntime.ORTModelForCausalLM.from_pretrained` and
`transformers.pipeline("text-generation", ...)` read with no edgekd code: model.onnx (inputs input_ids,
attention_mask, position_ids, past_key_values.{i}.key/value; outputs logits, present.{i}.key/value),
config.json, generation_config.json and the tokenizer's files. optimum's exporter knows each family's
cache layout and tracing patches, and onnxruntime's MatMulNBitsQuantizer writes the MatMulNBits /
GatherBlockQuantized kernels its CPU provider runs fast; this module only fills the gaps between them
(a tied LM head the quantizer cannot see, an 8-bit embedding table it does not write)."""

from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from .errors import InputError, ParityError, RecipeError
from .registry import closest

TASK = "text-generation-with-past"
EXPORTER = f"optimum main_export {TASK}"
MODEL_FILE = "model.onnx"
ALGORITHMS = ("rtn", "hqq")
# families whose attention is q/k/v/o projections, rotate-half rotary on whole heads and softmax(q·kᵀ·scale):
# what edgekd.lm_fuse rewrites (qk-norm, soft-capping, partial rotary and sliding windows are not)
FUSABLE = ("llama", "mistral", "qwen2")
GGUF_MAGIC = b"GGUF"


# -------------------------------------------------------------------------------------------------
# export


def export_causal_lm(model, tokenizer, folder: Path, *, opset: int = 0, fuse: bool = True) -> dict:
    """Write `folder` as an ONNX text-generation folder (see the module docstring) from a transformers
    causal LM and its tokenizer. The model goes through save_pretrained and optimum's own `main_export`,
    so the folder is what `optimum-cli export onnx` would write; `opset` 0 takes optimum's default. With
    `fuse`, each layer's attention becomes one GroupQueryAttention node (edgekd.lm_fuse: same inputs and
    outputs, fewer nodes per decoded token) where the graph's layout allows. Returns the export's meta
    (exporter, opset, seconds, sizes, input/output names, dedup, attention)."""
    import onnx
    from optimum.exporters.onnx import main_export

    from .models.lm_vocab import expanded, trim_onnx_head, trimmed

    check_exportable(model.config.model_type)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    head = trimmed(model)
    with tempfile.TemporaryDirectory() as tmp:
        (expanded(model) if head is not None else model).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        removed = _remove_gguf_copies(Path(tmp))  # optimum would copy them on
        main_export(tmp, output=folder, task=TASK, do_validation=False, opset=opset or None, local_files_only=True)
    removed = sorted({*removed, *_remove_gguf_copies(folder)})
    path = folder / MODEL_FILE
    size_before = _model_size(folder)
    proto = onnx.load(str(path))
    vocab = trim_onnx_head(proto, head) if head is not None else None
    dedup = _dedup_initializers(proto.graph)
    attention = _fuse(model, proto) if fuse else {"fused": 0, "why": "not asked (export.fuse_attention = false)"}
    if dedup["removed"] or vocab or attention["fused"]:
        _save(proto, path)
    dedup.update(size_before=size_before, size_after=_model_size(folder))
    past = ("past_key_values.", "present.")
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    return {"exporter": EXPORTER, "task": TASK, "file": MODEL_FILE, "model_type": model.config.model_type,
            "opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
            "seconds": round(time.perf_counter() - t0, 3), "size_bytes": _model_size(folder),
            "inputs": [n for n in inputs if not n.startswith(past)], "n_inputs": len(inputs),
            "outputs": [n for n in outputs if not n.startswith(past)], "n_outputs": len(outputs),
            "removed_files": removed, "dedup": dedup, "attention": attention, "files": sorted(p.name for p in folder.iterdir()),
            **({"vocab": vocab} if vocab else {})}


def _fuse(model, proto) -> dict:
    """edgekd.lm_fuse on `proto` with the model's heads, scale and rotary caches."""
    from .lm_fuse import fuse_attention, rotary_frequencies

    cfg = model.config
    if cfg.model_type not in FUSABLE:
        return {"fused": 0, "why": f"{cfg.model_type}'s attention is not one edgekd.lm_fuse knows ({', '.join(FUSABLE)})"}
    window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
    if window or "sliding_attention" in (getattr(cfg, "layer_types", None) or []):
        return {"fused": 0, "why": "sliding-window attention stays as optimum exports it"}
    heads = cfg.num_attention_heads
    rope = rotary_frequencies(model)
    if rope is None:
        return {"fused": 0, "why": f"{cfg.model_type} has no rotate-half rotary embedding edgekd can read"}
    layers = getattr(model.model, "layers", None)
    attn = getattr(getattr(layers[0], "self_attn", None), "scaling", None) if layers else None
    head_dim = 2 * len(rope[0])
    if head_dim != (getattr(cfg, "head_dim", None) or cfg.hidden_size // heads):
        return {"fused": 0, "why": "the rotary embedding covers part of each head"}
    return fuse_attention(proto, num_heads=heads, kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
                          scale=float(attn if attn is not None else head_dim ** -0.5), inv_freq=rope[0],
                          rope_scaling=rope[1])


def check_exportable(model_type: str) -> None:
    try:
        import optimum.exporters.onnx.model_configs  # noqa: F401 - importing it registers the per-architecture configs
        from optimum.exporters.tasks import TasksManager
    except ImportError as e:  # before any training: the export stage needs it
        raise InputError(f"task {TASK.removesuffix('-with-past')} exports through optimum's ONNX exporter, which "
                         f"cannot be imported here ({e}); pip install 'edgekd[lm]'") from None

    try:
        tasks = TasksManager.get_supported_tasks_for_model_type(model_type, "onnx", library_name="transformers")
    except (KeyError, ValueError):
        tasks = {}
    if TASK not in tasks:
        known = sorted(TasksManager.get_supported_model_type_for_task(TASK, exporter="onnx"))
        raise InputError(f"optimum's ONNX exporter does not know model type '{model_type}' for {TASK}; "
                         f"use a model of a supported family ({', '.join(known)})")


def _remove_gguf_copies(folder: Path) -> list[str]:
    """A model read from a GGUF file saves that file again as 'tokenizer.model' (the GGUF, not a
    SentencePiece model: no loader can read it, and it is as large as the quantized model)."""
    removed = []
    for p in folder.glob("tokenizer.model"):
        with open(p, "rb") as f:
            if f.read(4) == GGUF_MAGIC:
                p.unlink()
                removed.append(p.name)
    return removed


def _dedup_initializers(graph) -> dict:
    """Point every reader of a duplicate initializer at one copy. Tied weights (an LM head sharing the
    embedding table) are written twice when the exporter loses the tie: as an identical copy, or as its
    transpose, which becomes a Transpose node of the kept copy. optimum usually restores the tie itself
    (a Transpose of the embedding), and then there is nothing to do here."""
    from collections import defaultdict

    import numpy as np
    from onnx import helper, numpy_helper

    groups = defaultdict(list)
    for init in graph.initializer:
        if len(init.dims) >= 1 and np.prod(init.dims) >= 1024:  # small constants are not worth the scan
            groups[(init.data_type, tuple(init.dims))].append(init)
    rename, removed = {}, []
    for (dtype, dims), inits in groups.items():
        if len(inits) < 2:
            continue
        arrays = {i.name: numpy_helper.to_array(i) for i in inits}
        kept = []
        for init in inits:
            same = next((k for k in kept if np.array_equal(arrays[k], arrays[init.name])), None)
            if same is None:
                kept.append(init.name)
            else:
                rename[init.name] = same
                removed.append({"removed": init.name, "kept": same, "transposed": False})
    # transposed copies: a (a, b) initializer equal to the transpose of a (b, a) one
    transposed = []
    for (dtype, dims), inits in groups.items():
        if len(dims) != 2 or dims[0] >= dims[1]:
            continue
        for small in inits:
            if small.name in rename:
                continue
            a = numpy_helper.to_array(small)
            for big in groups.get((dtype, dims[::-1]), []):
                if big.name not in rename and np.array_equal(a, numpy_helper.to_array(big).T):
                    rename[small.name] = f"{big.name}/transposed"
                    transposed.append(helper.make_node("Transpose", [big.name], [rename[small.name]],
                                                       name=f"{big.name}_Transpose", perm=[1, 0]))
                    removed.append({"removed": small.name, "kept": big.name, "transposed": True})
                    break
    if rename:
        for node in graph.node:
            node.input[:] = [rename.get(i, i) for i in node.input]
        keep = [i for i in graph.initializer if i.name not in rename]
        del graph.initializer[:]
        graph.initializer.extend(keep)
        for t in transposed:  # before every reader: the graph must stay topologically sorted
            graph.node.insert(0, t)
    return {"removed": removed, "tied_reads": _transposed_weight_readers(graph)}


def _transposed_weight_readers(graph) -> list[str]:
    """MatMul nodes whose weight is a Transpose of an initializer: a head tied to the embedding table."""
    inits = {i.name for i in graph.initializer}
    made = {o: n for n in graph.node for o in n.output}
    return [n.name for n in graph.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in made
            and made[n.input[1]].op_type == "Transpose" and made[n.input[1]].input[0] in inits]


def _model_size(folder: Path) -> int:
    """Bytes of the graph and of its external weights, if the exporter wrote them beside it."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.name.startswith(MODEL_FILE))


def _save(proto, path: Path) -> None:
    """Save one file when it fits protobuf's 2 GB limit, else the weights beside it (model.onnx_data)."""
    import onnx

    external = proto.ByteSize() > 2**31 - 2**26
    for old in path.parent.glob(f"{path.name}_data"):
        old.unlink()  # weights now inline (or rewritten below)
    onnx.save(proto, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
              location=f"{path.name}_data")


# -------------------------------------------------------------------------------------------------
# weight-only quantization


def quantize_weights(src: Path, dst: Path, *, bits: int = 4, block_size: int = 32, symmetric: bool = True,
                     accuracy_level: int = 4, embeddings: bool = True, algorithm: str = "rtn",
                     head_bits: int = 0, grids: dict | None = None) -> dict:
    """Write `dst`, a copy of the folder `src` whose every MatMul with a constant weight is a MatMulNBits
    (`bits` 4 or 8, one scale per `block_size` inputs) and, with `embeddings`, whose embedding table is a
    GatherBlockQuantized: for a 100M-parameter LM the tied table is a fifth of the weights, and the LM head
    reading it is the largest MatMul. `accuracy_level` 4 lets onnxruntime's CPU kernels compute in INT8,
    its fastest path. `algorithm` "rtn" rounds to the nearest level of each block's min/max grid; "hqq"
    (Half-Quadratic Quantization, Badri & Shaji 2023) fits each block's scale and float zero point
    without data, so it is asymmetric. `head_bits` (0: `bits`) quantizes the LM head, the MatMul that
    writes the logits, on its own grid, round to nearest: its error moves every next-token choice, which
    is why llama.cpp's 4-bit mixes keep their output tensor at 6 bits or more. `grids`
    ({edgekd.quantize.gptq.fingerprint(weight): (q, scales)}, symmetric only) gives integers found by
    another algorithm for the MatMuls whose weight they match; they replace the rounding's as they are.
    Returns the quantization's meta."""
    import numpy as np
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    _check_quant_options(bits=bits, block_size=block_size, symmetric=symmetric, algorithm=algorithm)
    src, dst = Path(src), Path(dst)
    if not (src / MODEL_FILE).is_file():
        raise InputError(f"{src} has no {MODEL_FILE}; export it first with export_causal_lm")
    if src.resolve() == dst.resolve():
        raise InputError(f"quantize_weights would overwrite its source {src}; give another destination folder")
    t0 = time.perf_counter()
    proto = onnx.load(str(src / MODEL_FILE))
    untied = _untie_transposed_weights(proto.graph)
    tables = _embedding_gathers(proto.graph)
    gathers = [n.name for n in proto.graph.node if n.op_type == "Gather"]
    if grids and not symmetric:
        raise RecipeError("integers from another algorithm are written on the symmetric grid; set symmetric=True")
    given = _given_weights(proto.graph, grids) if grids else {}  # MatMul output -> (q, scales)
    head = _head_matmul(proto.graph) if head_bits and head_bits != bits else None
    apart = [head] if head else []
    # onnxruntime's quantizer writes GatherBlockQuantized at 4 bits only, and its HQQ path none at all
    gather_by_ort = embeddings and bits == 4
    common = {"bits": bits, "block_size": block_size, "is_symmetric": symmetric, "accuracy_level": accuracy_level}
    with _quiet("onnxruntime.quantization.matmul_nbits_quantizer"), \
            np.errstate(divide="ignore", invalid="ignore"):  # all-zero blocks: the quantizer masks them after dividing
        if algorithm == "hqq":
            config = HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits, op_types_to_quantize=("MatMul",))
            q = MatMulNBitsQuantizer(proto, algo_config=config, nodes_to_exclude=apart)
            q.process()
            proto = q.model.model
            _set_accuracy_level(proto.graph, accuracy_level)  # HQQ's nodes leave it out
            if gather_by_ort:
                q = MatMulNBitsQuantizer(proto, **common, op_types_to_quantize=("Gather",),
                                         nodes_to_exclude=[g for g in gathers if g not in tables])
                q.process()
                proto = q.model.model
        else:
            ops = ("MatMul", "Gather") if gather_by_ort else ("MatMul",)
            q = MatMulNBitsQuantizer(proto, **common, op_types_to_quantize=ops,
                                     nodes_to_exclude=[g for g in gathers if g not in tables] + apart)
            q.process()
            proto = q.model.model
        if head:
            q = MatMulNBitsQuantizer(proto, **{**common, "bits": head_bits, "is_symmetric": True},
                                     op_types_to_quantize=("MatMul",), nodes_to_include=[head])
            q.process()
            proto = q.model.model
    if given:
        _write_given(proto.graph, given, bits=bits, block_size=block_size)
    if embeddings and bits == 8:
        _quantize_gathers_8bit(proto, tables, block_size=block_size, symmetric=symmetric)
    dst.mkdir(parents=True, exist_ok=True)
    for p in src.iterdir():
        if p.is_file() and not p.name.startswith(MODEL_FILE):
            shutil.copy2(p, dst / p.name)  # config, generation config, tokenizer: dst loads on its own
    _save(proto, dst / MODEL_FILE)
    left = _float_weights(proto.graph)
    ops = [n.op_type for n in proto.graph.node]
    route = "onnxruntime MatMulNBitsQuantizer " + ("HQQWeightOnlyQuantConfig" if algorithm == "hqq" else
                                                   "DefaultWeightOnlyQuantConfig (round to nearest)")
    return {"bits": bits, "block_size": block_size, "symmetric": symmetric,
            "accuracy_level": accuracy_level, "algorithm": algorithm, "embeddings": embeddings, "route": route,
            "head_bits": head_bits if head else bits, "given_integers": len(given),
            "embedding_route": (None if not embeddings else "onnxruntime MatMulNBitsQuantizer" if gather_by_ort
                                else "GatherBlockQuantized bits=8 (edgekd.export_lm)"),
            "untied_heads": untied, "matmul_nbits": ops.count("MatMulNBits"),
            "gather_block_quantized": ops.count("GatherBlockQuantized"),
            "float_matmuls_left": left["MatMul"], "float_gathers_left": left["Gather"],
            "size_before": _model_size(src), "size_after": _model_size(dst),
            "seconds": round(time.perf_counter() - t0, 3)}


@contextmanager
def _quiet(logger: str):
    """Hold a library's logger at WARNING or above: onnxruntime's quantizer logs every node it visits at
    INFO. Quieter where the CLI quiets the libraries (its opset-21 notice is not for the user: the
    exported graph is checked against PyTorch anyway)."""
    import logging

    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(max(logging.WARNING, log.getEffectiveLevel()))
    try:
        yield
    finally:
        log.setLevel(level)


def _check_quant_options(*, bits: int, block_size: int, symmetric: bool, algorithm: str) -> None:
    if algorithm not in ALGORITHMS:
        raise RecipeError(f"quantize algorithm '{algorithm}' is unknown{closest(algorithm, ALGORITHMS)} "
                          f"({', '.join(ALGORITHMS)})")
    if bits not in (4, 8):
        raise RecipeError(f"quantize bits must be 4 or 8 (MatMulNBits), got {bits}")
    if block_size < 16 or block_size & (block_size - 1):
        raise RecipeError(f"quantize block_size must be a power of two >= 16 (MatMulNBits), got {block_size}")
    if algorithm == "hqq" and symmetric:
        raise RecipeError("quantize algorithm 'hqq' fits a float zero point per block; set symmetric=False")


def _untie_transposed_weights(graph) -> list[str]:
    """Give each MatMul that reads an initializer through a Transpose (a head tied to the embedding) its
    own transposed initializer: the quantizer only quantizes a MatMul whose weight is an initializer.
    Returns those MatMuls' names."""
    import numpy as np
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.initializer}
    made = {o: n for n in graph.node for o in n.output}
    names = _transposed_weight_readers(graph)
    transposes = set()
    for node in graph.node:
        if node.name not in names:
            continue
        t = made[node.input[1]]
        perm = next((list(a.ints) for a in t.attribute if a.name == "perm"), None)  # None: reverse the axes
        w = numpy_helper.to_array(inits[t.input[0]])
        name = f"{node.input[1]}/untied"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.transpose(perm)), name))
        node.input[1] = name
        transposes.add(t.output[0])
    read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [n for n in graph.node if not (n.output and n.output[0] in transposes and n.output[0] not in read)]
    del graph.node[:]
    graph.node.extend(keep)
    return names


def _head_matmul(graph) -> str | None:
    """The MatMul that writes `logits` (through Cast / Identity, or a trimmed head's Add and Gather)."""
    made = {o: n for n in graph.node for o in n.output}
    node = made.get("logits")
    while node is not None and node.op_type in ("Cast", "Identity", "Add", "Gather"):
        node = made.get(node.input[0])
    return node.name if node is not None and node.op_type == "MatMul" else None


def _embedding_gathers(graph) -> list[str]:
    """Gather nodes that look rows up in a 2-D float initializer (the token embedding); other Gathers
    (shapes, indices) are none of the quantizer's business."""
    from onnx import TensorProto

    floats = {i.name for i in graph.initializer if len(i.dims) == 2 and i.data_type in
              (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)}
    return [n.name for n in graph.node if n.op_type == "Gather" and n.input[0] in floats]


def _set_accuracy_level(graph, level: int) -> None:
    from onnx import helper

    if not level:
        return
    for node in graph.node:
        if node.op_type == "MatMulNBits" and not any(a.name == "accuracy_level" for a in node.attribute):
            node.attribute.append(helper.make_attribute("accuracy_level", level))


def _given_weights(graph, grids: dict) -> dict:
    """{output of a MatMul: grids[key]} for each MatMul whose constant weight B (in, out) is, transposed,
    the weight a key was made from (edgekd.quantize.gptq.fingerprint)."""
    from onnx import numpy_helper

    from .quantize.gptq import fingerprint

    inits = {i.name: i for i in graph.initializer}
    out = {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits:
            key = fingerprint(numpy_helper.to_array(inits[node.input[1]]).T)
            if key in grids:
                out[node.output[0]] = grids[key]
    return out


def _write_given(graph, given: dict, *, bits: int, block_size: int) -> None:
    """Overwrite the packed integers and scales of the MatMulNBits writing each output in `given` with its
    (q (N, K) uint8 in [0, 2^bits), scales (N, K / block_size)): MatMulNBits stores B as (N, blocks,
    block_size * bits / 8) bytes, low nibble first at 4 bits, and without zero points reads q - 2^(bits-1)."""
    import numpy as np
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type != "MatMulNBits" or node.output[0] not in given:
            continue
        if len(node.input) > 3 and node.input[3]:
            raise RecipeError(f"{node.name} has zero points; given integers are written on the symmetric grid only")
        q, scales = given[node.output[0]]
        n, k = q.shape
        pad = -k % block_size
        q = np.pad(q, ((0, 0), (0, pad)), constant_values=2 ** (bits - 1)).reshape(n, -1, block_size)  # (N, blocks, B)
        packed = q if bits == 8 else (q[..., 0::2] | (q[..., 1::2] << 4))
        b, s = inits[node.input[1]], inits[node.input[2]]
        b.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(packed.astype(np.uint8)).reshape(tuple(b.dims)), b.name))
        s.CopyFrom(numpy_helper.from_array(scales.astype(np.float32).reshape(tuple(s.dims)), s.name))


def _quantize_gathers_8bit(proto, names: list[str], *, block_size: int, symmetric: bool) -> None:
    """Replace each Gather in `names` by a GatherBlockQuantized (bits 8, uint8 data, one scale per
    `block_size` columns, zero point 128 when `symmetric`): onnxruntime's quantizer writes this op at
    4 bits only, and its CPU kernel runs 8 bits."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.name not in names:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[0]]).astype(np.float32)  # (V, D)
        v, d = w.shape
        pad = -d % block_size
        blocks = np.pad(w, ((0, 0), (0, pad))).reshape(v, -1, block_size)  # (V, D / B, B)
        if symmetric:
            scale = np.abs(blocks).max(-1) / 127.0  # (V, D / B)
            zero = np.full(scale.shape, 128.0, np.float32)
        else:
            lo, hi = np.minimum(blocks.min(-1), 0), np.maximum(blocks.max(-1), 0)
            scale = (hi - lo) / 255.0
            zero = np.round(-lo / np.where(scale == 0, 1, scale)).clip(0, 255)
        safe = np.where(scale == 0, 1, scale)[..., None]
        q = np.round(blocks / safe + zero[..., None]).clip(0, 255).astype(np.uint8).reshape(v, -1)[:, :d]
        base = node.input[0]
        new = [numpy_helper.from_array(np.ascontiguousarray(q), f"{base}_Q8"),
               numpy_helper.from_array(scale.astype(w.dtype), f"{base}_scales")]
        if not symmetric:
            new.append(numpy_helper.from_array(zero.astype(np.uint8), f"{base}_zero_points"))
        graph.initializer.extend(new)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        nodes.append(helper.make_node("GatherBlockQuantized", [new[0].name, node.input[1], *[t.name for t in new[1:]]],
                                      list(node.output), name=f"{node.name}_Q8", domain="com.microsoft",
                                      gather_axis=axis, quantize_axis=1, block_size=block_size, bits=8))
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def _float_weights(graph) -> dict[str, list[str]]:
    """MatMul and Gather nodes still reading a float constant (initializer or Constant node)."""
    from onnx import TensorProto

    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)
    consts = {i.name for i in graph.initializer if i.data_type in floats and len(i.dims) >= 2}
    consts |= {n.output[0] for n in graph.node if n.op_type == "Constant"
               and any(a.t.data_type in floats and len(a.t.dims) >= 2 for a in n.attribute)}
    return {"MatMul": [n.name for n in graph.node if n.op_type == "MatMul" and any(i in consts for i in n.input)],
            "Gather": [n.name for n in graph.node if n.op_type == "Gather" and n.input[0] in consts]}


# -------------------------------------------------------------------------------------------------
# parity


def check_parity(model, tokenizer, folder: Path, prompts: list[str], *, new_tokens: int = 16, quantized: bool,
                 max_abs_diff: float = 1e-3, min_agreement: float = 0.9) -> dict:
    """Compare the folder, run by optimum's ORTModelForCausalLM (KV cache on, CPU), with the PyTorch
    model on `prompts`: next-token logits at every prompt position (max |diff|, top-1 agreement) and
    `new_tokens` greedy tokens each (end-of-sequence ignored, so every prompt yields the same count).
    An FP32 folder must match (logits within `max_abs_diff`, identical greedy tokens): anything else is
    an export bug. A quantized folder is refused when its top-1 agreement on the prompt positions is
    below `min_agreement`; greedy tokens of a quantized model drift apart after the first near-tie, so
    they are reported, not judged. The folder must also generate through `transformers.pipeline`, the
    way users load it. Returns the numbers."""
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer, pipeline

    if not prompts:
        raise InputError("check_parity needs at least one prompt")
    if new_tokens < 1:
        raise RecipeError(f"check_parity new_tokens must be >= 1, got {new_tokens}")
    folder = Path(folder)
    if not (folder / MODEL_FILE).is_file():
        raise InputError(f"{folder} has no {MODEL_FILE}; export it first with export_causal_lm")
    t0 = time.perf_counter()
    ort_model = ORTModelForCausalLM.from_pretrained(folder, use_cache=True, provider="CPUExecutionProvider")
    model = model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    gen = {"do_sample": False, "max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "pad_token_id": pad}
    worst, agree, positions, exact, prefix, same = 0.0, 0, 0, 0, 0, 0
    with torch.inference_mode():
        for prompt in prompts:
            enc = tokenizer(prompt, return_tensors="pt", return_token_type_ids=False)
            on_device = {k: v.to(device) for k, v in enc.items()}
            ref = model(**on_device).logits[0].float().cpu()  # (S, V)
            got = ort_model(**enc).logits[0].float()  # (S, V)
            worst = max(worst, (ref - got).abs().max().item())
            agree += (ref.argmax(-1) == got.argmax(-1)).sum().item()
            positions += ref.shape[0]
            n = enc["input_ids"].shape[1]
            a = model.generate(**on_device, **gen)[0, n:].cpu()
            b = ort_model.generate(**enc, **gen)[0, n:]
            equal = (a == b).tolist()
            exact += all(equal)
            same += sum(equal)
            prefix += equal.index(False) if False in equal else len(equal)
    # device: the ONNX model runs on onnxruntime's CPU provider; transformers' pipeline otherwise moves its
    # model to a visible GPU, which that provider cannot take
    text = pipeline("text-generation", model=ort_model, tokenizer=AutoTokenizer.from_pretrained(folder), device="cpu")(
        prompts[0], max_new_tokens=min(new_tokens, 4), do_sample=False)[0]["generated_text"]
    total = len(prompts) * new_tokens
    meta = {"quantized": quantized, "prompts": len(prompts), "new_tokens": new_tokens,
            "max_abs_diff": worst, "top1_agreement": agree / positions, "positions": positions,
            "greedy_exact": exact, "greedy_prefix_agreement": prefix / total, "greedy_token_agreement": same / total,
            "pipeline_text": isinstance(text, str), "seconds": round(time.perf_counter() - t0, 3)}
    if not isinstance(text, str):
        raise ParityError(f"transformers.pipeline on {folder} returned {type(text).__name__}, not text; "
                          "check the folder's config.json and tokenizer files")
    if not quantized and (worst > max_abs_diff or exact < len(prompts)):
        raise ParityError(f"{folder} does not reproduce its PyTorch model: max |logit diff| {worst:.2e} "
                          f"(limit {max_abs_diff:g}), greedy tokens identical on {exact}/{len(prompts)} prompts; "
                          "re-export it (a stale or edited model.onnx?) with the installed transformers/optimum")
    if quantized and meta["top1_agreement"] < min_agreement:
        raise ParityError(f"quantized {folder} agrees with its PyTorch model on {meta['top1_agreement']:.3f} "
                          f"of next tokens (minimum {min_agreement:g}); quantize with algorithm='hqq' "
                          "(symmetric=False) or bits=8", {**meta, "min_agreement": min_agreement})
    return meta
