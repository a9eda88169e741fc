#!/usr/bin/python3
"""The PyTorch peer of `vit bench`: the same model (built by tools/torch_models.py from vit's
config JSON), batch, threads, precision and mode, timed the same way, printed as the same JSON
fields. Run it through tools/bench.py, which sets PyTorch up in its best configuration
(../shared/PEERS.md: OpenMP OpenBLAS, AVX-512 kernels, glibc malloc not trimming) and
alternates it with ours.

  /usr/bin/python3 tools/bench_torch.py --arch vit --config '{"img_size": 224, ...}' \
      --mode infer --batch-size 32 --threads 2
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_models import build  # noqa: E402


def spread(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def blas_library():
    """The BLAS shared object this process really loaded (OpenBLAS pthread or OpenMP)."""
    with open("/proc/self/maps") as maps:
        libs = {line.split()[-1] for line in maps if "blas" in line.lower() and "/" in line}
    return sorted(os.path.realpath(p) for p in libs)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", required=True, help="vit or resnet")
    p.add_argument("--config", required=True, help="the model's config JSON, as vit prints it")
    p.add_argument("--mode", choices=["infer", "train"], default="infer")
    p.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                   help="bf16: torch.autocast(cpu, bfloat16)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, required=True)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = json.loads(args.config)
    model = build(args.arch, config)
    b = args.batch_size
    x = torch.randn(b, config["in_chans"], config["img_size"], config["img_size"])
    y = torch.arange(b) % config["num_classes"]
    training = args.mode == "train"
    model.train(training)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    if training:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
        loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

        def step():
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
    else:
        def step():
            with torch.inference_mode(), autocast:
                model(x)

    for _ in range(args.warmup):
        step()
    images_per_second, latency_ms = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.iters):
            step()
        seconds = time.perf_counter() - start
        images_per_second.append(b * args.iters / seconds)
        latency_ms.append(1e3 * seconds / args.iters)
    print(json.dumps({
        "mode": args.mode, "precision": args.precision, "batch": b, "threads": args.threads,
        "iters": args.iters, "repeats": args.repeats,
        "images_per_second": spread(images_per_second), "latency_ms": spread(latency_ms),
        "parameters": sum(t.numel() for t in model.parameters()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "setup": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                  # torch 1.13 has no torch.backends.cpu; newer ones report it themselves
                  "cpu_capability": getattr(getattr(torch.backends, "cpu", None),
                                            "get_cpu_capability",
                                            lambda: os.environ.get("ATEN_CPU_CAPABILITY",
                                                                   "default"))(),
                  "blas": blas_library(),
                  "env": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "GLIBC_TUNABLES",
                                                     "OPENBLAS_CORETYPE", "LD_LIBRARY_PATH",
                                                     "OMP_NUM_THREADS") if k in os.environ}},
    }))


if __name__ == "__main__":
    main()
