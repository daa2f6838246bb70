"""One self-contained HTML report per case: inputs, model, volumes, overlays and a 3D view.

Everything is inline (CSS, PNG overlays as base64 data URIs, meshes as JSON, a small
canvas renderer in vanilla JavaScript), so the file opens offline, can be mailed or
archived, and makes no network request. The report never shows patient identifiers:
the inputs section lists only grid facts (shape, spacing, orientation) and, when the
image carries it, the modality; the case title is whatever ``case_id`` the caller gives.

The 3D view is hand-written because no offline, dependency-free mesh viewer ships with
the Python stack (three.js would need a CDN or a vendored copy): it draws the decimated
triangles with painter's-algorithm depth sorting and Lambert shading, and rotates with
mouse or touch drag. It starts near the anterior view (patient's right on the left).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import medseg
from medseg.export.codes import Segment, segments_for_label
from medseg.export.mesh import MeshOptions, label_mesh
from medseg.export.overlay import render_overlay_png
from medseg.export.volumes import LabelStats, label_statistics
from medseg.io.atomic import check_writable, write_text_atomic
from medseg.volume import Volume

__all__ = ["build_report_html", "write_report"]

log = logging.getLogger(__name__)

# Faces per label in the embedded 3D view: enough for a recognisable organ, small file.
PREVIEW_MAX_FACES = 3000
# Image metadata that may appear in the report (never names, IDs, dates or file names).
_SAFE_META = ("modality",)

# Shared with the cohort index (medseg.export.index), so both pages look alike.
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:16px 28px}
header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#b8c0cc;font-size:13px}
main{padding:12px 28px 40px;max-width:1250px}
section{background:#fff;border-radius:8px;padding:14px 20px;margin:16px 0;box-shadow:0 1px 3px rgba(0,0,0,.08)}
h2{font-size:17px;margin:0 0 10px}
table{border-collapse:collapse;font-size:13px}
th,td{padding:4px 10px;border-bottom:1px solid #e3e6eb;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin-right:6px;vertical-align:-1px}
img.overlay{max-width:100%;height:auto;border:1px solid #e3e6eb}
#mesh-canvas{width:100%;max-width:900px;height:520px;background:#10131a;border-radius:6px;cursor:grab;touch-action:none}
.note{color:#5b6472;font-size:12px}
"""

# Draws window.MESHES = [{name, color:[r,g,b], v:[x,y,z,...] (mm, centred), f:[i,j,k,...]}].
_VIEWER_JS = r"""
(function () {
  var meshes = JSON.parse(document.getElementById('mesh-data').textContent);
  var canvas = document.getElementById('mesh-canvas');
  if (!canvas || !canvas.getContext || meshes.length === 0) { return; }
  var ctx = canvas.getContext('2d');
  var yaw = 0.5, pitch = 0.25, zoom = 1.0;
  // Nested structures (prostate zones) hide each other: draw surfaces translucent when there are several.
  var alpha = meshes.length > 1 ? 0.6 : 1.0;
  var radius = 1e-6;
  meshes.forEach(function (m) {
    for (var i = 0; i < m.v.length; i += 3) {
      radius = Math.max(radius, Math.hypot(m.v[i], m.v[i + 1], m.v[i + 2]));
    }
  });
  function draw() {
    var w = canvas.clientWidth, h = canvas.clientHeight, dpr = window.devicePixelRatio || 1;
    canvas.width = w * dpr; canvas.height = h * dpr;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = '#10131a'; ctx.fillRect(0, 0, w, h);
    var scale = zoom * 0.45 * Math.min(w, h) / radius;
    var cy = Math.cos(yaw), sy = Math.sin(yaw), cp = Math.cos(pitch), sp = Math.sin(pitch);
    var tris = [];
    meshes.forEach(function (m) {
      var n = m.v.length / 3, sx = new Float64Array(n), syy = new Float64Array(n), sz = new Float64Array(n);
      for (var i = 0; i < n; i++) {
        // LPS (x left, y posterior, z superior); viewer in front of the patient (anterior).
        var x = m.v[3 * i], y = m.v[3 * i + 1], z = m.v[3 * i + 2];
        var x1 = cy * x - sy * y, y1 = sy * x + cy * y;          // yaw about the body axis
        var z2 = cp * z - sp * y1, y2 = sp * z + cp * y1;         // pitch about the screen x axis
        sx[i] = x1; syy[i] = z2; sz[i] = y2;                      // screen right, up, depth (away)
      }
      for (var t = 0; t < m.f.length; t += 3) {
        var a = m.f[t], b = m.f[t + 1], c = m.f[t + 2];
        var ux = sx[b] - sx[a], uy = syy[b] - syy[a], uz = sz[b] - sz[a];
        var vx = sx[c] - sx[a], vy = syy[c] - syy[a], vz = sz[c] - sz[a];
        var nx = uy * vz - uz * vy, ny = uz * vx - ux * vz, nz = ux * vy - uy * vx;
        var len = Math.hypot(nx, ny, nz) || 1;
        // Screen axes (right, up, away) are left-handed, so outward normals face the viewer when nz > 0.
        var facing = nz / len;
        if (facing <= 0) { continue; }
        var shade = 0.25 + 0.75 * facing;
        tris.push([(sz[a] + sz[b] + sz[c]) / 3, sx[a], syy[a], sx[b], syy[b], sx[c], syy[c],
                   Math.round(m.color[0] * shade), Math.round(m.color[1] * shade), Math.round(m.color[2] * shade)]);
      }
    });
    tris.sort(function (p, q) { return q[0] - p[0]; });           // far (large depth) first
    canvas.setAttribute('data-triangles', String(tris.length));  // lets tests see that it drew
    var ox = w / 2, oy = h / 2;
    for (var k = 0; k < tris.length; k++) {
      var q = tris[k];
      ctx.fillStyle = 'rgba(' + q[7] + ',' + q[8] + ',' + q[9] + ',' + alpha + ')';
      ctx.beginPath();
      ctx.moveTo(ox + scale * q[1], oy - scale * q[2]);
      ctx.lineTo(ox + scale * q[3], oy - scale * q[4]);
      ctx.lineTo(ox + scale * q[5], oy - scale * q[6]);
      ctx.closePath(); ctx.fill();
      if (alpha === 1.0) { ctx.strokeStyle = ctx.fillStyle; ctx.stroke(); }  // hide anti-aliasing seams
    }
  }
  var dragging = false, lastX = 0, lastY = 0;
  canvas.addEventListener('pointerdown', function (e) {
    dragging = true; lastX = e.clientX; lastY = e.clientY; canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener('pointermove', function (e) {
    if (!dragging) { return; }
    yaw += (e.clientX - lastX) * 0.01; pitch += (e.clientY - lastY) * 0.01;
    pitch = Math.max(-1.55, Math.min(1.55, pitch));
    lastX = e.clientX; lastY = e.clientY; draw();
  });
  canvas.addEventListener('pointerup', function () { dragging = false; });
  canvas.addEventListener('wheel', function (e) {
    e.preventDefault(); zoom *= Math.exp(-e.deltaY * 0.001); draw();
  }, {passive: false});
  window.addEventListener('resize', draw);
  draw();
})();
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt_triple(values: Sequence[float] | None, digits: int = 1) -> str:
    if values is None:
        return "–"
    return ", ".join(f"{v:.{digits}f}" for v in values)


def _swatch(rgb: tuple[int, int, int]) -> str:
    return f'<span class="swatch" style="background:rgb({rgb[0]},{rgb[1]},{rgb[2]})"></span>'


def _inputs_table(image: Volume, label: Volume) -> str:
    g = image.geometry
    rows = [
        ("Shape (x × y × z voxels)", " × ".join(str(s) for s in g.shape[::-1])),
        ("Spacing (x, y, z mm)", _fmt_triple(g.spacing_xyz, 4)),
        ("Orientation", f"{g.orientation}" + (f", oblique {g.obliquity:.1f}°" if g.obliquity > 0.05 else "")),
        ("Origin (LPS mm)", _fmt_triple(g.origin, 2)),
        ("Image data type", str(image.dtype)),
        (
            "Label values present",
            ", ".join(str(v) for v in sorted(set(np.unique(label.array).tolist()) - {0})) or "none",
        ),
    ]
    rows += [(key.capitalize(), str(image.meta[key])) for key in _SAFE_META if key in image.meta]
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def model_table(model_info: Mapping[str, Any] | None) -> str:
    """The Model section's key/value table (also the cohort index's, shown once there)."""
    if not model_info:
        return '<p class="note">No model information was given.</p>'
    body = ""
    for key, value in model_info.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        body += f"<tr><th>{_e(key)}</th><td>{_e(text)}</td></tr>"
    return f"<table>{body}</table>"


def _volumes_table(stats: Sequence[LabelStats], colors: Mapping[int, tuple[int, int, int]]) -> str:
    head = (
        "<tr><th>Label</th><th>Name</th><th>Volume (mL)</th><th>Voxels</th>"
        "<th>Centroid (LPS mm)</th><th>Extent size (x, y, z mm)</th></tr>"
    )
    body = ""
    for s in stats:
        swatch = _swatch(colors[s.value]) if s.value in colors else ""
        body += (
            f"<tr><td class='num'>{s.value}</td><td>{swatch}{_e(s.name)}</td>"
            f"<td class='num'>{s.volume_ml:.2f}</td><td class='num'>{s.voxel_count}</td>"
            f"<td>{_fmt_triple(s.centroid_lps)}</td><td>{_fmt_triple(s.extent_size_mm)}</td></tr>"
        )
    return f"<table>{head}{body}</table>"


def _mesh_payload(label: Volume, segments: Sequence[Segment], max_faces: int) -> list[dict[str, Any]]:
    meshes = []
    for segment in segments:
        # display only: no volume restoring (and its warnings for thin or fragmented labels)
        options = MeshOptions(
            smoothing_iterations=10, max_faces=max_faces, keep_watertight=False, preserve_volume=False
        )
        mesh = label_mesh(label, segment.value, options, what=f"3D view of '{segment.name}'")
        meshes.append((segment, mesh))
    if not meshes:
        return []
    centre = np.mean([m.bounds.mean(axis=0) for _, m in meshes], axis=0)
    return [
        {
            "name": s.name,
            "color": list(s.color),
            "v": np.round(np.asarray(m.vertices) - centre, 2).ravel().tolist(),
            "f": np.asarray(m.faces, dtype=np.int64).ravel().tolist(),
        }
        for s, m in meshes
    ]


def _warnings_section(warnings: Sequence[str]) -> str:
    """The case's warnings, one item each; nothing when there are none."""
    if not warnings:
        return ""
    items = "".join(f"<li>{_e(w)}</li>" for w in warnings)
    return f'<section class="warnings"><h2>Warnings ({len(warnings)})</h2><ul>{items}</ul></section>'


def build_report_html(
    image: Volume,
    label: Volume,
    segment_names: Mapping[int, str] | None = None,
    *,
    model_info: Mapping[str, Any] | None = None,
    case_id: str | None = None,
    colors: Mapping[int, Sequence[int]] | None = None,
    stats: Sequence[LabelStats] | None = None,
    overlay_png: bytes | None = None,
    mesh_max_faces: int = PREVIEW_MAX_FACES,
    warnings: Sequence[str] = (),
) -> str:
    """The report as one HTML string (see :func:`write_report`)."""
    image.geometry.require_same(label.geometry, "image and label grids")
    segments = segments_for_label(label, segment_names, colors)
    color_of = {
        s.value: s.color for s in segments_for_label(label, segment_names, colors, include_absent=True)
    }
    table = stats if stats is not None else label_statistics(label, segment_names)
    png = (
        overlay_png
        if overlay_png is not None
        else render_overlay_png(image, label, segment_names, colors=colors)
    )
    payload = _mesh_payload(label, segments, mesh_max_faces)
    title = f"Segmentation report – {case_id}" if case_id else "Segmentation report"
    created = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    # "</" must not appear inside the inline <script> JSON.
    mesh_json = json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")
    legend = " ".join(f"{_swatch(s.color)}{_e(s.name)}" for s in segments)
    viewer = (
        f'<canvas id="mesh-canvas" width="900" height="520" aria-label="3D surface view"></canvas>'
        f'<p class="note">{legend}<br>Drag to rotate, scroll to zoom. Starts turned slightly from the anterior view '
        "(patient's right on the left). Surfaces are smoothed and decimated for display; "
        "the STL/OBJ/PLY exports keep full detail.</p>"
        if payload
        else '<p class="note">No labelled voxels, so there is no surface to show.</p>'
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>{_e(title)}</title>
<style>{CSS}</style>
</head>
<body>
<header><h1>{_e(title)}</h1><p>medseg {_e(medseg.__version__)} · created {_e(created)} · research use only, not for diagnosis</p></header>
<main>
{_warnings_section(warnings)}<section><h2>Input</h2>{_inputs_table(image, label)}</section>
<section><h2>Model</h2>{model_table(model_info)}</section>
<section><h2>Volumes</h2>{_volumes_table(table, color_of)}
<p class="note">Volume = voxel count × voxel volume. Centroid and extent in patient coordinates (LPS: x to the patient's left, y posterior, z superior).</p></section>
<section><h2>Overlays</h2><img class="overlay" alt="label contours on the image" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}"></section>
<section><h2>3D view</h2>{viewer}<noscript><p class="note">The 3D view needs JavaScript.</p></noscript></section>
</main>
<script type="application/json" id="mesh-data">{mesh_json}</script>
<script>{_VIEWER_JS}</script>
</body>
</html>
"""


def write_report(
    path: str | Path,
    image: Volume,
    label: Volume,
    segment_names: Mapping[int, str] | None = None,
    *,
    model_info: Mapping[str, Any] | None = None,
    case_id: str | None = None,
    colors: Mapping[int, Sequence[int]] | None = None,
    stats: Sequence[LabelStats] | None = None,
    overlay_png: bytes | None = None,
    mesh_max_faces: int = PREVIEW_MAX_FACES,
    overwrite: bool = False,
    warnings: Sequence[str] = (),
) -> Path:
    """Write the case report (one self-contained .html file), atomically.

    ``model_info`` is shown as a key/value table (e.g. name, version, checkpoint, plan).
    ``stats`` and ``overlay_png`` may be passed in when already computed for other
    outputs; otherwise they are computed here. ``warnings`` are the case's warnings (those
    ``medseg predict`` logged while segmenting it), listed at the top when there are any.
    """
    target = check_writable(path, overwrite)
    text = build_report_html(
        image,
        label,
        segment_names,
        model_info=model_info,
        case_id=case_id,
        colors=colors,
        stats=stats,
        overlay_png=overlay_png,
        mesh_max_faces=mesh_max_faces,
        warnings=warnings,
    )
    write_text_atomic(target, text, overwrite=overwrite)
    log.info("wrote report to %s", target)
    return target
