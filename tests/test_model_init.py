"""A fresh model's initial weights and its dropout sites, against the references.

- T5 (`init_scheme='t5'`): every parameter's distribution as t5x draws it (docs/t5.md §5 and
  t5x's examples/t5/network.py): stds from the formulas, truncated normals within 2 stds,
  the relative-position tables uniform.
- BERT and GPT-2: the std of every parameter equals that of the same parameter in a freshly
  built `transformers` model of the same config (read through `hf.load`), GPT-2's residual
  output projections at 0.02 / sqrt(2 x layers) included.
- Dropout: how many dropouts a training forward pass applies equals the reference's count:
  t5x's network for T5, the `torch.nn.Dropout` modules of BertForMaskedLM / GPT2LMHeadModel.
"""
import collections
import os

os.environ.setdefault('USE_TF', '0')

import flax.linen as nn
import jax
import numpy as np
import pytest

import tiny_run
from t5x_lite import families, hf, models

# Wide enough that every std below is estimated from >= 16k draws (the relative-position
# tables: 4 x 32 = 128).
SIZES = dict(vocab_size=1024, d_model=128, d_ff=512, num_heads=4, d_kv=32)


def init_params(model_cfg, seed=0):
  module = models.build(model_cfg)
  batch = families.dummy_batch(model_cfg.family)
  return jax.device_get(nn.unbox(module.init(jax.random.PRNGKey(seed), batch))['params'])


def leaves(params):
  return {jax.tree_util.keystr(p): np.asarray(x, np.float64)
          for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def close_std(x, want, name):
  """The sample std within 6 standard errors (1 / sqrt(2n) relative) of `want`."""
  tolerance = 6 / np.sqrt(2 * x.size)
  assert abs(x.std() / want - 1) < tolerance, (name, x.std(), want)
  assert abs(x.mean()) < 6 * want / np.sqrt(x.size), (name, x.mean())


def test_t5_init_is_t5xs():
  cfg = tiny_run.tiny_config('t5', **SIZES).model
  d, f, h, k = cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.d_kv
  buckets = cfg.relative_attention_num_buckets
  truncated = {'wi_0': d ** -0.5, 'wi_1': d ** -0.5, 'wo': f ** -0.5,
               "['dense']": d ** -0.5}                   # t5x DenseGeneral's default init
  normal = {"['query']": (d * k) ** -0.5, "['key']": d ** -0.5, "['value']": d ** -0.5,
            "['out']": (h * k) ** -0.5, 'token_embedder': 1.0}
  seen = set()
  for name, x in leaves(init_params(models.ModelConfig.from_config(cfg))).items():
    if name.endswith("['scale']"):
      assert (x == 1).all(), name                        # RMSNorm scale init 1
    elif 'rel_embedding' in name:                        # variance_scaling fan_avg uniform
      limit = np.sqrt(3 * 2 / (h + buckets))
      assert x.shape == (h, buckets) and np.abs(x).max() <= limit, name
      assert np.abs(x).max() > 0.9 * limit, name
      # 128 uniform draws: the variance's relative standard error is sqrt(0.8 / 128) = 0.079
      assert abs(x.var() / (2 / (h + buckets)) - 1) < 0.4, (name, x.var())
      seen.add('relpos')
    else:
      kind = next((key for key in {**truncated, **normal} if key in name), None)
      assert kind is not None, f'no reference for {name}'
      want = {**truncated, **normal}[kind]
      close_std(x, want, name)
      if kind in truncated:  # N(0, 1) cut at +-2, rescaled to unit std (std 0.8796 before)
        assert np.abs(x).max() <= 2 * want / 0.87962566 * 1.0001, name
      else:
        assert np.abs(x).max() > 3 * want, name  # a normal's tail, not a truncated one
      seen.add(kind)
  assert seen == set(truncated) | set(normal) | {'relpos'}


@pytest.mark.parametrize('name', ['bert', 'gpt'])
def test_bert_and_gpt2_init_stds_are_transformers(name, tmp_path):
  import torch
  import transformers
  torch.manual_seed(0)
  layers = 4
  if name == 'bert':
    reference = transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=1024, hidden_size=128, intermediate_size=512, num_attention_heads=4,
        num_hidden_layers=layers, max_position_embeddings=256))
  else:
    reference = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=1024, n_embd=128, n_head=4, n_layer=layers, n_positions=256))
  reference.save_pretrained(tmp_path, safe_serialization=True)
  model_cfg, theirs = hf.load(str(tmp_path))
  ours = init_params(models.ModelConfig.from_config(model_cfg), seed=1)
  # The same config from our config file: its init_scheme and dropout_sites are the import's.
  cfg = tiny_run.tiny_config(name, layers=layers).model
  for field in ('init_scheme', 'dropout_sites'):
    assert cfg[field] == model_cfg[field], field
  theirs, ours = leaves(theirs), leaves(ours)
  assert theirs.keys() == ours.keys()
  for key, ref in theirs.items():
    if ref.std() == 0:                                  # biases 0, LayerNorm scales 1
      np.testing.assert_array_equal(ours[key], ref, err_msg=key)
    else:
      close_std(ours[key], ref.std(), key)
  if name == 'gpt':  # the scaled residual projections are there, and differ from the rest
    out = theirs["['decoder']['layers_0']['self_attention']['out']['kernel']"]
    assert abs(out.std() / (0.02 / np.sqrt(2 * layers)) - 1) < 0.05


def test_the_absent_stacks_layer_count_changes_nothing():
  """A decoder-only model ignores num_encoder_layers (a T5 config switched to GPT-2): its
  params, GPT-2's depth-scaled residual init included, are those of num_encoder_layers=0,
  and plan says the count is unused."""
  from t5x_lite import families, plan
  cfg = tiny_run.tiny_config('gpt', layers=2)
  cfg.data.targets_length = 32  # within the position table
  ours = leaves(init_params(models.ModelConfig.from_config(cfg.model), seed=1))
  assert families.unused_layer_counts(cfg.model) == ''
  cfg.model.num_encoder_layers = 6
  switched = leaves(init_params(models.ModelConfig.from_config(cfg.model), seed=1))
  for key, value in ours.items():
    np.testing.assert_array_equal(switched[key], value, err_msg=key)
  report = plan.report(cfg, 1, name='gpt')
  assert 'layers=0/2 ' in report
  assert ("note: config.model.num_encoder_layers=6 is unused: family='decoder' has no such "
          'stack.') in report


class DropoutCounter:
  """Counts the dropouts a forward pass applies (rate > 0, not deterministic), by the kind
  of module that applies them."""

  def __init__(self):
    self.by_module = collections.Counter()

  def __call__(self, next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, nn.Dropout) and context.method_name == '__call__':
      deterministic = kwargs.get('deterministic', module.deterministic)
      if module.rate > 0 and not deterministic:
        self.by_module[type(module.parent).__name__] += 1
    return next_fun(*args, **kwargs)


def dropouts_applied(name, layers):
  cfg = models.ModelConfig.from_config(
      tiny_run.tiny_config(name, layers=layers, dropout_rate=0.1).model)
  module = models.build(cfg)
  batch = families.dummy_batch(cfg.family)
  params = nn.unbox(module.init(jax.random.PRNGKey(0), batch))['params']
  counter = DropoutCounter()
  with nn.intercept_methods(counter):
    module.apply({'params': params}, batch, deterministic=False,
                 rngs={'dropout': jax.random.PRNGKey(1)})
  return counter.by_module


def torch_dropout_modules(name, layers):
  import torch
  import transformers
  if name == 'bert':
    model = transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_attention_heads=2,
        num_hidden_layers=layers))
  else:
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=64, n_embd=16, n_head=2, n_layer=layers))
  return sum(isinstance(m, torch.nn.Dropout) for m in model.modules())


@pytest.mark.parametrize('layers', [1, 3])
def test_dropout_sites_are_the_references(layers):
  # t5x (examples/t5/network.py): each stack drops its embeddings and its output; each layer
  # its attention probabilities and attention output (self-attention, and cross-attention
  # in the decoder), and the MLP's hidden activations and output.
  assert dropouts_applied('t5', layers) == {
      'Stack': 4, 'MultiHeadAttention': 3 * layers, 'Block': 5 * layers, 'Mlp': 2 * layers}
  assert dropouts_applied('t5_decoder', layers) == {
      'Stack': 2, 'MultiHeadAttention': layers, 'Block': 2 * layers, 'Mlp': layers}
  # transformers: every Dropout module of the model runs once per forward pass: the
  # embeddings', then per layer the attention probabilities', the attention output's and
  # the MLP output's (none on the MLP's hidden activations or the last layer's output).
  for name in ('bert', 'gpt'):
    applied = dropouts_applied(name, layers)
    assert sum(applied.values()) == torch_dropout_modules(name, layers), name
    assert applied == {'Stack': 1, 'MultiHeadAttention': layers, 'Block': 2 * layers}, name
