"""Whole-config validation: one sentence naming the bad field, before anything compiles."""
import pytest

from configs import default
from t5x_lite import validation


@pytest.mark.parametrize('section,field,value,message', [
    ('train', 'label_smoothing', 1.0, 'config.train.label_smoothing'),
    ('train', 'z_loss', -1.0, 'config.train.z_loss'),
    ('train', 'steps', 0, 'config.train.steps'),
    ('train', 'grad_accum_steps', 3, 'config.train.grad_accum_steps=3'),
    ('checkpoint', 'keep', 0, 'config.checkpoint.keep'),
    ('optimizer', 'b2', 1.5, 'config.optimizer.b2'),
    ('optimizer', 'name', 'sgd', 'config.optimizer.name'),
    ('optimizer', 'schedule', 'linear', 'config.optimizer.schedule'),
    ('model', 'vocab_size', 1000, 'model.vocab_size=1000'),  # < 1000 pieces + 100 sentinels
    ('model', 'mlp_activations', ('swish',), 'config.model.mlp_activations'),
    ('data', 'objective', 'mlm', "data.objective='mlm' does not fit"),  # not for enc-dec
])
def test_bad_field_is_named(section, field, value, message):
  cfg = default.get_config()
  cfg[section][field] = value
  with pytest.raises(ValueError, match=message.replace('.', r'\.')) as e:
    validation.validate_config(cfg, num_devices=1)
  assert '\n' not in str(e.value)


def test_rules_must_name_mesh_axes():
  cfg = default.get_config()
  cfg.partitioning.logical_axis_rules = (('embed', 'model'),)
  with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
    validation.validate_config(cfg, num_devices=1)


def test_default_config_is_valid():
  validation.validate_config(default.get_config(), num_devices=1)
