#!/usr/bin/env bash
# The committed full run of the self-attention lab (README, "The self-attention lab"): every
# variant and the CNN at 5 000 and 20 000 Fashion-MNIST training images, 3 seeds, then the
# speed sweep over N. About five hours on 2 cores. Resumable: after an interruption, the same
# command runs only what is missing. Extra arguments go to tools/attention_lab.py (for example
# --vit PATH, a copy of the binary, so that a rebuild cannot change it mid-run).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec tools/attention_lab.py --out docs/attention-lab "$@"
