"""Parity of t5x_lite models with Hugging Face PyTorch models (the independent reference).

Import direction: a random PyTorch model built from a small config is saved with
`save_pretrained` (safetensors), read by `hf.load`, and our float32 logits must match the
PyTorch logits. Export direction: our randomly initialised params go through `hf.save`,
`transformers` loads the directory with `from_pretrained`, and its logits must match ours.
Nothing is downloaded. Bad inputs must raise ValueError naming the problem.
"""
import json
import os

os.environ.setdefault('USE_TF', '0')  # transformers: skip the slow TensorFlow import (Flax stays on: test_bench's FlaxT5 reference runs in this process)

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from configs import bert as bert_config
from configs import gpt as gpt_config
from configs import t5_v1_0_base, t5_v1_1
from t5x_lite import hf, models

RTOL = 1e-5
VOCAB = 160
ENC_LEN, DEC_LEN = 100, 72  # past 64 / 32: the log-spaced relative-position buckets are used


def rel_err(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def perturb_torch(model, seed):
  """Redraw every HF weight so that a wrong mapping or a dropped scale shows in the logits.

  HF's N(0, 0.02) init leaves attention near-uniform (a dropped 1/sqrt(d) or swapped query
  and key kernels then change the logits by less than 1e-4): kernels are drawn N(0, 1/fan_in)
  instead, embeddings and relative-bias tables N(0, 1), norm scales 1 + noise, biases noise.
  """
  gen = torch.Generator().manual_seed(seed)
  normal = lambda shape, std: std * torch.randn(shape, generator=gen)
  seen = set()                                # tied weights: drawn once, as the embedding
  with torch.no_grad():
    for module in model.modules():
      for name, p in module.named_parameters(recurse=False):
        if id(p) in seen:
          continue
        seen.add(id(p))
        if isinstance(module, torch.nn.Embedding):
          value = normal(p.shape, 1.0)
        elif p.ndim == 1:                     # norm scales (weight) and biases
          value = (1.0 if name == 'weight' else 0.0) + normal(p.shape, 0.2)
        elif isinstance(module, transformers.pytorch_utils.Conv1D):
          value = normal(p.shape, p.shape[0] ** -0.5)     # GPT-2 Conv1D: [in, out]
        else:
          value = normal(p.shape, p.shape[1] ** -0.5)     # nn.Linear: [out, in]
        p.copy_(value)
  return model


def random_params(model_cfg, seed):
  """Random params for our model (shapes from an abstract `init`; no forward pass is run).

  Kernels N(0, 1/fan_in), embeddings and relative-bias tables N(0, 1), norm scales 1 + noise,
  biases noise: nothing is left at a value (0 or 1) that would hide a wrong mapping.
  """
  shapes = models.abstract_params(model_cfg)
  rng = np.random.default_rng(seed)

  def draw(path, x):
    name = jax.tree_util.keystr(path)
    scanned = "'layers'" in name                       # leading layer axis
    if 'scale' in name:
      value = 1.0 + 0.2 * rng.standard_normal(x.shape)
    elif len(x.shape) - scanned == 1:
      value = 0.2 * rng.standard_normal(x.shape)      # biases
    elif 'kernel' in name:
      fan_in = x.shape[int(scanned)]
      value = rng.standard_normal(x.shape) / np.sqrt(fan_in)
    else:
      value = rng.standard_normal(x.shape)            # embeddings, relative-bias tables
    return value.astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(shapes))


def save_torch(model, path):
  model.eval()
  model.save_pretrained(path, safe_serialization=True)
  return str(path)


def apply(model_cfg, params, batch):
  module = models.build(model_cfg)
  return np.asarray(jax.jit(module.apply)({'params': params}, batch))


def t5_inputs(seed=0, batch=2, pad=30):
  rng = np.random.default_rng(seed)
  enc = rng.integers(2, VOCAB, (batch, ENC_LEN)).astype(np.int32)
  enc[1, ENC_LEN - pad:] = 0                         # padding (T5 pad id 0)
  dec = rng.integers(1, VOCAB, (batch, DEC_LEN)).astype(np.int32)
  dec[:, 0] = 0                                      # decoder start token = 0
  ours = {'encoder_input_tokens': enc, 'decoder_input_tokens': dec,
          # only used as a mask (nonzero = valid); HF's decoder has no padding here
          'decoder_target_tokens': np.ones_like(dec)}
  theirs = dict(input_ids=torch.tensor(enc, dtype=torch.long),
                attention_mask=torch.tensor(enc != 0, dtype=torch.long),
                decoder_input_ids=torch.tensor(dec, dtype=torch.long))
  return ours, theirs


def bert_inputs(seed=0, length=40, pad=12):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, VOCAB, (2, length)).astype(np.int32)
  tokens[1, length - pad:] = 0                       # padding (BERT pad id 0)
  types = rng.integers(0, 2, (2, length)).astype(np.int32)
  ours = {'encoder_input_tokens': tokens, 'encoder_token_types': types}
  theirs = dict(input_ids=torch.tensor(tokens, dtype=torch.long),
                attention_mask=torch.tensor(tokens != 0, dtype=torch.long),
                token_type_ids=torch.tensor(types, dtype=torch.long))
  return ours, theirs, tokens != 0


def gpt_inputs(seed=0, length=40):
  tokens = np.random.default_rng(seed).integers(0, VOCAB, (2, length)).astype(np.int32)
  return ({'decoder_input_tokens': tokens},
          dict(input_ids=torch.tensor(tokens, dtype=torch.long)))


def torch_logits(model, inputs):
  with torch.no_grad():
    return model(**inputs).logits.numpy()


# ------------------------------------------------------------------------ HF -> t5x_lite
T5_V11 = dict(vocab_size=VOCAB, d_model=32, d_kv=12, d_ff=48, num_layers=2,
              num_decoder_layers=2, num_heads=4, feed_forward_proj='gated-gelu',
              tie_word_embeddings=False, dropout_rate=0.0)   # heads*d_kv = 48 != d_model 32
T5_V10 = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2,
              num_decoder_layers=2, num_heads=4, feed_forward_proj='relu',
              tie_word_embeddings=True, dropout_rate=0.0)


@pytest.mark.parametrize('name,kwargs', [('v1_1', T5_V11), ('v1_0', T5_V10)])
def test_t5_import_parity(tmp_path, name, kwargs):
  torch.manual_seed(0)
  model = perturb_torch(transformers.T5ForConditionalGeneration(
      transformers.T5Config(**kwargs)), seed=1)
  model_cfg, params = hf.load(save_torch(model, tmp_path / name))
  assert isinstance(model_cfg, ml_collections.ConfigDict)
  assert model_cfg.tie_embeddings == (name == 'v1_0')
  assert model_cfg.rescale_tied_logits == (name == 'v1_0')
  ours, theirs = t5_inputs()
  ref = torch_logits(model, theirs)
  got = apply(model_cfg, params, ours)
  assert got.shape == ref.shape == (2, DEC_LEN, VOCAB)
  assert rel_err(got, ref) <= RTOL, name


def test_mt5_and_older_t5_names_import_as_t5(tmp_path):
  """mT5 is T5 v1.1's network under another class name (model_type 'mt5'); older T5
  config.json files say T5WithLMHeadModel, some say nothing but model_type: all read as T5."""
  torch.manual_seed(0)
  mt5 = perturb_torch(transformers.MT5ForConditionalGeneration(
      transformers.MT5Config(**T5_V11)), seed=4)
  path = save_torch(mt5, tmp_path / 'mt5')
  with open(os.path.join(path, 'config.json')) as f:
    assert json.load(f)['architectures'] == ['MT5ForConditionalGeneration']
  model_cfg, params = hf.load(path)
  ours, theirs = t5_inputs(seed=5)
  assert rel_err(apply(model_cfg, params, ours), torch_logits(mt5, theirs)) <= RTOL
  for name, edit in (('old', dict(architectures=['T5WithLMHeadModel'])),
                     ('none', dict(architectures=None))):
    with open(os.path.join(path, 'config.json')) as f:
      config = json.load(f)
    config.update(edit)
    with open(os.path.join(path, 'config.json'), 'w') as f:
      json.dump(config, f)
    again_cfg, again = hf.load(path)
    assert again_cfg == model_cfg, name
    np.testing.assert_array_equal(apply(again_cfg, again, ours), apply(model_cfg, params, ours))
  # Fields left out of an mT5 config.json take MT5Config's defaults (untied, gated-gelu), as
  # transformers reads them; T5Config's (tied, relu) gave logits off by ~6 with no word.
  for archs in (['MT5ForConditionalGeneration'], None):
    with open(os.path.join(path, 'config.json')) as f:
      config = json.load(f)
    for key in ('tie_word_embeddings', 'feed_forward_proj', 'dense_act_fn', 'is_gated_act'):
      config.pop(key, None)
    config['architectures'] = archs
    with open(os.path.join(path, 'config.json'), 'w') as f:
      json.dump(config, f)
    again_cfg, again = hf.load(path)
    assert again_cfg == model_cfg, archs
    theirs_again = transformers.AutoModelForSeq2SeqLM.from_pretrained(path)
    assert rel_err(apply(again_cfg, again, ours), torch_logits(theirs_again, theirs)) <= RTOL


def test_t5_import_scanned(tmp_path):
  torch.manual_seed(0)
  model = perturb_torch(transformers.T5ForConditionalGeneration(
      transformers.T5Config(**T5_V11)), seed=2)
  model_cfg, params = hf.load(save_torch(model, tmp_path / 'm'), scan_layers=True)
  assert model_cfg.scan_layers
  assert params['encoder']['layers']['mlp']['wo']['kernel'].shape == (2, 48, 32)
  ours, theirs = t5_inputs(seed=3)
  assert rel_err(apply(model_cfg, params, ours), torch_logits(model, theirs)) <= RTOL


def test_bert_import_parity(tmp_path):
  torch.manual_seed(0)
  config = transformers.BertConfig(
      vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=0.0)
  model = perturb_torch(transformers.BertForMaskedLM(config), seed=1)
  model_cfg, params = hf.load(save_torch(model, tmp_path / 'bert'))
  ours, theirs, valid = bert_inputs()
  ref = torch_logits(model, theirs)
  got = apply(model_cfg, params, ours)
  # Padded query rows are don't-care (HF lets them attend, we mask them): compare real ones.
  assert rel_err(got[valid], ref[valid]) <= RTOL


def test_gpt2_import_parity(tmp_path):
  torch.manual_seed(0)
  config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                   n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0,
                                   attn_pdrop=0.0)
  model = perturb_torch(transformers.GPT2LMHeadModel(config), seed=1)
  model_cfg, params = hf.load(save_torch(model, tmp_path / 'gpt2'))
  ours, theirs = gpt_inputs()
  assert rel_err(apply(model_cfg, params, ours), torch_logits(model, theirs)) <= RTOL


# ------------------------------------------------------------------------ t5x_lite -> HF
def _small(cfg, **overrides):
  m = cfg.model
  m.update(dict(vocab_size=VOCAB, **overrides))
  return m


EXPORT_CASES = {
    't5_v1_1': lambda: _small(t5_v1_1.get_config('tiny'), d_model=32, d_ff=48, num_heads=4,
                              d_kv=12, num_encoder_layers=2, num_decoder_layers=2),
    't5_v1_1_scanned': lambda: _small(t5_v1_1.get_config('tiny'), d_model=32, d_ff=48,
                                      num_heads=4, d_kv=12, scan_layers=True),
    't5_v1_0': lambda: _small(t5_v1_0_base.get_config(), d_model=32, d_ff=64, num_heads=4,
                              d_kv=8, num_encoder_layers=2, num_decoder_layers=2),
    'bert': lambda: _small(bert_config.get_config('tiny'), max_position_embeddings=64),
    'gpt2': lambda: _small(gpt_config.get_config('tiny'), max_position_embeddings=64),
}


# The special-token ids a model trained here saw (t5x_lite/data/vocab.py: pad 0, EOS 1; the
# T5 decoder and decoder-only rows start from 0), as HF config fields. BERT's config has only
# pad: [MASK] is a tokenizer's id, and the MLM rows here have no CLS / SEP.
TRAINED_IDS = {
    'encoder_decoder': dict(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0),
    'encoder': dict(pad_token_id=0),
    'decoder': dict(bos_token_id=0, eos_token_id=1),
}


@pytest.mark.parametrize('case', sorted(EXPORT_CASES))
def test_export_parity(tmp_path, case):
  model_cfg = EXPORT_CASES[case]()
  family = model_cfg.family
  if family == 'encoder_decoder':
    ours, theirs = t5_inputs(seed=5)
    cls, valid = transformers.T5ForConditionalGeneration, None
  elif family == 'encoder':
    ours, theirs, valid = bert_inputs(seed=5)
    cls = transformers.BertForMaskedLM
  else:
    (ours, theirs), valid = gpt_inputs(seed=5), None
    cls = transformers.GPT2LMHeadModel
  params = random_params(model_cfg, seed=7)
  got = apply(model_cfg, params, ours)

  out = hf.save(model_cfg, {'params': params}, str(tmp_path / case))
  model, info = cls.from_pretrained(out, output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  assert not info['mismatched_keys'], info
  for field, want in TRAINED_IDS[family].items():
    assert getattr(model.config, field) == want, (case, field)
  ref = torch_logits(model.eval(), theirs)
  if valid is not None:
    got, ref = got[valid], ref[valid]
  assert rel_err(got, ref) <= RTOL, case


def test_round_trip_is_exact(tmp_path):
  torch.manual_seed(0)
  model = perturb_torch(transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)), seed=3)
  src = save_torch(model, tmp_path / 'src')
  model_cfg, params = hf.load(src)
  hf.save(model_cfg, params, str(tmp_path / 'dst'))
  a = safetensors.numpy.load_file(os.path.join(src, 'model.safetensors'))
  b = safetensors.numpy.load_file(str(tmp_path / 'dst' / 'model.safetensors'))
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ------------------------------------------------------------------------------ bad inputs
@pytest.fixture(scope='module')
def gpt2_dir(tmp_path_factory):
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=4, n_positions=64))
  return save_torch(model, tmp_path_factory.mktemp('gpt2'))


def _copy_config(src, dst):
  os.makedirs(dst, exist_ok=True)
  with open(os.path.join(src, 'config.json')) as f:
    text = f.read()
  with open(os.path.join(dst, 'config.json'), 'w') as f:
    f.write(text)


def test_unsupported_architecture(tmp_path):
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump({'architectures': ['LlamaForCausalLM'], 'model_type': 'llama'}, f)
  with pytest.raises(ValueError, match='LlamaForCausalLM') as e:
    hf.load(str(tmp_path))
  for arch in ('T5ForConditionalGeneration', 'BertForMaskedLM', 'GPT2LMHeadModel'):
    assert arch in str(e.value)
  with open(tmp_path / 'config.json', 'w') as f:   # no architectures: placed by model_type
    json.dump({'model_type': 'umt5'}, f)
  with pytest.raises(ValueError, match="model_type 'umt5'"):
    hf.load(str(tmp_path))


def test_missing_config(tmp_path):
  with pytest.raises(ValueError, match='config.json'):
    hf.load(str(tmp_path))


def test_missing_safetensors(tmp_path, gpt2_dir):
  _copy_config(gpt2_dir, tmp_path)
  with pytest.raises(ValueError, match='model.safetensors'):
    hf.load(str(tmp_path))


def test_misshapen_tensor(tmp_path, gpt2_dir):
  _copy_config(gpt2_dir, tmp_path)
  tensors = safetensors.numpy.load_file(os.path.join(gpt2_dir, 'model.safetensors'))
  tensors['transformer.h.0.mlp.c_fc.weight'] = np.zeros((32, 100), np.float32)
  safetensors.numpy.save_file(tensors, str(tmp_path / 'model.safetensors'),
                              metadata={'format': 'pt'})
  with pytest.raises(ValueError, match=r'transformer\.h\.0\.mlp\.c_fc\.weight') as e:
    hf.load(str(tmp_path))
  assert '[32, 100]' in str(e.value) and '[32, 128]' in str(e.value)


def test_missing_tensor(tmp_path, gpt2_dir):
  _copy_config(gpt2_dir, tmp_path)
  tensors = safetensors.numpy.load_file(os.path.join(gpt2_dir, 'model.safetensors'))
  del tensors['transformer.h.0.attn.c_attn.bias']
  safetensors.numpy.save_file(tensors, str(tmp_path / 'model.safetensors'),
                              metadata={'format': 'pt'})
  with pytest.raises(ValueError, match=r'transformer\.h\.0\.attn\.c_attn\.bias'):
    hf.load(str(tmp_path))


def test_save_rejects_unexportable_config(tmp_path):
  """The error names the first field the family's architecture cannot take."""
  from configs import t5_decoder_only
  model_cfg = _small(t5_decoder_only.get_config('tiny'))
  with pytest.raises(ValueError, match=r"config.model.norm='rms' has no place in a "
                                       r"GPT2LMHeadModel \(it needs norm = 'layer'\)"):
    hf.save(model_cfg, {}, str(tmp_path))
  bert = bert_config.get_config('tiny')
  for field, value, needs in (('d_kv', 7, 'd_kv = d_model / num_heads'),
                              ('type_vocab_size', 0, 'type_vocab_size > 0')):
    cfg = bert.copy_and_resolve_references()
    cfg.model[field] = value
    with pytest.raises(ValueError, match=rf'config.model.{field}={value} has no place in a '
                                         rf'BertForMaskedLM \(it needs {needs}'):
      hf.save(cfg.model, {}, str(tmp_path))


def test_error_messages_are_one_sentence(tmp_path, gpt2_dir):
  _copy_config(gpt2_dir, tmp_path)
  with pytest.raises(ValueError) as e:
    hf.load(str(tmp_path))
  msg = str(e.value)
  assert msg.count('. ') == 0 and msg.endswith('.'), msg
  assert 'GPT2LMHeadModel' in msg and 'model.safetensors' in msg, msg


def test_bfloat16_and_sharded_checkpoints(tmp_path):
  torch.manual_seed(0)
  model = perturb_torch(transformers.GPT2LMHeadModel(transformers.GPT2Config(
      vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64)), seed=4)
  model = model.to(torch.bfloat16)
  # A tiny shard size forces model.safetensors.index.json + several shards.
  model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size='20KB')
  assert (tmp_path / 'model.safetensors.index.json').exists()
  _, params = hf.load(str(tmp_path))
  ref = model.transformer.h[1].mlp.c_fc.weight.float().detach().numpy()
  np.testing.assert_array_equal(params['decoder']['layers_1']['mlp']['wi']['kernel'], ref)
  ref = model.transformer.wte.weight.float().detach().numpy()
  np.testing.assert_array_equal(params['token_embedder']['embedding'], ref)


def test_recipe_configs_keep_the_reference_models_dropout_and_context():
  """The pretraining recipes the config files name, against transformers' defaults for the
  same models: BERT-base (dropout 0.1 on every layer; the config had none), T5 v1.0 (dropout
  0.1; v1.1 turned it off), GPT-2 small (1024-token rows, its position table; the config
  trained on the base's 114-token rows)."""
  bert, reference = bert_config.get_config('base'), transformers.BertConfig()
  assert bert.model.dropout_rate == reference.hidden_dropout_prob == (
      reference.attention_probs_dropout_prob)
  assert t5_v1_0_base.get_config().model.dropout_rate == transformers.T5Config().dropout_rate
  assert t5_v1_1.get_config('small').model.dropout_rate == 0.0
  gpt = gpt_config.get_config('small')
  assert gpt.data.targets_length == gpt.model.max_position_embeddings == (
      transformers.GPT2Config().n_positions)
