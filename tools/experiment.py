"""What tools/compare.py and tools/attention_lab.py share: running vit, training and
evaluating one cell of a sweep, and a results folder that resumes (cells.csv, one row per
finished cell, and run.json, the settings, commands and versions), so that a sweep run again
with the same settings and --out recomputes nothing.
"""

import csv
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FMNIST = os.path.join(ROOT, "data", "fashion-mnist")
VIT = os.path.join(ROOT, "build", "release", "tools", "vit")
PROG = [os.path.splitext(os.path.basename(sys.argv[0]))[0]]  # the prefix of every message

# A cell's row; integer and float columns are read back as such.
FIELDS = ["model", "preset", "size", "seed", "epochs", "steps", "test_acc", "test_loss",
          "train_acc", "train_seconds", "images_per_second", "parameters", "flops_per_image"]
INTS = ("size", "seed", "epochs", "steps", "parameters")
FLOATS = ("test_acc", "test_loss", "train_acc", "train_seconds", "images_per_second",
          "flops_per_image")


def fail(message):
    print(f"{PROG[0]}: {message}", file=sys.stderr)
    sys.exit(1)


def run(cmd, log_path):
    """Runs a vit command; its output goes to log_path. Exits the script if it fails."""
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        with open(log_path) as log:
            tail = log.read().strip().splitlines()[-5:]
        fail(f"'{' '.join(cmd[:2])}' failed (exit {proc.returncode}); see {log_path}:\n  " +
             "\n  ".join(tail))


def check_tools(vit):
    """Before hours of training, not after: matplotlib and the vit executable are there."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        fail(f"{sys.executable} has no matplotlib: run tools/install-deps.sh (python3-matplotlib) "
             "and start this script with Debian's /usr/bin/python3")
    if not os.access(vit, os.X_OK):
        fail(f"'{vit}': no vit executable (build it: cmake --workflow --preset release)")


def count_images(vit, folder):
    """Images per class folder, as vit train lists them: `vit folder` is the one place that
    knows the image extensions and skips hidden entries."""
    if not os.path.isdir(folder):
        hint = " (prepare it: python3 datasets/prepare_fashion_mnist.py data/fashion-mnist)" \
            if folder.startswith(FMNIST) else ""
        fail(f"'{folder}': no such folder{hint}")
    proc = subprocess.run([vit, "folder", folder], capture_output=True, text=True)
    if proc.returncode != 0:
        fail(proc.stderr.strip().removeprefix("vit: "))
    return {c["name"]: c["images"] for c in json.loads(proc.stdout)["classes"]}


def cell_epochs(args, size):
    """Epochs and steps per epoch of a cell of `size` images under the budget rule."""
    steps_per_epoch = size // args.batch_size
    if steps_per_epoch == 0:
        fail(f"size {size} is smaller than --batch-size {args.batch_size}")
    if args.budget == "steps":
        return math.ceil(args.steps / steps_per_epoch), steps_per_epoch
    return max(args.epochs, math.ceil(args.min_steps / steps_per_epoch)), steps_per_epoch


def train_and_eval(args, kind, preset, recipe, size, images, seed, init=None):
    """One cell: `size` names it, `images` (the size clamped to the folder) is trained on, with
    `recipe` (vit train flags, a string). Returns its row and the two commands."""
    cells = os.path.join(args.out, "cells")
    stem = os.path.join(cells, f"{kind}_{size}_seed{seed}")
    model_file, ckpt = stem + ".safetensors", stem + ".ckpt.safetensors"
    epochs, per_epoch = cell_epochs(args, images)
    subset = images if images < args.total else 0  # 0: the whole folder
    # From scratch: the preset and our normalization; fine-tuned: the checkpoint's model and
    # preprocessing.
    model = ["--init", init] if init else ["--model", preset, "--mean", args.mean, "--std", args.std]
    train = [args.vit, "train", "--data", args.data] + model + [
             "--subset", str(subset), "--seed", str(seed), "--epochs", str(epochs),
             "--batch-size", str(args.batch_size), "--warmup-epochs", f"{0.05 * epochs:.4g}",
             "--threads", str(args.threads), "--out", model_file, "--checkpoint", ckpt,
             "--log", stem + ".jsonl", "--no-progress"] + recipe.split()
    if os.path.exists(stem + ".jsonl"):
        os.remove(stem + ".jsonl")  # a cell interrupted earlier starts again
    start = time.monotonic()
    run(train, stem + ".train.log")
    seconds = time.monotonic() - start
    with open(stem + ".jsonl") as f:
        epochs_log = [json.loads(line) for line in f if line.strip()]
    evaluation = [args.vit, "eval", "--model", model_file, "--data", args.test_data, "--json",
                  "--threads", str(args.threads)]
    if getattr(args, "test_subset", 0):  # a quick run's stratified share of the test folder
        evaluation += ["--subset", str(args.test_subset)]
    run(evaluation, stem + ".eval.log")
    with open(stem + ".eval.log") as f:
        result = json.loads(f.read().splitlines()[-1])
    if not args.keep_models:
        os.remove(model_file)
    if os.path.exists(ckpt):
        os.remove(ckpt)
    trained = sum(e["seconds"] for e in epochs_log)
    seen = sum(e["images_per_second"] * e["seconds"] for e in epochs_log)
    return {"model": kind, "preset": preset, "size": size, "seed": seed, "epochs": epochs,
            "steps": epochs * per_epoch, "test_acc": result["top1"], "test_loss": result["loss"],
            "train_acc": epochs_log[-1]["train_acc"], "train_seconds": round(seconds, 1),
            "images_per_second": round(seen / trained, 1) if trained > 0 else 0,
            "parameters": result["parameters"], "flops_per_image": result["flops_per_image"]}, \
        [train, evaluation]


def versions(vit):
    def output(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT).stdout.strip()
        except OSError:
            return ""
    import matplotlib
    return {"vit_info": output([vit, "info"]),
            "git_commit": output(["git", "rev-parse", "HEAD"]),
            "python": platform.python_version(), "matplotlib": matplotlib.__version__,
            "machine": platform.machine(), "cpus": os.cpu_count()}


def mean_sd(values):
    """(mean, sample s.d. or NaN for one value, n)."""
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return statistics.mean(values), sd, len(values)


class Table:
    """A CSV of rows, one per finished cell, that a resumed run reads back; `key` names the
    columns that identify a cell, `ints` and `floats` those read back as numbers."""

    def __init__(self, path, fields, key, ints=(), floats=(), results=None):
        self.path, self.fields, self.key, self.results = path, fields, key, results
        self.rows = []
        if os.path.exists(path):
            with open(path) as f:
                for r in csv.DictReader(f):
                    for k in r:
                        r[k] = int(r[k]) if k in ints else float(r[k]) if k in floats else r[k]
                    self.rows.append(r)
        else:
            with open(path, "w", newline="") as f:
                csv.DictWriter(f, fields).writeheader()

    def done(self):
        return {tuple(r[k] for k in self.key) for r in self.rows}

    def add(self, row, name, commands):
        """Appends a finished cell; its commands go to run.json (rewritten atomically)."""
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow(row)
        self.rows.append(row)
        if self.results:
            self.results.record["cells"][name] = commands
            self.results.record["cell_run"][name] = len(self.results.record["runs"]) - 1
            self.results.save()


class Results(Table):
    """A results folder: cells.csv (a Table of FIELDS rows) and run.json with the settings, the
    commands of every cell, the versions at every start and which start ran each cell; more
    tables with table(). Opening a folder that holds a run with other settings (but those in
    `free`, which may change) is an error. `fields`, `key`, `ints` and `floats` describe the
    rows of cells.csv (default: a sweep's FIELDS, one row per model, size and seed)."""

    def __init__(self, out, vit, settings, free=("sizes", "seeds", "budget_rule"), fields=FIELDS,
                 key=("model", "size", "seed"), ints=INTS, floats=FLOATS):
        self.out = out
        self.run_file = os.path.join(out, "run.json")
        os.makedirs(os.path.join(out, "cells"), exist_ok=True)
        previous = {}
        if os.path.exists(self.run_file):
            with open(self.run_file) as f:
                previous = json.load(f)
            changed = [k for k in settings if k not in free
                       and previous.get("settings", {}).get(k) != settings[k]]
            if changed:
                fail(f"'{out}' holds a run with other settings ({', '.join(changed)}); "
                     "give another --out to start a new one")
        now = datetime.datetime.now().isoformat()
        # Every start of the run (a resumed run may continue on another machine), and which
        # start finished each cell: times from different machines are not comparable.
        runs = previous.get("runs") or ([{"started": previous["started"],
                                          "versions": previous.get("versions", {})}]
                                        if previous.get("started") else [])
        runs = runs + [{"started": now, "versions": versions(vit)}]
        self.record = {"settings": settings, "command": [sys.executable] + sys.argv,
                       "started": previous.get("started", now), "versions": runs[-1]["versions"],
                       "runs": runs, "cells": previous.get("cells", {}),
                       "cell_run": previous.get("cell_run", {})}
        super().__init__(os.path.join(out, "cells.csv"), fields, key, ints, floats, self)

    def table(self, name, fields, key, ints=(), floats=()):
        return Table(os.path.join(self.out, name), fields, key, ints, floats, self)

    def save(self):
        with open(self.run_file + ".tmp", "w") as f:
            json.dump(self.record, f, indent=1)
        os.replace(self.run_file + ".tmp", self.run_file)
