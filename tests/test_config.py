"""Experiment configs (jaxseg/config.py): every experiment name resolves; a config holds only the
blocks of its terms; `--set` on another method's block is one clear line; old run configs, which
hold every block, stay readable; the one schedule-scaling rule."""

import json

import pytest

from jaxseg import config as config_lib, methods
from jaxseg.errors import ConfigError
from jaxseg.models import build_model

METHOD_BLOCKS = {name for term in methods.TERMS.values() for name in term.blocks()}


@pytest.mark.parametrize('experiment', config_lib.list_experiments())
def test_every_paper_profile_resolves(experiment):
  """The paper profile of every experiment names known terms, stages and a buildable model, and
  holds the blocks of its own terms and no other."""
  config = config_lib.load_experiment(experiment, 'paper')
  assert config.experiment == experiment
  used = set()
  for name in config.stage_order or ('',):
    stage = config_lib.stage_config(config, name) if name else config
    for term in methods.resolve(tuple(stage.losses)):
      used |= set(term.blocks())
  assert config_lib.total_steps(config) > 0
  build_model(config)
  held = METHOD_BLOCKS & set(config.keys())
  assert used <= held
  # Stages the default order leaves out may add terms (LCLPL's optional global contrast).
  every = {b for t in methods.resolve(config_lib.run_terms(config)) for b in t.blocks()}
  assert held == every, experiment


def test_the_names_users_know_resolve_to_shared_files():
  names = set(config_lib.list_experiments())
  assert {'acdc_supervised', 'acdc_fullysupervised', 'hippocampus_supervised', 'mmwhs_supervised',
          'acdc_hu_block', 'acdc_hu_stride', 'hippocampus_hu_block', 'hippocampus_hu_stride',
          'mmwhs_hu_block', 'mmwhs_hu_stride', 'acdc_meanteacher', 'smoke'} <= names
  path, name = config_lib.find_experiment('mmwhs_hu_block')
  assert path.name == 'hu.py' and name == 'mmwhs_hu_block'
  # Profiles are per experiment in a shared file.
  assert config_lib.load_experiment('acdc_hu_block', 'quick').local_contrast.block == 8
  with pytest.raises(ConfigError, match="experiment mmwhs_hu_block has no 'quick' profile"):
    config_lib.load_experiment('mmwhs_hu_block', 'quick')
  with pytest.raises(ConfigError, match="unknown experiment 'acdc_hu'"):
    config_lib.load_experiment('acdc_hu', 'paper')


def test_base_config_holds_the_blocks_of_its_terms():
  config = config_lib.base_config()
  assert config.losses == ('supervised',) and METHOD_BLOCKS & set(config.keys()) == {'supervised'}
  config = config_lib.base_config(losses=('supervised', 'mean_teacher'), stage_losses=('plgcl',))
  assert METHOD_BLOCKS & set(config.keys()) == {'supervised', 'mean_teacher', 'ema', 'plgcl'}
  with pytest.raises(ConfigError, match=r"losses: unknown loss term\(s\) \['mean_techer'\]"):
    config_lib.base_config(losses=('supervised', 'mean_techer'))


def test_set_on_a_block_of_another_method_is_one_clear_line():
  config = config_lib.load_experiment('acdc_plgcl', 'paper')
  config_lib.apply_overrides(config, ['plgcl.weight=0.3'])
  assert config.plgcl.weight == 0.3
  config = config_lib.load_experiment('acdc_supervised', 'paper')
  with pytest.raises(ConfigError) as error:
    config_lib.apply_overrides(config, ['plgcl.weight=0.3'])
  assert str(error.value) == ("--set plgcl.weight: 'plgcl' is not a method of this run (its loss "
                              "terms: supervised; plgcl belongs to 'plgcl')")
  with pytest.raises(ConfigError, match="--set nosuch.key: unknown config key 'nosuch'"):
    config_lib.apply_overrides(config, ['nosuch.key=1'])
  # Naming a term in `losses` brings its block, with the method's defaults, for later --set.
  config_lib.apply_overrides(config, ["losses=('supervised','mean_teacher')",
                                      'mean_teacher.weight=0.2'])
  assert config.mean_teacher.weight == 0.2 and config.ema.decay == 0.99


def test_an_old_run_config_with_every_block_stays_readable(tmp_path):
  """Runs made before configs held only their own terms saved every method's block."""
  old = config_lib.load_experiment('acdc_supervised', 'cpu')
  every = config_lib.base_config(losses=tuple(methods.TERMS))
  with old.unlocked():
    for name in METHOD_BLOCKS:
      old[name] = every[name]
    del old.plgcl['pseudo_label']  # a key added since that run was made
  (tmp_path / 'config.json').write_text(config_lib.to_json(old))
  config = config_lib.read_run_config(str(tmp_path))
  assert config.losses == ('supervised',) and config.dualstream.contrast_weight == 0.1
  assert config.plgcl.pseudo_label == 'student'  # the default, as before
  # A new run's config gets defaults for the keys of its own terms' blocks it lacks.
  new = json.loads(config_lib.to_json(config_lib.load_experiment('acdc_meanteacher', 'cpu')))
  del new['mean_teacher']['teacher_noise_clip']
  (tmp_path / 'config.json').write_text(json.dumps(new))
  config = config_lib.read_run_config(str(tmp_path))
  assert config.mean_teacher.teacher_noise_clip == 0.2 and 'plgcl' not in config


def test_the_quick_profile_at_another_budget_scales_every_schedule_to_it():
  """`--steps N` with `--profile quick` is the quick protocol at N steps: every schedule scaled
  from the paper's by the same rule, not the 1,500-step profile's schedules with a new step
  count (which a 2x budget would leave warming up and ramping over its first half)."""
  base = config_lib.load_experiment('acdc_plgcl', 'quick')
  double = config_lib.load_experiment('acdc_plgcl', 'quick', quick_steps=2 * config_lib.QUICK_STEPS)
  schedules = lambda c: (config_lib.total_steps(c), c.plgcl.warmup_steps, c.ema.decay,
                         c.mean_teacher.rampup_interval, c.optimizer.decay_every)
  # PLGCL's paper: 30,000 steps, warm-up 7,350, EMA horizon 1,000, ramp interval 150, decay 2,500.
  assert schedules(base) == pytest.approx((1500, 367, 0.98, 7, 125))
  assert schedules(double) == pytest.approx((3000, 735, 0.99, 15, 250))
  # Everything else is the quick profile's (image size, patch, the quick learning rate).
  assert (double.data.image_size, double.plgcl.patch, double.optimizer.lr) == (
      base.data.image_size, base.plgcl.patch, base.optimizer.lr)
  # The budget does not leak into the next load; stages keep their proportions.
  assert config_lib.total_steps(config_lib.load_experiment('acdc_plgcl', 'quick')) == 1500
  staged = config_lib.load_experiment('acdc_hu_block', 'quick', quick_steps=3000)
  quick = config_lib.load_experiment('acdc_hu_block', 'quick')
  doubled = [staged.stages[n].steps - 2 * quick.stages[n].steps for n in quick.stage_order]
  assert config_lib.total_steps(staged) == 3000 and max(map(abs, doubled)) <= 1  # rounding
  with pytest.raises(ValueError, match='quick profile'):
    config_lib.load_experiment('acdc_plgcl', 'paper', quick_steps=3000)


def test_scale_schedules_is_one_rule_over_the_run_terms():
  config = config_lib.base_config(losses=('supervised', 'mean_teacher', 'plgcl'))
  config.plgcl.warmup_steps = 1000
  config_lib.scale_schedules(config, 0.1)
  assert (config.plgcl.warmup_steps, config.mean_teacher.start_step,
          config.optimizer.decay_every) == (100, 100, 250)
  staged = config_lib.load_experiment('la_dualstream', 'paper')
  staged.dualstream.update(rampup_length=6000, rampup_interval=150)
  config_lib.scale_schedules(staged, 0.5)
  assert (staged.dualstream.rampup_length, staged.dualstream.rampup_interval) == (3000, 75)
