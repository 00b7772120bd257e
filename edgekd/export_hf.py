"""ONNX export of a Hugging Face text model (edgekd.models.hf_text.TextEncoder) as a transformers-style
folder: model.onnx + config.json + tokenizer files, the layout `optimum.onnxruntime.ORTModel*` and
`AutoTokenizer` read.

The encoder goes through optimum's exporter (its per-architecture ONNX configs know each family's
inputs and tracing patches); what optimum's "feature-extraction" graph lacks, the sentence pooling,
projection, normalization and a head of our own, is appended to the graph, so the file computes
exactly what the wrapper's forward returns. An architecture optimum has no config for is exported
with torch.onnx (TorchScript) from the wrapper itself."""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

BATCH, SEQ = "batch_size", "sequence_length"  # optimum's names of the dynamic axes


def export_text(model, folder: Path, *, opset: int, tokenizer) -> dict:
    """Write `folder`/model.onnx (weights inline; int64 inputs among input_ids, attention_mask,
    token_type_ids; one float output, "logits" for a classifier, else "sentence_embedding"; batch and
    sequence axes dynamic), config.json (id2label for classifiers) and the tokenizer's files. The model
    is exported on the CPU (moved there, in eval mode)."""
    import onnx

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    output = "logits" if model.num_labels else "sentence_embedding"
    task = "text-classification" if model.hf_head else "feature-extraction"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        if _optimum_supports(model.hf, task):
            _export_optimum(model.hf, path, task=task, opset=opset)
            proto = onnx.load(str(path))
            if model.hf_head:
                _rename_output(proto.graph, "logits", output)
            else:
                _append_pooling(proto.graph, model, output=output)
            exporter = "optimum"
        else:
            from .export import export_text_onnx

            export_text_onnx(model, path, opset=opset, output=output)
            proto = onnx.load(str(path))
            exporter = "torch.onnx"
        onnx.checker.check_model(proto)
        # one self-contained file: torch's exporters may write weights beside it (.onnx.data)
        onnx.save(proto, str(folder / "model.onnx"), save_as_external_data=False)
    _config_for(model).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return {"exporter": exporter, "task": task, "file": "model.onnx", "opset": opset,
            "inputs": [i.name for i in proto.graph.input], "output": output,
            "pooling": None if model.hf_head else model.pooling,
            "normalize": False if model.hf_head else model.normalize,
            "seconds": round(time.perf_counter() - t0, 3)}


def _optimum_supports(hf, task: str) -> bool:
    import optimum.exporters.onnx.model_configs  # noqa: F401 - importing it registers the per-architecture configs
    from optimum.exporters.tasks import TasksManager

    model_type = getattr(hf.config, "export_model_type", hf.config.model_type)
    try:
        tasks = TasksManager.get_supported_tasks_for_model_type(model_type, "onnx", library_name="transformers")
    except (KeyError, ValueError):
        return False
    return task in tasks


def _export_optimum(hf, path: Path, *, task: str, opset: int) -> None:
    """optimum's ONNX config for the model's family and task, exported from the model in memory (a
    layer subset or a stripped fake-quant model need not survive a save/reload)."""
    import warnings

    from optimum.exporters.onnx import export
    from optimum.exporters.tasks import TasksManager

    ctor = TasksManager.get_exporter_config_constructor(exporter="onnx", model=hf, task=task,
                                                        library_name="transformers")
    onnx_config = ctor(hf.config)
    # optimum sets return_dict (and its overrides) on the config while exporting: put them back
    keys = ["return_dict", *(onnx_config.values_override or {})]
    saved = {k: getattr(hf.config, k) for k in keys if hasattr(hf.config, k)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export(hf, onnx_config, path, opset=opset)
    finally:
        for k, v in saved.items():
            setattr(hf.config, k, v)


def _config_for(model):
    """The model's config as config.json should hold it: a classifier's id2label in the data's order."""
    cfg = copy.deepcopy(model.hf.config)
    k = model.num_labels
    if k:
        labels = model.labels if len(model.labels) == k else [f"LABEL_{i}" for i in range(k)]
        cfg.id2label = dict(enumerate(labels))
        cfg.label2id = {v: i for i, v in enumerate(labels)}
    return cfg


def _rename_output(graph, old: str, new: str) -> None:
    if old == new:
        return
    for node in graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
    for o in graph.output:
        if o.name == old:
            o.name = new


def _append_pooling(graph, model, *, output: str) -> None:
    """last_hidden_state (B, S, D) -> the wrapper's embedding or logits, in ONNX nodes:
    mask-weighted mean (or the first token), then MatMul+Add projection, L2 normalization and
    MatMul+Add head where the model has them. The new output comes first (what edgekd's runtimes
    read); an embedding model keeps the token states as its second output, which is what
    optimum's ORTModelForFeatureExtraction (and a sentence-transformers pooling on top) reads."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    hs = next(o for o in graph.output if o.name == "last_hidden_state")
    kept = [o for o in graph.output if o.name != "last_hidden_state"]
    if model.head is None:
        kept.append(hs)
    del graph.output[:]
    nodes, inits = [], []

    def const(name: str, value) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), f"edgekd/{name}"))
        return f"edgekd/{name}"

    def node(op: str, inputs: list[str], name: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [f"edgekd/{name}"], name=f"edgekd/{name}_{op}", **attrs))
        return f"edgekd/{name}"

    def linear(x: str, lin, name: str) -> str:
        w = lin.weight.detach().cpu().numpy().T.astype(np.float32)  # (D_in, D_out)
        y = node("MatMul", [x, const(f"{name}.weight", w)], f"{name}_matmul")
        if lin.bias is not None:
            y = node("Add", [y, const(f"{name}.bias", lin.bias.detach().cpu().numpy().astype(np.float32))], name)
        return y

    h = hs.name
    if model.pooling == "cls":
        e = node("Gather", [h, const("first", np.array(0, np.int64))], "cls", axis=1)  # (B, D)
    else:
        m = node("Cast", ["attention_mask"], "mask", to=TensorProto.FLOAT)  # (B, S)
        m = node("Unsqueeze", [m, const("last_axis", np.array([-1], np.int64))], "mask3")  # (B, S, 1)
        seq_axis = const("seq_axis", np.array([1], np.int64))
        total = node("ReduceSum", [node("Mul", [h, m], "masked"), seq_axis], "sum", keepdims=0)  # (B, D)
        count = node("ReduceSum", [m, seq_axis], "count", keepdims=0)  # (B, 1)
        count = node("Max", [count, const("min_count", np.array(1e-9, np.float32))], "count_clamped")
        e = node("Div", [total, count], "mean")  # (B, D)
    if model.proj is not None:
        e = linear(e, model.proj, "proj")
    if model.normalize:
        sq = node("ReduceSum", [node("Mul", [e, e], "square"), const("feature_axis", np.array([-1], np.int64))],
                  "square_sum", keepdims=1)  # (B, 1)
        norm = node("Max", [node("Sqrt", [sq], "norm"), const("eps", np.array(1e-12, np.float32))], "norm_clamped")
        e = node("Div", [e, norm], "normalized")
    if model.head is not None:
        e = linear(e, model.head, "head")
    nodes[-1].output[0] = output
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    width = model.head.out_features if model.head is not None else model.embedding_dim
    graph.output.extend([helper.make_tensor_value_info(output, TensorProto.FLOAT, [BATCH, width]), *kept])
