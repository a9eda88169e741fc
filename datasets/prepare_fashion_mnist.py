#!/usr/bin/env python3
"""Writes Debian's dataset-fashion-mnist (gzipped IDX files) as image folders of PNGs:

    OUT/train/<class>/<index>.png   60 000 images
    OUT/test/<class>/<index>.png    10 000 images

with the ten class names as folder names (torchvision's ImageFolder layout). Only the
standard library is used. Nothing is redone when OUT already holds a complete copy; a partial
one (an interrupted run) is replaced.

usage: prepare_fashion_mnist.py [OUT] [--source DIR]
"""
import argparse
import gzip
import os
import shutil
import struct
import sys
import zlib

CLASSES = ["t-shirt_top", "trouser", "pullover", "dress", "coat",
           "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
SPLITS = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000)}


def read_idx(path, magic):
    with gzip.open(path, "rb") as f:
        data = f.read()
    got, = struct.unpack(">I", data[:4])
    if got != magic:
        sys.exit(f"prepare_fashion_mnist: '{path}': not an IDX file (magic {got:#x})")
    ndim = magic & 0xff
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return dims, data[4 + 4 * ndim:]


def png_gray(width, height, pixels):
    """An 8-bit grayscale PNG: signature, IHDR, one IDAT (zlib), IEND."""
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body +
                struct.pack(">I", zlib.crc32(kind + body) & 0xffffffff))
    rows = b"".join(b"\x00" + pixels[r * width:(r + 1) * width] for r in range(height))
    return (b"\x89PNG\r\n\x1a\n" +
            chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(rows, 6)) + chunk(b"IEND", b""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default="data/fashion-mnist")
    ap.add_argument("--source", default="/usr/share/datasets/fashion-mnist",
                    help="folder of the IDX files (dpkg -L dataset-fashion-mnist)")
    args = ap.parse_args()
    done = os.path.join(args.out, ".complete")
    if os.path.exists(done):
        print(f"prepare_fashion_mnist: {args.out} is complete")
        return
    for split, (images_file, labels_file, count) in SPLITS.items():
        images_path = os.path.join(args.source, images_file)
        if not os.path.exists(images_path):
            sys.exit(f"prepare_fashion_mnist: '{images_path}': no such file "
                     "(apt-get install dataset-fashion-mnist)")
        (n, h, w), pixels = read_idx(images_path, 0x803)
        (m,), labels = read_idx(os.path.join(args.source, labels_file), 0x801)
        if n != count or m != count or len(pixels) != n * h * w:
            sys.exit(f"prepare_fashion_mnist: '{images_path}': expected {count} images")
        tmp = os.path.join(args.out, f".{split}.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        for name in CLASSES:
            os.makedirs(os.path.join(tmp, name))
        for i in range(n):
            png = png_gray(w, h, pixels[i * h * w:(i + 1) * h * w])
            with open(os.path.join(tmp, CLASSES[labels[i]], f"{i:05d}.png"), "wb") as f:
                f.write(png)
        final = os.path.join(args.out, split)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        print(f"prepare_fashion_mnist: {final}: {n} images in {len(CLASSES)} classes")
    open(done, "w").close()


if __name__ == "__main__":
    main()
