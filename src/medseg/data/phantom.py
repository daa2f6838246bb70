"""Synthetic phantoms for the demo, the tests and the benchmarks.

Two deterministic phantoms, both defined analytically in WORLD coordinates (LPS mm) so
that the same anatomy can be sampled on any grid:

* an MR-like (T2-weighted) **prostate** with the zones of Meyer et al. (ISBI 2019):
  labels 1 peripheral zone (PZ), 2 transition zone (TZ), 3 distal prostatic urethra (DPU),
  4 anterior fibromuscular stroma (AFS). It is sampled on an oblique axial grid like the
  PROSTATEx ``t2_tse_tra`` series (0.5 x 0.5 x 3 mm, tilted about the left-right axis) and,
  on request, on matching sagittal and coronal grids whose fields of view do not cover
  the whole axial one (so the multi-plane ROI is a real crop);
* a CT-like **abdomen** (Hounsfield units) with labels 1 liver, 2 right kidney, 3 left
  kidney, 4 spleen (the CHAOS order).

Everything about a case (anatomy, grid, noise) follows from one integer seed;
:func:`write_phantom_dataset` writes an nnU-Net v2 dataset, each case from its own seed
(:func:`case_seed`), so that any single case can be regenerated.

Sizes (measured over 40 seeds; tests rely on them): the prostate gland is about
16-32 mL (a normal-sized gland, chosen so that it fits with margins in the default
64 x 64 x 60 mm axial field of view; real PROSTATEx glands are often 30-60 mL), the TZ
takes 20-45 % of it, the AFS 10-16 %, the DPU 2-4 % (a tube of 2.5-3.5 mm radius from
the apex to a third of the way up). In the CT phantom, the liver is 1.0-1.9 L inside the
default 160 mm slab, each kidney 70-140 mL, the spleen 110-250 mL.

Written by hand because no library generates a labelled prostate-zone or abdominal
phantom: each tissue is an implicit shape (ellipsoids, tubes, shells) evaluated with
vectorised numpy on local coordinates; the image then gets a smooth bias field, a
Gaussian point-spread blur and noise (Rician for MR: the magnitude of a complex signal
with Gaussian noise in both channels; Gaussian for CT).
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import gaussian_filter
from scipy.spatial.transform import Rotation

from medseg.errors import ConfigError
from medseg.progress import progress_bar
from medseg.volume import Volume, VolumeGeometry

logger = logging.getLogger(__name__)

PhantomKind = Literal["prostate", "ct"]
View = Literal["axial", "sagittal", "coronal"]
FloatArray = NDArray[np.float32]
BoolArray = NDArray[np.bool_]

PHANTOM_VERSION = 1

PROSTATE_LABELS: dict[str, int] = {"background": 0, "PZ": 1, "TZ": 2, "DPU": 3, "AFS": 4}
CT_LABELS: dict[str, int] = {"background": 0, "liver": 1, "right_kidney": 2, "left_kidney": 3, "spleen": 4}

#: Axial T2 grid like PROSTATEx ``t2_tse_tra``: (z, y, x) spacing in mm.
PROSTATE_SPACING: tuple[float, float, float] = (3.0, 0.5, 0.5)
#: Default (test / demo) size: 60 x 64 x 64 mm around the gland.
PROSTATE_SIZE: tuple[int, int, int] = (20, 128, 128)
#: Full PROSTATEx-like size for benchmarks: 72 x 192 x 192 mm.
PROSTATE_FULL_SIZE: tuple[int, int, int] = (24, 384, 384)
SAGITTAL_SPACING: tuple[float, float, float] = (3.6, 0.6, 0.6)
CORONAL_SPACING: tuple[float, float, float] = (3.0, 0.6, 0.6)

#: Default CT size; the spacing follows from the fixed field of view (5 x 3 x 3 mm here).
CT_SIZE: tuple[int, int, int] = (32, 96, 128)
#: Full CT size for benchmarks (2.5 x 1.5 x 1.5 mm).
CT_FULL_SIZE: tuple[int, int, int] = (64, 256, 256)
#: CT field of view: 160 mm superior-inferior, 384 mm in-plane (the larger in-plane axis).
CT_FOV_MM: tuple[float, float] = (160.0, 384.0)

_VIEW_CODE = {"axial": 0, "sagittal": 1, "coronal": 2}


# --------------------------------------------------------------------------- helpers
def case_seed(dataset_seed: int, index: int) -> int:
    """The seed of case ``index`` of a dataset generated with ``dataset_seed``."""
    return int(np.random.SeedSequence([int(dataset_seed), int(index)]).generate_state(1)[0])


def _check_size(size: Sequence[int], what: str = "size") -> tuple[int, int, int]:
    try:
        shp = tuple(int(s) for s in size)
    except (TypeError, ValueError):
        raise ConfigError(f"phantom {what} must be 3 integers (z, y, x), found {size!r}") from None
    if len(shp) != 3 or any(s < 1 for s in shp):
        raise ConfigError(f"phantom {what} must be 3 positive integers (z, y, x), found {tuple(size)}")
    return (shp[0], shp[1], shp[2])


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(np.isfinite(sp)) or any(s <= 0 for s in sp):
        raise ConfigError(f"phantom spacing must be 3 positive values (z, y, x) in mm, found {spacing!r}")
    return (sp[0], sp[1], sp[2])


def _frame_uid(kind: str, seed: int) -> str:
    # Deterministic UID (pydicom hashes the entropy sources), so a case regenerated from
    # its seed belongs to the same frame of reference.
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[f"medseg-phantom-{kind}-{seed}-frame"]))


def _rotation(angles_deg: Sequence[float], axes: str = "xyz") -> NDArray[np.float64]:
    return np.asarray(Rotation.from_euler(axes, list(angles_deg), degrees=True).as_matrix())


def _centred_origin(
    centre: NDArray[np.float64],
    direction: NDArray[np.float64],
    shape: Sequence[int],
    spacing: Sequence[float],
) -> NDArray[np.float64]:
    """Origin (centre of voxel 0) that puts the grid's centre at ``centre``."""
    half = (np.asarray(shape, dtype=float) - 1.0) / 2.0
    return np.asarray(centre - (direction * np.asarray(spacing)[None, :]) @ half)


def _local_grid(
    geometry: VolumeGeometry, centre: NDArray[np.float64], rotation: NDArray[np.float64]
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Local anatomical coordinates (u, v, w) in mm of every voxel centre.

    ``world = rotation @ (u, v, w) + centre``. The grid is affine in the index, so each
    component is a broadcast sum of three 1D ramps (no (N, 3) point array is built).
    """
    step = rotation.T @ geometry.matrix  # local mm per index step along z, y, x
    offset = rotation.T @ (np.asarray(geometry.origin) - centre)
    ramps = [np.arange(n, dtype=np.float32) for n in geometry.shape]
    comps = []
    for k in range(3):
        comps.append(
            (np.float32(step[k, 0]) * ramps[0] + np.float32(offset[k]))[:, None, None]
            + (np.float32(step[k, 1]) * ramps[1])[None, :, None]
            + (np.float32(step[k, 2]) * ramps[2])[None, None, :]
        )
    return comps[0], comps[1], comps[2]


def _local_points(
    points: NDArray[np.float64], centre: NDArray[np.float64], rotation: NDArray[np.float64]
) -> tuple[FloatArray, FloatArray, FloatArray]:
    local = ((np.asarray(points, dtype=float).reshape(-1, 3) - centre) @ rotation).astype(np.float32)
    return local[:, 0], local[:, 1], local[:, 2]


def _texture(u: FloatArray, v: FloatArray, w: FloatArray, waves: NDArray[np.float64]) -> FloatArray:
    """Smooth random field of unit variance: a sum of plane waves (random Fourier features).

    ``waves`` rows are (kx, ky, kz, phase) with k in rad/mm; defined in space, so every
    grid sampling the phantom sees the same texture.
    """
    out = np.zeros(np.broadcast_shapes(u.shape, v.shape, w.shape), dtype=np.float32)
    for kx, ky, kz, phase in waves:
        out += np.cos(np.float32(kx) * u + np.float32(ky) * v + np.float32(kz) * w + np.float32(phase))
    out *= np.float32(np.sqrt(2.0 / max(len(waves), 1)))
    return out


def _random_waves(
    rng: np.random.Generator, n: int, wavelength_mm: tuple[float, float]
) -> NDArray[np.float64]:
    dirs = rng.normal(size=(n, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    k = 2 * np.pi / rng.uniform(*wavelength_mm, size=(n, 1))
    return np.hstack([dirs * k, rng.uniform(0, 2 * np.pi, size=(n, 1))])


def _ellipsoid_r2(
    u: FloatArray, v: FloatArray, w: FloatArray, centre: Sequence[float], semi: Sequence[float]
) -> FloatArray:
    return (
        ((u - np.float32(centre[0])) / np.float32(semi[0])) ** 2
        + ((v - np.float32(centre[1])) / np.float32(semi[1])) ** 2
        + ((w - np.float32(centre[2])) / np.float32(semi[2])) ** 2
    )


def _ellipse_r2(u: FloatArray, v: FloatArray, centre: Sequence[float], semi: Sequence[float]) -> FloatArray:
    return ((u - np.float32(centre[0])) / np.float32(semi[0])) ** 2 + (
        (v - np.float32(centre[1])) / np.float32(semi[1])
    ) ** 2


def _shell_mask(r2: FloatArray, semi_min: float, thickness: float) -> tuple[BoolArray, BoolArray]:
    """(whole, inner) masks of an ellipsoidal object with a wall of ``thickness`` mm."""
    inner_scale = max(1.0 - thickness / semi_min, 0.05)
    return r2 <= 1.0, r2 <= inner_scale**2


def _blur_and_noise(
    image: FloatArray, sigma: float, rng: np.random.Generator, *, rician: bool, psf_voxels: Sequence[float]
) -> FloatArray:
    image = gaussian_filter(image, sigma=list(psf_voxels), mode="nearest").astype(np.float32, copy=False)
    if sigma <= 0:
        return image
    n1 = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    if not rician:
        return image + n1
    n2 = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    return np.sqrt((image + n1) ** 2 + n2**2)


# --------------------------------------------------------------------------- prostate
@dataclass(frozen=True, eq=False)
class ProstateAnatomy:
    """Per-case parameters of the prostate phantom, all drawn from ``seed``.

    Local coordinates (u, v, w) are mm from the gland centre along the gland's own
    left, posterior and superior axes; ``rotation`` maps them to LPS world directions.
    """

    seed: int
    centre: NDArray[np.float64]  # world LPS mm of the gland centre
    rotation: NDArray[np.float64]  # columns: world directions of u, v, w
    semi_lr: float
    semi_ant: float  # anterior half-depth (v < 0)
    semi_post: float  # posterior half-depth (v > 0)
    semi_si: float
    taper: float  # the gland is wider at the base (superior) than at the apex
    tz_scale: float  # TZ semi-axes relative to the gland's
    urethra_radius: float
    dpu_top: float  # DPU runs from the apex up to w = dpu_top * semi_si
    afs_thickness: float
    rectum_radius: float
    bladder_semi: tuple[float, float, float]
    intensities: dict[str, float]
    noise_sigma: float
    bias: NDArray[np.float64]  # 6 log-bias coefficients
    waves: NDArray[np.float64]  # texture plane waves
    nodules: NDArray[np.float64]  # rows (u, v, w, radius, contrast) of BPH-like TZ nodules
    axial_tilt_deg: float
    axial_yaw_deg: float
    axial_offset: NDArray[np.float64]
    view_offsets: dict[str, NDArray[np.float64]]
    view_rotations: dict[str, NDArray[np.float64]]
    frame_of_reference_uid: str

    @property
    def tz_centre_local(self) -> tuple[float, float, float]:
        return (0.0, -0.2 * self.semi_ant, 0.12 * self.semi_si)

    @property
    def tz_semi(self) -> tuple[float, float, float]:
        t = self.tz_scale
        return (t * self.semi_lr, t * 0.9 * self.semi_ant, t * 1.05 * self.semi_si)

    def local_to_world(self, local: Sequence[float] | NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(np.asarray(local, dtype=float) @ self.rotation.T + self.centre)

    def tz_point_world(self) -> NDArray[np.float64]:
        """A world point deep inside the transition zone, beside the urethra (for checks
        across views)."""
        c, s = self.tz_centre_local, self.tz_semi
        return self.local_to_world((c[0] + 0.45 * s[0], c[1], c[2]))

    def pz_point_world(self) -> NDArray[np.float64]:
        """A world point inside the posterior peripheral zone, mid-gland."""
        tz_back = self.tz_centre_local[1] + self.tz_semi[1]
        return self.local_to_world((0.0, (tz_back + self.semi_post) / 2 + 0.5, -0.1 * self.semi_si))


_T2 = {  # base T2-weighted intensities (arbitrary MR units)
    "air": 4.0,
    "fat": 620.0,
    "muscle": 170.0,
    "pz": 500.0,
    "tz": 300.0,
    "afs": 115.0,
    "capsule": 220.0,
    "urethra_lumen": 470.0,
    "urethra_wall": 240.0,
    "rectal_wall": 190.0,
    "rectal_content": 330.0,
    "urine": 1000.0,
    "bladder_wall": 180.0,
    "cortex": 35.0,
    "marrow": 450.0,
}


def prostate_anatomy(seed: int = 0) -> ProstateAnatomy:
    """Draw one prostate phantom's anatomy, contrast and acquisition parameters."""
    rng = np.random.default_rng([int(seed), 7101])
    scale = rng.uniform(0.9, 1.12)
    jitter = rng.uniform(0.95, 1.05, size=4)
    gain = rng.uniform(0.75, 1.35)
    intensities = {k: float(val * gain * rng.uniform(0.92, 1.08)) for k, val in _T2.items()}
    n_nod = int(rng.integers(1, 5))
    nodules = np.column_stack(
        [
            rng.uniform(-0.5, 0.5, size=(n_nod, 3)),  # position as a fraction of the TZ semi-axes
            rng.uniform(2.0, 5.5, size=n_nod),
            rng.choice([-1.0, 1.0], size=n_nod) * rng.uniform(0.12, 0.3, size=n_nod),
        ]
    )
    return ProstateAnatomy(
        seed=int(seed),
        centre=np.array([rng.uniform(-6, 6), rng.uniform(20, 40), rng.uniform(-70, -40)]),
        rotation=_rotation([rng.uniform(-12, 12), rng.uniform(-4, 4), rng.uniform(-6, 6)]),
        semi_lr=float(20.0 * scale * jitter[0]),
        semi_ant=float(16.0 * scale * jitter[1]),
        semi_post=float(13.5 * scale * jitter[2]),
        semi_si=float(18.0 * scale * jitter[3]),
        taper=float(rng.uniform(0.05, 0.12)),
        tz_scale=float(rng.uniform(0.6, 0.8)),
        urethra_radius=float(rng.uniform(2.5, 3.5)),
        dpu_top=float(rng.uniform(0.15, 0.4)),
        afs_thickness=float(rng.uniform(4.0, 6.0)),
        rectum_radius=float(rng.uniform(11.0, 15.0)),
        bladder_semi=(
            float(rng.uniform(24, 32)),
            float(rng.uniform(18, 25)),
            float(rng.uniform(16, 24)),
        ),
        intensities=intensities,
        noise_sigma=float(rng.uniform(0.015, 0.045) * _T2["fat"] * gain),
        bias=rng.normal(0.0, 0.12, size=6),
        waves=_random_waves(rng, 10, (3.0, 10.0)),
        nodules=nodules,
        axial_tilt_deg=float(rng.uniform(10.0, 20.0)),
        axial_yaw_deg=float(rng.uniform(-2.0, 2.0)),
        axial_offset=rng.uniform(-3.0, 3.0, size=3),
        view_offsets={"sagittal": rng.uniform(-1.5, 1.5, size=3), "coronal": rng.uniform(-1.5, 1.5, size=3)},
        view_rotations={
            "sagittal": _rotation([rng.uniform(-8, 8), rng.uniform(-3, 3), rng.uniform(-3, 3)]),
            "coronal": _rotation([rng.uniform(-2, 2), rng.uniform(-3, 3), rng.uniform(-3, 3)]),
        },
        frame_of_reference_uid=_frame_uid("prostate", int(seed)),
    )


def _prostate_tissues(
    an: ProstateAnatomy, u: FloatArray, v: FloatArray, w: FloatArray
) -> tuple[NDArray[np.uint8], FloatArray]:
    """Label map and noise-free, bias-free T2 intensities at local points (u, v, w)."""
    it = an.intensities
    shape = np.broadcast_shapes(u.shape, v.shape, w.shape)
    f32 = np.float32
    a, b_ant, b_post, c = an.semi_lr, an.semi_ant, an.semi_post, an.semi_si
    tex = _texture(u, v, w, an.waves)
    img = np.full(shape, it["fat"], dtype=np.float32) * (1 + f32(0.04) * tex)
    label = np.zeros(shape, dtype=np.uint8)

    # Body outline (the full-size field of view reaches the skin posteriorly).
    img[_ellipse_r2(u, v, (0.0, -20.0), (165.0, 115.0)) > 1] = it["air"]

    # Muscles: obturator internus (lateral slabs) and levator ani (posterolateral shell).
    au = np.abs(u)
    muscle = (au > a + 14) & (au < a + 25) & (v > -b_ant - 10) & (v < b_post + 18)
    lev_semi = (a + 8.0, b_post + 10.0)
    r_lev = np.sqrt(_ellipse_r2(u, v, (0.0, 0.3 * b_post), lev_semi))
    muscle |= (
        (np.abs(r_lev - 1) * f32(min(lev_semi)) < 1.7) & (v > -0.3 * b_ant) & (w < 0.4 * c) & (w > -c - 15)
    )
    img[muscle] = it["muscle"]

    # Bones: pubic symphysis (two bars anterior to the gland) and femoral heads.
    in_pubis_w = (w > -c - 15) & (w < 0.5 * c)
    for side in (-1.0, 1.0):
        r2 = _ellipse_r2(u, v, (side * 16.0, -(b_ant + 15.0)), (9.0, 7.0))
        outer, inner = _shell_mask(r2, 7.0, 2.0)
        img[outer & in_pubis_w] = it["cortex"]
        img[inner & in_pubis_w] = it["marrow"]
        r2 = _ellipsoid_r2(u, v, w, (side * (a + 62.0), -5.0, 0.6 * c), (23.0, 23.0, 23.0))
        outer, inner = _shell_mask(r2, 23.0, 2.5)
        img[outer] = it["cortex"]
        img[inner] = it["marrow"]

    # Bladder above the base: urine inside a thin wall.
    bs = an.bladder_semi
    r2 = _ellipsoid_r2(u, v, w, (0.0, -0.35 * b_ant - 2.0, c + 2.5 + bs[2]), bs)
    outer, inner = _shell_mask(r2, min(bs), 2.5)
    img[outer] = it["bladder_wall"]
    img[inner] = it["urine"]

    # Rectum behind the gland: muscular wall, lumen with air anteriorly (supine) and content.
    rr = an.rectum_radius
    rc_v = b_post + 2.5 + rr
    r2 = _ellipse_r2(u, v, (0.0, rc_v), (1.3 * rr, rr))
    outer, inner = _shell_mask(r2, rr, 3.0)
    img[outer] = it["rectal_wall"]
    img[inner] = it["rectal_content"]
    img[inner & (v < rc_v + 0.2 * rr)] = it["air"]

    # Urethra: centre line through the gland, bending anteriorly towards the base.
    vc = -b_ant * (f32(0.1) + f32(0.22) * w / f32(c))
    d_ur = np.sqrt(u**2 + (v - vc) ** 2)
    ru = an.urethra_radius
    # Membranous urethra below the apex (background label): lumen in a sphincter ring.
    memb = (w < -0.8 * c) & (w > -c - 15)
    img[memb & (d_ur < ru + 2.5)] = it["muscle"]
    img[memb & (d_ur < 0.55 * ru)] = it["urethra_lumen"]

    # Gland: an ellipsoid, deeper anteriorly than posteriorly, wider at the base.
    s = 1 + f32(an.taper) * np.clip(w / f32(c), -1, 1)
    bb = np.where(v < 0, f32(b_ant), f32(b_post))
    r2g = (u / (f32(a) * s)) ** 2 + (v / (bb * s)) ** 2 + (w / f32(c)) ** 2
    gland = r2g <= 1
    rho = np.sqrt(r2g)
    dist_in = (1 - rho) * np.sqrt(u**2 + v**2 + w**2) / np.maximum(rho, f32(1e-6))  # mm to surface
    capsule = gland & (dist_in < 1.2)

    tzc, tzs = an.tz_centre_local, an.tz_semi
    r2t = _ellipsoid_r2(u, v, w, tzc, tzs)
    tz = gland & (r2t <= 1)
    surgical_capsule = gland & ~tz & (r2t <= (1 + 1.2 / min(tzs)) ** 2)

    front = -f32(b_ant) * s * np.sqrt(np.clip(1 - (u / (f32(a) * s)) ** 2 - (w / f32(c)) ** 2, 0, None))
    lateral = np.sqrt(np.clip(1 - (u / (f32(0.7 * a) * s)) ** 2, 0, 1))
    thick = f32(an.afs_thickness) * lateral * (f32(0.85) + f32(0.2) * np.clip(w / f32(c), -1, 1))
    afs = gland & (v < 0) & (v - front < thick)

    dpu = gland & (d_ur <= ru) & (w <= an.dpu_top * c)

    label[gland] = PROSTATE_LABELS["PZ"]
    label[tz] = PROSTATE_LABELS["TZ"]
    label[afs] = PROSTATE_LABELS["AFS"]
    label[dpu] = PROSTATE_LABELS["DPU"]

    img[gland] = it["pz"] * (1 + f32(0.06) * tex[gland])
    img[surgical_capsule] *= f32(0.75)
    nod = np.zeros(shape, dtype=np.float32)
    for nu, nv, nw, radius, contrast in an.nodules:
        centre = (tzc[0] + nu * tzs[0], tzc[1] + nv * tzs[1], tzc[2] + nw * tzs[2])
        r2n = _ellipsoid_r2(u, v, w, centre, (radius, radius, radius))
        nod += f32(contrast) * np.exp(-r2n * f32(2.0))
    img[tz] = it["tz"] * (1 + f32(0.15) * tex[tz] + nod[tz])
    img[capsule & ~afs & ~dpu] = it["capsule"]
    img[afs] = it["afs"] * (1 + f32(0.05) * tex[afs])
    img[dpu] = it["urethra_wall"]
    img[dpu & (d_ur < 0.55 * ru)] = it["urethra_lumen"]
    return label, np.maximum(img, 0)


def _prostate_bias(an: ProstateAnatomy, u: FloatArray, v: FloatArray, w: FloatArray) -> FloatArray:
    """Smooth multiplicative coil-like field, defined in space (the same for every view)."""
    x, y, z = u / np.float32(60), v / np.float32(60), w / np.float32(60)
    c = an.bias.astype(np.float32)
    return np.exp(c[0] * x + c[1] * y + c[2] * z + c[3] * x * x + c[4] * y * y + c[5] * x * y)


def prostate_labels_at(anatomy: ProstateAnatomy, points: NDArray[np.float64]) -> NDArray[np.uint8]:
    """The analytic label at world points (N, 3): the ground truth independent of any grid."""
    u, v, w = _local_points(points, anatomy.centre, anatomy.rotation)
    return _prostate_tissues(anatomy, u, v, w)[0]


def prostate_axial_geometry(
    anatomy: ProstateAnatomy,
    size: Sequence[int] = PROSTATE_SIZE,
    spacing: Sequence[float] = PROSTATE_SPACING,
) -> VolumeGeometry:
    """Oblique axial grid: rows tilted about the left-right axis like PROSTATEx t2_tse_tra."""
    shape = _check_size(size)
    sp = _check_spacing(spacing)
    t = np.radians(anatomy.axial_tilt_deg)
    x_axis = np.array([1.0, 0.0, 0.0])
    y_axis = np.array([0.0, np.cos(t), -np.sin(t)])  # rows run posterior and a little inferior
    direction = np.column_stack([np.cross(x_axis, y_axis), y_axis, x_axis])
    direction = _rotation([anatomy.axial_yaw_deg], "y") @ direction
    centre = anatomy.centre + anatomy.axial_offset
    return VolumeGeometry(shape, sp, _centred_origin(centre, direction, shape, sp), direction)


def prostate_view_geometry(
    anatomy: ProstateAnatomy, view: Literal["sagittal", "coronal"], axial: VolumeGeometry
) -> VolumeGeometry:
    """Sagittal or coronal grid of the same study, sized from the axial grid.

    The sagittal slab covers at most 90 % of the axial left-right extent (and 68 mm, like
    PROSTATEx's 19 x 3.6 mm), the coronal slab at most 70 % of its anterior-posterior
    extent (and 48 mm); both are centred near the gland, so the intersection of the three
    boxes is strictly smaller than the axial box.
    """
    ext = np.asarray(axial.shape) * np.asarray(axial.spacing)  # (z, y, x) extents in mm
    t = np.radians(anatomy.axial_tilt_deg)
    if view == "sagittal":
        sp = SAGITTAL_SPACING
        n_slices = max(1, round(min(0.9 * ext[2], 68.4) / sp[0]))
        x_axis = np.array([0.0, 1.0, 0.0])  # columns run posterior
        y_axis = np.array([0.0, 0.0, -1.0])  # rows run inferior
    elif view == "coronal":
        sp = CORONAL_SPACING
        n_slices = max(1, round(min(0.7 * ext[1], 48.0) / sp[0]))
        x_axis = np.array([1.0, 0.0, 0.0])
        y_axis = np.array([0.0, -np.sin(t), -np.cos(t)])  # shares the axial tilt, like PROSTATEx
    else:
        raise ConfigError(f"phantom view must be 'sagittal' or 'coronal', found {view!r}")
    n_plane = max(1, int(np.ceil(max(ext[0], ext[1], ext[2]) * 1.05 / sp[1])))
    direction = anatomy.view_rotations[view] @ np.column_stack([np.cross(x_axis, y_axis), y_axis, x_axis])
    shape = (n_slices, n_plane, n_plane)
    centre = anatomy.centre + anatomy.view_offsets[view]
    return VolumeGeometry(shape, sp, _centred_origin(centre, direction, shape, sp), direction)


def sample_prostate(
    anatomy: ProstateAnatomy,
    geometry: VolumeGeometry,
    *,
    view: View = "axial",
    noise: bool = True,
) -> tuple[Volume, Volume]:
    """Image (float32 T2-like) and label (uint8) of the phantom on any grid.

    The label is the analytic label at each voxel centre; the image is blurred by a
    small Gaussian point-spread function (in voxels, so thick slices average more) and
    gets Rician noise drawn from (seed, view).
    """
    u, v, w = _local_grid(geometry, anatomy.centre, anatomy.rotation)
    label, image = _prostate_tissues(anatomy, u, v, w)
    image *= _prostate_bias(anatomy, u, v, w)
    rng = np.random.default_rng([anatomy.seed, 7102, _VIEW_CODE[view]])
    image = _blur_and_noise(
        image, anatomy.noise_sigma if noise else 0.0, rng, rician=True, psf_voxels=(0.35, 0.5, 0.5)
    )
    meta = {
        "modality": "MR",
        "series_description": f"t2_tse_{_SERIES[view]} (medseg phantom)",
        "frame_of_reference_uid": anatomy.frame_of_reference_uid,
        "phantom": "prostate",
        "phantom_seed": anatomy.seed,
        "view": view,
    }
    return (
        Volume(image.astype(np.float32, copy=False), geometry=geometry, meta=meta),
        Volume(label, geometry=geometry, meta={**meta, "labels": dict(PROSTATE_LABELS)}),
    )


_SERIES = {"axial": "tra", "sagittal": "sag", "coronal": "cor"}


@dataclass(frozen=True, eq=False)
class PhantomCase:
    """One generated case: the main image and label, and for the prostate optionally the
    sagittal and coronal views of the same anatomy as ``views[name] = (image, label)``."""

    image: Volume
    label: Volume
    seed: int
    kind: PhantomKind
    views: Mapping[str, tuple[Volume, Volume]] = field(default_factory=dict)


def make_prostate_case(
    seed: int = 0,
    *,
    size: Sequence[int] = PROSTATE_SIZE,
    spacing: Sequence[float] = PROSTATE_SPACING,
    views: bool = False,
    noise: bool = True,
) -> PhantomCase:
    """A prostate phantom case on its oblique axial grid (and sagittal/coronal views)."""
    anatomy = prostate_anatomy(seed)
    axial = prostate_axial_geometry(anatomy, size, spacing)
    image, label = sample_prostate(anatomy, axial, view="axial", noise=noise)
    extra: dict[str, tuple[Volume, Volume]] = {}
    if views:
        for name in ("sagittal", "coronal"):
            geom = prostate_view_geometry(anatomy, name, axial)
            extra[name] = sample_prostate(anatomy, geom, view=name, noise=noise)
    return PhantomCase(image=image, label=label, seed=int(seed), kind="prostate", views=extra)


# --------------------------------------------------------------------------- CT abdomen
@dataclass(frozen=True, eq=False)
class CTAnatomy:
    """Per-case parameters of the abdominal CT phantom, drawn from ``seed``.

    Local coordinates (u, v, w): mm from the body centre towards the patient's left,
    posterior and superior.
    """

    seed: int
    centre: NDArray[np.float64]
    rotation: NDArray[np.float64]
    body_semi: tuple[float, float]  # left-right, anterior-posterior half-widths
    fat_thickness: float
    wall_thickness: float
    organ_scale: dict[str, float]
    kidney_w: tuple[float, float]  # superior-inferior centres of right and left kidney
    liver_w: float
    spleen_w: float
    contrast: float  # 0 = native, 1 = portal-venous enhancement
    noise_sigma: float
    waves: NDArray[np.float64]
    bowel_waves: NDArray[np.float64]
    grid_yaw_deg: float
    grid_tilt_deg: float
    grid_offset: NDArray[np.float64]
    frame_of_reference_uid: str

    @property
    def spine_v(self) -> float:
        return 0.92 * self.body_semi[1] - 68.0

    def kidney_frame(self, side: Literal["right", "left"]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(centre, rotation) of a kidney in local coordinates; long axis ~ w."""
        sgn = -1.0 if side == "right" else 1.0  # the patient's right is -x in LPS
        centre = np.array([sgn * 68.0, self.spine_v + 6.0, self.kidney_w[0 if side == "right" else 1]])
        # lower pole lateral, hilum turned anteromedially
        rot = _rotation([0.0, -sgn * 15.0, sgn * 30.0])
        return centre, rot

    def kidney_semi(self, side: Literal["right", "left"]) -> tuple[float, float, float]:
        k = self.organ_scale["right_kidney" if side == "right" else "left_kidney"]
        return (24.0 * k, 20.0 * k, 52.0 * k)

    def local_to_world(self, local: Sequence[float] | NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(np.asarray(local, dtype=float) @ self.rotation.T + self.centre)


_HU_NATIVE = {
    "liver": 58.0,
    "spleen": 48.0,
    "kidney_cortex": 35.0,
    "kidney_medulla": 32.0,
    "aorta": 42.0,
    "ivc": 40.0,
    "bowel": 30.0,
}
_HU_ENHANCEMENT = {  # added at full portal-venous contrast
    "liver": 50.0,
    "spleen": 70.0,
    "kidney_cortex": 150.0,
    "kidney_medulla": 80.0,
    "aorta": 150.0,
    "ivc": 110.0,
    "bowel": 35.0,
}
_HU_FIXED = {
    "air": -1000.0,
    "fat": -100.0,
    "visceral_fat": -90.0,
    "muscle": 50.0,
    "bone_cortex": 1000.0,
    "bone_cancellous": 250.0,
    "disc": 85.0,
    "csf": 12.0,
    "bile": 8.0,
    "fluid": 15.0,
    "renal_sinus": -40.0,
    "urine": 10.0,
    "gas": -900.0,
}


def ct_anatomy(seed: int = 0) -> CTAnatomy:
    """Draw one abdominal CT phantom's anatomy, contrast phase and acquisition parameters."""
    rng = np.random.default_rng([int(seed), 7201])
    return CTAnatomy(
        seed=int(seed),
        centre=np.array([rng.uniform(-10, 10), rng.uniform(-10, 10), rng.uniform(-300, -200)]),
        rotation=_rotation([rng.uniform(-3, 3), 0.0, rng.uniform(-4, 4)]),
        body_semi=(float(rng.uniform(140, 170)), float(rng.uniform(100, 120))),
        fat_thickness=float(rng.uniform(10, 28)),
        wall_thickness=float(rng.uniform(8, 12)),
        organ_scale={
            name: float(rng.uniform(0.88, 1.12))
            for name in ("liver", "right_kidney", "left_kidney", "spleen")
        },
        kidney_w=(float(rng.uniform(-30, -15)), float(rng.uniform(-15, 0))),
        liver_w=float(rng.uniform(35, 50)),
        spleen_w=float(rng.uniform(25, 40)),
        contrast=float(rng.uniform(0.0, 1.0)),
        noise_sigma=float(rng.uniform(8.0, 18.0)),
        waves=_random_waves(rng, 10, (8.0, 30.0)),
        bowel_waves=_random_waves(rng, 10, (15.0, 40.0)),
        grid_yaw_deg=float(rng.uniform(-5, 5)),
        grid_tilt_deg=float(rng.uniform(-3, 3)),
        grid_offset=rng.uniform(-8, 8, size=3),
        frame_of_reference_uid=_frame_uid("ct", int(seed)),
    )


def _ct_tissues(
    an: CTAnatomy, u: FloatArray, v: FloatArray, w: FloatArray
) -> tuple[NDArray[np.uint8], FloatArray]:
    """Label map and noise-free HU at local points (u, v, w)."""
    f32 = np.float32
    shape = np.broadcast_shapes(u.shape, v.shape, w.shape)
    hu = dict(_HU_FIXED)
    for name, base in _HU_NATIVE.items():
        hu[name] = base + an.contrast * _HU_ENHANCEMENT[name]
    tex = _texture(u, v, w, an.waves)
    img = np.full(shape, hu["air"], dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)

    # Body wall: skin/subcutaneous fat, muscle, then the abdominal cavity.
    big_a, big_b = an.body_semi
    bb = np.where(v < 0, f32(big_b), f32(0.92 * big_b))
    fat, wall = an.fat_thickness, an.wall_thickness
    r_body = (u / f32(big_a)) ** 2 + (v / bb) ** 2
    r_muscle = (u / f32(big_a - fat)) ** 2 + (v / (bb - f32(fat))) ** 2
    r_cavity = (u / f32(big_a - fat - wall)) ** 2 + (v / (bb - f32(fat + wall))) ** 2
    img[r_body <= 1] = hu["fat"]
    img[r_muscle <= 1] = hu["muscle"]
    cavity = r_cavity <= 1
    # Ribs: bony arcs in the wall at the level of liver and spleen.
    r_mid = (u / f32(big_a - fat - 0.5 * wall)) ** 2 + (v / (bb - f32(fat + 0.5 * wall))) ** 2
    ribs = (
        (r_mid <= 1)
        & ~cavity
        & (np.sin(w * f32(2 * np.pi / 28.0)) > 0.8)
        & (w > -20)
        & (v < 0.6 * big_b)
        & ((np.abs(u) > 0.45 * big_a) | (v > 0))
    )
    img[ribs] = hu["bone_cortex"] * 0.8

    # Cavity: visceral fat with bowel loops and gas pockets.
    bowel_tex = _texture(u, v, w, an.bowel_waves)
    img[cavity] = hu["visceral_fat"]
    img[cavity & (bowel_tex > 0.2)] = hu["bowel"]
    img[cavity & (bowel_tex > 1.5)] = hu["gas"]

    # Stomach (left, anterior, high): fluid with an air cap anteriorly (supine).
    r2 = _ellipsoid_r2(u, v, w, (45.0, -0.35 * big_b, an.liver_w + 20.0), (40.0, 30.0, 40.0))
    stomach = cavity & (r2 <= 1)
    img[stomach] = hu["fluid"]
    img[stomach & (v < -0.35 * big_b - 12.0)] = hu["air"]

    # Liver: right lobe and a left lobe crossing the midline anteriorly; gallbladder below.
    ls = an.organ_scale["liver"]
    r_right = _ellipsoid_r2(u, v, w, (-0.45 * big_a, -0.12 * big_b, an.liver_w), (78 * ls, 80 * ls, 70 * ls))
    r_left = _ellipsoid_r2(u, v, w, (10.0, -0.5 * big_b, an.liver_w + 8.0), (58 * ls, 30 * ls, 42 * ls))
    liver = cavity & ((r_right <= 1) | (r_left <= 1))
    gall = _ellipsoid_r2(u, v, w, (-40.0, -0.55 * big_b, an.liver_w - 42.0 * ls), (14.0, 14.0, 28.0)) <= 1

    # Spleen: left, posterolateral, long axis turned posterior-lateral.
    ss = an.organ_scale["spleen"]
    rot_s = _rotation([0.0, 0.0, 35.0])
    cs = np.array([0.55 * big_a, 0.25 * big_b, an.spleen_w])
    su, sv, sw = _rotate_points(u, v, w, cs, rot_s)
    spleen = cavity & (_ellipsoid_r2(su, sv, sw, (0, 0, 0), (22 * ss, 50 * ss, 50 * ss)) <= 1)

    # Kidneys: cortex, medulla and a renal sinus opening medially; a 3 mm fat halo.
    kidneys: dict[str, tuple[BoolArray, BoolArray]] = {}
    side: Literal["right", "left"]
    for side in ("right", "left"):
        centre, rot = an.kidney_frame(side)
        semi = an.kidney_semi(side)
        ku, kv, kw = _rotate_points(u, v, w, centre, rot)
        medial = -ku if side == "left" else ku  # towards the midline, in the kidney frame
        r2k = _ellipsoid_r2(ku, kv, kw, (0, 0, 0), semi)
        sinus = (
            _ellipsoid_r2(medial, kv, kw, (0.55 * semi[0], -3.0, 0.0), (0.6 * semi[0], 9.0, 0.45 * semi[2]))
            <= 1
        )
        notch = sinus & (medial > 0.75 * semi[0])
        kidney = (r2k <= 1) & ~notch
        halo = r2k <= (1 + 3.0 / min(semi)) ** 2
        img[halo & ~kidney & cavity] = hu["visceral_fat"]
        img[kidney] = hu["kidney_cortex"]
        img[kidney & (r2k <= (1 - 5.0 / min(semi)) ** 2)] = hu["kidney_medulla"]
        img[kidney & sinus] = hu["renal_sinus"]
        img[kidney & sinus & (np.abs(kv + 3.0) < 4.0) & (medial > 0.3 * semi[0])] = hu["urine"]
        img[notch & (r2k <= 1)] = hu["renal_sinus"]
        kidneys[side] = (kidney, halo)

    blocker = gall | kidneys["right"][1] | kidneys["left"][1]
    liver &= ~blocker
    spleen &= ~blocker & ~liver
    img[liver] = hu["liver"] * (1 + f32(0.03) * tex[liver])
    img[spleen] = hu["spleen"] * (1 + f32(0.02) * tex[spleen])
    img[gall & cavity] = hu["bile"]

    label[liver] = CT_LABELS["liver"]
    label[spleen] = CT_LABELS["spleen"]
    label[kidneys["right"][0]] = CT_LABELS["right_kidney"]
    label[kidneys["left"][0]] = CT_LABELS["left_kidney"]

    # Spine, canal, posterior elements, paraspinal muscles, psoas and great vessels are
    # painted last; whatever they cover is not an organ.
    sv0 = an.spine_v
    body_mask = r_body <= 1
    covered = np.zeros(shape, dtype=bool)
    for sgn in (-1.0, 1.0):
        para = (_ellipse_r2(u, v, (sgn * 32.0, sv0 + 45.0), (26.0, 19.0)) <= 1) & body_mask
        psoas_r = 8.0 + 10.0 * np.clip(-w / f32(80.0), 0, 1)
        psoas = ((u - f32(sgn * 34.0)) ** 2 + (v - f32(sv0 - 4.0)) ** 2 <= psoas_r**2) & (w < 20)
        img[para | psoas] = hu["muscle"]
        covered |= para | psoas
    r2_vb = _ellipse_r2(u, v, (0.0, sv0), (24.0, 19.0))
    outer, inner = _shell_mask(r2_vb, 19.0, 3.0)
    disc = np.mod(w, f32(32.0)) < 7.0
    img[outer] = hu["bone_cortex"]
    img[inner] = hu["bone_cancellous"]
    img[outer & disc] = hu["disc"]
    r_arch = _ellipse_r2(u, v, (0.0, sv0 + 28.0), (16.0, 14.0))
    img[r_arch <= 1] = hu["bone_cortex"] * 0.85
    img[r_arch <= (1 - 5.0 / 14.0) ** 2] = hu["csf"]
    spinous = _ellipse_r2(u, v, (0.0, sv0 + 50.0), (5.0, 12.0)) <= 1
    img[spinous] = hu["bone_cortex"] * 0.85
    aorta = _ellipse_r2(u, v, (14.0, sv0 - 30.0), (11.0, 11.0)) <= 1
    ivc = _ellipse_r2(u, v, (-22.0, sv0 - 30.0), (13.0, 9.0)) <= 1
    img[ivc] = hu["ivc"]
    img[aorta] = hu["aorta"]
    covered |= outer | (r_arch <= 1) | spinous | aorta | ivc
    label[covered] = 0
    return label, img


def _rotate_points(
    u: FloatArray, v: FloatArray, w: FloatArray, centre: NDArray[np.float64], rot: NDArray[np.float64]
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Coordinates of (u, v, w) in a frame centred at ``centre`` with axes ``rot`` columns."""
    du, dv, dw = u - np.float32(centre[0]), v - np.float32(centre[1]), w - np.float32(centre[2])
    r = rot.astype(np.float32)
    return (
        r[0, 0] * du + r[1, 0] * dv + r[2, 0] * dw,
        r[0, 1] * du + r[1, 1] * dv + r[2, 1] * dw,
        r[0, 2] * du + r[1, 2] * dv + r[2, 2] * dw,
    )


def ct_geometry(
    anatomy: CTAnatomy, size: Sequence[int] = CT_SIZE, spacing: Sequence[float] | None = None
) -> VolumeGeometry:
    """Axial CT grid, slightly oblique (patient yaw and a small tilt).

    Without ``spacing`` the grid covers the fixed field of view :data:`CT_FOV_MM`
    (160 mm superior-inferior, 384 mm along the larger in-plane axis, square pixels).
    """
    shape = _check_size(size)
    if spacing is None:
        in_plane = CT_FOV_MM[1] / max(shape[1], shape[2])
        sp = (CT_FOV_MM[0] / shape[0], in_plane, in_plane)
    else:
        sp = _check_spacing(spacing)
    direction = _rotation([anatomy.grid_tilt_deg, 0.0, anatomy.grid_yaw_deg]) @ np.eye(3)[:, ::-1]
    centre = anatomy.centre + anatomy.grid_offset
    return VolumeGeometry(shape, sp, _centred_origin(centre, direction, shape, sp), direction)


def ct_labels_at(anatomy: CTAnatomy, points: NDArray[np.float64]) -> NDArray[np.uint8]:
    """The analytic CT label at world points (N, 3)."""
    u, v, w = _local_points(points, anatomy.centre, anatomy.rotation)
    return _ct_tissues(anatomy, u, v, w)[0]


def sample_ct(anatomy: CTAnatomy, geometry: VolumeGeometry, *, noise: bool = True) -> tuple[Volume, Volume]:
    """Image (int16 HU) and label (uint8) of the CT phantom on any grid."""
    u, v, w = _local_grid(geometry, anatomy.centre, anatomy.rotation)
    label, image = _ct_tissues(anatomy, u, v, w)
    rng = np.random.default_rng([anatomy.seed, 7202])
    image = _blur_and_noise(
        image, anatomy.noise_sigma if noise else 0.0, rng, rician=False, psf_voxels=(0.35, 0.6, 0.6)
    )
    hu = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    meta = {
        "modality": "CT",
        "series_description": "abdomen (medseg phantom)",
        "frame_of_reference_uid": anatomy.frame_of_reference_uid,
        "phantom": "ct",
        "phantom_seed": anatomy.seed,
    }
    return (
        Volume(hu, geometry=geometry, meta=meta),
        Volume(label, geometry=geometry, meta={**meta, "labels": dict(CT_LABELS)}),
    )


def make_ct_case(
    seed: int = 0,
    *,
    size: Sequence[int] = CT_SIZE,
    spacing: Sequence[float] | None = None,
    noise: bool = True,
) -> PhantomCase:
    """An abdominal CT phantom case on its (slightly oblique) axial grid."""
    anatomy = ct_anatomy(seed)
    image, label = sample_ct(anatomy, ct_geometry(anatomy, size, spacing), noise=noise)
    return PhantomCase(image=image, label=label, seed=int(seed), kind="ct")


def make_case(
    kind: PhantomKind,
    seed: int = 0,
    *,
    size: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    views: bool = False,
) -> PhantomCase:
    """Dispatch to :func:`make_prostate_case` or :func:`make_ct_case`."""
    if kind == "prostate":
        return make_prostate_case(
            seed, size=size or PROSTATE_SIZE, spacing=spacing or PROSTATE_SPACING, views=views
        )
    if kind == "ct":
        if views:
            raise ConfigError("sagittal/coronal views exist only for the prostate phantom, not for 'ct'")
        return make_ct_case(seed, size=size or CT_SIZE, spacing=spacing)
    raise ConfigError(f"unknown phantom kind {kind!r}; expected 'prostate' or 'ct'")


# --------------------------------------------------------------------------- dataset
VIEWS_JSON = "views.json"


def write_phantom_dataset(
    out_dir: str | Path,
    kind: PhantomKind = "prostate",
    *,
    n_train: int = 8,
    n_test: int = 2,
    seed: int = 0,
    size: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    overwrite: bool = False,
    with_views: bool = False,
    progress: bool = False,
) -> Path:
    """Write a phantom dataset in the nnU-Net v2 layout, atomically; return its folder.

    ::

        OUT/dataset.json
        OUT/imagesTr/{kind}_000_0000.nii.gz   OUT/labelsTr/{kind}_000.nii.gz   (n_train cases)
        OUT/imagesTs/...                      OUT/labelsTs/...                 (n_test cases)
        OUT/views/{case}_sagittal.nii.gz, {case}_sagittal_label.nii.gz,
                  {case}_coronal.nii.gz, {case}_coronal_label.nii.gz, views.json (with_views)

    Case ``i`` is generated from :func:`case_seed(seed, i) <case_seed>`; training cases
    come first, then test cases. ``patients`` in dataset.json maps each case to its own
    pseudonymous patient. ``progress`` shows a Rich progress bar.
    """
    from medseg.data.dataset import DatasetDescriptor, write_descriptor
    from medseg.io.atomic import atomic_dir
    from medseg.io.itk import write_itk

    if kind not in ("prostate", "ct"):
        raise ConfigError(f"unknown phantom kind {kind!r}; expected 'prostate' or 'ct'")
    if int(n_train) < 1 or int(n_test) < 0:
        raise ConfigError(
            f"need at least 1 training case and 0 or more test cases, found {n_train} and {n_test}"
        )
    if with_views and kind != "prostate":
        raise ConfigError("sagittal/coronal views exist only for the prostate phantom, not for 'ct'")
    shape = _check_size(size or (PROSTATE_SIZE if kind == "prostate" else CT_SIZE))
    if spacing is not None:
        _check_spacing(spacing)
    target = Path(out_dir)
    cases = [(f"{kind}_{i:03d}", "Tr" if i < n_train else "Ts", i) for i in range(int(n_train) + int(n_test))]

    views_index: dict[str, Any] = {}
    with atomic_dir(target, overwrite=overwrite) as tmp:
        for sub in ("imagesTr", "labelsTr") + (("imagesTs", "labelsTs") if n_test else ()):
            (tmp / sub).mkdir()
        if with_views:
            (tmp / "views").mkdir()
        with progress_bar(progress, f"writing {kind} phantom", len(cases)) as advance:
            for case_id, subset, index in cases:
                case = make_case(kind, case_seed(seed, index), size=shape, spacing=spacing, views=with_views)
                write_itk(case.image, tmp / f"images{subset}" / f"{case_id}_0000.nii.gz")
                write_itk(case.label, tmp / f"labels{subset}" / f"{case_id}.nii.gz")
                if with_views:
                    entry: dict[str, Any] = {
                        "axial": f"images{subset}/{case_id}_0000.nii.gz",
                        "axial_label": f"labels{subset}/{case_id}.nii.gz",
                        "frame_of_reference_uid": case.image.meta["frame_of_reference_uid"],
                    }
                    for name, (img, lab) in case.views.items():
                        write_itk(img, tmp / "views" / f"{case_id}_{name}.nii.gz")
                        write_itk(lab, tmp / "views" / f"{case_id}_{name}_label.nii.gz")
                        entry[name] = f"views/{case_id}_{name}.nii.gz"
                        entry[f"{name}_label"] = f"views/{case_id}_{name}_label.nii.gz"
                    views_index[case_id] = entry
                advance()
        if with_views:
            (tmp / "views" / VIEWS_JSON).write_text(json.dumps(views_index, indent=2) + "\n")
        descriptor = DatasetDescriptor(
            channel_names={"0": "T2" if kind == "prostate" else "CT"},
            labels=dict(PROSTATE_LABELS if kind == "prostate" else CT_LABELS),
            file_ending=".nii.gz",
            num_training=int(n_train),
            name=f"medseg {kind} phantom",
            description=(
                "Synthetic MR-like prostate zones (Meyer et al. 2019 labels)"
                if kind == "prostate"
                else "Synthetic CT-like abdomen (CHAOS label order)"
            )
            + " generated by medseg.data.phantom; not patient data.",
            patients={cid: f"phantom-patient-{i:03d}" for cid, _, i in cases},
            extra={
                "numTest": int(n_test),
                "phantom": {
                    "kind": kind,
                    "seed": int(seed),
                    "size_zyx": list(shape),
                    "spacing_zyx": None if spacing is None else [float(s) for s in spacing],
                    "version": PHANTOM_VERSION,
                    "generator": "medseg.data.phantom.write_phantom_dataset",
                    "views": f"views/{VIEWS_JSON}" if with_views else None,
                },
            },
        )
        write_descriptor(tmp, descriptor)
    logger.debug("wrote %d training and %d test %s phantom cases to %s", n_train, n_test, kind, target)
    return target


# The UW-Madison GI tract classes drawn from the CT phantom's organs; the spleen (4) lies in
# both stomach and small bowel, so masks overlap as the competition's do.
UWMADISON_REGIONS: dict[str, tuple[int, ...]] = {
    "large_bowel": (2,),
    "small_bowel": (3, 4),
    "stomach": (1, 4),
}
UWMADISON_SIZE: tuple[int, int, int] = (40, 64, 80)


def write_uwmadison_phantom(
    out_dir: str | Path,
    *,
    n_train: int = 6,
    n_test: int = 2,
    seed: int = 0,
    size: Sequence[int] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write a CT phantom in the UW-Madison GI Tract (Kaggle 2022) competition's layout.

    ::

        OUT/train.csv                      id,class,segmentation (row-major RLE, medseg.io.rle)
        OUT/train/caseN/caseN_dayD/scans/slice_0001_<width>_<height>_<pixel mm>_<pixel mm>.png  (16 bit)
        OUT/test/caseN/caseN_dayD/scans/...   OUT/sample_submission.csv (id,class,predicted)

    Scans come two per patient (days 0 and 14), so patient-grouped folds matter; the test
    scans belong to patients of their own. Slices are 3 mm apart (the competition's); the
    square pixels span the CT phantom's 384 mm field of view. The classes are organs of the CT phantom (:data:`UWMADISON_REGIONS`):
    stomach and small bowel overlap where the spleen lies. PNGs carry no orientation, so
    the grid's obliquity is lost, as in the competition's data.
    """
    from medseg.data.adapters.uwmadison import labels_to_rows
    from medseg.io.atomic import atomic_dir
    from medseg.io.png import write_png

    if int(n_train) < 1 or int(n_test) < 0:
        raise ConfigError(
            f"need at least 1 training scan and 0 or more test scans, found {n_train} and {n_test}"
        )
    shape = _check_size(size or UWMADISON_SIZE)
    # 3 mm slices (the competition's, the importer's default); square pixels spanning the CT
    # phantom's in-plane field of view, rounded as the file names write them
    pixel = round(CT_FOV_MM[1] / max(shape[1], shape[2]), 2)
    target = Path(out_dir)
    scans = [(f"case{i // 2 + 1}_day{14 * (i % 2)}", "train", i) for i in range(int(n_train))]
    first_test = (int(n_train) + 1) // 2 + 1  # the next patient: test patients are their own
    scans += [
        (f"case{first_test + j // 2}_day{14 * (j % 2)}", "test", int(n_train) + j) for j in range(int(n_test))
    ]
    rows: dict[str, list[tuple[str, str, str]]] = {"train": [], "test": []}
    with atomic_dir(target, overwrite=overwrite) as tmp:
        with progress_bar(progress, "writing UW-Madison phantom", len(scans)) as advance:
            for case_day, subset, index in scans:
                case = make_ct_case(case_seed(seed, index), size=shape, spacing=(3.0, pixel, pixel))
                hu = np.asarray(case.image.array, dtype=np.float64)
                grey = np.clip(np.rint((hu + 1024.0) * 16.0), 0, 65535).astype(np.uint16)  # 16-bit MR-like
                height, width = grey.shape[1:]
                scan_dir = tmp / subset / case_day.split("_")[0] / case_day / "scans"
                scan_dir.mkdir(parents=True)
                for z in range(grey.shape[0]):
                    name = f"slice_{z + 1:04d}_{width}_{height}_{pixel:.2f}_{pixel:.2f}.png"
                    write_png(grey[z], scan_dir / name)
                rows[subset] += labels_to_rows(case.label, case_day, regions=UWMADISON_REGIONS)
                advance()
        with (tmp / "train.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "class", "segmentation"])
            writer.writerows(rows["train"])
        if n_test:
            with (tmp / "sample_submission.csv").open("w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(["id", "class", "predicted"])
                writer.writerows((r[0], r[1], "") for r in rows["test"])
    return target
