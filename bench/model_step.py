"""Forward+backward step time of POSTER vs torchvision resnet50, measured in the same process.

    .venv/bin/python bench/model_step.py                       # CPU, batch 8, POSTER-large
    python bench/model_step.py --device cuda --bf16 --compile  # GPU variants

The models are timed round-robin (alternating), so background load hits both alike; the median of
`--steps` timed steps after `--warmup` steps is reported, with the ratio to resnet50 and img/s.
Train mode, CE loss, gradients set to None between steps. Not a test.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from poster_model import count_parameters, variant_config, build_poster  # noqa: E402


class LogitsOnly(torch.nn.Module):
    """Gives resnet50 the same (logits, features) call convention as POSTER."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        return self.net(x), None


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="large", help="POSTER variant: tiny/small/base/large")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed steps per model (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--channels-last", action="store_true", help="channels_last input and weights")
    return p.parse_args()


def build_models(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    models = {
        f"poster_{args.variant}": build_poster(variant_config(args.variant, 7)),
        "resnet50": LogitsOnly(torchvision.models.resnet50(weights=None, num_classes=7)),
    }
    for name, model in models.items():
        total, trainable = count_parameters(model)
        print(f"{name}: {total:,} params ({trainable:,} trainable)")
        model.to(args.device).train()
        if args.channels_last:
            model.to(memory_format=torch.channels_last)
        if args.compile:
            models[name] = torch.compile(model)
    return models


def make_step(model, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace):
    autocast = (torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16) if args.bf16
                else contextlib.nullcontext())

    def step() -> None:
        with autocast:
            logits, _ = model(x)
            loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        for p in model.parameters():
            p.grad = None

    return step


def timed(step, device: str) -> tuple[float, float]:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    sync()
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels
        print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    models = build_models(args)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 224, 224, generator=g).to(args.device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (args.batch,), generator=g).to(args.device)
    steps = {name: make_step(m, x, y, args) for name, m in models.items()}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times = {name: ([], []) for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():  # alternate models so load drifts hit both
            wall, cpu = timed(step, args.device)
            times[name][0].append(wall)
            times[name][1].append(cpu)
    report(times, args)


def report(times: dict, args: argparse.Namespace) -> None:
    mode = f"{args.device} batch {args.batch} bf16={args.bf16} compile={args.compile}"
    print(f"fwd+bwd, {mode}, median of {args.steps} after {args.warmup} warm-up")
    med = {name: (statistics.median(w), statistics.median(c)) for name, (w, c) in times.items()}
    for name, (wall, cpu) in med.items():
        print(f"  {name:16s} wall {wall * 1e3:9.1f} ms  cpu {cpu * 1e3:9.1f} ms  "
              f"{args.batch / wall:8.1f} img/s")
    poster, ref = med[f"poster_{args.variant}"], med["resnet50"]
    print(f"ratio poster_{args.variant}/resnet50: wall {poster[0] / ref[0]:.3f}x  "
          f"cpu {poster[1] / ref[1]:.3f}x")


if __name__ == "__main__":
    main()
