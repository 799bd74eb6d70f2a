"""PLGCL (Basak & Yin, CVPR 2023) as the `plgcl` loss term of the shared train step.

Eq. 8: supervised CE + beta * consistency (the `mean_teacher` term with `consistency='ce'`) +
gamma * PLGCL over the whole batch (labeled and unlabeled images). Confidence maps C^k are the
ground-truth one-hot for labeled images and the student's softmax for unlabeled ones (§3.1, the
pseudo-label Y' comes from the student); the patches of each image are embedded by the student's
encoder and projection head. PLGCL is off during the warm-up (§3.4: 50 epochs) through a traced
weight, so switching it on does not recompile the step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxseg.errors import ConfigError
from jaxseg.losses import plgcl as plgcl_loss
from jaxseg.training.objectives import register

EMBEDDINGS = ('patches', 'regions')
PSEUDO_LABELS = ('student', 'teacher')


def confidence_maps(out, config) -> jax.Array:
  """(B, H, W, K): one-hot ground truth for labeled images, softmax pseudo-labels for unlabeled."""
  p = config.plgcl
  if p.pseudo_label not in PSEUDO_LABELS:
    raise ConfigError(f'plgcl.pseudo_label: unknown {p.pseudo_label!r}; known: {PSEUDO_LABELS}')
  source = out.student_unlabeled if p.pseudo_label == 'student' else out.teacher_unlabeled
  if source is None:
    raise ConfigError('plgcl.pseudo_label=teacher needs a teacher: add the mean_teacher term')
  labeled = jax.nn.one_hot(out.labeled['label'], config.num_classes)
  unlabeled = jax.nn.softmax(jax.lax.stop_gradient(source['logits']), axis=-1)
  return jnp.concatenate([labeled, unlabeled], axis=0)


def pool_regions(bottleneck_BhwC: jax.Array, image_size: int, patch: int) -> jax.Array:
  """(B, P, C): the bottleneck averaged over each patch's region, in `patch_grid` order."""
  stride = image_size // bottleneck_BhwC.shape[1]
  if patch % stride:
    raise ConfigError(f'plgcl.patch={patch} must be a multiple of the encoder stride {stride} '
                      'for plgcl.embedding=regions')
  cell = patch // stride
  b, h, w, c = bottleneck_BhwC.shape
  pooled = bottleneck_BhwC.reshape(b, h // cell, cell, w // cell, cell, c).mean(axis=(2, 4))
  return pooled.reshape(b, -1, c)


def patch_embeddings(out, images_BHW, stats, config) -> jax.Array:
  """(B, P, D) student embeddings of the grid patches, in `patch_grid` order."""
  p = config.plgcl
  b = images_BHW.shape[0]
  if p.embedding == 'patches':
    # Each patch is seen through the attention of its own class: I * C^k with k its class (§3.1).
    label_BP = stats['label_BP']
    attended_BPS = jnp.take_along_axis(stats['patches_BPSK'], label_BP[..., None, None],
                                       axis=-1)[..., 0]
    patches = attended_BPS.reshape(-1, p.patch, p.patch, 1)
    return out.apply(patches, method='embed_patches').reshape(b, label_BP.shape[1], -1)
  if p.embedding == 'regions':
    # The cheaper option: the bottleneck the main forward already computed, averaged over each
    # patch's region, through the head only (no second encoder pass).
    bottleneck = jnp.concatenate([out.student_labeled['bottleneck'],
                                  out.student_unlabeled['bottleneck']], axis=0)
    pooled = pool_regions(bottleneck, images_BHW.shape[1], p.patch)
    b, num_patches, c = pooled.shape
    return out.apply(pooled.reshape(b * num_patches, c), method='project').reshape(
        b, num_patches, -1)
  raise ConfigError(f'plgcl.embedding: unknown {p.embedding!r}; known: {EMBEDDINGS}')


@register('plgcl', needs_unlabeled=True)
def plgcl(out, config):
  p = config.plgcl
  if not config.model.projection_dim:
    raise ConfigError('plgcl needs a projection head: set model.projection_dim (e.g. 128)')
  images = jnp.concatenate([out.labeled['image'], out.unlabeled['image_strong']], axis=0)
  conf = confidence_maps(out, config)
  stats = plgcl_loss.patch_statistics(images, conf, p.patch, p.assign, p.min_conf)
  emb = patch_embeddings(out, images, stats, config)
  anchor_mask = stats['label_BP'] > 0 if p.foreground_anchors else None
  loss, aux = plgcl_loss.plgcl_from_patches(
      images, conf, emb, patch=p.patch, stats=stats, rng=out.rng,
      num_anchors=p.num_anchors or None, anchor_mask_BP=anchor_mask, num_pos=p.num_pos,
      tau=p.tau, lam=p.lam, zeta=p.zeta, sampler=p.sampler, entropy_scope=p.entropy_scope,
      assign=p.assign, min_conf=p.min_conf)
  weight = jnp.where(out.step >= p.warmup_steps, p.weight, 0.0)
  return weight * loss, {'plgcl': loss, 'plgcl_weight': weight,
                         'plgcl_anchors': aux['num_valid_anchors']}
