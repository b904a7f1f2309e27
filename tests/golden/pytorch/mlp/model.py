"""PyTorch module of the distill model mlp:12-8-5.

Load the weights beside it with
    model.load_state_dict(safetensors.torch.load_file("model.safetensors"), strict=True)
"""
from collections import OrderedDict

import torch
from torch import nn

model = nn.Sequential(OrderedDict(layers=nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 5))))
model.eval()
