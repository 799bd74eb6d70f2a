"""Hu et al. (MICCAI 2021): global contrast, then supervised local contrast, then fine-tuning.

The three stages are chained by the loop (`config.stage_order`, jaxseg/training/stages.py);
this module adds the two contrastive loss terms they train with:

- `global_contrast` (stage 1, eq. 1): SimCLR NT-Xent between two independently augmented views
  of every training image, on the pooled encoder output through the projection head
  (`model.projection_dim`). Uses no labels, so the run reads no labeled stream.
- `local_contrast` (stage 2, eq. 2): supervised pixel InfoNCE on labeled images and their
  intensity-only twins (`data.labeled_views='twin'`), on the per-pixel head
  (`model.pixel_projection_dim`). Made tractable as the paper does, by stride or block division,
  or computed exactly over every pixel by the tiled loss; see `LOCAL_MODES`.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from jaxseg.errors import ConfigError
from jaxseg.losses import global_contrast as global_loss
from jaxseg.losses import pixel_contrast
from jaxseg.methods.term import LossTerm

# How the N x N pixel similarity is made affordable (Hu §2.3), all over both views together:
#   stride   every s-th pixel in both axes, then the exact loss over those pixels;
#   block    the loss within each h' x h' block, averaged over blocks containing foreground;
#   sampled  `num_per_class` random pixels per class and image;
#   tiled    every pixel, exactly, by the streaming loss (memory linear in pixels);
#   dense    every pixel by the N x N reference (tiny images only).
LOCAL_MODES = ('stride', 'block', 'sampled', 'tiled', 'dense')
FEATURES = ('head', 'decoder')


def global_blocks() -> dict[str, ml_collections.ConfigDict]:
  return {'global_contrast': ml_collections.ConfigDict(dict(weight=1.0, tau=0.5))}


def local_blocks() -> dict[str, ml_collections.ConfigDict]:
  return {'local_contrast': ml_collections.ConfigDict(dict(
      name='local_contrast', weight=1.0, tau=0.1,
      form='supcon',  # 'supcon' (Hu et al.'s code) or 'hu' (eq. 2, one term per positive)
      mode='stride',  # 'stride', 'block', 'sampled', 'tiled' (exact) or 'dense' (tiny only)
      stride=4, block=16, num_per_class=64, tile=1024,
      # Blocks contrasted at a time (0: all at once). Hu's code contrasts each block position
      # over the whole batch: 256 blocks of 8 x 256 pixels at 256x256 are 4 GiB of logits at once.
      blocks_per_step=16,
      features='head',  # pixel head h2 on the decoder map, or the normalized 'decoder' map itself
  ))}


def global_contrast(out, config):
  g = config.global_contrast
  if not config.model.projection_dim:
    raise ConfigError('global_contrast needs a projection head: set model.projection_dim')
  if config.data.unlabeled_views != 'independent':
    raise ConfigError('global_contrast needs two independently augmented views: set '
                      "data.unlabeled_views='independent'")
  # The strong view went through the main forward; the other view needs the encoder and head only.
  z_strong = out.student_unlabeled['embedding']
  z_weak = out.apply(out.unlabeled.image_weak[..., None], method='embed_patches')
  loss = global_loss.nt_xent(z_weak, z_strong, tau=g.tau)
  return g.weight * loss, {'global_contrast': loss}


def view_embeddings(outputs, twin_outputs, features: str):
  """(2B, H, W, D) L2-normalized pixel embeddings of the two views, first view first."""
  if features not in FEATURES:
    raise ConfigError(f'local_contrast.features: unknown {features!r}; known: {FEATURES}')
  key = 'pixel_embedding' if features == 'head' else 'decoder_features'
  emb = jnp.concatenate([outputs[key], twin_outputs[key]], axis=0)
  if features == 'decoder':
    emb = emb / jnp.sqrt(jnp.sum(emb * emb, axis=-1, keepdims=True) + 1e-12)
  return emb


def supervised_pixel_contrast(emb_BHWD, labels_BHW, rng, c, num_classes: int):
  """The supervised local contrast of `c` (a local_contrast-like ConfigDict) on a batch."""
  if c.mode not in LOCAL_MODES:
    raise ConfigError(f'{c.name}.mode: unknown {c.mode!r}; known: {", ".join(LOCAL_MODES)}')
  d = emb_BHWD.shape[-1]
  if c.mode == 'block':
    return pixel_contrast.block_contrast(emb_BHWD, labels_BHW, block=c.block, tau=c.tau,
                                         form=c.form, blocks_per_step=c.blocks_per_step or None)
  if c.mode == 'stride':
    emb_ND, labels_N = pixel_contrast.stride_select(emb_BHWD, labels_BHW, stride=c.stride)
  else:
    emb_ND, labels_N = emb_BHWD.reshape(-1, d), labels_BHW.reshape(-1)
  if c.mode == 'sampled':
    index, valid = pixel_contrast.sample_per_class(rng, labels_N, c.num_per_class, num_classes)
    emb_ND, labels_N = emb_ND[index], labels_N[index]
    # Empty slots (a class with fewer pixels than asked) are neither anchors nor keys.
    return pixel_contrast.pixel_infonce_dense(emb_ND, labels_N, valid & (labels_N > 0),
                                              tau=c.tau, form=c.form, key_mask_N=valid)
  anchors = labels_N > 0  # Hu §2.2: background pixels are negatives, never anchors
  if c.mode == 'dense':
    return pixel_contrast.pixel_infonce_dense(emb_ND, labels_N, anchors, tau=c.tau, form=c.form)
  return pixel_contrast.pixel_infonce_tiled(emb_ND, labels_N, anchors, tau=c.tau, form=c.form,
                                            block_size=c.tile)


def local_contrast(out, config):
  c = config.local_contrast
  if c.features == 'head' and not config.model.pixel_projection_dim:
    raise ConfigError('local_contrast needs a pixel head: set model.pixel_projection_dim '
                      "(or local_contrast.features='decoder')")
  if out.labeled.image_twin is None:
    raise ConfigError("local_contrast contrasts an image with its twin: set "
                      "data.labeled_views='twin'")
  twin = out.apply(out.labeled.image_twin[..., None])
  emb = view_embeddings(out.student_labeled, twin, c.features)
  labels = jnp.concatenate([out.labeled.label] * 2, axis=0)
  loss = supervised_pixel_contrast(emb, labels, out.rng, c, config.num_classes)
  return c.weight * loss, {'local_contrast': loss}


GLOBAL_CONTRAST = LossTerm('global_contrast', global_contrast, global_blocks, needs_unlabeled=True,
                           needs_labeled=False)
LOCAL_CONTRAST = LossTerm('local_contrast', local_contrast, local_blocks)
