#!/usr/bin/env bash
# tools/attention_lab.py end to end on the committed stripes folder, with tiny models, budgets
# and a two-point speed sweep: every variant trains, is benchmarked and swept; the CSVs, the
# Markdown and the PNGs agree; a second run resumes without recomputing; bad flags are named.
# usage: test_attention_lab.sh path/to/vit path/to/tools path/to/tests/fixtures
set -u
vit=$1
tools=$2
data=$3/stripes
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
ok() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL: $*"; }

lab=("$tools/attention_lab.py" --vit "$vit" --data "$data/train" --test-data "$data/val"
     --sizes 48 --seeds 2 --batch-size 16 --epochs 1 --min-steps 3 --mean 0.5 --std 0.5
     --model-flags "--img-size 16 --embed-dim 16 --depth 1 --num-heads 2" --vit-recipe "--lr 3e-3 --crop none"
     --cnn-recipe "--img-size 16 --crop none" --sweep-model vit_fmnist_patch4
     --sweep-img-size 16 --sweep-patches 8,4 --sweep-flags "--embed-dim 16 --depth 1 --num-heads 2"
     --bench-iters 1 --bench-repeats 1 --test-subset 30)

"${lab[@]}" --out "$tmp/r" >"$tmp/out" 2>&1 && ok || { fail "the lab failed"; tail -5 "$tmp/out"; }
/usr/bin/python3 - "$tmp/r" <<'PY' && ok || fail "the lab's outputs disagree"
import csv, json, os, re, statistics, sys
out = sys.argv[1]
cells = list(csv.DictReader(open(os.path.join(out, "cells.csv"))))
variants = list(csv.DictReader(open(os.path.join(out, "variants.csv"))))
speed = list(csv.DictReader(open(os.path.join(out, "speed.csv"))))
names = ["baseline", "additive", "relu", "sigmoid", "sincos", "nopos", "window1", "window2",
         "linformer", "performer", "cnn"]
assert sorted(r["model"] for r in cells) == sorted(names * 2), [r["model"] for r in cells]
assert sorted(r["variant"] for r in variants) == sorted(names)
# 7 sweep lines (the window both as halo blocks and masked) x 2 grids (N = 5 and 17) x
# inference and training
assert len(speed) == 28 and {int(r["tokens"]) for r in speed} == {5, 17}, speed
assert sum(r["variant"] == "window2_mask" for r in speed) == 4, speed
for r in variants:
    assert float(r["train_images_per_second"]) > 0 and float(r["infer_images_per_second"]) > 0
    assert int(r["parameters"]) > 0 and float(r["train_peak_rss_mb"]) > 0
params = {r["variant"]: int(r["parameters"]) for r in variants}
assert params["additive"] > params["baseline"] and params["linformer"] > params["baseline"]
assert params["nopos"] < params["baseline"] and params["window1"] == params["baseline"]
# The summary's accuracy is the mean over the seeds of cells.csv, for every variant.
summary = open(os.path.join(out, "summary.md")).read()
labels = {"baseline": "softmax(q·kᵀ/√d)", "additive": "additive scores", "relu": "relu(s)/n",
          "sigmoid": "σ(s − log n)", "sincos": "fixed sine-cosine", "nopos": "no positions",
          "window1": "window R = 1", "window2": "window R = 2", "linformer": "Linformer K = 16",
          "performer": "Performer M = 64", "cnn": "CNN (ResNet)"}
for name, label in labels.items():
    line = next(l for l in summary.splitlines() if l.startswith("| " + label))
    mean = 100 * statistics.mean(float(r["test_acc"]) for r in cells if r["model"] == name)
    assert f"{mean:.2f}" in line, (name, mean, line)
assert "exponent" in summary and "faster than exact attention" in summary
assert "a stratified 30 of it" in summary  # --test-subset: every cell evaluated 30 images
for name in names:
    ev = json.loads(open(os.path.join(out, "cells", f"{name}_48_seed0.eval.log")).read().splitlines()[-1])
    assert ev["images"] == 30, (name, ev["images"])
for png in ("accuracy.png", "speed.png"):
    with open(os.path.join(out, png), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", png
PY

# A second run with the same settings resumes: nothing is trained or measured again.
"${lab[@]}" --out "$tmp/r" >"$tmp/out2" 2>&1 && ok || fail "the resumed lab failed"
grep -q "0 cells to run, 22 already done" "$tmp/out2" && ok || fail "the lab did not resume"
! grep -q "^lab: sweep" "$tmp/out2" && ok || fail "the resumed lab swept again"
# run.json keeps every start with its versions, and which start ran each cell.
/usr/bin/python3 - "$tmp/r/run.json" <<'PY' && ok || fail "run.json does not record both starts and each cell's"
import json, sys
r = json.load(open(sys.argv[1]))
assert len(r["runs"]) == 2 and all("vit_info" in x["versions"] for x in r["runs"]), r["runs"]
assert r["cell_run"] and set(r["cell_run"].values()) == {0}, r["cell_run"]
assert set(r["cell_run"]) == set(r["cells"]), (sorted(r["cell_run"]), sorted(r["cells"]))
PY
# Other settings in the same folder, and bad flags, are refused with one line.
"${lab[@]}" --out "$tmp/r" --epochs 2 >"$tmp/out3" 2>&1
[ $? -eq 1 ] && grep -q "holds a run with other settings (epochs)" "$tmp/out3" && ok ||
  fail "a changed setting was not refused"
"$tools/attention_lab.py" --vit "$vit" --variants baseline,flash >"$tmp/out4" 2>&1
[ $? -eq 1 ] && grep -q "^attention_lab: --variants: no variant 'flash'" "$tmp/out4" && ok ||
  fail "an unknown variant was not named"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
