#!/usr/bin/env bash
# vit explain end to end on the bundled models: PNGs and JSON maps, and the one-line errors.
# usage: test_explain.sh path/to/vit path/to/datasets path/to/models
set -u
vit=$1 samples=$2/samples models=$3
passed=0 failed=0
tmp=$(mktemp -d)
out=$tmp/stdout err=$tmp/stderr
trap 'rm -rf "$tmp"' EXIT

check() {  # check NAME CONDITION...
  local name=$1
  shift
  if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAIL: $name"; fi
}

# expect NAME WANT_CODE STDERR_PATTERN -- ARGS...: the exit code, and an error in one line.
expect() {
  local name=$1 want=$2 err_re=$3
  shift 4
  "$vit" "$@" >"$out" 2>"$err" </dev/null
  local code=$? ok=1
  [ "$code" -eq "$want" ] || ok=0
  [ -z "$err_re" ] || grep -Eq -- "$err_re" "$err" || ok=0
  [ "$want" -eq 0 ] || [ "$(wc -l <"$err")" -eq 1 ] || ok=0
  if [ $ok -eq 1 ]; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAIL: $name (exit $code, want $want)"
    sed 's/^/  stderr: /' "$err" | head -5
  fi
}

# png_size FILE: "width height" from the IHDR chunk.
png_size() { od -An -tu1 -j16 -N8 "$1" | awk '{print $1*16777216+$2*65536+$3*256+$4, $5*16777216+$6*65536+$7*256+$8}'; }

# The bundled ViT (patch 7: a 4 × 4 grid) over the sample folder, PNG and JSON at once.
"$vit" explain --out "$tmp/vit" --json "$samples" >"$out" 2>"$err"
check "rollout over a folder exits 0" [ $? -eq 0 ]
check "one PNG per sample" [ "$(ls "$tmp/vit"/*_rollout.png | wc -l)" -eq "$(ls "$samples" | wc -l)" ]
check "a 28 × 28 image drawn 8 times as large: 224 × 224" \
  [ "$(png_size "$tmp/vit/sneaker_00009_rollout.png")" = "224 224" ]
/usr/bin/python3 - "$out" "$samples" <<'PY' >"$tmp/py" 2>&1
import json, os, sys
r = json.load(open(sys.argv[1]))
assert len(r) == len(os.listdir(sys.argv[2])), len(r)
for e in r:
    assert e["method"] == "rollout" and e["grid"] == [4, 4], e
    m = [x for row in e["map"] for x in row]
    assert len(m) == 16 and all(x >= 0 for x in m), m
    # The cls row of a product of row-stochastic matrices: its patch entries sum to at most 1.
    assert 0 < sum(m) <= 1 + 1e-5, sum(m)
    top = e["top_k"][0]
    assert e["explained"] == top, (e["explained"], top)
    assert len(e["top_k"]) == 5 and os.path.isfile(e["png"])
    # The bundled model classifies its samples right: the file name starts with the class.
    assert os.path.basename(e["image"]).startswith(top["class"]), (e["image"], top)
print("ok")
PY
check "the JSON: 4 × 4 maps, the top-k of classify, PNG paths" grep -q '^ok$' "$tmp/py"
grep -v '^ok$' "$tmp/py" | head -5

# The same top-k as vit classify --json.
"$vit" classify --json "$samples/bag_00018.png" >"$tmp/classify.json" 2>/dev/null
"$vit" explain --json "$samples/bag_00018.png" >"$tmp/explain.json" 2>/dev/null
check "top-k equal to vit classify's" /usr/bin/python3 -c "
import json, sys
c = json.load(open('$tmp/classify.json'))[0]['top_k']; e = json.load(open('$tmp/explain.json'))[0]['top_k']
sys.exit(0 if c == e else 1)"

expect "--scale 1" 0 '' -- explain --scale 1 --out "$tmp/one" "$samples/sneaker_00009.png"
check "--scale 1: the PNG has the image's size, 28 × 28" [ "$(png_size "$tmp/one/sneaker_00009_rollout.png")" = "28 28" ]
expect "bad --scale" 2 '^vit: vit explain: --scale must be in 0 to 64' -- explain --scale -2 --json "$samples/sneaker_00009.png"
expect "attention per head" 0 '' -- explain --method attention --layer 0 --heads --head-fusion max \
  --out "$tmp/att" "$samples/sneaker_00009.png"
check "a heads picture" [ -s "$tmp/att/sneaker_00009_attention_heads.png" ]
check "the heads picture: the model's 4 heads side by side, 224 wide each" \
  [ "$(png_size "$tmp/att/sneaker_00009_attention_heads.png" | cut -d' ' -f1)" -eq 896 ]
expect "Grad-CAM on the CNN for a chosen class, by name" 0 '' -- explain \
  --model "$models/cnn_resnet8_fmnist.safetensors" --class bag --json "$samples/sneaker_00009.png"
check "Grad-CAM explains the class asked for, on the 7 × 7 last stage" grep -q '"explained":{"class":"bag","index":1,.*"grid":\[7,7\]' "$out"

# Two images with one stem get two pictures.
mkdir -p "$tmp/a" "$tmp/b"
cp "$samples/bag_00018.png" "$tmp/a/x.png"
cp "$samples/coat_00006.png" "$tmp/b/x.png"
expect "same stems" 0 '' -- explain --out "$tmp/same" "$tmp/a/x.png" "$tmp/b/x.png"
check "same stems: x_rollout.png and x_rollout_2.png" [ -s "$tmp/same/x_rollout.png" -a -s "$tmp/same/x_rollout_2.png" ]

# Bad input: the rest still explained, the bad file named, exit 1.
printf 'not an image' >"$tmp/broken.png"
expect "a broken image among good ones" 1 "broken.png" -- explain --out "$tmp/mixed" "$tmp/broken.png" "$samples/bag_00018.png"
check "the good image still explained" [ -s "$tmp/mixed/bag_00018_rollout.png" ]
expect "no output asked for" 2 '^vit: vit explain: give --out DIR' -- explain "$samples/bag_00018.png"
expect "no images" 2 '^vit: vit explain: no images given' -- explain --json
expect "gradcam on a ViT" 2 'gradcam explains the CNN' -- explain --method gradcam --json "$samples/bag_00018.png"
expect "rollout on the CNN" 2 'rollout explains a ViT' -- explain --model "$models/cnn_resnet8_fmnist.safetensors" \
  --method rollout --json "$samples/bag_00018.png"
expect "--class on a ViT" 2 '--class needs --method gradcam' -- explain --class 1 --json "$samples/bag_00018.png"
expect "unknown class" 1 "--class 'purse': not one of the model's 10 classes" -- explain \
  --model "$models/cnn_resnet8_fmnist.safetensors" --class purse --json "$samples/bag_00018.png"
expect "class index out of range" 1 "--class '10'" -- explain \
  --model "$models/cnn_resnet8_fmnist.safetensors" --class 10 --json "$samples/bag_00018.png"
expect "layer out of range" 2 '--layer 7: the model has' -- explain --method attention --layer 7 --json "$samples/bag_00018.png"
expect "bad head fusion" 2 '--head-fusion must be mean, max or min' -- explain --head-fusion sum --json "$samples/bag_00018.png"
expect "bad discard ratio" 2 '--discard-ratio must be in' -- explain --discard-ratio 1 --json "$samples/bag_00018.png"
touch "$tmp/file"
expect "--out is a file" 1 "--out '$tmp/file/pics': cannot create the folder" -- explain --out "$tmp/file/pics" "$samples/bag_00018.png"
expect "missing model" 1 'no such model file' -- explain --model "$tmp/none.safetensors" --json "$samples/bag_00018.png"

echo "explain: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
