"""Whole-config validation before anything compiles: one sentence naming the bad field.

Model fields are checked by `models.ModelConfig.validate`, optimizer fields by
`optim.validate`, the mesh by `partitioning.mesh_shape`; this module adds the train section
and the checks that span sections (batch vs. mesh, vocabulary vs. sentinels).
"""
from t5x_lite import models, optim, partitioning


def validate_config(config, num_devices: int) -> None:
  """Every check that needs no compilation; raises ValueError naming the field."""
  models.ModelConfig.from_config(config.model)
  optim.validate(config.optimizer)
  t = config.train
  for name in ('steps', 'batch_size', 'grad_accum_steps', 'log_every'):
    if int(t[name]) <= 0:
      raise ValueError(f'config.train.{name}={t[name]} must be a positive integer.')
  for name in ('eval_every', 'checkpoint_every', 'eval_steps'):
    if int(t[name]) < 0:
      raise ValueError(f'config.train.{name}={t[name]} must be >= 0 (0 = off / full pass).')
  if t.batch_size % t.grad_accum_steps:
    raise ValueError(f'config.train.batch_size={t.batch_size} is not divisible by '
                     f'config.train.grad_accum_steps={t.grad_accum_steps}.')
  if t.loss_normalization == 'constant' and not t.loss_normalization_constant > 0:
    raise ValueError('config.train.loss_normalization_constant must be > 0.')
  shape = partitioning.mesh_shape(config.partitioning, num_devices)
  parts = shape['data'] * shape['fsdp']
  if (t.batch_size // t.grad_accum_steps) % parts:
    raise ValueError(
        f'config.train.batch_size={t.batch_size} / grad_accum_steps={t.grad_accum_steps} is '
        f'not divisible by the data x fsdp mesh axes ({shape["data"]} x {shape["fsdp"]}).')
  # Data section against itself, the vocabulary (its size incl. sentinels must fit
  # config.model.vocab_size) and the model family.
  from t5x_lite.data import pipeline  # imports TensorFlow: only when validating a run
  pipeline.validate(config)
