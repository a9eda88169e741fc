#!/bin/bash
# The transfer measurement (issue 16, item 6): ViT and CNN from scratch and fine-tuned from the
# five-class pretraining of pretrain.sh, on stratified subsets of the other five Fashion-MNIST
# classes, 3 seeds; test accuracy on all 5000 test images of those classes. Resumable: run it
# again with the same --out and finished cells are kept. The recipes were fixed before the run
# (compare.py's defaults: the README's from-scratch recipes, and a tenth of their learning rate
# for fine-tuning, the ViT with layer decay 0.75); none was tuned on these results.
set -e
cd "$(dirname "$0")/../.."
tools/compare.py --data data/fashion-mnist/train --test-data data/fashion-mnist/test \
  --classes sandal,shirt,sneaker,bag,ankle_boot --sizes 50,100,250,500,1000,5000 --seeds 3 \
  --batch-size 32 --epochs 6 --min-steps 300 \
  --vit-init /work/transfer/vit_pre5.safetensors --cnn-init /work/transfer/cnn_pre5.safetensors \
  --out /work/transfer/results "$@"
