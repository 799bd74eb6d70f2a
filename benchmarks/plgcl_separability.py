"""How well trained runs' features separate the classes on validation slices (PLGCL's Fig. 3 claim).

  python benchmarks/plgcl_separability.py --data-dir ../shared/data/ACDC \
      --run plgcl=W/plgcl/seed_0 --run no_plgcl=W/plgcl_no_plgcl/seed_0 [--checkpoint best]

PLGCL's paper (§4.4.1, Fig. 3) says the PLGCL term makes the encoder's embeddings cluster by
class. The term reaches the segmentation only through the shared encoder weights: its keys are
the attended patches I (.) C^k embedded by the encoder on their own (`embed_patches`), not the
encoder's features of the whole image the decoder reads. This script measures class
separability on the validation volumes' slices (ground-truth labels; nothing trains) along both
paths, for each run's checkpoint:
  patch path     the encoder on the ground-truth attended patches of every class a cell holds
                 (`plgcl.assign=per_class` keys of --patch pixels), globally average pooled, its
                 normalization on the patch batch's statistics as in training
  head           the same through the projection head (what eq. 5 contrasts; a run without the
                 PLGCL term has an untrained head there)
  image path     the bottleneck of the whole-slice forward pass, one vector per grid cell of
                 --patch pixels, labeled by the cell's dominant class where it covers at
                 least half the cell
Separability = balanced leave-one-out k-nearest-neighbour accuracy under cosine similarity
(chance: 1 / number of classes present), with background subsampled to at most --max-per-class
vectors, as every class is. The image path uses running statistics (evaluation mode).
"""

from __future__ import annotations

import argparse
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxseg.data import datasets  # noqa: E402
from jaxseg.data.volume import resize  # noqa: E402
from jaxseg.losses import plgcl  # noqa: E402
from jaxseg.methods.plgcl import pool_regions  # noqa: E402
from jaxseg.training import runs  # noqa: E402

PATHS = ('patch path', 'head', 'image path')


def validation_slices(run, data_dir: str, size: int) -> tuple[np.ndarray, np.ndarray]:
  """(images (N, size, size), labels (N, size, size)) of every validation slice, resized."""
  config = run.config.copy_and_resolve_references()
  config.data.dir = data_dir
  volumes = datasets.load_data(config).splits['val']
  images, labels = [], []
  for volume in volumes:
    for image, label in zip(volume.image, volume.label):
      images.append(resize(image, size, order=1))
      labels.append(resize(label, size, order=0))
  return np.stack(images).astype(np.float32), np.stack(labels).astype(np.int32)


def features(run, images: np.ndarray, labels: np.ndarray, batch: int, patch: int) -> dict:
  """{path: (vectors (N, D), classes (N,))} over all slices, in batches of `batch` slices."""
  model, variables, config = run.model, run.variables, run.config
  k = config.num_classes
  # The patch path as training computes it: normalized by the patch batch's own statistics (the
  # running averages are those of whole images), without dropout.
  patch_model = model.clone(dropout=(0.0,) * len(model.dropout))

  def encode_patches(m, x):
    return m.encoder(x, True)[-1].mean(axis=(1, 2))

  @jax.jit
  def one_batch(image_BHW, label_BHW):
    conf = jax.nn.one_hot(label_BHW, k)
    stats = plgcl.patch_statistics(image_BHW, conf, patch, 'per_class')
    # Every cell a class is present in is a key of that class (no sampling): as many slots per
    # class as the batch has cells, whatever --patch is.
    num_cells = stats['avg_BPK'].shape[0] * stats['avg_BPK'].shape[1]
    keys = plgcl.make_keys(stats, 'per_class', None, patches_per_class=num_cells)
    patches = keys['patch_MS'].reshape(-1, patch, patch, 1)
    pooled, _ = patch_model.apply(variables, patches, method=encode_patches,
                                  mutable=['batch_stats'])
    head = model.apply(variables, pooled, method='project') if config.model.projection_dim else None
    bottleneck = model.apply(variables, image_BHW[..., None], train=False)['bottleneck']
    cells = pool_regions(bottleneck, image_BHW.shape[1], patch)  # (B, P, C)
    avg = stats['avg_BPK']
    return (pooled, head, keys['class_M'], keys['valid_M'],
            cells.reshape(-1, cells.shape[-1]), avg.argmax(-1).reshape(-1),
            (avg.max(-1) >= 0.5).reshape(-1))

  out = {name: ([], []) for name in PATHS}
  for start in range(0, len(images) - batch + 1, batch):
    pooled, head, key_class, key_valid, cells, cell_class, pure = map(
        lambda a: None if a is None else np.asarray(a),
        one_batch(jnp.asarray(images[start:start + batch]),
                  jnp.asarray(labels[start:start + batch])))
    for name, vectors in (('patch path', pooled), ('head', head)):
      if vectors is not None:
        out[name][0].append(vectors[key_valid])
        out[name][1].append(key_class[key_valid])
    out['image path'][0].append(cells[pure])
    out['image path'][1].append(cell_class[pure])
  return {name: (np.concatenate(v), np.concatenate(c)) for name, (v, c) in out.items() if v}


def knn_balanced_accuracy(vectors: np.ndarray, classes: np.ndarray, k: int,
                          max_per_class: int, seed: int = 0) -> tuple[float, dict[int, int]]:
  """Balanced leave-one-out k-NN accuracy (cosine) and the number of vectors per class used."""
  rng = np.random.default_rng(seed)
  keep = np.concatenate([rng.permutation(np.flatnonzero(classes == c))[:max_per_class]
                         for c in np.unique(classes)])
  x, y = vectors[keep], classes[keep]
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  sim = x @ x.T
  np.fill_diagonal(sim, -np.inf)
  neighbours = np.argpartition(-sim, k, axis=1)[:, :k]
  votes = y[neighbours]
  predicted = np.array([np.bincount(v, minlength=y.max() + 1).argmax() for v in votes])
  recalls = [np.mean(predicted[y == c] == c) for c in np.unique(y)]
  return float(np.mean(recalls)), {int(c): int(np.sum(y == c)) for c in np.unique(y)}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--data-dir', required=True)
  p.add_argument('--run', action='append', required=True, metavar='NAME=WORKDIR')
  p.add_argument('--checkpoint', default='best')
  p.add_argument('--k', type=int, default=5)
  p.add_argument('--max-per-class', type=int, default=1000)
  p.add_argument('--batch', type=int, default=8)
  p.add_argument('--patch', type=int, default=16,
                 help='grid cell and key patch side (the quick profile\'s 16 at 128x128)')
  args = p.parse_args(argv)
  named = [spec.split('=', 1) for spec in args.run]
  if any(len(n) != 2 for n in named):
    p.error('--run takes NAME=WORKDIR')
  rows, images = [], None
  for name, workdir in named:
    run = runs.open_run(workdir, runs.parse_checkpoint(args.checkpoint))
    if images is None:
      size = run.config.eval.patch_size
      images, labels = validation_slices(run, args.data_dir, size)
      print(f'{len(images)} validation slices at {size}x{size}; patch {args.patch}; '
            f'{args.k}-NN, at most {args.max_per_class} vectors per class', flush=True)
    cells = []
    for path, (vectors, classes) in features(run, images, labels, args.batch, args.patch).items():
      accuracy, counts = knn_balanced_accuracy(vectors, classes, args.k, args.max_per_class)
      cells.append(f'{path} {accuracy:.3f} (n {sum(counts.values())})')
    rows.append(f'| {name} (step {run.step}) | ' + ' | '.join(cells) + ' |')
    print(rows[-1], flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
