"""Hugging Face FlaxT5 at a t5x_lite config's sizes: the reference `bench` times us against.

Random-initialised (nothing is downloaded), float32, dropout off. `grad_step(config)` is
FlaxT5's loss + gradients on the same loss function (`losses.weighted_loss`, the config's
z-loss) and batch shapes as ours; `generator(config, ...)` is `FlaxT5ForConditionalGeneration
.generate` (greedy or beam search) jitted, with EOS disabled so every row generates exactly
`max_new_tokens` tokens, as ours does at fixed length.

transformers 4.57's FlaxT5 calls `jnp.clip(x, a_max=...)`, a keyword jax 0.10 removed;
`_clip_compat` maps it to `min`/`max` while FlaxT5 is traced, and restores `jnp.clip` after.
"""
import contextlib
import importlib.util
import os

from t5x_lite import hf_config
from t5x_lite import losses


def available() -> bool:
  return importlib.util.find_spec('transformers') is not None


@contextlib.contextmanager
def _clip_compat():
  import jax.numpy as jnp
  clip = jnp.clip

  def compat(x, min=None, max=None, a_min=None, a_max=None):  # pylint: disable=redefined-builtin
    return clip(x, a_min if min is None else min, a_max if max is None else max)

  jnp.clip = compat
  try:
    yield
  finally:
    jnp.clip = clip


def _t5_config(model_cfg):
  # transformers reads USE_TORCH once, at import: skip the slow torch import, without
  # leaking the setting into the environment of later subprocesses.
  added = 'USE_TORCH' not in os.environ
  if added:
    os.environ['USE_TORCH'] = '0'
  try:
    from transformers import T5Config
  finally:
    if added:
      del os.environ['USE_TORCH']
  from transformers.utils import logging as hf_logging
  hf_logging.set_verbosity_error()  # its "Flax classes are deprecated" banner
  fields = hf_config.hf_config_dict(model_cfg)
  if fields.get('model_type') != 't5':
    raise ValueError('the FlaxT5 reference needs a T5-shaped encoder_decoder model config.')
  fields = {k: v for k, v in fields.items() if k not in ('architectures', 'torch_dtype')}
  fields['dropout_rate'] = 0.0
  return T5Config(**fields)


def _model(config):
  import jax
  import jax.numpy as jnp
  from transformers.models.t5.modeling_flax_t5 import FlaxT5ForConditionalGeneration
  with _clip_compat():
    model = FlaxT5ForConditionalGeneration(_t5_config(config.model), seed=0, dtype=jnp.float32,
                                           input_shape=(1, 8))
  return model, jax.device_put(model.params)


def grad_step(config, batch):
  """A no-argument callable: FlaxT5's (loss, grads) on `batch` (synthetic_batch's features)."""
  import jax
  model, params = _model(config)
  z_loss = config.optimizer.z_loss

  def loss(p, b):
    logits = model.module.apply(
        {'params': p}, b['encoder_input_tokens'], b['encoder_input_tokens'] > 0,
        b['decoder_input_tokens'], b['decoder_target_tokens'] > 0, deterministic=True).logits
    return losses.weighted_loss(logits, b['decoder_target_tokens'], b['decoder_loss_weights'],
                                z_loss=z_loss)[0]

  f = jax.jit(jax.value_and_grad(loss))
  batch = jax.device_put(batch)

  def step():
    with _clip_compat():
      return f(params, batch)
  return step


def generator(config, encoder_input_tokens, max_new_tokens: int, num_beams: int = 1):
  """A no-argument callable: `generate` of [batch, max_new_tokens] new tokens."""
  import jax
  model, params = _model(config)
  ids = jax.device_put(encoder_input_tokens)

  @jax.jit
  def gen(p, x):
    out = model.generate(x, attention_mask=x > 0, params=p, max_new_tokens=max_new_tokens,
                         min_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                         eos_token_id=None, pad_token_id=0, decoder_start_token_id=0,
                         early_stopping=False)
    return out.sequences

  def run():
    with _clip_compat():
      return gen(params, ids)
  return run
