"""POSTER V2 through the project: `model.variant: v2_tiny` trains with the pipeline's own step
function (SAM, the loss mixture), and `registry import-official --variant v2` registers an official
V2 container whose registered model gives the same logits as the direct strict load."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.config import load_config
from pipeline.train.context import RankContext, WorkerJob
from pipeline.train.step import train_step
from pipeline.train.builders import build_loss, build_model, build_optimizer
from pipeline.transforms import to_model_inputs

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_v2_tiny_trains_through_the_pipeline_step():
    cfg = load_config(CONFIGS / "smoke.yaml", ["model.variant=v2_tiny", "optim.sam=true", "optim.lr=0.003"])
    torch.manual_seed(0)
    model = build_model(cfg.model, 7).train()
    assert type(model).__name__ == "PosterV2" and model.cfg.arch == "v2"
    loss_fn = build_loss(cfg.loss)
    optimizer = build_optimizer(cfg.optim, model.parameters())
    rng = np.random.default_rng(0)
    image, crop = to_model_inputs(rng.integers(0, 255, (8, 224, 224, 3), dtype=np.uint8),
                                  rng.integers(0, 255, (8, 112, 112, 3), dtype=np.uint8), "cpu")
    target = torch.arange(8) % 7
    ctx = RankContext(job=WorkerJob(cfg=cfg, classes=[str(i) for i in range(7)]), model=model, loss_fn=loss_fn,
                      optimizer=optimizer)
    frozen = model.face_landback.conv1.conv.weight.clone()
    head = model.head.linear.weight.clone()
    losses = []
    for step in range(6):
        ctx.progress.step = step
        out = train_step(ctx, image, crop, target)
        assert set(out) >= {"loss", "loss_ce", "loss_lsce"}
        losses.append(out["loss"])
    assert losses[-1] < losses[0] - 0.05, losses  # fits a fixed batch
    assert not torch.equal(model.head.linear.weight, head)
    torch.testing.assert_close(model.face_landback.conv1.conv.weight, frozen, rtol=0, atol=0)


def test_import_official_v2_registers_a_model_with_the_same_logits(tmp_path):
    from mlflow.tracking import MlflowClient

    from pipeline.artifact.load import load_model
    from official_files import make_synthetic_official
    from pipeline.artifact.official import OFFICIAL_CLASS_ORDER
    from pipeline.registry.cli import main
    from poster_model import load_official_checkpoint

    ckpt = make_synthetic_official(tmp_path / "v2.pth", variant="v2", seed=3)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("official-v2", artifact_location=(tmp_path / "artifacts").as_uri())
    rc = main(["import-official", "--checkpoint", str(ckpt), "--variant", "v2", "--dataset", "rafdb",
               "--experiment", "official-v2", "--model", "poster-v2", "--tracking-uri", uri])
    assert rc in (0, None)
    loaded = load_model("models:/poster-v2-candidates@challenger", uri)  # training's side of the registry
    assert loaded.model.cfg.arch == "v2" and not loaded.bgr  # V2 reads RAF-DB as RGB (V1 as BGR)
    direct = load_official_checkpoint(ckpt, variant="v2", num_classes=7)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, ref = loaded.model(x)[0], direct(x)[0]
    # the registered head is re-ordered from RAF-DB's label order into the canonical one
    perm = [OFFICIAL_CLASS_ORDER["rafdb"].index(c) for c in loaded.classes]
    torch.testing.assert_close(got, ref[:, perm], rtol=1e-5, atol=1e-5)
    # the plain file loads too (evaluate/predict accept official files; the family is detected)
    assert load_model(str(ckpt)).model.cfg.arch == "v2"
