"""Parameter counts of the published 3D networks, for the model tests.

`param_count` counts a Flax model's parameters through `jax.eval_shape` (nothing is compiled);
the closed forms below are written from the PyTorch originals (UA-MT's vnet.py, MCF's resnet.py /
ResNet34.py), independently of the Flax code.
"""

import jax
import jax.numpy as jnp
import numpy as np


def param_count(model, shape=(1, 112, 112, 80, 1)):
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables['params']))


# Closed-form counts of the PyTorch originals (conv weights + biases, BN weight + bias), written
# from UA-MT's vnet.py and MCF's resnet.py / ResNet34.py, independently of the Flax code.
def conv_params(k, cin, cout, bias=True):
  return k ** 3 * cin * cout + (cout if bias else 0)


def vnet_decoder_count(n, num_classes):
  total = 0
  for level, layers in zip((3, 2, 1, 0), (3, 3, 2, 1)):
    c = n * 2 ** level
    total += conv_params(2, 2 * c, c) + 2 * c  # ConvTranspose3d + BN
    total += layers * (conv_params(3, c, c) + 2 * c)
  return total + conv_params(1, n, num_classes)


def uamt_vnet_count(n=16, num_classes=2):
  total, cin = 0, 1
  for level, layers in enumerate((1, 2, 3, 3, 3)):
    c = n * 2 ** level
    if level:
      total += conv_params(2, cin, c) + 2 * c  # stride-2 Conv3d + BN
      cin = c
    total += conv_params(3, cin, c) + 2 * c + (layers - 1) * (conv_params(3, c, c) + 2 * c)
    cin = c
  return total + vnet_decoder_count(n, num_classes)


def mcf_resnet34_count(n=16, num_classes=2, blocks=(3, 4, 6, 3)):
  total = conv_params(7, 1, n, bias=False) + 2 * n
  cin = n
  for stage, b in enumerate(blocks):
    p = n * 2 ** (stage + 1)
    total += conv_params(3, cin, p, False) + conv_params(3, p, p, False) + 4 * p  # first block
    total += conv_params(1, cin, p, False) + 2 * p  # its 1x1 stride-2 shortcut + BN
    total += (b - 1) * (2 * conv_params(3, p, p, False) + 4 * p)
    cin = p
  return total + vnet_decoder_count(n, num_classes)
