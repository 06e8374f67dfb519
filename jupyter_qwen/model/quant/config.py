"""Which quantized format a checkpoint holds, read from config.json's `quantization_config`
and checked (torch-free, so the memory reports and the demo writer may read it too).

Supported, exactly as Qwen publishes them:

- FP8: `{"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
  "weight_block_size": [128, 128]}` (optional `modules_to_not_convert`);
- AWQ: `{"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": true,
  "version": "gemm"}` (optional `modules_to_not_convert`).

Anything else raises `QuantizationError` naming the key, its value and what is supported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_qwen.model.errors import QuantizationError

FP8_BLOCK = (128, 128)
AWQ_BITS = 4
AWQ_GROUP_SIZE = 128
FP8_SUPPORTED = ('quant_method "fp8" with fmt "e4m3", activation_scheme "dynamic" and '
                 "weight_block_size [128, 128]")
AWQ_SUPPORTED = ('quant_method "awq" with bits 4, group_size 128, zero_point true and '
                 'version "gemm"')
ONLINE_CHOICES = ("none", "fp8")


@dataclass(frozen=True, slots=True)
class QuantConfig:
    """`method`: "fp8" or "awq"; `online`: FP8 weights quantized at load from a bf16
    checkpoint (the `quantization="fp8"` option) rather than read from the checkpoint."""

    method: str
    modules_to_not_convert: tuple[str, ...] = ()
    online: bool = False

    @property
    def block_size(self) -> tuple[int, int]:
        return FP8_BLOCK

    @property
    def group_size(self) -> int:
        return AWQ_GROUP_SIZE

    def converts(self, module_name: str) -> bool:
        """Whether the projection of this Hugging Face name (e.g. 'model.layers.0.mlp.up_proj')
        is quantized: not when an entry of `modules_to_not_convert` occurs in it (as
        transformers matches them)."""
        return not any(entry in module_name for entry in self.modules_to_not_convert)

    def describe(self) -> str:
        if self.method == "fp8":
            return "FP8 (e4m3, 128 x 128 blocks" + (", quantized at load)" if self.online else ")")
        return "AWQ (4-bit, groups of 128)"


def _fail(key: str, value: Any, supported: str) -> QuantizationError:
    return QuantizationError(f"quantization_config.{key} = {json.dumps(value)} is not supported; "
                             f"jupyter_qwen loads {supported}")


def _skip_list(raw: dict) -> tuple[str, ...]:
    value = raw.get("modules_to_not_convert")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail("modules_to_not_convert", value, "a list of module names (or null)")
    return tuple(value)


def _check(raw: dict, key: str, allowed: tuple, default: Any, supported: str) -> None:
    value = raw.get(key, default)
    normalised = value.lower() if isinstance(value, str) else value
    if normalised not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
        raise _fail(key, value, supported)


def _parse_fp8(raw: dict) -> QuantConfig:
    _check(raw, "fmt", ("e4m3",), "e4m3", FP8_SUPPORTED)
    _check(raw, "activation_scheme", ("dynamic",), "dynamic", FP8_SUPPORTED)
    _check(raw, "scale_fmt", ("float",), "float", FP8_SUPPORTED)
    block = raw.get("weight_block_size")
    if not isinstance(block, list | tuple) or tuple(block) != FP8_BLOCK:
        raise _fail("weight_block_size", block, FP8_SUPPORTED)
    return QuantConfig("fp8", _skip_list(raw))


def _parse_awq(raw: dict) -> QuantConfig:
    for key, value in (("bits", AWQ_BITS), ("group_size", AWQ_GROUP_SIZE)):
        if raw.get(key) != value or isinstance(raw.get(key), bool):
            raise _fail(key, raw.get(key), AWQ_SUPPORTED)
    _check(raw, "zero_point", (True,), None, AWQ_SUPPORTED)
    _check(raw, "version", ("gemm",), None, AWQ_SUPPORTED)
    return QuantConfig("awq", _skip_list(raw))


def parse_quantization_config(raw: dict | None) -> QuantConfig | None:
    """config.json's `quantization_config` (None or absent: a bf16 checkpoint)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _fail("", raw, f"{FP8_SUPPORTED}, or {AWQ_SUPPORTED}")
    method = raw.get("quant_method")
    method = method.lower() if isinstance(method, str) else method
    if method == "fp8":
        return _parse_fp8(raw)
    if method == "awq":
        return _parse_awq(raw)
    raise _fail("quant_method", raw.get("quant_method"),
                f"{FP8_SUPPORTED}, or {AWQ_SUPPORTED}")


def read_quant_config(folder: str | Path) -> QuantConfig | None:
    raw = json.loads((Path(folder) / "config.json").read_text())
    return parse_quantization_config(raw.get("quantization_config"))


def resolve_quantization(checkpoint: QuantConfig | None, requested: str = "none",
                         ) -> QuantConfig | None:
    """The format the model runs: the checkpoint's own, or with `requested` "fp8" (the
    `quantization` option) FP8 quantized at load from a bf16 checkpoint."""
    if requested not in ONLINE_CHOICES:
        raise QuantizationError(f"quantization={requested!r} is not supported; choose one of "
                                f"{', '.join(ONLINE_CHOICES)}")
    if requested == "none" or (checkpoint is not None and checkpoint.method == requested):
        return checkpoint
    if checkpoint is not None:
        raise QuantizationError(
            f"quantization='{requested}' quantizes bf16 checkpoints at load, but this checkpoint "
            f"is already quantized ({checkpoint.describe()}); leave quantization at 'none'")
    return QuantConfig(requested, online=True)
