"""PyTorch module of the distill model resnet:16x3-32x3-64x3-10.

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
class BasicBlock(nn.Module):
    def __init__(self, inp, out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.shortcut = nn.Sequential()
        if stride != 1 or inp != out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inp, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))

model = nn.Sequential(OrderedDict(normalize=Normalize([0.2860406], [0.35302424]), layers=nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), BasicBlock(16, 16, 1), BasicBlock(16, 16, 1), BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 32, 1), BasicBlock(32, 32, 1), BasicBlock(32, 64, 2), BasicBlock(64, 64, 1), BasicBlock(64, 64, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))))
model.eval()
