"""Memory and time of patch contrast (PLGCL) against dense pixel InfoNCE on the same batch.

  python benchmarks/contrast_memory.py                 # B=16 images of 256x256, D=128
  python benchmarks/contrast_memory.py --max-run-gib 1 --out benchmarks/results

For a batch of B images of S x S with D-dimensional embeddings:
  - dense pixel InfoNCE (`losses/pixel_contrast.pixel_infonce_dense`, SupCon form) over all pixels
    kept by a stride s (s = 1: every pixel, N = B S^2), value and gradient w.r.t. the embeddings;
  - PLGCL (`losses/plgcl.plgcl_from_patches`, paper defaults) with P x P patches, value and
    gradient w.r.t. the patch embeddings (the encoder forward that makes them is not included).
Memory is XLA's compiled memory analysis (temp = scratch the program needs beyond its inputs and
outputs), available without running; time is the median wall time of the compiled function,
measured only where the temp memory is below --max-run-gib. Writes a Markdown table, a JSON
record and a PNG plot of temp memory against the number of contrasted items.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from common import MIB, machine_info, median, memory_stats, time_compiled, total_flops  # noqa: E402
from jaxseg.losses import plgcl, pixel_contrast  # noqa: E402


def dense_case(batch, size, dim, stride, num_classes):
  n = batch * (size // stride) ** 2
  emb = jax.ShapeDtypeStruct((n, dim), jnp.float32)
  labels = jax.ShapeDtypeStruct((n,), jnp.int32)

  def loss(emb_ND, labels_N):
    return pixel_contrast.pixel_infonce_dense(emb_ND, labels_N, labels_N > 0, 0.1, 'supcon')

  def make_args():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(n, dim)).astype(np.float32)
    return (jnp.asarray(e / np.linalg.norm(e, axis=1, keepdims=True)),
            jnp.asarray(rng.integers(0, num_classes, n, dtype=np.int32)))

  return f'dense pixel, stride {stride}', n, jax.jit(jax.value_and_grad(loss)), (emb, labels), make_args


def plgcl_case(batch, size, dim, patch, num_classes):
  p = (size // patch) ** 2
  image = jax.ShapeDtypeStruct((batch, size, size), jnp.float32)
  conf = jax.ShapeDtypeStruct((batch, size, size, num_classes), jnp.float32)
  emb = jax.ShapeDtypeStruct((batch, p, dim), jnp.float32)

  def loss(emb_BPD, image_BHW, conf_BHWK):
    return plgcl.plgcl_from_patches(image_BHW, conf_BHWK, emb_BPD, patch=patch)[0]

  def make_args():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(batch, p, dim)).astype(np.float32)
    logits = rng.normal(size=(batch, size, size, num_classes)).astype(np.float32)
    return (jnp.asarray(e / np.linalg.norm(e, axis=-1, keepdims=True)),
            jnp.asarray(rng.random((batch, size, size), dtype=np.float32)),
            jax.nn.softmax(jnp.asarray(logits), -1))

  return (f'PLGCL, {patch}x{patch} patches', batch * p,
          jax.jit(jax.value_and_grad(loss)), (emb, image, conf), make_args)


def measure(name, items, fn, shapes, make_args, args):
  compiled = fn.lower(*shapes).compile()
  mem = memory_stats(compiled)
  row = {'case': name, 'items': items, **mem, 'gflops': None, 'median_ms': None}
  flops = total_flops(compiled.cost_analysis())
  row['gflops'] = flops / 1e9 if flops is not None else None
  temp = mem['temp_size_in_bytes']
  if temp is not None and temp < args.max_run_gib * 1024 * MIB:
    row['median_ms'] = 1e3 * median(time_compiled(compiled, make_args(), args.repeats))
  print(f'  {name}: {items} items, temp {fmt_bytes(temp)}', flush=True)
  return row


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
           f'batch {args.batch} x {args.size}x{args.size}, D={args.dim}, K={args.classes}; '
           'value and gradient w.r.t. the embeddings', '',
           '| case | contrasted items | temp memory | GFLOPs | median ms |', '|---|---:|---:|---:|---:|']
  for r in rows:
    ms = f'{r["median_ms"]:.1f}' if r['median_ms'] is not None else '(not run)'
    gf = f'{r["gflops"]:.2f}' if r['gflops'] is not None else 'n/a'
    lines.append(f'| {r["case"]} | {r["items"]:,} | {fmt_bytes(r["temp_size_in_bytes"])} | {gf} | {ms} |')
  return '\n'.join(lines)


def plot(rows, path):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for kind, marker in (('dense pixel', 'o'), ('PLGCL', 's')):
    pts = [(r['items'], r['temp_size_in_bytes'] / MIB) for r in rows
           if r['case'].startswith(kind) and r['temp_size_in_bytes']]
    if pts:
      ax.loglog(*zip(*pts), marker=marker, label=kind)
  ax.set_xlabel('contrasted items (pixels or patches)')
  ax.set_ylabel('XLA temp memory (MiB)')
  ax.grid(True, which='both', alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--size', type=int, default=256)
  p.add_argument('--dim', type=int, default=128)
  p.add_argument('--classes', type=int, default=4)
  p.add_argument('--strides', default='16,8,4,2,1')
  p.add_argument('--patches', default='64,32,16,8')
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--max-run-gib', type=float, default=2.0, help='time only below this temp')
  p.add_argument('--out', default=os.path.join(REPO_ROOT, 'benchmarks', 'results'))
  args = p.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  rows = []
  for stride in map(int, args.strides.split(',')):
    rows.append(measure(*dense_case(args.batch, args.size, args.dim, stride, args.classes), args))
  for patch in map(int, args.patches.split(',')):
    rows.append(measure(*plgcl_case(args.batch, args.size, args.dim, patch, args.classes), args))
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
