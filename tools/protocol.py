#!/usr/bin/python3
"""Choose a recipe on a validation split, then measure the chosen one on the test set once:
the protocol behind the README's accuracy figures.

  select  trains every --candidate (a name and vit train flags) for each seed on the training
          folder with a stratified validation split held out of it (--val-images, e.g. 5 000 of
          Fashion-MNIST's 60 000), and ranks the candidates by the validation accuracy of the
          final model, mean over seeds. The test folder is never read.
  final   trains one --recipe on the whole training folder for each seed and evaluates each
          final model once on --test-data; the wall time counts everything the user waits for
          (data loading, training, the evaluation). --budget-minutes marks a run that took
          longer.

Each writes to --out: cells.csv (one row per finished run; running the same command again
resumes), run.json (settings, commands, versions), cells/*.jsonl (the per-epoch curves),
summary.md (mean ± s.d. of the seeds) and curves.png.

    tools/protocol.py select --out runs/select-vit --model vit_fmnist_patch7 --seeds 1 \\
        --candidate pad2 "--epochs 30 --pad 2" --candidate none "--epochs 30 --crop none"
    tools/protocol.py final --out runs/final-vit --model vit_fmnist_patch7 --seeds 3 \\
        --recipe "--epochs 30 --pad 2" --budget-minutes 30
"""

import argparse
import json
import os
import time

from experiment import FMNIST, Results, check_tools, count_images, fail, mean_sd, run, VIT

FIELDS = ["candidate", "flags", "seed", "epochs", "metric", "acc", "best_acc", "best_epoch", "loss",
          "train_seconds", "eval_seconds", "wall_seconds", "images_per_second"]
INTS = ("seed", "epochs", "best_epoch")
FLOATS = ("acc", "best_acc", "loss", "train_seconds", "eval_seconds", "wall_seconds",
          "images_per_second")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("mode", choices=["select", "final"])
    p.add_argument("--out", required=True, help="results folder (resumed when it exists)")
    p.add_argument("--model", required=True, help="vit train --model: the preset")
    p.add_argument("--candidate", nargs=2, action="append", metavar=("NAME", "FLAGS"),
                   help="select: a recipe to try, as vit train flags")
    p.add_argument("--recipe", help="final: the chosen recipe, as vit train flags")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    p.add_argument("--data", default=os.path.join(FMNIST, "train"))
    p.add_argument("--test-data", default=os.path.join(FMNIST, "test"))
    p.add_argument("--val-images", type=int, default=5000,
                   help="select: images held out of --data, stratified, seeded by the seed")
    p.add_argument("--subset", type=int, default=0,
                   help="train on a stratified subset of this many images (0: all); with select "
                        "the validation images come out of it")
    p.add_argument("--budget-minutes", type=float, default=0.0,
                   help="final: mark runs whose wall time exceeds this (0: no budget)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--keep-models", action="store_true", help="keep each run's model file")
    p.add_argument("--vit", default=VIT)
    args = p.parse_args()
    if args.mode == "select" and not args.candidate:
        p.error("select needs at least one --candidate NAME FLAGS")
    if args.mode == "final" and args.recipe is None:
        p.error("final needs --recipe FLAGS")
    if args.mode == "final" and args.candidate:
        p.error("--candidate is for select; final takes one --recipe")
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    names = [name for name, _ in args.candidate or []]
    if len(set(names)) != len(names):
        p.error("two candidates share a name")
    return args


def one_run(args, name, flags, seed, images):
    """Trains (and, for final, evaluates) one candidate and seed; returns its row and commands."""
    stem = os.path.join(args.out, "cells", f"{name}_seed{seed}")
    model_file = stem + ".safetensors"
    train = [args.vit, "train", "--data", args.data, "--model", args.model, "--seed", str(seed),
             "--subset", str(args.subset), "--threads", str(args.threads), "--out", model_file,
             "--checkpoint", stem + ".ckpt.safetensors", "--log", stem + ".jsonl",
             "--no-progress"]
    if args.mode == "select":
        train += ["--val-split", f"{args.val_images / images:.10g}"]
    train += flags.split()
    if os.path.exists(stem + ".jsonl"):
        os.remove(stem + ".jsonl")  # a run interrupted earlier starts again
    start = time.monotonic()
    run(train, stem + ".train.log")
    train_seconds = time.monotonic() - start
    with open(stem + ".jsonl") as f:
        curve = [json.loads(line) for line in f if line.strip()]
    commands = [train]
    row = {"candidate": name, "flags": flags, "seed": seed, "epochs": len(curve),
           "train_seconds": round(train_seconds, 1),
           "images_per_second": round(sum(e["images_per_second"] * e["seconds"] for e in curve) /
                                      max(1e-9, sum(e["seconds"] for e in curve)), 1)}
    if args.mode == "select":
        # With --model-ema-decay the model file holds the average: rank by what is saved.
        metric = "ema_val" if "ema_val_acc" in curve[-1] else "val"
        acc = metric + "_acc"
        best = max(range(len(curve)), key=lambda i: curve[i][acc])
        row.update(metric=metric, acc=curve[-1][acc], loss=curve[-1][metric + "_loss"],
                   best_acc=curve[best][acc], best_epoch=best + 1, eval_seconds=0.0)
    else:
        evaluation = [args.vit, "eval", "--model", model_file, "--data", args.test_data, "--json",
                      "--threads", str(args.threads)]
        start = time.monotonic()
        run(evaluation, stem + ".eval.log")
        eval_seconds = time.monotonic() - start
        with open(stem + ".eval.log") as f:
            result = json.loads(f.read().splitlines()[-1])
        commands.append(evaluation)
        # The test set is read once, by the final model: no best epoch on it.
        row.update(metric="test", acc=result["top1"], loss=result["loss"], best_acc=float("nan"),
                   best_epoch=0, eval_seconds=round(eval_seconds, 1))
    row["wall_seconds"] = round(row["train_seconds"] + row["eval_seconds"], 1)
    for path in (model_file, stem + ".ckpt.safetensors"):
        if os.path.exists(path) and not (args.keep_models and path == model_file):
            os.remove(path)
    return row, commands


def summarize(args, rows):
    """summary.md: per candidate the mean ± s.d. over seeds, best first."""
    by = {}
    for r in rows:
        by.setdefault(r["candidate"], []).append(r)
    order = sorted(by, key=lambda c: -mean_sd([r["acc"] for r in by[c]])[0])
    metric = "validation" if args.mode == "select" else "test"
    lines = [f"# {args.mode}: {args.model} on {args.data}", "",
             (f"{args.val_images} training images held out, stratified (seeded by each run's seed); "
              "the accuracy of the final model on them. The test set was not read.")
             if args.mode == "select" else
             "Trained on the whole training folder; each final model evaluated once on "
             f"{args.test_data}. Wall time: training with its data loading, and the evaluation.",
             "", f"| candidate | seeds | {metric} top-1 % (mean ± s.d.) | per seed | epochs | "
             "wall minutes (max) | img/s |", "|---|---:|---:|---|---:|---:|---:|"]
    for c in order:
        rs = sorted(by[c], key=lambda r: r["seed"])
        mean, sd, n = mean_sd([100 * r["acc"] for r in rs])
        wall = max(r["wall_seconds"] for r in rs) / 60
        over = " (over budget)" if args.budget_minutes and wall > args.budget_minutes else ""
        sd_text = f" ± {sd:.2f}" if n > 1 else ""
        per_seed = ", ".join(f"{100 * r['acc']:.2f}" for r in rs)
        lines.append(f"| {c} | {n} | {mean:.2f}{sd_text} | {per_seed} | {rs[0]['epochs']} | "
                     f"{wall:.1f}{over} | {mean_sd([r['images_per_second'] for r in rs])[0]:.0f} |")
    recipes = args.candidate if args.mode == "select" else [("final", args.recipe)]
    lines += ["", "Recipes (vit train flags):", ""] + [f"- {n}: `{f}`" for n, f in recipes]
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return by


def plot(args, by):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    key = "val_acc" if args.mode == "select" else "train_acc"
    for i, c in enumerate(sorted(by)):
        for r in by[c]:
            with open(os.path.join(args.out, "cells", f"{c}_seed{r['seed']}.jsonl")) as f:
                curve = [json.loads(line) for line in f if line.strip()]
            x = [e["epoch"] for e in curve]
            label = c if r["seed"] == min(s["seed"] for s in by[c]) else None
            ax_loss.plot(x, [e["train_loss"] for e in curve], color=f"C{i % 10}", label=label)
            ax_acc.plot(x, [100 * e[key] for e in curve], color=f"C{i % 10}", label=label)
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel=("validation" if key == "val_acc" else "training")
               + " top-1 (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    fig.suptitle(f"{args.mode}: {args.model}, every seed")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "curves.png"), dpi=110)
    plt.close(fig)


def main():
    args = parse_args()
    check_tools(args.vit)
    counts = count_images(args.vit, args.data)
    total = sum(counts.values())
    images = min(args.subset, total) if args.subset else total
    if args.mode == "select" and not 0 < args.val_images < images:
        fail(f"--val-images {args.val_images} must be between 0 and the {images} training images")
    if args.mode == "final":
        test_counts = count_images(args.vit, args.test_data)
        if set(test_counts) != set(counts):
            fail(f"'{args.test_data}' has other class folders than '{args.data}'")
    candidates = args.candidate if args.mode == "select" else [("final", args.recipe)]
    settings = {"mode": args.mode, "model": args.model, "data": os.path.abspath(args.data),
                "subset": args.subset, "val_images": args.val_images if args.mode == "select" else 0,
                "test_data": os.path.abspath(args.test_data) if args.mode == "final" else "",
                "candidates": dict(candidates), "budget_minutes": args.budget_minutes}
    results = Results(args.out, args.vit, settings, free=("candidates", "budget_minutes"),
                      fields=FIELDS, key=("candidate", "seed"), ints=INTS, floats=FLOATS)
    done = results.done()
    for r in results.rows:  # a name keeps its flags: its finished runs would not be redone
        if dict(candidates).get(r["candidate"], r["flags"]) != r["flags"]:
            fail(f"'{args.out}' ran {r['candidate']} with \"{r['flags']}\"; give the new flags "
                 "another name")
    todo = [(n, f, s) for s in range(args.seeds) for n, f in candidates if (n, s) not in done]
    print(f"protocol {args.mode}: {args.model}, {images} training images"
          + (f" ({args.val_images} held out)" if args.mode == "select" else "")
          + f"; {len(todo)} runs to do, {len(done)} done; results in {args.out}", flush=True)
    for i, (name, flags, seed) in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {name}, seed {seed} ...", end="", flush=True)
        row, commands = one_run(args, name, flags, seed, images)
        print(f" {row['metric']} acc {100 * row['acc']:.2f}%, {row['wall_seconds'] / 60:.1f} min",
              flush=True)
        results.add(row, f"{name}_seed{seed}", commands)
        plot(args, summarize(args, results.rows))
    results.save()
    if results.rows:
        plot(args, summarize(args, results.rows))
        with open(os.path.join(args.out, "summary.md")) as f:
            print(f.read())


if __name__ == "__main__":
    main()
