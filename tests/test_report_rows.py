"""Report rows: reference rows only where they hold numbers, row labels that say each thing
once, best-aligned columns only where a run has them, and LPIPS n/a with a way forward."""

from __future__ import annotations

import html
import io
import shlex
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from evaluation.compare import compare_runs
from evaluation.html_report import render_html_report
from evaluation.metrics import LpipsUnavailable, load_lpips, lpips_backbone_path, lpips_install_hint
from evaluation.run_records import RunInfo, RunRecords, write_run_records
from evaluation.tables import DEFAULT_REFERENCE, lpips_hints, paper_tables

NO_LPIPS = {"evaluate": {"gso": {"lpips_net": "none"}}}


def _run(
    run_id: str,
    predictor: str = "instantmesh",
    *,
    variant: str | None = None,
    config: dict[str, Any] | None = None,
    aligned: bool = False,
    lpips: bool = False,
) -> RunRecords:
    info = RunInfo.new(
        run_id,
        predictor,
        variant=variant,
        datasets=["gso"],
        config=NO_LPIPS if config is None else config,
        lpips_backbone="vgg" if lpips else None,
        lpips_available=lpips,
    )
    image = [
        {
            "dataset": "gso",
            "uid": u,
            "view_set": "orbit",
            "view": 0,
            "psnr": 20.0 + i,
            "ssim": 0.8,
            "lpips": 0.1 if lpips else None,
        }
        for i, u in enumerate("ab")
    ]
    geometry = [
        {
            "dataset": "gso",
            "uid": u,
            "chamfer": 0.2 + i / 10,
            "fscore": 0.5,
            "precision": 0.5,
            "recall": 0.5,
            "fscore_threshold": 0.2,
            **({"chamfer_aligned": 0.1 + i / 10, "fscore_aligned": 0.7} if aligned else {}),
        }
        for i, u in enumerate("ab")
    ]
    objects = [{"dataset": "gso", "uid": u, "status": "ok"} for u in "ab"]
    return RunRecords.from_rows(info, image, geometry, objects)


def _reference(cells: dict[str, float | None]) -> dict[str, Any]:
    metrics = ["psnr", "ssim", "lpips", "chamfer", "fscore"]
    empty = dict.fromkeys(metrics)
    return {
        "source": {"arxiv": "2404.07191", "verified": False},
        "tables": [
            {
                "key": "gso_orbit",
                "title": "Table 2",
                "paper_table": 2,
                "dataset": "gso",
                "view_set": "orbit",
                "metrics": metrics,
                "rows": [
                    {"method": "TripoSR", **empty, **cells},
                    {"method": "LGM", **empty},
                    {"method": "CRM", **empty},
                ],
            }
        ],
    }


# --------------------------------------------------------------------------- reference rows


def test_reference_rows_without_numbers_are_left_out() -> None:
    (t,) = paper_tables([_run("r1")], _reference({"chamfer": 0.1}))
    assert [r.label for r in t.rows if r.is_reference] == ["TripoSR"]
    md = t.to_markdown()
    assert "| TripoSR | – | – | – | 0.100 | – | – |" in md
    assert "LGM" not in md and "CRM" not in md
    assert "Reference rows: arXiv 2404.07191, Table 2 (not verified" in md
    assert "not on file:" not in md


def test_a_table_without_reference_numbers_has_one_note_instead() -> None:
    (t,) = paper_tables([_run("r1")], _reference({}))
    assert not any(r.is_reference for r in t.rows)
    notes = [n for n in t.notes if "not on file" in n]
    assert notes == [
        "The paper's numbers (arXiv 2404.07191, Table 2) are not on file: copy them from the "
        "paper into the reference YAML (or a copy of it passed with imesh report --reference "
        "FILE)."
    ]
    assert not any(n.startswith("Reference rows") for n in t.notes)
    tex = t.to_latex()
    assert r"\midrule" in tex and "TripoSR" not in tex


def test_packaged_reference_without_numbers_names_its_file() -> None:
    tables = paper_tables([_run("r1")])
    assert [t.key for t in tables] == ["gso_orbit"]  # omni3d tables: no rows, no numbers
    (t,) = tables
    assert all(not r.is_reference for r in t.rows)
    (note,) = [n for n in t.notes if "not on file" in n]
    assert f"into {DEFAULT_REFERENCE} (or a copy" in note


# --------------------------------------------------------------------------- row labels


@pytest.mark.parametrize(
    ("run_id", "predictor", "variant", "config", "label"),
    [
        ("visual-hull", "visual-hull", None, None, "visual-hull (ours)"),
        ("mesh-dir", "mesh-dir", None, None, "mesh-dir (ours)"),
        ("triposr-meshes", "mesh-dir", None, None, "mesh-dir (ours, triposr-meshes)"),
        ("instantmesh", "instantmesh", None, None, "instantmesh (ours)"),
        (
            "instant-mesh-large",
            "instantmesh",
            "instant-mesh-large",
            None,
            "instantmesh/instant-mesh-large (ours)",
        ),
        (
            "nightly-3",
            "instantmesh",
            "instant-mesh-large",
            None,
            "instantmesh/instant-mesh-large (ours, nightly-3)",
        ),
        (
            "instantmesh",
            "instantmesh",
            "instant-mesh-large",
            {**NO_LPIPS, "predict": {"gso": {"views": "ground-truth"}}},
            "instantmesh/instant-mesh-large, GT views (upper bound) (ours)",
        ),
    ],
)
def test_row_labels_say_each_thing_once(
    run_id: str, predictor: str, variant: str | None, config: dict[str, Any] | None, label: str
) -> None:
    (t,) = paper_tables([_run(run_id, predictor, variant=variant, config=config)], {"tables": []})
    assert [r.label for r in t.rows] == [label]


# --------------------------------------------------------------------------- aligned columns


def test_aligned_columns_only_where_a_run_has_them() -> None:
    plain, searched = _run("plain"), _run("searched", aligned=True)
    (t,) = paper_tables([plain], {"tables": []})
    assert t.metrics == ("psnr", "ssim", "lpips", "chamfer", "fscore")
    (t,) = paper_tables([plain, searched], _reference({"psnr": 18.0}))
    assert t.metrics[-2:] == ("chamfer_aligned", "fscore_aligned")
    assert "| CD aligned↓ | FS aligned↑ |" in t.to_markdown()
    rows = {r.label: r for r in t.rows}
    assert rows["instantmesh (ours, searched)"].cell("chamfer_aligned") == "0.150"
    assert rows["instantmesh (ours, plain)"].cell("chamfer_aligned") == "n/a"
    assert "instantmesh (ours, plain): CD aligned not computed in this run." in t.all_notes()
    assert rows["TripoSR"].cell("chamfer_aligned") == "–"


def test_compare_checks_aligned_metrics_only_when_a_run_has_them() -> None:
    plain = {m.metric for m in compare_runs(_run("b"), _run("n")).metrics}
    assert plain == {"psnr", "ssim", "lpips", "chamfer", "fscore"}
    res = compare_runs(_run("b", aligned=True), _run("n", aligned=True))
    aligned = {m.metric: m for m in res.metrics if m.metric.endswith("_aligned")}
    assert set(aligned) == {"chamfer_aligned", "fscore_aligned"}
    assert aligned["chamfer_aligned"].view_set == "3d" and aligned["chamfer_aligned"].n_pairs == 2
    assert aligned["chamfer_aligned"].verdict == "no_change"
    half = compare_runs(_run("b", aligned=True), _run("n"))
    (missing,) = [m for m in half.metrics if m.metric == "chamfer_aligned"]
    assert missing.verdict == "no_data" and missing.n_unpaired == 2


# --------------------------------------------------------------------------- forced render settings


def test_forced_render_settings_are_a_row_note_in_every_format() -> None:
    note = (
        "forced render settings (--force-render-settings): --backend blender (evaluation set: cpu)"
    )
    settings = {"gso": {"forced": ["backend"], "note": note}, "omni3d": {"forced": []}}
    forced = _run("forced", config={**NO_LPIPS, "render_settings": settings})
    (t,) = paper_tables([forced, _run("plain")], {"tables": []})
    expected = (
        f"instantmesh (ours, forced): {note}; its image metrics are not comparable with runs "
        "rendered like the evaluation set."
    )
    assert expected in t.all_notes()
    assert sum("rendered like the evaluation set" in n for n in t.all_notes()) == 1  # not plain
    assert expected in t.to_markdown()
    assert html.escape(expected) in render_html_report([forced], tables=[t])


# --------------------------------------------------------------------------- LPIPS hint


def test_lpips_install_hint_names_file_directory_and_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    home = tmp_path / "torch home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    for net, name in (("vgg", "vgg16-397923af.pth"), ("alex-random", "alexnet-owt-7be5be79.pth")):
        path = lpips_backbone_path(net)
        assert path.name == name and path.parent == home / "hub" / "checkpoints"
        hint = lpips_install_hint(net)
        directory = shlex.quote(str(path.parent))
        assert f"torchvision's {name} in {path.parent} " in hint
        assert hint.endswith(f"mkdir -p {directory} && cp /path/to/{name} {directory}/")
        assert "'" in directory  # a directory with a space is quoted for the shell
        assert "http" not in hint  # a copy from a local file, no download
    with pytest.raises(LpipsUnavailable) as err:
        load_lpips("vgg", device="cpu")
    assert lpips_install_hint("vgg") in str(err.value)


def test_lpips_na_notes_say_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = _run("r1", config={"evaluate": {"gso": {"lpips_net": "alex"}}})
    off, usable = _run("r2"), _run("r3", lpips=True)
    random_trunk = RunRecords.from_rows(
        RunInfo.new("r4", "oracle", lpips_backbone="alex-random", lpips_available=True)
    )
    assert lpips_hints([off, usable, random_trunk]) == []
    hints = lpips_hints([missing, off, usable, _run("r5", config={})])
    assert hints[:2] == [lpips_install_hint("alex"), lpips_install_hint("vgg")]  # r5: default
    assert hints[2].startswith("After installing, run imesh evaluate on the run again")

    (t,) = paper_tables([missing, off, usable], {"tables": []})
    notes = t.all_notes()
    assert (
        "instantmesh (ours, r1): LPIPS unavailable in this run (backbone weights absent; see "
        "the LPIPS note)." in notes
    )
    assert "instantmesh (ours, r2): LPIPS not computed in this run (--lpips-net none)." in notes
    assert lpips_install_hint("alex") in notes and lpips_install_hint("vgg") not in notes
    assert [r.cell("lpips") for r in t.rows] == ["n/a", "n/a", "0.100"]
    assert lpips_install_hint("alex") in t.to_markdown()
    page = render_html_report([missing, usable], tables=[t])
    assert page.count(html.escape(lpips_install_hint("alex"))) == 2  # runs section + table note


def test_summary_and_report_print_the_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.report import ReportConfig, run_report
    from pipelines.summary import print_lpips_hints

    missing = _run("r1", config={"evaluate": {"gso": {"lpips_net": "vgg"}}})
    buf = io.StringIO()
    lines = print_lpips_hints([missing, _run("r2")], Console(file=buf, width=80))
    assert lines == lpips_hints([missing])
    assert f"LPIPS n/a: {lpips_install_hint('vgg')}" in buf.getvalue()  # never wrapped
    assert print_lpips_hints([_run("r2")], Console(file=io.StringIO())) == []

    write_run_records(str(tmp_path / "r1"), missing)
    out = tmp_path / "report"
    assert run_report(ReportConfig(runs=[str(tmp_path / "r1")], out=str(out), formats=("md",))) == 0
    printed = capsys.readouterr().out
    assert f"LPIPS n/a: {lpips_install_hint('vgg')}" in printed
    assert lpips_install_hint("vgg") in (out / "tables.md").read_text()
