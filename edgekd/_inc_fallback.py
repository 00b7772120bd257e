"""neural-compressor's side of edgekd.budget: one configuration class and one algorithm registered with
neural-compressor 3.x for framework "torch", so that its `autotune` drives the layer fallback search.

The "model" neural-compressor tunes is a `LayerTable` (the names of the layers that can stay float),
not a torch module: a trial's "quantization" only records which layers its config sets to "fp32" with
`set_local`; the eval_fn edgekd passes to `autotune` then writes the real INT8 ONNX with those layers
left float and scores it on the target's runtime. Only edgekd.budget imports this module (it imports
neural-compressor, torch and their loggers' set-up)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from neural_compressor.common.base_config import BaseConfig, register_config
from neural_compressor.common.utils import DEFAULT_WHITE_LIST
from neural_compressor.torch.utils import register_algo

ALGO = "edgekd_int8_fallback"


@dataclass
class LayerTable:
    """What autotune deep-copies for each trial: the quantizable layers {name: module type} and, once a
    trial's config was applied, the layers it leaves float (None: the FP32 model, autotune's baseline)."""
    layers: dict[str, str]
    float_layers: list[str] | None = None
    is_quantized: bool = field(default=False)


# Lowest priority: neural-compressor's own default config sets (get_all_config_set) list registered
# classes by priority; ours only ever runs when edgekd passes it explicitly.
@register_config(framework_name="torch", algo_name=ALGO, priority=-1000)
class FallbackConfig(BaseConfig):
    """dtype "int8" (the global config) or "fp32" (set_local on the layers a variant leaves float)."""

    name = ALGO
    params_list = ["dtype"]

    def __init__(self, dtype: str = "int8", white_list=DEFAULT_WHITE_LIST, **_internal):
        # **_internal: BaseConfig rebuilds a config from its own __dict__ (with its private fields)
        super().__init__(white_list=white_list)
        self.dtype = dtype
        self._post_init()

    @classmethod
    def register_supported_configs(cls) -> None:
        cls.supported_configs = []

    @staticmethod
    def get_model_info(model: LayerTable) -> list[tuple[str, str]]:
        return list(model.layers.items())

    @classmethod
    def get_config_set_for_tuning(cls) -> "FallbackConfig":
        return cls()


@register_algo(name=ALGO)
def apply_fallback(model: LayerTable, configs_mapping, **_kwargs) -> LayerTable:
    """The "quantized model" of a trial: the table with the layers its config leaves float."""
    float_layers = {name for (name, _), cfg in configs_mapping.items() if getattr(cfg, "dtype", "int8") == "fp32"}
    model.float_layers = [name for name in model.layers if name in float_layers]  # in graph order
    return model


def variant(float_layers: list[str]) -> FallbackConfig:
    """INT8 everywhere except `float_layers`. set_local takes a regular expression matched at the start
    of a name: escape and anchor it, or layer "1" would also match "10"."""
    cfg = FallbackConfig(dtype="int8")
    for name in float_layers:
        cfg.set_local(re.escape(name) + r"\Z", FallbackConfig(dtype="fp32"))
    return cfg
