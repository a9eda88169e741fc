#!/usr/bin/env bash
# Writes the fuzzers' committed seed inputs into tests/fuzz/corpus/ (run once; the outputs are
# committed, so CI needs neither this script nor Pillow). Needs a release build of vit and
# Debian's python3 with python3-pil.
# usage: tests/fuzz/make_seeds.sh path/to/vit
set -euo pipefail
vit=$1
here=$(cd "$(dirname "$0")" && pwd)
fixtures=$here/../fixtures/stripes
out=$here/corpus
mkdir -p "$out/safetensors" "$out/model_config" "$out/image"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Model files: a tiny trained ViT, its training checkpoint (optimizer state, train_state).
"$vit" train --data "$fixtures/train" --model vit_fmnist_patch4 --img-size 8 --patch-size 4 \
  --embed-dim 8 --depth 1 --num-heads 2 --mlp-ratio 2 --batch-size 60 --epochs 1 --crop none \
  --no-progress --out "$tmp/tiny.safetensors" >/dev/null
cp "$tmp/tiny.safetensors" "$out/safetensors/tiny_vit.safetensors"
cp "$tmp/tiny.ckpt.safetensors" "$out/safetensors/tiny_vit_checkpoint.safetensors"

/usr/bin/python3 - "$out" <<'PY'
import io, json, struct, sys
from pathlib import Path
from PIL import Image

out = Path(sys.argv[1])

def safetensors(header, data=b""):
    text = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(text)) + text + data

st = out / "safetensors"
# A model file of the ResNet with no tensors: the config is built, then found without weights.
resnet = {"img_size": 8, "in_chans": 1, "num_classes": 2, "widths": [4, 8], "depths": [1, 1]}
st.joinpath("resnet_no_tensors.safetensors").write_bytes(safetensors({"__metadata__": {
    "arch": "resnet", "config": json.dumps(resnet), "classes": json.dumps(["a", "b"]),
    "preprocess": json.dumps({"img_size": 8, "in_chans": 1, "patch_size": 0,
                              "mean": [0.5], "std": [0.5]})}}))
# The hand-made hostile files of tests/test_safetensors.cpp, as regression inputs.
st.joinpath("hostile_header_length.safetensors").write_bytes(struct.pack("<Q", 1 << 63) + b"{}")
st.joinpath("hostile_overlap.safetensors").write_bytes(safetensors(
    {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
     "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"x" * 8))
st.joinpath("hostile_shape_overflow.safetensors").write_bytes(safetensors(
    {"a": {"dtype": "U8", "shape": [2**64 - 1, 2], "data_offsets": [0, 2]}}, b"xx"))
st.joinpath("hostile_deep.safetensors").write_bytes(
    struct.pack("<Q", 10008) + b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}" + b" " * 2)
st.joinpath("hostile_duplicate.safetensors").write_bytes(
    struct.pack("<Q", 109) + b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
    b'"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}  ' + b"xxxx")

mc = out / "model_config"
vit = {"img_size": 8, "patch_size": 4, "in_chans": 1, "num_classes": 3, "embed_dim": 8,
       "depth": 1, "num_heads": 2, "mlp_ratio": 2.0, "qkv_bias": True}
mc.joinpath("vit_tiny.json").write_bytes(b"v" + json.dumps(vit).encode())
mc.joinpath("vit_preprocess.json").write_bytes(b"v" + json.dumps(
    {"img_size": 224, "in_chans": 3, "patch_size": 16, "mean": [0.5] * 3, "std": [0.5] * 3,
     "crop_pct": 0.9}).encode())
mc.joinpath("resnet_tiny.json").write_bytes(b"r" + json.dumps(resnet).encode())

im = out / "image"
def save(name, img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    im.joinpath(name).write_bytes(buf.getvalue())
rgb = Image.new("RGB", (6, 5))
rgb.putdata([(i * 40 % 256, i * 70 % 256, i * 13 % 256) for i in range(30)])
save("rgb.png", rgb, "PNG")
save("gray.png", rgb.convert("L"), "PNG")
save("rgba.png", rgb.convert("RGBA"), "PNG")
save("gray_alpha.png", rgb.convert("LA"), "PNG")
save("gray16.png", rgb.convert("I").point(lambda v: v * 257).convert("I;16"), "PNG")
save("one_pixel.png", Image.new("L", (1, 1), 200), "PNG")
save("rgb.jpg", rgb, "JPEG", quality=90)
save("progressive.jpg", rgb, "JPEG", quality=90, progressive=True)
save("gray.jpg", rgb.convert("L"), "JPEG")
save("rgb.bmp", rgb, "BMP")
save("rgb.webp", rgb, "WEBP", lossless=True)
save("lossy.webp", rgb, "WEBP", quality=50)
save("rgb.tiff", rgb, "TIFF")
save("rgb.ppm", rgb, "PPM")
save("gray.pgm", rgb.convert("L"), "PPM")
PY
echo "seeds written to $out"
