#!/usr/bin/python3
"""Train the ViT and the CNN baseline on growing stratified subsets of an image folder and
compare their test accuracy: the experiment behind the ViT paper's "CNNs win on little data,
Transformers catch up as data grows", run on your data and your machine.

For each training-set size and seed, each model is trained by `vit train` on a stratified
subset of --data (the seed picks the subset and the initialisation) under the same budget
rule, then evaluated by `vit eval` on the whole --test-data folder. Results go to --out:

  cells.csv     one row per (model, size, seed), written as soon as the cell is done
  summary.md    mean ± standard deviation per (model, size), the winner at each size
  accuracy.png  test accuracy against training-set size (log scale), with error bars
  run.json      the settings, the exact commands, the versions and the machine

Run it again with the same settings and --out to resume: finished cells are not recomputed.

Budget rule (--budget), the same for both models at every size:
  epochs  each cell trains max(--epochs, ceil(--min-steps / steps per epoch)) epochs: both
          models see the same images equally often; small subsets get at least --min-steps
          optimizer steps, so that they are trained at all (the default)
  steps   each cell trains --steps optimizer steps (rounded up to whole epochs), whatever
          the size: equal compute per cell
The learning-rate warmup is 5 % of each cell's training.

Transfer (--vit-init, --cnn-init): two more lines, the same architectures fine-tuned from a
pretrained model file or checkpoint folder (`vit train --init`, the head re-initialised for the
folder's classes) with their own recipes (--vit-ft-recipe, --cnn-ft-recipe). --classes keeps
only some class folders of --data and --test-data (through a folder of links in --out), so a
model pretrained on the other classes can be fine-tuned on these.

Uses Debian's python3 and python3-matplotlib (tools/install-deps.sh installs them).
"""

import argparse
import math
import os

from experiment import (FMNIST, ROOT, Results, check_tools, count_images, fail, mean_sd,
                        train_and_eval)

# The defaults of the flags that --quick changes: the full sweep, and about 5 minutes on 2 cores.
FULL = {"out": os.path.join(ROOT, "compare-results"), "sizes": "500,1000,2000,5000,10000,20000,60000",
        "seeds": 3, "epochs": 6, "min_steps": 400}
QUICK = {"out": os.path.join(ROOT, "compare-results-quick"), "sizes": "1000,5000,20000",
         "seeds": 1, "epochs": 3, "min_steps": 200}

# Each model's own recipe, the same at every size (vit train's flags): the ones behind the
# README's full Fashion-MNIST runs, AdamW for the ViT (DeiT-style) and SGD with momentum for
# the CNN (the CIFAR ResNet recipe). Both: warmup and cosine decay, label smoothing 0.1,
# batch 128, pad-and-crop by 2, horizontal flips.
VIT_RECIPE = "--lr 2e-3 --weight-decay 0.05 --pad 2 --hflip 0.5"
CNN_RECIPE = "--opt sgd --lr 0.1 --weight-decay 5e-4 --pad 2 --hflip 0.5"
# Fine-tuning: a tenth of the peak rate; the ViT with BEiT's layer-wise decay.
VIT_FT_RECIPE = "--lr 2e-4 --weight-decay 0.05 --layer-decay 0.75 --pad 2 --hflip 0.5"
CNN_FT_RECIPE = "--opt sgd --lr 0.01 --weight-decay 5e-4 --pad 2 --hflip 0.5"
# Every line the sweep can have: key, label, plot marker.
LINES = [("vit", "ViT", "o"), ("cnn", "CNN (ResNet)", "s"),
         ("vit_ft", "ViT, pretrained", "^"), ("cnn_ft", "CNN, pretrained", "D")]


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except of the flags whose default depends on --quick (None here)."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=DefaultsHelp)
    p.add_argument("--data", default=os.path.join(FMNIST, "train"),
                   help="training image folder (one sub-folder per class)")
    p.add_argument("--test-data", default=os.path.join(FMNIST, "test"),
                   help="test image folder, same class names; every cell is evaluated on all of it")
    p.add_argument("--out", help="results folder (default: compare-results, or "
                                 "compare-results-quick with --quick)")
    p.add_argument("--sizes", help="training-set sizes (comma-separated); a size above the "
                                   "folder's image count means the whole folder (default: "
                                   f"{FULL['sizes']}, or {QUICK['sizes']} with --quick)")
    p.add_argument("--seeds", type=int,
                   help=f"seeds per (model, size): 0, 1, ... (default: {FULL['seeds']}, "
                        f"or {QUICK['seeds']} with --quick)")
    p.add_argument("--budget", choices=["epochs", "steps"], default="epochs",
                   help="the budget rule (see above)")
    p.add_argument("--epochs", type=int,
                   help=f"epochs per cell (--budget epochs; default: {FULL['epochs']}, "
                        f"or {QUICK['epochs']} with --quick)")
    p.add_argument("--min-steps", type=int,
                   help="least optimizer steps per cell (--budget epochs; default: "
                        f"{FULL['min_steps']}, or {QUICK['min_steps']} with --quick)")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps per cell (--budget steps)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--vit-model", default="vit_fmnist_patch7", help="ViT preset (vit models)")
    p.add_argument("--cnn-model", default="cnn_resnet8_fmnist", help="CNN preset (vit models)")
    p.add_argument("--vit-recipe", default=VIT_RECIPE, help="vit train flags for the ViT")
    p.add_argument("--cnn-recipe", default=CNN_RECIPE, help="vit train flags for the CNN")
    p.add_argument("--classes", help="only these class folders (comma-separated names)")
    p.add_argument("--vit-init", help="also fine-tune the ViT from this model file or folder")
    p.add_argument("--cnn-init", help="also fine-tune the CNN from this model file")
    p.add_argument("--vit-ft-recipe", default=VIT_FT_RECIPE, help="vit train flags, ViT fine-tuning")
    p.add_argument("--cnn-ft-recipe", default=CNN_FT_RECIPE, help="vit train flags, CNN fine-tuning")
    p.add_argument("--mean", help="normalization mean(s) for both models "
                                  "(default: Fashion-MNIST's 0.286 on the default data, else 0.5)")
    p.add_argument("--std", help="normalization std(s) (default: 0.353 on Fashion-MNIST, else 0.5)")
    p.add_argument("--threads", type=int, default=0, help="compute threads (0: all cores)")
    p.add_argument("--quick", action="store_true",
                   help="about 5 minutes on 2 cores: the --quick defaults above (explicit "
                        "flags still win)")
    p.add_argument("--keep-models", action="store_true", help="keep every cell's model file")
    p.add_argument("--vit", default=os.path.join(ROOT, "build", "release", "tools", "vit"),
                   help="the vit executable")
    args = p.parse_args()
    # Flags left unset take the --quick or the full default: argparse has filled in whatever
    # was given, under any abbreviation it accepts.
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        args.sizes = sorted(set(int(s) for s in args.sizes.split(",")))
    except ValueError:
        fail(f"--sizes must be comma-separated integers, got '{args.sizes}'")
    if not args.sizes or args.sizes[0] <= 0:
        fail("--sizes must be positive")
    for name in ("seeds", "epochs", "min_steps", "steps", "batch_size"):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be positive")
    default_data = os.path.abspath(args.data) == os.path.join(FMNIST, "train")
    if args.mean is None:
        args.mean = "0.286" if default_data else "0.5"
    if args.std is None:
        args.std = "0.353" if default_data else "0.5"
    return args


def class_subset(args, folder, name):
    """A folder of links to the --classes sub-folders of `folder`, in --out."""
    if not args.classes:
        return folder
    wanted = args.classes.split(",")
    linked = os.path.join(args.out, "classes", name)
    os.makedirs(linked, exist_ok=True)
    for c in wanted:
        target = os.path.join(os.path.abspath(folder), c)
        if not os.path.isdir(target):
            fail(f"'{target}': no such class folder (--classes)")
        link = os.path.join(linked, c)
        if not os.path.lexists(link):
            os.symlink(target, link)
    extra = set(os.listdir(linked)) - set(wanted)
    if extra:
        fail(f"'{linked}' holds other classes ({', '.join(sorted(extra))}); give another --out")
    return linked


def summarize(args, rows, settings):
    kinds = [k for k, _, _ in LINES if any(r["model"] == k for r in rows)]
    rows = [r for r in rows if r["size"] in args.sizes and r["seed"] < args.seeds]
    stats = {}
    for kind in kinds:
        for size in args.sizes:
            accs = [r["test_acc"] for r in rows if r["model"] == kind and r["size"] == size]
            if accs:
                stats[kind, size] = mean_sd(accs)
    first = {k: next((r for r in rows if r["model"] == k), None) for k in kinds}

    lines = ["# ViT vs CNN across training-set sizes", ""]
    lines.append(f"Data: `{args.data}` (stratified subsets), test: `{args.test_data}` "
                 f"(all of it). Budget: {settings['budget_rule']}. Seeds: {args.seeds}.")
    lines.append("")
    if args.classes:
        lines += [f"Classes: {args.classes.replace(',', ', ')}.", ""]
    labels = {k: label for k, label, _ in LINES}
    for kind in kinds:
        r = first[kind]
        if r:
            init = settings.get(kind.replace("_ft", "") + "_init") if kind.endswith("_ft") else None
            lines.append(f"- {labels[kind]}: `{r['preset']}`, {int(r['parameters']):,} parameters, "
                         f"{float(r['flops_per_image']) / 1e6:.1f} MFLOP per image; recipe "
                         f"`{settings[kind + '_recipe']}`" + (f"; from `{init}`" if init else ""))
    others = [k for k in kinds if k not in ("vit", "cnn")]
    lines += ["", "| images | ViT test acc. (%) | CNN test acc. (%) | " +
              "".join(f"{labels[k]} (%) | " for k in others) + "ViT − CNN (points) | ahead |" +
              "".join(f" {labels[k]} − CNN |" for k in others),
              "|---:|---:|---:|" + "---:|" * len(others) + "---:|---|" + "---:|" * len(others)]

    def fmt(s):
        if s is None:
            return "—"
        mean, sd, n = s
        return f"{100 * mean:.2f}" + ("" if math.isnan(sd) else f" ± {100 * sd:.2f}") + \
            ("" if n == args.seeds else f" (n={n})")
    crossings, last_sign = [], None
    for size in args.sizes:
        v, c = stats.get(("vit", size)), stats.get(("cnn", size))
        diff, ahead = "—", "—"
        if v and c:
            d = v[0] - c[0]
            diff = f"{100 * d:+.2f}"
            spread = max(0.0 if math.isnan(v[1]) else v[1], 0.0 if math.isnan(c[1]) else c[1])
            ahead = "ViT" if d > 0 else "CNN" if d < 0 else "tie"
            if spread > 0 and abs(d) <= spread:
                ahead += " (within one s.d.)"
            sign = d > 0
            if last_sign is not None and sign != last_sign:
                crossings.append(size)
            last_sign = sign
        extra = "".join(f" {fmt(stats.get((k, size)))} |" for k in others)
        gains = "".join(
            f" {100 * (stats[k, size][0] - c[0]):+.2f} |" if c and (k, size) in stats else " — |"
            for k in others)
        lines.append(f"| {size:,} | {fmt(v)} | {fmt(c)} |{extra} {diff} | {ahead} |{gains}")
    both = [s for s in args.sizes if ("vit", s) in stats and ("cnn", s) in stats]
    lines.append("")
    if both:
        vit_ahead = [s for s in both if stats["vit", s][0] > stats["cnn", s][0]]
        if not vit_ahead:
            lines.append(f"The CNN is ahead at every size measured ({both[0]:,} to {both[-1]:,} "
                         "images): the curves do not cross in this range.")
        elif len(vit_ahead) == len(both):
            lines.append("The ViT is ahead at every size measured.")
        else:
            lines.append("The lead changes between sizes: " + ", ".join(
                f"{s:,}" for s in crossings) + " (the first size after each change).")
        gaps = [100 * (stats["vit", s][0] - stats["cnn", s][0]) for s in both]
        lines.append(f"ViT − CNN goes from {gaps[0]:+.2f} points at {both[0]:,} images to "
                     f"{gaps[-1]:+.2f} at {both[-1]:,}.")
    lines.append("")
    lines.append("Mean ± sample standard deviation over seeds; each seed draws its own subset "
                 "and initialisation. Per-cell numbers: `cells.csv`; commands and versions: "
                 "`run.json`.")
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return stats


def plot(args, stats):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for kind, label, marker in LINES:
        sizes = [s for s in args.sizes if (kind, s) in stats]
        if not sizes:
            continue
        means = [100 * stats[kind, s][0] for s in sizes]
        sds = [0 if math.isnan(stats[kind, s][1]) else 100 * stats[kind, s][1] for s in sizes]
        ax.errorbar(sizes, means, yerr=sds, marker=marker, capsize=4, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("training images (stratified subset)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"ViT vs CNN on {args.data_name}"
                 f" ({args.seeds} seed{'s' if args.seeds > 1 else ''}, ±1 s.d.)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "accuracy.png"))
    plt.close(fig)


def main():
    args = parse_args()
    check_tools(args.vit)
    # The plot's title names the data set (the folder above the training folder) before a class
    # selection replaces args.data with a folder of links.
    args.data_name = os.path.basename(os.path.dirname(os.path.abspath(args.data)))
    if args.classes:
        args.data_name += f", {len(args.classes.split(','))} classes"
    args.data = class_subset(args, args.data, "train")
    args.test_data = class_subset(args, args.test_data, "test")
    for init in (args.vit_init, args.cnn_init):
        if init and not os.path.exists(init):
            fail(f"'{init}': no such model file or folder")
    train_counts = count_images(args.vit, args.data)
    test_counts = count_images(args.vit, args.test_data)
    if set(train_counts) != set(test_counts):
        fail(f"'{args.test_data}' has other class folders than '{args.data}'")
    total = args.total = sum(train_counts.values())

    if args.budget == "steps":
        rule = f"{args.steps} optimizer steps per cell (batch {args.batch_size})"
    else:
        rule = (f"{args.epochs} epochs per cell, at least {args.min_steps} optimizer steps "
                f"(batch {args.batch_size})")
    settings = {"data": os.path.abspath(args.data), "test_data": os.path.abspath(args.test_data),
                "sizes": args.sizes, "seeds": args.seeds, "budget": args.budget,
                "budget_rule": rule, "epochs": args.epochs, "min_steps": args.min_steps,
                "steps": args.steps, "batch_size": args.batch_size, "vit_model": args.vit_model,
                "cnn_model": args.cnn_model, "vit_recipe": args.vit_recipe,
                "cnn_recipe": args.cnn_recipe, "mean": args.mean, "std": args.std,
                "classes": args.classes, "vit_init": args.vit_init, "cnn_init": args.cnn_init,
                "vit_ft_recipe": args.vit_ft_recipe, "cnn_ft_recipe": args.cnn_ft_recipe}
    results = Results(args.out, args.vit, settings)
    done = results.done()

    models = [("vit", args.vit_model, args.vit_recipe, None),
              ("cnn", args.cnn_model, args.cnn_recipe, None)]
    if args.vit_init:
        models.append(("vit_ft", args.vit_model, args.vit_ft_recipe, os.path.abspath(args.vit_init)))
    if args.cnn_init:
        models.append(("cnn_ft", args.cnn_model, args.cnn_ft_recipe, os.path.abspath(args.cnn_init)))
    todo = [(size, seed, m) for size in args.sizes for seed in range(args.seeds) for m in models
            if (m[0], size, seed) not in done]
    print(f"compare: {total} training images in {len(train_counts)} classes; "
          f"{len(todo)} cells to run, {len(done)} already done; results in {args.out}")
    for i, (size, seed, (kind, preset, recipe, init)) in enumerate(todo, 1):
        subset = min(size, total)
        print(f"[{i}/{len(todo)}] {kind} {preset}, {subset} images, seed {seed} ...",
              end="", flush=True)
        row, commands = train_and_eval(args, kind, preset, recipe, size, subset, seed, init)
        row["size"] = size
        print(f" test acc {100 * row['test_acc']:.2f}%, {row['train_seconds']:.0f}s, "
              f"{row['images_per_second']:.0f} img/s", flush=True)
        results.add(row, f"{kind}_{size}_seed{seed}", commands)
        plot(args, summarize(args, results.rows, settings))

    results.save()
    plot(args, summarize(args, results.rows, settings))
    print(f"compare: wrote {results.path}, {os.path.join(args.out, 'summary.md')}, "
          f"{os.path.join(args.out, 'accuracy.png')}")
    with open(os.path.join(args.out, "summary.md")) as f:
        print(f.read())


if __name__ == "__main__":
    main()
