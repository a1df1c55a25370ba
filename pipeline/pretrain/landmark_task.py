"""The ``landmarks`` task: MobileFaceNet (POSTER's landmark net, official layout) regressing the 68
stored points from the 112x112 landmark crop, which is exactly what POSTER feeds it.

Targets are the shard's points (normalised to the aligned face = the crop's frame). The GDC head's
last BatchNorm starts at the train set's mean shape (bias) and per-coordinate spread (weight), so
the net predicts the mean shape from its first step and learns the deviations; its output is then
plain [0, 1] coordinates, the official net's contract.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.pretrain import points as P
from pipeline.schema import CROP_SIZE, LANDMARK_CROP, LANDMARKS
from pipeline.transforms import decode_image, to_model_inputs
from poster_model.ir50 import resize_input
from poster_model.mobilefacenet import MobileFaceNet


class LandmarkRegressor(nn.Module):
    """MobileFaceNet with its regressor trained; ``net`` holds the exported (official) layout."""

    def __init__(self, mean: np.ndarray | None = None, spread: np.ndarray | None = None,
                 input_size: int = CROP_SIZE) -> None:
        super().__init__()
        self.input_size = input_size  # POSTER resizes the crop to its input_size (nearest) first
        self.net = MobileFaceNet()
        self.net.requires_grad_(True)  # the GDC head is frozen inside POSTER, trained here
        if mean is not None and spread is not None:
            with torch.no_grad():
                self.net.output_layer.bn.bias.copy_(torch.tensor(mean, dtype=torch.float32).reshape(-1))
                self.net.output_layer.bn.weight.copy_(torch.tensor(spread, dtype=torch.float32).reshape(-1))

    def forward(self, x: torch.Tensor, _unused: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.input_size == CROP_SIZE:
            out = self.net.landmarks(x)
        else:  # e.g. the smoke profile's 64: the net sees what POSTER feeds it; the head wants 7x7
            fmap = self.net.features(resize_input(x, self.input_size))[-1]
            out = self.net.output_layer(F.interpolate(fmap, size=7, mode="bilinear", align_corners=False))
        return out, out  # the train step's (logits, features) pair


class PointLoss(nn.Module):
    """Mean absolute coordinate error (the robust choice of most landmark regressors)."""

    def forward(self, pred: torch.Tensor, _feats: torch.Tensor, target: torch.Tensor):
        l1 = (pred - target.reshape(pred.shape)).abs().mean()
        return l1, {"l1": l1}


class LandmarkTask:
    name = "landmarks"
    columns = (LANDMARK_CROP, LANDMARKS)
    metric, mode = "val_nme", "min"
    registered_name = "poster-landmarks"
    weights_file = "mobilefacenet_landmarks.pth"

    def __init__(self, hflip: float = 0.5, area_min: float = 0.8, shift: float = 0.05,
                 rotation: float = 15.0) -> None:
        self.aug = dict(hflip=hflip, area_min=area_min, shift=shift, rotation=rotation)
        self.input_size = CROP_SIZE

    def configure(self, data_cfg: Any) -> "LandmarkTask":
        """The augmentation strengths of ``data.*`` (pipeline.pretrain.config)."""
        self.aug = dict(hflip=data_cfg.hflip, area_min=data_cfg.crop_area_min, shift=data_cfg.shift,
                        rotation=data_cfg.rotation)
        self.input_size = data_cfg.input_size
        return self

    def rows(self, table: Any) -> tuple[Any, int]:
        pts = _points(table.column(LANDMARKS))
        keep = P.usable(pts)
        return table.filter(keep), int((~keep).sum())

    def fit_stats(self, train: Any) -> dict[str, Any]:
        pts = _points(train.column(LANDMARKS))
        return {"mean": pts.mean(axis=0), "spread": np.maximum(pts.reshape(len(pts), -1).std(axis=0), 1e-3)}

    def decode(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        crops = np.stack([decode_image(b, CROP_SIZE) for b in batch[LANDMARK_CROP]])
        pts = _points(batch[LANDMARKS])
        return {"image": crops, "crop": crops, "label": pts.reshape(len(pts), -1),
                "sample_id": np.asarray(batch["sample_id"])}

    def augment(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        crops, pts = P.augment(batch["image"], batch["label"].reshape(-1, P.N_POINTS, 2), rng, **self.aug)
        return {**batch, "image": crops, "crop": crops, "label": pts.reshape(len(pts), -1)}

    def build_model(self, stats: dict[str, Any]) -> nn.Module:
        return LandmarkRegressor(stats.get("mean"), stats.get("spread"), self.input_size)

    def loss(self) -> nn.Module:
        return PointLoss()

    def predict(self, model: nn.Module, crops: np.ndarray, device: Any = "cpu") -> np.ndarray:
        x, _ = to_model_inputs(crops, crops[:1], device)
        with torch.no_grad():
            out, _ = model(x)
        return out.float().cpu().numpy().reshape(len(crops), P.N_POINTS, 2)

    def eval_sums(self, model: nn.Module, batch: dict[str, np.ndarray], device: Any) -> np.ndarray:
        true = batch["label"].reshape(-1, P.N_POINTS, 2)
        if len(true) == 0:
            return np.zeros(2 + len(P.REGIONS))
        return P.error_sums(self.predict(model, batch["image"], device), true)

    def metrics(self, sums: np.ndarray) -> dict[str, float]:
        return P.nme_of_sums(sums)

    def baseline(self, stats: dict[str, Any], batch: dict[str, np.ndarray]) -> dict[str, float]:
        true = batch["label"].reshape(-1, P.N_POINTS, 2)
        return P.nme_of_sums(P.error_sums(np.broadcast_to(stats["mean"], true.shape), true))

    def export(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in model.net.state_dict().items()}

    def picture(self, model: nn.Module, batch: dict[str, np.ndarray], path: Path, n: int = 8) -> Path:
        """Predicted (red) and stored (green) points on the first ``n`` held-out crops."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        crops = batch["image"][:n]
        pred = self.predict(model, crops) * CROP_SIZE
        true = batch["label"][:n].reshape(-1, P.N_POINTS, 2) * CROP_SIZE
        fig, axes = plt.subplots(1, len(crops), figsize=(2 * len(crops), 2.2), squeeze=False)
        for ax, img, p, t in zip(axes[0], crops, pred, true):
            ax.imshow(img)
            ax.scatter(t[:, 0], t[:, 1], s=3, c="lime")
            ax.scatter(p[:, 0], p[:, 1], s=3, c="red")
            ax.axis("off")
        fig.suptitle("held-out faces: stored points (green), predicted (red)", fontsize=8)
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
        return path


def _points(column: Any) -> np.ndarray:
    """An Arrow/numpy column of 136 floats per row -> [N, 68, 2] float32."""
    if hasattr(column, "combine_chunks"):  # pyarrow ChunkedArray of fixed_size_list
        column = column.combine_chunks()
    if hasattr(column, "flatten") and hasattr(column, "type"):  # pyarrow FixedSizeListArray
        arr = column.flatten().to_numpy(zero_copy_only=False)
    else:
        arr = np.stack([np.asarray(r, np.float32) for r in column]) if np.asarray(column).dtype == object \
            else np.asarray(column)
    return np.asarray(arr, np.float32).reshape(-1, P.N_POINTS, 2)
