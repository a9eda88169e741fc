#!/bin/bash
# Pretraining on five Fashion-MNIST classes (all 30 000 training images of t-shirt/top, trouser,
# pullover, dress, coat), then the test accuracy on those five classes.
set -e
V=/work/main/build/release/tools/vit
# Folders of links to the five classes: mkdir -p $P/train $P/test; for c in t-shirt_top trouser
# pullover dress coat; do ln -s $PWD/data/fashion-mnist/train/$c $P/train/; ln -s $PWD/data/fashion-mnist/test/$c $P/test/; done
P=/work/transfer/pretrain5
cd /work/transfer
$V train --data $P/train --model vit_fmnist_patch7 --epochs 15 --batch-size 128 --warmup-epochs 1 \
  --mean 0.286 --std 0.353 --lr 2e-3 --weight-decay 0.05 --pad 2 --hflip 0.5 --seed 0 --no-progress \
  --out vit_pre5.safetensors --log vit_pre5.jsonl > vit_pre5.log 2>&1
$V eval --model vit_pre5.safetensors --data $P/test --json > vit_pre5.eval.json
$V train --data $P/train --model cnn_resnet8_fmnist --epochs 15 --batch-size 128 --warmup-epochs 1 \
  --mean 0.286 --std 0.353 --opt sgd --lr 0.1 --weight-decay 5e-4 --pad 2 --hflip 0.5 --seed 0 --no-progress \
  --out cnn_pre5.safetensors --log cnn_pre5.jsonl > cnn_pre5.log 2>&1
$V eval --model cnn_pre5.safetensors --data $P/test --json > cnn_pre5.eval.json
echo done > pretrain.done
