#!/usr/bin/env python3
"""A PyTorch teacher for distill's augmented view sets: the round trip.

distill caches a teacher's outputs once and trains many students from them.
With augmentation (`--augment`), the cache holds the teacher's outputs on K
augmented views of every image, and the student is shown exactly the image
its targets were computed on. A teacher that runs outside distill gets those
images from distill, runs on them, and hands the logits back:

    1. distill views export --data D --augment SPEC --views K --out DIR
       writes DIR/view-{v}-images.npy: float32 [N, C, H, W], sample order,
       exactly what distill's own teacher would see for view v.
    2. Your model runs on each file in order and saves [N, classes] float32
       logits (raw logits, before any softmax) as view-{v}-logits.npy.
    3. distill cache import --view-set --augment SPEC --augment-seed S
       --logits view-0-logits.npy ... --logits view-{K-1}-logits.npy
       --data D -T 4 --encoding f16 --out CACHE
       builds the view set that `distill train --cache CACHE` reads.

This script does all three with a PyTorch model. As an example it loads the
teacher distill trained (data/teachers/fashion-cnn): `distill model info
SPEC` prints the equivalent PyTorch module, and distill's model.safetensors
is in PyTorch's layout, so `load_state_dict(..., strict=True)` takes it.
Replace `load_teacher` with your own model; nothing else changes.

    python examples/pytorch_teacher.py --distill target/release/distill \\
        --data data/fashion-mnist-small --teacher data/teachers/fashion-cnn \\
        --augment flip,shift=2 --views 2 --out /tmp/pt-views

Needs torch, numpy and safetensors. The images are memory-mapped
(np.load(mmap_mode="r")) and the model runs in batches, so a large view set
is never held in memory; the logits of one view are (N x classes floats).
tests/cli_views.rs runs this script when PyTorch is installed and checks
that the view set it builds equals the one `distill cache build --augment`
builds with distill's own teacher, within the encoding's error.
"""

import argparse
import json
import subprocess
from collections import OrderedDict
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from torch import nn


def run(cmd):
    """Runs a distill command, echoing it; fails loudly."""
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True)


def load_teacher(distill, model_dir):
    """The example teacher: distill's model directory as a PyTorch module."""
    spec = json.loads((Path(model_dir) / "model.json").read_text())["spec"]
    out = subprocess.run(
        [distill, "model", "info", spec], check=True, capture_output=True, text=True
    ).stdout
    code = next(l for l in out.splitlines() if l.startswith("pytorch: "))[len("pytorch: ") :]
    ns = {"nn": nn, "OrderedDict": OrderedDict}
    exec(code, ns)
    model = ns["model"]
    state = safetensors.torch.load_file(str(Path(model_dir) / "model.safetensors"))
    model.load_state_dict(state, strict=True)
    return model.eval()


@torch.no_grad()
def logits_of(model, images_npy, out_npy, batch):
    """Runs `model` over an exported view in order; saves float32 [N, classes]."""
    images = np.load(images_npy, mmap_mode="r")
    rows = []
    for start in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch]))
        rows.append(model(x).float().numpy())
    logits = np.concatenate(rows).astype(np.float32)
    np.save(out_npy, logits)
    return logits.shape


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--distill", default="target/release/distill")
    p.add_argument("--data", required=True, help="dataset directory")
    p.add_argument("--split", default="train")
    p.add_argument("--teacher", required=True, help="distill model directory (the example model)")
    p.add_argument("--augment", default="flip,shift=2")
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--augment-seed", type=int, default=0)
    p.add_argument("-T", "--temperature", default="4")
    p.add_argument("--encoding", default="f16")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--out", required=True, help="working directory: views/, logits/, cache/")
    a = p.parse_args()
    out = Path(a.out)
    views, logits_dir, cache = out / "views", out / "logits", out / "cache"
    logits_dir.mkdir(parents=True, exist_ok=True)
    aug = ["--augment", a.augment, "--augment-seed", str(a.augment_seed)]

    # 1. The images of every view, as distill's view set holds them.
    run([a.distill, "views", "export", "--data", a.data, "--split", a.split,
         "--views", a.views, "--out", views] + aug)

    # 2. The external teacher on each view, in order.
    model = load_teacher(a.distill, a.teacher)
    files = []
    for v in range(a.views):
        f = logits_dir / f"view-{v}-logits.npy"
        shape = logits_of(model, views / f"view-{v}-images.npy", f, a.batch)
        print(f"view {v}: logits {shape} -> {f}", flush=True)
        files += ["--logits", f]

    # 3. The view set, from the logits.
    run([a.distill, "cache", "import", "--view-set", "--data", a.data, "--split", a.split,
         "-T", a.temperature, "--encoding", a.encoding, "--teacher-spec", "pytorch example",
         "--out", cache, "-q"] + aug + files)
    print(f"view set: {cache} (distill train --cache {cache} ...)")


if __name__ == "__main__":
    main()
