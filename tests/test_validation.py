"""Whole-config validation: one sentence naming the bad field, before anything compiles."""
import re
import subprocess
import sys

import ml_collections
import pytest

import tiny_run
from configs import default
from t5x_lite import validation


@pytest.mark.parametrize('section,field,value,message', [
    ('train', 'label_smoothing', 1.0, 'config.train.label_smoothing'),
    ('optimizer', 'z_loss', -1.0, 'config.optimizer.z_loss'),
    ('train', 'steps', 0, 'config.train.steps'),
    ('train', 'grad_accum_steps', 3, 'config.train.grad_accum_steps=3'),
    ('checkpoint', 'keep', 0, 'config.checkpoint.keep'),
    ('optimizer', 'b2', 1.5, 'config.optimizer.b2'),
    ('optimizer', 'name', 'sgd', 'config.optimizer.name'),
    ('optimizer', 'schedule', 'linear', 'config.optimizer.schedule'),
    ('model', 'vocab_size', 1000, 'model.vocab_size=1000'),  # < 1000 pieces + 100 sentinels
    ('model', 'mlp_activations', ('swish',), 'config.model.mlp_activations'),
    ('data', 'objective', 'mlm', "data.objective='mlm' does not fit"),  # not for enc-dec
    ('data', 'shuffle_buffer_size', 0, 'data.shuffle_buffer_size=0 must be at least 1'),
    ('data', 'iid_random_prob', 5.0, 'data.iid_random_prob=5.0'),
    ('data', 'mlm_rate', 0.0, 'data.mlm_rate=0.0 must be in (0, 1)'),
    ('train', 'batch_size', 6, 'config.train.batch_size=6 is not a multiple of '
                               'data.num_virtual_shards=4'),
    ('model', 'norm_eps', -1.0, 'config.model.norm_eps=-1.0 is invalid: must be > 0'),
    ('model', 'norm_eps', 0.0, 'config.model.norm_eps=0.0 is invalid: must be > 0'),
    # T5's bucketing divides by log(max_distance / exact buckets): 0 or negative there
    ('model', 'relative_attention_num_buckets', 3,
     'config.model.relative_attention_num_buckets=3 is invalid: must be >= 4'),
    ('model', 'relative_attention_max_distance', 16,
     "config.model.relative_attention_max_distance=16 is invalid: must be > 16, the "
     "distances the causal stack's 32 buckets hold exactly"),
    ('model', 'type_vocab_size', 2, "config.model.type_vocab_size=2 is invalid: must be 0 for "
                                    "family 'encoder_decoder'"),
    ('data', 'mean_noise_span_length', float('nan'),
     'data.mean_noise_span_length=nan must be positive and finite'),
    ('data', 'noise_density', 0.0, 'data.noise_density=0.0 must be in (0, 1)'),
    ('data', 'inputs_length', 2, 'data.inputs_length=2 leaves raw chunks of 1 token'),
    ('train', 'seed', 10**20, 'config.train.seed=100000000000000000000 must be in [0, 2**32)'),
    ('data', 'seed', -1, 'config.data.seed=-1 must be in [0, 2**32)'),
])
def test_bad_field_is_named(section, field, value, message):
  cfg = default.get_config()
  cfg[section][field] = value
  with pytest.raises(ValueError, match=re.escape(message)) as e:
    validation.validate_config(cfg, num_devices=1)
  assert '\n' not in str(e.value)


def test_relative_buckets_are_checked_per_stack():
  """A bidirectional stack halves its buckets by direction first: an encoder-only model
  holds distances < 8 exactly with 32 buckets, a causal stack < 16."""
  cfg = tiny_run.tiny_config('bert', position_embedding='relative',
                             relative_attention_num_buckets=32, relative_attention_max_distance=9)
  validation.validate_portable(cfg, num_devices=1)
  cfg.model.relative_attention_max_distance = 8
  with pytest.raises(ValueError, match="must be > 8, the distances the bidirectional stack's"):
    validation.validate_portable(cfg, num_devices=1)
  gpt = tiny_run.tiny_config('gpt', position_embedding='relative',
                             relative_attention_num_buckets=2, relative_attention_max_distance=2)
  validation.validate_portable(gpt, num_devices=1)  # causal: bucket 0 exact, bucket 1 beyond


def test_an_endless_validation_split_needs_eval_steps_in_training():
  cfg = default.get_config()
  cfg.data.eval_repeat, cfg.train.eval_steps = True, 0
  with pytest.raises(ValueError, match='would never end an eval: set train.eval_steps > 0'):
    validation.validate_config(cfg, num_devices=1)
  cfg.train.eval_every = 0  # no eval in training: nothing endless
  validation.validate_config(cfg, num_devices=1)


def test_a_derived_field_dividing_by_zero_is_one_line():
  from configs import gpt
  cfg = gpt.get_config('tiny')
  cfg.model.num_heads = 0  # configs/gpt.py: d_kv = d_model // num_heads
  with pytest.raises(ValueError, match=re.escape('d_model // num_heads with num_heads=0')):
    validation.validate_portable(cfg, num_devices=1)


def test_rules_must_name_mesh_axes():
  cfg = default.get_config()
  cfg.partitioning.logical_axis_rules = (('embed', 'model'),)
  with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
    validation.validate_config(cfg, num_devices=1)


def test_a_checkpoint_period_parted_from_train_checkpoint_every_is_named():
  """A config file that replaces the train section whole cuts checkpoint.period's link to
  train.checkpoint_every: setting one then must not be silently ignored."""
  cfg = default.get_config()
  cfg.train = ml_collections.ConfigDict(cfg.train.to_dict())
  cfg.checkpoint.period = 7
  with pytest.raises(ValueError, match=re.escape(
      'config.checkpoint.period=7 and config.train.checkpoint_every=1000 name one value')):
    validation.validate_config(cfg, num_devices=1)
  cfg.train.checkpoint_every = 7  # both set: consistent again
  validation.validate_config(cfg, num_devices=1)


def test_default_config_is_valid():
  validation.validate_config(default.get_config(), num_devices=1)


def test_runs_that_read_no_data_skip_the_data_section_and_tensorflow():
  """`bench --train_only` on a machine without TensorFlow (a bare GPU image): the data
  section is neither checked nor is TensorFlow imported; the default still checks it."""
  cfg = default.get_config()
  cfg.data.noise_density = 1.5  # a data-section field: caught only with data=True
  validation.validate_config(cfg, num_devices=1, data=False)
  with pytest.raises(ValueError, match='data.noise_density=1.5 must be in'):
    validation.validate_config(cfg, num_devices=1)
  code = ('import sys; from configs import default; from t5x_lite import validation; '
          'validation.validate_config(default.get_config(), 1, data=False); '
          'print(sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow"))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       check=True, cwd=tiny_run.ROOT)
  assert out.stdout.strip() == '[]', out.stdout


def _shipped_configs():
  """(name, config) for every config file and size in configs/."""
  import importlib
  import pathlib
  out = []
  for path in sorted(pathlib.Path(tiny_run.ROOT, 'configs').glob('*.py')):
    if path.stem in ('__init__', 'base'):
      continue
    module = importlib.import_module(f'configs.{path.stem}')
    sizes = getattr(module, 'SIZES', None)
    for size in (list(sizes) if sizes else [None]):
      out.append((f'{path.stem}:{size}' if size else path.stem,
                  module.get_config(size) if size else module.get_config()))
  return out


def test_shipped_schedules_leave_their_warmup_within_the_run():
  """A cosine schedule whose warmup is as long as the run never decays (gpt.py and bert.py
  once kept the base's 1000 steps under a 2000 / 1000-step warmup)."""
  configs = _shipped_configs()
  assert len(configs) >= 15
  for name, cfg in configs:
    o = cfg.optimizer
    if o.schedule == 'cosine':
      assert o.warmup_steps < (o.decay_steps or cfg.train.steps), name
