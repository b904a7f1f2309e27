"""PyTorch module of the distill model cnn:c32-p-c64-p-f128-10.

Load the weights beside it with
    model.load_state_dict(safetensors.torch.load_file("model.safetensors"), strict=True)
"""
from collections import OrderedDict

import torch
from torch import nn

class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean)[:, None], persistent=False)
        self.register_buffer("std", torch.tensor(std)[:, None], persistent=False)
    def forward(self, x):
        # per channel, over (channel, height, width) inputs or their flat rows
        y = x.reshape(x.shape[0], self.mean.shape[0], -1)
        return ((y - self.mean) / self.std).reshape(x.shape)
model = nn.Sequential(OrderedDict(normalize=Normalize([0.2860406], [0.35302424]), layers=nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10))))
model.eval()
