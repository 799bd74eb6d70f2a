"""Dual-stream 3D (Karimijafarbigloo et al., 2024) as the `dualstream` loss term.

The model is `models.DualStream`: two subnets whose outputs carry 'logits_a', 'logits_b' and
'features_a', 'features_b' (its 'logits', the log of the mean softmax, is what evaluation reads).
The term computes the whole of eq. 3 for both subnets, so an experiment uses
`losses=('dualstream',)` alone; the shared 'supervised' term would read the averaged output and
count the labeled loss twice, and is refused next to it:

  L = sum over s in {A, B} of [L_s^s + lambda_u L_u^s + lambda_c L_c^s] + lambda_u w_reg L_reg

  L_s^s   CE + Dice of subnet s on the labeled volumes (eq. 1).
  L_u^s   CE + Dice of subnet s against the pseudo-label on its reliable voxels (eq. 2). The
          pseudo-label is the argmax of the subnet with the lower L_s this step (Fig. 1), filtered
          by that subnet's voxel entropy (a batch percentile or a threshold).
  L_reg   L1 between the subnets' softmax where both are confident above T but disagree
          (eqs. 4-5); T moves linearly over training.
  L_c^s   prototype contrast on subnet s's features (eqs. 6-7): prototypes from reliable voxels,
          unreliable voxels pulled to their class's prototype, prototypes pushed apart.

Summing over subnets gives each subnet (they share no parameters) the gradient it would get from
its own loss at the paper's weights. `detach_unlabeled` reproduces the public code, where
unlabeled volumes give no gradient at all.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from jaxseg.errors import ConfigError
from jaxseg.losses import dualstream as ds
from jaxseg.methods.term import LossTerm

PSEUDO_LABELS = ('lower_loss', 'union')
UNLABELED_TARGETS = ('both', 'other')
OUTPUT_KEYS = ('logits_a', 'logits_b', 'features_a', 'features_b')


def blocks() -> dict[str, ml_collections.ConfigDict]:
  """Paper values where it gives them, the rest are choices recorded in BUILD_NOTES.md."""
  return {'dualstream': ml_collections.ConfigDict(dict(
      unlabeled_weight=1.0,  # lambda_u (eq. 3)
      contrast_weight=0.1,  # lambda_c at t_max (eq. 3)
      contrast_schedule='rampup',  # 0.1 e^{-5(1-t)^2}; 'paper' 0.1 e^{4(1-t)^2}; 'constant'
      rampup_length=0,  # steps over which lambda_c's schedule runs (t_max); 0: config.steps
      rampup_interval=1,  # the authors' code advances its ramp every 150 iterations
      dice_background=False,  # Dice over the foreground classes (UA-MT, MCF) or all classes
      pseudo_label='lower_loss',  # argmax of the subnet with the lower L_s (Fig. 1); 'union' (code)
      unlabeled_targets='both',  # subnets trained on the pseudo-label: 'both' or only the 'other'
      reliability='percentile',  # entropy filter: batch 'percentile' or normalized 'threshold'
      entropy_percentile=80.0,  # reliable: entropy below this batch percentile (code: 20)
      entropy_threshold=0.5,  # reliable: entropy / log K below this
      reg_weight=1.0,  # L_reg's weight inside L_u; 0 is the paper's ablation without it
      reg_threshold_start=0.6, reg_threshold_end=0.9,  # T of eq. 4, linear from step 0 to steps
      reg_normalize='voxels',  # eq. 5's sum divided by all voxels, or by the disagreeing ('mask')
      distance='sq_euclidean',  # d of eq. 7 (prototypical networks), or 'euclidean'
      temperature=1.0,  # eq. 7's softmax over -d / temperature
      separation_weight=1.0,  # the prototypes' push-apart term in L_c
      proto_from_labeled=False,  # ground-truth voxels of labeled volumes join the reliable set
      detach_unlabeled=False,  # True: the public code (unlabeled volumes give no gradient)
  ))}


def scale_schedules(config, factor: float, ema: bool) -> None:
  """lambda_c's ramp times `factor` (a ramp of 0 steps follows `config.steps` by itself)."""
  del ema
  d = config.dualstream
  d.rampup_length = int(d.rampup_length * factor)
  d.rampup_interval = max(1, int(d.rampup_interval * factor))


def check_config(config) -> None:
  d = config.dualstream
  checks = [('pseudo_label', PSEUDO_LABELS), ('unlabeled_targets', UNLABELED_TARGETS),
            ('reliability', ds.RELIABILITY), ('distance', ds.DISTANCES),
            ('contrast_schedule', ds.CONTRAST_SCHEDULES), ('reg_normalize', ds.REG_NORMALIZE)]
  for key, allowed in checks:
    if d[key] not in allowed:
      raise ConfigError(f'dualstream.{key}: unknown {d[key]!r}; known: {", ".join(allowed)}')
  if 'supervised' in config.losses:
    raise ConfigError("losses: 'dualstream' supervises both subnets itself; remove 'supervised' "
                      '(it would read the averaged output and count the labeled loss twice)')
  if d.pseudo_label == 'union' and d.unlabeled_targets == 'other':
    raise ConfigError('dualstream.unlabeled_targets=other needs pseudo_label=lower_loss (a union '
                      'pseudo-label comes from both subnets)')
  if not 0.0 <= d.entropy_percentile <= 100.0:
    raise ConfigError(f'dualstream.entropy_percentile={d.entropy_percentile} must be in [0, 100]')


def _check_outputs(outputs) -> None:
  missing = [k for k in OUTPUT_KEYS if k not in outputs]
  if missing:
    raise ConfigError(f'dualstream needs a two-subnet model (model.name=dualstream); its outputs '
                      f'lack {", ".join(missing)}')


def dualstream(out, config):
  d = config.dualstream
  check_config(config)
  _check_outputs(out.student_labeled)
  num_classes = out.student_labeled['logits_a'].shape[-1]
  t_max = config.steps
  labels = out.labeled.label

  # ---- eq. 1: each subnet on the labeled volumes.
  sup = {}
  for s in 'ab':
    ce, dice = ds.ce_dice(out.student_labeled[f'logits_{s}'], labels, background=d.dice_background)
    sup[s] = ce + dice
  # Fig. 1: the subnet that fits the labels better this step gives the pseudo-label.
  use_b = jax.lax.stop_gradient(sup['b'] < sup['a'])

  # ---- eq. 2: pseudo-labels on the unlabeled volumes and their entropy filtering.
  unl = out.student_unlabeled
  if d.detach_unlabeled:  # the public code: unlabeled volumes produce no gradient
    unl = jax.lax.stop_gradient(unl)
  logits = {s: unl[f'logits_{s}'] for s in 'ab'}
  probs = {s: jax.nn.softmax(logits[s].astype(jnp.float32), -1) for s in 'ab'}
  reliable = {s: ds.reliable_mask(ds.normalized_entropy(probs[s]), d.reliability,
                                  d.entropy_percentile, d.entropy_threshold) for s in 'ab'}
  if d.pseudo_label == 'lower_loss':
    pseudo, reliable_u = ds.select_pseudo_label(probs['a'], probs['b'], reliable['a'],
                                                reliable['b'], use_b)
  else:
    pseudo, reliable_u = ds.union_pseudo_label(probs['a'], probs['b'], reliable['a'],
                                               reliable['b'])
  unsup = {}
  for s in 'ab':
    ce, dice = ds.ce_dice(logits[s], pseudo, reliable_u, background=d.dice_background)
    unsup[s] = ce + dice
  if d.unlabeled_targets == 'both':
    unsup_total = unsup['a'] + unsup['b']
  else:  # cross supervision only: the subnet that gave the pseudo-label does not learn from it
    unsup_total = jnp.where(use_b, unsup['a'], unsup['b'])

  # ---- eqs. 4-5: confident disagreements.
  threshold = ds.reg_threshold(out.step, t_max, d.reg_threshold_start, d.reg_threshold_end)
  disagree = ds.disagreement_mask(probs['a'], probs['b'], threshold)
  reg = ds.disagreement_l1(probs['a'], probs['b'], disagree, d.reg_normalize)

  # ---- eqs. 6-7: prototype contrast, per subnet on its own features.
  features, proto_labels, proto_reliable = ({s: unl[f'features_{s}'] for s in 'ab'}, pseudo,
                                            reliable_u)
  if d.proto_from_labeled:  # ground-truth voxels join the reliable set
    features = {s: jnp.concatenate([out.student_labeled[f'features_{s}'], features[s]], 0)
                for s in 'ab'}
    if d.detach_unlabeled:
      features = jax.lax.stop_gradient(features)
    proto_labels = jnp.concatenate([labels.astype(pseudo.dtype), pseudo], 0)
    proto_reliable = jnp.concatenate([jnp.ones(labels.shape, bool), reliable_u], 0)
  contrast, aux = {}, {}
  for s in 'ab':
    contrast[s], aux[s] = ds.prototype_contrast(
        features[s], proto_labels, proto_reliable, num_classes, distance=d.distance,
        temperature=d.temperature, separation_weight=d.separation_weight)

  # ---- eq. 3.
  lambda_c = ds.contrast_weight(out.step, d.rampup_length or t_max, d.contrast_weight,
                                d.contrast_schedule, d.rampup_interval)
  loss_s = sup['a'] + sup['b']
  loss_u = unsup_total + d.reg_weight * reg
  loss_c = contrast['a'] + contrast['b']
  total = loss_s + d.unlabeled_weight * loss_u + lambda_c * loss_c
  metrics = {
      'sup_a': sup['a'], 'sup_b': sup['b'], 'unsup': unsup_total, 'reg': reg,
      'contrast': loss_c, 'proto_pull': aux['a']['pull'] + aux['b']['pull'],
      'proto_sep': aux['a']['separation'] + aux['b']['separation'],
      'reliable_frac': jnp.mean(reliable_u.astype(jnp.float32)),
      'disagree_frac': jnp.mean(disagree.astype(jnp.float32)),
      'reg_threshold': threshold, 'contrast_weight': lambda_c,
      'pseudo_from_b': use_b.astype(jnp.float32),
  }
  return total, metrics


TERM = LossTerm('dualstream', dualstream, blocks, scale_schedules, needs_unlabeled=True)
