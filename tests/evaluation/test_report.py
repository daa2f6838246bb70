"""The evaluation report's overlays: what each panel's title says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import medseg.export.overlay as overlay
from medseg.evaluation import EvaluationConfig, evaluate
from medseg.evaluation.report import overlay_pngs
from medseg.io import write_volume
from tests.conftest import make_oblique_volume


def test_a_panel_title_says_its_dice_is_a_mean_over_classes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two classes: the title's Dice is the mean of the two per-class values the table shows
    and says so ("Dice 0.040" matched no row of the table); one class: that class's Dice."""
    base = make_oblique_volume()
    ref = np.zeros(base.shape, dtype=np.uint8)
    ref[3:9, 5:15, 4:12] = 1
    ref[5:7, 8:12, 6:9] = 3
    pred = np.roll(ref, 2, axis=2)
    for name, (p, r) in {"two": (pred, ref), "one": ((pred == 1) * 1, (ref == 1) * 1)}.items():
        write_volume(base.with_array(p.astype(np.uint8)), tmp_path / "pred" / f"{name}.nii.gz")
        write_volume(base.with_array(r.astype(np.uint8)), tmp_path / "ref" / f"{name}.nii.gz")
    result = evaluate(tmp_path / "pred", tmp_path / "ref", EvaluationConfig(metrics=("dice",), workers=1))
    dice = {
        c.name: {lab: m["dice"] for lab, m in c.per_label.items() if m.counts.tp > 0} for c in result.cases
    }
    titles: dict[str, list[str]] = {}

    def capture(reference, panels, *args, title="", **kwargs):  # type: ignore[no-untyped-def]
        titles[title] = list(panels)
        return b""

    monkeypatch.setattr(overlay, "render_comparison_png", capture)
    overlay_pngs({"unet": result})
    assert len(dice["two"]) == 2 and len(dice["one"]) == 1
    assert titles["two"] == [f"prediction (mean Dice {np.mean(list(dice['two'].values())):.3f} of 2 classes)"]
    assert titles["one"] == [f"prediction (Dice {dice['one'][1]:.3f})"]
