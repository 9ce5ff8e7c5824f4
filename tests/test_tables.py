from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from evaluation.run_records import RunInfo, RunRecords, write_run_records
from evaluation.tables import (
    DEFAULT_REFERENCE,
    ReferenceFileError,
    load_reference,
    paper_tables,
    tables_to_latex,
)

REFERENCE: dict[str, Any] = {
    "source": {"arxiv": "2404.07191", "version": "v9", "verified": True},
    "tables": [
        {
            "key": "gso_orbit",
            "title": "Table 2: GSO, orbit views",
            "paper_table": 2,
            "dataset": "gso",
            "view_set": "orbit",
            "metrics": ["psnr", "ssim", "lpips", "chamfer", "fscore"],
            "rows": [
                {
                    "method": "TripoSR",
                    "psnr": 20.0,
                    "ssim": 0.9,
                    "lpips": 0.2,
                    "chamfer": None,
                    "fscore": None,
                },
                {
                    "method": "LGM",
                    "psnr": None,
                    "ssim": None,
                    "lpips": None,
                    "chamfer": None,
                    "fscore": None,
                },
            ],
        },
        {
            "key": "omni3d_benchmark",
            "title": "Table 4: Omni3D, benchmark views",
            "paper_table": 4,
            "dataset": "omni3d",
            "view_set": "benchmark",
            "metrics": ["psnr", "ssim", "lpips"],
            "rows": [{"method": "CRM", "psnr": None, "ssim": None, "lpips": None}],
        },
    ],
}


def _view(
    uid: str,
    v: int,
    psnr: float,
    ssim: float,
    lpips: float | None,
    ds: str = "gso",
    vs: str = "orbit",
) -> dict[str, Any]:
    return {
        "dataset": ds,
        "uid": uid,
        "view_set": vs,
        "view": v,
        "psnr": psnr,
        "ssim": ssim,
        "lpips": lpips,
    }


def _geo(uid: str, chamfer: float, fscore: float, ds: str = "gso") -> dict[str, Any]:
    return {
        "dataset": ds,
        "uid": uid,
        "chamfer": chamfer,
        "fscore": fscore,
        "precision": fscore,
        "recall": fscore,
        "fscore_threshold": 0.2,
    }


def hand_run(run_id: str = "r1", lpips: bool = True) -> RunRecords:
    """gso: object a (2 views), b (3 views), c failed. Hand-computed table values:

    PSNR  a = (20 + 22) / 2 = 21, b = (24 + 24 + 27) / 3 = 25 -> mean 23.00
          (the pooled mean over the 5 views would be 23.40: not what we report)
    SSIM  a = 0.85, b = 0.90 -> 0.875;  LPIPS a = 0.15, b = 0.10 -> 0.125
    CD    (0.1 + 0.2) / 2 = 0.150;       FS (0.8 + 0.6) / 2 = 0.700;  objects 2/3
    """

    def lp(x: float) -> float | None:
        return x if lpips else None

    info = RunInfo.new(
        run_id,
        "instantmesh",
        variant="mesh-large",
        datasets=["gso"],
        lpips_backbone="vgg" if lpips else None,
        lpips_available=lpips,
    )
    image = [
        _view("a", 0, 20.0, 0.8, lp(0.1)),
        _view("a", 1, 22.0, 0.9, lp(0.2)),
        _view("b", 0, 24.0, 0.9, lp(0.1)),
        _view("b", 1, 24.0, 0.9, lp(0.1)),
        _view("b", 2, 27.0, 0.9, lp(0.1)),
    ]
    objects = [
        {"dataset": "gso", "uid": "a", "status": "ok"},
        {"dataset": "gso", "uid": "b", "status": "ok"},
        {
            "dataset": "gso",
            "uid": "c",
            "status": "failed",
            "error_type": "RuntimeError",
            "error": "boom",
        },
    ]
    return RunRecords.from_rows(info, image, [_geo("a", 0.1, 0.8), _geo("b", 0.2, 0.6)], objects)


def _row(table: Any, label_start: str) -> Any:
    rows = [r for r in table.rows if r.label.startswith(label_start)]
    assert len(rows) == 1, [r.label for r in table.rows]
    return rows[0]


def test_aggregation_matches_hand_computed_values() -> None:
    tables = paper_tables([hand_run()], REFERENCE)
    assert [t.key for t in tables] == ["gso_orbit"]  # omni3d benchmark: no data, no numbers
    t = tables[0]
    ours = _row(t, "instantmesh/mesh-large (ours, r1)")
    assert ours.values["psnr"] == pytest.approx(23.0)
    assert ours.values["ssim"] == pytest.approx(0.875)
    assert ours.values["lpips"] == pytest.approx(0.125)
    assert ours.values["chamfer"] == pytest.approx(0.15)
    assert ours.values["fscore"] == pytest.approx(0.7)
    assert (ours.n_ok, ours.n_total, ours.n_failed, ours.n_incomplete) == (2, 3, 1, 0)
    assert ours.has_failures

    md = t.to_markdown()
    assert "| PSNR↑ | SSIM↑ | LPIPS↓ | CD↓ | FS↑ |" in md
    assert (
        "| instantmesh/mesh-large (ours, r1) | 23.00 | 0.875 | 0.125 | 0.150 | 0.700 | 2/3 ⚠ |"
        in md
    )
    assert "1 failed of 3 objects; means are over the 2 counted object(s) only" in md
    # reference nulls are rendered as an en dash, never as a number
    assert "| TripoSR | 20.00 | 0.900 | 0.200 | – | – | – |" in md
    # a reference row without any number is left out
    assert "LGM" not in md and [r.label for r in t.rows if r.is_reference] == ["TripoSR"]
    assert "arXiv 2404.07191 v9, Table 2 (verified)" in md


def test_latex_bolds_best_per_column_with_arrows_and_dagger() -> None:
    t = paper_tables([hand_run()], REFERENCE)[0]
    tex = t.to_latex()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"PSNR$\uparrow$" in tex and r"LPIPS$\downarrow$" in tex and r"CD$\downarrow$" in tex
    assert r"TripoSR & 20.00 & \textbf{0.900} & 0.200 & -- & -- & -- \\" in tex
    assert (
        r"instantmesh/mesh-large (ours, r1)$^\dagger$ & \textbf{23.00} & 0.875 & "
        r"\textbf{0.125} & 0.150 & 0.700 & 2/3 \\" in tex
    )  # CD/FS: only one row has a value -> nothing to bold
    assert "LGM" not in tex
    assert "$^\\dagger$ instantmesh/mesh-large (ours, r1): 1 failed" in tex
    full = tables_to_latex([t])
    assert full.startswith("% Generated by imesh report")


def test_ties_all_bold_and_latex_escaping() -> None:
    a = hand_run("run_a&1")
    b = hand_run("run%b")
    t = paper_tables([a, b], REFERENCE)[0]
    tex = t.to_latex()
    assert r"(ours, run\_a\&1)" in tex and r"(ours, run\%b)" in tex
    assert tex.count(r"\textbf{23.00}") == 2  # equal values: both bold
    assert tex.count(r"\textbf{0.150}") == 2


def test_lpips_unavailable_is_na_not_a_number() -> None:
    t = paper_tables([hand_run(lpips=False)], REFERENCE)[0]
    ours = _row(t, "instantmesh")
    assert "lpips" in ours.unavailable and ours.values["lpips"] is None
    md = t.to_markdown()
    assert "| 23.00 | 0.875 | n/a | 0.150 |" in md
    assert "LPIPS unavailable in this run" in md


def test_incomplete_objects_are_counted_not_hidden() -> None:
    rec = hand_run()
    # object b keeps its image rows but loses its geometry row -> incomplete for Table 2
    geo = [r for r in rec.geometry_metrics.to_pylist() if r["uid"] == "a"]
    rec2 = RunRecords.from_rows(
        rec.info, rec.image_metrics.to_pylist(), geo, rec.objects.to_pylist()
    )
    ours = _row(paper_tables([rec2], REFERENCE)[0], "instantmesh")
    assert (ours.n_ok, ours.n_total, ours.n_failed, ours.n_incomplete) == (1, 3, 1, 1)
    assert ours.values["psnr"] == pytest.approx(21.0)  # all columns over the same object (a)
    assert ours.values["chamfer"] == pytest.approx(0.1)
    assert "1 incomplete" in ours.notes[0]


def test_all_failed_run_still_shows_a_row() -> None:
    info = RunInfo.new("dead", "lgm", datasets=["gso"])
    objects = [{"dataset": "gso", "uid": u, "status": "failed", "error": "oom"} for u in "xyz"]
    rec = RunRecords.from_rows(info, [], [], objects)
    t = paper_tables([rec], REFERENCE)[0]
    row = _row(t, "lgm (ours, dead)")
    assert (row.n_ok, row.n_total) == (0, 3)
    # no object to average: PSNR/SSIM "–"; LPIPS unavailable and no geometry: "n/a"
    assert "| lgm (ours, dead) | – | – | n/a | n/a | n/a | 0/3 ⚠ |" in t.to_markdown()


def test_other_datasets_get_their_own_table_and_benchmark_views_table4() -> None:
    info = RunInfo.new(
        "r2",
        "instantmesh",
        datasets=["omni3d", "synthetic"],
        lpips_backbone="vgg",
        lpips_available=True,
    )
    image = [
        _view("o1", 0, 18.0, 0.7, 0.3, ds="omni3d", vs="benchmark"),
        _view("o1", 1, 20.0, 0.9, 0.1, ds="omni3d", vs="benchmark"),
        _view("o1", 0, 30.0, 0.95, 0.05, ds="omni3d", vs="orbit"),
        _view("s1", 0, 25.0, 0.5, 0.5, ds="synthetic", vs="orbit"),
    ]
    objects = [
        {"dataset": d, "uid": u, "status": "ok"} for d, u in (("omni3d", "o1"), ("synthetic", "s1"))
    ]
    rec = RunRecords.from_rows(info, image, [], objects)
    tables = {t.key: t for t in paper_tables([rec], REFERENCE)}
    # gso_orbit stays: its reference rows hold numbers (ours has no gso rows there)
    assert set(tables) == {"gso_orbit", "omni3d_benchmark", "omni3d_orbit", "synthetic_orbit"}
    assert all(r.is_reference for r in tables["gso_orbit"].rows)
    bench = _row(tables["omni3d_benchmark"], "instantmesh")
    assert bench.values == pytest.approx({"psnr": 19.0, "ssim": 0.8, "lpips": 0.2})
    assert "(no published reference)" in tables["synthetic_orbit"].title
    syn = tables["synthetic_orbit"].to_markdown()
    assert "| instantmesh (ours, r2) | 25.00 | 0.500 | 0.500 | n/a | n/a | 1/1 |" in syn
    assert "no geometry metrics in this run" in syn


def test_packaged_reference_loads_and_has_no_invented_numbers() -> None:
    ref = load_reference(None)
    assert ref.path == str(DEFAULT_REFERENCE)
    assert [t.paper_table for t in ref.tables] == [2, 3, 4]
    assert ref.source["arxiv"] == "2404.07191"
    methods = [r.method for r in ref.tables[0].rows]
    assert methods[:3] == ["TripoSR", "LGM", "CRM"] and "InstantMesh (Mesh)" in methods
    if not ref.source.get("verified"):
        assert all(v is None for t in ref.tables for r in t.rows for v in r.values.values())


def test_reference_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ReferenceFileError, match="not found"):
        load_reference(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("tables:\n  - {key: t, dataset: gso, view_set: orbit, metrics: [psnr, iou]}\n")
    with pytest.raises(ReferenceFileError, match=r"unknown metric\(s\) \['iou'\]"):
        load_reference(str(bad))
    bad.write_text(
        "tables:\n  - {key: t, dataset: gso, view_set: orbit, metrics: [psnr],"
        " rows: [{method: X, psnr: high}]}\n"
    )
    with pytest.raises(ReferenceFileError, match="expected a number or null"):
        load_reference(str(bad))
    assert issubclass(ReferenceFileError, ValueError)


def test_run_report_writes_all_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from pipelines.report import ReportConfig, run_report

    run_uri = str(tmp_path / "runs" / "r1")
    write_run_records(run_uri, hand_run())
    ref = tmp_path / "ref.yaml"
    ref.write_text(yaml.safe_dump(REFERENCE))
    out = tmp_path / "report"
    rc = run_report(ReportConfig(runs=[run_uri], out=str(out), reference=str(ref), worst_k=2))
    assert rc == 0
    md = (out / "tables.md").read_text()
    assert (
        "| instantmesh/mesh-large (ours, r1) | 23.00 | 0.875 | 0.125 | 0.150 | 0.700 | 2/3 ⚠ |"
        in md
    )
    assert r"\textbf{23.00}" in (out / "tables.tex").read_text()
    assert "23.00" in (out / "report.html").read_text()
    assert (out / "report_config.yaml").exists()
    assert "23.00" in capsys.readouterr().out


def test_run_report_missing_run_is_a_value_error(tmp_path: Path) -> None:
    from evaluation.run_records import RunRecordError
    from pipelines.report import ReportConfig, run_report

    with pytest.raises(RunRecordError, match="run directory not found"):
        run_report(ReportConfig(runs=[str(tmp_path / "nope")], out=str(tmp_path / "o")))


def test_all_failed_dataset_without_reference_gets_a_table() -> None:
    info = RunInfo.new("dead2", "lgm", datasets=["synthetic"])
    objects = [{"dataset": "synthetic", "uid": "x", "status": "failed", "error": "oom"}]
    rec = RunRecords.from_rows(info, [], [], objects)
    (t,) = paper_tables([rec], {"tables": []})
    assert t.key == "synthetic_orbit"
    assert "| lgm (ours, dead2) | – | – | n/a | n/a | n/a | 0/1 ⚠ |" in t.to_markdown()
