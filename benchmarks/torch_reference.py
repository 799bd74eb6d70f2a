"""PyTorch versions of jaxseg's networks, losses and train steps, written for benchmarks/vs_pytorch.py.

Only the benchmark imports this module (PyTorch is the optional `bench` extra, never a dependency
of the package or its tests). Layouts follow the public code the JAX models document:

  UNet      SSL4MIS networks/unet.py: channels 16-32-64-128-256, conv3x3-BN-LeakyReLU-dropout-
            conv3x3-BN-LeakyReLU per level, max pooling down, 1x1 conv + bilinear x2 + concat up,
            encoder dropout 0.05..0.5. (SSL4MIS upsamples with align_corners=True, jaxseg with
            half-pixel centres: same cost.)
  VNet      UA-MT / MCF networks/vnet.py (n_filters 16, batch norm, has_dropout).
  ResNet34  MCF networks/ResNet34.py: 7x7x7 stem (stride 1, no pooling), basic blocks 3-4-6-3,
            the V-Net decoder.

The steps compute what jaxseg's step computes for the same experiment (see each docstring).
`count_parameters` lets the benchmark check that every network matches the JAX one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DICE_SMOOTH = 1e-5  # jaxseg.losses.segmentation.DICE_SMOOTH


def count_parameters(module: nn.Module) -> int:
  return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------
# SSL4MIS U-Net.


class ConvBlock2d(nn.Module):

  def __init__(self, cin, cout, dropout):
    super().__init__()
    self.conv_conv = nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(),
        nn.Dropout(dropout),
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU())

  def forward(self, x):
    return self.conv_conv(x)


class UpBlock(nn.Module):

  def __init__(self, cin1, cin2, cout):
    super().__init__()
    self.conv1x1 = nn.Conv2d(cin1, cin2, 1)
    self.up = nn.Upsample(scale_factor=2, mode='bilinear', align_corners=True)
    self.conv = ConvBlock2d(cin2 * 2, cout, 0.0)

  def forward(self, x1, x2):
    return self.conv(torch.cat([x2, self.up(self.conv1x1(x1))], dim=1))


class UNet(nn.Module):

  def __init__(self, num_classes, channels=(16, 32, 64, 128, 256),
               dropout=(0.05, 0.1, 0.2, 0.3, 0.5)):
    super().__init__()
    c = channels
    self.down = nn.ModuleList(
        [ConvBlock2d(1, c[0], dropout[0])]
        + [ConvBlock2d(c[i - 1], c[i], dropout[i]) for i in range(1, len(c))])
    self.up = nn.ModuleList([UpBlock(c[i + 1], c[i], c[i]) for i in reversed(range(len(c) - 1))])
    self.out_conv = nn.Conv2d(c[0], num_classes, 3, padding=1)

  def forward(self, x):
    skips = []
    for level, block in enumerate(self.down):
      if level:
        x = F.max_pool2d(x, 2)
      x = block(x)
      skips.append(x)
    x = skips[-1]
    for block, skip in zip(self.up, reversed(skips[:-1])):
      x = block(x, skip)
    return self.out_conv(x)


# ---------------------------------------------------------------------------------------------
# UA-MT / MCF V-Net and MCF's ResNet-34 (3D).


def conv_stage(layers, cin, cout):
  mods = []
  for i in range(layers):
    mods += [nn.Conv3d(cin if i == 0 else cout, cout, 3, padding=1), nn.BatchNorm3d(cout),
             nn.ReLU(inplace=True)]
  return nn.Sequential(*mods)


def resample(cin, cout, up):
  layer = nn.ConvTranspose3d if up else nn.Conv3d
  return nn.Sequential(layer(cin, cout, 2, stride=2), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class VNetDecoder(nn.Module):

  def __init__(self, num_classes, f=16):
    super().__init__()
    self.ups = nn.ModuleList([resample(f * 2 ** (l + 1), f * 2 ** l, up=True) for l in (3, 2, 1, 0)])
    self.stages = nn.ModuleList([conv_stage(n, f * 2 ** l, f * 2 ** l)
                                 for l, n in zip((3, 2, 1, 0), (3, 3, 2, 1))])
    self.dropout = nn.Dropout3d(0.5)
    self.out_conv = nn.Conv3d(f, num_classes, 1)

  def forward(self, skips):
    x = skips[4]
    for up, stage, level in zip(self.ups, self.stages, (3, 2, 1, 0)):
      x = stage(up(x) + skips[level])
    features = self.dropout(x)
    return self.out_conv(features), features


class VNet(nn.Module):

  def __init__(self, num_classes, f=16):
    super().__init__()
    self.stages = nn.ModuleList([conv_stage(n, 1 if l == 0 else f * 2 ** l, f * 2 ** l)
                                 for l, n in enumerate((1, 2, 3, 3, 3))])
    self.downs = nn.ModuleList([resample(f * 2 ** (l - 1), f * 2 ** l, up=False)
                                for l in range(1, 5)])
    self.dropout = nn.Dropout3d(0.5)
    self.decoder = VNetDecoder(num_classes, f)

  def forward(self, x):
    skips = []
    for level, stage in enumerate(self.stages):
      if level:
        x = self.downs[level - 1](x)
      x = stage(x)
      skips.append(x)
    skips[4] = self.dropout(skips[4])
    return self.decoder(skips)


class BasicBlock3d(nn.Module):

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = nn.Conv3d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm3d(cout)
    self.conv2 = nn.Conv3d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm3d(cout)
    self.shortcut = None
    if stride != 1 or cin != cout:
      self.shortcut = nn.Sequential(nn.Conv3d(cin, cout, 1, stride, bias=False),
                                    nn.BatchNorm3d(cout))

  def forward(self, x):
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet34(nn.Module):

  def __init__(self, num_classes, f=16, blocks=(3, 4, 6, 3)):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv3d(1, f, 7, 1, 3, bias=False), nn.BatchNorm3d(f),
                              nn.ReLU(inplace=True))
    self.layers = nn.ModuleList()
    cin = f
    for stage, n in enumerate(blocks):
      cout = f * 2 ** (stage + 1)
      self.layers.append(nn.Sequential(
          *[BasicBlock3d(cin if b == 0 else cout, cout, 2 if b == 0 else 1) for b in range(n)]))
      cin = cout
    self.decoder = VNetDecoder(num_classes, f)

  def forward(self, x):
    x = self.stem(x)
    maps = [x]
    for layer in self.layers:
      x = layer(x)
      maps.append(x)
    return self.decoder(maps)


# ---------------------------------------------------------------------------------------------
# Losses (jaxseg.losses.segmentation and jaxseg.losses.dualstream), logits (B, K, ...).


def dice_loss(logits, labels, mask=None, background=True):
  k = logits.shape[1]
  probs = torch.softmax(logits, 1)
  onehot = F.one_hot(labels, k).movedim(-1, 1).to(probs.dtype)
  if mask is not None:
    w = mask.unsqueeze(1).to(probs.dtype)
    probs, onehot = probs * w, onehot * w
  axes = [0] + list(range(2, probs.ndim))
  intersect = (probs * onehot).sum(axes)
  denominator = (probs * probs).sum(axes) + onehot.sum(axes)
  loss_k = 1 - (2 * intersect + DICE_SMOOTH) / (denominator + DICE_SMOOTH)
  return loss_k.mean() if background or k == 1 else loss_k[1:].mean()


def masked_cross_entropy(logits, labels, mask=None):
  ce = F.cross_entropy(logits, labels, reduction='none')
  if mask is None:
    return ce.mean()
  m = mask.to(ce.dtype)
  return (ce * m).sum() / m.sum().clamp_min(1.0)


def ce_dice(logits, labels):
  """SSL4MIS supervised loss 0.5 * (CE + Dice over all classes)."""
  return 0.5 * (F.cross_entropy(logits, labels) + dice_loss(logits, labels))


def softmax_mse(student_logits, teacher_logits):
  return ((torch.softmax(student_logits, 1) - torch.softmax(teacher_logits, 1)) ** 2).mean()


def prototype_contrast(features, labels, reliable, num_classes):
  """L_c (squared Euclidean, temperature 1): prototypes from reliable voxels, unreliable voxels
  pulled to their class's, prototypes pushed apart (jaxseg.losses.dualstream)."""
  c = features.shape[1]
  f = features.movedim(1, -1).reshape(-1, c)
  lab = labels.reshape(-1)
  rel = reliable.reshape(-1).to(f.dtype)
  member = F.one_hot(lab, num_classes).to(f.dtype) * rel[:, None]
  count = member.sum(0)
  protos = member.T @ f / count.clamp_min(1.0)[:, None]
  present = count > 0

  def logits_to(x, y):
    d = (x * x).sum(-1, keepdim=True) - 2 * x @ y.T + (y * y).sum(-1)[None]
    return torch.where(present[None], -d.clamp_min(0.0), torch.full_like(d, -1e9))

  target = F.one_hot(lab, num_classes).to(f.dtype)
  nll = -(target * torch.log_softmax(logits_to(f, protos), -1)).sum(-1)
  pulled = (1 - rel) * (target * present.to(f.dtype)).sum(-1)
  pull = (nll * pulled).sum() / pulled.sum().clamp_min(1.0)
  self_nll = -torch.diagonal(torch.log_softmax(logits_to(protos, protos), -1))
  separation = (self_nll * present).sum() / present.sum().clamp_min(1)
  return pull + separation


# ---------------------------------------------------------------------------------------------
# Train steps: each returns a function step() -> loss (a float) over fixed random batches.


def sgd(model, lr=0.01):
  # SSL4MIS / UA-MT / MCF: SGD, momentum 0.9, weight decay 1e-4.
  return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)


@torch.no_grad()
def ema_update(teacher, student, alpha):
  for t, s in zip(teacher.parameters(), student.parameters()):
    t.mul_(alpha).add_(s, alpha=1 - alpha)


def mean_teacher_step(num_classes, size, labeled, unlabeled, seed=0):
  """SSL4MIS mean teacher (jaxseg acdc_meanteacher): the student on labeled + unlabeled images in
  one forward, 0.5 (CE + Dice) on the labeled, MSE of softmax against the EMA teacher (train mode,
  no gradient) on the noisy unlabeled images, SGD, EMA of the parameters."""
  g = torch.Generator().manual_seed(seed)
  student, teacher = UNet(num_classes), UNet(num_classes)
  teacher.load_state_dict(student.state_dict())
  for p in teacher.parameters():
    p.requires_grad_(False)
  opt = sgd(student)
  x_l = torch.rand(labeled, 1, size, size, generator=g)
  y_l = torch.randint(0, num_classes, (labeled, size, size), generator=g)
  x_u = torch.rand(unlabeled, 1, size, size, generator=g)

  def step():
    logits = student(torch.cat([x_l, x_u]))
    supervised = ce_dice(logits[:labeled], y_l)
    with torch.no_grad():
      noise = torch.clamp(torch.randn_like(x_u) * 0.1, -0.2, 0.2)
      teacher_logits = teacher(x_u + noise)
    loss = supervised + 0.1 * softmax_mse(logits[labeled:], teacher_logits)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    ema_update(teacher, student, 0.99)
    return loss.item()

  return step, {'student': student}


def supervised_3d_step(num_classes, crop, labeled, seed=0):
  """UA-MT V-Net supervised step (jaxseg la_meanteacher with losses=('supervised',)):
  0.5 (CE + Dice over all classes), SGD."""
  g = torch.Generator().manual_seed(seed)
  model = VNet(num_classes)
  opt = sgd(model)
  x = torch.rand(labeled, 1, *crop, generator=g)
  y = torch.randint(0, num_classes, (labeled, *crop), generator=g)

  def step():
    logits, _ = model(x)
    loss = ce_dice(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()

  return step, {'vnet': model}


def dualstream_step(num_classes, crop, labeled, unlabeled, seed=0, percentile=80.0,
                    threshold=0.6, contrast_weight=0.1 * 2.718281828 ** -5):
  """The dual-stream step (jaxseg la_dualstream, jaxseg/methods/dualstream.py) at step 0: V-Net
  and ResNet-34 each on labeled + unlabeled volumes; CE + foreground Dice per subnet; the
  pseudo-label of the subnet with the lower supervised loss, reliable below the batch's 80th
  entropy percentile, CE + Dice on it for both subnets; L1 between the softmaxes on confident
  disagreements; prototype contrast on each subnet's features.

  Approximated: the entropy percentile is the k-th smallest value (jnp.percentile interpolates);
  the weights are fixed at their step-0 values (jaxseg computes them from the traced step, a few
  scalar ops).
  """
  g = torch.Generator().manual_seed(seed)
  nets = {'a': VNet(num_classes), 'b': ResNet34(num_classes)}
  opt = torch.optim.SGD([p for n in nets.values() for p in n.parameters()], lr=0.01,
                        momentum=0.9, weight_decay=1e-4)
  x = torch.rand(labeled + unlabeled, 1, *crop, generator=g)
  y = torch.randint(0, num_classes, (labeled, *crop), generator=g)

  def step():
    out = {s: net(x) for s, net in nets.items()}
    logits_l = {s: out[s][0][:labeled] for s in 'ab'}
    logits_u = {s: out[s][0][labeled:] for s in 'ab'}
    sup = {s: masked_cross_entropy(logits_l[s], y) + dice_loss(logits_l[s], y, background=False)
           for s in 'ab'}
    use_b = bool(sup['b'] < sup['a'])
    probs = {s: torch.softmax(logits_u[s], 1) for s in 'ab'}
    with torch.no_grad():
      chosen = probs['b' if use_b else 'a']
      entropy = -(chosen * torch.log(chosen.clamp_min(1e-30))).sum(1)
      flat = entropy.reshape(-1)
      cut = flat.kthvalue(max(1, int(round(percentile / 100 * flat.numel())))).values
      reliable = entropy < cut
      pseudo = chosen.argmax(1)
    unsup = sum(masked_cross_entropy(logits_u[s], pseudo, reliable)
                + dice_loss(logits_u[s], pseudo, reliable, background=False) for s in 'ab')
    with torch.no_grad():
      pa, pb = probs['a'], probs['b']
      disagree = ((pa.amax(1) > threshold) & (pb.amax(1) > threshold)
                  & (pa.argmax(1) != pb.argmax(1)))
    reg = ((pa - pb).abs().sum(1) * disagree).mean()
    contrast = sum(prototype_contrast(out[s][1][labeled:], pseudo, reliable, num_classes)
                   for s in 'ab')
    loss = sup['a'] + sup['b'] + unsup + reg + contrast_weight * contrast
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()

  return step, nets
