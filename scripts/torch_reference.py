#!/usr/bin/env python3
"""Reference values from PyTorch for distill's tests.

PyTorch is never a dependency of distill or of its tests: this script is run
by hand, its outputs are committed, and the tests compare against the
committed numbers only. Rerun it when a reference must change, and say why in
the commit.

Setup (a virtual environment outside the repository, CPU is enough):

    python3 -m venv /work/venv-torch
    /work/venv-torch/bin/pip install torch numpy safetensors
    cargo build --locked
    /work/venv-torch/bin/python scripts/torch_reference.py --distill target/debug/distill

What it does:

1. For each spec, takes the module that `distill model info SPEC` prints (the
   line after `pytorch: `), runs it, and checks that its `state_dict` keys and
   shapes are what distill writes (tests/golden/torch/*.safetensors).
2. `tiny-cnn`: a small CNN with a non-square input (`cnn:i2x4x6-c3-p-f4-5`),
   seeded random weights and inputs; writes its `state_dict` as safetensors
   (with the `distill.spec` metadata distill reads) and the logits PyTorch
   computes. Loading that file in distill and predicting checks the conv
   layout and the flatten permutation of the first dense layer against
   PyTorch, not against distill's own writer.
3. `teacher-logits`: loads the committed teacher
   (`data/teachers/fashion-cnn/model.safetensors`) into the printed module
   with `load_state_dict(..., strict=True)` and records its logits on the
   first test images of the committed subset (pixels / 255).
4. Prints the optimizer and schedule references (torch.optim.AdamW, Adam,
   SGD with momentum, CosineAnnealingLR) that tests/torch_reference.rs holds
   as constants, with this script's code quoted beside them.
5. Prints the logit-standardised KD loss and its gradient (Sun et al., CVPR
   2024: both sides' logits z-scored per row before the softmax at T) for
   `distill train --logit-standardize --soft-scale 9`, also held as constants.
6. Prints the DIST loss and its gradient (Huang et al., NeurIPS 2022: one
   minus the Pearson correlation of student and teacher probabilities at T,
   per row and per column, as the paper's code computes it) for
   `distill train --loss dist`, held as constants too.
"""

import argparse
import gzip
import json
import subprocess
from collections import OrderedDict
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from safetensors import safe_open
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "golden" / "torch"


def printed_module(distill, spec):
    """The module `distill model info SPEC` prints, built."""
    out = subprocess.run(
        [distill, "model", "info", spec], check=True, capture_output=True, text=True
    ).stdout
    code = next(l for l in out.splitlines() if l.startswith("pytorch: "))
    code = code[len("pytorch: ") :]
    ns = {"nn": nn, "OrderedDict": OrderedDict}
    exec(code, ns)
    return code, ns["model"]


def floats(t):
    """A tensor's values as a flat list of Python floats (exact f32 values)."""
    return [float(v) for v in t.detach().reshape(-1).tolist()]


def tiny_cnn(distill):
    spec = "cnn:i2x4x6-c3-p-f4-5"
    code, model = printed_module(distill, spec)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    x = torch.rand(3, 2, 4, 6)
    logits = model(x)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(
        state, OUT / "tiny-cnn.safetensors", metadata={"distill.spec": spec}
    )
    ref = OrderedDict(
        spec=spec,
        pytorch=code,
        keys={k: list(v.shape) for k, v in state.items()},
        batch=x.shape[0],
        inputs=floats(x),
        logits=floats(logits),
    )
    (OUT / "tiny-cnn.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(f"tiny-cnn: {spec}, {len(state)} tensors, logits[0] = {floats(logits)[:5]}")


def idx_images(path, n):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = int.from_bytes(raw[3:4], "big")
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
    per = int(np.prod(shape[1:]))
    return data[: n * per].reshape(n, 1, shape[1], shape[2])


def teacher_logits(distill, n=8):
    weights = ROOT / "data/teachers/fashion-cnn/model.safetensors"
    with safe_open(str(weights), "pt") as f:
        spec = f.metadata()["distill.spec"]
    code, model = printed_module(distill, spec)
    # strict=True: every key of the file is a key of the module and back.
    model.load_state_dict(safetensors.torch.load_file(str(weights)), strict=True)
    images = idx_images(ROOT / "data/fashion-mnist-small/t10k-images-idx3-ubyte.gz", n)
    x = torch.from_numpy(images.astype(np.float32) / np.float32(255.0))
    with torch.no_grad():
        logits = model(x)
    ref = OrderedDict(
        model="data/teachers/fashion-cnn",
        spec=spec,
        pytorch=code,
        split="test",
        samples=list(range(n)),
        logits=floats(logits),
    )
    (OUT / "teacher-logits.json").write_text(json.dumps(ref, indent=1) + "\n")
    print(f"teacher: {spec} loaded strictly; {n} rows of logits written")


# ---- optimizers and schedule: a Linear(3, 2), loss mean((W x + b)^2) ----

W0 = [[0.5, -0.25, 0.75], [-0.5, 1.0, 0.25]]
B0 = [0.125, -0.25]
STEPS = 5


def batch(step):
    # 4 rows of 3 inputs, exact in f32: ((3*i + j + step) % 5) * 0.25 - 0.5
    return torch.tensor(
        [[((3 * i + j + step) % 5) * 0.25 - 0.5 for j in range(3)] for i in range(4)]
    )


def run(make_opt, cosine):
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(W0))
        lin.bias.copy_(torch.tensor(B0))
    opt = make_opt(lin.parameters())
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS) if cosine else None
    for s in range(STEPS):
        opt.zero_grad()
        loss = lin(batch(s)).square().mean()
        loss.backward()
        opt.step()
        if sched:
            sched.step()
    return floats(lin.weight) + floats(lin.bias)


def rust(name, values):
    # numpy prints the shortest decimal that reads back as the same f32.
    body = ", ".join(str(np.float32(v)) for v in values)
    return f"const {name}: [f32; {len(values)}] = [{body}];"


def optimizers():
    cases = [
        (
            "ADAMW_COSINE",
            lambda p: torch.optim.AdamW(p, lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1),
            True,
        ),
        (
            "ADAM_L2_CONSTANT",
            lambda p: torch.optim.Adam(p, lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1),
            False,
        ),
        (
            "SGD_MOMENTUM_COSINE",
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0, nesterov=False, weight_decay=0.01),
            True,
        ),
    ]
    for name, make, cosine in cases:
        print(rust(name, run(make, cosine)))
    # The learning rate of each of 10 steps under CosineAnnealingLR(T_max=10).
    p = [nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(p, lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    print("const COSINE_LR_10: [f64; 10] = [" + ", ".join(repr(v) for v in lrs) + "];")


def standardize(x):
    # Population variance, epsilon under the root: dfdx's `normalize`.
    return (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, unbiased=False, keepdim=True) + 1e-7)


def logit_standardized_kd():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.1, -1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    z = torch.tensor([[0.5, 3.0, 0.0], [0.0, 0.0, 4.0]], dtype=torch.float64)
    y = torch.tensor([1, 2])
    t, alpha, scale = 2.0, 0.3, 9.0
    ce = nn.functional.cross_entropy(s, y)
    kl = nn.functional.kl_div(
        nn.functional.log_softmax(standardize(s) / t, 1),
        nn.functional.log_softmax(standardize(z) / t, 1),
        log_target=True,
        reduction="batchmean",
    )
    loss = alpha * ce + (1 - alpha) * scale * t * t * kl
    loss.backward()
    print(rust("LSKD_LOSS", [loss.item()]))
    print(rust("LSKD_GRAD", s.grad.flatten().tolist()))


def pearson(a, b, eps=1e-8):
    # DIST's code: cosine similarity of the row-centred rows.
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss():
    s = torch.tensor([[1.0, 2.0, 0.5], [0.1, -1.0, 2.0], [0.3, 0.3, -0.7]],
                     dtype=torch.float64, requires_grad=True)
    z = torch.tensor([[0.5, 3.0, 0.0], [0.0, 0.0, 4.0], [1.0, -1.0, 0.5]], dtype=torch.float64)
    y = torch.tensor([1, 2, 0])
    t, alpha = 2.0, 0.3
    ps, pt = (s / t).softmax(1), (z / t).softmax(1)
    inter = 1 - pearson(ps, pt).mean()
    intra = 1 - pearson(ps.t(), pt.t()).mean()
    ce = nn.functional.cross_entropy(s, y)
    loss = alpha * ce + (1 - alpha) * t * t * (inter + intra)
    loss.backward()
    print(rust("DIST_LOSS", [loss.item()]))
    print(rust("DIST_GRAD", s.grad.flatten().tolist()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--distill", default=str(ROOT / "target/debug/distill"))
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}")
    tiny_cnn(a.distill)
    teacher_logits(a.distill)
    optimizers()
    logit_standardized_kd()
    dist_loss()


if __name__ == "__main__":
    main()
