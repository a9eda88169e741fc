#!/usr/bin/env bash
# vit train, eval and classify end to end on a small committed image folder (three classes of
# stripes), and their answers to bad input: exit codes, one-line errors naming the file or
# flag, and nothing already saved lost.
# usage: test_cli_model.sh path/to/vit path/to/tests/fixtures
set -u
vit=$1
fixtures=$2
data=$fixtures/stripes
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0

ok() { passed=$((passed + 1)); }
fail() { failed=$((failed + 1)); echo "FAIL: $*"; }

# run NAME WANT_CODE STDERR_REGEX -- ARGS...: exit code and (for errors) a one-line message.
run() {
  local name=$1 want=$2 err_re=$3
  shift 4
  "$vit" "$@" >"$tmp/out" 2>"$tmp/err" </dev/null
  local code=$?
  if [ "$code" -ne "$want" ]; then
    fail "$name: exit $code, want $want"; sed 's/^/  /' "$tmp/err" | head -5; return
  fi
  if [ -n "$err_re" ] && ! grep -Eq -e "$err_re" "$tmp/err"; then
    fail "$name: stderr does not match '$err_re'"; sed 's/^/  /' "$tmp/err" | head -5; return
  fi
  if [ "$want" -ne 0 ] && [ "$(grep -vc '^vit: warning' "$tmp/err")" -ne 1 ]; then
    fail "$name: the error is not one line"; sed 's/^/  /' "$tmp/err" | head -5; return
  fi
  ok
}

json_field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))$2)" "$1"; }
# metadata_ok FILE CODE: Python CODE, with the model file's metadata as the dict m, passes.
metadata_ok() {
  python3 -c "
import json, struct, sys
f = open(sys.argv[1], 'rb'); n = struct.unpack('<Q', f.read(8))[0]; m = json.loads(f.read(n))['__metadata__']
$2" "$1"
}

base=(--model vit_fmnist_patch4 --img-size 16 --embed-dim 32 --depth 2 --batch-size 16
      --crop none --seed 3 --no-progress)
small=("${base[@]}" --patch-size 4 --num-heads 2 --lr 3e-3 --warmup-epochs 0.5)

# --- training, evaluation, classification -------------------------------------------------
run "train" 0 "" -- train --data "$data/train" --val-data "$data/val" "${small[@]}" --epochs 6 \
  --out "$tmp/m.safetensors" --log "$tmp/log.jsonl"
[ -f "$tmp/m.safetensors" ] && ok || fail "train wrote no model"
[ -f "$tmp/m.ckpt.safetensors" ] && ok || fail "train wrote no checkpoint"
[ "$(wc -l <"$tmp/log.jsonl")" -eq 6 ] && ok || fail "log has not one line per epoch"
grep -q "epoch 6/6" "$tmp/out" && ok || fail "no end-of-epoch line"

run "eval --json" 0 "" -- eval --model "$tmp/m.safetensors" --data "$data/val" --json
cp "$tmp/out" "$tmp/eval.json"
top1=$(json_field "$tmp/eval.json" "['top1']")
python3 -c "import sys; sys.exit(0 if float('$top1') >= 0.9 else 1)" && ok || fail "validation top-1 $top1 < 0.9"
[ "$(json_field "$tmp/eval.json" "['images']")" -eq 60 ] && ok || fail "eval did not see 60 images"
if "$vit" info | grep -q 'cpu isa: avx512'; then  # oneDNN 2.6 runs bf16 on AVX-512 only
  run "eval --precision bf16" 0 "" -- eval --model "$tmp/m.safetensors" --data "$data/val" --json \
    --precision bf16
  cp "$tmp/out" "$tmp/eval_bf16.json"
  [ "$(json_field "$tmp/eval_bf16.json" "['precision']")" = "bf16" ] && ok || fail "eval --json lacks the precision"
  top1_bf16=$(json_field "$tmp/eval_bf16.json" "['top1']")
  python3 -c "import sys; sys.exit(0 if abs(float('$top1_bf16') - float('$top1')) <= 0.05 else 1)" \
    && ok || fail "bf16 top-1 $top1_bf16 is far from f32's $top1"
fi

run "eval text" 0 "" -- eval --model "$tmp/m.safetensors" --data "$data/val"
grep -q "top-1" "$tmp/out" && grep -q "confusion" "$tmp/out" && ok || fail "eval text lacks top-1 or confusion"
# A stratified subset: 30 of the 60 images, 10 of each class; another seed draws others.
run "eval --subset" 0 "" -- eval --model "$tmp/m.safetensors" --data "$data/val" --json --subset 30
python3 - "$tmp/out" <<'PY' && ok || fail "eval --subset 30 did not see 10 images of each class"
import json, sys
j = json.loads(open(sys.argv[1]).read().splitlines()[-1])
assert j["images"] == 30 and [sum(row) for row in j["confusion"]] == [10, 10, 10], j
PY
run "eval --subset -1" 2 "--subset must not be negative" -- eval --model "$tmp/m.safetensors" \
  --data "$data/val" --subset -1
run "eval --subset 2" 1 "subset 2 is smaller than the number of classes" -- eval \
  --model "$tmp/m.safetensors" --data "$data/val" --subset 2

run "classify --json" 0 "" -- classify --model "$tmp/m.safetensors" --json --top-k 2 \
  "$data/val/horizontal/000.png" "$data/val/vertical/000.png" "$data/val/diagonal/000.png"
cp "$tmp/out" "$tmp/classify.json"
classes=$(python3 -c "import json; print(' '.join(r['top_k'][0]['class'] for r in json.load(open('$tmp/classify.json'))))")
[ "$classes" = "horizontal vertical diagonal" ] && ok || fail "classify says '$classes'"
[ "$(python3 -c "import json; print(len(json.load(open('$tmp/classify.json'))[0]['top_k']))")" -eq 2 ] && ok || fail "--top-k 2 ignored"

run "classify a folder" 0 "" -- classify --model "$tmp/m.safetensors" --top-k 1 "$data/val/horizontal"
[ "$(grep -c '\.png$' "$tmp/out")" -eq 20 ] && ok || fail "classify of a folder did not list 20 images"

# The bundled models (the ViT is the default, no --model) name every sample image's class,
# which its file name carries.
samples=("$fixtures"/../../datasets/samples/*.png)
for model in "" "$fixtures/../../models/cnn_resnet8_fmnist.safetensors"; do
  run "classify with the bundled ${model:+CNN }model" 0 "" -- classify ${model:+--model "$model"} \
    --json --top-k 1 "${samples[@]}"
  cp "$tmp/out" "$tmp/bundled.json"
  python3 - "$tmp/bundled.json" <<'PY' && ok || fail "the bundled ${model:+CNN }model misclassifies a sample"
import json, os, sys
for r in json.load(open(sys.argv[1])):
    name = os.path.basename(r["image"]).rsplit("_", 1)[0]
    assert r["top_k"][0]["class"] == name, (r["image"], r["top_k"][0])
PY
done

# --- resume continues exactly ----------------------------------------------------------------
run "train 4 epochs" 0 "" -- train --data "$data/train" "${small[@]}" --epochs 4 --out "$tmp/a.safetensors"
run "train 2 of 4 epochs" 0 "stopped as asked" -- train --data "$data/train" "${small[@]}" --epochs 4 \
  --stop-after-epochs 2 --out "$tmp/b.safetensors"
[ ! -f "$tmp/b.safetensors" ] && ok || fail "a stopped run wrote its final model"
run "resume" 0 "" -- train --data "$data/train" --resume "$tmp/b.ckpt.safetensors" --no-progress --out "$tmp/b.safetensors"
"$vit" eval --model "$tmp/a.safetensors" --data "$data/val" --json >"$tmp/a.json"
"$vit" eval --model "$tmp/b.safetensors" --data "$data/val" --json >"$tmp/b.json"
[ "$(json_field "$tmp/a.json" "['loss']")" = "$(json_field "$tmp/b.json" "['loss']")" ] && ok ||
  fail "resumed run differs: $(json_field "$tmp/a.json" "['loss']") vs $(json_field "$tmp/b.json" "['loss']")"

# same_tensors A B: the two model files hold bit-identical tensors (metadata such as timings aside).
same_tensors() {
  python3 - "$1" "$2" <<'PY'
import json, struct, sys
def tensors(path):
    blob = open(path, "rb").read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    header.pop("__metadata__", None)
    data = blob[8 + n:]
    return {k: data[v["data_offsets"][0]:v["data_offsets"][1]] for k, v in header.items()}
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
sys.exit(0 if a.keys() == b.keys() and all(a[k] == b[k] for k in a) else 1)
PY
}

# --- resume takes the data selection and the recipe from the checkpoint ----------------------
# An uninterrupted run and one stopped after 2 of 4 epochs, then resumed with no recipe flags,
# end with bit-identical weights: with a subset, and with a validation split.
for select in "--subset 60" "--val-split 0.25"; do
  run "train 4 epochs ($select)" 0 "" -- train --data "$data/train" "${small[@]}" $select --epochs 4 \
    --out "$tmp/sel_a.safetensors"
  run "train 2 of 4 epochs ($select)" 0 "stopped as asked" -- train --data "$data/train" "${small[@]}" \
    $select --epochs 4 --stop-after-epochs 2 --out "$tmp/sel_b.safetensors"
  run "resume without the flags ($select)" 0 "" -- train --data "$data/train" --no-progress \
    --resume "$tmp/sel_b.ckpt.safetensors" --out "$tmp/sel_b.safetensors"
  same_tensors "$tmp/sel_a.safetensors" "$tmp/sel_b.safetensors" && ok ||
    fail "resumed run ($select) ends with other weights than the uninterrupted one"
done
run "resume: a contradicting --subset" 2 "--subset 30 contradicts the checkpoint's subset 0" -- train \
  --data "$data/train" --resume "$tmp/b.ckpt.safetensors" --subset 30 --out "$tmp/c.safetensors"
run "resume: a contradicting --val-split" 2 "--val-split 0.5 contradicts the checkpoint's val_split 0.25" \
  -- train --data "$data/train" --resume "$tmp/sel_b.ckpt.safetensors" --val-split 0.5 --out "$tmp/c.safetensors"
run "resume: a contradicting --lr" 2 "--lr 0.1 contradicts the checkpoint's lr 0.003" -- train \
  --data "$data/train" --resume "$tmp/b.ckpt.safetensors" --lr 0.1 --out "$tmp/c.safetensors"
run "resume: a contradicting --embed-dim" 2 "--embed-dim 64 contradicts the checkpoint's embed_dim 32" \
  -- train --data "$data/train" --resume "$tmp/b.ckpt.safetensors" --embed-dim 64 --out "$tmp/c.safetensors"
run "resume: a contradicting --model" 2 "--model vit_fmnist_patch7 \\(patch_size 7\\) contradicts the checkpoint's patch_size 4" \
  -- train --data "$data/train" --resume "$tmp/b.ckpt.safetensors" --model vit_fmnist_patch7 \
  --img-size 16 --embed-dim 32 --depth 2 --num-heads 2 --out "$tmp/c.safetensors"
# --- crop auto, the default: resolved from the run's epochs, kept as "auto" in the recipe -----
auto=(--model vit_fmnist_patch4 --img-size 16 --embed-dim 32 --depth 2 --batch-size 16 --seed 3
      --no-progress --patch-size 4 --num-heads 2)
run "train with the default crop" 0 "" -- train --data "$data/train" "${auto[@]}" --epochs 2 \
  --stop-after-epochs 1 --out "$tmp/auto.safetensors"
grep -q "augmentation: --crop auto for 2 epochs: no crop" "$tmp/out" && ok ||
  fail "crop auto was not resolved for 2 epochs: $(grep augmentation "$tmp/out")"
metadata_ok "$tmp/auto.ckpt.safetensors" "
a = json.loads(m['train_config'])['augment']
assert a['crop'] == 'auto' and a['pad'] == 4, a" && ok ||
  fail "the checkpoint's recipe does not keep crop auto"
run "resume: --pad alone contradicts crop auto" 2 "--pad 4 contradicts the checkpoint's augment.crop auto" \
  -- train --data "$data/train" --resume "$tmp/auto.ckpt.safetensors" --pad 4 --out "$tmp/c.safetensors"
run "resume crop auto" 0 "" -- train --data "$data/train" --resume "$tmp/auto.ckpt.safetensors" \
  --no-progress --out "$tmp/auto.safetensors"
grep -q "augmentation: --crop auto for 2 epochs: no crop" "$tmp/out" && ok ||
  fail "the resumed run resolved crop auto otherwise"
first=$(sed -n 's/.*kAutoPadFirstEpoch = \([0-9]*\).*/\1/p' "$fixtures/../../datasets/transforms.hpp")
run "a long run with the default crop" 0 "" -- train --data "$data/train" "${auto[@]}" \
  --epochs "$first" --stop-after-epochs 1 --out "$tmp/auto_long.safetensors"
grep -q "augmentation: --crop auto for $first epochs: pad by 2" "$tmp/out" && ok ||
  fail "crop auto did not pad for $first epochs: $(grep augmentation "$tmp/out")"
run "--pad alone is the pad crop" 0 "" -- train --data "$data/train" "${auto[@]}" --pad 2 \
  --epochs 1 --out "$tmp/pad.safetensors"
grep -Eq '"crop":"pad".*"pad":2' "$tmp/out" && ! grep -q "augmentation: --crop auto" "$tmp/out" &&
  ok || fail "--pad 2 alone did not give the pad crop: $(grep recipe "$tmp/out")"
run "--crop auto --pad 0" 0 "" -- train --data "$data/train" "${auto[@]}" --crop auto --pad 0 \
  --epochs 1 --out "$tmp/pad.safetensors"
run "--crop bad" 1 "--crop must be auto, none, pad or rrc, got 'big'" -- train --data "$data/train" \
  "${auto[@]}" --crop big --out "$tmp/pad.safetensors"
run "--auto-augment ta_wide" 0 "" -- train --data "$data/train" "${auto[@]}" --auto-augment ta_wide \
  --epochs 1 --out "$tmp/ta.safetensors"
metadata_ok "$tmp/ta.safetensors" "
a = json.loads(m['train_config'])['augment']
assert a['auto_augment'] == 'ta_wide', a" && ok || fail "the model's recipe does not name ta_wide"
run "--auto-augment bad" 1 "--auto-augment must be none or ta_wide, got 'rand'" -- train \
  --data "$data/train" "${auto[@]}" --auto-augment rand --out "$tmp/ta.safetensors"
run "resume: the same flags again" 0 "" -- train --data "$data/train" --resume "$tmp/b.ckpt.safetensors" \
  "${small[@]}" --epochs 4 --out "$tmp/c.safetensors"
# The folder changed under the checkpoint: other images, or another number of batches per epoch.
cp -r "$data/train" "$tmp/moving"
run "train 1 of 4 epochs on a copy" 0 "stopped as asked" -- train --data "$tmp/moving" "${small[@]}" \
  --epochs 4 --stop-after-epochs 1 --out "$tmp/m.safetensors"
mv "$tmp/moving/diagonal/001.png" "$tmp/moving/diagonal/001b.png"
run "resume on a folder with a renamed image" 1 "trained on other images than the folder now selects" \
  -- train --data "$tmp/moving" --resume "$tmp/m.ckpt.safetensors" --no-progress --out "$tmp/m.safetensors"
rm "$tmp/moving"/diagonal/0[0-2]*.png
run "resume on a folder with fewer images" 1 "batches per epoch, the data now gives" \
  -- train --data "$tmp/moving" --resume "$tmp/m.ckpt.safetensors" --no-progress --out "$tmp/m.safetensors"

# --- a preset's own recipe: every flag not given, a given flag over it, a resume keeps its own ---
run "the CNN preset's recipe" 0 "" -- train --data "$data/train" --model cnn_resnet8_fmnist --img-size 16 \
  --batch-size 16 --seed 3 --no-progress --epochs 2 --stop-after-epochs 1 --lr 0.05 \
  --out "$tmp/cnn_recipe.safetensors"
grep -q "recipe of the preset cnn_resnet8_fmnist, where no flag is given: --epochs" "$tmp/out" && ok ||
  fail "vit train did not print the preset's recipe"
metadata_ok "$tmp/cnn_recipe.ckpt.safetensors" "
r = json.loads(m['train_config'])
assert r['opt'] == 'sgd' and r['weight_decay'] == 5e-4 and r['augment']['hflip'] == 0.5, r
assert r['lr'] == 0.05 and r['epochs'] == 2, r  # the flags given
assert r['augment']['crop'] == 'pad' and r['augment']['pad'] == 2, r  # the preset's --pad alone" &&
  ok || fail "the CNN preset's recipe is not the one trained"
run "resume a preset's run" 0 "" -- train --data "$data/train" --resume "$tmp/cnn_recipe.ckpt.safetensors" \
  --no-progress --out "$tmp/cnn_recipe.safetensors"
! grep -q "recipe of the preset" "$tmp/out" && ok || fail "a resumed run took the preset's recipe"
python3 - "$vit" <<'PY' && ok || fail "vit models --json does not show the CNN preset's recipe"
import json, subprocess, sys
rows = [json.loads(l) for l in subprocess.check_output([sys.argv[1], "models", "--json"]).splitlines()]
cnn = next(r for r in rows if r["name"] == "cnn_resnet8_fmnist")
assert cnn["recipe"].startswith("--epochs "), cnn["recipe"]
PY

# --- the CNN baseline: same commands, same file format, exact resume -------------------------
# The flags the preset's own recipe would otherwise set, as the tests were written for AdamW.
cnn=(--model cnn_resnet8_fmnist --img-size 16 --batch-size 16 --crop none --seed 3 --no-progress
     --lr 3e-3 --warmup-epochs 0.5 --opt adamw --weight-decay 0.05 --hflip 0)
run "train a CNN" 0 "" -- train --data "$data/train" --val-data "$data/val" "${cnn[@]}" --epochs 4 \
  --out "$tmp/cnn.safetensors"
grep -q "model: resnet" "$tmp/out" && ok || fail "vit train does not name the CNN"
run "eval the CNN" 0 "" -- eval --model "$tmp/cnn.safetensors" --data "$data/val" --json
cp "$tmp/out" "$tmp/cnn.json"
[ "$(json_field "$tmp/cnn.json" "['arch']")" = "resnet" ] && ok || fail "eval --json lacks the arch"
top1=$(json_field "$tmp/cnn.json" "['top1']")
python3 -c "import sys; sys.exit(0 if float('$top1') >= 0.9 else 1)" && ok || fail "CNN validation top-1 $top1 < 0.9"
run "classify with the CNN" 0 "" -- classify --model "$tmp/cnn.safetensors" --json --top-k 1 \
  "$data/val/horizontal/001.png" "$data/val/vertical/001.png" "$data/val/diagonal/001.png"
cp "$tmp/out" "$tmp/cnn_classify.json"
classes=$(python3 -c "import json; print(' '.join(r['top_k'][0]['class'] for r in json.load(open('$tmp/cnn_classify.json'))))")
[ "$classes" = "horizontal vertical diagonal" ] && ok || fail "the CNN classifies as '$classes'"
python3 - "$tmp/cnn.safetensors" <<'PY' && ok || fail "the CNN file lacks torchvision's names"
import json, struct, sys
blob = open(sys.argv[1], "rb").read()
header = json.loads(blob[8:8 + struct.unpack("<Q", blob[:8])[0]])
for key in ("conv1.weight", "bn1.running_var", "layer2.0.downsample.0.weight", "layer3.0.bn2.bias", "fc.weight"):
    assert key in header, key
assert header["__metadata__"]["arch"] == "resnet"
PY
run "CNN 2 of 4 epochs" 0 "stopped as asked" -- train --data "$data/train" "${cnn[@]}" --epochs 4 \
  --stop-after-epochs 2 --out "$tmp/cnn_b.safetensors"
run "CNN resume" 0 "" -- train --data "$data/train" --resume "$tmp/cnn_b.ckpt.safetensors" --no-progress \
  --out "$tmp/cnn_b.safetensors"
run "CNN 4 epochs" 0 "" -- train --data "$data/train" "${cnn[@]}" --epochs 4 --out "$tmp/cnn_a.safetensors"
"$vit" eval --model "$tmp/cnn_a.safetensors" --data "$data/val" --json >"$tmp/cnn_a.json"
"$vit" eval --model "$tmp/cnn_b.safetensors" --data "$data/val" --json >"$tmp/cnn_b.json"
[ "$(json_field "$tmp/cnn_a.json" "['loss']")" = "$(json_field "$tmp/cnn_b.json" "['loss']")" ] && ok ||
  fail "resumed CNN differs (batch-norm running statistics?)"
run "ViT flag on a CNN" 2 "--patch-size does not apply to cnn_resnet8_fmnist" -- train --data "$data/train" \
  "${cnn[@]}" --patch-size 4
run "a ResNet's widths and depths" 0 "" -- train --data "$data/train" "${cnn[@]}" --widths 8,16,32 \
  --depths 1,2,1 --epochs 1 --out "$tmp/cnn_wd.safetensors"
metadata_ok "$tmp/cnn_wd.safetensors" "
c = json.loads(m['config'])
assert c['widths'] == [8, 16, 32] and c['depths'] == [1, 2, 1], c" && ok ||
  fail "--widths/--depths did not reach the model's config"
run "--widths on a ViT" 2 "--widths does not apply to vit_fmnist_patch4" -- train --data "$data/train" \
  "${small[@]}" --widths 8,16
run "--widths not integers" 2 "--widths: '8,a' is not a comma-separated list" -- train \
  --data "$data/train" "${cnn[@]}" --widths 8,a

# --- a ViT with a convolutional stem: whole images in, timm's ConvStem names, exact resume ---
stem=("${small[@]}" --stem-channels 8,16 --stem-strides 2,2)
run "train a conv-stem ViT" 0 "" -- train --data "$data/train" --val-data "$data/val" "${stem[@]}" \
  --epochs 6 --out "$tmp/stem.safetensors"
run "eval the conv-stem ViT" 0 "" -- eval --model "$tmp/stem.safetensors" --data "$data/val" --json
cp "$tmp/out" "$tmp/stem.json"
top1=$(json_field "$tmp/stem.json" "['top1']")
python3 -c "import sys; sys.exit(0 if float('$top1') >= 0.9 else 1)" && ok || fail "conv-stem validation top-1 $top1 < 0.9"
metadata_ok "$tmp/stem.safetensors" "
c, p = json.loads(m['config']), json.loads(m['preprocess'])
assert c['stem_channels'] == [8, 16] and c['stem_strides'] == [2, 2] and c['patch_size'] == 4, c
assert p['patch_size'] == 0, p  # whole images
" && ok || fail "the conv-stem file's config or preprocess"
python3 - "$tmp/stem.safetensors" <<'PY' && ok || fail "the conv-stem file lacks timm's ConvStem names"
import json, struct, sys
blob = open(sys.argv[1], "rb").read()
header = json.loads(blob[8:8 + struct.unpack("<Q", blob[:8])[0]])
for key in ("patch_embed.backbone.0.conv.weight", "patch_embed.backbone.1.bn.running_var",
            "patch_embed.backbone.2.conv.weight", "patch_embed.backbone.2.conv.bias"):
    assert key in header, key
assert "patch_embed.proj.weight" not in header
PY
run "classify with the conv-stem ViT" 0 "" -- classify --model "$tmp/stem.safetensors" --json --top-k 1 \
  "$data/val/horizontal/001.png" "$data/val/vertical/001.png" "$data/val/diagonal/001.png"
cp "$tmp/out" "$tmp/stem_classify.json"
classes=$(python3 -c "import json; print(' '.join(r['top_k'][0]['class'] for r in json.load(open('$tmp/stem_classify.json'))))")
[ "$classes" = "horizontal vertical diagonal" ] && ok || fail "the conv-stem ViT classifies as '$classes'"
run "conv stem 2 of 4 epochs" 0 "stopped as asked" -- train --data "$data/train" "${stem[@]}" --epochs 4 \
  --stop-after-epochs 2 --out "$tmp/stem_b.safetensors"
run "conv stem resume" 0 "" -- train --data "$data/train" --resume "$tmp/stem_b.ckpt.safetensors" \
  --no-progress --out "$tmp/stem_b.safetensors"
run "conv stem 4 epochs" 0 "" -- train --data "$data/train" "${stem[@]}" --epochs 4 --out "$tmp/stem_a.safetensors"
"$vit" eval --model "$tmp/stem_a.safetensors" --data "$data/val" --json >"$tmp/stem_a.json"
"$vit" eval --model "$tmp/stem_b.safetensors" --data "$data/val" --json >"$tmp/stem_b.json"
[ "$(json_field "$tmp/stem_a.json" "['loss']")" = "$(json_field "$tmp/stem_b.json" "['loss']")" ] && ok ||
  fail "resumed conv-stem ViT differs"
run "stem strides not the patch" 1 "--stem-strides multiply to 2, not the patch size 4" -- \
  train --data "$data/train" "${small[@]}" --stem-channels 8,16 --stem-strides 2,1
run "stem lists not integers" 2 "--stem-channels: '8,x' is not a comma-separated list" -- \
  train --data "$data/train" "${small[@]}" --stem-channels 8,x --stem-strides 2,2
run "stem on a CNN" 2 "--stem-channels does not apply to cnn_resnet8_fmnist" -- \
  train --data "$data/train" "${cnn[@]}" --stem-channels 8

# --- CCT's sequence pooling: no cls token, attention_pool in the file, eval and explain -------
run "train a SeqPool ViT" 0 "" -- train --data "$data/train" --val-data "$data/val" "${small[@]}" \
  --global-pool seq --class-token false --epochs 6 --out "$tmp/seq.safetensors"
run "eval the SeqPool ViT" 0 "" -- eval --model "$tmp/seq.safetensors" --data "$data/val" --json
cp "$tmp/out" "$tmp/seq.json"
top1=$(json_field "$tmp/seq.json" "['top1']")
python3 -c "import sys; sys.exit(0 if float('$top1') >= 0.9 else 1)" && ok || fail "SeqPool validation top-1 $top1 < 0.9"
python3 - "$tmp/seq.safetensors" <<'PY' && ok || fail "the SeqPool file's config or tensors"
import json, struct, sys
blob = open(sys.argv[1], "rb").read()
header = json.loads(blob[8:8 + struct.unpack("<Q", blob[:8])[0]])
c = json.loads(header["__metadata__"]["config"])
assert c["global_pool"] == "seq" and c["class_token"] is False, c
assert header["attention_pool.weight"]["shape"] == [1, 32], header["attention_pool.weight"]
assert "cls_token" not in header
PY
run "explain the SeqPool ViT" 0 "learned weights \\(SeqPool\\)" -- explain --model "$tmp/seq.safetensors" \
  --out "$tmp/seq_explain" "$data/val/vertical/001.png"
run "--global-pool bad" 1 "--global-pool must be token, avg or seq, got 'max'" -- train \
  --data "$data/train" "${small[@]}" --global-pool max --out "$tmp/seq_bad.safetensors"
run "--global-pool token without the cls token" 1 "--global-pool token needs the class token" -- \
  train --data "$data/train" "${small[@]}" --class-token false --out "$tmp/seq_bad.safetensors"
run "--global-pool on a CNN" 2 "--global-pool does not apply to cnn_resnet8_fmnist" -- \
  train --data "$data/train" "${cnn[@]}" --global-pool seq

# --- vit folder: the folder as vit train reads it, the one list tools/compare.py uses ----------
run "folder" 0 "" -- folder "$data/train"
python3 - "$tmp/out" <<'PY' && ok || fail "vit folder: wrong classes or counts"
import json, sys
j = json.load(open(sys.argv[1]))
assert [c["name"] for c in j["classes"]] == ["diagonal", "horizontal", "vertical"], j
assert [c["images"] for c in j["classes"]] == [40, 40, 40] and j["images"] == 120, j
PY
cp -r "$data/train" "$tmp/listed"
touch "$tmp/listed/diagonal/.hidden.png" "$tmp/listed/diagonal/notes.txt"
mkdir -p "$tmp/listed/.cache"
cp "$data/train/diagonal/000.png" "$tmp/listed/.cache/"
cp "$data/train/diagonal/000.png" "$tmp/listed/vertical/extra.PNG"
run "folder --files" 0 "" -- folder "$tmp/listed" --files
python3 - "$tmp/out" <<'PY' && ok || fail "vit folder: hidden entries, other extensions or upper case mishandled"
import json, sys
j = json.load(open(sys.argv[1]))
assert [c["images"] for c in j["classes"]] == [40, 40, 41], j["classes"]
assert len(j["files"]) == 121 and all(not "/." in f["path"] for f in j["files"])
PY
mkdir "$tmp/listed/empty"
run "folder: an empty class folder" 1 "empty.*no image" -- folder "$tmp/listed"
run "folder: no folder given" 2 "give the folder" -- folder

# --- bad input -------------------------------------------------------------------------------
run "missing data folder" 1 "'$tmp/nope': no such folder" -- train --data "$tmp/nope" "${small[@]}"
mkdir -p "$tmp/empty/a" "$tmp/empty/b" && cp "$data/train/vertical/000.png" "$tmp/empty/a/"
run "empty class folder" 1 "'$tmp/empty/b': class folder holds no images" -- train --data "$tmp/empty" "${small[@]}"

mkdir -p "$tmp/bad"
cp -r "$data/train/horizontal" "$data/train/vertical" "$tmp/bad/"
echo "not a png" >"$tmp/bad/vertical/text.png"
: >"$tmp/bad/vertical/zero.png"
head -c 100 "$data/train/vertical/001.png" >"$tmp/bad/vertical/truncated.png"
run "strict refuses a bad image" 1 "bad/vertical/(text|truncated|zero)\.png'" -- train --data "$tmp/bad" "${small[@]}" \
  --epochs 1 --strict --out "$tmp/bad.safetensors"
run "bad images skipped and counted" 0 "3 unreadable training images skipped" -- train --data "$tmp/bad" \
  "${small[@]}" --epochs 1 --out "$tmp/bad.safetensors"
grep -q "3 unreadable images were skipped" "$tmp/out" && ok || fail "summary does not count skipped images"

run "classify a missing image" 1 "'$tmp/none.png': no such file" -- classify --model "$tmp/m.safetensors" \
  "$tmp/none.png" "$data/val/vertical/000.png"
grep -q "vertical/000.png" "$tmp/out" && ok || fail "the readable image was not classified"
run "classify a zero-byte image" 1 "zero.png': empty file" -- classify --model "$tmp/m.safetensors" "$tmp/bad/vertical/zero.png"
run "classify a truncated image" 1 "truncated.png': truncated image" -- classify --model "$tmp/m.safetensors" "$tmp/bad/vertical/truncated.png"
run "classify a text file" 1 "text.png': not an image" -- classify --model "$tmp/m.safetensors" "$tmp/bad/vertical/text.png"

head -c 5000 "$tmp/m.safetensors" >"$tmp/truncated.safetensors"
run "truncated model" 1 "truncated.safetensors': .*(truncated|outside the data section|header length)" -- \
  classify --model "$tmp/truncated.safetensors" "$data/val/vertical/000.png"
run "not a model" 1 "val/vertical/000.png': not a safetensors file" -- \
  classify --model "$data/val/vertical/000.png" "$data/val/vertical/000.png"
run "foreign safetensors" 1 "not a vit model file \(no 'arch'" -- \
  classify --model "$fixtures/torchvision_vit_rgb.safetensors" "$data/val/vertical/000.png"
python3 - "$tmp/m.safetensors" "$tmp/other.safetensors" <<'PY'
import json, struct, sys
blob = open(sys.argv[1], "rb").read()
n, = struct.unpack("<Q", blob[:8])
header = json.loads(blob[8:8 + n])
config = json.loads(header["__metadata__"]["config"])
config["embed_dim"] = 64  # another architecture's config over these tensors
header["__metadata__"]["config"] = json.dumps(config)
text = json.dumps(header).encode()
text += b" " * ((8 - len(text) % 8) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(text)) + text + blob[8 + n:])
PY
run "config disagrees with tensors" 1 "tensor '[a-z_.0-9]+' has shape \[.*\], the model expects \[.*64" -- \
  classify --model "$tmp/other.safetensors" "$data/val/vertical/000.png"

run "patch size not dividing" 1 "--patch-size 5 does not divide --img-size 16" -- train --data "$data/train" \
  "${base[@]}" --patch-size 5 --num-heads 2
run "heads not dividing" 1 "--num-heads 3 does not divide --embed-dim 32" -- train --data "$data/train" \
  "${base[@]}" --patch-size 4 --num-heads 3
run "val-data and val-split" 2 "contradict" -- train --data "$data/train" --val-data "$data/val" --val-split 0.2
run "unknown preset" 1 "unknown model 'vit_giant'" -- train --data "$data/train" --model vit_giant
echo "old model" >"$tmp/keep.safetensors"
echo "old checkpoint" >"$tmp/keep.ckpt.safetensors"
run "NaN loss" 1 "step [0-9]+: the (loss is (NaN|infinite)|gradients are not finite)" -- train --data "$data/train" \
  "${base[@]}" --patch-size 4 --num-heads 2 --lr 1e30 --warmup-epochs 0 --epochs 2 --out "$tmp/keep.safetensors"
[ "$(cat "$tmp/keep.safetensors")" = "old model" ] && ok || fail "a failed run touched the existing model"
[ "$(cat "$tmp/keep.ckpt.safetensors")" = "old checkpoint" ] && ok || fail "a failed run touched the last checkpoint"

# --- checkpoints in the hub's layouts (tests/fixtures/hub) ------------------------------------
hub=$fixtures/hub
run "classify a timm folder" 0 "" -- classify --model "$hub/timm_token" --top-k 2 --json "$data/val/diagonal"
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); assert r and r[0]['top_k'][0]['class'] in ('cat','dog','fish','bird','frog')" \
  "$tmp/out" && ok || fail "classify on a timm folder lacks its label names"
run "classify its model.safetensors" 0 "" -- classify --model "$hub/hf_vit/model.safetensors" "$data/val/diagonal"
run "classify a headless checkpoint" 1 "has no classification head \(num_classes 0\): 'vit embed'" -- \
  classify --model "$hub/timm_dinov2_no_head_bf16" "$data/val/diagonal"
run "eval a headless checkpoint" 1 "has no classification head" -- \
  eval --model "$hub/timm_dinov2_no_head_bf16" --data "$data/val"
run "embed --out" 0 "" -- embed --model "$hub/timm_token" --out "$tmp/emb.safetensors" "$data/val/diagonal"
python3 -c "
import json, struct, sys
f = open(sys.argv[1], 'rb'); n = struct.unpack('<Q', f.read(8))[0]; h = json.loads(f.read(n))
assert h['embeddings']['shape'] == [20, 32], h['embeddings']
assert len(json.loads(h['__metadata__']['images'])) == 20" "$tmp/emb.safetensors" && ok || fail "embed --out wrote the wrong tensor"
mkdir -p "$tmp/pickle" && echo "not read" >"$tmp/pickle/pytorch_model.bin" && echo "{}" >"$tmp/pickle/config.json"
run "a pickle folder" 1 "pytorch_model.bin': a PyTorch pickle, which can run code when loaded, so vit does not read it; convert it once with" -- \
  classify --model "$tmp/pickle" "$data/val/diagonal"
cp "$tmp/pickle/pytorch_model.bin" "$tmp/weights.pth"
run "a .pth file" 1 "weights.pth': a PyTorch pickle" -- classify --model "$tmp/weights.pth" "$data/val/diagonal"
# A copy of a fixture folder with one config key changed: hub_edit NAME FILE PYTHON-EXPRESSION-ON-j
hub_edit() {
  rm -rf "$tmp/edited" && cp -r "$hub/$1" "$tmp/edited"
  python3 -c "
import json, sys
p = sys.argv[1]; j = json.load(open(p)); $3; json.dump(j, open(p, 'w'))" "$tmp/edited/$2"
}
hub_edit timm_token config.json "j['architecture'] = 'convnext_tiny'"
run "an unknown architecture" 1 "config.json': architecture 'convnext_tiny' is not one vit implements" -- \
  classify --model "$tmp/edited" "$data/val/diagonal"
hub_edit timm_token config.json "j['model_args']['pos_embed'] = 'rope'"
run "a setting not implemented" 1 "model_args: 'pos_embed' = \"rope\" is not implemented by vit" -- \
  classify --model "$tmp/edited" "$data/val/diagonal"
hub_edit timm_token config.json "j['model_args']['embed_dim'] = 64; j['num_features'] = 64"
run "a config its tensors contradict" 1 "model.safetensors': tensor 'cls_token' has shape \[1, 1, 32\], the config implies \[1, 1, 64\]" -- \
  classify --model "$tmp/edited" "$data/val/diagonal"
hub_edit hf_vit config.json "j['model_type'] = 'swin'"
run "a transformers model not a ViT" 1 "'model_type' \"swin\" is not implemented" -- \
  classify --model "$tmp/edited" "$data/val/diagonal"
hub_edit hf_vit preprocessor_config.json "j['size'] = {'shortest_edge': 16}"
run "a processor size not implemented" 1 "preprocessor_config.json': 'size' \{\"shortest_edge\":16\} is not implemented" -- \
  classify --model "$tmp/edited" "$data/val/diagonal"
run "classify at another --img-size" 0 "" -- classify --model "$hub/timm_token" --img-size 24 \
  --pos-interp no-antialias "$data/val/diagonal"
run "an --img-size the patch does not divide" 1 "--img-size 18 is not a multiple of the model's patch size 4" -- \
  classify --model "$hub/timm_token" --img-size 18 "$data/val/diagonal"
run "an unknown --pos-interp" 2 "--pos-interp must be antialias or no-antialias" -- \
  eval --model "$hub/timm_token" --data "$data/val" --pos-interp cubic
# --- fine-tuning from a checkpoint (--init) ---------------------------------------------------
ft=(--data "$data/train" --init "$hub/timm_token" --batch-size 16 --lr 1e-3 --warmup-epochs 0.5
    --layer-decay 0.75 --seed 5 --no-progress)
run "init: 4 epochs" 0 "" -- train "${ft[@]}" --epochs 4 --out "$tmp/ft_a.safetensors"
grep -q "timm_token has 5 classes, the folder 3: the head is re-initialised" "$tmp/out" && ok ||
  fail "init did not say the head was re-initialised"
run "init: 2 of 4 epochs" 0 "stopped as asked" -- train "${ft[@]}" --epochs 4 --stop-after-epochs 2 \
  --out "$tmp/ft_b.safetensors"
run "init: resume" 0 "" -- train --data "$data/train" --resume "$tmp/ft_b.ckpt.safetensors" --no-progress \
  --out "$tmp/ft_b.safetensors"
same_tensors "$tmp/ft_a.safetensors" "$tmp/ft_b.safetensors" && ok ||
  fail "a resumed fine-tuning ends with other weights than the uninterrupted one"
run "init: the result loads back" 0 "" -- eval --model "$tmp/ft_b.safetensors" --data "$data/val" --json
metadata_ok "$tmp/ft_b.safetensors" "
assert m['init'].endswith('timm_token') and m['init_source'] == 'timm vit_tiny_patch16_224', m.get('init')
assert json.loads(m['train_config'])['layer_decay'] == 0.75" && ok ||
  fail "the fine-tuned file does not record its init"
run "init: a linear probe" 0 "" -- train --data "$data/train" --init "$hub/timm_token" --freeze-backbone \
  --epochs 2 --batch-size 16 --no-progress --out "$tmp/probe.safetensors"
python3 - "$hub/timm_token/model.safetensors" "$tmp/probe.safetensors" <<'PY' && ok || fail "a frozen backbone changed"
import json, struct, sys
def tensors(path):
    blob = open(path, "rb").read()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n]); header.pop("__metadata__", None)
    return {k: blob[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]] for k, v in header.items()}
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
frozen = [k for k in a if not k.startswith(("head.", "norm."))]
assert len(frozen) > 20 and all(a[k] == b[k] for k in frozen), [k for k in frozen if a[k] != b[k]][:3]
assert a["norm.weight"] != b["norm.weight"]  # the final norm trains
PY
run "init with a size flag" 2 "--embed-dim contradicts --init, whose checkpoint is the model" -- \
  train --data "$data/train" --init "$hub/timm_token" --embed-dim 64
run "init with --mean" 2 "--mean contradicts --init, whose checkpoint sets the preprocessing" -- \
  train --data "$data/train" --init "$hub/timm_token" --mean 0.1,0.1,0.1
run "init and resume" 2 "--init and --resume contradict each other" -- \
  train --data "$data/train" --init "$hub/timm_token" --resume "$tmp/ft_b.ckpt.safetensors"
run "a frozen CNN" 1 "--freeze-backbone: the resnet has no frozen-backbone mode" -- \
  train --data "$data/train" --model cnn_resnet8_fmnist --img-size 16 --freeze-backbone --epochs 1
run "layer decay on a CNN" 1 "--layer-decay: the resnet defines no layers" -- \
  train --data "$data/train" --model cnn_resnet8_fmnist --img-size 16 --layer-decay 0.7 --epochs 1
run "a layer decay above 1" 1 "--layer-decay must be in \(0, 1\]" -- \
  train --data "$data/train" --init "$hub/timm_token" --layer-decay 1.5

rm "$tmp/edited/model.safetensors"
run "no weights" 1 "no model.safetensors beside config.json" -- classify --model "$tmp/edited" "$data/val/diagonal"

# --- the self-attention lab's variants --------------------------------------------------------
# A model trained with variants names them in its config, trains, resumes exactly, evaluates and
# classifies through the same commands; a default model's config has none of their keys.
lab=("${small[@]}" --pos-embed sincos --attn-norm sigmoid --attn-window 1)
run "train a lab variant" 0 "" -- train --data "$data/train" "${lab[@]}" --epochs 2 \
  --out "$tmp/lab_a.safetensors"
config_of() {
  python3 - "$1" <<'PY'
import json, struct, sys
blob = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", blob[:8])[0]
print(json.dumps(json.loads(json.loads(blob[8:8 + n])["__metadata__"]["config"]), sort_keys=True))
PY
}
lab_keys='"attn_norm": "sigmoid".*"attn_window": 1.*"pos_embed": "sincos"'
config_of "$tmp/lab_a.safetensors" | grep -Eq "$lab_keys" && ok || fail "the variant's config lacks its settings"
config_of "$tmp/m.safetensors" | grep -Eq '"(attn_(score|additive_dim|norm|window|lowrank|features|redraw)|pos_embed)"' &&
  fail "a default model names lab settings" || ok
run "train 1 of 2 epochs (lab)" 0 "stopped as asked" -- train --data "$data/train" "${lab[@]}" \
  --epochs 2 --stop-after-epochs 1 --out "$tmp/lab_b.safetensors"
run "resume a lab variant" 0 "" -- train --data "$data/train" --no-progress \
  --resume "$tmp/lab_b.ckpt.safetensors" --out "$tmp/lab_b.safetensors"
same_tensors "$tmp/lab_a.safetensors" "$tmp/lab_b.safetensors" && ok ||
  fail "a resumed lab variant ends with other weights than the uninterrupted one"
# Performer redraws its features every 3 steps: a resumed run draws the same ones.
perf=("${small[@]}" --attn-features 8 --attn-redraw 3)
run "train Performer" 0 "" -- train --data "$data/train" "${perf[@]}" --epochs 2 --out "$tmp/perf_a.safetensors"
run "train Performer 1 of 2 epochs" 0 "stopped as asked" -- train --data "$data/train" "${perf[@]}" \
  --epochs 2 --stop-after-epochs 1 --out "$tmp/perf_b.safetensors"
run "resume Performer" 0 "" -- train --data "$data/train" --no-progress \
  --resume "$tmp/perf_b.ckpt.safetensors" --out "$tmp/perf_b.safetensors"
same_tensors "$tmp/perf_a.safetensors" "$tmp/perf_b.safetensors" && ok ||
  fail "a resumed Performer ends with other weights or features than the uninterrupted one"
run "train Performer, never redrawn" 0 "" -- train --data "$data/train" "${small[@]}" --attn-features 8 \
  --attn-redraw 0 --epochs 2 --out "$tmp/perf_c.safetensors"
python3 - "$tmp/perf_a.safetensors" "$tmp/perf_c.safetensors" <<'PY' && ok || fail "the redraws did not change the features"
import json, struct, sys
def tensor(path, name):
    blob = open(path, "rb").read()
    n = struct.unpack("<Q", blob[:8])[0]
    e = json.loads(blob[8:8 + n])[name]
    return blob[8 + n + e["data_offsets"][0]:8 + n + e["data_offsets"][1]]
name = "blocks.0.attn.performer_w"
sys.exit(0 if tensor(sys.argv[1], name) != tensor(sys.argv[2], name) else 1)
PY
run "Performer with ReLU" 1 "--attn-norm relu does not apply to Performer" -- \
  train --data "$data/train" "${small[@]}" --attn-features 8 --attn-norm relu
run "eval a lab variant" 0 "" -- eval --model "$tmp/lab_a.safetensors" --data "$data/val" --json
run "classify with a lab variant" 0 "" -- classify --model "$tmp/lab_a.safetensors" "$data/val/diagonal"
run "resume with another attention" 2 "--attn-norm relu contradicts the checkpoint's attn_norm sigmoid" -- \
  train --data "$data/train" --resume "$tmp/lab_b.ckpt.safetensors" --attn-norm relu
run "resume with a window given anew" 2 "--attn-window 2 contradicts the checkpoint's attn_window 1" -- \
  train --data "$data/train" --resume "$tmp/lab_b.ckpt.safetensors" --attn-window 2
run "a lab flag on a CNN" 2 "--attn-norm does not apply to cnn_resnet8_fmnist" -- \
  train --data "$data/train" --model cnn_resnet8_fmnist --img-size 16 --attn-norm relu
run "a window wider than the grid" 1 "--attn-window must be in \[0, 3\] for a grid of 4x4 patches" -- \
  train --data "$data/train" "${small[@]}" --attn-window 4
run "an unknown normalisation" 1 "--attn-norm must be softmax, relu or sigmoid, got 'tanh'" -- \
  train --data "$data/train" "${small[@]}" --attn-norm tanh
run "a lab flag with --init" 2 "--attn-window contradicts --init, whose checkpoint is the model" -- \
  train --data "$data/train" --init "$tmp/lab_a.safetensors" --attn-window 2
run "bench a lab variant" 0 "" -- bench --model vit_fmnist_patch4 --img-size 16 --embed-dim 32 \
  --depth 2 --num-heads 2 --attn-norm relu --attn-window 1 --batch-size 4 --warmup 1 --iters 2 \
  --repeats 1
grep -q '"attn_norm":"relu"' "$tmp/out" && ok || fail "bench does not name the variant it measured"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
