"""jaxseg.data.datasets: the table's detection order, the dataset config blocks of a run, old
run configs with flat dataset keys, and `--set` on a dataset block."""

from __future__ import annotations

import json

import pytest
from conftest import write_nnunet_tree

from jaxseg import config as config_lib
from jaxseg.data import datasets, kits19
from jaxseg.errors import ConfigError, DataError


def test_every_layout_once_and_phantom_by_crop_shape(tmp_path):
  assert len(datasets.BY_NAME) == len(datasets.DATASETS) == 11
  assert datasets.detect('').name == 'synthetic'
  assert datasets.detect('', (16, 16, 16)).name == 'synthetic3d'
  with pytest.raises(DataError, match='unknown data layout .*nnU-Net raw layout'):
    datasets.detect(str(tmp_path))


def test_nnunet_is_detected_before_msd(tmp_path):
  # An nnU-Net tree has MSD's dataset.json and imagesTr/ too; the table's order decides.
  assert datasets.detect(str(write_nnunet_tree(tmp_path))).name == 'nnunet'


def test_resolve_keeps_the_runs_block_and_drops_the_others():
  config = config_lib.base_config()
  config.data.synthetic.size = 64  # set by an experiment: kept
  del config.data.synthetic['num_val']  # missing: the default comes back
  resolved = datasets.resolve_config(config)
  assert dict(resolved.data.synthetic) == dict(num_train=40, num_val=8, num_test=8,
                                               num_slices=8, size=64)
  blocks = {s.name for s in datasets.DATASETS} & set(resolved.data.keys())
  assert blocks == {'synthetic'}
  assert resolved.num_classes == 4 and resolved.class_names == ('RV', 'MYO', 'LV')
  assert 'kits19' in config.data  # the input config is left as it was


def test_old_flat_keys_read_into_their_blocks(tmp_path):
  saved = config_lib.base_config().to_dict()
  for name in ('kits19', 'pancreas'):
    del saved['data'][name]
  saved['data'].update(kits_window=[-100.0, 200.0], pancreas_margin=10)
  (tmp_path / 'config.json').write_text(json.dumps(saved, default=list))
  config = config_lib.read_run_config(str(tmp_path))
  assert tuple(config.data.kits19.window) == (-100.0, 200.0)
  assert config.data.kits19.train_size == 0  # not in the old run: the default
  assert config.data.pancreas.margin == 10
  assert 'kits_window' not in config.data and 'pancreas_margin' not in config.data


def test_set_a_dataset_block():
  config = config_lib.base_config()
  config_lib.apply_overrides(config, ['data.kits19.window=(-50, 150)'])
  assert tuple(config.data.kits19.window) == (-50, 150)
  assert kits19.SPEC.block(config)['window'] == (-50, 150)
  with pytest.raises(ConfigError, match='--set data.kits19.width: unknown config key'):
    config_lib.apply_overrides(config, ['data.kits19.width=3'])
