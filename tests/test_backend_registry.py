"""The render-backend registry is the one truth: config choices, GPU reservations, availability
checks and the public rasterizer boundary all derive from ``rendering.backends.BACKENDS``."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pytest

from rendering.backends import (
    BACKENDS,
    BackendEntry,
    RenderSettings,
    backend_entry,
    describe_backends,
    make_backend,
    unavailable_reason,
)

ROOT = Path(__file__).resolve().parent.parent


def _job_configs() -> dict[str, type]:
    """Every ``imesh`` subcommand's config class and the dataclasses nested in it."""
    from pipelines.cli import COMMANDS

    found: dict[str, type] = {}

    def walk(cls: type, where: str) -> None:
        found[where] = cls
        for name, tp in typing.get_type_hints(cls).items():
            for t in (tp, *typing.get_args(tp)):
                if dataclasses.is_dataclass(t) and isinstance(t, type):
                    walk(t, f"{where}.{name}")

    for command, spec in COMMANDS.items():
        cls = spec.config()
        if dataclasses.is_dataclass(cls):
            walk(cls, command)
    return found


def _literal_choices(tp: Any) -> set[str]:
    """The string choices of a ``Literal`` (or ``Literal | None``) annotation."""
    if typing.get_origin(tp) is typing.Literal:
        return set(typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        out: set[str] = set()
        for arg in typing.get_args(tp):
            if arg is not type(None):
                out |= _literal_choices(arg)
        return out
    raise AssertionError(f"not a Literal annotation: {tp!r}")


def test_every_backend_config_field_offers_exactly_the_registry() -> None:
    configs = _job_configs()
    fields = {
        where: typing.get_type_hints(cls)["backend"]
        for where, cls in configs.items()
        if "backend" in typing.get_type_hints(cls)
    }
    # render, evalset, evaluate, benchmark and nightly (evaluate's options) all have one
    assert {"render", "evalset", "evaluate", "benchmark", "nightly"} <= set(fields)
    for where, tp in fields.items():
        assert _literal_choices(tp) == set(BACKENDS), where
    # demo's training renders: "auto" or a registry name
    demo = _literal_choices(typing.get_type_hints(configs["demo"])["render_backend"])
    assert "auto" in demo and demo - {"auto"} <= set(BACKENDS)


def test_evaluate_backend_defaults_to_the_evaluation_sets() -> None:
    from pipelines.benchmark import EvaluateConfig
    from pipelines.evalset import EvalsetConfig
    from pipelines.render import RenderConfig

    assert EvaluateConfig(evalset="e", out="o").backend is None
    assert EvalsetConfig(dataset="gso", root="r", out="o").backend in BACKENDS
    assert RenderConfig(out="o").backend in BACKENDS


def test_backend_help_lists_every_entry() -> None:
    from pipelines.cli import main

    text = describe_backends()
    for entry in BACKENDS.values():
        assert f"{entry.name}: {entry.description}" in text
    assert main(["render", "--help"]) == 0


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_gpu_reservation_of_render_and_evalset_follows_needs_gpu(name: str) -> None:
    from pipelines.evalset import EvalsetConfig, build_stage
    from pipelines.render import RenderConfig, render_stage, worker_gpus

    expected = 1.0 if BACKENDS[name].needs_gpu else 0.0
    assert worker_gpus(name) == expected
    assert render_stage(RenderConfig(out="o", backend=name)).num_gpus == expected
    cfg = EvalsetConfig(dataset="gso", root="r", out="o", backend=name)
    assert build_stage(cfg).num_gpus == expected


def test_the_gpu_backends_are_the_gpu_backends() -> None:
    """What the registry declares today (a changed entry must change this test)."""
    assert {n for n, e in BACKENDS.items() if e.needs_gpu} == {"nvdiffrast"}
    assert BACKENDS["nvdiffrast"].needs_cuda and not BACKENDS["cpu"].needs_cuda
    assert "samples" in BACKENDS["blender"].options
    assert "samples" not in BACKENDS["cpu"].options


def test_unavailable_reason_of_each_entry() -> None:
    assert unavailable_reason("cpu") is None
    blender = unavailable_reason("blender")
    if importlib.util.find_spec("bpy") is not None:
        assert blender is None
    else:
        assert blender is not None and "pip install 'instantmesh-pipeline[render]'" in blender
    nvd = unavailable_reason("nvdiffrast")
    if importlib.util.find_spec("nvdiffrast") is None:
        assert nvd == (
            "backend 'nvdiffrast' needs nvdiffrast: pip install 'instantmesh-pipeline[gpu]'"
        )
    else:
        import torch

        assert (nvd is None) == torch.cuda.is_available()
    for name, entry in BACKENDS.items():
        assert entry.name == name
        assert entry.unavailable_reason() == unavailable_reason(name)
    assert "choose one of" in str(unavailable_reason("povray"))
    with pytest.raises(ValueError, match="unknown backend 'povray'"):
        make_backend("povray")


def test_requirements_are_checked_from_the_entry() -> None:
    entry = BackendEntry(
        name="toy",
        target="rendering.backends.cpu:CpuBackend",
        description="d",
        requires=("no_such_module_for_the_registry_test",),
        install_hint="pip install toy",
    )
    assert entry.unavailable_reason() == (
        "backend 'toy' needs no_such_module_for_the_registry_test: pip install toy"
    )
    with pytest.raises(ValueError, match="unknown render settings"):
        BackendEntry(name="toy", target="m:C", description="d", options=("exposure",))
    with pytest.raises(ValueError, match="module:Class"):
        BackendEntry(name="toy", target="m.C", description="d")


def test_adding_a_backend_is_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.render import worker_gpus

    toy = BackendEntry(
        name="toy", target="rendering.backends.cpu:CpuBackend", description="d", needs_gpu=True
    )
    monkeypatch.setitem(BACKENDS, "toy", toy)
    assert backend_entry("toy") is toy and unavailable_reason("toy") is None
    assert worker_gpus("toy") == 1.0
    backend = make_backend("toy", RenderSettings(threads=1))
    assert type(backend).__name__ == "CpuBackend"
    assert "toy: d" in describe_backends()


def test_importing_the_registry_imports_no_backend() -> None:
    code = (
        "import sys, rendering.backends as b, pipelines.render, pipelines.evalset; "
        "b.unavailable_reason('blender'); b.unavailable_reason('nvdiffrast'); "
        "print(sorted(m for m in ('bpy', 'nvdiffrast', 'rendering.backends.blender', "
        "'rendering.backends.nvdiffrast_backend', 'rendering.backends.cpu') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def _private_backend_uses(path: Path) -> list[str]:
    """``from rendering.backends.<m> import _x`` and ``<alias of a backend module>._x``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    aliases: set[str] = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "rendering.backends"
        ):
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
            aliases |= {a.asname or a.name for a in node.names}  # a backend module by name
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("rendering.backends.") and a.asname:
                    aliases.add(a.asname)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
        ):
            found.append(f"{node.value.id}.{node.attr}")
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return [f"{where}: {f}" for f in found]


def test_no_code_outside_the_backends_reaches_into_their_private_parts() -> None:
    backends = ROOT / "rendering" / "backends"
    files = [
        p
        for pkg in (
            "pipelines",
            "rendering",
            "evaluation",
            "instantmesh",
            "filtering",
            "benchmarks",
        )
        for p in sorted((ROOT / pkg).rglob("*.py"))
        if not p.is_relative_to(backends)
    ]
    assert len(files) > 50
    offenders = [hit for p in files for hit in _private_backend_uses(p)]
    assert offenders == []


def test_the_checker_sees_private_imports(tmp_path: Path) -> None:
    bad = tmp_path / "probe.py"
    bad.write_text(
        "from rendering.backends.cpu import _setup, rasterize\n"
        "import rendering.backends.nvdiffrast_backend as nvb\n"
        "nvb._batches, nvb.depth_range\n"
    )
    hits = _private_backend_uses(bad)
    assert len(hits) == 2 and "_setup" in hits[0] and "nvb._batches" in hits[1]


def test_instantmesh_uses_the_public_rasterizer_not_a_backend() -> None:
    """The model's renderers go through ``rendering.rasterizer``; no instantmesh module
    imports a backend module."""
    for path in sorted((ROOT / "instantmesh").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                assert not name.startswith("rendering.backends."), f"{path}: imports {name}"
    text = (ROOT / "instantmesh" / "mesh_render.py").read_text()
    assert "from rendering.rasterizer import" in text
