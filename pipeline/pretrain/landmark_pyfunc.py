"""Models-from-code entry of a registered landmark net (``poster-landmarks``): 112x112 landmark
crops (JPEG/PNG bytes, column ``landmark_crop``) in, 68 points ``x0,y0,...,x67,y67`` in [0, 1] of
the crop out. Training does not use this class: it reads ``artifacts/weights`` (the state dict in
the official layout) through ``pipeline.landmark_weights``."""
from __future__ import annotations

import io
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from PIL import Image

from poster_model.mobilefacenet import MobileFaceNet
from poster_model.weights import read_state_dict, strict_load

_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


class LandmarkPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        self.net = MobileFaceNet()
        strict_load(self.net, read_state_dict(context.artifacts["weights"]), frozenset(), what="landmark net")
        self.net.eval()

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        crops = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB").resize((112, 112)), np.float32) / 255.0
                 for b in model_input["landmark_crop"]]
        x = torch.from_numpy((np.stack(crops) - _MEAN) / _STD).permute(0, 3, 1, 2).float()
        with torch.no_grad():
            out = self.net.landmarks(x).numpy()
        return pd.DataFrame(out, columns=[f"{a}{i}" for i in range(68) for a in ("x", "y")])


mlflow.models.set_model(LandmarkPyfunc())
