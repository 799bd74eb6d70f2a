"""LCLPL (Chaitanya et al., MedIA 2023): local contrast guided by pseudo-labels, self-training.

The rounds (a supervised stage, then joint stages each on pseudo-labels refreshed from the
previous stage's best checkpoint) are chained by the loop (`config.stage_order`,
jaxseg/training/stages.py), which gives the unlabeled stream its pseudo-labels. This module adds
the `lclpl` term: the local contrastive loss on labeled images (ground truth) and unlabeled
images (pseudo-labels), each with its intensity-only twin, added to the segmentation loss of
the `supervised` term with weight 0.1.

`lclpl.form`:
  authors   as the public code: 3 random anchor pixels per foreground class per image, the
            positive the class's mean embedding in the image and its twin, negatives the other
            foreground classes' means, tau 0.1 (REFERENCE_IMPLEMENTATIONS.md);
  pixel     the abstract's wider form: every foreground pixel an anchor, positives all pixels of
            its (pseudo-)label anywhere in the batch, negatives all others, background included,
            computed exactly by the tiled loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from jaxseg.errors import ConfigError
from jaxseg.losses import pixel_contrast
from jaxseg.methods.term import LossTerm

FORMS = ('authors', 'pixel')


def blocks() -> dict[str, ml_collections.ConfigDict]:
  return {'lclpl': ml_collections.ConfigDict(dict(
      weight=0.1, tau=0.1,
      form='authors',  # 'authors' (3 anchors per class, class-mean positive) or 'pixel' (tiled)
      num_anchors=3, tile=1024,
      require_all_classes=True,  # the code's protocol: only slices containing every class
  ))}


def lclpl(out, config):
  c = config.lclpl
  if c.form not in FORMS:
    raise ConfigError(f'lclpl.form: unknown {c.form!r}; known: {", ".join(FORMS)}')
  if not config.model.pixel_projection_dim:
    raise ConfigError('lclpl needs a pixel head: set model.pixel_projection_dim')
  if out.labeled.image_twin is None:
    raise ConfigError("lclpl contrasts each image with its twin: set data.labeled_views='twin'")
  if out.unlabeled.label is None:
    raise ConfigError('lclpl needs pseudo-labels for the unlabeled images: run it as a stage '
                      'with pseudo_labels (see experiments/acdc_lclpl.py)')
  # The main forward saw the labeled images and the unlabeled strong (intensity) views; one more
  # forward gives the twins: the labeled twins and the unlabeled weak views.
  twins = out.apply(jnp.concatenate([out.labeled.image_twin, out.unlabeled.image_weak],
                                    axis=0)[..., None])
  main = jax.tree.map(lambda a, b: jnp.concatenate([a, b], axis=0),
                      out.student_labeled, out.student_unlabeled)
  labels = jnp.concatenate([out.labeled.label, out.unlabeled.label], axis=0)
  if c.form == 'authors':
    emb = main['pixel_embedding']
    twin_emb = twins['pixel_embedding']
    loss = pixel_contrast.lclpl_local_contrast(
        out.rng, emb, labels, num_classes=config.num_classes, num_anchors=c.num_anchors,
        tau=c.tau, twin_emb_BHWD=twin_emb, require_all_classes=c.require_all_classes)
  else:
    # Every pixel of both views: the pixel head's embeddings (L2-normalized by the head).
    emb = jnp.concatenate([main['pixel_embedding'], twins['pixel_embedding']], axis=0)
    labels2 = jnp.concatenate([labels, labels], axis=0)
    d = emb.shape[-1]
    loss = pixel_contrast.pixel_infonce_tiled(
        emb.reshape(-1, d), labels2.reshape(-1), labels2.reshape(-1) > 0, tau=c.tau,
        form='supcon', block_size=c.tile)
  return c.weight * loss, {'lclpl': loss}


TERM = LossTerm('lclpl', lclpl, blocks, needs_unlabeled=True)
