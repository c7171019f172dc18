"""Whole-config validation before anything compiles: one sentence naming the bad field.

Model fields are checked by `models.ModelConfig.validate`, optimizer fields by
`optim.validate`, the mesh by `partitioning.mesh_shape`; this module adds the train section
and the checks that span sections (batch vs. mesh, vocabulary vs. sentinels).
"""
from t5x_lite import families, losses, models, optim, partitioning


def validate_config(config, num_devices: int, data: bool = True) -> None:
  """Every check that needs no compilation; raises ValueError naming the field.

  `data=False` skips the data section (and the TensorFlow import its check needs), for runs
  that read no data: `bench --train_only` / `--decode_only` time synthetic batches.
  """
  validate_portable(config, num_devices, data=data)
  import jax
  if config.model.attention_impl == 'cudnn' and jax.default_backend() != 'gpu':
    raise ValueError(f"config.model.attention_impl='cudnn' needs a GPU; this run's devices are "
                     f"{jax.default_backend()} (use auto, xla, folded, rowwise or einsum).")
  if not data:
    return
  # Data section against itself, the vocabulary (its size incl. sentinels must fit
  # config.model.vocab_size) and the model family.
  from t5x_lite.data import pipeline  # imports TensorFlow: only when validating a run
  pipeline.validate(config)


def validate_portable(config, num_devices: int, data: bool = True) -> None:
  """The checks that hold on any machine: no devices, data files or TensorFlow needed (what
  `plan` checks of a pod's config on a laptop). `data=False`: as `validate_config`'s."""
  models.ModelConfig.from_config(config.model)
  families.check_objective(config.model.family, config.data.objective)
  optim.validate(config.optimizer)
  t = config.train
  for name in ('steps', 'batch_size', 'grad_accum_steps', 'log_every'):
    if int(t[name]) <= 0:
      raise ValueError(f'config.train.{name}={t[name]} must be a positive integer.')
  for name in ('eval_every', 'checkpoint_every', 'eval_steps'):
    if int(t[name]) < 0:
      alias = ' (also named checkpoint.period)' if name == 'checkpoint_every' else ''
      raise ValueError(f'config.train.{name}={t[name]}{alias} must be >= 0 (0 = off / full '
                       'pass).')
  if int(t.eval_every) and not int(t.eval_steps) and config.data.eval_repeat:
    raise ValueError('config.train.eval_steps=0 (the whole split) with config.data.'
                     'eval_repeat=True (an endless validation split) would never end an eval: '
                     'set train.eval_steps > 0.')
  for name, seed in (('train.seed', t.seed), ('data.seed', config.data.seed)):
    if not 0 <= int(seed) < 2**32:  # jax's PRNGKey and tf.data's int64 seed arithmetic
      raise ValueError(f'config.{name}={seed} must be in [0, 2**32).')
  if not 0.0 <= t.label_smoothing < 1.0:
    raise ValueError(f'config.train.label_smoothing={t.label_smoothing} must be in [0, 1).')
  if t.on_nonfinite not in ('stop', 'skip'):
    raise ValueError(f'config.train.on_nonfinite={t.on_nonfinite!r} must be stop or skip.')
  if int(t.max_consecutive_skips) < 1:
    raise ValueError(f'config.train.max_consecutive_skips={t.max_consecutive_skips} must be '
                     '>= 1.')
  if t.loss_normalization not in losses.NORMALIZATIONS:
    raise ValueError(f'config.train.loss_normalization={t.loss_normalization!r} must be one '
                     f'of {", ".join(losses.NORMALIZATIONS)}.')
  if int(config.checkpoint.period) != int(t.checkpoint_every):
    # One value under two names; they part only when a config file replaced the train or
    # checkpoint section whole, and then the loop would silently use train.checkpoint_every.
    raise ValueError(f'config.checkpoint.period={config.checkpoint.period} and '
                     f'config.train.checkpoint_every={t.checkpoint_every} name one value but '
                     'differ (a config file replaced one of their sections, cutting the '
                     'link): set both, or update the section field by field.')
  problem = data and partitioning.stream_rows_problem(int(t.batch_size),
                                                      int(config.data.num_virtual_shards))
  if problem:
    raise ValueError(problem)
  if int(config.checkpoint.keep) < 1:
    raise ValueError(f'config.checkpoint.keep={config.checkpoint.keep} must be >= 1.')
  o = config.optimizer
  for name in ('clip_grad_norm', 'weight_decay', 'z_loss'):
    if not 0 <= o[name] < float('inf'):  # NaN fails too
      raise ValueError(f'config.optimizer.{name}={o[name]} must be >= 0 and finite '
                       '(0 = off).')
  if o.name == 'adafactor' and o.weight_decay >= 1:
    raise ValueError(f'config.optimizer.weight_decay={o.weight_decay} with adafactor must be '
                     '< 1: each step multiplies the weight matrices by 1 - weight_decay (t5x\'s '
                     'weight_decay_rate, not scaled by the learning rate).')
  for name in ('b1', 'b2'):
    if not 0.0 <= o[name] < 1.0:
      raise ValueError(f'config.optimizer.{name}={o[name]} must be in [0, 1).')
  partitioning.axis_rules(config.partitioning)  # each rule's shape and mesh axes
  if (t.loss_normalization == 'constant' and
      not 0 < t.loss_normalization_constant < float('inf')):
    raise ValueError(f'config.train.loss_normalization_constant='
                     f'{t.loss_normalization_constant} must be > 0 and finite.')
  partitioning.microbatch_rows_per_device(
      config, partitioning.mesh_shape(config.partitioning, num_devices))
  check_absolute_positions(config)


def check_absolute_positions(config) -> None:
  """With learned absolute positions, every row a stack reads must fit the position table:
  a position past it reads no embedding (jnp.take gives NaN) and the first step's loss is NaN.

  >>> from configs import gpt
  >>> cfg = gpt.get_config('tiny'); cfg.model.max_position_embeddings = 64
  >>> cfg.data.targets_length = 128
  >>> check_absolute_positions(cfg)
  Traceback (most recent call last):
  ...
  ValueError: config.data.targets_length=128 gives the decoder rows of 128 tokens, more than config.model.max_position_embeddings=64 (learned absolute positions).
  """
  if config.model.position_embedding != 'absolute':
    return
  limit = int(config.model.max_position_embeddings)
  lengths = families.stream_lengths(config)
  for stack, field in (('encoder', 'inputs_length'), ('decoder', 'targets_length')):
    if lengths[stack] > limit:
      both = lengths[stack] != int(config.data[field])  # prefix-LM rows: inputs + targets
      fields = ('config.data.inputs_length + targets_length' if both else
                f'config.data.{field}')
      given = (f'{config.data.inputs_length} + {config.data.targets_length}' if both else
               f'{config.data[field]}')
      raise ValueError(f'{fields}={given} gives the {stack} rows of {lengths[stack]} tokens, '
                       f'more than config.model.max_position_embeddings={limit} (learned '
                       'absolute positions).')
