#!/usr/bin/env bash
# A few hundred steps on a stratified 1 000-image subset of real Fashion-MNIST (from Debian's
# dataset-fashion-mnist, prepared into the build folder) must drive training accuracy above
# 90 %: the model, the data path and the optimizer learn together. Release builds only.
# usage: test_fmnist_subset.sh path/to/vit path/to/datasets WORK_DIR
set -euo pipefail
vit=$1 datasets=$2 work=$3
python3 "$datasets/prepare_fashion_mnist.py" "$work/fashion-mnist" >/dev/null
# 1 000 images, batch 100: 10 steps an epoch, 30 epochs = 300 steps, no augmentation.
"$vit" train --data "$work/fashion-mnist/train" --subset 1000 --model vit_fmnist_patch7 \
  --batch-size 100 --epochs 30 --lr 2e-3 --warmup-epochs 2 --crop none --smoothing 0 \
  --weight-decay 0 --seed 1 --no-progress --out "$work/subset.safetensors" >"$work/subset.log"
acc=$(grep -o 'epoch 30/30  train loss [0-9.]*  train acc [0-9.]*' "$work/subset.log" | awk '{print $NF}')
echo "training accuracy after 300 steps: $acc %"
if awk -v a="$acc" 'BEGIN { exit !(a > 90) }'; then echo "1 passed, 0 failed"; else echo "0 passed, 1 failed"; exit 1; fi
