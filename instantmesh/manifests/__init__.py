"""State-dict manifests of the official InstantMesh checkpoints (package data).

Each ``keys_<variant>.txt`` lists one tensor per line as ``name<TAB>shape<TAB>dtype`` (names
already stripped of the upstream ``lrm_generator.`` prefix), then a ``# total: ...`` line.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from importlib import resources

import torch

_TOTAL = re.compile(r"#\s*total:\s*(\d+)\s+tensors,\s*(\d+)\s+parameters")


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: str  # e.g. "float32"

    @property
    def numel(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count


@dataclass(frozen=True)
class Manifest:
    tensors: dict[str, TensorSpec]
    total_tensors: int | None = None
    total_parameters: int | None = None

    @property
    def numel(self) -> int:
        return sum(spec.numel for spec in self.tensors.values())


def parse_manifest(text: str) -> Manifest:
    tensors: dict[str, TensorSpec] = {}
    total_tensors = total_parameters = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            match = _TOTAL.match(line)
            if match:
                total_tensors, total_parameters = int(match[1]), int(match[2])
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise ValueError(f"manifest line {number}: expected name, shape, dtype: {raw!r}")
        name, shape_text, dtype = parts
        shape = ast.literal_eval(shape_text)
        if not isinstance(shape, tuple) or not all(isinstance(s, int) for s in shape):
            raise ValueError(f"manifest line {number}: bad shape {shape_text!r}")
        if name in tensors:
            raise ValueError(f"manifest line {number}: duplicate tensor {name!r}")
        tensors[name] = TensorSpec(shape, dtype)
    return Manifest(tensors, total_tensors, total_parameters)


def manifest_text(variant: str) -> str:
    resource = resources.files(__name__).joinpath(f"keys_{variant}.txt")
    if not resource.is_file():
        raise ValueError(f"no state-dict manifest is shipped for variant {variant!r}")
    return resource.read_text()


def read_manifest(variant: str) -> Manifest:
    """The manifest of an official variant, e.g. ``read_manifest("instant-nerf-base")``."""
    return parse_manifest(manifest_text(variant))


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def state_dict_specs(state_dict: dict[str, torch.Tensor]) -> dict[str, TensorSpec]:
    """Shapes and dtypes of a state dict, in manifest form (works for meta tensors)."""
    return {
        name: TensorSpec(tuple(tensor.shape), dtype_name(tensor.dtype))
        for name, tensor in state_dict.items()
    }
