#!/usr/bin/env python3
"""Golden outputs from PyTorch for distill's `model.py` and layers.

PyTorch is never a dependency of distill or of its tests: this script is run
by hand in a virtual environment outside the repository, its outputs are
committed under tests/golden/pytorch/, and tests/pytorch_golden.rs compares
distill against them.

    /work/venv-torch/bin/python scripts/pytorch_golden.py

For each model directory tests/golden/pytorch/NAME/ (an MLP, a CNN with input
normalisation, and a ResNet-8 with normalisation, narrow widths):

- `model.py` is the file distill writes beside a model (the Rust test checks
  that distill still writes exactly this text; regenerate it with
  `DISTILL_BLESS=1 cargo test --locked --test tests pytorch_golden` after an
  intended change). This script executes it to build the module.
- `model.safetensors`: the module's state_dict after seeded random weights,
  and, for batch norms, random affine parameters and running statistics and
  a step count, with distill's `distill.spec` and `distill.normalize`
  metadata. Loading it with `strict=True` is what a user does.
- `golden.safetensors`: `x` (a batch of 4 inputs), `eval` (the logits in
  eval mode), and for models with batch norm `train` (the logits in train
  mode: batch statistics) and `after.*` (every buffer after that train-mode
  forward: running statistics moved with momentum 0.1 and the step counter).
"""

import json
import pathlib

import torch
from safetensors.torch import save_file

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "golden" / "pytorch"

MODELS = {
    # name: (spec, normalisation or None, input shape per sample)
    "mlp": ("mlp:12-8-5", None, (12,)),
    "cnn": ("cnn:i3x8x6-c4-p-c6-f7-5", ([0.5, 0.4, 0.3], [0.25, 0.2, 0.1]), (3, 8, 6)),
    "resnet8": (
        "resnet:i3x12x12-8x1-16x1-32x1-10",
        ([0.45, 0.5, 0.55], [0.2, 0.25, 0.3]),
        (3, 12, 12),
    ),
}


def build(name):
    code = (ROOT / name / "model.py").read_text()
    scope = {}
    exec(compile(code, f"{name}/model.py", "exec"), scope)
    return scope["model"]


def randomise(model, gen):
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if key.endswith("num_batches_tracked"):
                t.fill_(7)
            elif key.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif key.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=gen) * 0.2)
            else:
                t.copy_(torch.randn(t.shape, generator=gen) * 0.3)


def main():
    for i, (name, (spec, norm, shape)) in enumerate(MODELS.items()):
        gen = torch.Generator().manual_seed(1000 + i)
        model = build(name)
        randomise(model, gen)
        meta = {"distill.spec": spec}
        if norm is not None:
            meta["distill.normalize"] = json.dumps({"mean": norm[0], "std": norm[1]})
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(ROOT / name / "model.safetensors"), metadata=meta)
        # A strict reload, as a user would do it.
        again = build(name)
        from safetensors.torch import load_file

        again.load_state_dict(load_file(str(ROOT / name / "model.safetensors")), strict=True)
        x = torch.rand((4, *shape), generator=gen)
        out = {"x": x}
        again.eval()
        with torch.no_grad():
            out["eval"] = again(x)
        has_bn = any(k.endswith("running_mean") for k in state)
        if has_bn:
            again.train()
            with torch.no_grad():
                out["train"] = again(x)
            for k, v in again.state_dict().items():
                if "running_" in k or k.endswith("num_batches_tracked"):
                    out[f"after.{k}"] = v.to(torch.float32).reshape(v.shape)
        save_file({k: v.contiguous() for k, v in out.items()}, str(ROOT / name / "golden.safetensors"))
        print(name, spec, {k: tuple(v.shape) for k, v in out.items() if not k.startswith("after.")})


if __name__ == "__main__":
    main()
