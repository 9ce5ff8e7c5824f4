from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from evaluation.html_report import write_html_report
from evaluation.run_records import RunInfo, RunRecords, write_run_records
from evaluation.tables import paper_tables

CHROMIUM = "/usr/bin/chromium"
XSS = "<script>alert('x')</script> & friends"


def _png(path: Path, color: tuple[int, int, int], size: int = 96, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 4), dtype=np.uint8)
    img[..., :3] = color
    img[..., 3] = 255
    img[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4, :3] = rng.integers(
        0, 255, size=(size // 2, size // 2, 3), dtype=np.uint8
    )
    img[:4, :, 3] = 0  # a transparent band: composited on white in thumbnails
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img, "RGBA").save(path)
    return str(path)


def synthetic_run(root: Path, run_id: str = "run-html") -> RunRecords:
    """GSO run: 6 ok objects (obj3 has the lowest PSNR, obj5 the highest Chamfer) and one
    failed object whose error contains markup; PNG renders for every view (one missing)."""
    info = RunInfo.new(
        run_id,
        "instantmesh",
        variant="mesh-base",
        datasets=["gso"],
        lpips_backbone="vgg",
        lpips_available=True,
    )
    image: list[dict[str, Any]] = []
    geometry: list[dict[str, Any]] = []
    objects: list[dict[str, Any]] = []
    psnr = {0: 24.0, 1: 22.0, 2: 26.0, 3: 12.5, 4: 21.0, 5: 23.0}
    for i, base in psnr.items():
        uid = f"obj{i}"
        objects.append({"dataset": "gso", "uid": uid, "status": "ok"})
        for v in range(3):
            gt = _png(root / "gt" / uid / f"{v:03d}.png", (200, 40 * v, 30 * i), seed=i * 10 + v)
            pred = _png(root / "pred" / uid / f"{v:03d}.png", (30 * i, 200, 40 * v), seed=i + v)
            if i == 4 and v == 0:
                pred = str(root / "pred" / uid / "missing.png")
            image.append(
                {
                    "dataset": "gso",
                    "uid": uid,
                    "view_set": "orbit",
                    "view": v,
                    "psnr": base + v,
                    "ssim": 0.8 + 0.02 * i,
                    "lpips": 0.3 - 0.02 * i,
                    "pred_uri": pred,
                    "gt_uri": gt,
                }
            )
        geometry.append(
            {
                "dataset": "gso",
                "uid": uid,
                "chamfer": 0.5 if i == 5 else 0.05 * (i + 1),
                "fscore": 0.9 - 0.05 * i,
                "precision": 0.8,
                "recall": 0.8,
                "fscore_threshold": 0.2,
            }
        )
    objects.append(
        {
            "dataset": "gso",
            "uid": "bad<uid>",
            "status": "failed",
            "error_type": "ValueError",
            "error": XSS,
        }
    )
    return RunRecords.from_rows(info, image, geometry, objects)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("html")
    records = synthetic_run(root)
    write_run_records(str(root / "run"), records)
    url = write_html_report([records], str(root / "out"), worst_k=2)
    return {"root": root, "url": url, "html": Path(url).read_text(), "records": records}


def _section(html_text: str, start: str, end: str) -> str:
    return html_text[html_text.index(start) : html_text.index(end)]


def test_report_is_self_contained_and_escaped(report: dict[str, Any]) -> None:
    html_text = report["html"]
    assert report["url"].endswith("/out/report.html")
    assert html_text.startswith("<!DOCTYPE html>")
    assert "<style>" in html_text and "<svg" in html_text
    # no scripts, no external resources
    assert "<script" not in html_text.lower()
    assert "http://" not in html_text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html_text
    # untrusted strings are escaped
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; friends" in html_text
    assert "bad&lt;uid&gt;" in html_text and "bad<uid>" not in html_text


def test_failures_listed(report: dict[str, Any]) -> None:
    failures = report["html"][report["html"].index('<section id="failures">') :]
    assert "1 failed of 7 objects" in failures
    assert "bad&lt;uid&gt;" in failures and "ValueError" in failures


def test_worst_objects_and_images(report: dict[str, Any]) -> None:
    html_text = report["html"]
    objects = _section(html_text, '<section id="objects">', '<section id="failures">')
    worst_psnr = _section(objects, "Lowest PSNR (worst 2)", "Highest Chamfer Distance")
    assert "obj3" in worst_psnr and "obj4" in worst_psnr  # PSNR 13.5 and 22.0 means
    assert "obj2" not in worst_psnr
    worst_cd = _section(objects, "Highest Chamfer Distance (worst 2)", "Random sample")
    assert "obj5" in worst_cd and "obj4" in worst_cd  # chamfer 0.5 and 0.25
    assert "obj3" not in worst_cd  # 0.2
    assert objects.count("data:image/jpeg;base64,") >= 8
    assert "image file not found" in objects  # the missing prediction is a placeholder
    # thumbnails are at most 160 px
    import base64
    import io

    first = objects.index("data:image/jpeg;base64,") + len("data:image/jpeg;base64,")
    blob = objects[first : objects.index('"', first)]
    with Image.open(io.BytesIO(base64.b64decode(blob))) as im:
        assert max(im.size) <= 160


def test_summary_numbers_equal_the_markdown(report: dict[str, Any]) -> None:
    html_text = report["html"]
    summary = _section(html_text, '<section id="summary">', '<section id="distributions">')
    tables = paper_tables([report["records"]])
    assert tables
    import html as html_mod

    for t in tables:
        md = t.to_markdown()
        for r in t.rows:
            for m in t.metrics:
                cell = r.cell(m)
                assert f"| {cell} " in md or f"| {cell} |" in md
                assert html_mod.escape(cell) in summary
            assert html_mod.escape(r.objects_cell()) in summary
    ours = next(r for r in tables[0].rows if not r.is_reference)
    assert ours.objects_cell() == "6/7 ⚠" and "6/7 ⚠" in summary


def test_writes_to_an_explicit_html_name_and_memory_fs(report: dict[str, Any]) -> None:
    url = write_html_report(
        [report["records"]], "memory://html-test/x/custom.html", worst_k=0, sample_k=0
    )
    assert url == "memory://html-test/x/custom.html"
    import fsspec

    with fsspec.open(url, "rb") as f:
        text = f.read().decode()
    assert "Lowest PSNR" not in text and "<svg" in text


@pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) or shutil.which("chromium")), reason="chromium not installed"
)
def test_renders_in_headless_chromium(report: dict[str, Any], tmp_path: Path) -> None:
    exe = CHROMIUM if os.path.exists(CHROMIUM) else str(shutil.which("chromium"))
    shot = tmp_path / "shot.png"
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        Path(report["url"]).resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    assert shot.is_file()
    with Image.open(shot) as im:
        assert im.size == (1200, 2000)
        arr = np.asarray(im.convert("RGB"), dtype=np.float64)
    assert arr.std() > 10.0  # not blank
    # the page has drawn content in its upper and lower halves (tables, histograms, images)
    assert arr[:1000].std() > 5.0 and arr[1000:].std() > 5.0
