"""Every job config's registry-backed choices equal the registry's keys (issue 17 §1).

Walks the config dataclass of every ``imesh`` subcommand (nested configs included) and checks
the ``Literal`` choices of each field that names a plug-in against the registry it must be
derived from, so a registry entry added without its choice (or a hand-written Literal that
drifts from the registry) fails here.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from evaluation.predictors import PREDICTORS
from pipelines.cli import COMMANDS
from rendering.backends import BACKENDS

REGISTRY_FIELDS: dict[str, set[str]] = {
    "backend": set(BACKENDS),
    "predictor": set(PREDICTORS),
}
"""Config field name -> the registry keys its choices must equal."""


def _literal_choices(tp: Any) -> set[str] | None:
    """The string choices of a (possibly Optional / Annotated) Literal annotation."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _literal_choices(typing.get_args(tp)[0])
    if origin is typing.Literal:
        return {a for a in typing.get_args(tp) if isinstance(a, str)}
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            found = _literal_choices(arg)
            if found is not None:
                return found
    return None


def _fields(cls: type, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(path, field name, annotation) of every field of ``cls`` and its nested configs."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        bare = typing.get_args(tp)[0] if typing.get_origin(tp) is typing.Annotated else tp
        if dataclasses.is_dataclass(bare) and isinstance(bare, type):
            out += _fields(bare, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", f.name, tp))
    return out


def test_every_registry_backed_choice_equals_the_registry_keys() -> None:
    checked = []
    for command, spec in COMMANDS.items():
        for path, name, tp in _fields(spec.config()):
            if name not in REGISTRY_FIELDS:
                continue
            choices = _literal_choices(tp)
            assert choices is not None, f"imesh {command} --{path}: not a registry choice ({tp})"
            assert choices == REGISTRY_FIELDS[name], (
                f"imesh {command} --{path}: choices {sorted(choices)} != registry "
                f"{sorted(REGISTRY_FIELDS[name])}"
            )
            checked.append(f"{command}:{path}")
    # The commands that choose a backend or a predictor are all covered (a renamed field
    # would otherwise silently escape the check).
    for expected in ("render:backend", "evalset:backend", "evaluate:backend", "benchmark:backend",
                     "predict:predictor", "benchmark:predictor"):  # fmt: skip
        assert expected in checked, f"{expected} not found among {checked}"


def test_demo_backend_choices_are_the_gpu_free_backends() -> None:
    from pipelines.demo import DemoConfig

    hints = typing.get_type_hints(DemoConfig, include_extras=True)
    choices = _literal_choices(hints["render_backend"])
    assert choices == {"auto"} | {n for n, e in BACKENDS.items() if not e.needs_gpu}
