"""Build POSTER models, losses and optimisers from the config tree (no Ray here)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

import poster_model
from pipeline.artifact.files import poster_config_for
from pipeline.config import LossCfg, ModelCfg, OptimCfg, ScalingCfg, ScheduleCfg


def poster_config(mcfg: ModelCfg, num_classes: int) -> poster_model.PosterConfig:
    """The variant's PosterConfig with ``model.overrides`` applied (YAML lists → tuples)."""
    return poster_config_for(mcfg.variant, mcfg.overrides, num_classes)


def build_model(mcfg: ModelCfg, num_classes: int, load_weights: bool = True,
                tracking_uri: str = "") -> torch.nn.Module:
    """Model for training: pretrained backbones from local files when configured; the landmark
    net may also be a registered ``pipeline.pretrain landmarks`` model (``models:/...``, read from
    ``tracking_uri``'s registry)."""
    if mcfg.official_checkpoint and load_weights:
        model = poster_model.load_official_checkpoint(
            mcfg.official_checkpoint, variant=mcfg.variant, num_classes=num_classes)
        return model.train()
    model = poster_model.build_poster(poster_config(mcfg, num_classes))
    if load_weights and (mcfg.ir50_weights or mcfg.mobilefacenet_weights or mcfg.image_backbone_weights):
        from pipeline.landmark_weights import landmark_file

        with landmark_file(mcfg.mobilefacenet_weights, tracking_uri) as landmarks:
            poster_model.load_pretrained(model, ir50_path=mcfg.ir50_weights or None,
                                         mobilefacenet_path=landmarks,
                                         image_backbone_path=mcfg.image_backbone_weights or None)
    return model


def build_loss(lcfg: LossCfg, class_weights: list[float] | None = None) -> torch.nn.Module:
    cw = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
    return poster_model.LossMixture(
        {k: float(v) for k, v in lcfg.weights.items()}, label_smoothing=lcfg.label_smoothing,
        supcon_temperature=lcfg.supcon_temperature, circle_m=lcfg.circle_m,
        circle_gamma=lcfg.circle_gamma, class_weights=cw,
    )


def build_optimizer(ocfg: OptimCfg, params: Any, impl: str = "auto") -> torch.optim.Optimizer:
    """Adam/AdamW/SGD, wrapped in SAM when ``optim.sam`` (official V1: SAM(Adam), rho 0.05).

    ``impl`` (``scaling.optimizer_impl``): "auto" leaves PyTorch's choice (foreach on CUDA, a
    per-parameter loop on CPU), "forloop" / "foreach" / "fused" force one; the update is the same
    function, up to float rounding."""
    classes = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    kwargs: dict[str, Any] = {"lr": ocfg.lr, "weight_decay": ocfg.weight_decay}
    if impl != "auto":
        kwargs.update(foreach=impl == "foreach", fused=impl == "fused" or None)
    if ocfg.name == "sgd":
        kwargs["momentum"] = ocfg.momentum
    params = [p for p in params if p.requires_grad]
    if ocfg.sam:
        return poster_model.SAM(params, classes[ocfg.name], rho=ocfg.sam_rho,
                                adaptive=ocfg.sam_adaptive, **kwargs)
    return classes[ocfg.name](params, **kwargs)


def build_ema(ocfg: OptimCfg, model: torch.nn.Module) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of ``model``'s weights (``optim.ema_decay``; None when 0).

    Call ``update_parameters(model)`` after each optimiser step: the first call copies the weights,
    the n-th keeps ``d * ema + (1 - d) * weights`` with ``d = min(ema_decay, (1 + n) / (10 + n))``,
    the warm-up of TensorFlow's ExponentialMovingAverage: a short run (the CI's 8-epoch smoke fit,
    ~100 steps) is not held back by its early weights, a long one gets the full decay. Buffers
    (BatchNorm statistics) are copied from the model, not averaged. Validation, the kept best
    epoch and the test use the average: on small sets one step's weights swing the test accuracy
    by several points between epochs (bench/profile_seeds.py curves), their average much less."""
    if ocfg.ema_decay <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel

    return AveragedModel(model, multi_avg_fn=_ema_update(ocfg.ema_decay))


def ema_decay_at(decay: float, n_averaged: int) -> float:
    """The decay of the update after ``n_averaged`` earlier ones (see ``build_ema``)."""
    return min(decay, (1.0 + n_averaged) / (10.0 + n_averaged))


def _ema_update(decay: float):
    """AveragedModel's ``multi_avg_fn``: one fused in-place update of all averaged tensors."""
    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: Any) -> None:
        d = ema_decay_at(decay, int(n_averaged))
        torch._foreach_lerp_(averaged, current, 1.0 - d)

    return update


def lr_factor(scfg: ScheduleCfg, epoch: int) -> float:
    """Multiplier of the base lr at ``epoch`` (stepped once per epoch, like the official code)."""
    if epoch < scfg.warmup_epochs:
        return (epoch + 1) / (scfg.warmup_epochs + 1)
    e = epoch - scfg.warmup_epochs
    if scfg.name == "exponential":
        return scfg.gamma**e
    if scfg.name == "cosine":
        span = max(scfg.epochs - scfg.warmup_epochs, 1)
        cos = 0.5 * (1 + math.cos(math.pi * min(e / span, 1.0)))
        return scfg.min_lr_ratio + (1 - scfg.min_lr_ratio) * cos
    return 1.0


def build_scheduler(scfg: ScheduleCfg, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(scfg, e))


def autocast_enabled(scfg: ScalingCfg, device: torch.device) -> bool:
    """Whether the step runs under bf16 autocast (``scaling.precision``; "auto": on GPUs only)."""
    return scfg.precision == "bf16" or (scfg.precision == "auto" and device.type == "cuda")


def apply_precision(scfg: ScalingCfg) -> None:
    """Process-wide float32 matmul/conv precision. "tf32" and "bf16" allow TF32 tensor cores (under
    bf16 autocast, for the ops it leaves in float32); "fp32" forbids them, cuDNN convolutions
    included (PyTorch allows TF32 there by default); "auto" keeps PyTorch's defaults."""
    if scfg.precision == "auto":
        return
    tf32 = scfg.precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")


def speed_up(model: torch.nn.Module, scfg: ScalingCfg, device: torch.device) -> torch.nn.Module:
    """``scaling.channels_last`` and ``scaling.compile`` applied to a model already on ``device``;
    returns the module to train (compiled: an OptimizedModule, whose ``_orig_mod`` unwrap() finds)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed batch shapes (drop_last): pick the fastest kernels
    if scfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if scfg.compile != "off":
        model = torch.compile(model, backend=scfg.compile_backend,
                              mode=None if scfg.compile == "default" else scfg.compile)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare module under DDP / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model
