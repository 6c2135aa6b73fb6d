"""A minimal torchvision-layout ResNet in PyTorch: a reference for weight conversion.

Module names match torchvision.models.resnet (conv1, bn1, relu, maxpool,
layer1..4 of BasicBlock / Bottleneck with downsample = Sequential(conv, bn),
avgpool, fc), with the v1.5 stride on the bottleneck's 3x3 conv.
"""

import torch
from torch import nn

BLOCKS = {'resnet18': ('basic', (2, 2, 2, 2)), 'resnet50': ('bottleneck', (3, 4, 6, 3))}


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, in_ch, ch, stride, downsample):
    super().__init__()
    self.conv1 = nn.Conv2d(in_ch, ch, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(ch)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(ch, ch, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(ch)
    self.downsample = downsample

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, in_ch, ch, stride, downsample):
    super().__init__()
    self.conv1 = nn.Conv2d(in_ch, ch, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(ch)
    self.conv2 = nn.Conv2d(ch, ch, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(ch)
    self.conv3 = nn.Conv2d(ch, ch * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(ch * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):

  def __init__(self, arch, num_classes):
    super().__init__()
    kind, stage_blocks = BLOCKS[arch]
    block = BasicBlock if kind == 'basic' else Bottleneck
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    in_ch = 64
    for i, (ch, n) in enumerate(zip((64, 128, 256, 512), stage_blocks)):
      layers = []
      for j in range(n):
        stride = 2 if i > 0 and j == 0 else 1
        downsample = None
        if stride != 1 or in_ch != ch * block.expansion:
          downsample = nn.Sequential(nn.Conv2d(in_ch, ch * block.expansion, 1, stride, bias=False),
                                     nn.BatchNorm2d(ch * block.expansion))
        layers.append(block(in_ch, ch, stride, downsample))
        in_ch = ch * block.expansion
      setattr(self, f'layer{i + 1}', nn.Sequential(*layers))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(in_ch, num_classes)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(self.avgpool(x), 1))


def random_resnet(arch, num_classes, seed=0):
  """Eval-mode ResNet with random weights and random BN affine params / running stats."""
  torch.manual_seed(seed)
  model = ResNet(arch, num_classes)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.2)
        m.running_mean.normal_(0.0, 0.2)
        m.running_var.uniform_(0.5, 2.0)
        m.num_batches_tracked.fill_(7)
  return model.eval()
