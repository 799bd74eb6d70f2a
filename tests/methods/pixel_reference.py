"""Independent numpy references for the pixel-contrast terms' tests, and a tiny real U-Net whose
`apply` the terms call as the train step's would (tests/methods/test_hu.py, test_lclpl.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import config as config_lib
from jaxseg.models import build_model


def tiny_unet(losses, num_classes: int = 3, size: int = 8):
  """(config, apply) of a two-level U-Net with a 4-dim pixel head, in eval mode (deterministic),
  at `size` x `size`."""
  config = config_lib.base_config(losses=losses)
  config.num_classes = num_classes
  config.model.update(channels=(4, 8), dropout=(0.0, 0.0), pixel_projection_dim=4)
  config.data.update(image_size=size, labeled_views='twin')
  model = build_model(config)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 1)), train=False)
  return config, lambda x, method=None: model.apply(variables, x, train=False, method=method)


def images(seed: int, b: int, size: int = 8):
  return jnp.asarray(np.random.default_rng(seed).random((b, size, size), np.float32))


def _lse(x):
  m = x.max()
  return m + np.log(np.exp(x - m).sum())


def infonce_sums(emb_ND, labels_N, anchors_N, tau, form, keys_N=None):
  """(sum of per-anchor losses, number of valid anchors) of the supervised pixel InfoNCE, one
  anchor at a time in float64: 'supcon' -1/|P| sum_p [s_ip - lse_{j != i} s_ij], 'hu'
  -1/|P| sum_p log[e^s_ip / (e^s_ip + sum_n e^s_in)]; anchors without a positive (or, 'hu',
  without a negative) are left out; pixels outside `keys_N` take no part at all."""
  e = np.asarray(emb_ND, np.float64)
  labels_N = np.asarray(labels_N)
  keys_N = np.ones(len(labels_N), bool) if keys_N is None else np.asarray(keys_N)
  s = e @ e.T / tau
  total, count = 0.0, 0
  for i in np.flatnonzero(np.asarray(anchors_N) & keys_N):
    others = keys_N.copy()
    others[i] = False
    pos = others & (labels_N == labels_N[i])
    neg = keys_N & (labels_N != labels_N[i])
    if not pos.any() or (form == 'hu' and not neg.any()):
      continue
    if form == 'supcon':
      terms = s[i, pos] - _lse(s[i, others])
    else:
      terms = s[i, pos] - np.logaddexp(s[i, pos], _lse(s[i, neg]))
    total -= terms.mean()
    count += 1
  return total, count


def infonce(emb_ND, labels_N, anchors_N, tau, form, keys_N=None):
  total, count = infonce_sums(emb_ND, labels_N, anchors_N, tau, form, keys_N)
  return total / max(count, 1)
