#!/usr/bin/env bash
# The main job of README.md, after the build: prepare Fashion-MNIST from Debian's package,
# classify the sample images with the bundled model, explain two of them, evaluate it on the 10 000 test images,
# and train a small ViT for a few minutes to show the training loop and its accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
vit=build/release/tools/vit

python3 datasets/prepare_fashion_mnist.py data/fashion-mnist

echo "== vit classify (the bundled model, models/vit_fmnist.safetensors)"
"$vit" classify --top-k 3 datasets/samples/*.png

echo "== vit explain: where the bundled ViT (rollout) and CNN (Grad-CAM) look, PNGs in build/explain"
"$vit" explain --out build/explain datasets/samples/sneaker_00009.png datasets/samples/bag_00018.png
"$vit" explain --model models/cnn_resnet8_fmnist.safetensors --out build/explain \
  datasets/samples/sneaker_00009.png datasets/samples/bag_00018.png

echo "== vit eval on the Fashion-MNIST test set"
"$vit" eval --model models/vit_fmnist.safetensors --data data/fashion-mnist/test | head -1

echo "== vit train: a patch-7 ViT on a 10 000-image subset, 3 epochs"
"$vit" train --data data/fashion-mnist/train --val-data data/fashion-mnist/test \
  --model vit_fmnist_patch7 --subset 10000 --epochs 3 --lr 2e-3 --warmup-epochs 0.5 \
  --hflip 0.5 --pad 2 --mean 0.286 --std 0.353 --out build/demo.safetensors
