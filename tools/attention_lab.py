#!/usr/bin/python3
"""The self-attention lab: every attention variant of vit, trained with one recipe and one
budget on the same data, measured side by side for accuracy and speed, and a sweep of step
time over sequence length that shows where each efficient variant overtakes exact attention.

Accuracy: for each training-set size (--sizes) and seed (--seeds), each variant (VARIANTS
below: the ViT preset --vit-model with that variant's flags) and the CNN baseline for
reference are trained by `vit train` on a stratified subset of --data under compare.py's
budget rule and evaluated on all of --test-data (tools/experiment.py runs the cells, as for
compare.py). Speed at the lab's model: `vit bench` of each variant, inference and training
at --batch-size (images/s, GFLOP per image, parameters, peak RSS). Speed over N: `vit bench`
of --sweep-model at --sweep-img-size with patches --sweep-patches (N = (S/P)² + 1), each
attention variant, inference and training at batch 1.

Results in --out, resumable (run it again with the same settings):
  cells.csv      one row per (variant, size, seed)
  variants.csv   one row per variant: the speed, memory and cost at the lab's model
  speed.csv      one row per (variant, N, mode) of the sweep
  summary.md     accuracy (mean ± s.d.), speed, fitted exponents and crossovers
  accuracy.png   test accuracy against training images/s, one point per variant, per size
  speed.png      step time against N (log-log), one line per variant, inference and training
  run.json       the settings, the commands, the versions

Uses Debian's python3 and python3-matplotlib (tools/install-deps.sh installs them).
"""

import argparse
import json
import math
import os

from experiment import (FMNIST, ROOT, VIT, Results, check_tools, count_images, fail, mean_sd,
                        run, train_and_eval)

# name, label, vit train flags; "cnn" is the CNN baseline, the rest the ViT with those flags.
# Windows on vit_fmnist_patch4's 7×7 grid: R 1 and 2 see 3×3 and 5×5 patches of 49; Linformer
# projects its 50 tokens to 16, Performer uses 64 features (two blocks of its d = 32).
VARIANTS = [
    ("baseline", "softmax(q·kᵀ/√d), learned positions (timm)", ""),
    ("additive", "additive scores", "--attn-score additive"),
    ("relu", "relu(s)/n", "--attn-norm relu"),
    ("sigmoid", "σ(s − log n)", "--attn-norm sigmoid"),
    ("sincos", "fixed sine-cosine positions", "--pos-embed sincos"),
    ("nopos", "no positions", "--pos-embed none"),
    ("window1", "window R = 1", "--attn-window 1"),
    ("window2", "window R = 2", "--attn-window 2"),
    ("linformer", "Linformer K = 16", "--attn-lowrank 16"),
    ("performer", "Performer M = 64", "--attn-features 64"),
    ("cnn", "CNN (ResNet), for reference", None),
]
# The sweep's variants (positions do not change the cost) and their flags at any N: the window
# R = 2 both ways (the same function: query blocks against their halo of keys, and the N × N
# scores masked), Linformer K = 64 (or N), Performer M = 64.
SWEEP = ["baseline", "additive", "relu", "window2", "window2_mask", "linformer", "performer"]
# Sweep lines that are another way of computing a trained variant: (that variant, label).
SWEEP_ONLY = {"window2_mask": ("window2", "window R = 2, N × N scores masked")}
SWEEP_LABELS = {"window2": "window R = 2, query blocks and their halo"}
VIT_RECIPE = "--lr 2e-3 --weight-decay 0.05 --pad 2 --hflip 0.5"  # compare.py's
CNN_RECIPE = "--opt sgd --lr 0.1 --weight-decay 5e-4 --pad 2 --hflip 0.5"
FULL = {"out": os.path.join(ROOT, "attention-lab"), "sizes": "5000,20000", "seeds": 3,
        "batch_size": 128, "test_subset": 0,
        "epochs": 6, "min_steps": 400, "sweep_patches": "32,16,8,4", "bench_iters": 3,
        "bench_repeats": 3}
QUICK = {"out": os.path.join(ROOT, "attention-lab-quick"), "sizes": "1000", "seeds": 1,
         "batch_size": 64, "test_subset": 2000,
         "epochs": 2, "min_steps": 60, "sweep_patches": "32,16", "bench_iters": 1,
         "bench_repeats": 2}
# Additive scores hold B·H·N²·d_a floats twice in training (tanh's output and its gradient):
# beyond this the sweep does not run them. Counted for ViT-Ti's H = 3 and d_a = d = 64.
ADDITIVE_LIMIT_BYTES = 2 << 30
ADDITIVE_FLOATS_PER_SCORE = 3 * 64 * 2
SPEED_FIELDS = ["variant", "tokens", "patch", "mode", "images_per_second", "step_ms",
                "gflop_per_image", "peak_rss_mb", "skipped"]
VARIANT_FIELDS = ["variant", "parameters", "gflop_per_image", "infer_images_per_second",
                  "train_images_per_second", "infer_peak_rss_mb", "train_peak_rss_mb"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(FMNIST, "train"), help="training folder")
    p.add_argument("--test-data", default=os.path.join(FMNIST, "test"), help="test folder")
    p.add_argument("--out", help="results folder (default: attention-lab[-quick])")
    p.add_argument("--sizes", help="training-set sizes (default 5000,20000; --quick 1000)")
    p.add_argument("--seeds", type=int, help="seeds per cell (default 3; --quick 1)")
    p.add_argument("--variants", help="comma-separated subset of: " +
                   ", ".join(v[0] for v in VARIANTS))
    p.add_argument("--budget", choices=["epochs", "steps"], default="epochs")
    p.add_argument("--epochs", type=int, help="epochs per cell (default 6; --quick 2)")
    p.add_argument("--min-steps", type=int, help="at least this many steps (default 400)")
    p.add_argument("--steps", type=int, default=1000, help="steps per cell (--budget steps)")
    p.add_argument("--batch-size", type=int, help="training batch (default 128; --quick 64)")
    p.add_argument("--test-subset", type=int,
                   help="evaluate on a stratified subset of the test folder (default 0: all of "
                        "it; --quick 2000)")
    p.add_argument("--vit-model", default="vit_fmnist_patch4", help="the ViT preset")
    p.add_argument("--model-flags", default="", help="size flags for every ViT cell and bench "
                   "(e.g. '--img-size 16 --embed-dim 32')")
    p.add_argument("--cnn-model", default="cnn_resnet8_fmnist")
    p.add_argument("--vit-recipe", default=VIT_RECIPE)
    p.add_argument("--cnn-recipe", default=CNN_RECIPE)
    p.add_argument("--mean", help="normalization mean (default 0.286 on Fashion-MNIST, else 0.5)")
    p.add_argument("--std", help="normalization std (default 0.353 on Fashion-MNIST, else 0.5)")
    p.add_argument("--sweep-model", default="vit_tiny_patch16_224")
    p.add_argument("--sweep-img-size", type=int, default=224)
    p.add_argument("--sweep-patches", help="patch sizes of the sweep (default 32,16,8,4)")
    p.add_argument("--sweep-flags", default="", help="more size flags for the sweep's model")
    p.add_argument("--no-sweep", action="store_true", help="skip the speed sweep over N")
    p.add_argument("--bench-iters", type=int, help="vit bench --iters (default 3; --quick 1)")
    p.add_argument("--bench-repeats", type=int, help="vit bench --repeats (default 3; --quick 2)")
    p.add_argument("--threads", type=int, default=0, help="compute threads (0: all cores)")
    p.add_argument("--quick", action="store_true", help="about 10 minutes on 2 cores")
    p.add_argument("--keep-models", action="store_true")
    p.add_argument("--vit", default=VIT, help="the vit executable")
    args = p.parse_args()
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        args.sizes = sorted(set(int(s) for s in args.sizes.split(",")))
        args.sweep_patches = sorted(set(int(s) for s in args.sweep_patches.split(",")),
                                    reverse=True)
    except ValueError:
        fail("--sizes and --sweep-patches must be comma-separated integers")
    known = [v[0] for v in VARIANTS]
    args.variants = args.variants.split(",") if args.variants else known
    for v in args.variants:
        if v not in known:
            fail(f"--variants: no variant '{v}' (known: {', '.join(known)})")
    for name in ("seeds", "epochs", "min_steps", "steps", "batch_size", "bench_iters",
                 "bench_repeats"):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be positive")
    if args.test_subset < 0:
        fail("--test-subset must not be negative")
    fmnist = os.path.abspath(args.data) == os.path.join(FMNIST, "train")
    args.mean = args.mean or ("0.286" if fmnist else "0.5")
    args.std = args.std or ("0.353" if fmnist else "0.5")
    return args


def flags_of(name):
    return next(v[2] for v in VARIANTS if v[0] == name)


def label_of(name, sweep=False):
    if name in SWEEP_ONLY:
        return SWEEP_ONLY[name][1]
    if sweep and name in SWEEP_LABELS:
        return SWEEP_LABELS[name]
    return next(v[1] for v in VARIANTS if v[0] == name)


def in_sweep(args, name):
    """Whether the sweep runs this line: its variant was asked for."""
    return SWEEP_ONLY.get(name, (name,))[0] in args.variants


def bench(args, stem, flags, mode, batch):
    """One `vit bench` run; its JSON (or None when the run is skipped)."""
    cmd = [args.vit, "bench", "--mode", mode, "--batch-size", str(batch), "--iters",
           str(args.bench_iters), "--repeats", str(args.bench_repeats), "--warmup", "1",
           "--no-peak", "--threads", str(args.threads)] + flags
    run(cmd, stem + ".log")
    with open(stem + ".log") as f:
        return json.loads(f.read().splitlines()[-1]), cmd


def sweep_flags(name, grid):
    """A sweep variant's flags on a grid of patches: the window R = 2 (less on a grid too small
    for it), K = min(64, N), M = 64."""
    tokens = grid * grid + 1
    if name == "linformer":
        return ["--attn-lowrank", str(min(64, tokens))]
    if name == "performer":
        return ["--attn-features", "64"]
    if name in ("window2", "window2_mask"):
        return ["--attn-window", str(min(2, grid - 1)), "--attn-window-impl",
                "mask" if name == "window2_mask" else "blocks"]
    return flags_of(name).split()


def fit_exponent(points):
    """Least-squares slope of log(time) against log(N)."""
    if len(points) < 2:
        return float("nan")
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(t) for _, t in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx > 0 else float("nan")


def crossover(base, other):
    """The N (log-interpolated between grid points) from which `other` is faster than `base`:
    None if never on the grid, the smallest N if always."""
    ns = sorted(set(base) & set(other))
    for i, n in enumerate(ns):
        if other[n] < base[n]:
            if i == 0:
                return ("from", n)
            n0 = ns[i - 1]
            r0, r1 = math.log(other[n0] / base[n0]), math.log(other[n] / base[n])
            t = r0 / (r0 - r1)
            return ("at", math.exp(math.log(n0) + t * (math.log(n) - math.log(n0))))
    return None


def summarize(args, cells, variants, speed):
    lines = ["# The self-attention lab", ""]
    test_part = (f"a stratified {args.test_subset:,} of it" if args.test_subset else "all of it")
    lines.append(f"Data: `{args.data}` (stratified subsets), test: `{args.test_data}` ({test_part}). "
                 f"ViT: `{args.vit_model}` {args.model_flags}, recipe `{args.vit_recipe}`; CNN: "
                 f"`{args.cnn_model}`, recipe `{args.cnn_recipe}`. Budget: {args.budget_rule}. "
                 f"Seeds: {args.seeds}.")
    lines += ["", "## Accuracy and speed at the lab's model", ""]
    header = "| variant | flags | " + "".join(f"test acc. {s:,} (%) | " for s in args.sizes) + \
        "train img/s | infer img/s | MFLOP/image | parameters | peak RSS train (MB) |"
    lines += [header, "|---|---|" + "---:|" * (len(args.sizes) + 5)]
    by_variant = {r["variant"]: r for r in variants}
    stats = {}
    for name in args.variants:
        accs = []
        for size in args.sizes:
            vals = [r["test_acc"] for r in cells if r["model"] == name and r["size"] == size
                    and r["seed"] < args.seeds]
            if vals:
                stats[name, size] = mean_sd(vals)
                m, sd, n = stats[name, size]
                accs.append(f"{100 * m:.2f}" + ("" if math.isnan(sd) else f" ± {100 * sd:.2f}") +
                            ("" if n == args.seeds else f" (n={n})"))
            else:
                accs.append("—")
        v = by_variant.get(name)
        speed_cols = ["—"] * 5 if not v else [
            f"{v['train_images_per_second']:.0f}", f"{v['infer_images_per_second']:.0f}",
            f"{1000 * v['gflop_per_image']:.1f}", f"{int(v['parameters']):,}",
            f"{v['train_peak_rss_mb']:.0f}"]
        flags = flags_of(name)
        flags = "`" + flags + "`" if flags else ("CNN" if flags is None else "(none)")
        lines.append(f"| {label_of(name)} | {flags} | " + " | ".join(accs + speed_cols) + " |")
    if speed:
        lines += ["", "## Step time over sequence length", "",
                  f"`{args.sweep_model}` at {args.sweep_img_size}×{args.sweep_img_size}, patch " +
                  ", ".join(str(p) for p in args.sweep_patches) +
                  (f" {args.sweep_flags}" if args.sweep_flags else "") + ", batch 1; "
                  "milliseconds per image (median of the repeats). Fitted exponent: the slope of "
                  "log time against log N over all N, and over the two largest.", ""]
        ns = sorted({r["tokens"] for r in speed})
        for mode in ("infer", "train"):
            lines += [f"**{'Inference' if mode == 'infer' else 'Training step'}**", "",
                      "| variant | " + "".join(f"N = {n:,} | " for n in ns) +
                      "exponent | exponent, top two | faster than exact attention |",
                      "|---|" + "---:|" * (len(ns) + 3)]
            times = {}
            for name in SWEEP:
                rows = {r["tokens"]: r for r in speed if r["variant"] == name and r["mode"] == mode}
                times[name] = {n: r["step_ms"] for n, r in rows.items() if not r["skipped"]}
            for name in SWEEP:
                if not in_sweep(args, name):
                    continue
                t = times[name]
                cols = [f"{t[n]:.1f}" if n in t else "—" for n in ns]
                pts = sorted(t.items())
                cross = "—"
                if name != "baseline" and times.get("baseline"):
                    c = crossover(times["baseline"], t)
                    cross = "not on this grid" if c is None else (
                        f"from N = {c[1]:,}" if c[0] == "from" else f"N ≈ {c[1]:,.0f}")
                lines.append(f"| {label_of(name, sweep=True)} | " + " | ".join(cols) +
                             f" | {fit_exponent(pts):.2f} | {fit_exponent(pts[-2:]):.2f} | {cross} |")
            lines.append("")
        skipped = sorted({(r["variant"], r["tokens"]) for r in speed if r["skipped"]})
        if skipped:
            lines.append("Not run: " + "; ".join(f"{v} at N = {n:,}" for v, n in skipped) +
                         " (additive scores would hold more than 2 GB).")
    lines += ["", "Mean ± sample standard deviation over seeds. Per-cell numbers: `cells.csv`; "
              "speed: `variants.csv`, `speed.csv`; commands and versions: `run.json`."]
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return stats


def plot(args, stats, variants, speed):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    by_variant = {r["variant"]: r for r in variants}
    fig, axes = plt.subplots(1, len(args.sizes), figsize=(6 * len(args.sizes), 4.8), dpi=110,
                             squeeze=False)
    for ax, size in zip(axes[0], args.sizes):
        for i, name in enumerate(args.variants):
            if (name, size) not in stats or name not in by_variant:
                continue
            m, sd, _ = stats[name, size]
            ax.errorbar(by_variant[name]["train_images_per_second"], 100 * m,
                        yerr=0 if math.isnan(sd) else 100 * sd, marker="os^vD<>ph*X"[i % 11],
                        capsize=4, linestyle="none", label=label_of(name))
        ax.set_xscale("log")
        ax.set_xlabel("training images/s (vit bench)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{size:,} training images ({args.seeds} seed{'s' if args.seeds > 1 else ''}, ±1 s.d.)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "accuracy.png"))
    plt.close(fig)
    if not speed:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), dpi=110)
    for ax, mode in zip(axes, ("infer", "train")):
        for name in SWEEP:
            pts = sorted((r["tokens"], r["step_ms"]) for r in speed
                         if r["variant"] == name and r["mode"] == mode and not r["skipped"])
            if pts:
                ax.plot([n for n, _ in pts], [t for _, t in pts], marker="o",
                        label=label_of(name, sweep=True))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens N")
        ax.set_ylabel("milliseconds per image")
        ax.set_title(f"{args.sweep_model}, {'inference' if mode == 'infer' else 'training step'}, batch 1")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "speed.png"))
    plt.close(fig)


def main():
    args = parse_args()
    check_tools(args.vit)
    train_counts = count_images(args.vit, args.data)
    if set(train_counts) != set(count_images(args.vit, args.test_data)):
        fail(f"'{args.test_data}' has other class folders than '{args.data}'")
    args.total = sum(train_counts.values())
    args.budget_rule = (f"{args.steps} optimizer steps per cell (batch {args.batch_size})"
                        if args.budget == "steps" else
                        f"{args.epochs} epochs per cell, at least {args.min_steps} optimizer "
                        f"steps (batch {args.batch_size})")
    settings = {k: getattr(args, k) for k in (
        "data", "test_data", "sizes", "seeds", "budget", "epochs", "min_steps", "steps",
        "batch_size", "test_subset", "vit_model", "model_flags", "cnn_model", "vit_recipe", "cnn_recipe",
        "mean", "std", "sweep_model", "sweep_img_size", "sweep_patches", "sweep_flags",
        "variants", "bench_iters", "bench_repeats")}
    settings["data"], settings["test_data"] = os.path.abspath(args.data), os.path.abspath(args.test_data)
    free = ("sizes", "seeds", "variants", "sweep_patches")
    results = Results(args.out, args.vit, settings, free=free)
    cells_dir = os.path.join(args.out, "cells")

    # Speed at the lab's model, once per variant.
    variants = results.table("variants.csv", VARIANT_FIELDS, ("variant",), ints=("parameters",),
                             floats=VARIANT_FIELDS[2:])
    for name in args.variants:
        if (name,) in variants.done():
            continue
        model = ["--model", args.cnn_model] if flags_of(name) is None else \
            ["--model", args.vit_model] + args.model_flags.split() + flags_of(name).split()
        row, commands = {"variant": name}, []
        for mode in ("infer", "train"):
            out, cmd = bench(args, os.path.join(cells_dir, f"bench_{name}_{mode}"), model, mode,
                             args.batch_size)
            row[f"{mode}_images_per_second"] = out["images_per_second"]["median"]
            row[f"{mode}_peak_rss_mb"] = out["peak_rss_mb"]
            row["parameters"], row["gflop_per_image"] = out["parameters"], out["gflop_per_image"]
            commands.append(cmd)
        print(f"lab: {name}: {row['train_images_per_second']:.0f} training, "
              f"{row['infer_images_per_second']:.0f} inference images/s", flush=True)
        variants.add(row, f"bench_{name}", commands)

    # Accuracy cells.
    done = results.done()
    todo = [(size, seed, name) for size in args.sizes for seed in range(args.seeds)
            for name in args.variants if (name, size, seed) not in done]
    print(f"lab: {args.total} training images; {len(todo)} cells to run, {len(done)} already "
          f"done; results in {args.out}", flush=True)
    for i, (size, seed, name) in enumerate(todo, 1):
        cnn = flags_of(name) is None
        preset = args.cnn_model if cnn else args.vit_model
        recipe = args.cnn_recipe if cnn else " ".join(
            [args.vit_recipe, args.model_flags, flags_of(name)])
        print(f"[{i}/{len(todo)}] {name}, {min(size, args.total)} images, seed {seed} ...",
              end="", flush=True)
        row, commands = train_and_eval(args, name, preset, recipe, size, min(size, args.total),
                                       seed)
        row["size"] = size
        print(f" test acc {100 * row['test_acc']:.2f}%, {row['train_seconds']:.0f}s", flush=True)
        results.add(row, f"{name}_{size}_seed{seed}", commands)

    # The sweep over N.
    speed = []
    if not args.no_sweep:
        sweep = results.table("speed.csv", SPEED_FIELDS, ("variant", "tokens", "mode"),
                              ints=("tokens", "patch", "skipped"), floats=SPEED_FIELDS[4:8])
        for patch in args.sweep_patches:
            tokens = (args.sweep_img_size // patch) ** 2 + 1
            for name in SWEEP:
                if not in_sweep(args, name):
                    continue
                for mode in ("infer", "train"):
                    if (name, tokens, mode) in sweep.done():
                        continue
                    model = ["--model", args.sweep_model, "--img-size", str(args.sweep_img_size),
                             "--patch-size", str(patch)] + args.sweep_flags.split() + \
                        sweep_flags(name, args.sweep_img_size // patch)
                    row = {"variant": name, "tokens": tokens, "patch": patch, "mode": mode,
                           "images_per_second": 0.0, "step_ms": 0.0, "gflop_per_image": 0.0,
                           "peak_rss_mb": 0.0, "skipped": 0}
                    if name == "additive" and \
                            4 * tokens * tokens * ADDITIVE_FLOATS_PER_SCORE > ADDITIVE_LIMIT_BYTES:
                        row["skipped"], cmd = 1, []
                    else:
                        out, cmd = bench(args, os.path.join(cells_dir, f"sweep_{name}_{tokens}_{mode}"),
                                         model, mode, 1)
                        ips = out["images_per_second"]["median"]
                        row.update(images_per_second=ips, step_ms=1000.0 / ips,
                                   gflop_per_image=out["gflop_per_image"],
                                   peak_rss_mb=out["peak_rss_mb"])
                    print(f"lab: sweep {name} N={tokens} {mode}: " +
                          ("skipped" if row["skipped"] else f"{row['step_ms']:.1f} ms"), flush=True)
                    sweep.add(row, f"sweep_{name}_{tokens}_{mode}", [cmd])
        speed = sweep.rows
    results.save()
    stats = summarize(args, results.rows, variants.rows, speed)
    plot(args, stats, variants.rows, speed)
    print(f"lab: wrote {args.out}/summary.md, accuracy.png" + (", speed.png" if speed else ""))
    with open(os.path.join(args.out, "summary.md")) as f:
        print(f.read())


if __name__ == "__main__":
    main()
