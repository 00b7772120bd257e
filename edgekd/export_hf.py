"""ONNX export of Hugging Face models as transformers-style folders, the layout
`optimum.onnxruntime.ORTModel*`, `AutoTokenizer`, `AutoImageProcessor` and `transformers.pipeline` read.

Text (edgekd.models.hf_text.TextEncoder): model.onnx + config.json + tokenizer files. The encoder goes
through optimum's exporter (its per-architecture ONNX configs know each family's inputs and tracing
patches); what optimum's "feature-extraction" graph lacks, the sentence pooling, projection,
normalization and a head of our own, is appended to the graph, so the file computes exactly what the
wrapper's forward returns. An architecture optimum has no config for is exported with torch.onnx
(TorchScript) from the wrapper itself.

Images (edgekd.models.hf_image.ImageClassifier): optimum's "image-classification" config, pixel_values
-> logits (torch.onnx with the same names where optimum has no config), and config.json +
preprocessor_config.json, an image processor set to the build's preprocessing (image_processor)."""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

BATCH, SEQ = "batch_size", "sequence_length"  # optimum's names of the dynamic axes
PIXELS = "pixel_values"  # the image input optimum's exporter writes and ORTModelForImageClassification feeds


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


# -------------------------------------------------------------------------------------------------
# images


def export_image(model, path: Path, *, opset: int, input_shape) -> dict:
    """Write `path` (ONNX, weights inline, "pixel_values" (B, C, H, W) -> "logits" (B, K), batch axis
    dynamic) from a transformers image classifier wrapped as edgekd.models.hf_image.ImageClassifier:
    optimum's config for its family, or torch.onnx from the wrapper where optimum has none."""
    import onnx

    model = model.eval().cpu()
    task = "image-classification"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.onnx"
        if _optimum_supports(model.hf, task):
            _export_optimum(model.hf, raw, task=task, opset=opset)
            info = {"exporter": "optimum", "task": task}
        else:
            from .export import export_onnx

            export_onnx(model, raw, tuple(input_shape), opset=opset, input_name=PIXELS)
            info = {"exporter": "torch.onnx",
                    "why": f"optimum has no ONNX config for {model.hf.config.model_type} {task}"}
        proto = onnx.load(str(raw))
        onnx.checker.check_model(proto)
        onnx.save(proto, str(path), save_as_external_data=False)
    return {**info, "opset": opset, "input": proto.graph.input[0].name, "output": proto.graph.output[0].name,
            "seconds": round(time.perf_counter() - t0, 3)}


def write_image_folder(model, folder: Path, *, preprocessing: dict) -> dict:
    """`folder`/config.json (the model's transformers config, id2label in the data's order) and, where a
    transformers image processor can repeat the build's preprocessing, preprocessor_config.json. Returns
    what was written and, in one line, where the processor differs from the build."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    copy.deepcopy(model.hf.config).save_pretrained(str(folder))  # labelled with the data's classes when built
    processor, note = image_processor(preprocessing)
    files = ["config.json"]
    if processor is not None:
        processor.save_pretrained(str(folder))
        files.append("preprocessor_config.json")
    return {"folder": folder.name, "files": files, "loads_with": "ORTModelForImageClassification",
            "image_processor": type(processor).__name__ if processor is not None else None, "note": note}


def image_processor(pre: dict):
    """(a transformers image processor set to an image build's preprocessing (edgekd.data._images), one
    line on how it differs) or (None, why none can repeat it).

    BitImageProcessor runs the build's steps in the build's order: RGB conversion, shorter side resized
    with Pillow's bilinear filter, center crop at floor((side - crop) / 2), x * (1/255) in float64 then
    float32, (x - mean) / std in float32 (the longer side int(long * R / short) in both). One difference
    remains: convert_to_rgb composites transparent pixels on white where Pillow's convert("RGB") drops
    alpha."""
    from transformers import BitImageProcessor

    if pre["color"] != "rgb":
        return None, (f"no preprocessor_config.json: the model takes {pre['input_shape'][0]}-channel {pre['color']} "
                      "input and transformers' image "
                      "processors convert images to RGB or not at all; feed pixel_values as edgekd.runtime prepares them")
    steps = {s["op"]: s for s in pre["steps"]}
    _, h, w = pre["input_shape"]
    resize, crop, scale, norm = (steps.get(k) for k in ("resize", "center_crop", "scale", "normalize"))
    processor = BitImageProcessor(
        do_convert_rgb=True,
        do_resize=resize is not None, size={"shortest_edge": resize["shorter_side"] if resize else min(h, w)},
        resample=2,  # PIL.Image.BILINEAR, as the build resized
        do_center_crop=crop is not None,
        crop_size={"height": crop["size"][0], "width": crop["size"][1]} if crop else {"height": h, "width": w},
        do_rescale=scale is not None, rescale_factor=scale["factor"] if scale else 1 / 255,
        do_normalize=True, image_mean=norm["mean"], image_std=norm["std"])
    differs = ["images with transparency are composited on white (edgekd drops alpha)"]
    if resize and resize.get("longer_side", "round") == "round":  # a manifest of an older build
        differs.insert(0, "the resized longer side is int(long * R / short), 1 px less than this build's where the "
                          "fraction is .5 or more")
    return processor, "BitImageProcessor, the build's steps; differs from edgekd.runtime: " + "; ".join(differs)
