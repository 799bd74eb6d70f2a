"""The train state and the one train step every method shares.

`train_step(state, labeled, unlabeled) -> (state, metrics)` is jit-compiled once under a
`jax.sharding` mesh: batches are split over the 'data' axis, the state is replicated, and the
state is donated so its buffers are reused. Batch-norm statistics are computed by XLA over the
global batch, so the result does not depend on the number of devices.

Mixed precision (`model.dtype='bfloat16'`): every model call inside the step gets its parameters
and input cast to the compute dtype and its outputs cast back to float32. Parameters, gradients,
optimizer state, batch-norm statistics (flax reduces them in float32), losses and metrics stay
float32; the cast's gradient carries the bf16 gradients back to the float32 parameters. This is
what flax's per-layer `dtype` field does, in one place for every network and head.

The loss terms are the methods' (jaxseg/methods): the step asks `streams(config)` which batches
to read and `teacher_of(terms)` whether an EMA teacher is kept; a run without a teacher term
carries none in its state. Batches reach the step as the pipeline's dicts or as the typed
`Labeled` / `Unlabeled` (jaxseg/methods/term.py) and are typed at its entry.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxseg import methods
from jaxseg.errors import ConfigError
from jaxseg.methods.term import LossTerm, StepOutputs, Teacher, as_labeled, as_unlabeled
from jaxseg.training import schedules


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  # The EMA teacher of a term that needs one (mean_teacher), else None: its parameters and its
  # own running statistics (SSL4MIS keeps them so), updated inside the step.
  teacher_params: Any = None
  teacher_batch_stats: Any = None


class Streams(NamedTuple):
  """Which batches a run reads: the data pipeline builds only these streams."""
  labeled: bool
  unlabeled: bool


def streams(config, terms: list[LossTerm] | None = None) -> Streams:
  """The streams the terms of `config.losses` (or `terms`) read."""
  terms = methods.resolve(tuple(config.losses)) if terms is None else terms
  return Streams(labeled=any(t.needs_labeled for t in terms),
                 unlabeled=any(t.needs_unlabeled for t in terms))


def teacher_of(terms: list[LossTerm]) -> Teacher | None:
  """The EMA teacher the terms need, or None; one teacher per run."""
  teachers = {t.name: t.teacher for t in terms if t.teacher is not None}
  if len(teachers) > 1:
    raise ConfigError(f'losses: {", ".join(teachers)} each keep an EMA teacher; a run has one')
  return next(iter(teachers.values()), None)


def input_shape(config) -> tuple[int, ...]:
  """(1, *spatial, 1) of one network input: the 3D crop `data.crop_shape` (D, H, W) when set,
  else the 2D slice (image_size, image_size)."""
  crop = tuple(config.data.get('crop_shape', ()))
  if crop:
    return (1, *crop, 1)
  return (1, config.data.image_size, config.data.image_size, 1)


# Compute dtypes `model.dtype` may name. float16 is left out: without loss scaling its small
# gradients underflow to zero.
COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(config):
  """The activation dtype `model.dtype` names (float32 when the key is absent)."""
  name = config.model.get('dtype', 'float32')
  if name not in COMPUTE_DTYPES:
    raise ConfigError(f'model.dtype: unknown {name!r}; known: {", ".join(COMPUTE_DTYPES)}')
  return COMPUTE_DTYPES[name]


def cast_floats(tree, dtype):
  """`tree` with its floating-point leaves cast to `dtype` (integer and bool leaves kept)."""
  return jax.tree.map(
      lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def init_state(model: nn.Module, tx: optax.GradientTransformation, config,
               terms: list[LossTerm] | None = None) -> TrainState:
  """Step 0: fresh parameters, and a teacher (a copy of them) only if a term needs one."""
  shape = input_shape(config)
  terms = methods.resolve(tuple(config.losses)) if terms is None else terms
  with_teacher = teacher_of(terms) is not None

  # One compiled program: initializing op by op compiles every layer separately (tens of seconds).
  @jax.jit
  def init(init_rng, state_rng):
    variables = model.init(init_rng, jnp.zeros(shape, jnp.float32), train=False)
    params, batch_stats = variables['params'], variables.get('batch_stats', {})
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                       opt_state=tx.init(params), rng=state_rng)
    return with_new_teacher(state) if with_teacher else state

  # Parameters are drawn with the RBG generator: XLA compiles threefry-based initialization of a
  # U-Net in ~15 s on a CPU, RBG in ~3 s. The state's rng (dropout, noise) stays threefry, whose
  # draws do not depend on how the batch is sharded.
  init_rng = jax.random.key(config.seed, impl='rbg')
  return init(init_rng, jax.random.PRNGKey(config.seed))


def with_new_teacher(state: TrainState) -> TrainState:
  """`state` with its teacher a copy of the student. Separate buffers: the state is donated,
  and a buffer cannot be donated twice."""
  copy = lambda tree: jax.tree.map(jnp.copy, tree)
  return state.replace(teacher_params=copy(state.params),
                       teacher_batch_stats=copy(state.batch_stats))


def start_from(state: TrainState, variables: dict[str, Any],
               tx: optax.GradientTransformation) -> TrainState:
  """A fresh state (step 0, new optimizer) with another stage's parameters and statistics; its
  teacher, if it keeps one, starts as a copy of them."""
  new = state.replace(params=variables['params'], batch_stats=variables['batch_stats'],
                      opt_state=tx.init(variables['params']))
  return with_new_teacher(new) if state.teacher_params is not None else new


def _check_blocks(config, terms: list[LossTerm]) -> None:
  for term in terms:
    missing = sorted(set(term.blocks()) - set(config.keys()))
    if missing:
      raise ConfigError(f'losses: {term.name!r} reads config block(s) {", ".join(missing)}, which '
                        'this config lacks (build it with config.base_config(losses=...) or '
                        'add them with config.add_method_blocks)')


def _make_forward(model: nn.Module, config: ml_collections.ConfigDict, terms: list[LossTerm]):
  """The forward pass of one step, shared by the train step and `make_term_gradients` so that
  both see the same images, random numbers and batch statistics:
    teacher(state, labeled, unlabeled) -> (rngs, teacher outputs, teacher batch statistics)
    terms(params, state, labeled, unlabeled, rngs, teacher outputs)
        -> ((value of each term,), metrics, new batch statistics)"""
  _check_blocks(config, terms)
  needs = streams(config, terms)
  teacher = teacher_of(terms)
  dtype = compute_dtype(config)

  def apply_model(params, batch_stats, x, rng, method=None):
    """model.apply in train mode at the compute dtype; float32 outputs and batch statistics."""
    outputs, new_vars = model.apply(
        {'params': cast_floats(params, dtype), 'batch_stats': batch_stats}, x.astype(dtype),
        train=True, method=method, mutable=['batch_stats'], rngs={'dropout': rng})
    return cast_floats(outputs, jnp.float32), new_vars

  def teacher_forward(state: TrainState, labeled, unlabeled):
    rng = jax.random.fold_in(state.rng, state.step)
    rngs = jax.random.split(rng, 5)  # student, teacher, noise, term, extra passes
    teacher_out, teacher_batch_stats = None, state.teacher_batch_stats
    if teacher is not None:
      teacher_in = teacher.input_fn(unlabeled, rngs[2], config)
      # SSL4MIS leaves the teacher in train mode: batch statistics and dropout.
      teacher_out, teacher_vars = apply_model(state.teacher_params, state.teacher_batch_stats,
                                              teacher_in[..., None], rngs[1])
      teacher_out = jax.lax.stop_gradient(teacher_out)
      teacher_batch_stats = teacher_vars['batch_stats']
    return rngs, teacher_out, teacher_batch_stats

  def term_values(params, state: TrainState, labeled, unlabeled, rngs, teacher_out):
    student_rng, _, _, term_rng, extra_rng = rngs
    num_labeled = labeled.image.shape[0] if needs.labeled else 0
    # One forward over labeled + unlabeled, as SSL4MIS: batch norm sees both.
    images = jnp.concatenate(
        ([labeled.image] if needs.labeled else [])
        + ([unlabeled.image_strong] if needs.unlabeled else []), axis=0)
    outputs, new_vars = apply_model(params, state.batch_stats, images[..., None], student_rng)
    split = lambda tree, part: jax.tree.map(
        lambda x: x[:num_labeled] if part == 0 else x[num_labeled:], tree)

    def apply(x, method=None):
      return apply_model(params, state.batch_stats, x, extra_rng, method)[0]

    out = StepOutputs(
        labeled=labeled, unlabeled=unlabeled,
        student_labeled=split(outputs, 0) if needs.labeled else None,
        student_unlabeled=split(outputs, 1) if needs.unlabeled else None,
        teacher_unlabeled=teacher_out, step=state.step, apply=apply, rng=term_rng)
    values, metrics = [], {}
    for term in terms:
      value, term_metrics = term.fn(out, config)
      values.append(value)
      metrics.update(term_metrics)
    return tuple(values), metrics, new_vars['batch_stats']

  return teacher_forward, term_values


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict, terms: list[LossTerm] | None = None):
  """Returns the pure (not yet jitted) train step summing `terms` (default: the table's terms
  `config.losses` names)."""
  terms = methods.resolve(tuple(config.losses)) if terms is None else terms
  teacher = teacher_of(terms)
  teacher_forward, term_values = _make_forward(model, config, terms)

  def train_step(state: TrainState, labeled, unlabeled):
    labeled, unlabeled = as_labeled(labeled), as_unlabeled(unlabeled)
    rngs, teacher_out, teacher_batch_stats = teacher_forward(state, labeled, unlabeled)

    def loss_fn(params):
      values, metrics, batch_stats = term_values(params, state, labeled, unlabeled, rngs,
                                                 teacher_out)
      total = sum(values, jnp.zeros((), jnp.float32))
      metrics['loss'] = total
      return total, (metrics, batch_stats)

    grads, (metrics, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics['lr'] = schedules.learning_rate(config)(state.step)
    metrics['grad_norm'] = optax.tree.norm(grads)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    if teacher is not None:
      alpha = teacher.decay_fn(state.step, config)
      metrics['ema_decay'] = alpha
      new_state = new_state.replace(
          teacher_params=optax.incremental_update(params, state.teacher_params, 1.0 - alpha),
          teacher_batch_stats=teacher_batch_stats)
    return new_state, metrics

  return train_step


def make_term_gradients(model: nn.Module, config: ml_collections.ConfigDict,
                        terms: list[LossTerm] | None = None):
  """Returns the pure function `(state, labeled, unlabeled) -> {term name: gradient}`: each
  term's own (weighted) gradient with respect to the parameters at the forward pass the train
  step at `state` would make (the same images, random numbers and batch statistics). Their sum
  is the train step's gradient. A diagnostic (which term drives the update), not for training."""
  terms = methods.resolve(tuple(config.losses)) if terms is None else terms
  teacher_forward, term_values = _make_forward(model, config, terms)

  def term_gradients(state: TrainState, labeled, unlabeled):
    labeled, unlabeled = as_labeled(labeled), as_unlabeled(unlabeled)
    rngs, teacher_out, _ = teacher_forward(state, labeled, unlabeled)
    values = lambda params: jnp.stack(
        term_values(params, state, labeled, unlabeled, rngs, teacher_out)[0])
    # One forward, one backward per term.
    jacobian = jax.jacrev(values)(state.params)
    return {term.name: jax.tree.map(lambda g, i=i: g[i], jacobian)
            for i, term in enumerate(terms)}

  return term_gradients


def abstract_state(model: nn.Module, tx: optax.GradientTransformation, config) -> TrainState:
  """The state's shapes and dtypes on one device: a restore target that costs a trace, not the
  seconds of compiling and running `init_state`."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                      jax.eval_shape(lambda: init_state(model, tx, config)))


# ---------------------------------------------------------------------------------------------
# Sharding.


def make_mesh(num_devices: int = 0) -> Mesh:
  available = jax.device_count()
  n = num_devices or available
  if n > available:
    raise ConfigError(f'mesh.num_devices: asked for {n} devices, {available} available')
  if jax.process_count() > 1 and n != available:
    raise ConfigError(f'mesh.num_devices={n}: with {jax.process_count()} processes the mesh '
                      f'spans all {available} devices of all processes (leave it at 0)')
  # Auto axes: XLA propagates the batch sharding through the model (explicit-sharding mode would
  # make every op, e.g. dropout's random mask, state its sharding).
  return jax.make_mesh((n,), ('data',), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:n])


def check_batch_divisible(config, mesh: Mesh, with_unlabeled: bool,
                          with_labeled: bool = True) -> None:
  n = mesh.shape['data']
  sizes = {'data.labeled_batch': config.data.labeled_batch} if with_labeled else {}
  if with_unlabeled:
    sizes['data.unlabeled_batch'] = config.data.unlabeled_batch
  for key, size in sizes.items():
    if size % n:
      raise ConfigError(f'{key}={size} must be divisible by the {n} devices of the mesh '
                        '(or set mesh.num_devices)')


def jit_train_step(train_step, mesh: Mesh):
  # State replicated on every device; batches split along their first axis over 'data'.
  replicated = NamedSharding(mesh, P())
  batch = NamedSharding(mesh, P('data'))
  return jax.jit(train_step, in_shardings=(replicated, batch, batch),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def shard_batch(batch, mesh: Mesh):
  """Places a host batch (numpy) on the mesh, split over 'data'. With several processes `batch`
  is this process's rows of the global batch (`distributed.local_rows`), and the global batch is
  assembled from every process's part."""
  if batch is None:
    return None
  sharding = NamedSharding(mesh, P('data'))
  if jax.process_count() > 1:
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)
  return jax.tree.map(lambda x: jax.device_put(np.asarray(x), sharding), batch)


def replicate(tree, mesh: Mesh):
  return jax.device_put(tree, NamedSharding(mesh, P()))
