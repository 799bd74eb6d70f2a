"""jaxseg's jitted train steps beside PyTorch versions of the same networks and losses, in one run.

  pip install -e ".[bench]"                      # PyTorch (CPU build is enough on a CPU)
  python benchmarks/vs_pytorch.py                # all steps + the per-layer convolution table
  python benchmarks/vs_pytorch.py --conv-impl xla,fast --steps mt128,layers
  python benchmarks/vs_pytorch.py --quick        # tiny sizes, 1 timed step: a smoke run

Steps (same shapes on both sides, random batches placed once, no data pipeline):
  mt128, mt256  SSL4MIS U-Net mean teacher, 12 labeled + 12 unlabeled images (acdc_meanteacher).
  vnet          UA-MT V-Net supervised step, 2 volumes of --crop (la_meanteacher, supervised only).
  dualstream    V-Net + ResNet-34 dual-stream step, 2 + 2 volumes of --crop (la_dualstream).
  layers        forward / input-gradient / weight-gradient time of every distinct convolution of
                the U-Net (at 256, 24 images: the mean-teacher student forward) and of the V-Net
                (at --crop, 2 volumes), JAX beside PyTorch: where a step's time goes.

The JAX side is the project's own step (`jaxseg.training.step`, built from the experiment's paper
config as benchmarks/step_time.py does); `--conv-impl` sets `model.conv_impl` for each variant
(when the config has that key) and `--set` passes any other override (e.g. model.dtype=bfloat16).
The PyTorch side is benchmarks/torch_reference.py; parameter counts are checked equal. Timed steps
alternate between the variants, so a load that comes and goes hits them alike; each figure is
the median of --repeats steps after --warmup. Markdown tables go to stdout, the figures to
benchmarks/results/vs_pytorch-<time>.json (or --json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

try:
  import torch  # noqa: E402
except ImportError:
  sys.exit('error: vs_pytorch.py needs PyTorch, the optional bench extra: '
           'pip install -e ".[bench]" (a CPU-only build: pip install torch --index-url '
           'https://download.pytorch.org/whl/cpu)')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import torch_reference as ref  # noqa: E402
from common import alternate, machine_info  # noqa: E402
from jaxseg import config as config_lib  # noqa: E402
from jaxseg.errors import JaxsegError  # noqa: E402
from jaxseg.models import build_model  # noqa: E402
from jaxseg.training import schedules  # noqa: E402
from jaxseg.training import step as step_lib  # noqa: E402

STEPS = ('mt128', 'mt256', 'vnet', 'dualstream', 'layers')
RESULTS_DIR = os.path.join(REPO_ROOT, 'benchmarks', 'results')


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--steps', default=','.join(STEPS), help=f'comma-separated of {", ".join(STEPS)}')
  p.add_argument('--conv-impl', default='',
                 help='comma-separated model.conv_impl values, one JAX variant each '
                      '(default: the config\'s own)')
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='config override for every JAX step (repeatable)')
  p.add_argument('--labeled', type=int, default=12, help='2D labeled images')
  p.add_argument('--unlabeled', type=int, default=12, help='2D unlabeled images')
  p.add_argument('--crop', default='48,48,32',
                 help='3D crop D,H,W (sides multiples of 16; paper 112,112,80)')
  p.add_argument('--volumes', type=int, default=2, help='3D labeled (and unlabeled) volumes')
  p.add_argument('--repeats', type=int, default=5, help='timed steps per variant')
  p.add_argument('--warmup', type=int, default=2, help='untimed steps per variant')
  p.add_argument('--layer-repeats', type=int, default=3, help='timed calls per layer and pass')
  p.add_argument('--quick', action='store_true',
                 help='tiny sizes and 1 timed step: checks that everything runs')
  p.add_argument('--json', default='', metavar='OUT.json')
  args = p.parse_args(argv)
  args.steps = [s for s in args.steps.split(',') if s]
  unknown = [s for s in args.steps if s not in STEPS]
  if unknown:
    p.error(f'--steps: unknown {unknown}; known: {", ".join(STEPS)}')
  args.conv_impl = [s for s in args.conv_impl.split(',') if s] or [None]
  args.crop = tuple(int(v) for v in args.crop.split(','))
  args.sizes = {'mt128': 128, 'mt256': 256}
  args.unet_layer_size = 256
  if args.quick:
    args.labeled, args.unlabeled, args.volumes = 2, 2, 2
    args.crop = (16, 16, 16)
    args.sizes = {'mt128': 32, 'mt256': 64}
    args.unet_layer_size = 32
    args.repeats, args.warmup, args.layer_repeats = 1, 1, 1
  if len(args.crop) != 3 or any(s % 16 for s in args.crop):
    p.error(f'--crop {args.crop}: three sides, each a multiple of 16')
  return args


# ---------------------------------------------------------------------------------------------
# The JAX steps.


def jax_config(step: str, args, conv_impl):
  if step in ('mt128', 'mt256'):
    config = config_lib.load_experiment('acdc_meanteacher', 'paper')
    with config.unlocked():
      config.data.image_size = args.sizes[step]
      config.data.labeled_batch = args.labeled
      config.data.unlabeled_batch = args.unlabeled
  else:
    config = config_lib.load_experiment(
        'la_meanteacher' if step == 'vnet' else 'la_dualstream', 'paper')
    with config.unlocked():
      config.data.crop_shape = args.crop
      config.data.labeled_batch = args.volumes
      config.data.unlabeled_batch = args.volumes
      if step == 'vnet':
        config.losses = ('supervised',)
  with config.unlocked():
    config.mesh.num_devices = 1
  overrides = list(args.set)
  if conv_impl is not None:
    if 'conv_impl' not in config.model:
      raise SystemExit(f'error: --conv-impl {conv_impl}: this checkout has no model.conv_impl')
    overrides.append(f'model.conv_impl={conv_impl!r}')
  config_lib.apply_overrides(config, overrides)
  return config


def jax_step(config, seed: int = 0):
  """(step function advancing a held state, parameter count) for the experiment's train step."""
  mesh = step_lib.make_mesh(1)
  model = build_model(config)
  tx = schedules.optimizer(config)
  train_step = step_lib.make_train_step(model, tx, config)
  jitted = step_lib.jit_train_step(train_step, mesh)
  state = step_lib.replicate(step_lib.init_state(model, tx, config), mesh)
  params = sum(int(x.size) for x in jax.tree.leaves(state.params))
  rng = np.random.default_rng(seed)
  crop = tuple(config.data.crop_shape) or (config.data.image_size,) * 2
  b, u = config.data.labeled_batch, config.data.unlabeled_batch
  labeled = {'image': rng.random((b, *crop), dtype=np.float32),
             'label': rng.integers(0, config.num_classes, (b, *crop), dtype=np.int32)}
  unlabeled = None
  if step_lib.streams(config).unlabeled:
    x = rng.random((u, *crop), dtype=np.float32)
    unlabeled = {'image_weak': x, 'image_strong': x}
  labeled, unlabeled = step_lib.shard_batch(labeled, mesh), step_lib.shard_batch(unlabeled, mesh)
  t = time.perf_counter()
  compiled = jitted.lower(state, labeled, unlabeled).compile()
  compile_s = time.perf_counter() - t
  holder = {'state': state}

  def step():
    holder['state'], metrics = compiled(holder['state'], labeled, unlabeled)
    loss = float(metrics['loss'])  # also waits for the step
    if not np.isfinite(loss):
      raise FloatingPointError(f'{config.experiment}: non-finite loss {loss}')
    return loss

  return step, params, compile_s


def torch_step(step: str, args, num_classes: int):
  if step in ('mt128', 'mt256'):
    return ref.mean_teacher_step(num_classes, args.sizes[step], args.labeled, args.unlabeled)
  if step == 'vnet':
    return ref.supervised_3d_step(num_classes, args.crop, args.volumes)
  return ref.dualstream_step(num_classes, args.crop, args.volumes, args.volumes)


def bench_step(step: str, args) -> dict:
  calls, info = {}, {}
  for impl in args.conv_impl:
    config = jax_config(step, args, impl)
    name = f'jax[{impl}]' if impl else 'jax'
    print(f'{step}: compiling {name}...', file=sys.stderr, flush=True)
    calls[name], params, compile_s = jax_step(config)
    info[name] = {'params': params, 'compile_s': compile_s}
  torch_fn, nets = torch_step(step, args, config.num_classes)
  calls['pytorch'] = torch_fn
  torch_params = sum(ref.count_parameters(n) for n in nets.values())
  info['pytorch'] = {'params': torch_params}
  jax_params = {v['params'] for k, v in info.items() if k != 'pytorch'}
  if jax_params != {torch_params}:
    raise SystemExit(f'error: {step}: PyTorch network has {torch_params} parameters, '
                     f'JAX {sorted(jax_params)}: the two are not the same network')
  print(f'{step}: timing {", ".join(calls)}...', file=sys.stderr, flush=True)
  medians = alternate(calls, args.warmup, args.repeats)
  if step in ('mt128', 'mt256'):
    s = args.sizes[step]
    shape = f'{s}x{s}, {args.labeled}+{args.unlabeled}'
  else:
    volumes = f'{args.volumes}' if step == 'vnet' else f'{args.volumes}+{args.volumes}'
    shape = f"{'x'.join(map(str, args.crop))}, {volumes}"
  return {'step': step, 'shape': shape, 'params': torch_params, 'median_ms': medians,
          'info': info, 'overrides': list(args.set)}


# ---------------------------------------------------------------------------------------------
# Per-layer convolution table.


def unet_layers(size: int, batch: int, channels=(16, 32, 64, 128, 256), num_classes=4):
  """{(kind, cin, cout, kernel, stride, spatial, batch): count} of the SSL4MIS U-Net."""
  layers = {}

  def add(cin, cout, k, s):
    key = ('conv', cin, cout, k, 1, (s, s), batch)
    layers[key] = layers.get(key, 0) + 1

  for level, c in enumerate(channels):
    s = size // 2 ** level
    add(1 if level == 0 else channels[level - 1], c, 3, s)
    add(c, c, 3, s)
  for level in reversed(range(len(channels) - 1)):
    s = size // 2 ** level
    add(channels[level + 1], channels[level], 1, s // 2)
    add(2 * channels[level], channels[level], 3, s)
    add(channels[level], channels[level], 3, s)
  add(channels[0], num_classes, 3, size)
  return layers


def vnet_layers(crop, batch: int, f: int = 16, num_classes: int = 2):
  layers = {}

  def add(kind, cin, cout, k, stride, level):
    spatial = tuple(d // 2 ** level for d in crop)
    key = (kind, cin, cout, k, stride, spatial, batch)
    layers[key] = layers.get(key, 0) + 1

  for level, n in enumerate((1, 2, 3, 3, 3)):
    c = f * 2 ** level
    if level:
      add('conv', c // 2, c, 2, 2, level - 1)
    for i in range(n):
      add('conv', 1 if level == 0 and i == 0 else c, c, 3, 1, level)
  for level, n in zip((3, 2, 1, 0), (3, 3, 2, 1)):
    c = f * 2 ** level
    add('convT', 2 * c, c, 2, 2, level + 1)
    for _ in range(n):
      add('conv', c, c, 3, 1, level)
  add('conv', f, num_classes, 1, 1, 0)
  return layers


def jax_layer_fns(kind, cin, cout, k, stride, spatial, batch, impl):
  """Jitted (forward, input-gradient, weight-gradient) of one layer and their arguments."""
  nd = len(spatial)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, *spatial, cin), dtype=np.float32))
  w = jnp.asarray(rng.standard_normal((k,) * nd + (cin, cout), dtype=np.float32) * 0.1)
  conv = project_conv(kind, impl, (stride,) * nd)
  y = jax.eval_shape(conv, x, w)
  g = jnp.ones(y.shape, y.dtype)
  fwd = jax.jit(conv)
  dx = jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
  dw = jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])
  return (fwd, (x, w)), (dx, (x, w, g)), (dw, (x, w, g))


def project_conv(kind, impl, strides):
  """The models' convolution (x, kernel) -> y as `model.conv_impl=impl` computes it (impl None:
  the config's default); XLA's own when this checkout has no jaxseg.models.layers."""
  padding = 'SAME' if set(strides) == {1} else 'VALID'
  try:
    from jaxseg.models import layers
  except ImportError:
    if impl not in (None, 'xla'):
      raise SystemExit(f'error: --conv-impl {impl}: this checkout has no jaxseg.models.layers')
    spec = 'N' + 'DHW'[3 - len(strides):] + 'C'
    dims = (spec, spec[1:-1] + 'IO', spec)
    if kind == 'convT':
      return lambda x, w: jax.lax.conv_transpose(x, w, strides, 'VALID', dimension_numbers=dims)
    return lambda x, w: jax.lax.conv_general_dilated(x, w, strides, padding,
                                                     dimension_numbers=dims)
  impl = impl or config_lib.base_config().model.get('conv_impl', 'xla')
  if kind == 'convT':
    return lambda x, w: layers.conv_transpose(x, w, strides, 'VALID', impl)
  return lambda x, w: layers.conv(x, w, strides, padding, impl)


def torch_layer_fns(kind, cin, cout, k, stride, spatial, batch):
  nd = len(spatial)
  g = torch.Generator().manual_seed(0)
  x = torch.randn(batch, cin, *spatial, generator=g)
  if kind == 'convT':
    w = torch.randn(cin, cout, *(k,) * nd, generator=g) * 0.1
    op = F.conv_transpose2d if nd == 2 else F.conv_transpose3d
    conv = lambda x, w: op(x, w, stride=stride)
  else:
    w = torch.randn(cout, cin, *(k,) * nd, generator=g) * 0.1
    op = F.conv2d if nd == 2 else F.conv3d
    conv = lambda x, w: op(x, w, stride=stride, padding=(k // 2 if stride == 1 else 0))
  with torch.no_grad():
    grad_out = torch.ones_like(conv(x, w))
  xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)

  def fwd():
    with torch.no_grad():
      conv(x, w)

  # autograd needs the forward's graph, so PyTorch's gradient times include a forward; XLA
  # drops the unused forward from the jitted vjp (a convolution's vjp needs no primal output).
  dx = lambda: torch.autograd.grad(conv(xr, w), xr, grad_out)
  dw = lambda: torch.autograd.grad(conv(x, wr), wr, grad_out)
  return fwd, dx, dw


def bench_layers(args) -> list[dict]:
  specs = [('U-Net', unet_layers(args.unet_layer_size, args.labeled + args.unlabeled)),
           ('V-Net', vnet_layers(args.crop, args.volumes))]
  rows = []
  for net, layers in specs:
    for key, count in layers.items():
      kind, cin, cout, k, stride, spatial, batch = key
      print(f'layers: {net} {kind} {cin}->{cout} k{k} s{stride} {spatial}', file=sys.stderr,
            flush=True)
      calls = {}
      for impl in args.conv_impl:
        name = f'jax[{impl}]' if impl else 'jax'
        for part, (fn, fn_args) in zip(('fwd', 'dx', 'dw'),
                                       jax_layer_fns(*key, impl)):
          calls[f'{name} {part}'] = (lambda fn=fn, a=fn_args: jax.block_until_ready(fn(*a)))
      for part, fn in zip(('fwd', 'dx', 'dw'), torch_layer_fns(*key)):
        calls[f'pytorch {part}'] = fn
      rows.append({'net': net, 'kind': kind, 'cin': cin, 'cout': cout, 'kernel': k,
                   'stride': stride, 'spatial': list(spatial), 'batch': batch, 'count': count,
                   'median_ms': alternate(calls, 1, args.layer_repeats)})
  return rows


# ---------------------------------------------------------------------------------------------
# Output.


def step_table(results) -> str:
  variants = [k for k in results[0]['median_ms'] if k != 'pytorch']
  head = ' | '.join(f'{v} ms' for v in variants)
  ratios = ' | '.join(f'{v} / pytorch' for v in variants)
  lines = [f'| step | shape | params | pytorch ms | {head} | {ratios} |',
           '|---|---|---:|---:|' + '---:|' * (2 * len(variants))]
  for r in results:
    m = r['median_ms']
    lines.append(f"| {r['step']} | {r['shape']} | {r['params'] / 1e6:.2f}M | {m['pytorch']:.0f} | "
                 + ' | '.join(f'{m[v]:.0f}' for v in variants) + ' | '
                 + ' | '.join(f"{m[v] / m['pytorch']:.2f}" for v in variants) + ' |')
  return '\n'.join(lines)


def layer_table(rows) -> str:
  variants = sorted({k.split(' ')[0] for k in rows[0]['median_ms']}, key=lambda v: v == 'pytorch')
  cols = [f'{v} {p}' for v in variants for p in ('fwd', 'dx', 'dw')]
  lines = ['| net | layer | input | count | ' + ' | '.join(cols) + ' |',
           '|---|---|---|---:|' + '---:|' * len(cols)]
  totals = {}
  for r in rows:
    layer = f"{r['kind']} {r['cin']}->{r['cout']} k{r['kernel']}" + (
        f" s{r['stride']}" if r['stride'] > 1 else '')
    shape = f"{r['batch']}x{'x'.join(map(str, r['spatial']))}"
    lines.append(f"| {r['net']} | {layer} | {shape} | {r['count']} | "
                 + ' | '.join(f"{r['median_ms'][c]:.1f}" for c in cols) + ' |')
    net_totals = totals.setdefault(r['net'], dict.fromkeys(cols, 0.0))
    for c in cols:
      net_totals[c] += r['count'] * r['median_ms'][c]
  for net, t in totals.items():
    lines.append(f'| {net} | **sum x count** | | | ' + ' | '.join(f'{t[c]:.0f}' for c in cols)
                 + ' |')
  return '\n'.join(lines)


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  machine = {**machine_info(1), 'torch': torch.__version__,
             'torch_threads': torch.get_num_threads()}
  results, layers = [], []
  try:
    for step in args.steps:
      if step == 'layers':
        layers = bench_layers(args)
      else:
        results.append(bench_step(step, args))
  except JaxsegError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f"machine: {machine['cpu']}, {machine['cpu_count']} cores ({machine['platform']}); "
        f"jax {machine['jax']}, torch {machine['torch']} ({machine['torch_threads']} threads); "
        f'median of {args.repeats} steps after {args.warmup} warm-up, alternating'
        + (f"; --set {' '.join(args.set)}" if args.set else ''))
  if results:
    print('\n' + step_table(results))
  if layers:
    print(f'\nPer-layer convolution time (ms, median of {args.layer_repeats}; dx: gradient '
          'w.r.t. the input only, dw: w.r.t. the weight only; PyTorch\'s dx and dw include a '
          'forward):\n')
    print(layer_table(layers))
  path = args.json
  if not path:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%dT%H%M%S')
    path = os.path.join(RESULTS_DIR, f'vs_pytorch-{stamp}.json')
  with open(path, 'w') as f:
    json.dump({'machine': machine, 'args': vars(args),
               'steps': results, 'layers': layers}, f, indent=2, default=list)
  print(f'\nwrote {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
