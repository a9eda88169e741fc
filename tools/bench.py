#!/usr/bin/python3
"""Ours against PyTorch, side by side in one run: for each case, `vit bench` and its PyTorch
peer (tools/bench_torch.py) run alternately, --rounds times each, as separate processes on the
same threads; the ratio ours/PyTorch of the median images/s is printed per case, with the
fraction of the machine's matmul peak that ours reaches (measured by `vit bench` in the same
run) and both peak RSS figures.

PyTorch runs in its best set-up (../shared/PEERS.md): the OpenMP build of OpenBLAS first on
LD_LIBRARY_PATH (the default pthread build fights torch's OpenMP threads), OPENBLAS_CORETYPE
unset (OpenBLAS picks the CPU's own kernels), ATEN_CPU_CAPABILITY=avx512 on an AVX-512 CPU,
glibc malloc told not to trim (no page faults every step), torch.set_num_threads(threads).
`tools/install-deps.sh --peer` installs python3-torch, python3-torchvision and that OpenBLAS.

  tools/bench.py                      # every case, 3 rounds (about 15 minutes on 2 cores)
  tools/bench.py --cases vit_ti_b32   # one case
  tools/bench.py --list               # the cases
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER_PYTHON = "/usr/bin/python3"  # Debian's python3-torch installs for Debian's interpreter

# name: (preset, mode, batch, precision, timed iterations per repeat)
CASES = {
    "vit_ti_b32": ("vit_tiny_patch16_224", "infer", 32, "f32", 4),
    "vit_ti_b1": ("vit_tiny_patch16_224", "infer", 1, "f32", 40),
    "vit_ti_b32_bf16": ("vit_tiny_patch16_224", "infer", 32, "bf16", 6),
    "vit_s_b32": ("vit_small_patch16_224", "infer", 32, "f32", 2),
    "vit_b_b1": ("vit_base_patch16_224", "infer", 1, "f32", 8),
    "vit_b_b32": ("vit_base_patch16_224", "infer", 32, "f32", 1),
    "vit_b_b32_bf16": ("vit_base_patch16_224", "infer", 32, "bf16", 1),
    "vit_fmnist_p4_train": ("vit_fmnist_patch4", "train", 128, "f32", 6),
    "cnn_train": ("cnn_resnet8_fmnist", "train", 128, "f32", 10),
}


def fail(message):
    print(f"bench.py: {message}", file=sys.stderr)
    sys.exit(1)


def openblas_openmp_dir():
    try:
        files = subprocess.run(["dpkg", "-L", "libopenblas0-openmp"], capture_output=True,
                               text=True, check=True).stdout.split()
    except (subprocess.CalledProcessError, FileNotFoundError):
        fail("libopenblas0-openmp is not installed; run tools/install-deps.sh --peer")
    for f in files:
        if os.path.basename(f) == "libopenblas.so.0":
            return os.path.dirname(f)
    fail("libopenblas0-openmp lists no libopenblas.so.0")


def cpu_has_avx512():
    with open("/proc/cpuinfo") as f:
        return " avx512f" in f.read()


def peer_env(threads):
    env = dict(os.environ)
    for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        env.pop(k, None)
    env["LD_LIBRARY_PATH"] = ":".join(
        p for p in (openblas_openmp_dir(), os.environ.get("LD_LIBRARY_PATH")) if p)
    env["ATEN_CPU_CAPABILITY"] = "avx512" if cpu_has_avx512() else "avx2"
    env["GLIBC_TUNABLES"] = ("glibc.malloc.mmap_threshold=33554432:"
                             "glibc.malloc.trim_threshold=17179869184")
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_json(cmd, env=None):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        fail(f"'{' '.join(cmd[:3])} ...' failed (exit {proc.returncode}):\n  " + "\n  ".join(tail))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        fail(f"'{' '.join(cmd[:3])} ...' printed no JSON")
    result = json.loads(lines[-1])
    result["stderr"] = proc.stderr
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    p.add_argument("--rounds", type=int, default=3, help="alternating runs of each side per case")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats inside each run")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of both sides")
    p.add_argument("--vit", default=os.path.join(ROOT, "build", "release", "tools", "vit"))
    p.add_argument("--out", help="also write every measurement here (JSON)")
    p.add_argument("--profile", action="store_true",
                   help="ours also prints its per-primitive profile (stderr)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    args = p.parse_args()
    if args.list:
        for name, (preset, mode, batch, precision, _) in CASES.items():
            print(f"{name:22s} {preset} {mode} batch {batch} {precision}")
        return
    names = [c for c in args.cases.split(",") if c]
    for c in names:
        if c not in CASES:
            fail(f"unknown case '{c}' (known: {', '.join(CASES)})")
    if args.rounds <= 0 or args.repeats <= 0 or args.threads <= 0:
        fail("--rounds, --repeats and --threads must be positive")
    if not os.access(args.vit, os.X_OK):
        fail(f"'{args.vit}': no vit executable (build it: cmake --workflow --preset release)")
    if not os.path.exists(PEER_PYTHON) or subprocess.run(
            [PEER_PYTHON, "-c", "import torch, torchvision"], capture_output=True).returncode:
        fail("PyTorch is not importable by /usr/bin/python3; run tools/install-deps.sh --peer")
    env = peer_env(args.threads)
    ours_env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    info = subprocess.run([args.vit, "info", "--threads", str(args.threads)], capture_output=True,
                          text=True).stdout.strip()
    print(f"ours: {' | '.join(info.splitlines())}")
    print(f"PyTorch: {PEER_PYTHON}, " + ", ".join(
        f"{k}={env[k]}" for k in ("LD_LIBRARY_PATH", "ATEN_CPU_CAPABILITY", "GLIBC_TUNABLES",
                                  "OMP_NUM_THREADS")) + ", OPENBLAS_CORETYPE unset")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{args.rounds} alternating rounds per case, {args.repeats} repeats per run")
    sys.stdout.flush()

    results = []
    for name in names:
        preset, mode, batch, precision, iters = CASES[name]
        common = ["--mode", mode, "--batch-size", str(batch), "--iters", str(iters),
                  "--repeats", str(args.repeats), "--threads", str(args.threads)]
        ours_cmd = [args.vit, "bench", "--model", preset, "--precision", precision] + common
        if args.profile:
            ours_cmd.append("--profile")
        ours, peer = [], []
        for r in range(args.rounds):
            o = run_json(ours_cmd, ours_env)
            if args.profile and r == 0:
                print(o["stderr"], file=sys.stderr)
            ours.append(o)
            peer_cmd = [PEER_PYTHON, os.path.join(ROOT, "tools", "bench_torch.py"), "--arch",
                        o["arch"], "--config", json.dumps(o["config"]), "--precision",
                        precision] + common
            peer.append(run_json(peer_cmd, env))
            print(f"  {name} round {r + 1}: ours {o['images_per_second']['median']:.1f} img/s, "
                  f"PyTorch {peer[-1]['images_per_second']['median']:.1f} img/s", flush=True)
        ours_ips = statistics.median(o["images_per_second"]["median"] for o in ours)
        peer_ips = statistics.median(q["images_per_second"]["median"] for q in peer)
        peak = statistics.median(o["peak_gflops"] for o in ours)
        row = {"case": name, "preset": preset, "mode": mode, "batch": batch,
               "precision": precision, "gflop_per_image": ours[0]["gflop_per_image"],
               "ours_images_per_second": ours_ips, "peer_images_per_second": peer_ips,
               "ratio": ours_ips / peer_ips,
               # Each round's ratio (ours and PyTorch ran back to back): how far the machine's
               # noise moves a single measurement.
               "round_ratios": [o["images_per_second"]["median"] / q["images_per_second"]["median"]
                                for o, q in zip(ours, peer)],
               "ours_peak_fraction": ours_ips * ours[0]["gflop_per_image"] / peak,
               "peak_gflops": peak,
               "ours_peak_rss_mb": max(o["peak_rss_mb"] for o in ours),
               "peer_peak_rss_mb": max(q["peak_rss_mb"] for q in peer),
               "ours_runs": [{k: v for k, v in o.items() if k != "stderr"} for o in ours],
               "peer_runs": [{k: v for k, v in q.items() if k != "stderr"} for q in peer]}
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if not k.endswith("_runs")}), flush=True)

    print("\n| case | ours img/s | PyTorch img/s | ours / PyTorch | per round | "
          "ours, fraction of peak | peak RSS ours / PyTorch (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['preset']} {r['mode']} b{r['batch']} {r['precision']} "
              f"| {r['ours_images_per_second']:.1f} | {r['peer_images_per_second']:.1f} "
              f"| **{r['ratio']:.2f}×** | {min(r['round_ratios']):.2f}–"
              f"{max(r['round_ratios']):.2f}× | {100 * r['ours_peak_fraction']:.0f} % of "
              f"{r['peak_gflops']:.0f} GFLOP/s | {r['ours_peak_rss_mb']:.0f} / "
              f"{r['peer_peak_rss_mb']:.0f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"vit_info": info, "peer_env": {k: env[k] for k in (
                "LD_LIBRARY_PATH", "ATEN_CPU_CAPABILITY", "GLIBC_TUNABLES", "OMP_NUM_THREADS")},
                "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
