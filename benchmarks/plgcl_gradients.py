"""Which loss term drives the update of a trained run, module by module (PLGCL's Table 2 question).

  python benchmarks/plgcl_gradients.py --data-dir ../shared/data/ACDC \
      --run plgcl=W/plgcl/seed_0 --run no_plgcl=W/plgcl_no_plgcl/seed_0 [--checkpoint best]

For each run's checkpoint, on --batches training batches drawn as its training draws them
(labeled + unlabeled, its augmentations), each loss term's own weighted gradient at the train
step's forward pass (`step.make_term_gradients`: the same images, random numbers and batch
statistics; the terms sum to the step's gradient). A run trained without the PLGCL term gets it
added as a probe, with the first run's `plgcl` settings and weight: what the term would do to
those weights. Reported per module (encoder, decoder, projection head), averaged over batches:
  |g term|          the norm of each term's gradient
  cos(sup, plgcl)   cosine between the supervised and the PLGCL gradient in one batch
  cos(sup, sup')    cosine between the supervised gradients of two consecutive batches: what
                    alignment between two useful gradients looks like on this run (the
                    reference for the cosine before it)
  sup sign kept     the fraction of the module's weights, weighted by |g sup|, where the
                    trained gradient (the sum of the run's own terms) has the sign of the
                    supervised one: Adam moves each weight by about lr x the sign of its
                    gradient's running mean, so this is how much of each supervised step
                    survives the other terms
Nothing trains; `checkpoint` picks the state (its teacher, its step's ramps and warm-up).
"""

from __future__ import annotations

import argparse
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxseg import config as config_lib  # noqa: E402
from jaxseg.data import datasets, pipeline  # noqa: E402
from jaxseg.training import runs, step as step_lib  # noqa: E402

PROBE = 'plgcl'


def run_config(run, data_dir: str, probe_block):
  """The run's config on `data_dir`, with the PLGCL term added as a probe when it has none."""
  config = run.config.copy_and_resolve_references()
  with config.unlocked():
    config.data.dir = data_dir
    if PROBE not in config.losses:
      config.losses = (*config.losses, PROBE)
      config[PROBE] = probe_block
  return config


def flat(tree) -> np.ndarray:
  return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def measure(run, config, trained: tuple[str, ...], num_batches: int) -> dict:
  """{module: {statistic: mean over batches}} of one run."""
  data = datasets.load_data(config)
  streams = step_lib.streams(config)
  batches = pipeline.make_train_iterator(data, config, streams.unlabeled, streams.labeled)
  term_gradients = jax.jit(step_lib.make_term_gradients(run.model, config))
  rows: dict[str, dict[str, list[float]]] = {}
  previous_sup = {}
  for _ in range(num_batches):
    labeled, unlabeled = next(batches)
    grads = jax.device_get(term_gradients(run.state, labeled, unlabeled))
    for module in grads['supervised']:
      g = {term: flat(grads[term][module]) for term in grads}
      row = rows.setdefault(module, {})
      for term, vector in g.items():
        row.setdefault(f'|g {term}|', []).append(float(np.linalg.norm(vector)))
      sup = g['supervised']
      if not sup.any():  # the projection head: the supervised loss does not reach it
        continue
      if g[PROBE].any():  # the decoder: the PLGCL term does not reach it
        row.setdefault('cos(sup, plgcl)', []).append(cosine(sup, g[PROBE]))
      if module in previous_sup:
        row.setdefault("cos(sup, sup')", []).append(cosine(sup, previous_sup[module]))
      previous_sup[module] = sup
      total = sum(g[term] for term in trained)
      weight = np.abs(sup)
      row.setdefault('sup sign kept', []).append(
          float((weight * (np.sign(total) == np.sign(sup))).sum() / weight.sum()))
  return {module: {k: float(np.mean(v)) for k, v in row.items()} for module, row in rows.items()}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--data-dir', required=True)
  parser.add_argument('--run', action='append', required=True, metavar='NAME=WORKDIR')
  parser.add_argument('--checkpoint', default='best', help='best, last or a step')
  parser.add_argument('--batches', type=int, default=16)
  args = parser.parse_args(argv)
  named = [item.partition('=')[::2] for item in args.run]
  opened = [(name, runs.open_run(path, runs.parse_checkpoint(args.checkpoint)))
            for name, path in named]
  with_term = [run for _, run in opened if PROBE in run.config.losses]
  if not with_term:
    parser.error('at least one --run must have trained with the plgcl term (its settings are '
                 'the probe of the others)')
  probe_block = with_term[0].config[PROBE]
  columns = None
  print(f'# term gradients at the {args.checkpoint} checkpoint, mean over {args.batches} '
        'training batches')
  for name, run in opened:
    trained = tuple(run.config.losses)
    config = run_config(run, os.path.abspath(args.data_dir), probe_block)
    config_lib.add_method_blocks(config)
    result = measure(run, config, trained, args.batches)
    if columns is None:
      norms = [f'|g {term}|' for term in (*trained, PROBE) if f'|g {term}|' in result['encoder']]
      columns = [*dict.fromkeys(norms), 'cos(sup, plgcl)', "cos(sup, sup')", 'sup sign kept']
      print('| run | step | trained terms | module | ' + ' | '.join(columns) + ' |')
      print('|---|---:|---|---|' + '---:|' * len(columns))
    for module, row in result.items():
      cells = ' | '.join(f'{row[c]:.3g}' if c in row else '-' for c in columns)
      print(f'| {name} | {run.step} | {"+".join(trained)} | {module} | {cells} |', flush=True)


if __name__ == '__main__':
  main()
