#!/usr/bin/env python3
"""distill beside PyTorch on the CPU: one training epoch per row, same recipe.

What it measures: samples/s of one shuffled training epoch of Fashion-MNIST
(60,000 images, pixels / 255, batch 128, Adam lr 1e-3) for each student row,
in PyTorch (a plain training loop) and in distill (`distill train`), run
ALTERNATELY in one process, for several rounds (median per row); plus the
teacher's forward pass over the 60k training images (PyTorch: eval/no_grad,
batch 500, log-softmax at T; distill: the whole `distill cache build`).
Both sides use the same thread count (torch.set_num_threads, RAYON_NUM_THREADS).

distill's time is what the binary reports, not process start-up: for `train`
the epoch's `epoch_seconds` in metrics.jsonl (the test-set evaluation after
the epoch is not included); for `cache build` the seconds on its summary line.

The same run also times a plain 2048^3 f32 matmul in PyTorch (the machine's
practical peak, GFLOP/s); each row's distill step GFLOP/s (3 x forward FLOPs
per sample, from `distill model info SPEC`; 1 x for the teacher forward) is
printed as a fraction of that peak: of the best matmul of the whole run, and,
paired, of the matmul timed again just before that row in the same round
(median over rounds), which cancels load that changes between rounds.

The KD row: distill trains from a cache built once with `distill cache
build` (T=4, f16) at T=4, alpha 0.5; PyTorch loads the committed teacher into
the module `distill model info` prints (strict state_dict), precomputes its
log_softmax(logits / T) once and trains from that array with the same loss,
alpha * CE + (1 - alpha) * T^2 * KL.

The ResNet rows train with their batch norms in training mode on both
sides. `--train-limit N` times the first N training images only (written as
a dataset of their own that both sides read, with the whole test split), for
rows too slow for a full epoch per round.

Run: `make bench-pytorch` (sets up .venv-bench, fetches data, builds the
release binary), or directly:
    python scripts/bench_pytorch.py --bin target/release/distill \
        --data data/fashion-mnist --rounds 3 [--rows mlp128,cnn8] [--out DIR]

`--device cuda` (a GPU machine; distill built with `make build-cuda`) runs
both sides there: PyTorch holds the images, labels and soft targets on the
GPU and synchronizes before each clock read; distill gets `--device cuda`;
the matmul is the GPU's f32 matmul (TF32 off, PyTorch's default).

PyTorch is a measuring stick only; distill never depends on it.
"""

import argparse
import gzip
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import OrderedDict
from datetime import datetime, timezone

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

# key -> (label, spec, kind); kind: hard, kd or teacher.
ROWS = OrderedDict(
    [
        ("mlp128", ("`mlp:784-128-10`, hard labels", "mlp:784-128-10", "hard")),
        ("mlp128kd", ("`mlp:784-128-10`, KD from the cache", "mlp:784-128-10", "kd")),
        ("mlp512", ("`mlp:784-512-512-10`", "mlp:784-512-512-10", "hard")),
        ("mlp800", ("`mlp:784-800-800-10`", "mlp:784-800-800-10", "hard")),
        ("cnn8", ("`cnn:c8-p-c16-p-10`", "cnn:c8-p-c16-p-10", "hard")),
        ("cnn32", ("`cnn:c32-p-c64-p-f128-10`", "cnn:c32-p-c64-p-f128-10", "hard")),
        ("resnet8", ("`resnet:16x1-32x1-64x1-10` (ResNet-8)", "resnet:16x1-32x1-64x1-10", "hard")),
        ("resnet8n", ("`resnet:8x1-16x1-32x1-10` (narrow ResNet-8)", "resnet:8x1-16x1-32x1-10", "hard")),
        ("teacher", ("teacher forward, 60k training images (distill: whole `cache build`)", None, "teacher")),
    ]
)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bin", default="target/release/distill")
    p.add_argument("--data", default="data/fashion-mnist")
    p.add_argument("--teacher", default="data/teachers/fashion-cnn")
    p.add_argument("--out", default="runs/bench-pytorch")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rows", default=",".join(ROWS), help="comma list of: " + ",".join(ROWS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--teacher-batch", type=int, default=500)
    p.add_argument("--matmul-n", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu, or cuda for both sides")
    p.add_argument("--train-limit", type=int, default=None,
                   help="time the first N training images only (both sides; the slow rows)")
    a = p.parse_args()
    a.rows = [r for r in a.rows.split(",") if r]
    for r in a.rows:
        if r not in ROWS:
            p.error(f"unknown row {r!r}; known: {','.join(ROWS)}")
    if a.rounds < 1:
        p.error("--rounds must be >= 1")
    return a


def read_idx(path):
    """An IDX file (optionally .gz) as a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(data, stem):
    for name in (stem, stem + ".gz"):
        path = os.path.join(data, name)
        if os.path.exists(path):
            return path
    sys.exit(f"{stem}[.gz] not found in {data} (run `make data`)")


def write_idx(path, array):
    """A uint8 array as a raw IDX file."""
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 8, array.ndim]))
        for d in array.shape:
            f.write(int(d).to_bytes(4, "big"))
        f.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def limited_data(a, work, images, labels):
    """The first `a.train_limit` training images (and the whole test split)
    as a dataset directory both sides read; returns its path."""
    out = os.path.join(work, f"data-{a.train_limit}")
    os.makedirs(out, exist_ok=True)
    write_idx(os.path.join(out, "train-images-idx3-ubyte"), images)
    write_idx(os.path.join(out, "train-labels-idx1-ubyte"), labels)
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        write_idx(os.path.join(out, stem), read_idx(find(a.data, stem)))
    return out


def run(cmd, env=None):
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return r.stdout


class Distill:
    """The distill binary, run with RAYON_NUM_THREADS set."""

    def __init__(self, a):
        self.a = a
        self.env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
        self.device_args = ["--device", a.device] if a.device != "cpu" else []
        self.info = {}

    def model_info(self, spec):
        if spec not in self.info:
            out = run([self.a.bin, "model", "info", spec])
            flops = int(re.search(r"forward FLOPs per sample (\d+)", out).group(1))
            # The module text runs to the end (a residual spec's starts with
            # the BasicBlock class).
            code = re.search(r"^pytorch: (.*)\Z", out, re.M | re.S).group(1).strip()
            self.info[spec] = (flops, code)
        return self.info[spec]

    def cache_build(self, out_dir):
        """Builds the train-split cache; returns the seconds it reports."""
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        a = self.a
        out = run(
            [a.bin, "cache", "build", "--teacher", a.teacher, "--data", a.data, "--split", "train",
             "-T", str(a.temperature), "--encoding", "f16", "--batch", str(a.teacher_batch),
             "--quiet", "--out", out_dir] + self.device_args,
            self.env,
        )
        return float(re.search(r", ([0-9.]+)s\s*$", out.strip()).group(1))

    def train(self, spec, out_dir, cache=None):
        """One epoch; returns the epoch seconds from metrics.jsonl."""
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        a = self.a
        cmd = [a.bin, "train", "--data", a.data, "--student", spec, "--epochs", "1",
               "--batch", str(a.batch), "--optimizer", "adam", "--lr", str(a.lr),
               "--schedule", "constant", "--seed", str(a.seed), "--quiet", "--out", out_dir,
               # The recipe is pixels / 255 for both sides.
               "--normalize", "none",
               # Both sides train all 60,000 images: no validation split
               # held out (distill's default holds out 10%).
               "--val-fraction", "0"] + self.device_args
        if cache:
            cmd += ["--cache", cache, "-T", str(a.temperature), "--alpha", str(a.alpha)]
        run(cmd, self.env)
        with open(os.path.join(out_dir, "metrics.jsonl")) as f:
            lines = [json.loads(l) for l in f if l.strip()]
        return lines[-1]["epoch_seconds"]


def is_image(spec):
    """Whether a spec reads images (N, C, H, W) rather than flat vectors."""
    return spec.startswith(("cnn", "resnet"))


def build_module(code):
    """The nn.Sequential that `distill model info` prints."""
    ns = {"torch": torch, "nn": nn, "OrderedDict": OrderedDict}
    exec(code, ns)
    return ns["model"]


class Torch:
    """The same work in PyTorch, data held as uint8 tensors."""

    def __init__(self, a, images, labels):
        self.a = a
        self.dev = torch.device(a.device)
        self.images = torch.from_numpy(images.copy()).to(self.dev)  # [N, 28, 28] uint8
        self.labels = torch.from_numpy(labels.astype(np.int64)).to(self.dev)
        self.n = len(self.labels)
        self.teacher_lp = None

    def inputs(self, idx, conv):
        x = self.images[idx].float().div_(255.0)
        return x.unsqueeze(1) if conv else x.reshape(len(idx), -1)

    def load_teacher(self, code):
        import safetensors.torch

        model = build_module(code)
        state = safetensors.torch.load_file(os.path.join(self.a.teacher, "model.safetensors"))
        model.load_state_dict(state, strict=True)
        return model.to(self.dev).eval()

    def teacher_forward(self, model, conv):
        """Seconds for log_softmax(teacher(x) / T) over all images; keeps the result."""
        a = self.a
        out = torch.empty(self.n, 10, device=self.dev)
        sync(self.dev)
        start = time.perf_counter()
        with torch.no_grad():
            for pos in range(0, self.n, a.teacher_batch):
                idx = torch.arange(pos, min(pos + a.teacher_batch, self.n), device=self.dev)
                out[pos : pos + len(idx)] = F.log_softmax(model(self.inputs(idx, conv)) / a.temperature, dim=1)
        sync(self.dev)
        secs = time.perf_counter() - start
        self.teacher_lp = out
        return secs

    def train(self, code, conv, kd, seed):
        """Seconds for one shuffled epoch (model built outside the timing)."""
        a = self.a
        torch.manual_seed(seed)
        model = build_module(code).to(self.dev).train()
        opt = torch.optim.Adam(model.parameters(), lr=a.lr)
        t, alpha = a.temperature, a.alpha
        sync(self.dev)
        start = time.perf_counter()
        perm = torch.randperm(self.n, device=self.dev)
        for pos in range(0, self.n, a.batch):
            idx = perm[pos : pos + a.batch]
            logits = model(self.inputs(idx, conv))
            loss = F.cross_entropy(logits, self.labels[idx])
            if kd:
                soft = F.kl_div(F.log_softmax(logits / t, dim=1), self.teacher_lp[idx],
                                reduction="batchmean", log_target=True)
                loss = alpha * loss + (1.0 - alpha) * t * t * soft
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(self.dev)
        return time.perf_counter() - start


def sync(dev):
    """Waits for the GPU's queued work, so a clock read counts it."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def matmul_gflops(n, dev, reps=5):
    """Best GFLOP/s of an n x n x n f32 matmul over `reps` timed runs."""
    x = torch.randn(n, n, device=dev)
    y = torch.randn(n, n, device=dev)
    out = torch.empty(n, n, device=dev)
    torch.matmul(x, y, out=out)  # warm-up
    best = float("inf")
    for _ in range(reps):
        sync(dev)
        start = time.perf_counter()
        torch.matmul(x, y, out=out)
        sync(dev)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def main():
    a = parse_args()
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    work = os.path.join(a.out, "work")
    os.makedirs(work, exist_ok=True)
    d = Distill(a)
    images = read_idx(find(a.data, "train-images-idx3-ubyte"))
    labels = read_idx(find(a.data, "train-labels-idx1-ubyte"))
    if a.train_limit:
        images, labels = images[: a.train_limit], labels[: a.train_limit]
        a.data = limited_data(a, work, images, labels)
    pt = Torch(a, images, labels)
    n = pt.n

    teacher_spec = json.load(open(os.path.join(a.teacher, "model.json")))["spec"]
    teacher_flops, teacher_code = d.model_info(teacher_spec)
    teacher = pt.load_teacher(teacher_code)
    teacher_conv = is_image(teacher_spec)
    # PyTorch's soft targets (also warms the teacher up); distill's cache, once.
    pt.teacher_forward(teacher, teacher_conv)
    kd_cache = os.path.join(work, "cache-kd")
    if "mlp128kd" in a.rows:
        print(f"building the KD cache {kd_cache} (T={a.temperature:g}, f16)", flush=True)
        d.cache_build(kd_cache)

    print(f"torch {torch.__version__} on {a.device}, {a.threads} threads (torch) / RAYON_NUM_THREADS={a.threads} (distill)", flush=True)
    times = {r: {"torch": [], "distill": []} for r in a.rows}
    peaks = []
    # The matmul again just before each row's pair, so a row's GFLOP/s can be
    # set against the machine as it was for that row (the load varies).
    row_peaks = {r: [] for r in a.rows}
    for rnd in range(a.rounds):
        peaks.append(matmul_gflops(a.matmul_n, pt.dev))
        print(f"round {rnd + 1}/{a.rounds}: matmul {a.matmul_n}^3 {peaks[-1]:.1f} GFLOP/s", flush=True)
        for r in a.rows:
            _, spec, kind = ROWS[r]
            row_peaks[r].append(peaks[-1] if r == a.rows[0] else matmul_gflops(a.matmul_n, pt.dev))
            # Alternate which side goes first from round to round.
            order = ["torch", "distill"] if rnd % 2 == 0 else ["distill", "torch"]
            for side in order:
                if kind == "teacher":
                    if side == "torch":
                        s = pt.teacher_forward(teacher, teacher_conv)
                    else:
                        s = d.cache_build(os.path.join(work, "cache-round"))
                else:
                    code = d.model_info(spec)[1]
                    if side == "torch":
                        s = pt.train(code, is_image(spec), kind == "kd", a.seed + rnd)
                    else:
                        s = d.train(spec, os.path.join(work, f"train-{r}"),
                                    kd_cache if kind == "kd" else None)
                times[r][side].append(n / s)
                print(f"  {r:9} {side:7} {n / s:10,.0f} samples/s ({s:.2f}s)", flush=True)
        # The table so far, so an interrupted run still leaves its medians.
        write_table(a, d, times, peaks, row_peaks, teacher_flops, rnd + 1, final=rnd + 1 == a.rounds)
    shutil.rmtree(os.path.join(work, "cache-round"), ignore_errors=True)


def write_table(a, d, times, peaks, row_peaks, teacher_flops, done, final):
    """Medians over the rounds done; prints the table when final. The last
    column pairs each round's distill step with the matmul timed just before
    that row, then takes the median of those fractions."""
    peak = max(peaks)
    rows = []
    for r in a.rows:
        label, spec, kind = ROWS[r]
        pts = statistics.median(times[r]["torch"])
        ds = statistics.median(times[r]["distill"])
        if kind == "teacher":
            step_flops = teacher_flops
        else:
            step_flops = 3 * d.model_info(spec)[0]
        gf = ds * step_flops / 1e9
        paired = statistics.median(
            s * step_flops / 1e9 / p for s, p in zip(times[r]["distill"], row_peaks[r])
        )
        rows.append(
            f"| {label} | {pts:,.0f} | {ds:,.0f} | {ds / pts:.2f} | {gf:.1f} | {100 * gf / peak:.1f}% "
            f"| {100 * paired:.1f}% |"
        )
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = [
        f"{when}; torch {torch.__version__}; device {a.device}; {a.threads} threads each; "
        f"{done} of {a.rounds} alternated rounds, medians;"
        + (f" the first {a.train_limit} training images;" if a.train_limit else ""),
        f"PyTorch {a.matmul_n}^3 f32 matmul: best {peak:.1f} GFLOP/s (per round: "
        + ", ".join(f"{p:.1f}" for p in peaks) + ")",
        "",
        "| work | PyTorch samples/s | distill samples/s | distill/PyTorch | distill GFLOP/s "
        "| % of the run's best matmul | % of the row's own matmul (median of rounds) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    table = "\n".join(head + rows) + "\n"
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(table)
    with open(os.path.join(a.out, "raw.json"), "w") as f:
        json.dump({"samples_per_sec": times, "matmul_gflops": peaks, "row_matmul_gflops": row_peaks, "args": vars(a)}, f, indent=1)
    if final:
        print()
        print(table)
        print(f"wrote {os.path.join(a.out, 'table.md')}")


if __name__ == "__main__":
    main()
