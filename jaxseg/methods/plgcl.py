"""PLGCL (Basak & Yin, CVPR 2023) as the `plgcl` loss term of the shared train step.

Eq. 8: supervised CE + beta * consistency (the `mean_teacher` term with `consistency='ce'`) +
gamma * PLGCL over the whole batch (labeled and unlabeled images). Confidence maps C^k are the
ground-truth one-hot for labeled images and the student's softmax for unlabeled ones (§3.1, the
pseudo-label Y' comes from the student). Keys (`plgcl.assign`): 'per_class' (default, §3.1) =
the attended patches I (.) C^k of every class k a grid cell holds, at most `patches_per_class` per
class and step; 'dominant' / 'foreground' = one key per grid cell. Each key's attended patch is
embedded by the student's encoder and projection head. Keys carry gradient as in Algorithm 1;
`plgcl.detach_keys` stops it on the key side (the authors' code contrasts with a detached teacher
queue). PLGCL is off during the warm-up (§3.4: 50 epochs) through a traced weight, so switching it
on does not recompile the step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from jaxseg.errors import ConfigError
from jaxseg.losses import plgcl as plgcl_loss
from jaxseg.methods.term import LossTerm

EMBEDDINGS = ('patches', 'regions')
PSEUDO_LABELS = ('student', 'teacher')


def blocks() -> dict[str, ml_collections.ConfigDict]:
  """Paper values, see BUILD_NOTES.md."""
  return {'plgcl': ml_collections.ConfigDict(dict(
      weight=0.2,  # gamma in eq. 8
      warmup_steps=0,  # steps with PLGCL off (paper: 50 epochs)
      patch=32, num_pos=20, tau=0.2, lam=4.0,
      zeta='count',  # 'count' (eq. 5 derivation: number of negative keys) or a number
      sampler='entropy',  # 'entropy' (paper), 'confidence' or 'cosine' (Table 3)
      entropy_scope='class',  # nearest in Ent^k among class-k patches, or 'all' (literal)
      # Keys: 'per_class' (§3.1: a patch of I * C^k for each class k a cell holds, Avg^k >
      # min_conf), or one per cell of its 'dominant' class (argmax of Avg) or 'foreground' class.
      assign='per_class', min_conf=0.1,
      patches_per_class=64,  # 'per_class': keys drawn per class and step (4 x 64 at ACDC)
      detach_keys=False,  # False: keys carry gradient (Algorithm 1); True: as a detached queue
      num_anchors=0,  # 0: every key is an anchor; else a random subset of this size
      foreground_anchors=False,  # only keys of a foreground class as anchors
      embedding='patches',  # 'patches' through the encoder (paper) or pooled 'regions'
      pseudo_label='student',  # confidence maps of unlabeled images: 'student' (paper) or 'teacher'
  ))}


def scale_schedules(config, factor: float, ema: bool) -> None:
  """The warm-up (PLGCL off) times `factor`."""
  del ema
  config.plgcl.warmup_steps = int(config.plgcl.warmup_steps * factor)


def confidence_maps(out, config) -> jax.Array:
  """(B, H, W, K): one-hot ground truth for labeled images, softmax pseudo-labels for unlabeled."""
  p = config.plgcl
  if p.pseudo_label not in PSEUDO_LABELS:
    raise ConfigError(f'plgcl.pseudo_label: unknown {p.pseudo_label!r}; known: {PSEUDO_LABELS}')
  source = out.student_unlabeled if p.pseudo_label == 'student' else out.teacher_unlabeled
  if source is None:
    raise ConfigError('plgcl.pseudo_label=teacher needs a teacher: add the mean_teacher term')
  labeled = jax.nn.one_hot(out.labeled.label, config.num_classes)
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


def key_embeddings(out, images_BHW, keys, config) -> jax.Array:
  """(M, D) student embeddings of the keys, in key order."""
  p = config.plgcl
  if p.embedding == 'patches':
    # Each key is seen through the attention of its own class: I * C^k (§3.1).
    patches = keys['patch_MS'].reshape(-1, p.patch, p.patch, 1)
    return out.apply(patches, method='embed_patches')
  if p.embedding == 'regions':
    # The cheaper option: the bottleneck the main forward already computed, averaged over each
    # patch's region, through the head only (no second encoder pass).
    bottleneck = jnp.concatenate([out.student_labeled['bottleneck'],
                                  out.student_unlabeled['bottleneck']], axis=0)
    pooled = pool_regions(bottleneck, images_BHW.shape[1], p.patch)
    b, num_patches, c = pooled.shape
    return out.apply(pooled.reshape(b * num_patches, c)[keys['cell_M']], method='project')
  raise ConfigError(f'plgcl.embedding: unknown {p.embedding!r}; known: {EMBEDDINGS}')


def check_config(p) -> None:
  """One-line ConfigErrors for `plgcl` settings the loss module would reject less clearly."""
  if p.assign not in plgcl_loss.ASSIGNS:
    raise ConfigError(f'plgcl.assign: unknown {p.assign!r}; known: {plgcl_loss.ASSIGNS}')
  if p.embedding == 'regions' and p.assign == 'per_class':
    # A pooled region is one vector per cell: the keys of different classes at one cell would
    # be the same embedding, contrasted with itself.
    raise ConfigError("plgcl.embedding=regions cannot tell classes apart at one cell: use "
                      "plgcl.assign=dominant or foreground with it, or embedding=patches")
  if p.assign == 'per_class' and int(p.patches_per_class) < 1:
    raise ConfigError(f'plgcl.patches_per_class must be >= 1, got {p.patches_per_class}')


def plgcl(out, config):
  p = config.plgcl
  if not config.model.projection_dim:
    raise ConfigError('plgcl needs a projection head: set model.projection_dim (e.g. 128)')
  check_config(p)
  images = jnp.concatenate([out.labeled.image, out.unlabeled.image_strong], axis=0)
  conf = confidence_maps(out, config)
  stats = plgcl_loss.patch_statistics(images, conf, p.patch, p.assign, p.min_conf)
  key_rng, anchor_rng = jax.random.split(out.rng)
  keys = plgcl_loss.make_keys(stats, p.assign, key_rng, p.patches_per_class)
  emb = key_embeddings(out, images, keys, config)
  key_emb = jax.lax.stop_gradient(emb) if p.detach_keys else None
  anchor_mask = keys['class_M'] > 0 if p.foreground_anchors else None
  loss, aux = plgcl_loss.plgcl_from_keys(
      keys, emb, config.num_classes, key_emb_MD=key_emb, rng=anchor_rng,
      num_anchors=p.num_anchors or None, anchor_mask_M=anchor_mask, num_pos=p.num_pos,
      tau=p.tau, lam=p.lam, zeta=p.zeta, sampler=p.sampler, entropy_scope=p.entropy_scope)
  weight = jnp.where(out.step >= p.warmup_steps, p.weight, 0.0)
  # The share of background keys shows the class balance of each assignment in the run's log
  # (BUILD_NOTES.md: 98% with one key per cell on ACDC labels).
  counts = aux['class_count_K']
  bg_fraction = counts[0] / jnp.maximum(jnp.sum(counts), 1)
  return weight * loss, {'plgcl': loss, 'plgcl_weight': weight,
                         'plgcl_anchors': aux['num_valid_anchors'],
                         'plgcl_background_keys': bg_fraction}


TERM = LossTerm('plgcl', plgcl, blocks, scale_schedules, needs_unlabeled=True)
