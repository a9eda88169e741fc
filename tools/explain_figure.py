#!/usr/bin/python3
"""The README's figure of vit explain: the bundled ViT's attention rollout (top row) and the
bundled CNN's Grad-CAM (bottom row) on the ten sample images, as one PNG.

    tools/explain_figure.py [--vit build/release/tools/vit] [--out docs/explain-samples.png]"""
import argparse
import os
import subprocess
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vit", default=os.path.join(ROOT, "build", "release", "tools", "vit"))
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "explain-samples.png"))
    args = p.parse_args()
    samples = os.path.join(ROOT, "datasets", "samples")
    rows = [("ViT, attention rollout", os.path.join(ROOT, "models", "vit_fmnist.safetensors"), "rollout"),
            ("CNN, Grad-CAM", os.path.join(ROOT, "models", "cnn_resnet8_fmnist.safetensors"), "gradcam")]
    names = sorted(os.path.splitext(f)[0] for f in os.listdir(samples))
    with tempfile.TemporaryDirectory() as tmp:
        fig, ax = plt.subplots(len(rows), len(names), figsize=(2.0 * len(names), 2.3 * len(rows)))
        for i, (title, model, method) in enumerate(rows):
            out = os.path.join(tmp, method)
            subprocess.run([args.vit, "explain", "--model", model, "--out", out, samples], check=True,
                           stdout=subprocess.DEVNULL)
            for j, name in enumerate(names):
                ax[i][j].imshow(mpimg.imread(os.path.join(out, f"{name}_{method}.png")))
                ax[i][j].axis("off")
            ax[i][0].set_title(title, loc="left", fontsize=9)
        plt.tight_layout()
        plt.savefig(args.out, dpi=80)
    print(f"explain_figure: wrote {args.out}")


if __name__ == "__main__":
    main()
