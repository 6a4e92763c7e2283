"""PyTorch reference networks for the parity tests, with the module structure (and so the state-dict keys)
of the projects whose checkpoints the Flax ports load:

* face.evoLVe IR / IR-SE as used by OPOM (``zhongyy/OPOM``, ``code/generation/backbone/model_irse.py``),
  including OPOM's input normalisation inside ``forward``;
* InsightFace arcface_torch ``IResNet`` (``recognition/arcface_torch/backbones/iresnet.py``), fed
  ``(x - 127.5) / 127.5`` as in its ``inference.py``;
* MobileFaceNet of ``TreB1eN/InsightFace_Pytorch`` (``model.py``), fed ``(x - 127.5) / 127.5``;
* facenet-pytorch ``InceptionResnetV1`` (``timesler/facenet-pytorch``, ``models/inception_resnet_v1.py``),
  fed ``fixed_image_standardization`` = ``(x - 127.5) / 128``, embeddings before its final L2 normalisation.

Every ``forward`` takes NCHW float images in [0, 255]. Written for the tests only: torch is a test dependency.
"""

from __future__ import annotations

import torch
from torch import nn

# ---------------------------------------------------------------------------------------------------------
# face.evoLVe (OPOM) IR.


class Flatten(nn.Module):

  def forward(self, x):
    return x.reshape(x.shape[0], -1)


class SEModule(nn.Module):

  def __init__(self, channels, reduction):
    super().__init__()
    self.avg_pool = nn.AdaptiveAvgPool2d(1)
    self.fc1 = nn.Conv2d(channels, channels // reduction, 1, padding=0, bias=False)
    self.relu = nn.ReLU()
    self.fc2 = nn.Conv2d(channels // reduction, channels, 1, padding=0, bias=False)
    self.sigmoid = nn.Sigmoid()

  def forward(self, x):
    s = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
    return x * s


class BottleneckIR(nn.Module):

  def __init__(self, in_channel, depth, stride, se=False):
    super().__init__()
    if in_channel == depth:
      self.shortcut_layer = nn.MaxPool2d(1, stride)
    else:
      self.shortcut_layer = nn.Sequential(
          nn.Conv2d(in_channel, depth, (1, 1), stride, bias=False), nn.BatchNorm2d(depth))
    layers = [
        nn.BatchNorm2d(in_channel),
        nn.Conv2d(in_channel, depth, (3, 3), (1, 1), 1, bias=False),
        nn.PReLU(depth),
        nn.Conv2d(depth, depth, (3, 3), stride, 1, bias=False),
        nn.BatchNorm2d(depth),
    ]
    if se:
      layers.append(SEModule(depth, 16))
    self.res_layer = nn.Sequential(*layers)

  def forward(self, x):
    return self.res_layer(x) + self.shortcut_layer(x)


EVOLVE_UNITS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}


class EvolveBackbone(nn.Module):
  """face.evoLVe ``Backbone([112, 112], num_layers, mode)`` with OPOM's ``(x - 127.5) * 0.078125``."""

  def __init__(self, num_layers=50, mode="ir"):
    super().__init__()
    self.input_layer = nn.Sequential(nn.Conv2d(3, 64, (3, 3), 1, 1, bias=False), nn.BatchNorm2d(64),
                                     nn.PReLU(64))
    self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(), Flatten(),
                                      nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512))
    units, in_channel = [], 64
    for depth, n in zip((64, 128, 256, 512), EVOLVE_UNITS[num_layers]):
      for i in range(n):
        units.append(BottleneckIR(in_channel, depth, 2 if i == 0 else 1, se=(mode == "ir_se")))
        in_channel = depth
    self.body = nn.Sequential(*units)

  def forward(self, x):
    x = (x - 127.5) * 0.078125
    return self.output_layer(self.body(self.input_layer(x)))


# ---------------------------------------------------------------------------------------------------------
# InsightFace arcface_torch iresnet.


def _conv3x3(cin, cout, stride=1):
  return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
    self.conv1 = _conv3x3(inplanes, planes)
    self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
    self.prelu = nn.PReLU(planes)
    self.conv2 = _conv3x3(planes, planes, stride)
    self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
    self.downsample = downsample

  def forward(self, x):
    out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
    identity = x if self.downsample is None else self.downsample(x)
    return out + identity


class IResNet(nn.Module):
  """arcface_torch ``IResNet(IBasicBlock, layers)``; input [0, 255] normalised as its inference script."""

  def __init__(self, layers, num_features=512):
    super().__init__()
    self.inplanes = 64
    self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(64, eps=1e-05)
    self.prelu = nn.PReLU(64)
    self.layer1 = self._make_layer(64, layers[0])
    self.layer2 = self._make_layer(128, layers[1])
    self.layer3 = self._make_layer(256, layers[2])
    self.layer4 = self._make_layer(512, layers[3])
    self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
    self.dropout = nn.Dropout(p=0.0)
    self.fc = nn.Linear(512 * 7 * 7, num_features)
    self.features = nn.BatchNorm1d(num_features, eps=1e-05)

  def _make_layer(self, planes, blocks, stride=2):
    downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                               nn.BatchNorm2d(planes, eps=1e-05))
    layers = [IBasicBlock(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes
    layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = (x - 127.5) / 127.5
    x = self.prelu(self.bn1(self.conv1(x)))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    x = torch.flatten(self.bn2(x), 1)
    return self.features(self.fc(self.dropout(x)))


# ---------------------------------------------------------------------------------------------------------
# MobileFaceNet (TreB1eN/InsightFace_Pytorch).


class ConvBlock(nn.Module):

  def __init__(self, in_c, out_c, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups=1):
    super().__init__()
    self.conv = nn.Conv2d(in_c, out_c, kernel_size=kernel, groups=groups, stride=stride, padding=padding,
                          bias=False)
    self.bn = nn.BatchNorm2d(out_c)
    self.prelu = nn.PReLU(out_c)

  def forward(self, x):
    return self.prelu(self.bn(self.conv(x)))


class LinearBlock(nn.Module):

  def __init__(self, in_c, out_c, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups=1):
    super().__init__()
    self.conv = nn.Conv2d(in_c, out_c, kernel_size=kernel, groups=groups, stride=stride, padding=padding,
                          bias=False)
    self.bn = nn.BatchNorm2d(out_c)

  def forward(self, x):
    return self.bn(self.conv(x))


class DepthWise(nn.Module):

  def __init__(self, in_c, out_c, residual=False, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=1):
    super().__init__()
    self.conv = ConvBlock(in_c, groups)
    self.conv_dw = ConvBlock(groups, groups, groups=groups, kernel=kernel, padding=padding, stride=stride)
    self.project = LinearBlock(groups, out_c)
    self.residual = residual

  def forward(self, x):
    out = self.project(self.conv_dw(self.conv(x)))
    return x + out if self.residual else out


class Residual(nn.Module):

  def __init__(self, c, num_block, groups):
    super().__init__()
    self.model = nn.Sequential(*[
        DepthWise(c, c, residual=True, kernel=(3, 3), padding=(1, 1), stride=(1, 1), groups=groups)
        for _ in range(num_block)
    ])

  def forward(self, x):
    return self.model(x)


class MobileFaceNet(nn.Module):
  """``MobileFaceNet(embedding_size)``; returns the embedding before its final ``l2_norm``."""

  def __init__(self, embedding_size=512):
    super().__init__()
    self.conv1 = ConvBlock(3, 64, kernel=(3, 3), stride=(2, 2), padding=(1, 1))
    self.conv2_dw = ConvBlock(64, 64, kernel=(3, 3), stride=(1, 1), padding=(1, 1), groups=64)
    self.conv_23 = DepthWise(64, 64, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=128)
    self.conv_3 = Residual(64, num_block=4, groups=128)
    self.conv_34 = DepthWise(64, 128, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=256)
    self.conv_4 = Residual(128, num_block=6, groups=256)
    self.conv_45 = DepthWise(128, 128, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=512)
    self.conv_5 = Residual(128, num_block=2, groups=256)
    self.conv_6_sep = ConvBlock(128, 512, kernel=(1, 1), stride=(1, 1), padding=(0, 0))
    self.conv_6_dw = LinearBlock(512, 512, groups=512, kernel=(7, 7), stride=(1, 1), padding=(0, 0))
    self.conv_6_flatten = Flatten()
    self.linear = nn.Linear(512, embedding_size, bias=False)
    self.bn = nn.BatchNorm1d(embedding_size)

  def forward(self, x):
    x = (x - 127.5) / 127.5
    for m in (self.conv1, self.conv2_dw, self.conv_23, self.conv_3, self.conv_34, self.conv_4, self.conv_45,
              self.conv_5, self.conv_6_sep, self.conv_6_dw, self.conv_6_flatten, self.linear, self.bn):
      x = m(x)
    return x


# ---------------------------------------------------------------------------------------------------------
# facenet-pytorch InceptionResnetV1.


class BasicConv2d(nn.Module):

  def __init__(self, in_planes, out_planes, kernel_size, stride, padding=0):
    super().__init__()
    self.conv = nn.Conv2d(in_planes, out_planes, kernel_size=kernel_size, stride=stride, padding=padding,
                          bias=False)
    self.bn = nn.BatchNorm2d(out_planes, eps=0.001, momentum=0.1, affine=True)
    self.relu = nn.ReLU()

  def forward(self, x):
    return self.relu(self.bn(self.conv(x)))


class Block35(nn.Module):

  def __init__(self, scale=1.0):
    super().__init__()
    self.scale = scale
    self.branch0 = BasicConv2d(256, 32, 1, 1)
    self.branch1 = nn.Sequential(BasicConv2d(256, 32, 1, 1), BasicConv2d(32, 32, 3, 1, 1))
    self.branch2 = nn.Sequential(BasicConv2d(256, 32, 1, 1), BasicConv2d(32, 32, 3, 1, 1),
                                 BasicConv2d(32, 32, 3, 1, 1))
    self.conv2d = nn.Conv2d(96, 256, kernel_size=1, stride=1)
    self.relu = nn.ReLU()

  def forward(self, x):
    out = torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)
    return self.relu(self.conv2d(out) * self.scale + x)


class Block17(nn.Module):

  def __init__(self, scale=1.0):
    super().__init__()
    self.scale = scale
    self.branch0 = BasicConv2d(896, 128, 1, 1)
    self.branch1 = nn.Sequential(BasicConv2d(896, 128, 1, 1), BasicConv2d(128, 128, (1, 7), 1, (0, 3)),
                                 BasicConv2d(128, 128, (7, 1), 1, (3, 0)))
    self.conv2d = nn.Conv2d(256, 896, kernel_size=1, stride=1)
    self.relu = nn.ReLU()

  def forward(self, x):
    out = torch.cat((self.branch0(x), self.branch1(x)), 1)
    return self.relu(self.conv2d(out) * self.scale + x)


class Block8(nn.Module):

  def __init__(self, scale=1.0, noReLU=False):  # pylint: disable=invalid-name
    super().__init__()
    self.scale = scale
    self.noReLU = noReLU  # pylint: disable=invalid-name
    self.branch0 = BasicConv2d(1792, 192, 1, 1)
    self.branch1 = nn.Sequential(BasicConv2d(1792, 192, 1, 1), BasicConv2d(192, 192, (1, 3), 1, (0, 1)),
                                 BasicConv2d(192, 192, (3, 1), 1, (1, 0)))
    self.conv2d = nn.Conv2d(384, 1792, kernel_size=1, stride=1)
    if not noReLU:
      self.relu = nn.ReLU()

  def forward(self, x):
    out = torch.cat((self.branch0(x), self.branch1(x)), 1)
    out = self.conv2d(out) * self.scale + x
    return out if self.noReLU else self.relu(out)


class Mixed6a(nn.Module):

  def __init__(self):
    super().__init__()
    self.branch0 = BasicConv2d(256, 384, 3, 2)
    self.branch1 = nn.Sequential(BasicConv2d(256, 192, 1, 1), BasicConv2d(192, 192, 3, 1, 1),
                                 BasicConv2d(192, 256, 3, 2))
    self.branch2 = nn.MaxPool2d(3, stride=2)

  def forward(self, x):
    return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x)), 1)


class Mixed7a(nn.Module):

  def __init__(self):
    super().__init__()
    self.branch0 = nn.Sequential(BasicConv2d(896, 256, 1, 1), BasicConv2d(256, 384, 3, 2))
    self.branch1 = nn.Sequential(BasicConv2d(896, 256, 1, 1), BasicConv2d(256, 256, 3, 2))
    self.branch2 = nn.Sequential(BasicConv2d(896, 256, 1, 1), BasicConv2d(256, 256, 3, 1, 1),
                                 BasicConv2d(256, 256, 3, 2))
    self.branch3 = nn.MaxPool2d(3, stride=2)

  def forward(self, x):
    return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1)


class InceptionResnetV1(nn.Module):
  """facenet-pytorch ``InceptionResnetV1(classify=False)``; returns ``last_bn`` output (before F.normalize)."""

  def __init__(self, num_classes=None):
    super().__init__()
    self.conv2d_1a = BasicConv2d(3, 32, 3, 2)
    self.conv2d_2a = BasicConv2d(32, 32, 3, 1)
    self.conv2d_2b = BasicConv2d(32, 64, 3, 1, 1)
    self.maxpool_3a = nn.MaxPool2d(3, stride=2)
    self.conv2d_3b = BasicConv2d(64, 80, 1, 1)
    self.conv2d_4a = BasicConv2d(80, 192, 3, 1)
    self.conv2d_4b = BasicConv2d(192, 256, 3, 2)
    self.repeat_1 = nn.Sequential(*[Block35(scale=0.17) for _ in range(5)])
    self.mixed_6a = Mixed6a()
    self.repeat_2 = nn.Sequential(*[Block17(scale=0.10) for _ in range(10)])
    self.mixed_7a = Mixed7a()
    self.repeat_3 = nn.Sequential(*[Block8(scale=0.20) for _ in range(5)])
    self.block8 = Block8(noReLU=True)
    self.avgpool_1a = nn.AdaptiveAvgPool2d(1)
    self.dropout = nn.Dropout(0.6)
    self.last_linear = nn.Linear(1792, 512, bias=False)
    self.last_bn = nn.BatchNorm1d(512, eps=0.001, momentum=0.1, affine=True)
    if num_classes is not None:  # the pretrained checkpoints carry their classifier
      self.logits = nn.Linear(512, num_classes)

  def forward(self, x):
    x = (x - 127.5) / 128.0
    for m in (self.conv2d_1a, self.conv2d_2a, self.conv2d_2b, self.maxpool_3a, self.conv2d_3b,
              self.conv2d_4a, self.conv2d_4b, self.repeat_1, self.mixed_6a, self.repeat_2, self.mixed_7a,
              self.repeat_3, self.block8, self.avgpool_1a, self.dropout):
      x = m(x)
    return self.last_bn(self.last_linear(x.view(x.shape[0], -1)))


# ---------------------------------------------------------------------------------------------------------
# Making random weights matter.


@torch.no_grad()
def randomize_(model: nn.Module, calibration: torch.Tensor, seed: int = 0) -> nn.Module:
  """Random BN affine parameters, PReLU slopes and biases, then BN running statistics that matter.

  The running statistics of every ``BatchNorm2d`` are first measured on ``calibration`` (one train-mode
  pass with cumulative averaging, so activations keep a sane scale through deep nets) and then perturbed;
  the ``BatchNorm1d`` of the embedding (and any BN that sees a 1x1 map) gets random statistics of unit
  scale. A port that ignored or mixed up
  ``running_mean``/``running_var`` would fail. Leaves the model in eval mode.
  """
  g = torch.Generator().manual_seed(seed)

  def uniform(t, lo, hi):
    t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

  for m in model.modules():
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
      uniform(m.weight, 0.5, 1.5)
      uniform(m.bias, -0.2, 0.2)
      m.reset_running_stats()
      m.momentum = None
      if isinstance(m, nn.BatchNorm1d):  # embedding-layer BN: random statistics of the right scale
        m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
        uniform(m.running_var, 0.5, 1.5)
    elif isinstance(m, nn.PReLU):
      uniform(m.weight, 0.0, 0.5)
    elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
      uniform(m.bias, -0.1, 0.1)
  model.train()
  for m in model.modules():
    if isinstance(m, (nn.BatchNorm1d, nn.Dropout)):
      m.eval()
  samples = {}
  hooks = [m.register_forward_pre_hook(lambda m, args: samples.__setitem__(m, args[0][:, 0].numel()))
           for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
  model(calibration)
  for h in hooks:
    h.remove()
  for m in model.modules():
    if isinstance(m, nn.BatchNorm2d):
      if samples[m] < 32:  # too few values per channel for a meaningful estimate (e.g. a 1x1 map)
        m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
        uniform(m.running_var, 0.5, 1.5)
      else:
        m.running_mean.add_(0.1 * m.running_var.sqrt() * torch.randn(m.running_mean.shape, generator=g))
        m.running_var.mul_(torch.rand(m.running_var.shape, generator=g) * 0.6 + 0.7)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
      m.momentum = 0.1
  return model.eval()


def count_params(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())
