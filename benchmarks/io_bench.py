"""I/O benchmark: medseg's readers against SimpleITK and nibabel used directly.

Cases (all in one run, a few minutes on 2 cores):

* ``prostatex_t2``: the 10 real PROSTATEx T2 series in ../shared/data/prostatex_dicom
  (190 files, 384x384 / 320x320 MR), read one after the other;
* ``ct_dicom``: a generated 512 x 512 x 300 CT written as a DICOM series the way scanners
  store it (uint16, BitsStored 12, RescaleIntercept -1024), 300 files, 150 MiB;
* ``ct_nifti_gz`` / ``ct_nifti``: the same CT as gzipped and plain NIfTI.

Readers: ``medseg`` (``read_volume``: sorting, validation, geometry, numpy array),
``sitk`` (``ImageSeriesReader`` with ``GetGDCMSeriesFileNames`` for DICOM, ``ReadImage``
otherwise, then ``GetArrayFromImage``: a numpy copy, which is what medseg returns),
``sitk_view`` (the same with ``GetArrayViewFromImage``, no copy: the fastest SimpleITK can
hand over an array) and ``nibabel`` (``np.asarray(nib.load(f).dataobj)``) for NIfTI.

Method: peak memory is measured in a fresh Python process per (case, reader): the growth
of VmHWM (the process's peak resident set, from /proc/self/status, reset after the imports)
over the resident set before one read. It counts everything the reader touches (file
buffers, ITK's C++ image, copies), which tracemalloc would miss for C++ allocations; Linux's
ru_maxrss is not used because it is inherited from the parent process. Time: one process
per case runs every reader ``--repeats`` times in shuffled order (warm page cache, after a
warm-up read), so that load from other work on the machine hits all readers alike; the
median is reported. The ratio is medseg's median over the fastest direct reader's median;
the target is medseg overhead <= 10 %% (ratio <= 1.10).
Every reader's array is checksummed to check that all of them return the same voxels.

Usage: ``python benchmarks/io_bench.py [--repeats 5] [--out benchmarks/results/io_bench.json]``
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PROSTATEX_T2 = [
    "ProstateX-0000/07-07-2011/3.000000-t2tsesag-87368",
    "ProstateX-0000/07-07-2011/4.000000-t2tsetra-00702",
    "ProstateX-0000/07-07-2011/5.000000-t2tsecor-03471",
    "ProstateX-0001/07-08-2011/4.000000-t2tsesag-22089",
    "ProstateX-0001/07-08-2011/5.000000-t2tsecor-26539",
    "ProstateX-0001/07-08-2011/6.000000-t2tsetra-76610",
    "ProstateX-0001/07-08-2011/10.000000-t2tsetra-17541",
    "ProstateX-0218/02-18-2011/4.000000-t2tsesag320p2-41180",
    "ProstateX-0218/02-18-2011/5.000000-t2tsetra320p2-09906",
    "ProstateX-0218/02-18-2011/6.000000-t2tsecor320p2-02127",
]
CT_SHAPE = (300, 512, 512)
TARGET_RATIO = 1.10


# ------------------------------------------------------------------ worker side
def _read(reader: str, path: str) -> Any:
    """One read; returns the numpy array (z, y, x) or a list of them."""
    import numpy as np

    if reader == "medseg":
        from medseg.io import read_volume

        return read_volume(path).array
    if reader in ("sitk", "sitk_view"):
        import SimpleITK as sitk

        if Path(path).is_dir():
            r = sitk.ImageSeriesReader()
            r.SetFileNames(r.GetGDCMSeriesFileNames(path))
            image = r.Execute()
        else:
            image = sitk.ReadImage(path)
        if reader == "sitk":
            return sitk.GetArrayFromImage(image)
        view = sitk.GetArrayViewFromImage(image)
        return (view, image)  # keep the image alive while the view is used
    if reader == "nibabel":
        import nibabel as nib

        nifti: Any = nib.load(path, mmap=False)  # read into memory, not memory-mapped
        return np.asarray(nifti.dataobj)
    raise ValueError(reader)


def _arrays(result: Any, reader: str) -> list[Any]:
    import numpy as np

    if reader == "sitk_view":
        return [result[0]]
    if reader == "nibabel":
        return [np.ascontiguousarray(result.T)]  # nibabel's array is (x, y, z)
    return [result]


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _checksum(results: list[Any], reader: str) -> tuple[str, list[Any]]:
    import numpy as np

    digest = hashlib.blake2b(digest_size=16)
    shapes = []
    for res in results:
        for arr in _arrays(res, reader):
            arr = np.ascontiguousarray(arr)
            digest.update(str(arr.dtype).encode())
            digest.update(arr.tobytes())
            shapes.append([list(arr.shape), str(arr.dtype)])
    return digest.hexdigest(), shapes


def _import_all() -> None:
    import nibabel  # noqa: F401
    import SimpleITK  # noqa: F401

    import medseg.io
    import medseg.io.dicom  # noqa: F401


def memory_worker(reader: str, paths: list[str]) -> dict[str, Any]:
    """Peak resident memory added by one read, in a fresh process.

    VmHWM (the peak RSS of this process image) is used rather than ru_maxrss, which Linux
    carries over from the parent across fork/exec.
    """
    import gc

    _import_all()
    gc.collect()
    with contextlib.suppress(OSError):  # reset VmHWM to the current RSS where allowed
        Path("/proc/self/clear_refs").write_text("5")
    base = _proc_status_kib("VmRSS")
    result = [_read(reader, p) for p in paths]
    peak = _proc_status_kib("VmHWM")
    checksum, shapes = _checksum(result, reader)
    return {"peak_mib": (peak - base) / 1024, "checksum": checksum, "arrays": shapes}


def time_worker(readers: list[str], paths: list[str], repeats: int) -> dict[str, Any]:
    """Median read time per reader; readers alternate so that machine load hits all alike."""
    import gc
    import random

    _import_all()
    times: dict[str, list[float]] = {r: [] for r in readers}
    for r in readers:  # warm-up: imports inside the readers, page cache
        _read(r, paths[0])
    rng = random.Random(0)
    for _ in range(repeats):
        order = list(readers)
        rng.shuffle(order)
        for r in order:
            gc.collect()
            t0 = time.perf_counter()
            out = [_read(r, p) for p in paths]
            times[r].append(time.perf_counter() - t0)
            del out
    return {r: {"median_s": statistics.median(t), "min_s": min(t), "times_s": t} for r, t in times.items()}


# ------------------------------------------------------------------ data set-up
def make_ct(folder: Path) -> dict[str, Path]:
    """A deterministic CT-like volume as a DICOM series (scanner style) and as NIfTI."""
    import numpy as np
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    from medseg.io import write_volume
    from medseg.volume import Volume

    nz, ny, nx = CT_SHAPE
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:ny, 0:nx]
    body = ((y - 256) / 180.0) ** 2 + ((x - 256) / 230.0) ** 2 < 1
    bone = ((y - 380) / 25.0) ** 2 + ((x - 256) / 30.0) ** 2 < 1
    hu = np.full(CT_SHAPE, -1024, dtype=np.int16)
    for k in range(nz):
        sl = np.where(body, 40, -1024).astype(np.int16)
        sl[bone] = 700 + 2 * k
        sl += np.where(body, rng.normal(0, 20, (ny, nx)), 0).astype(np.int16)
        hu[k] = sl
    spacing = (1.25, 0.78125, 0.78125)
    origin = (-199.6, -199.6, -400.0)
    vol = Volume(hu, spacing, origin)

    dicom_dir = folder / "ct_dicom"
    dicom_dir.mkdir()
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    base = Dataset()
    base.SOPClassUID = CTImageStorage
    base.Modality = "CT"
    base.PatientName = "Phantom^CT"
    base.PatientID = "BENCH"
    base.StudyInstanceUID = study
    base.SeriesInstanceUID = series
    base.FrameOfReferenceUID = frame
    base.SeriesDescription = "generated CT 512x512x300"
    base.SeriesNumber = 2
    base.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    base.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    base.PixelSpacing = [spacing[1], spacing[2]]
    base.SliceThickness = spacing[0]
    base.KVP = 120
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.Rows, base.Columns = ny, nx
    base.BitsAllocated, base.BitsStored, base.HighBit = 16, 12, 11
    base.PixelRepresentation = 0
    base.RescaleIntercept = -1024
    base.RescaleSlope = 1
    base.WindowCenter, base.WindowWidth = 40, 400
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    base.file_meta = meta
    order = rng.permutation(nz)  # file names in random order: sorting must use positions
    for k in range(nz):
        uid = generate_uid()
        base.SOPInstanceUID = uid
        meta.MediaStorageSOPInstanceUID = uid
        base.InstanceNumber = k + 1
        base.ImagePositionPatient = [origin[0], origin[1], origin[2] + k * spacing[0]]
        base.SliceLocation = origin[2] + k * spacing[0]
        base.PixelData = (hu[k].astype(np.int32) + 1024).astype("<u2").tobytes()
        pydicom.dcmwrite(dicom_dir / f"CT{order[k]:04d}.dcm", base, enforce_file_format=True)
    write_volume(vol, folder / "ct.nii.gz")
    write_volume(vol, folder / "ct.nii")
    return {"ct_dicom": dicom_dir, "ct_nifti_gz": folder / "ct.nii.gz", "ct_nifti": folder / "ct.nii"}


def _warm(paths: list[Path]) -> None:
    for p in paths:
        for f in [p] if p.is_file() else sorted(p.rglob("*")):
            if f.is_file():
                f.read_bytes()


def _size_mib(paths: list[Path]) -> float:
    total = 0
    for p in paths:
        total += (
            p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        )
    return total / 2**20


def _subprocess(args: list[str]) -> Any:
    proc = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False, cwd=ROOT
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{args[:2]} failed: {proc.stderr.strip().splitlines()[-3:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_case(name: str, paths: list[Path], readers: list[str], repeats: int) -> dict[str, Any]:
    _warm(paths)
    files = [str(p) for p in paths]
    results: dict[str, Any] = {r: _subprocess(["--memory", r, *files]) for r in readers}
    timing = _subprocess(["--time", ",".join(readers), "--repeats", str(repeats), *files])
    for r in readers:
        results[r].update(timing[r])
    baselines = {r: v for r, v in results.items() if r != "medseg"}
    best = min(baselines, key=lambda r: baselines[r]["median_s"])
    same = {r: v["checksum"] == results["medseg"]["checksum"] for r, v in baselines.items()}
    return {
        "files": sum(1 for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()),
        "size_mib": round(_size_mib(paths), 1),
        "readers": results,
        "fastest_baseline": best,
        "ratio_time_vs_fastest": results["medseg"]["median_s"] / baselines[best]["median_s"],
        # the minimum is less sensitive to other load on the machine than the median
        "ratio_min_time_vs_fastest_min": results["medseg"]["min_s"]
        / min(v["min_s"] for v in baselines.values()),
        "ratio_time_vs_sitk_copy": results["medseg"]["median_s"] / results["sitk"]["median_s"],
        "ratio_peak_memory_vs_sitk_copy": results["medseg"]["peak_mib"]
        / max(results["sitk"]["peak_mib"], 1e-9),
        "same_voxels_as": same,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "io_bench.json")
    parser.add_argument("--memory", help=argparse.SUPPRESS)
    parser.add_argument("--time", help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory:
        print(json.dumps(memory_worker(args.memory, args.paths)))
        return
    if args.time:
        print(json.dumps(time_worker(args.time.split(","), args.paths, args.repeats)))
        return

    import nibabel
    import numpy
    import pydicom
    import SimpleITK

    started = time.perf_counter()
    load_before = os.getloadavg()
    cases: dict[str, Any] = {}
    t2 = [SHARED / "prostatex_dicom" / s for s in PROSTATEX_T2]
    if all(p.is_dir() for p in t2):
        print("prostatex_t2 ...", flush=True)
        cases["prostatex_t2"] = run_case("prostatex_t2", t2, ["medseg", "sitk", "sitk_view"], args.repeats)
    else:
        print(f"skipping prostatex_t2: {SHARED / 'prostatex_dicom'} not found")
    tmp = Path(tempfile.mkdtemp(prefix="medseg-io-bench-"))
    try:
        print("generating the 512x512x300 CT ...", flush=True)
        ct = make_ct(tmp)
        for name, readers in (
            ("ct_dicom", ["medseg", "sitk", "sitk_view"]),
            ("ct_nifti_gz", ["medseg", "sitk", "sitk_view", "nibabel"]),
            ("ct_nifti", ["medseg", "sitk", "sitk_view", "nibabel"]),
        ):
            print(f"{name} ...", flush=True)
            cases[name] = run_case(name, [ct[name]], readers, args.repeats)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    report = {
        "benchmark": "medseg I/O read time and peak memory vs SimpleITK / nibabel",
        "target": f"medseg time <= {TARGET_RATIO:.2f} x the fastest direct reader",
        "method": "peak = VmHWM growth during one read in a fresh process per reader; "
        f"time = median of {args.repeats} warm-cache reads per reader, readers interleaved in one process",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "numpy": numpy.__version__,
            "SimpleITK": SimpleITK.Version_VersionString(),
            "pydicom": pydicom.__version__,
            "nibabel": nibabel.__version__,
            "load_average_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        },
        "cases": cases,
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(cases)
    print(f"\nwrote {args.out} ({report['runtime_s']} s)")


def print_table(cases: dict[str, Any]) -> None:
    head = (
        f"{'case':<13} {'reader':<10} {'median s':>9} {'min s':>7} {'peak MiB':>9} "
        f"{'time ratio':>11} {'mem ratio':>10}  same voxels"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for name, case in cases.items():
        med = case["readers"]["medseg"]
        for reader, res in case["readers"].items():
            t_ratio = med["median_s"] / res["median_s"] if reader != "medseg" else 1.0
            m_ratio = med["peak_mib"] / res["peak_mib"] if reader != "medseg" and res["peak_mib"] > 0 else 1.0
            same = "" if reader == "medseg" else ("yes" if case["same_voxels_as"][reader] else "NO")
            print(
                f"{name:<13} {reader:<10} {res['median_s']:>9.4f} {res['min_s']:>7.3f} {res['peak_mib']:>9.1f} "
                f"{t_ratio:>11.3f} {m_ratio:>10.3f}  {same}"
            )
        verdict = "ok" if case["ratio_time_vs_fastest"] <= TARGET_RATIO else "OVER TARGET"
        print(
            f"{'':<13} medseg / fastest ({case['fastest_baseline']}): median {case['ratio_time_vs_fastest']:.3f}"
            f" [{verdict}], min {case['ratio_min_time_vs_fastest_min']:.3f}"
        )
    print("ratios are medseg / reader (below 1: medseg faster or smaller); target: medseg / fastest <= 1.10")


if __name__ == "__main__":
    main()
