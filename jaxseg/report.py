"""A run's report: `python -m jaxseg.report --workdir RUN` writes `RUN/report/report.md` and figures.

Figures (PNG, matplotlib without a display):
  learning_curves.png  every logged training scalar (loss terms, learning rate, EMA decay...) and
                       the validation Dice and HD95 against steps; stage boundaries (`stages.json`)
                       and warm-up ends (PLGCL warm-up, consistency start) as dashed lines.
  metrics.png          per-class Dice and HD95 over the volumes of each split (results.json).
  overlays.png         ground truth and prediction over the image, on the validation volumes of
                       best, median and worst mean Dice (the slice with the most ground truth).
  embedding.png        features of validation slices in 2D, coloured by ground-truth class:
                       the pixel projection head's output (model.pixel_projection_dim > 0), or
                       projection-head embeddings of image patches (model.projection_dim > 0; a
                       patch's class is its largest foreground class covering at least 10% of
                       it), else decoder features of sampled pixels.
                       t-SNE when scikit-learn is installed, else PCA.
`jaxseg.run` calls `write_report` once training ends; a figure whose inputs are missing
(no results.json, the data folder moved) is left out with the reason in report.md.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import jax
import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure  # no pyplot: no display, no global state
from matplotlib.patches import Patch

from jaxseg import cli
from jaxseg import config as config_lib
from jaxseg.data import datasets
from jaxseg.data.transforms import resize
from jaxseg.errors import DataError, JaxsegError
from jaxseg.evaluation import inference
from jaxseg.training import distributed, runs
from jaxseg.training.logging import read_metrics

# Class colours: background transparent, then a qualitative palette (tab10 without grey).
_PALETTE = ('#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2',
            '#bcbd22', '#17becf')
_SCHEDULE_KEYS = ('lr', 'ema_decay', 'grad_norm')
_MAX_POINTS_PER_CLASS = 300  # embedding plot: enough to see clusters, fast with t-SNE
_FOREGROUND_FRACTION = 0.1  # a patch's class: its largest foreground class covering >= 10%


def class_color(k: int) -> str:
  return '#808080' if k == 0 else _PALETTE[(k - 1) % len(_PALETTE)]


def _figure(rows: int, cols: int, size: tuple[float, float]):
  fig = Figure(figsize=size, dpi=100, layout='constrained')
  axes = fig.subplots(rows, cols, squeeze=False)
  return fig, axes


# --- inputs ---------------------------------------------------------------------------------


def read_stages(workdir: str) -> list[dict]:
  """`stages.json` of a multi-stage run ([{name, start_step, end_step}]), or [] when absent."""
  path = os.path.join(workdir, 'stages.json')
  if not os.path.exists(path):
    return []
  try:
    with open(path) as f:
      stages = json.load(f)
    return [{'name': str(s['name']), 'start_step': int(s['start_step']),
             'end_step': int(s['end_step'])} for s in stages]
  except (OSError, ValueError, TypeError, KeyError) as e:
    raise DataError(f'{path}: expected a JSON list of {{name, start_step, end_step}} '
                    f'({type(e).__name__}: {e})') from None


def _warmup_marks(config, offset: int = 0) -> list[tuple[int, str]]:
  marks = []
  losses = tuple(config.get('losses', ()))
  if 'plgcl' in losses and config.plgcl.get('warmup_steps', 0) > 0:
    marks.append((offset + int(config.plgcl.warmup_steps), 'PLGCL on'))
  if 'mean_teacher' in losses and config.mean_teacher.get('start_step', 0) > 0:
    marks.append((offset + int(config.mean_teacher.start_step), 'consistency on'))
  return marks


def boundaries(config, stages: list[dict]) -> list[tuple[int, str]]:
  """(step, label) of every boundary to mark on learning curves: stage starts and warm-up ends.

  `config` is the run's whole config; each stage's warm-ups count from the stage's start.
  """
  if not stages or not config.get('stage_order'):
    return sorted(_warmup_marks(config))
  marks = []
  for s in stages:
    if s['start_step'] > 0:
      marks.append((s['start_step'], f'stage {s["name"]}'))
    if s['name'] in config.stages:
      marks += [(step, label) for step, label in
                _warmup_marks(config_lib.stage_config(config, s['name']), s['start_step'])
                if step < s['end_step']]
  return sorted(marks)


def read_results(workdir: str) -> dict | None:
  path = os.path.join(workdir, 'results.json')
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise DataError(f'{path}: not readable JSON ({type(e).__name__}: {e})') from None


def _values(per_volume: list[dict], metric: str) -> np.ndarray:
  """(volumes, classes) float array; null (undefined) entries become NaN."""
  return np.array([[np.nan if v is None else v for v in vol[metric]] for vol in per_volume],
                  dtype=np.float64)


# --- figures --------------------------------------------------------------------------------


def _smooth(values: np.ndarray, points: int) -> np.ndarray:
  """Exponential moving average for long noisy curves (TensorBoard's smoothing, weight 0.9)."""
  if points < 50:
    return values
  out, acc = np.empty_like(values), values[0]
  for i, v in enumerate(values):
    acc = 0.9 * acc + 0.1 * v
    out[i] = acc
  return out


def _mark(ax, marks) -> None:
  for step, label in marks:
    ax.axvline(step, color='k', linestyle='--', linewidth=0.8, alpha=0.6)
    ax.annotate(label, (step, 1.0), xycoords=('data', 'axes fraction'), rotation=90,
                fontsize=7, va='top', ha='right', alpha=0.8)


def plot_learning_curves(records: list[dict], class_names, marks, path: str) -> None:
  """One panel per training scalar, then validation Dice and HD95, boundaries marked."""
  train = [r for r in records if r.get('split') == 'train']
  val = [r for r in records if r.get('split') == 'val']
  keys = sorted({k for r in train for k in r} - {'step', 'split'})
  # Losses first (the total, then its terms), schedules and diagnostics last.
  late = [k for k in keys if k in _SCHEDULE_KEYS or k.endswith('_weight')]
  keys = (['loss'] if 'loss' in keys else []) + [k for k in keys if k != 'loss' and k not in late]
  panels = [('train', k) for k in keys] + [('val', m) for m in ('dice', 'hd95') if val]
  panels += [('train', k) for k in late]
  if not panels:
    raise DataError('metrics.jsonl: no metrics logged yet')
  cols = min(4, len(panels))
  rows = math.ceil(len(panels) / cols)
  fig, axes = _figure(rows, cols, (4.0 * cols, 2.8 * rows))
  for ax, (split, key) in zip(axes.flat, panels):
    if split == 'train':
      pts = [(r['step'], r[key]) for r in train if r.get(key) is not None]
      if pts:
        steps, values = np.array(pts, dtype=np.float64).T
        smooth = _smooth(values, len(values))
        if smooth is not values:
          ax.plot(steps, values, color='C0', alpha=0.25, linewidth=0.8)
        ax.plot(steps, smooth, color='C0', linewidth=1.2)
      ax.set_title(f'train/{key}', fontsize=10)
    else:
      for i, name in enumerate(list(class_names) + ['mean']):
        pts = [(r['step'], r.get(f'{key}/{name}')) for r in val]
        pts = [(s, v) for s, v in pts if v is not None]
        if pts:
          steps, values = np.array(pts, dtype=np.float64).T
          style = dict(color='k', linewidth=2.0) if name == 'mean' else dict(
              color=class_color(i + 1), linewidth=1.0)
          ax.plot(steps, values, marker='.', label=name, **style)
      ax.set_title(f'validation {"Dice" if key == "dice" else "HD95"}', fontsize=10)
      ax.legend(fontsize=7, loc='best')
    ax.set_xlabel('step', fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    _mark(ax, marks)
  for ax in list(axes.flat)[len(panels):]:
    ax.set_visible(False)
  fig.savefig(path)


def plot_metric_distributions(results: dict, class_names, units: str, path: str) -> None:
  """Box plot plus the volumes as dots, per class: Dice and HD95 for every split."""
  splits = [s for s in ('val', 'test') if s in results['splits']] + sorted(
      set(results['splits']) - {'val', 'test'})
  fig, axes = _figure(len(splits), 2, (9.0, 3.2 * len(splits)))
  rng = np.random.default_rng(0)
  for row, split in zip(axes, splits):
    per_volume = results['splits'][split]['per_volume']
    for ax, metric, label in ((row[0], 'dice', 'Dice'), (row[1], 'hd95', f'HD95 ({units})')):
      values = _values(per_volume, metric)
      columns = [values[:, i][~np.isnan(values[:, i])] for i in range(values.shape[1])]
      positions = [i + 1 for i, c in enumerate(columns) if c.size]
      ax.boxplot([c for c in columns if c.size], positions=positions, widths=0.5,
                 showfliers=False, medianprops=dict(color='k'))
      for i, c in enumerate(columns):
        jitter = rng.uniform(-0.12, 0.12, c.size)
        ax.scatter(np.full(c.size, i + 1) + jitter, c, s=14, color=class_color(i + 1), zorder=3)
        missing = values.shape[0] - c.size
        if missing:
          ax.annotate(f'{missing} undefined', (i + 1, 0.02), xycoords=('data', 'axes fraction'),
                      fontsize=7, ha='center')
      ax.set_xticks(range(1, len(class_names) + 1), class_names)
      ax.set_title(f'{split}: {label} over {values.shape[0]} volumes', fontsize=10)
      ax.grid(alpha=0.3, axis='y')
      if metric == 'dice':
        ax.set_ylim(-0.02, 1.02)
  fig.savefig(path)


def _overlay_rgba(label_HW: np.ndarray, alpha: float = 0.45) -> np.ndarray:
  rgba = np.zeros(label_HW.shape + (4,), np.float32)
  for k in np.unique(label_HW):
    if k:
      rgba[label_HW == k] = (*to_rgb(class_color(int(k))), alpha)
  return rgba


def plot_overlays(rows: list[tuple[str, object, np.ndarray]], class_names, path: str) -> None:
  """rows: (title, volume, prediction_DHW); shows each volume's slice with most ground truth."""
  fig, axes = _figure(len(rows), 3, (10.0, 3.4 * len(rows)))
  for ax_row, (title, volume, pred) in zip(axes, rows):
    z = int(np.argmax((volume.label > 0).sum(axis=(1, 2))))
    image = volume.image[z]
    for ax, label, what in ((ax_row[0], None, 'image'),
                            (ax_row[1], volume.label[z], 'ground truth'),
                            (ax_row[2], pred[z], 'prediction')):
      ax.imshow(image, cmap='gray', interpolation='nearest')
      if label is not None:
        ax.imshow(_overlay_rgba(label), interpolation='nearest')
      # The volume's name on a line of its own: beside 'image' it overflowed the column.
      ax.set_title(f'{title}\nslice {z}: {what}' if what == 'image' else f'\n{what}', fontsize=9)
      ax.set_xticks([])
      ax.set_yticks([])
  handles = [Patch(color=class_color(k + 1), label=name) for k, name in enumerate(class_names)]
  fig.legend(handles=handles, loc='outside lower center', ncol=len(handles), fontsize=9)
  fig.savefig(path)


def project_2d(features_ND: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
  """(N, 2) coordinates and the method's name: t-SNE with scikit-learn, else PCA by SVD."""
  x = features_ND.astype(np.float64)
  x = x - x.mean(axis=0)
  try:
    from sklearn.manifold import TSNE  # noqa: PLC0415 (optional)
  except ImportError:
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T, 'PCA'
  perplexity = float(max(2, min(30, (len(x) - 1) // 3)))
  return TSNE(2, perplexity=perplexity, init='pca', random_state=seed).fit_transform(x), 't-SNE'


def plot_embedding(points_N2: np.ndarray, classes_N: np.ndarray, class_names, title: str,
                   path: str) -> None:
  fig, axes = _figure(1, 1, (6.0, 5.2))
  ax = axes[0, 0]
  names = ['background'] + list(class_names)
  for k in np.unique(classes_N):
    sel = classes_N == k
    ax.scatter(points_N2[sel, 0], points_N2[sel, 1], s=8, alpha=0.7, color=class_color(int(k)),
               label=f'{names[k]} ({int(sel.sum())})')
  ax.legend(fontsize=8, markerscale=2)
  ax.set_title(title, fontsize=10)
  ax.set_xticks([])
  ax.set_yticks([])
  fig.savefig(path)


# --- model-based figures -------------------------------------------------------------------


def _slices_for_embedding(volumes, config, per_volume: int = 2):
  """(B, S, S) images and labels at the network's input size: the slices with most foreground."""
  size, order = config.eval.patch_size, config.eval.interp_order
  images, labels = [], []
  for volume in volumes:
    for z in np.argsort(-(volume.label > 0).sum(axis=(1, 2)))[:per_volume]:
      images.append(resize(volume.image[z], size, order=order))
      labels.append(resize(volume.label[z], size, order=0))
  return np.stack(images).astype(np.float32), np.stack(labels)


def embedding_features(run, images_BHW: np.ndarray, labels_BHW: np.ndarray, seed: int = 0):
  """(features (N, C), classes (N,), description) from the run's model on labelled slices."""
  config, model, variables = run.config, run.model, run.variables
  rng = np.random.default_rng(seed)
  k = config.num_classes
  if config.model.get('pixel_projection_dim', 0) > 0 or not config.model.projection_dim:
    pixel_head = config.model.get('pixel_projection_dim', 0) > 0
    key = 'pixel_embedding' if pixel_head else 'decoder_features'
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False)[key])
    features_BHWC = np.asarray(forward(variables, images_BHW[..., None]))
    features, classes = features_BHWC.reshape(-1, features_BHWC.shape[-1]), labels_BHW.reshape(-1)
    what = ('pixel projection-head embeddings' if key == 'pixel_embedding'
            else 'decoder features') + ' of pixels'
  else:
    patch = int(config.plgcl.patch) if 'plgcl' in config else 32
    size = images_BHW.shape[1]
    if size % patch:
      patch = max(d for d in range(1, size // 4 + 1) if size % d == 0)
    b, g = images_BHW.shape[0], size // patch
    tile = lambda x: x.reshape(b, g, patch, g, patch, *x.shape[3:]).swapaxes(2, 3).reshape(
        b * g * g, patch, patch, *x.shape[3:])
    onehot = np.eye(k, dtype=np.float32)[labels_BHW]
    fractions = tile(onehot).mean(axis=(1, 2))  # (P, K)
    fg = fractions[:, 1:]
    classes = np.where(fg.max(axis=1) >= _FOREGROUND_FRACTION, fg.argmax(axis=1) + 1, 0)
    patches = tile(images_BHW[..., None])
    if 'plgcl' in tuple(config.losses):
      # As PLGCL embeds a labelled patch: the image seen through its class's mask, I * C^k.
      patches = patches * tile(onehot)[np.arange(len(classes)), ..., classes][..., None]
    embed = jax.jit(lambda v, x: model.apply(v, x, train=False, method='embed_patches'))
    features = np.asarray(embed(variables, patches))
    what = f'projection-head embeddings of {patch}x{patch} patches'
  keep = np.concatenate([rng.permutation(np.flatnonzero(classes == c))[:_MAX_POINTS_PER_CLASS]
                         for c in range(k)])
  return features[keep], classes[keep], what


def _model_figures(workdir: str, out_dir: str, config, results: dict | None,
                   progress: bool) -> list[str]:
  """overlays.png and embedding.png; returns the report lines for them."""
  if results is None or 'val' not in results.get('splits', {}):
    raise DataError(f'{os.path.join(workdir, "results.json")}: missing or without a val split '
                    '(training has not finished)')
  per_volume = results['splits']['val']['per_volume']
  run = runs.open_run(workdir, 'best', config=config)
  volumes = datasets.load_data(config).splits['val']
  if len(volumes) != len(per_volume):
    raise DataError(f'{config.data.dir or "synthetic"}: {len(volumes)} validation volumes, '
                    f'results.json has {len(per_volume)}')
  dice = np.nanmean(_values(per_volume, 'dice'), axis=1)
  order = np.argsort(-dice, kind='stable')
  picks = {}
  for what, i in (('best', order[0]), ('worst', order[-1]), ('median', order[len(order) // 2])):
    if i not in picks.values():  # fewer than 3 validation volumes: show each once
      picks[what] = i
  picks = {w: picks[w] for w in ('best', 'median', 'worst') if w in picks}
  rows, chosen = [], []
  for what, i in picks.items():
    volume = volumes[int(i)]
    if volume.label is None:
      continue
    pred = inference.predict(run.logits_fn, volume.image, config)
    rows.append((f'{what}: {volume.name} (Dice {dice[i]:.3f})', volume, pred))
    chosen.append(volume)
  plot_overlays(rows, config.class_names, os.path.join(out_dir, 'overlays.png'))
  lines = ['## Predictions on validation volumes', '',
           f'Best checkpoint (step {run.step}); the validation volumes of best, median and worst '
           'mean Dice, each at its slice with the most ground truth.', '',
           '![overlays](overlays.png)', '']
  if config.eval.get('mode', 'slices') != 'slices':
    return lines + ['## Feature embedding', '', 'Not drawn: 2D networks only.', '']
  images, labels = _slices_for_embedding(chosen, config)
  features, classes, what = embedding_features(run, images, labels, seed=config.seed)
  points, method = project_2d(features, seed=config.seed)
  plot_embedding(points, classes, config.class_names,
                 f'{method} of {what}\n({len(chosen)} validation volumes)',
                 os.path.join(out_dir, 'embedding.png'))
  lines += ['## Feature embedding', '',
            f'{method} of the {what} ({len(features)} points from {len(images)} validation '
            'slices), coloured by ground-truth class.', '', '![embedding](embedding.png)', '']
  return lines


# --- the report -----------------------------------------------------------------------------


def _summary_lines(config, results: dict | None, stages: list[dict]) -> list[str]:
  labeled = (f'{config.data.labeled_fraction:.1%} of training cases' if config.data.get(
      'labeled_fraction', 0) else f'{config.data.labeled_num} patients/volumes')
  lines = [f'- losses: {", ".join(config.losses)}',
           f'- data: {config.data.dir or "synthetic phantom"}; labeled: {labeled}',
           f'- steps: {config.steps}']
  if results:
    wall = results.get('train_wall_seconds')
    lines.append(f'- best checkpoint: step {results.get("best_step")}'
                 + (f'; training wall time {wall / 60:.1f} min' if wall is not None else ''))
  for s in stages:
    lines.append(f'- stage {s["name"]}: steps {s["start_step"]}..{s["end_step"]}')
  return lines


def write_report(workdir: str, progress: bool = False) -> str:
  """Writes `<workdir>/report/report.md` and its figures; returns the report's path."""
  config = config_lib.read_run_config(workdir)
  out_dir = os.path.join(workdir, 'report')
  os.makedirs(out_dir, exist_ok=True)
  results = read_results(workdir)
  stages = read_stages(workdir)
  lines = [f'# Report: {config.experiment or "run"}', '', f'Run directory: `{workdir}`', '']
  lines += _summary_lines(config, results, stages) + ['']

  results_md = os.path.join(workdir, 'results.md')
  if os.path.exists(results_md):
    with open(results_md) as f:
      text = f.read().split('\n', 1)[-1].strip()  # its title repeats the run's name
    text = ('\n' + text).replace('\n## ', '\n### ').strip()  # under this report's heading
    lines += ['## Results (best checkpoint)', '', text, '']

  def section(title: str, make) -> None:
    start = time.time()
    try:
      lines.extend(make())
    except (JaxsegError, OSError) as e:
      lines.extend([f'## {title}', '', f'Not drawn: {e}', ''])
    if progress:
      print(f'report: {title} ({time.time() - start:.1f} s)', flush=True)

  def curves():
    metrics_path = os.path.join(workdir, 'metrics.jsonl')
    if not os.path.exists(metrics_path):
      raise DataError(f'{metrics_path}: missing')
    records = read_metrics(workdir)
    last = max((r['step'] for r in records), default=0)
    marks = [(step, label) for step, label in
             boundaries(config_lib.read_run_config(workdir, resolve_stages=False), stages)
             if step <= last]  # a warm-up longer than the run would only stretch the axis
    plot_learning_curves(records, config.class_names, marks,
                         os.path.join(out_dir, 'learning_curves.png'))
    note = ('Dashed lines: ' + '; '.join(f'{label} at step {step}' for step, label in marks)
            + '.') if marks else 'No warm-up or stage boundaries in this run.'
    return ['## Learning curves', '', note, '', '![learning curves](learning_curves.png)', '']

  def distributions():
    if results is None:
      raise DataError(f'{os.path.join(workdir, "results.json")}: missing (training has not '
                      'finished)')
    if not results.get('splits'):
      raise DataError('the run was not validated (eval.every=0: a pretraining stage), so there '
                      'are no per-volume metrics')
    plot_metric_distributions(results, config.class_names, config.eval.units,
                              os.path.join(out_dir, 'metrics.png'))
    return ['## Per-class metrics over volumes', '', '![metrics](metrics.png)', '']

  section('Learning curves', curves)
  section('Per-class metrics over volumes', distributions)
  section('Predictions and feature embedding',
          lambda: _model_figures(workdir, out_dir, config, results, progress))
  path = os.path.join(out_dir, 'report.md')
  with open(path, 'w') as f:
    f.write('\n'.join(lines).rstrip() + '\n')
  return path


@cli.command
def main(argv: list[str]) -> int:
  parser = cli.parser('jaxseg.report', __doc__, run_dir=True)
  args = parser.parse_args(argv)
  print(f'report written: {write_report(args.workdir, progress=not args.no_progress)}')
  return 0


if __name__ == '__main__':
  # Launched as several processes (SLURM, mpirun, a TPU pod): process 0 alone works.
  sys.exit(distributed.main_only(main))
