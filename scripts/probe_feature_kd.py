#!/usr/bin/env python3
"""A probe, in PyTorch, of feature-level distillation for the 5k residual student.

Question: does matching the teacher's intermediate features, on top of
distilling its outputs, teach `resnet:4x1-8x1-16x1-10` enough more to be worth
a feature cache in distill? The teacher is distill's committed ResNet-20
(`data/teachers/fashion-resnet20`, loaded through the `model.py` beside it).
Its targets are computed once, on the un-augmented training images, as a
cache would hold them.

Arms (each one seed, the SGD recipe of BENCHMARKS.md: batch 128, lr 0.1,
momentum 0.9, weight decay 5e-4, cosine per step, 10 epochs; 10% of the
training split held out for validation, drawn from a fixed permutation):

- `hard`: hard labels only;
- `kd`: 0.1 * CE + 0.9 * T^2 * KL at T 2 (distill's `-T 2 --alpha 0.1`);
- `kd+at`: `kd` plus attention transfer (Zagoruyko & Komodakis 2017):
  for each of the three stages, the squared activations averaged over
  channels, flattened and L2-normalised per image; the loss is
  beta/2 * mean((q_s - q_t)^2) summed over stages, beta 1000;
- `kd+fit`: `kd` plus a FitNet-style hint on the last stage: a 1x1
  convolution maps the student's 16 channels to the teacher's 64 and the
  loss is gamma * mean((r(s) - t)^2) on the teacher's stage output,
  gamma given by --fit-weight;
- `dist`: CE plus DIST (Huang et al. 2022, "Knowledge distillation from a
  stronger teacher"): at temperature --dist-tau, tau^2 * (beta * (1 - the
  mean Pearson correlation of student and teacher probabilities per image)
  + gamma * (1 - the same per class, across the batch)), beta = gamma =
  --dist-weight.

PyTorch is never a dependency of distill; run this from the benchmark
virtual environment (scripts/torch_reference.py says how to make one):

    /work/venv-torch/bin/python scripts/probe_feature_kd.py --arm kd+at --seed 0
"""

import argparse
import gzip
import json
import math
import time
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent


def read_idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def teacher_module(tdir):
    """The module `model.py` beside the teacher builds, and its residual block class."""
    scope = {}
    exec((tdir / "model.py").read_text(), scope)
    return scope["model"], scope["BasicBlock"]


def load_teacher(tdir):
    model, _ = teacher_module(tdir)
    model.load_state_dict(safetensors.torch.load_file(str(tdir / "model.safetensors")), strict=True)
    return model.eval()


class Student(nn.Module):
    """`resnet:4x1-8x1-16x1-10`: stem, one block per stage, pooling, linear."""

    def __init__(self, block, widths=(4, 8, 16), classes=10, mean=0.0, std=1.0):
        super().__init__()
        self.mean, self.std = mean, std
        self.stem = nn.Sequential(nn.Conv2d(1, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        self.stages = nn.ModuleList([
            block(widths[0], widths[0], 1), block(widths[0], widths[1], 2),
            block(widths[1], widths[2], 2)])
        self.fc = nn.Linear(widths[2], classes)

    def forward(self, x):
        x = self.stem((x - self.mean) / self.std)
        feats = []
        for s in self.stages:
            x = s(x)
            feats.append(x)
        return self.fc(x.mean((2, 3))), feats


def teacher_targets(teacher, images, batch=500):
    """Logits and the three stage outputs' attention maps and last features."""
    layers = teacher.layers
    norm = teacher.normalize
    logits, ats, last = [], [[], [], []], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = norm(images[i:i + batch])
            x = layers[2](layers[1](layers[0](x)))
            for si, (a, b) in enumerate([(3, 6), (6, 9), (9, 12)]):
                for li in range(a, b):
                    x = layers[li](x)
                ats[si].append(attention(x))
            last.append(x.half())
            logits.append(layers[14](layers[13](layers[12](x))))
    return torch.cat(logits), [torch.cat(a) for a in ats], torch.cat(last)


def attention(x):
    return F.normalize(x.pow(2).mean(1).flatten(1), dim=1)


def pearson(a, b, eps=1e-8):
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def evaluate(model, images, labels, batch=1000):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out, _ = model(images[i:i + batch])
            correct += (out.argmax(1) == labels[i:i + batch]).sum().item()
    model.train()
    return 100.0 * correct / len(images)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arm", choices=["hard", "kd", "kd+at", "kd+fit", "hard+at", "dist"], required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--at-beta", type=float, default=1000.0)
    ap.add_argument("--fit-weight", type=float, default=1.0)
    ap.add_argument("--dist-tau", type=float, default=1.0)
    ap.add_argument("--dist-weight", type=float, default=1.0)
    ap.add_argument("--weight-decay", type=float, default=5e-4)
    ap.add_argument("--widths", default="4,8,16")
    ap.add_argument("--data", default=str(ROOT / "data" / "fashion-mnist"))
    ap.add_argument("--teacher", default=str(ROOT / "data" / "teachers" / "fashion-resnet20"))
    ap.add_argument("--targets", default="/tmp/probe-targets.pt")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)

    d = Path(a.data)
    tr_x = torch.tensor(read_idx(d / "train-images-idx3-ubyte.gz"), dtype=torch.float32)[:, None] / 255
    tr_y = torch.tensor(read_idx(d / "train-labels-idx1-ubyte.gz").astype(np.int64))
    te_x = torch.tensor(read_idx(d / "t10k-images-idx3-ubyte.gz"), dtype=torch.float32)[:, None] / 255
    te_y = torch.tensor(read_idx(d / "t10k-labels-idx1-ubyte.gz").astype(np.int64))

    needs_teacher = a.arm != "hard"
    if needs_teacher:
        tp = Path(a.targets)
        if tp.exists():
            t_logits, t_ats, t_last = torch.load(tp)
        else:
            t0 = time.time()
            teacher = load_teacher(Path(a.teacher))
            t_logits, t_ats, t_last = teacher_targets(teacher, tr_x)
            torch.save((t_logits, t_ats, t_last), tp)
            agree = (t_logits.argmax(1) == tr_y).float().mean().item() * 100
            print(f"teacher targets in {time.time() - t0:.0f} s; agreement {agree:.2f}%")

    # 10% held out by a fixed permutation (not distill's: the same for all arms here).
    perm = torch.randperm(len(tr_x), generator=torch.Generator().manual_seed(1234))
    val_idx, fit_idx = perm[:6000], perm[6000:]

    torch.manual_seed(a.seed)
    widths = tuple(int(w) for w in a.widths.split(","))
    mean, std = 0.2860406, 0.35302424
    # The student's blocks are the teacher's `BasicBlock` (distill's residual block).
    _, block = teacher_module(Path(a.teacher))
    model = Student(block, widths, mean=mean, std=std)
    extra = []
    if a.arm == "kd+fit":
        regressor = nn.Conv2d(widths[2], 64, 1, bias=False)
        extra = list(regressor.parameters())
    steps_per_epoch = math.ceil(len(fit_idx) / 128)
    total = steps_per_epoch * a.epochs
    opt = torch.optim.SGD(list(model.parameters()) + extra, lr=0.1, momentum=0.9,
                          weight_decay=a.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))))
    g = torch.Generator().manual_seed(a.seed)
    T = a.temperature
    t0 = time.time()
    for epoch in range(a.epochs):
        order = fit_idx[torch.randperm(len(fit_idx), generator=g)]
        for i in range(0, len(order), 128):
            idx = order[i:i + 128]
            out, feats = model(tr_x[idx])
            ce = F.cross_entropy(out, tr_y[idx])
            if a.arm.startswith("kd"):
                kl = F.kl_div(F.log_softmax(out / T, 1), F.log_softmax(t_logits[idx] / T, 1),
                              log_target=True, reduction="batchmean")
                loss = a.alpha * ce + (1 - a.alpha) * T * T * kl
            elif a.arm == "dist":
                tau = a.dist_tau
                ps, pt = (out / tau).softmax(1), (t_logits[idx] / tau).softmax(1)
                inter = 1 - pearson(ps, pt).mean()
                intra = 1 - pearson(ps.t(), pt.t()).mean()
                loss = ce + tau * tau * a.dist_weight * (inter + intra)
            else:
                loss = ce
            if a.arm.endswith("+at"):
                for f, ta in zip(feats, t_ats):
                    loss = loss + a.at_beta / 2 * (attention(f) - ta[idx]).pow(2).mean()
            if a.arm == "kd+fit":
                loss = loss + a.fit_weight * (regressor(feats[2]) - t_last[idx].float()).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        val = evaluate(model, tr_x[val_idx], tr_y[val_idx])
        print(f"epoch {epoch + 1}: loss {loss.item():.4f} val {val:.2f} ({time.time() - t0:.0f} s)",
              flush=True)
    test = evaluate(model, te_x, te_y)
    result = dict(arm=a.arm, seed=a.seed, epochs=a.epochs, T=T, alpha=a.alpha,
                  at_beta=a.at_beta, fit_weight=a.fit_weight, dist_tau=a.dist_tau,
                  dist_weight=a.dist_weight, weight_decay=a.weight_decay,
                  widths=a.widths, val=val, test=test, seconds=round(time.time() - t0))
    print(json.dumps(result))
    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
