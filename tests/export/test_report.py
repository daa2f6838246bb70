"""HTML report: self-contained, no identifiers, renders in headless Chromium."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medseg.errors import GeometryError, OutputExistsError
from medseg.export.report import build_report_html, write_report
from medseg.volume import Volume
from tests.export.conftest import ZONES, prostate_zones, synthetic_image

CANVAS_BG = np.array([16, 19, 26])  # #10131a


def _case() -> tuple[Volume, Volume]:
    image = synthetic_image(shape=(10, 48, 40), spacing=(3.0, 0.5, 0.5))
    image.meta.update(
        {
            "modality": "MR",
            "patient_name": "DOE^JANE",
            "patient_id": "PX-0042",
            "source": "ProstateX-0042_t2.nii.gz",
        }
    )
    return image, prostate_zones(image)


def test_report_is_self_contained_and_complete() -> None:
    image, label = _case()
    model = {"name": "zones <b>v2</b>", "folds": [0, 1], "patch": {"z": 16}}
    text = build_report_html(image, label, ZONES, model_info=model, case_id="case 7", mesh_max_faces=500)
    # Offline: no external resources at all.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "http://" not in text and "https://" not in text and "@import" not in text
    # No patient identifiers or file names, whatever the image metadata carries (looked for
    # outside the inline PNG, whose base64 text can hold any short string by chance).
    readable = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    for secret in ("DOE", "JANE", "PX-0042", "ProstateX-0042"):
        assert secret not in readable
    assert "<td>MR</td>" in text  # modality is allowed
    # Model info is escaped, not injected.
    assert "zones &lt;b&gt;v2&lt;/b&gt;" in text and "[0, 1]" in text
    # The overlay is an inline PNG.
    data = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert data and base64.b64decode(data.group(1))[:4] == b"\x89PNG"
    # Volumes table rows for all four zones with their mL values.
    for value, name in ZONES.items():
        ml = (label.array == value).sum() * label.geometry.voxel_volume_mm3 / 1000
        assert re.search(
            rf"<td class='num'>{value}</td><td>.*?{name}</td><td class='num'>{ml:.2f}</td>", text
        )
    # Mesh data: one decimated mesh per label, in mm around the centre.
    payload = json.loads(
        re.search(r'<script type="application/json" id="mesh-data">(.*?)</script>', text, re.S).group(1)
    )
    assert [m["name"] for m in payload] == ["PZ", "TZ", "DPU", "AFS"]
    for mesh in payload:
        assert 0 < len(mesh["f"]) // 3 <= 500 and max(mesh["f"]) < len(mesh["v"]) // 3
        assert np.abs(mesh["v"]).max() < 40  # centred, within the 24 x 20 x 30 mm field of view


def test_write_report_refuses_existing_and_checks_grids(tmp_path: Path) -> None:
    image, label = _case()
    target = tmp_path / "report.html"
    target.write_text("old")
    with pytest.raises(OutputExistsError):
        write_report(target, image, label, ZONES)
    assert target.read_text() == "old"
    moved = Volume(label.array, label.spacing, np.add(label.origin, (0, 0, 3.0)), label.direction)
    with pytest.raises(GeometryError):
        write_report(tmp_path / "r2.html", image, moved, ZONES)
    assert not (tmp_path / "r2.html").exists()


def test_empty_label_gives_a_report_without_3d_view(tmp_path: Path) -> None:
    image, _ = _case()
    path = write_report(tmp_path / "r.html", image, image.with_array(np.zeros(image.shape, np.uint8)), ZONES)
    text = path.read_text()
    assert "no surface to show" in text and "mesh-canvas" not in text.split("<main>")[1].split("</main>")[0]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no headless Chromium on this machine (Debian: apt-get install chromium)")
    raise AssertionError  # unreachable


def _run_chromium(binary: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
    ]
    return subprocess.run([binary, *flags, *args], capture_output=True, timeout=120, check=False)


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    binary = _chromium()
    image, label = _case()
    report = write_report(tmp_path / "report.html", image, label, ZONES, model_info={"name": "demo"})
    url = report.resolve().as_uri()

    dom = _run_chromium(binary, tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr.decode(errors="replace")[-2000:]
    drawn = re.search(rb'data-triangles="(\d+)"', dom.stdout)
    assert drawn and int(drawn.group(1)) > 100, "the 3D view script did not draw"

    shot = tmp_path / "shot.png"
    result = _run_chromium(binary, tmp_path, "--window-size=1280,3400", f"--screenshot={shot}", url)
    assert result.returncode == 0 and shot.is_file(), result.stderr.decode(errors="replace")[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.std() > 20, "blank screenshot"
    # The canvas (dark background) must contain drawn, coloured triangles.
    dark = (np.abs(pixels - CANVAS_BG).max(axis=-1) <= 2).nonzero()
    assert dark[0].size > 10_000, "3D view not visible in the screenshot"
    box = pixels[dark[0].min() : dark[0].max() + 1, dark[1].min() : dark[1].max() + 1]
    drawn_pixels = (np.abs(box - CANVAS_BG).max(axis=-1) > 30).sum()
    assert drawn_pixels > 2_000, "the canvas is empty"


def test_the_3d_preview_of_a_fragmented_label_does_not_warn(caplog: pytest.LogCaptureFixture) -> None:
    """The report's 3D view is for display: a label of scattered single voxels (an untrained
    model's noise) gives no mesh-volume warnings, which only concern written meshes."""
    image, label = _case()
    rng = np.random.default_rng(3)
    noisy = label.array.copy()
    noisy[(rng.random(noisy.shape) < 0.01) & (noisy == 0)] = 4
    with caplog.at_level("WARNING"):
        html = build_report_html(image, label.with_array(noisy), ZONES)
    assert "mesh volume" not in caplog.text
    assert html.count('"name"') >= 4  # every label, the noise included, is in the 3D view
