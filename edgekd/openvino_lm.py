"""Causal LMs on OpenVINO: an exported LM folder (edgekd.export_lm: model.onnx with its KV cache as
past_key_values.N.key/value inputs and present.N.key/value outputs) converted to a stateful OpenVINO
IR folder, and a runner with the methods of edgekd.lm_runtime.CausalLM.

    convert_lm("export/student-int4", "export/student-int4-openvino")
    lm = OpenVINOLM("export/student-int4-openvino", threads=1)
    print(lm.decode(lm.generate(lm.encode("def add(a, b):"), max_new_tokens=32)))

How it converts, and why directly: optimum-intel (which exports a model from PyTorch to a stateful IR)
pins an optimum release other than the one optimum-onnx needs, so the two cannot be installed side
by side; the ONNX folder is converted instead, with the steps optimum-intel takes after its own export:

1. `openvino.convert_model(model.onnx)`. A weight-only INT4/INT8 folder converts as it is: OpenVINO's
   ONNX frontend reads onnxruntime's MatMulNBits and GatherBlockQuantized as compressed constants
   that its CPU plugin runs as compressed FullyConnected and Gather, so the IR holds the very
   weights onnxruntime runs (whichever rounding, post-training or quantization-aware, was shipped).
   A graph whose attention edgekd.lm_fuse wrote as GroupQueryAttention nodes is first written back in
   standard operators (lm_fuse.unfuse_attention): the frontend reads that node, but an IR cannot hold it.
2. The attention optimum exports (and unfuse_attention writes) as MatMul, Softmax and MatMul (its scale split between query and
   key, a NaN guard after the softmax) is rewritten as one ScaledDotProductAttention: the CPU plugin
   fuses that op with the cache's ReadValue/Concat/Assign into its own attention with the cache kept
   in place, which decoding depends on; without it every step copies the whole cache.
3. A `beam_idx` input gathers the cache rows (what optimum-intel and OpenVINO GenAI feed, [0] for
   one sequence), then `apply_make_stateful_transformation` turns each past/present pair into a
   variable of the infer request, and each variable starts as a zero-length cache of the batch's size.
4. Optionally NNCF weight compression (`compress="int4"`: INT4 symmetric or asymmetric, blocks of
   `group_size`, every layer including the embedding and the LM head, as the ONNX INT4 export does;
   `compress="int8"`: INT8 asymmetric per channel), for an FP32 source.

The IR is saved as openvino_model.xml/.bin (optimum-intel's names) with compress_to_fp16=False, so FP32
weights stay FP32, beside the source folder's config, generation config and tokenizer."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from .errors import InputError
from .lm_runtime import Cache, CausalLM

__all__ = ["MODEL_XML", "OPTIONS", "OpenVINOLM", "available", "check_parity", "convert_lm"]

MODEL_XML = "openvino_model.xml"
_PAST, _PRESENT = "past_key_values.", "present."
# f32: on CPUs with AVX512-BF16 or AMX OpenVINO otherwise runs float layers in bf16. KV cache in f32:
# the default u8 cache moves an FP32 model's logits by ~1 (greedy tokens can then differ from
# onnxruntime's float cache) and was not faster on a small model's short contexts.
OPTIONS = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}


def available() -> bool:
    return importlib.util.find_spec("openvino") is not None


# -------------------------------------------------------------------------------------------------
# conversion


def convert_lm(src, dst, *, compress: str | None = None, group_size: int = 32, symmetric: bool = True) -> dict:
    """Write `dst` as a stateful OpenVINO IR folder of the ONNX LM folder `src` (see the module
    docstring); `compress` "int4" or "int8" compresses its weights with NNCF (give an FP32 `src`).
    Returns the conversion's meta: openvino version, attention layers fused, weights, seconds, size."""
    import openvino as ov

    from .backends import first_line

    src, dst = Path(src), Path(dst)
    onnx_path = src / "model.onnx"
    if not onnx_path.is_file():
        raise InputError(f"'{src}' has no model.onnx; give the folder of a text-generation-with-past export")
    if compress not in (None, "int4", "int8"):
        raise InputError(f"compress must be None, 'int4' or 'int8', got {compress!r}")
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=dst.parent if dst.parent.is_dir() else None))
    try:  # the frontend may map the file it read until the IR is saved
        source, unfused = _standard_ops(onnx_path, tmp)
        try:
            model = ov.convert_model(str(source))
        except Exception as e:  # noqa: BLE001 - the frontend raises its own untyped errors
            raise InputError(f"OpenVINO cannot convert '{onnx_path}': {first_line(e)}") from None
        meta = _convert(model, src, dst, onnx_path, compress=compress, group_size=group_size, symmetric=symmetric)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**meta, "attention_unfused": unfused, "seconds": round(time.perf_counter() - t0, 3)}


def _standard_ops(onnx_path: Path, tmp: Path) -> tuple[Path, int]:
    """`onnx_path`, or a copy in `tmp` with edgekd.lm_fuse's GroupQueryAttention nodes written back in
    standard operators (OpenVINO converts the node but cannot save it in an IR); and how many."""
    import onnx

    from .lm_fuse import unfuse_attention

    try:
        proto = onnx.load(str(onnx_path))
    except Exception:  # noqa: BLE001 - not a graph onnx reads: the frontend says what is wrong with it
        return onnx_path, 0
    count = unfuse_attention(proto)
    if not count:
        return onnx_path, 0
    large = proto.ByteSize() > 2_000_000_000  # protobuf's limit: the weights go beside it
    onnx.save(proto, str(tmp / "model.onnx"), save_as_external_data=large, location="model.onnx_data")
    return tmp / "model.onnx", count


def _convert(model, src: Path, dst: Path, onnx_path: Path, *, compress, group_size: int, symmetric: bool) -> dict:
    import openvino as ov

    past = [i.get_any_name() for i in model.inputs if i.get_any_name().startswith(_PAST)]
    outputs = {n for o in model.outputs for n in o.get_names()}
    if "input_ids" not in {n for i in model.inputs for n in i.get_names()} or not past or "logits" not in outputs:
        raise InputError(f"'{onnx_path}' is not a causal LM with a key/value cache; export it with optimum's task "
                         "text-generation-with-past")
    pairs = {n: _PRESENT + n[len(_PAST):] for n in past}
    if missing := sorted(set(pairs.values()) - outputs):
        raise InputError(f"'{onnx_path}' takes past keys and values but does not return {missing[0]}")
    fuse_attention(model)  # the frontend fuses some layouts itself: count what the model holds
    fused = sum(op.get_type_name() == "ScaledDotProductAttention" for op in model.get_ordered_ops())
    _make_stateful(model, pairs)
    weights = "as exported"
    if compress:
        weights = _compress(model, compress, group_size=group_size, symmetric=symmetric)
    dst.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(dst / MODEL_XML), compress_to_fp16=False)
    for f in src.iterdir():  # config, generation config, tokenizer
        if f.is_file() and not f.name.startswith("model.onnx"):
            shutil.copy2(f, dst / f.name)
    return {"converter": "openvino.convert_model + make_stateful", "openvino": ov.__version__, "source": src.name,
            "weights": weights, "stateful": True, "layers": len(past) // 2, "attention_fused": fused,
            "size_bytes": model_bytes(dst),
            "files": sorted(p.name for p in dst.iterdir())}


def model_bytes(folder) -> int:
    """The IR's graph and weights on disk (not the tokenizer and configs)."""
    return sum(p.stat().st_size for p in Path(folder).glob("openvino_model.*"))


def _compress(model, how: str, *, group_size: int, symmetric: bool) -> str:
    import logging

    import nncf

    nncf.set_log_level(logging.ERROR)
    if how == "int8":
        nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        return "nncf int8_asym per channel"
    mode = nncf.CompressWeightsMode.INT4_SYM if symmetric else nncf.CompressWeightsMode.INT4_ASYM
    # all_layers: the embedding and the LM head in INT4 too (NNCF keeps them in INT8 otherwise)
    nncf.compress_weights(model, mode=mode, group_size=group_size, ratio=1.0, all_layers=True)
    return f"nncf {mode.value} group {group_size}"


def _make_stateful(model, pairs: dict) -> None:
    from openvino import PartialShape, Type
    from openvino import opset13 as ops
    from openvino._offline_transformations import apply_make_stateful_transformation

    ids = model.input("input_ids")
    beam = ops.parameter(PartialShape([ids.get_partial_shape()[0]]), Type.i32, name="beam_idx")
    beam.output(0).get_tensor().set_names({"beam_idx"})
    model.add_parameters([beam])
    for name in pairs:  # the cache rows of the sequences that go on, batch axis 0
        port = model.input(name)
        readers = list(port.get_target_inputs())
        gather = ops.gather(port, beam, ops.constant(np.int64(0)))
        for r in readers:
            r.replace_source_output(gather.output(0))
    model.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(model, pairs)
    # each variable starts empty: (batch of input_ids, kv_heads, 0, head_dim)
    batch = ops.gather(ops.shape_of(ids, output_type="i64"), ops.constant(np.array([0], np.int64)),
                       ops.constant(np.int64(0)))
    for op in model.get_ops():
        if op.get_type_name() == "ReadValue":
            dims = [batch if k == 0 else ops.constant(np.array([d.get_min_length()], np.int64))
                    for k, d in enumerate(op.get_output_partial_shape(0))]
            zero = ops.constant(np.zeros((), op.get_output_element_type(0).to_dtype()))
            op.set_arguments([ops.broadcast(zero, ops.concat(dims, 0))])
    model.validate_nodes_and_infer_types()


def fuse_attention(model) -> int:
    """Replace each softmax(q·kᵀ·scale + mask)·v the ONNX export spelled out in MatMul, Softmax and
    MatMul with one ScaledDotProductAttention (same inputs, same arithmetic); returns how many. A
    pattern that differs anywhere is left as it is."""
    from openvino import opset13 as ops

    fused = 0
    for sm in [op for op in model.get_ordered_ops() if op.get_type_name() == "Softmax"]:
        found = _attention(sm)
        if found is None:
            continue
        q, k, v, mask, scale, last = found
        sdpa = ops.scaled_dot_product_attention(q, k, v, mask if mask is not None else ops.constant(np.float32(0)),
                                                ops.constant(np.float32(scale)), causal=False)
        sdpa.set_friendly_name(last.get_friendly_name())
        for r in list(last.output(0).get_target_inputs()):
            r.replace_source_output(sdpa.output(0))
        fused += 1
    if fused:
        model.validate_nodes_and_infer_types()
    return fused


def _attention(sm):
    """(q, k, v, mask or None, scale, the closing MatMul) of the attention around Softmax `sm`, or None."""
    rank = sm.get_output_partial_shape(0).rank
    if not rank.is_static or rank.get_length() != 4 or sm.get_attributes().get("axis") not in (-1, 3):
        return None
    x, mask = _src(sm.input(0)), None
    if x.get_node().get_type_name() == "Add":
        a, b = (_src(i) for i in x.get_node().inputs())
        x, mask = (a, b) if a.get_node().get_type_name() in ("MatMul", "Multiply") else (b, a)
    x, post = _scaled(x)
    mm = x.get_node()
    if mm.get_type_name() != "MatMul" or mm.get_attributes()["transpose_a"]:
        return None
    q, fq = _scaled(_src(mm.input(0)))
    k, fk = _scaled(_src(mm.input(1)))
    if not mm.get_attributes()["transpose_b"]:
        t = k.get_node()
        perm = t.input_value(1).get_node() if t.get_type_name() == "Transpose" else None
        if perm is None or perm.get_type_name() != "Constant" or list(perm.get_data()) != [0, 1, 3, 2]:
            return None
        k, f = _scaled(_src(t.input(0)))
        fk *= f
    out = sm.output(0)
    readers = [r.get_node() for r in out.get_target_inputs()]
    if sorted(r.get_type_name() for r in readers) == ["IsNaN", "Select"]:  # rows with every key masked -> 0
        out = next(r for r in readers if r.get_type_name() == "Select").output(0)
        readers = [r.get_node() for r in out.get_target_inputs()]
    if len(readers) != 1 or readers[0].get_type_name() != "MatMul" or any(readers[0].get_attributes().values()):
        return None
    last = readers[0]
    if _src(last.input(0)) != out:
        return None
    v = _src(last.input(1))
    if any(t.get_partial_shape().rank.get_length() != 4 for t in (q, k, v)):
        return None
    return q, k, v, mask, fq * fk * post, last


def _src(port):
    return port.get_source_output()


def _scalar(out) -> float | None:
    node = out.get_node()
    if node.get_type_name() != "Constant":
        return None
    data = node.get_data()
    return float(data.reshape(-1)[0]) if data.size == 1 else None


def _scaled(out):
    """(tensor, factor): `out` with the multiplications by scalar constants before it taken off."""
    factor = 1.0
    while out.get_node().get_type_name() == "Multiply":
        a, b = (_src(i) for i in out.get_node().inputs())
        if (s := _scalar(b)) is not None:
            out = a
        elif (s := _scalar(a)) is not None:
            out = b
        else:
            break
        factor *= s
    return out, factor


# -------------------------------------------------------------------------------------------------
# running


class OpenVINOLM(CausalLM):
    """A stateful OpenVINO IR folder (convert_lm) on OpenVINO's CPU plugin, with CausalLM's methods:
    prefill, step, generate, stream, logits, nll, encode, decode. The cache lives in the infer request,
    so a Cache here is a handle to the request's state: `step` continues only from the latest one
    (prefill starts a new sequence), where onnxruntime's caches stay valid forever."""

    def __init__(self, folder, *, threads: int = 1, options: dict | None = None):
        import openvino as ov

        from .backends import first_line
        from .lm_runtime import _read_json

        self.folder = Path(folder)
        path = self.folder / MODEL_XML
        if not path.is_file():
            raise InputError(f"'{self.folder}' has no {MODEL_XML}; convert the LM folder first (edgekd.openvino_lm."
                             "convert_lm)")
        if threads < 1:
            raise InputError(f"threads must be at least 1, got {threads}")
        self.config = cfg = _read_json(self.folder / "config.json")
        self.threads = threads
        try:
            self.compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                                       **OPTIONS, **(options or {})})
        except Exception as e:  # noqa: BLE001
            raise InputError(f"OpenVINO cannot load '{path}': {first_line(e)}") from None
        self._names = {n for i in self.compiled.inputs for n in i.get_names()}
        if "input_ids" not in self._names or any(n.startswith(_PAST) for n in self._names):
            raise InputError(f"'{path}' is not a stateful causal LM (inputs: {', '.join(sorted(self._names))}); "
                             "convert it with edgekd.openvino_lm.convert_lm")
        self.request = self.compiled.create_infer_request()
        self.num_layers = len(self.request.query_state()) // 2
        vocab = self.compiled.output("logits").get_partial_shape()[-1]
        self.vocab_size = vocab.get_length() if vocab.is_static else int(cfg["vocab_size"])
        self.context = next((int(cfg[k]) for k in ("max_position_embeddings", "n_positions", "max_seq_len")
                             if isinstance(cfg.get(k), int)), None)
        gen = _read_json(self.folder / "generation_config.json")
        eos = gen.get("eos_token_id", cfg.get("eos_token_id"))
        self.eos_ids = tuple(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self._tokenizer = None
        self._epoch = 0  # which state the request holds: a Cache from before is stale

    def empty_cache(self) -> Cache:
        self.request.reset_state()
        self._epoch += 1
        return Cache({"state": self._epoch}, 0)

    def _run(self, ids: np.ndarray, cache: Cache) -> tuple[np.ndarray, Cache]:
        if cache.tensors.get("state") != self._epoch:
            raise InputError("this cache is not the OpenVINO request's latest state (the cache lives in the request): "
                             "continue from the cache the last prefill or step returned, or prefill again")
        t, past = len(ids), cache.length
        feed = {"input_ids": ids.astype(np.int64)[None]}  # (1, T)
        if "attention_mask" in self._names:
            feed["attention_mask"] = np.ones((1, past + t), np.int64)
        if "position_ids" in self._names:
            feed["position_ids"] = np.arange(past, past + t, dtype=np.int64)[None]
        if "beam_idx" in self._names:
            feed["beam_idx"] = np.zeros(1, np.int32)
        self.request.infer(feed, share_inputs=True, share_outputs=True)
        logits = np.array(self.request.get_tensor("logits").data[0], dtype=np.float32)  # a copy: the buffer is reused
        self._epoch += 1
        return logits, Cache({"state": self._epoch}, past + t)


# -------------------------------------------------------------------------------------------------
# parity


def check_parity(ov_folder, onnx_folder, prompts: list, *, new_tokens: int = 8, threads: int | None = None) -> dict:
    """The OpenVINO folder against the onnxruntime folder it came from, on token id prompts (1-D int
    arrays): max |logit difference| and next-token top-1 agreement at every prompt position, and the
    greedy `new_tokens` tokens of each prompt (identical prompts, token agreement). Both run here."""
    import os

    threads = threads or os.cpu_count() or 1
    ov_lm, ort_lm = OpenVINOLM(ov_folder, threads=threads), CausalLM(onnx_folder, threads=threads)
    diff, agree, positions, exact, same, total = 0.0, 0, 0, 0, 0, 0
    for ids in prompts:
        ids = np.asarray(ids, np.int64)
        a, b = ov_lm.logits(ids), ort_lm.logits(ids)  # (T, V)
        diff = max(diff, float(np.abs(a - b).max()))
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        positions += len(ids)
        ga = ov_lm.generate(ids, max_new_tokens=new_tokens, stop_ids=())
        gb = ort_lm.generate(ids, max_new_tokens=new_tokens, stop_ids=())
        exact += ga == gb
        same += sum(x == y for x, y in zip(ga, gb))
        total += len(gb)
    return {"against": "onnxruntime", "max_abs_diff": diff, "top1_agreement": agree / max(positions, 1),
            "positions": positions, "prompts": len(prompts), "new_tokens": new_tokens, "greedy_exact": exact,
            "greedy_token_agreement": same / max(total, 1)}
