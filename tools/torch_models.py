"""vit's architectures built in PyTorch from torchvision's own modules, from the config JSON
that `vit models --json` and the model files carry. Used by the benchmark peer
(tools/bench_torch.py) and the reference-fixture exporters under tests/fixtures.

Needs Debian's python3-torch and python3-torchvision (/usr/bin/python3).
"""
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock


def vision_transformer(img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads,
                       mlp_ratio, **_):
    """torchvision's VisionTransformer with timm's sizes (LayerNorm eps 1e-6, erf GELU, a
    cls token, learned positions); torchvision hard-codes RGB, so a grayscale model gets its
    own patch projection (its forward only calls conv_proj)."""
    model = torchvision.models.VisionTransformer(
        image_size=img_size, patch_size=patch_size, num_layers=depth, num_heads=num_heads,
        hidden_dim=embed_dim, mlp_dim=int(round(mlp_ratio * embed_dim)), num_classes=num_classes)
    if in_chans != 3:
        model.conv_proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
    return model


class CifarResNet(nn.Module):
    """The CIFAR-style ResNet of He et al. from torchvision's BasicBlock: a 3x3 stem
    convolution, BatchNorm, ReLU, stages of BasicBlocks (stride 2 and a 1x1 conv + BatchNorm
    shortcut when a stage starts), adaptive average pooling, a linear head."""

    def __init__(self, in_chans, widths, depths, classes):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        inplanes = widths[0]
        self.stages = []
        for i, (width, depth) in enumerate(zip(widths, depths)):
            blocks = []
            for b in range(depth):
                stride = 2 if i > 0 and b == 0 else 1
                downsample = None
                if stride != 1 or inplanes != width:
                    downsample = nn.Sequential(nn.Conv2d(inplanes, width, 1, stride, bias=False),
                                               nn.BatchNorm2d(width))
                blocks.append(BasicBlock(inplanes, width, stride, downsample))
                inplanes = width
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.stages.append(f"layer{i + 1}")
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        for name in self.stages:
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def build(arch, config):
    """The PyTorch twin of a vit model: arch "vit" or "resnet", config as vit writes it."""
    if arch == "vit":
        return vision_transformer(**config)
    if arch == "resnet":
        return CifarResNet(config["in_chans"], config["widths"], config["depths"],
                           config["num_classes"])
    raise ValueError(f"no PyTorch twin for architecture '{arch}'")
