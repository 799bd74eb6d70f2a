"""The `dualstream` term (jaxseg/methods/dualstream.py) on fake two-subnet outputs: eq. 3 of its
parts, jit vs eager, pseudo-label choice, gradients and detach, config errors; the experiments'
paper protocol."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import config as config_lib, methods
from jaxseg.errors import ConfigError
from jaxseg.losses import dualstream as ds
from jaxseg.methods import dualstream as method
from jaxseg.methods.term import Labeled, StepOutputs, Unlabeled
from jaxseg.training import schedules

_SHAPE = (2, 4, 4, 4)  # B, D, H, W per stream
_K, _C = 2, 3


def _fake_arrays(seed=0):
  rng = np.random.default_rng(seed)
  labels = (rng.random(_SHAPE) < 0.3).astype(np.int32)
  arrays = {'label': labels}
  for part in ('labeled', 'unlabeled'):
    for s in 'ab':
      arrays[f'{part}_logits_{s}'] = rng.normal(size=_SHAPE + (_K,)).astype(np.float32) * 2
      arrays[f'{part}_features_{s}'] = rng.normal(size=_SHAPE + (_C,)).astype(np.float32)
  # Subnet A fits the labels: its supervised loss is the lower one.
  arrays['labeled_logits_a'] = (4.0 * jax.nn.one_hot(labels, _K) - 2).astype(np.float32)
  return {k: jnp.asarray(v) for k, v in arrays.items()}


def _outputs(arrays, step=10):
  def model_out(part):
    out = {f'{kind}_{s}': arrays[f'{part}_{kind}_{s}'] for kind in ('logits', 'features')
           for s in 'ab'}
    out['logits'] = out['logits_a']  # not read by the term
    return out
  zeros = jnp.zeros(_SHAPE)
  return StepOutputs(
      labeled=Labeled(image=zeros, label=arrays['label']),
      unlabeled=Unlabeled(image_weak=zeros, image_strong=zeros),
      student_labeled=model_out('labeled'), student_unlabeled=model_out('unlabeled'),
      teacher_unlabeled=None, step=jnp.asarray(step, jnp.int32))


def _config(**dualstream):
  config = config_lib.base_config(losses=('dualstream',))
  config.steps = 100
  config.dualstream.update(dualstream)
  return config


def _term(arrays, config, step=10):
  return method.dualstream(_outputs(arrays, step), config)


class TermTest(chex.TestCase):

  def test_in_the_table_with_unlabeled_and_no_teacher(self):
    (term,) = methods.resolve(('dualstream',))
    assert term is method.TERM and term.needs_unlabeled and not term.needs_teacher

  def test_total_is_eq3_of_its_parts_and_jit_equals_eager(self):
    # Weights away from their defaults, so each one is seen to act where it should (reg_weight=0
    # and contrast_weight=0 are the paper's ablations).
    config = _config(proto_from_labeled=True, unlabeled_weight=0.5, reg_weight=0.3,
                     contrast_weight=0.2)
    arrays = _fake_arrays()
    loss, m = jax.jit(lambda a: _term(a, config, step=50))(arrays)
    chex.assert_trees_all_close((loss, m), _term(arrays, config, step=50), rtol=1e-5, atol=1e-6)
    chex.assert_tree_all_finite((loss, m))
    np.testing.assert_allclose(
        loss, m['sup_a'] + m['sup_b'] + 0.5 * (m['unsup'] + 0.3 * m['reg'])
        + m['contrast_weight'] * m['contrast'], rtol=1e-5)
    assert float(m['sup_a']) < float(m['sup_b']) and float(m['pseudo_from_b']) == 0.0
    np.testing.assert_allclose(m['contrast_weight'], 0.2 * np.exp(-5 * 0.25), rtol=1e-6)
    assert float(m['unsup']) > 0 and float(m['contrast']) > 0
    np.testing.assert_allclose(m['reg_threshold'], 0.75, rtol=1e-6)
    # 80th percentile of distinct entropies: 80 % reliable (128 voxels: 102 below the cut).
    np.testing.assert_allclose(m['reliable_frac'], 102 / 128, rtol=1e-6)
    assert 0 < float(m['disagree_frac']) < 1 and float(m['reg']) > 0

  def test_pseudo_label_follows_the_better_subnet(self):
    arrays = _fake_arrays()
    # Swap the subnets: B now fits the labels and must give the pseudo-label.
    swapped = dict(arrays)
    for part in ('labeled', 'unlabeled'):
      for kind in ('logits', 'features'):
        swapped[f'{part}_{kind}_a'] = arrays[f'{part}_{kind}_b']
        swapped[f'{part}_{kind}_b'] = arrays[f'{part}_{kind}_a']
    config = _config()
    loss, m = _term(arrays, config)
    loss_swapped, m_swapped = _term(swapped, config)
    assert float(m_swapped['pseudo_from_b']) == 1.0
    # The method is symmetric in its subnets: swapping them changes nothing else.
    np.testing.assert_allclose(loss_swapped, loss, rtol=1e-5)
    for key in ('unsup', 'reg', 'contrast', 'reliable_frac', 'disagree_frac'):
      np.testing.assert_allclose(m_swapped[key], m[key], rtol=1e-5, err_msg=key)

  def test_pseudo_label_is_the_chosen_subnets_argmax(self):
    # Unlabeled logits of B made hugely confident and opposite to A: with A chosen, L_u of A is
    # its self-training loss on its reliable voxels; 'other' trains only B against A's labels.
    arrays = _fake_arrays()
    arrays['unlabeled_logits_b'] = -8.0 * jnp.sign(arrays['unlabeled_logits_a'])
    _, both = _term(arrays, _config(reliability='threshold', entropy_threshold=1.1))
    _, other = _term(arrays, _config(reliability='threshold', entropy_threshold=1.1,
                                     unlabeled_targets='other'))
    pseudo = jnp.argmax(arrays['unlabeled_logits_a'], -1)
    expected = {s: sum(ds.ce_dice(arrays[f'unlabeled_logits_{s}'], pseudo)) for s in 'ab'}
    np.testing.assert_allclose(both['unsup'], expected['a'] + expected['b'], rtol=1e-5)
    np.testing.assert_allclose(other['unsup'], expected['b'], rtol=1e-5)
    np.testing.assert_allclose(both['reliable_frac'], 1.0)

  def test_gradients_through_unlabeled_terms_and_detach(self):
    arrays = _fake_arrays()

    def loss_of(unlabeled_logits_a, features_a, config):
      a = dict(arrays, unlabeled_logits_a=unlabeled_logits_a, unlabeled_features_a=features_a)
      return _term(a, config)[0]

    grad = lambda config: jax.jit(jax.grad(functools.partial(loss_of, config=config),
                                           argnums=(0, 1)))(
        arrays['unlabeled_logits_a'], arrays['unlabeled_features_a'])
    g_logits, g_features = grad(_config())
    chex.assert_tree_all_finite((g_logits, g_features))
    assert np.abs(g_logits).sum() > 0 and np.abs(g_features).sum() > 0
    g_logits, g_features = grad(_config(detach_unlabeled=True, proto_from_labeled=True))
    chex.assert_trees_all_equal((g_logits, g_features),
                                (jnp.zeros_like(g_logits), jnp.zeros_like(g_features)))

  def test_config_errors(self):
    arrays = _fake_arrays()
    with pytest.raises(ConfigError, match='supervised'):
      config = _config()
      config.losses = ('supervised', 'dualstream')
      _term(arrays, config)
    with pytest.raises(ConfigError, match='dualstream.pseudo_label'):
      _term(arrays, _config(pseudo_label='mean'))
    with pytest.raises(ConfigError, match='unlabeled_targets=other'):
      _term(arrays, _config(pseudo_label='union', unlabeled_targets='other'))
    out = _outputs(arrays)
    single = dict(out.student_labeled)
    del single['logits_b']
    with pytest.raises(ConfigError, match='logits_b'):
      method.dualstream(StepOutputs(
          labeled=out.labeled, unlabeled=out.unlabeled, student_labeled=single,
          student_unlabeled=out.student_unlabeled, teacher_unlabeled=None, step=out.step),
          _config())


# ------------------------------------------------------------------------------------------------


def test_experiment_configs_hold_the_paper_protocol():
  paper = config_lib.load_experiment('la_dualstream', 'paper')
  assert paper.losses == ('dualstream',) and paper.model.name == 'dualstream'
  assert (paper.steps, paper.data.labeled_batch, paper.data.unlabeled_batch) == (6000, 2, 2)
  assert tuple(paper.data.crop_shape) == (112, 112, 80) and tuple(paper.eval.stride) == (18, 18, 4)
  lr = schedules.learning_rate(paper)
  np.testing.assert_allclose([lr(0), lr(2500), lr(5999)], [0.01, 1e-3, 1e-4], rtol=1e-5)
  pancreas = config_lib.load_experiment('pancreas_dualstream', 'paper')
  assert tuple(pancreas.data.crop_shape) == (96, 96, 96) and pancreas.data.labeled_num == 12
  mt = config_lib.load_experiment('la_meanteacher', 'paper')
  assert mt.model.name == 'vnet' and mt.losses == ('supervised', 'mean_teacher')
  assert (mt.mean_teacher.rampup_length, mt.mean_teacher.rampup_interval) == (6000, 150)
  # The CPU profile keeps the schedule's shape: three lr levels over its 100 steps.
  cpu = config_lib.load_experiment('la_dualstream', 'cpu')
  lr = schedules.learning_rate(cpu)
  assert cpu.steps == 100 and cpu.data.dir == '' and cpu.optimizer.decay_every == 42
  np.testing.assert_allclose([lr(0), lr(50), lr(99)], [0.01, 1e-3, 1e-4], rtol=1e-5)
