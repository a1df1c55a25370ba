"""Training-step throughput of POSTER (and resnet50 for reference) over a matrix of speed settings.

    .venv/bin/python bench/model_step.py                         # CPU, POSTER-large vs resnet50, batch 8
    .venv/bin/python bench/model_step.py --variant tiny --batches 2 --steps plain,sam --iters 1
    python bench/model_step.py --device cuda --models poster --batches 64,128,256,512 \\
        --precisions fp32,tf32,bf16 --channels-last off,on --compile off,reduce-overhead \\
        --optimizers fused --steps plain,sam --json $OUT/model_step.json --budget-s 300

One row per (model, compile mode, precision, channels_last, optimizer, batch, step kind):
img/s of a whole optimiser step, "plain" (one forward+backward, Adam step) or "sam" (SAM(Adam):
two forward+backward passes, as `optim.sam`), the median of `--iters` timed steps after
`--warmup` (CUDA: events around each step), peak device memory, and MFU = model FLOPs/s over
the peak rate (`--peak-tflops`; 0 measures a large bf16 matmul on CUDA, float32 on CPU). Model
FLOPs are counted once per model with FlopCounterMode (matmul/conv/attention, forward+backward).
The settings go through the training loop's own code (pipeline.train.builders: apply_precision,
speed_up, build_optimizer, autocast_enabled), so a row is what `scaling.*` gives the loop.
Models built with the same settings are timed alternately (load drifts hit both). With
`--budget-s`, configurations that would start after the budget are listed as skipped. Not a test.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline.config import OptimCfg, ScalingCfg  # noqa: E402
from pipeline.train.builders import apply_precision, autocast_enabled, build_optimizer, speed_up  # noqa: E402
from poster_model import build_poster, variant_config  # noqa: E402


class LogitsOnly(torch.nn.Module):
    """Gives resnet50 the same (logits, features) call convention as POSTER."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor):
        return self.net(x), None


def csv(kind):
    return lambda s: [kind(v) for v in s.split(",") if v]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="large", help="POSTER variant: tiny/small/base/large")
    p.add_argument("--models", type=csv(str), default=["poster", "resnet50"], help="poster,resnet50")
    p.add_argument("--batches", type=csv(int), default=[8])
    p.add_argument("--precisions", type=csv(str), default=["fp32"], help="fp32,tf32,bf16,auto")
    p.add_argument("--channels-last", type=csv(str), default=["off"], help="off,on")
    p.add_argument("--compile", type=csv(str), default=["off"],
                   help="off,default,reduce-overhead,max-autotune,max-autotune-no-cudagraphs")
    p.add_argument("--optimizers", type=csv(str), default=["auto"], help="auto,forloop,foreach,fused")
    p.add_argument("--steps", type=csv(str), default=["plain"], help="plain,sam")
    p.add_argument("--iters", type=int, default=5, help="timed steps per row (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per row (compiled: +1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="0: measure a matmul")
    p.add_argument("--budget-s", type=float, default=0.0, help="0: no limit")
    p.add_argument("--json", default="", help="write all rows (and the header) here")
    return p.parse_args(argv)


def build_model(name: str, variant: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "poster":
        return build_poster(variant_config(variant, 7))
    return LogitsOnly(torchvision.models.resnet50(weights=None, num_classes=7))


def flops_per_image(name: str, variant: str, device: str) -> float:
    """Forward+backward FLOPs of one image (eager fp32, batch 2; FlopCounterMode's op set)."""
    model = build_model(name, variant).to(device).train()
    x = torch.randn(2, 3, 224, 224, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x)[0].float().sum().backward()
    return counter.get_total_flops() / 2


def measure_peak_tflops(device: str) -> float:
    """A large matmul's rate: bf16 on CUDA (tensor cores), float32 on CPU."""
    n, dtype = (8192, torch.bfloat16) if device.startswith("cuda") else (1024, torch.float32)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    times = [_timed(lambda: a @ b, device) for _ in range(6)][2:]
    return 2 * n**3 / statistics.median(times) / 1e12


def _timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def make_step(model, optimizer, x, y, sam: bool, autocast: bool):
    """One optimiser step as the training loop takes it (pipeline.train.step.train_step)."""
    def forward_backward() -> None:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            logits, _ = model(x)
            loss = F.cross_entropy(logits.float(), y)
        loss.backward()

    def step() -> None:
        forward_backward()
        if sam:
            optimizer.first_step(zero_grad=True)
            forward_backward()
            optimizer.second_step(zero_grad=True)
        else:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


def run_group(args, setting: dict, flops: dict, peak: float, deadline: float) -> list[dict]:
    """All batches and step kinds of one (compile, precision, channels_last, optimizer) setting,
    the models built once and timed alternately."""
    scfg = ScalingCfg(precision=setting["precision"], compile=setting["compile"],
                      channels_last=setting["channels_last"], optimizer_impl=setting["optimizer"])
    device = torch.device(args.device)
    torch._dynamo.reset()  # each setting compiles afresh (and stays under the recompile limit)
    apply_precision(scfg)
    models, opts = {}, {}
    for name in args.models:
        models[name] = speed_up(build_model(name, args.variant).to(device).train(), scfg, device)
        for kind in args.steps:
            ocfg = OptimCfg(name="adam", lr=1e-5, weight_decay=0.0, sam=kind == "sam")
            opts[name, kind] = build_optimizer(ocfg, models[name].parameters(), scfg.optimizer_impl)
    rows = []
    for batch in args.batches:
        for kind in args.steps:
            base = dict(setting, batch=batch, step=kind)
            if time.perf_counter() > deadline:
                rows += [dict(base, model=n, status="skipped (budget)") for n in args.models]
                continue
            rows += time_row(args, models, opts, base, flops, peak, autocast_enabled(scfg, device))
    return rows


def time_row(args, models, opts, base: dict, flops: dict, peak: float, autocast: bool) -> list[dict]:
    g = torch.Generator().manual_seed(base["batch"])
    x = torch.randn(base["batch"], 3, 224, 224, generator=g).to(args.device)
    if base["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 7, (base["batch"],), generator=g).to(args.device)
    steps, times, status = {}, {}, {}
    for name, model in models.items():
        steps[name] = make_step(model, opts[name, base["step"]], x, y, base["step"] == "sam", autocast)
        times[name], status[name] = [], "ok"
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    warmup = args.warmup + (base["compile"] != "off")
    compile_s = {}
    for i in range(warmup + args.iters):
        for name, step in steps.items():  # alternate models so load drifts hit both
            if status[name] != "ok":
                continue
            try:
                t = _timed(step, args.device)
            except Exception as e:  # noqa: BLE001 - an OOM or compile failure is a result too
                status[name] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                traceback.print_exc()
                if cuda:
                    torch.cuda.empty_cache()
                continue
            if i == 0:
                compile_s[name] = t  # the first step includes compilation / autotuning
            if i >= warmup:
                times[name].append(t)
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    rows = []
    for name in models:
        row = dict(base, model=name if name != "poster" else f"poster_{args.variant}",
                   status=status[name], first_step_s=compile_s.get(name), peak_mem_gib=peak_mem)
        if times[name]:
            sec = statistics.median(times[name])
            passes = 2 if base["step"] == "sam" else 1
            row.update(step_ms=sec * 1e3, img_s=base["batch"] / sec,
                       model_tflops=flops[name] * passes * base["batch"] / sec / 1e12)
            row["mfu"] = row["model_tflops"] / peak
        rows.append(row)
        print(fmt(row), flush=True)
    return rows


def fmt(r: dict) -> str:
    head = (f"{r['model']:14s} {r['compile']:26s} {r['precision']:5s} cl={int(r['channels_last'])} "
            f"opt={r['optimizer']:7s} b={r['batch']:<4d} {r['step']:5s}")
    if "img_s" not in r:
        return f"{head} {r['status']}"
    mem = f"{r['peak_mem_gib']:6.1f} GiB" if r["peak_mem_gib"] is not None else ""
    return (f"{head} {r['step_ms']:9.1f} ms {r['img_s']:9.1f} img/s  MFU {r['mfu']:6.1%}  {mem}"
            f"  first step {r['first_step_s']:.1f} s")


def settings(args) -> list[dict]:
    return [dict(compile=c, precision=p, channels_last=cl == "on", optimizer=o)
            for c in args.compile for p in args.precisions for cl in args.channels_last
            for o in args.optimizers]


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    # static shapes per batch size: one compiled graph per size instead of a slower dynamic one
    torch._dynamo.config.automatic_dynamic_shapes = False
    if args.device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    flops = {n: flops_per_image(n, args.variant, args.device) for n in args.models}
    peak = args.peak_tflops or measure_peak_tflops(args.device)
    header = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "torch": torch.__version__, "variant": args.variant, "peak_tflops": peak,
              "gflops_per_image_fwd_bwd": {n: f / 1e9 for n, f in flops.items()},
              "argv": sys.argv[1:] if argv is None else argv}
    print(json.dumps(header))
    deadline = time.perf_counter() + (args.budget_s or float("inf"))
    rows = []
    for setting in settings(args):
        rows += run_group(args, setting, flops, peak, deadline)
        if args.json:  # after every group: a run cut short still leaves its rows
            Path(args.json).write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    report(rows)
    return rows


def report(rows: list[dict]) -> None:
    ok = [r for r in rows if "img_s" in r]
    print(f"\n{len(ok)} of {len(rows)} rows measured; best img/s per model and step kind:")
    for key in sorted({(r["model"], r["step"]) for r in ok}):
        best = max((r for r in ok if (r["model"], r["step"]) == key), key=lambda r: r["img_s"])
        print("  " + fmt(best))


if __name__ == "__main__":
    main()
