"""The plain MONAI baseline of benchmarks/accuracy.py, written the way MONAI's tutorials do.

As in the 3D spleen / BraTS tutorials: dictionary transforms (``LoadImaged``,
``EnsureChannelFirstd``, ``NormalizeIntensityd(nonzero, channel_wise)``, ``SpatialPadd``,
``RandCropByPosNegLabeld`` with ``num_samples`` crops per case, ``RandFlipd`` on every axis,
``RandScaleIntensityd`` / ``RandShiftIntensityd``), a ``CacheDataset``, MONAI's ``UNet``
(channels 16-256, strides 2, two residual units, batch norm), ``DiceCELoss(to_onehot_y,
softmax)``, ``Adam(1e-3)`` at a constant rate, and ``sliding_window_inference`` for whole
images. Differences from a tutorial, all forced by the comparison: training stops at the
wall-clock budget instead of a number of epochs, and there is no best-metric model selection
(the tutorials pick the checkpoint on their validation set, which here is the held-out fold):
the model is the last state. The image is kept on its own grid (no ``Spacingd`` /
``Orientationd``: the benchmark sets are already on one spacing each), so the argmax is saved
with the image's own affine and scored against the reference by medseg's evaluator.

2D data (ISBI: one-slice volumes) is squeezed to 2D and trained with a 2D UNet.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def run_monai(job: Mapping[str, Any]) -> dict[str, Any]:
    import nibabel as nib
    import numpy as np
    import torch
    from monai.data import CacheDataset, DataLoader
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        EnsureTyped,
        LoadImaged,
        NormalizeIntensityd,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
        SqueezeDimd,
    )
    from monai.utils import set_determinism

    opts = job["options"]
    threads = int(job["threads"])
    torch.set_num_threads(threads)
    set_determinism(seed=int(job.get("seed", 0)))
    root = Path(job["dataset"])
    roi = tuple(int(r) for r in opts["roi"])
    dims = len(roi)
    n_classes = 1 + len(job["labels"])
    keys = ["image", "label"]

    def files(case: str) -> dict[str, str]:
        return {
            "image": str(root / "imagesTr" / f"{case}_0000.nii.gz"),
            "label": str(root / "labelsTr" / f"{case}.nii.gz"),
        }

    squeeze = [SqueezeDimd(keys=keys, dim=-1)] if dims == 2 else []  # (1, X, Y, 1) -> (1, X, Y)
    train_transforms = Compose(
        [
            LoadImaged(keys=keys, image_only=True),
            EnsureChannelFirstd(keys=keys),
            *squeeze,
            EnsureTyped(keys=keys, dtype=(torch.float32, torch.uint8), track_meta=False),
            NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
            SpatialPadd(keys=keys, spatial_size=roi),
            RandCropByPosNegLabeld(
                keys=keys,
                label_key="label",
                spatial_size=roi,
                pos=1,
                neg=1,
                num_samples=int(opts.get("samples", 2)),
                image_key="image",
                image_threshold=0,
            ),
            *[RandFlipd(keys=keys, prob=0.5, spatial_axis=a) for a in range(dims)],
            RandScaleIntensityd(keys="image", factors=0.1, prob=1.0),
            RandShiftIntensityd(keys="image", offsets=0.1, prob=1.0),
        ]
    )
    t0 = time.monotonic()
    train_ds = CacheDataset(
        data=[files(c) for c in job["train_ids"]],
        transform=train_transforms,
        cache_rate=1.0,
        num_workers=threads,
    )
    loader = DataLoader(train_ds, batch_size=int(opts.get("batch", 4)), shuffle=True, num_workers=1)
    cache_s = time.monotonic() - t0

    channels = tuple(int(c) for c in opts.get("channels", (16, 32, 64, 128, 256)))
    model = UNet(
        spatial_dims=dims,
        in_channels=1,
        out_channels=n_classes,
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=2,
        norm="batch",
    )
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)

    # Budget in CPU time of this process tree / threads (benchmarks/cpu_budget.py), as for
    # every contender of benchmarks/accuracy.py.
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cpu_budget import budget_clock

    clock = budget_clock(threads) if job.get("cpu_budget", True) else time.monotonic
    budget_s = float(job["budget_min"]) * 60.0
    t1, c1 = time.monotonic(), clock()
    deadline = c1 + budget_s
    iterations = 0
    epochs = 0
    last_loss = float("nan")
    done = False
    model.train()
    while not done:
        for batch_data in loader:
            inputs, labels = batch_data["image"], batch_data["label"]
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = loss_function(outputs, labels)
            loss.backward()
            optimizer.step()
            iterations += 1
            last_loss = float(loss.item())
            if clock() > deadline:
                done = True
                break
        epochs += 1
    train_s = clock() - c1
    train_wall_s = time.monotonic() - t1
    out = Path(job["out"])
    torch.save(model.state_dict(), out / "monai_unet.pt")

    # Inference: whole images, sliding window (as the tutorials' validation), argmax, saved on
    # the image's own affine.
    t2 = time.monotonic()
    pred_dir = Path(job["pred_dir"])
    pred_dir.mkdir(parents=True, exist_ok=True)
    infer_transforms = Compose(
        [
            LoadImaged(keys="image", image_only=True),
            EnsureChannelFirstd(keys="image"),
            *([SqueezeDimd(keys="image", dim=-1)] if dims == 2 else []),
            EnsureTyped(keys="image", dtype=torch.float32, track_meta=False),
            NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
        ]
    )
    model.eval()
    with torch.no_grad():
        for case in job["test_ids"]:
            path = root / "imagesTr" / f"{case}_0000.nii.gz"
            data = infer_transforms({"image": str(path)})
            image = torch.as_tensor(data["image"])[None]
            logits = sliding_window_inference(image, roi, 4, model, overlap=0.5)
            assert isinstance(logits, torch.Tensor)
            label = torch.argmax(logits, dim=1)[0].numpy().astype(np.uint8)
            if dims == 2:
                label = label[..., None]
            src: Any = nib.load(str(path))
            out_img = nib.Nifti1Image(label, src.affine, src.header)
            out_img.set_data_dtype(np.uint8)
            out_img.header.set_slope_inter(1, 0)
            nib.save(out_img, str(pred_dir / f"{case}.nii.gz"))
    return {
        "preprocess_seconds": cache_s,
        "train_seconds": train_s,
        "train_wall_seconds": train_wall_s,
        "iterations": iterations,
        "epochs": epochs,
        "predict_seconds": time.monotonic() - t2,
        "details": {
            "network": f"monai.networks.nets.UNet channels {list(channels)}, 2 residual units, batch norm",
            "roi": list(roi),
            "batch": int(opts.get("batch", 4)),
            "crops_per_case": int(opts.get("samples", 2)),
            "loss": "DiceCELoss(to_onehot_y=True, softmax=True)",
            "optimizer": "Adam lr 1e-3 constant",
            "final_train_loss": last_loss,
        },
    }
