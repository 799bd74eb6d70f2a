"""PLGCL anchor balance on real labels: the class of every anchor for each `plgcl.assign`.

  python benchmarks/plgcl_balance.py --data-dir ../shared/data/ACDC

Reads the labeled slices of an SSL4MIS h5 layout (the first `--labeled-patients` patients of
`train_slices.list`, as training does), resizes the labels to `--size` (nearest), and runs the
loss module's key selection on their one-hot maps (§3.1 footnote: labeled images use the ground
truth) in batches of `--batch` slices. With `plgcl.num_anchors=0` every valid key is an anchor, so
the key counts are the anchor counts. Prints one row per assignment: anchors per class, their
fractions, and the median per batch of foreground anchors. No model, no training: the figures
depend only on the labels, the patch size and the key rules.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.data import readers, splits, ssl4mis, transforms
from jaxseg.losses import plgcl

CLASS_NAMES = ('BG', 'RV', 'MYO', 'LV')


def read_labeled_slices(data_dir: str, labeled_patients: int, size: int,
                        num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """(images (N, size, size) float32, labels (N, size, size) int32) of the labeled slices."""
  names = splits.read_list(os.path.join(data_dir, 'train_slices.list'))
  n = ssl4mis.first_patients(names, labeled_patients)
  images, labels = [], []
  for name in names[:n]:
    image, label = readers.read_h5(os.path.join(data_dir, 'data', 'slices', f'{name}.h5'),
                                   num_classes=num_classes)
    images.append(transforms.resize(image, size, order=1))
    labels.append(transforms.resize(label, size, order=0))
  return np.stack(images).astype(np.float32), np.stack(labels).astype(np.int32)


def anchor_counts(images: np.ndarray, labels: np.ndarray, *, num_classes: int, patch: int,
                  batch: int, assign: str, min_conf: float, patches_per_class: int,
                  seed: int = 0) -> np.ndarray:
  """(num_batches, K) anchors per class in each batch of `batch` slices (a partial last batch
  is dropped, as training's batches are full)."""

  @jax.jit
  def counts(image, label, rng):
    conf = jax.nn.one_hot(label, num_classes)
    stats = plgcl.patch_statistics(image, conf, patch, assign, min_conf)
    keys = plgcl.make_keys(stats, assign, rng, patches_per_class)
    return plgcl.key_class_counts(keys, num_classes)

  rows = []
  for i, start in enumerate(range(0, len(images) - batch + 1, batch)):
    rng = jax.random.fold_in(jax.random.PRNGKey(seed), i)
    rows.append(np.asarray(counts(jnp.asarray(images[start:start + batch]),
                                  jnp.asarray(labels[start:start + batch]), rng)))
  return np.stack(rows)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data-dir', required=True)
  parser.add_argument('--labeled-patients', type=int, default=7)
  parser.add_argument('--size', type=int, default=256)
  parser.add_argument('--patch', type=int, default=32)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--min-conf', type=float, default=plgcl.MIN_CONF)
  parser.add_argument('--patches-per-class', type=int, default=plgcl.PATCHES_PER_CLASS)
  args = parser.parse_args(argv)
  k = len(CLASS_NAMES)
  images, labels = read_labeled_slices(args.data_dir, args.labeled_patients, args.size, k)
  cells = len(images) // args.batch * args.batch * (args.size // args.patch)**2
  print(f'{len(images)} labeled slices ({args.labeled_patients} patients) at {args.size}x'
        f'{args.size}, {args.patch}-pixel patches, batches of {args.batch} '
        f'({cells:,} grid cells in full batches); min_conf {args.min_conf}, '
        f'patches_per_class {args.patches_per_class}')
  print('| assign | anchors | ' + ' | '.join(CLASS_NAMES) + ' | foreground anchors per batch '
        '(median, min) |')
  print('|---|---:|' + '---:|' * k + '---:|')
  for assign in ('dominant', 'foreground', 'per_class'):
    per_batch = anchor_counts(images, labels, num_classes=k, patch=args.patch, batch=args.batch,
                              assign=assign, min_conf=args.min_conf,
                              patches_per_class=args.patches_per_class)
    total = per_batch.sum(0)
    cells_text = ' | '.join(f'{c:,} ({c / total.sum():.1%})' for c in total)
    fg = per_batch[:, 1:].sum(1)
    print(f'| {assign} | {total.sum():,} | {cells_text} | {np.median(fg):.0f}, {fg.min()} |')


if __name__ == '__main__':
  main()
