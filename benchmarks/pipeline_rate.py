"""The data pipeline alone: paired batches per second of each experiment's training streams.

  python benchmarks/pipeline_rate.py                                  # every experiment, phantom
  python benchmarks/pipeline_rate.py --experiments acdc_meanteacher,la_dualstream \\
      --data acdc=../shared/data/ACDC --data la=../shared/data/LA
  python benchmarks/pipeline_rate.py --threads 1,2,4                  # read_threads side by side

Each experiment's paper profile builds its streams exactly as training does
(`pipeline.make_train_iterator`: grain, `data.read_threads`, the experiment's augmentation and
batch sizes), and the script times `next()` on the paired iterator with nothing else running:
the rate the pipeline can sustain, to set beside the step time (the pipeline should deliver at
least 3x the steps per second the train step consumes). An experiment whose dataset has no
`--data PREFIX=DIR` reads the synthetic phantom at the paper's size (2D slices resized to
data.image_size; 3D volumes of side --phantom-3d, at least the crop).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

import numpy as np  # noqa: E402

from common import cpu_model  # noqa: E402
from jaxseg import config as config_lib  # noqa: E402
from jaxseg.data import datasets, pipeline  # noqa: E402
from jaxseg.errors import JaxsegError  # noqa: E402
from jaxseg.training import step as step_lib  # noqa: E402


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--experiments', default='',
                 help='comma-separated (default: every experiment but smoke)')
  p.add_argument('--data', action='append', default=[], metavar='PREFIX=DIR',
                 help='real data for the experiments whose name starts with PREFIX (repeatable)')
  p.add_argument('--threads', default='', help='comma-separated data.read_threads values '
                 '(default: each experiment\'s own)')
  p.add_argument('--batches', type=int, default=20, help='timed paired batches')
  p.add_argument('--warmup', type=int, default=3, help='untimed batches (fill the prefetch)')
  p.add_argument('--image-size', type=int, default=0, help='override data.image_size (2D)')
  p.add_argument('--crop', default='', help='override data.crop_shape D,H,W (3D)')
  p.add_argument('--phantom-3d', type=int, default=128, help='side of the 3D phantom volumes')
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE')
  p.add_argument('--json', default='', metavar='OUT.json')
  args = p.parse_args(argv)
  names = [s for s in args.experiments.split(',') if s] or [
      e for e in config_lib.list_experiments() if e != 'smoke']
  args.experiments = names
  args.data = dict(item.split('=', 1) for item in args.data)
  args.threads = [int(t) for t in args.threads.split(',') if t] or [None]
  args.crop = tuple(int(v) for v in args.crop.split(',')) if args.crop else ()
  return args


def make_config(name: str, args, threads):
  config = config_lib.load_experiment(name, 'paper')
  data_dir = next((d for prefix, d in args.data.items() if name.startswith(prefix)), '')
  with config.unlocked():
    config.data.dir = data_dir
    if args.image_size:
      config.data.image_size = args.image_size
    if args.crop and config.data.crop_shape:
      config.data.crop_shape = args.crop
    if not data_dir:  # the phantom at the size the experiment trains at
      config.data.synthetic.size = config.data.image_size
      config.data.synthetic3d.size = max(args.phantom_3d, *(config.data.crop_shape or (0,)))
      # The rate depends on the crop, not on the number of volumes: few, to generate quickly.
      config.data.synthetic3d.update(num_train=8, num_val=1, num_test=1)
      config.data.labeled_num = min(config.data.labeled_num, 4)
    if threads is not None:
      config.data.read_threads = threads
  config_lib.apply_overrides(config, args.set)
  return config


def measure(name: str, args, threads) -> dict:
  config = make_config(name, args, threads)
  streams = step_lib.streams(config)
  t = time.perf_counter()
  data = datasets.load_data(config)
  load_s = time.perf_counter() - t
  batches = pipeline.make_train_iterator(data, config, streams.unlabeled, streams.labeled)
  for _ in range(args.warmup):
    next(batches)
  times = []
  for _ in range(args.batches):
    t = time.perf_counter()
    labeled, unlabeled = next(batches)
    times.append(time.perf_counter() - t)
  shapes = {k: list(v.shape) for part in (labeled, unlabeled) if part for k, v in part.items()}
  total = sum(times)
  return {'experiment': name, 'data': data.layout, 'read_threads': config.data.read_threads,
          'labeled_batch': config.data.labeled_batch if streams.labeled else 0,
          'unlabeled_batch': config.data.unlabeled_batch if streams.unlabeled else 0,
          'shapes': shapes, 'load_s': load_s, 'batches_per_s': args.batches / total,
          'median_ms': 1e3 * float(np.median(times)), 'max_ms': 1e3 * max(times)}


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  results = []
  try:
    for name in args.experiments:
      for threads in args.threads:
        print(f'{name}: reading (read_threads {threads or "default"})...', file=sys.stderr,
              flush=True)
        results.append(measure(name, args, threads))
  except JaxsegError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'machine: {cpu_model()}, {os.cpu_count()} cores; {args.batches} paired batches after '
        f'{args.warmup} warm-up, the pipeline alone\n')
  print('| experiment | data | threads | batch | image shape | batches/s | median ms | max ms |')
  print('|---|---|---:|---|---|---:|---:|---:|')
  for r in results:
    batch = '+'.join(str(b) for b in (r['labeled_batch'], r['unlabeled_batch']) if b)
    shape = 'x'.join(map(str, next(iter(r['shapes'].values()))[1:]))
    print(f"| {r['experiment']} | {r['data']} | {r['read_threads']} | {batch} | {shape} | "
          f"{r['batches_per_s']:.1f} | {r['median_ms']:.1f} | {r['max_ms']:.1f} |")
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'cpu': cpu_model(), 'cpu_count': os.cpu_count(), 'results': results}, f,
                indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
