"""Memory and time of pixel contrast (dense, stride, block, tiled exact, LCLPL) and patch contrast
(PLGCL) against the number of pixels in the batch.

  python benchmarks/contrast_memory.py                 # B=16 images of 16..256 px, D=64
  python benchmarks/contrast_memory.py --quick         # < 2 minutes on a laptop CPU
  python benchmarks/contrast_memory.py --sizes 64,256 --cases dense,tiled --out /tmp/r

For a batch of B images of S x S (N = B S^2 pixels) with D-dimensional embeddings, value and
gradient w.r.t. the embeddings of:
  - dense       `pixel_infonce_dense` over all N pixels (SupCon form), the N x N reference;
  - stride s    `stride_select` (every s-th pixel in both axes), then the dense loss (Hu §2.3);
  - block h     `block_contrast`, h x h blocks, each block position over the batch (Hu's code),
                all blocks at once (vmap) and --block-step blocks at a time (lax.map);
  - tiled       `pixel_infonce_tiled`, exact over all N pixels, both forms, --tile blocks;
  - LCLPL       `lclpl_local_contrast` with a twin view (3 anchors per class and image);
  - PLGCL       `plgcl.plgcl_from_patches`, P x P patches, paper defaults (the encoder forward
                that embeds the patches is not included).
Memory is XLA's compiled memory analysis (temp = scratch beyond inputs and outputs), available
without running: 'compiled' in the table; a case that does not even compile is extrapolated from
smaller sizes as c N^2 ('estimated'). Time is the median wall time, measured only where temp is
below --max-run-gib and the FLOPs below --max-run-gflops ('run'; else 'compile-only'). FLOPs are
XLA's cost analysis, except for loops, whose body XLA counts once: for the tiled loss they are
the matmuls' 2 N^2 D per pass (5 passes for supcon, 6 for hu; 'analytic'), for blocks taken a few
at a time 'n/a'. Writes a Markdown table,
a JSON record and a PNG plot (temp memory and time against pixels) to --out.
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

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from common import MIB, machine_info, median, memory_stats, total_flops  # noqa: E402
from jaxseg.losses import plgcl, pixel_contrast  # noqa: E402

CASES = ('dense', 'stride', 'block', 'tiled', 'lclpl', 'plgcl')
LOOP = 'loop'  # FLOPs unknown: XLA's cost analysis counts a loop body once
TAU = 0.1


def _unit(rng, shape):
  e = rng.normal(size=shape).astype(np.float32)
  return jnp.asarray(e / np.linalg.norm(e, axis=-1, keepdims=True))


def _pixel_inputs(batch, size, dim, num_classes):
  shapes = (jax.ShapeDtypeStruct((batch, size, size, dim), jnp.float32),
            jax.ShapeDtypeStruct((batch, size, size), jnp.int32))

  def make_args():
    rng = np.random.default_rng(0)
    return (_unit(rng, (batch, size, size, dim)),
            jnp.asarray(rng.integers(0, num_classes, (batch, size, size), dtype=np.int32)))

  return shapes, make_args


def pixel_cases(batch, size, dim, num_classes, args):
  """(case, contrasted items, loss(emb_BHWD, labels_BHW), GFLOPs: analytic, None (XLA's) or
  LOOP (unknown)) per case."""
  n = batch * size * size

  def flat(fn):
    def loss(emb_BHWD, labels_BHW):
      emb_ND, labels_N = emb_BHWD.reshape(-1, dim), labels_BHW.reshape(-1)
      return fn(emb_ND, labels_N)
    return loss

  cases = []
  if 'dense' in args.cases:
    cases.append(('dense', n, flat(lambda e, l: pixel_contrast.pixel_infonce_dense(
        e, l, l > 0, TAU, 'supcon')), None))
  if 'stride' in args.cases and size >= args.stride:
    s = args.stride

    def strided(emb_BHWD, labels_BHW):
      e, l = pixel_contrast.stride_select(emb_BHWD, labels_BHW, s)
      return pixel_contrast.pixel_infonce_dense(e, l, l > 0, TAU, 'supcon')
    cases.append((f'stride {s}', batch * (size // s) ** 2, strided, None))
  if 'block' in args.cases and size >= args.block:
    for step in (None, args.block_step):
      name = f'block {args.block}' + (f', {step} per step' if step else ', all at once')
      cases.append((name, batch * (size // args.block * args.block) ** 2,
                    lambda e, l, step=step: pixel_contrast.block_contrast(
                        e, l, block=args.block, tau=TAU, form='supcon', blocks_per_step=step),
                    LOOP if step else None))
  if 'tiled' in args.cases:
    n_pad = -(-n // min(args.tile, n)) * min(args.tile, n)
    for form, passes in (('supcon', 5), ('hu', 6)):
      cases.append((f'tiled {form}', n, flat(
          lambda e, l, form=form: pixel_contrast.pixel_infonce_tiled(
              e, l, l > 0, TAU, form, block_size=args.tile)),
          passes * 2.0 * n_pad ** 2 * dim / 1e9))
  if 'lclpl' in args.cases:
    rng = jax.random.key(0)

    def lclpl(emb_BHWD, labels_BHW):
      # The twin is another forward's output in training, an input buffer like this one.
      return pixel_contrast.lclpl_local_contrast(rng, emb_BHWD, labels_BHW,
                                                 num_classes=num_classes, tau=TAU,
                                                 twin_emb_BHWD=emb_BHWD)
    cases.append(('LCLPL (3 anchors/class, twin)', 2 * batch * 3 * (num_classes - 1), lclpl,
                  None))
  return cases


def plgcl_case(batch, size, dim, patch, num_classes):
  p = (size // patch) ** 2
  shapes = (jax.ShapeDtypeStruct((batch, p, dim), jnp.float32),
            jax.ShapeDtypeStruct((batch, size, size), jnp.float32),
            jax.ShapeDtypeStruct((batch, size, size, num_classes), jnp.float32))

  def loss(emb_BPD, image_BHW, conf_BHWK):
    return plgcl.plgcl_from_patches(image_BHW, conf_BHWK, emb_BPD, patch=patch)[0]

  def make_args():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(batch, size, size, num_classes)).astype(np.float32)
    return (_unit(rng, (batch, p, dim)),
            jnp.asarray(rng.random((batch, size, size), dtype=np.float32)),
            jax.nn.softmax(jnp.asarray(logits), -1))

  return f'PLGCL, {patch}x{patch} patches', batch * p, loss, shapes, make_args


def _time(compiled, call_args, repeats):
  """Median seconds per call after a warm-up call; a warm-up over 20 s is the measurement (a
  minute-long call has no start-up cost worth a second call), over 5 s one more call."""
  start = time.perf_counter()
  jax.block_until_ready(compiled(*call_args))
  first = time.perf_counter() - start
  if first > 20.0:
    return first
  if first > 5.0:
    repeats = 1
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*call_args))
    times.append(time.perf_counter() - start)
  return median(times)


def measure(name, pixels, items, loss, shapes, make_args, analytic_gflops, args):
  row = {'case': name, 'pixels': pixels, 'items': items, 'memory': 'compiled', 'gflops': None,
         'flops_source': 'XLA', 'median_ms': None, 'timing': 'compile-only'}
  try:
    compiled = jax.jit(jax.value_and_grad(loss)).lower(*shapes).compile()
  except Exception as e:  # noqa: BLE001 -- XLA refuses some programs outright; estimate those
    row.update(temp_size_in_bytes=None, memory='compile failed', error=str(e).split('\n')[0])
    print(f'  {name}: {pixels:,} pixels, compile failed: {row["error"][:80]}', flush=True)
    return row
  row.update(memory_stats(compiled))
  if analytic_gflops == LOOP:
    row['flops_source'] = 'n/a (loop)'
  elif analytic_gflops is not None:
    row.update(gflops=analytic_gflops, flops_source='analytic')
  else:
    flops = total_flops(compiled.cost_analysis())
    row['gflops'] = flops / 1e9 if flops is not None else None
  temp = row['temp_size_in_bytes']
  if (temp is not None and temp < args.max_run_gib * 1024 * MIB
      and (row['gflops'] is None or row['gflops'] < args.max_run_gflops)):
    row['median_ms'] = 1e3 * _time(compiled, make_args(), args.repeats)
    row['timing'] = 'run'
  ms = f', {row["median_ms"]:.1f} ms' if row['median_ms'] is not None else ''
  print(f'  {name}: {pixels:,} pixels, temp {fmt_bytes(temp)}{ms}', flush=True)
  return row


def estimate_missing(rows):
  """Fills temp memory of cases that failed to compile from c N^2, c fitted on the largest
  compiled size of the same case (dense pixel contrast is quadratic in its items)."""
  for r in rows:
    if r['temp_size_in_bytes'] is not None:
      continue
    known = [k for k in rows if k['case'] == r['case'] and k['temp_size_in_bytes']]
    if known:
      k = max(known, key=lambda k: k['items'])
      r['temp_size_in_bytes'] = int(k['temp_size_in_bytes'] * (r['items'] / k['items']) ** 2)
      r['memory'] = 'estimated'


def fmt_bytes(n):
  if n is None:
    return 'n/a'
  for unit, scale in (('TiB', 2 ** 40), ('GiB', 2 ** 30), ('MiB', 2 ** 20), ('KiB', 2 ** 10)):
    if n >= scale:
      return f'{n / scale:.2f} {unit}'
  return f'{n} B'


def table(machine, args, rows) -> str:
  lines = [f'machine: {machine["platform"]} ({machine["device_kind"]}), CPU {machine["cpu"]}, '
           f'{machine["cpu_count"]} cores; jax {machine["jax"]}',
           f'batch {args.batch} x SxS, D={args.dim}, K={args.classes}, tau={TAU}; value and '
           'gradient w.r.t. the embeddings; memory = XLA temp (compiled: memory analysis without '
           'running; estimated: c N^2 from a smaller compiled size)', '',
           '| case | pixels N | contrasted items | temp memory | memory | GFLOPs | median ms |',
           '|---|---:|---:|---:|---|---:|---:|']
  for r in rows:
    ms = f'{r["median_ms"]:.1f}' if r['median_ms'] is not None else '(compile-only)'
    gf = 'n/a'
    if r['gflops'] is not None:
      gf = f'{r["gflops"]:,.1f}' + (' (analytic)' if r['flops_source'] == 'analytic' else '')
    lines.append(f'| {r["case"]} | {r["pixels"]:,} | {r["items"]:,} | '
                 f'{fmt_bytes(r["temp_size_in_bytes"])} | {r["memory"]} | {gf} | {ms} |')
  return '\n'.join(lines)


def plot(rows, path):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(12, 4.5))
  cases = list(dict.fromkeys(r['case'] for r in rows))
  for i, case in enumerate(cases):
    mine = sorted((r for r in rows if r['case'] == case), key=lambda r: r['pixels'])
    color = f'C{i % 10}'
    mem = [(r['pixels'], r['temp_size_in_bytes'] / MIB) for r in mine if r['temp_size_in_bytes']]
    if mem:
      ax_mem.loglog(*zip(*mem), marker='o', color=color, label=case)
    est = [(r['pixels'], r['temp_size_in_bytes'] / MIB) for r in mine if r['memory'] == 'estimated']
    if est:
      ax_mem.loglog(*zip(*est), marker='x', linestyle='none', color=color, markersize=10)
    run = [(r['pixels'], r['median_ms']) for r in mine if r['median_ms'] is not None]
    if run:
      ax_time.loglog(*zip(*run), marker='o', color=color, label=case)
  ax_mem.axhline(1024, color='gray', linestyle='--', linewidth=1)
  ax_mem.text(ax_mem.get_xlim()[0], 1024, ' 1 GiB', va='bottom', color='gray')
  ax_mem.set_ylabel('XLA temp memory, value + grad (MiB)')
  ax_time.set_ylabel('median wall time (ms), runs only')
  for ax in (ax_mem, ax_time):
    ax.set_xlabel('pixels in the batch N = B S^2')
    ax.grid(True, which='both', alpha=0.3)
  ax_mem.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--sizes', default='16,32,64,128,256', help='image sides S')
  p.add_argument('--dim', type=int, default=64)
  p.add_argument('--classes', type=int, default=4)
  p.add_argument('--cases', default=','.join(CASES), help=f'subset of {",".join(CASES)}')
  p.add_argument('--stride', type=int, default=4)
  p.add_argument('--block', type=int, default=16)
  p.add_argument('--block-step', type=int, default=4, help='blocks per lax.map step')
  p.add_argument('--tile', type=int, default=1024, help='tiled loss block size')
  p.add_argument('--patch', type=int, default=16, help='PLGCL patch side')
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--max-run-gib', type=float, default=1.0, help='time only below this temp')
  p.add_argument('--max-run-gflops', type=float, default=4000.0, help='time only below this')
  p.add_argument('--quick', action='store_true',
                 help='sizes 16,32,64, timing below 100 GFLOPs, one repeat')
  p.add_argument('--out', default=os.path.join(REPO_ROOT, 'benchmarks', 'results'))
  args = p.parse_args(argv)
  if args.quick:
    args.sizes, args.max_run_gflops, args.repeats = '16,32,64', 100.0, 1
  args.cases = [c for c in args.cases.split(',') if c]
  unknown = set(args.cases) - set(CASES)
  if unknown:
    p.error(f'unknown cases {sorted(unknown)}; known: {CASES}')
  os.makedirs(args.out, exist_ok=True)
  rows = []
  for size in map(int, args.sizes.split(',')):
    pixels = args.batch * size * size
    shapes, make_args = _pixel_inputs(args.batch, size, args.dim, args.classes)
    for name, items, loss, gflops in pixel_cases(args.batch, size, args.dim, args.classes, args):
      rows.append(measure(name, pixels, items, loss, shapes, make_args, gflops, args))
    if 'plgcl' in args.cases and size >= args.patch:
      name, items, loss, plgcl_shapes, plgcl_args = plgcl_case(args.batch, size, args.dim,
                                                               args.patch, args.classes)
      rows.append(measure(name, pixels, items, loss, plgcl_shapes, plgcl_args, None, args))
  estimate_missing(rows)
  machine = machine_info(1)
  text = table(machine, args, rows)
  print(text)
  with open(os.path.join(args.out, 'contrast_memory.md'), 'w') as f:
    f.write(text + '\n')
  with open(os.path.join(args.out, 'contrast_memory.json'), 'w') as f:
    json.dump({'machine': machine, 'args': vars(args), 'rows': rows}, f, indent=2)
  plot(rows, os.path.join(args.out, 'contrast_memory.png'))
  return 0


if __name__ == '__main__':
  sys.exit(main())
