#!/usr/bin/env bash
# tools/compare.py end to end on the committed stripes folder, tiny models and budgets: it
# writes the CSV, the Markdown table and the PNG, resumes without recomputing finished cells,
# refuses to mix settings in one results folder, and names bad input.
# usage: test_compare.sh path/to/vit path/to/tools path/to/tests/fixtures
set -u
vit=$1
tools=$2
data=$3/stripes
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
ok() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL: $*"; }

vit_recipe="--img-size 16 --embed-dim 32 --depth 2 --num-heads 2 --lr 3e-3 --crop none"
# AdamW as the test was written for, not the CNN preset's own SGD recipe.
cnn_recipe="--img-size 16 --lr 3e-3 --crop none --opt adamw --weight-decay 0.05 --hflip 0"
compare=("$tools/compare.py" --vit "$vit" --data "$data/train" --test-data "$data/val"
         --sizes 30,120 --seeds 2 --batch-size 15 --epochs 2 --min-steps 8 --mean 0.5 --std 0.5
         --vit-model vit_fmnist_patch4 --vit-recipe "$vit_recipe" --cnn-recipe "$cnn_recipe")

"${compare[@]}" --out "$tmp/r" >"$tmp/out" 2>&1 && ok || { fail "compare failed"; tail -5 "$tmp/out"; }
rows=$(($(wc -l <"$tmp/r/cells.csv") - 1))
[ "$rows" -eq 8 ] && ok || fail "cells.csv has $rows rows, want 8 (2 models x 2 sizes x 2 seeds)"
/usr/bin/python3 - "$tmp/r/cells.csv" <<'PY' && ok || fail "cells.csv content"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
assert {r["model"] for r in rows} == {"vit", "cnn"}
assert {int(r["size"]) for r in rows} == {30, 120}
for r in rows:
    assert 0 <= float(r["test_acc"]) <= 1 and float(r["test_loss"]) > 0, r
    assert int(r["parameters"]) > 0 and float(r["flops_per_image"]) > 0, r
    assert int(r["steps"]) >= 8, r  # the --min-steps floor
# 120 images: all of the folder; the CNN, with its locality, should learn stripes.
cnn = [float(r["test_acc"]) for r in rows if r["model"] == "cnn" and r["size"] == "120"]
assert min(cnn) >= 0.6, cnn
PY
grep -q "| 120 |" "$tmp/r/summary.md" && grep -q "ahead" "$tmp/r/summary.md" && ok ||
  fail "summary.md lacks the table"
grep -Eq "± [0-9]" "$tmp/r/summary.md" && ok || fail "summary.md lacks standard deviations"
[ "$(head -c 8 "$tmp/r/accuracy.png" | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ] && ok ||
  fail "accuracy.png is not a PNG"
grep -q '"vit_info"' "$tmp/r/run.json" && grep -q '"train"' "$tmp/r/run.json" && ok ||
  fail "run.json lacks versions or commands"

# Transfer lines: --classes keeps two of the three class folders; the ViT is fine-tuned from a
# hub checkpoint folder, the CNN from a model file of the run above (both heads re-initialised).
"${compare[@]}" --out "$tmp/k" --sizes 120 --seeds 1 --keep-models >"$tmp/out" 2>&1 ||
  { fail "compare --keep-models failed"; tail -5 "$tmp/out"; }
"${compare[@]}" --out "$tmp/t" --sizes 30 --seeds 1 --classes diagonal,vertical \
  --vit-init "$3/hub/timm_token" --cnn-init "$tmp/k/cells/cnn_120_seed0.safetensors" \
  --vit-ft-recipe "--lr 1e-3 --crop none" --cnn-ft-recipe "--lr 1e-3 --crop none" >"$tmp/out" 2>&1 && ok ||
  { fail "compare with transfer lines failed"; tail -5 "$tmp/out"; }
/usr/bin/python3 - "$tmp/t" <<'PY' && ok || fail "transfer lines: cells or summary"
import csv, glob, sys
out = sys.argv[1]
rows = list(csv.DictReader(open(out + "/cells.csv")))
assert sorted(r["model"] for r in rows) == ["cnn", "cnn_ft", "vit", "vit_ft"], rows
log = open(glob.glob(out + "/cells/vit_ft_30_seed0.train.log")[0]).read()
assert "--init" in log and "the head is re-initialised" in log, log[:300]
summary = open(out + "/summary.md").read()
assert "ViT, pretrained (%)" in summary and "CNN, pretrained − CNN" in summary, summary
assert "Classes: diagonal, vertical." in summary, summary
PY
"${compare[@]}" --out "$tmp/t2" --classes diagonal,spiral >"$tmp/out" 2>&1
grep -q "spiral': no such class folder (--classes)" "$tmp/out" && ok || fail "an unknown --classes name"

# Resume: nothing left to do; one more seed runs only the new cells.
"${compare[@]}" --out "$tmp/r" >"$tmp/out" 2>&1 && grep -q "0 cells to run, 8 already done" "$tmp/out" && ok ||
  fail "a finished run was not resumed as done"
"${compare[@]}" --out "$tmp/r" --seeds 3 >"$tmp/out" 2>&1 && grep -q "4 cells to run, 8 already done" "$tmp/out" && ok ||
  fail "a third seed did not run exactly 4 new cells"
[ $(($(wc -l <"$tmp/r/cells.csv") - 1)) -eq 12 ] && ok || fail "cells.csv does not have 12 rows"

# --quick leaves every flag given alone, under any abbreviation argparse accepts (--size, --see,
# --epoch, --min-step), and a size above the folder's count trains on the whole folder with that
# folder's steps per epoch: 120 images at batch 15 are 8 steps, so --min-steps 20 means 3 epochs.
"$tools/compare.py" --vit "$vit" --data "$data/train" --test-data "$data/val" --quick --size 1000 \
  --see 2 --epoch 1 --min-step 20 --batch-size 15 --mean 0.5 --std 0.5 --vit-model vit_fmnist_patch4 \
  --vit-recipe "$vit_recipe" --cnn-recipe "$cnn_recipe" --out "$tmp/q" >"$tmp/out" 2>&1 && ok ||
  { fail "compare --quick with abbreviations failed"; tail -5 "$tmp/out"; }
/usr/bin/python3 - "$tmp/q/cells.csv" <<'PY' && ok || fail "--quick overrode given flags, or the epochs ignore the folder's size"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
assert len(rows) == 4, rows  # 1 size x 2 seeds x 2 models
for r in rows:
    assert (r["size"], r["epochs"], r["steps"]) == ("1000", "3", "24"), r
PY

# Other settings in the same folder, bad input.
"${compare[@]}" --out "$tmp/r" --epochs 3 >"$tmp/out" 2>&1
[ $? -eq 1 ] && grep -q "holds a run with other settings (epochs)" "$tmp/out" && ok || fail "settings change not refused"
"$tools/compare.py" --vit "$vit" --data "$tmp/none" --out "$tmp/x" >"$tmp/out" 2>&1
[ $? -eq 1 ] && grep -q "'$tmp/none': no such folder" "$tmp/out" && ok || fail "missing data folder"
"$tools/compare.py" --vit "$vit" --data "$data/train" --test-data "$data/val" --sizes 10,abc --out "$tmp/x" >"$tmp/out" 2>&1
[ $? -eq 1 ] && grep -q "sizes must be comma-separated integers" "$tmp/out" && ok || fail "bad --sizes"
"$tools/compare.py" --vit "$tmp/no-vit" --out "$tmp/x" >"$tmp/out" 2>&1
[ $? -eq 1 ] && grep -q "no vit executable" "$tmp/out" && ok || fail "missing executable"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
