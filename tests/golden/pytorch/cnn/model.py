"""PyTorch module of the distill model cnn:i3x8x6-c4-p-c6-f7-5.

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
model = nn.Sequential(OrderedDict(normalize=Normalize([0.5, 0.4, 0.3], [0.25, 0.2, 0.1]), layers=nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(72, 7), nn.ReLU(), nn.Linear(7, 5))))
model.eval()
