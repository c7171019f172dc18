"""Hugging Face import / export beyond tests/test_hf_parity.py: config variants HF honours
(untied GPT-2 / BERT heads, T5's dense_act_fn / is_gated_act, BERT's is_decoder), tensors
a checkpoint holds that the mapping does not place, malformed directories (one ValueError
naming the file or field, and a non-zero one-line exit from `python -m t5x_lite.convert`),
and greedy decoding of imported weights against HF `generate`."""
import json
import os
import shutil
import subprocess
import sys

os.environ.setdefault('USE_TF', '0')

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from test_hf_parity import (VOCAB, apply, bert_inputs, gpt_inputs, perturb_torch, rel_err,
                            save_torch, t5_inputs, torch_logits)
from t5x_lite import checkpoints, conversion, decoding, hf, models
import tiny_run

RTOL = 1e-5
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T5 = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
          num_heads=4, dropout_rate=0.0, decoder_start_token_id=0)
BERT = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0)
GPT2 = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0,
            embd_pdrop=0.0, attn_pdrop=0.0)


def _tensors(d):
  return safetensors.numpy.load_file(os.path.join(d, 'model.safetensors'))


def _rewrite(d, tensors):
  safetensors.numpy.save_file(tensors, os.path.join(d, 'model.safetensors'),
                              metadata={'format': 'pt'})


def _edit_config(d, **fields):
  path = os.path.join(d, 'config.json')
  with open(path) as f:
    cfg = json.load(f)
  cfg.update(fields)
  with open(path, 'w') as f:
    json.dump(cfg, f)


def _import_export_round_trip(model, src, tmp_path, inputs, valid=None):
  """Import parity with the torch model, export loads cleanly with equal logits, and the
  exported tensors are the source's, bit for bit."""
  model_cfg, params = hf.load(src)
  ours, theirs = inputs
  ref = torch_logits(model.eval(), theirs)
  got = apply(model_cfg, params, ours)
  if valid is not None:
    got, ref = got[valid], ref[valid]
  assert rel_err(got, ref) <= RTOL
  out = hf.save(model_cfg, params, str(tmp_path / 'back'))
  back, info = type(model).from_pretrained(out, output_loading_info=True)
  assert not any(info.values()), info
  again = torch_logits(back.eval(), theirs)
  if valid is not None:
    again = again[valid]
  assert rel_err(again, ref) <= RTOL
  a, b = _tensors(src), _tensors(out)
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  return model_cfg


# ------------------------------------------------------------------ untied output heads
def test_untied_gpt2_head_is_imported_and_exported(tmp_path):
  """GPT2LMHeadModel with tie_word_embeddings=false has its own lm_head.weight: it was
  silently dropped (logits from wte: relative error ~8)."""
  torch.manual_seed(0)
  model = perturb_torch(transformers.GPT2LMHeadModel(transformers.GPT2Config(
      **GPT2, tie_word_embeddings=False)), seed=1)
  src = save_torch(model, tmp_path / 'src')
  assert 'lm_head.weight' in _tensors(src)
  cfg = _import_export_round_trip(model, src, tmp_path, gpt_inputs())
  assert not cfg.tie_embeddings


def test_untied_bert_decoder_is_imported_and_exported(tmp_path):
  torch.manual_seed(0)
  model = perturb_torch(transformers.BertForMaskedLM(transformers.BertConfig(
      **BERT, tie_word_embeddings=False)), seed=1)
  src = save_torch(model, tmp_path / 'src')
  assert 'cls.predictions.decoder.weight' in _tensors(src)
  ours, theirs, valid = bert_inputs()
  cfg = _import_export_round_trip(model, src, tmp_path, (ours, theirs), valid)
  assert not cfg.tie_embeddings


def test_gpt2_without_transformer_prefix_keeps_untied_head(tmp_path):
  """The original GPT-2 files name tensors without `transformer.`; lm_head stays lm_head."""
  torch.manual_seed(0)
  model = perturb_torch(transformers.GPT2LMHeadModel(transformers.GPT2Config(
      **GPT2, tie_word_embeddings=False)), seed=2)
  src = save_torch(model, tmp_path / 'src')
  tensors = {k.replace('transformer.', '', 1): v for k, v in _tensors(src).items()}
  _rewrite(src, tensors)
  model_cfg, params = hf.load(src)
  ours, theirs = gpt_inputs(seed=1)
  assert rel_err(apply(model_cfg, params, ours), torch_logits(model.eval(), theirs)) <= RTOL


# ---------------------------------------------------------- config fields HF honours
@pytest.mark.parametrize('proj,act,gated', [
    ('gated-gelu', 'relu', True),      # dense_act_fn overrides the proj's activation
    ('gated-gelu', 'gelu', True),      # exact GELU, gated: no feed_forward_proj spelling
    ('relu', 'gelu_new', False),
])
def test_t5_dense_act_fn_overrides_feed_forward_proj(tmp_path, proj, act, gated):
  """transformers' T5Config applies config.json's dense_act_fn / is_gated_act after deriving
  them from feed_forward_proj: the import must build what HF runs, and export it back."""
  config = transformers.T5Config(**T5, feed_forward_proj=proj, tie_word_embeddings=False)
  config.dense_act_fn, config.is_gated_act = act, gated
  torch.manual_seed(0)
  model = perturb_torch(transformers.T5ForConditionalGeneration(config), seed=1)
  src = save_torch(model, tmp_path / 'src')
  with open(os.path.join(src, 'config.json')) as f:
    assert json.load(f)['dense_act_fn'] == act
  _import_export_round_trip(model, src, tmp_path, t5_inputs())


def test_t5_is_gated_act_false_overrides_gated_proj(tmp_path):
  config = transformers.T5Config(**T5, feed_forward_proj='gated-gelu')
  config.is_gated_act = False
  torch.manual_seed(0)
  model = perturb_torch(transformers.T5ForConditionalGeneration(config), seed=1)
  src = save_torch(model, tmp_path / 'src')
  assert 'encoder.block.0.layer.1.DenseReluDense.wi.weight' in _tensors(src)
  model_cfg = _import_export_round_trip(model, src, tmp_path, t5_inputs())
  assert tuple(model_cfg.mlp_activations) == ('gelu',)


def test_t5_unknown_dense_act_fn_is_refused(tmp_path):
  torch.manual_seed(0)
  src = save_torch(transformers.T5ForConditionalGeneration(transformers.T5Config(**T5)),
                   tmp_path / 'src')
  _edit_config(src, dense_act_fn='quick_gelu')
  with pytest.raises(ValueError, match="dense_act_fn='quick_gelu'"):
    hf.load(src)
  # Without dense_act_fn the activation comes from feed_forward_proj: quoted as written.
  _edit_config(src, dense_act_fn=None, feed_forward_proj='gated-gelu_fast')
  with pytest.raises(ValueError, match="feed_forward_proj='gated-gelu_fast' is not supported"):
    hf.load(src)


@pytest.mark.parametrize('field', ['is_decoder', 'add_cross_attention'])
def test_bert_decoder_variants_are_refused(tmp_path, field):
  """BertForMaskedLM with is_decoder=true attends causally in HF (relative error ~0.9 when
  imported as a bidirectional encoder); with add_cross_attention it belongs to a seq2seq."""
  torch.manual_seed(0)
  src = save_torch(transformers.BertForMaskedLM(transformers.BertConfig(**BERT)),
                   tmp_path / 'src')
  _edit_config(src, **{field: True})
  with pytest.raises(ValueError, match=f'{field}=true'):
    hf.load(src)


def test_gpt2_cross_attention_is_refused(tmp_path):
  torch.manual_seed(0)
  src = save_torch(transformers.GPT2LMHeadModel(transformers.GPT2Config(
      **GPT2, add_cross_attention=True)), tmp_path / 'src')
  with pytest.raises(ValueError, match='add_cross_attention=true'):
    hf.load(src)


# -------------------------------------------------- tensors the mapping does not place
def test_tensor_that_no_param_takes_is_refused(tmp_path):
  """A checkpoint with more layers than its config.json says (or any tensor no param takes)
  is refused naming the tensor, not truncated silently."""
  torch.manual_seed(0)
  src = save_torch(transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2)),
                   tmp_path / 'src')
  _edit_config(src, n_layer=1)
  with pytest.raises(ValueError, match=r'transformer\.h\.1\.'):
    hf.load(src)


def test_known_extra_tensors_are_accepted(tmp_path):
  """What HF itself ignores: GPT-2's attention-mask buffers, BERT's pooler and NSP head
  (BertForPreTraining files labelled BertForMaskedLM), tied copies, T5's unused
  cross-attention bias of old checkpoints."""
  torch.manual_seed(0)
  g = save_torch(transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2)), tmp_path / 'g')
  t = _tensors(g)
  t['transformer.h.0.attn.bias'] = np.tril(np.ones((1, 1, 64, 64), np.float32))
  t['transformer.h.0.attn.masked_bias'] = np.array(-1e4, np.float32)
  t['lm_head.weight'] = t['transformer.wte.weight']
  _rewrite(g, t)
  hf.load(g)
  b = tmp_path / 'b'
  save_torch(transformers.BertForPreTraining(transformers.BertConfig(**BERT)), b)
  _edit_config(str(b), architectures=['BertForMaskedLM'])  # as bert-base-uncased's
  t = _tensors(str(b))
  assert 'bert.pooler.dense.weight' in t and 'cls.seq_relationship.weight' in t
  t['bert.embeddings.position_ids'] = np.arange(64)[None].astype(np.int64)
  t['cls.predictions.decoder.weight'] = t['bert.embeddings.word_embeddings.weight']
  _rewrite(str(b), t)
  hf.load(str(b))
  s = save_torch(transformers.T5ForConditionalGeneration(transformers.T5Config(**T5)),
                 tmp_path / 't5')
  t = _tensors(s)
  t['decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight'] = np.zeros(
      (32, 4), np.float32)
  t['lm_head.weight'] = t['encoder.embed_tokens.weight'] = t['shared.weight']
  _rewrite(s, t)
  hf.load(s)


# ------------------------------------------------------------------ malformed directories
@pytest.fixture(scope='module')
def sharded_dir(tmp_path_factory):
  torch.manual_seed(0)
  path = tmp_path_factory.mktemp('sharded')
  transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2)).save_pretrained(
      path, safe_serialization=True, max_shard_size='20KB')
  assert (path / 'model.safetensors.index.json').exists()
  return str(path)


def _copy(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


@pytest.mark.parametrize('text,why', [('{"metadata": {}}', 'weight_map'),
                                      ('{not json', 'not valid JSON')])
def test_malformed_shard_index(tmp_path, sharded_dir, text, why):
  d = _copy(sharded_dir, tmp_path / 'd')
  with open(os.path.join(d, 'model.safetensors.index.json'), 'w') as f:
    f.write(text)
  with pytest.raises(ValueError, match='model.safetensors.index.json') as e:
    hf.load(d)
  assert why in str(e.value)


def test_index_missing_a_tensor_names_the_tensor(tmp_path, sharded_dir):
  d = _copy(sharded_dir, tmp_path / 'd')
  path = os.path.join(d, 'model.safetensors.index.json')
  with open(path) as f:
    index = json.load(f)
  shard = sorted(set(index['weight_map'].values()))[-1]
  tensors = safetensors.numpy.load_file(os.path.join(d, shard))
  gone = sorted(tensors)[0]
  del tensors[gone]
  safetensors.numpy.save_file(tensors, os.path.join(d, shard), metadata={'format': 'pt'})
  with pytest.raises(ValueError, match=gone.replace('.', r'\.')):
    hf.load(d)


def test_architectures_given_as_a_string(tmp_path, sharded_dir):
  d = _copy(sharded_dir, tmp_path / 'd')
  _edit_config(d, architectures='GPT2LMHeadModel')
  hf.load(d)
  _edit_config(d, architectures='GPT2Model')
  with pytest.raises(ValueError, match='GPT2Model,'):
    hf.load(d)


def test_config_field_of_wrong_type(tmp_path, sharded_dir):
  d = _copy(sharded_dir, tmp_path / 'd')
  _edit_config(d, n_layer='2')
  with pytest.raises(ValueError, match='n_layer'):
    hf.load(d)
  _edit_config(d, n_layer=2, layer_norm_epsilon='tiny')
  with pytest.raises(ValueError, match='layer_norm_epsilon'):
    hf.load(d)


@pytest.mark.parametrize('edit,message', [
    (dict(layer_norm_epsilon=0), 'config.json layer_norm_epsilon=0 is invalid for '
                                 'GPT2LMHeadModel: must be > 0 and finite.'),
    (dict(resid_pdrop=1.0), 'config.json resid_pdrop=1.0 is invalid for GPT2LMHeadModel: '
                            'must be in [0, 1).'),
])
def test_an_invalid_config_json_value_is_named_as_config_json_names_it(tmp_path, sharded_dir,
                                                                        edit, message):
  """The model config's own checks, in config.json's terms: the user wrote no config.model."""
  d = _copy(sharded_dir, tmp_path / 'd')
  _edit_config(d, **edit)
  with pytest.raises(ValueError) as e:
    hf.load(d)
  assert str(e.value) == message
  cfg = tiny_run.tiny_config('gpt')
  cfg.init_from = f'hf:{d}'
  with pytest.raises(ValueError) as e:
    checkpoints.check_init_source(cfg)
  assert str(e.value) == f'config.init_from=hf:{d}: {message}'


@pytest.mark.parametrize('init_from', ['hf:', 'hf:{d}/absent'])
def test_init_from_hf_without_a_directory_names_the_field(tmp_path, monkeypatch, init_from):
  """'hf:' alone read the working directory's config.json (a Hugging Face model's, when run
  inside one: that model, unsaid)."""
  monkeypatch.chdir(tmp_path)
  cfg = tiny_run.tiny_config('gpt')
  cfg.init_from = init_from.format(d=tmp_path)
  with pytest.raises(ValueError) as e:
    checkpoints.check_init_source(cfg)
  assert str(e.value).startswith(f'config.init_from={cfg.init_from}: ') and \
      'is not a directory' in str(e.value)


def test_pytorch_bin_only_directory_names_the_bin(tmp_path):
  torch.manual_seed(0)
  transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2)).save_pretrained(
      tmp_path, safe_serialization=False)
  assert (tmp_path / 'pytorch_model.bin').exists()
  with pytest.raises(ValueError, match='pytorch_model.bin') as e:
    hf.load(str(tmp_path))
  assert 'save_pretrained' in str(e.value)


def test_convert_cli_exits_with_one_line_on_bad_index(tmp_path, sharded_dir):
  d = _copy(sharded_dir, tmp_path / 'd')
  with open(os.path.join(d, 'model.safetensors.index.json'), 'w') as f:
    f.write('{"metadata": {}}')
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
  r = subprocess.run([sys.executable, '-m', 't5x_lite.convert', '--direction=hf_to_t5x',
                      f'--input={d}', f'--output={tmp_path / "out"}'], cwd=ROOT, env=env,
                     capture_output=True, text=True, timeout=120)
  assert r.returncode != 0
  assert 'Traceback' not in r.stderr, r.stderr[-2000:]
  assert 'weight_map' in r.stderr.strip().splitlines()[-1]
  assert not (tmp_path / 'out').exists()


# ------------------------------------------------------------------ export variants
def test_t5_gated_exact_gelu_exports(tmp_path):
  """('gelu_exact', 'linear') has no feed_forward_proj spelling; dense_act_fn carries it."""
  from configs import t5_v1_1
  from test_hf_parity import random_params
  m = t5_v1_1.get_config('tiny').model
  m.update(dict(vocab_size=VOCAB, d_model=32, d_ff=48, num_heads=4, d_kv=12,
                num_encoder_layers=2, num_decoder_layers=2,
                mlp_activations=('gelu_exact', 'linear')))
  params = random_params(m, seed=3)
  ours, theirs = t5_inputs(seed=4)
  got = apply(m, params, ours)
  out = hf.save(m, params, str(tmp_path / 'hf'))
  model, info = transformers.T5ForConditionalGeneration.from_pretrained(
      out, output_loading_info=True)
  assert not any(info.values()), info
  assert rel_err(got, torch_logits(model.eval(), theirs)) <= RTOL
  back, _ = hf.load(out)
  assert tuple(back.mlp_activations) == ('gelu_exact', 'linear')


# ------------------------------------------------------------------ greedy decoding
@pytest.mark.parametrize('kwargs', [dict(feed_forward_proj='gated-gelu',
                                         tie_word_embeddings=False),
                                    dict(feed_forward_proj='relu', num_decoder_layers=3)])
def test_t5_greedy_decode_matches_hf_generate(tmp_path, kwargs):
  torch.manual_seed(0)
  model = perturb_torch(transformers.T5ForConditionalGeneration(
      transformers.T5Config(**{**T5, **kwargs})), seed=5).eval()
  model_cfg, params = hf.load(save_torch(model, tmp_path / 'm'))
  rng = np.random.default_rng(0)
  enc = rng.integers(2, VOCAB, (3, 12)).astype(np.int32)
  enc[1, 7:] = 0
  ours = np.asarray(decoding.encoder_decoder_generate(models.build(model_cfg), params, enc, 8))
  theirs = model.generate(torch.tensor(enc, dtype=torch.long),
                          attention_mask=torch.tensor(enc != 0, dtype=torch.long),
                          max_new_tokens=8, do_sample=False, num_beams=1,
                          use_cache=False)[:, 1:].numpy()  # HF's cache: equal stacks only
  for row, ref in zip(ours, theirs):  # HF pads a finished row after EOS with pad 0, as we do
    np.testing.assert_array_equal(row[:len(ref)], ref)


def test_gpt2_greedy_decode_matches_hf_generate(tmp_path):
  torch.manual_seed(0)
  model = perturb_torch(transformers.GPT2LMHeadModel(transformers.GPT2Config(
      **GPT2, tie_word_embeddings=False)), seed=6).eval()
  model_cfg, params = hf.load(save_torch(model, tmp_path / 'm'))
  prompts = np.random.default_rng(1).integers(2, VOCAB, (3, 5)).astype(np.int32)
  ours = np.asarray(decoding.decoder_only_generate(models.build(model_cfg), params, prompts, 8))
  theirs = model.generate(torch.tensor(prompts, dtype=torch.long),
                          attention_mask=torch.ones(prompts.shape, dtype=torch.long),
                          max_new_tokens=8, do_sample=False, eos_token_id=None,
                          pad_token_id=0)[:, 5:].numpy()
  np.testing.assert_array_equal(ours, theirs)


# ------------------------------------------------------------------ conversion directories
def test_converted_untied_gpt2_round_trips_through_orbax(tmp_path):
  torch.manual_seed(0)
  model = perturb_torch(transformers.GPT2LMHeadModel(transformers.GPT2Config(
      **GPT2, tie_word_embeddings=False)), seed=7)
  src = save_torch(model, tmp_path / 'src')
  ours = conversion.hf_to_t5x(src, str(tmp_path / 'ours'), scan_layers=True)
  out = conversion.t5x_to_hf(ours, str(tmp_path / 'back'))
  a, b = _tensors(src), _tensors(out)
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _zero_workdir(cfg, path, edit=None) -> str:
  """A directory laid out as a training workdir (config.json + params checkpoint) holding
  zero params of `cfg.model` (then `edit(params)`, if given): what t5x_to_hf reads."""
  import flax.linen as nn
  import orbax.checkpoint as ocp
  params = jax.tree.map(lambda x: np.zeros(x.shape, np.float32),
                        nn.unbox(models.abstract_params(cfg.model)))
  if edit:
    edit(params)
  ocp.PyTreeCheckpointer().save(str(path), {'params': params})
  with open(os.path.join(str(path), 'config.json'), 'w') as f:
    f.write(cfg.to_json_best_effort())
  return str(path)


def test_t5_workdir_export_writes_a_tokenizer_hf_can_use(tmp_path):
  """A T5 trained here exports its SentencePiece vocabulary as T5Tokenizer files: HF's
  tokenizer (slow and fast) then gives the ids this codebase's pipeline gives (pieces, EOS 1,
  <extra_id_k> = vocab size - 1 - k) and decodes them back."""
  from configs import t5_v1_1
  from t5x_lite.data.vocab import Vocabulary
  cfg = t5_v1_1.get_config('tiny')
  cfg.model.update(dict(vocab_size=1152, d_model=32, d_ff=64, num_heads=2, d_kv=16,
                        num_encoder_layers=1, num_decoder_layers=1))
  workdir = _zero_workdir(cfg, tmp_path / 'workdir')
  out = conversion.t5x_to_hf(workdir, str(tmp_path / 'hf'))
  vocab = Vocabulary(cfg.data.vocab, cfg.data.extra_ids)
  texts = ['The Thane of Cawdor <extra_id_0> began', 'reverse: king queen lord',
           'Hello, world!  <extra_id_5>x']
  for use_fast in (False, True):
    tok = transformers.AutoTokenizer.from_pretrained(out, use_fast=use_fast)
    assert tok.convert_tokens_to_ids('<extra_id_0>') == vocab.sentinel(0)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    for text in texts:
      ids = vocab.encode(text) + [vocab.eos_id]
      assert tok(text).input_ids == ids, (use_fast, text)
      if not use_fast:  # the fast one decodes '<extra_id_0>' without the space before it
        assert tok.decode(ids[:-1]) == vocab.decode(ids[:-1]), text


@pytest.mark.parametrize('objective', ['causal_lm', 'prefix_lm', 'text_to_text'])
def test_exporting_a_prefix_lm_decoder_warns_that_gpt2_attends_causally(tmp_path, capsys,
                                                                        objective):
  from configs import gpt
  cfg = gpt.get_config('tiny')
  cfg.model.update(dict(vocab_size=160, d_model=32, d_ff=64, num_heads=2, d_kv=16,
                        max_position_embeddings=64))
  cfg.data.objective = objective
  workdir = _zero_workdir(cfg, tmp_path / 'workdir')
  conversion.t5x_to_hf(workdir, str(tmp_path / 'hf'))
  err = capsys.readouterr().err
  if objective == 'causal_lm':
    assert 'warning' not in err
  else:
    assert (f"warning: {workdir} was trained as a prefix LM (data.objective='{objective}'"
            in err and 'GPT2LMHeadModel attends causally everywhere' in err), err


@pytest.mark.parametrize('family', ['bert', 'gpt'])
def test_bert_and_gpt_workdir_exports_write_a_tokenizer_hf_can_use(tmp_path, family):
  """BERT and GPT-2 models trained here export their SentencePiece vocabulary too: HF's
  tokenizer gives the pipeline's ids (pieces + EOS, as MLM and causal LM documents end), its
  mask token is the MLM objective's, and BOS 0 + the pieces is infer's decoder-only prompt."""
  from configs import bert, gpt
  from t5x_lite import infer
  from t5x_lite.data.vocab import Vocabulary
  cfg = (bert if family == 'bert' else gpt).get_config('tiny')
  cfg.model.update(dict(vocab_size=1152, d_model=32, d_ff=64, num_heads=2, d_kv=16,
                        max_position_embeddings=64))
  workdir = _zero_workdir(cfg, tmp_path / 'workdir')
  out = conversion.t5x_to_hf(workdir, str(tmp_path / 'hf'))
  vocab = Vocabulary(cfg.data.vocab, cfg.data.extra_ids)
  text = 'The Thane of Cawdor lives, a prosperous gentleman.'
  for use_fast in (False, True):
    tok = transformers.AutoTokenizer.from_pretrained(out, use_fast=use_fast)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok(text).input_ids == vocab.encode(text) + [vocab.eos_id], use_fast
    assert tok.model_max_length == 64
    if family == 'bert':
      assert tok.mask_token_id == vocab.mask_id is not None
      masked = tok(f'The {tok.mask_token} of Cawdor').input_ids
      assert masked.count(vocab.mask_id) == 1
    else:
      prompt = [0] + tok(text, add_special_tokens=False).input_ids
      ids, _ = infer.tokenize(vocab, text, cfg.data.inputs_length, eos=False)
      assert prompt == [0] + ids, use_fast


def test_export_without_the_workdirs_vocabulary_warns(tmp_path, capsys):
  """A workdir whose config names a relative data.vocab that does not resolve from here: the
  weights are exported, and a warning says no tokenizer went with them, and why."""
  from configs import gpt
  cfg = gpt.get_config('tiny')
  cfg.model.update(dict(vocab_size=160, d_model=32, d_ff=64, num_heads=2, d_kv=16,
                        max_position_embeddings=64))
  cfg.data.vocab = 'trained_elsewhere/sp.model'
  out = conversion.t5x_to_hf(_zero_workdir(cfg, tmp_path / 'workdir'), str(tmp_path / 'hf'))
  assert sorted(os.listdir(out)) == ['config.json', 'model.safetensors']
  err = capsys.readouterr().err
  assert ("warning: no tokenizer written: the saved config's data.vocab="
          "'trained_elsewhere/sp.model' is not a file") in err, err


def test_swapped_directions_name_the_one_that_reads_the_directory(tmp_path, sharded_dir):
  """An HF directory given where a t5x_lite one belongs (t5x_to_hf, init_from without hf:)
  and the other way round: the error says which reads it."""
  import flax.linen as nn
  from t5x_lite import checkpoints
  ours = conversion.hf_to_t5x(sharded_dir, str(tmp_path / 'ours'))
  with pytest.raises(ValueError, match='is a t5x_lite directory.*--direction=t5x_to_hf'):
    hf.load(ours)
  with pytest.raises(ValueError, match='is a Hugging Face model directory.*hf_to_t5x'):
    conversion.t5x_to_hf(sharded_dir, str(tmp_path / 'back'))
  model_cfg, _ = conversion.load_t5x(ours)
  with pytest.raises(ValueError, match=f'init_from=hf:{sharded_dir}'):
    checkpoints.load_params(sharded_dir, nn.unbox(models.abstract_params(model_cfg)))


@pytest.mark.parametrize('damage', ['flip', 'delete'])
def test_a_damaged_converted_directory_is_refused_by_file(tmp_path, sharded_dir, damage):
  """hf_to_t5x records its files' sizes and CRC-32s: a changed or missing file is named,
  not read as weights (or as a config mismatch)."""
  ours = conversion.hf_to_t5x(sharded_dir, str(tmp_path / 'ours'))
  conversion.load_t5x(ours)  # intact
  files = [os.path.join(r, n) for r, _, ns in os.walk(ours) for n in ns]
  if damage == 'flip':
    path = max((f for f in files if os.sep + 'd' + os.sep in f), key=os.path.getsize)
    with open(path, 'r+b') as f:
      byte = f.read(1)
      f.seek(0)
      f.write(bytes([byte[0] ^ 0xFF]))
    why = 'fails its CRC-32 check'
  else:
    os.remove(next(f for f in files if f.endswith('manifest.ocdbt')))
    why = 'manifest.ocdbt is missing'
  with pytest.raises(ValueError, match=f'checkpoint is unusable .*{why}'):
    conversion.load_t5x(ours)


def test_weights_saved_by_tensorflow_are_refused_by_name(tmp_path):
  torch.manual_seed(0)
  d = save_torch(transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2)), tmp_path)
  safetensors.numpy.save_file(_tensors(d), os.path.join(d, 'model.safetensors'),
                              metadata={'format': 'tf'})
  with pytest.raises(ValueError, match="saved by a 'tf' model class"):
    hf.load(d)


def test_tokenizer_mismatch_of_an_hf_directory(tmp_path):
  """For config.init_from=hf:DIR: the HF directory's tokenizer against config.data.vocab."""
  from configs import t5_v1_1
  data = t5_v1_1.get_config('tiny').data
  d = tmp_path / 'hf'
  d.mkdir()
  assert conversion.tokenizer_mismatch(str(d), data) == ''          # nothing to compare
  assert conversion.write_tokenizer(data, str(d))
  assert conversion.tokenizer_mismatch(str(d), data) == ''          # the same SentencePiece
  other = dict(data, extra_ids=10)
  assert 'extra_ids=100' in conversion.tokenizer_mismatch(str(d), other)
  (d / 'spiece.model').write_bytes(b'other')
  assert 'spiece.model' in conversion.tokenizer_mismatch(str(d), data)
  g = tmp_path / 'gpt2'
  g.mkdir()
  (g / 'vocab.json').write_text('{}')
  assert 'vocab.json' in conversion.tokenizer_mismatch(str(g), data)


def test_hf_generate_never_picks_an_id_the_exported_tokenizer_lacks(tmp_path):
  """vocab_size 1152 pads the 1100 ids of the shipped vocabulary; here id 1120 has the top
  logit and id 5 the next. infer decodes id 5 (the padding ids are masked); HF greedy
  `generate` on the export must too, not the id that decodes to nothing."""
  from configs import gpt
  cfg = gpt.get_config('tiny')
  cfg.model.update(dict(vocab_size=1152, d_model=32, d_ff=64, num_heads=2, d_kv=16,
                        max_position_embeddings=64))

  def edit(params):  # zero blocks: every position's final hidden state is the norm's bias e0
    e0 = np.eye(32, dtype=np.float32)[0]
    params['decoder']['final_norm']['bias'][:] = e0
    params['token_embedder']['embedding'][1120] = 2 * e0  # tied: logit 2
    params['token_embedder']['embedding'][5] = e0         # logit 1; the rest 0
  out = conversion.t5x_to_hf(_zero_workdir(cfg, tmp_path / 'workdir', edit),
                             str(tmp_path / 'hf'))
  with open(os.path.join(out, 'generation_config.json')) as f:
    generation = json.load(f)
  assert generation['suppress_tokens'] == list(range(1100, 1152))
  assert (generation['bos_token_id'], generation['eos_token_id']) == (0, 1)
  model = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
  got = model.generate(torch.zeros((1, 1), dtype=torch.long), max_new_tokens=3,
                       do_sample=False)
  assert got[0, 1:].tolist() == [5, 5, 5]
  beams = model.generate(torch.zeros((1, 1), dtype=torch.long), max_new_tokens=3,
                         num_beams=2, do_sample=False)
  assert max(beams[0].tolist()) < 1100


def test_a_failed_export_leaves_no_output_and_a_rerun_works(tmp_path):
  """data.vocab names a file that is not a SentencePiece model: the error comes after the
  weights are written, and no output directory is left (a rerun would refuse a non-empty
  one); with the vocabulary fixed the same command writes it."""
  from configs import gpt
  cfg = gpt.get_config('tiny')
  cfg.model.update(dict(vocab_size=1152, d_model=32, d_ff=64, num_heads=2, d_kv=16,
                        max_position_embeddings=64))
  good = cfg.data.vocab
  cfg.data.vocab = str(tmp_path / 'not_a_model.model')
  (tmp_path / 'not_a_model.model').write_text('version https://git-lfs.github.com/spec/v1\n')
  workdir = _zero_workdir(cfg, tmp_path / 'workdir')
  out = tmp_path / 'exports' / 'hf'
  with pytest.raises(ValueError, match='not a SentencePiece model'):
    conversion.t5x_to_hf(workdir, str(out))
  assert os.listdir(tmp_path / 'exports') == []  # neither the output nor its staging
  shutil.copyfile(good, tmp_path / 'not_a_model.model')
  conversion.t5x_to_hf(workdir, str(out))
  assert sorted(os.listdir(out)) == ['config.json', 'generation_config.json',
                                     'model.safetensors', 'spiece.model',
                                     'tokenizer_config.json']



@pytest.mark.parametrize('arch,model_type,config_class', [
    ('T5ForConditionalGeneration', 't5', 'T5Config'),
    ('MT5ForConditionalGeneration', 'mt5', 'MT5Config'),
    ('BertForMaskedLM', 'bert', 'BertConfig'),
    ('GPT2LMHeadModel', 'gpt2', 'GPT2Config')])
def test_sizes_config_json_leaves_out_take_the_transformers_defaults(tmp_path, arch, model_type,
                                                                     config_class):
  """from_pretrained reads a config.json without, say, d_kv with its config class's default;
  import refused it ('config.json lacks the field 'd_kv''), though the docs said the
  defaults apply. The reference: transformers' own config classes."""
  from t5x_lite import hf_config
  (tmp_path / 'config.json').write_text(json.dumps(
      {'architectures': [arch], 'model_type': model_type}))
  ours = hf_config.read_config(str(tmp_path))[2]
  theirs = getattr(transformers, config_class)()
  hidden = theirs.d_model if model_type in ('t5', 'mt5') else theirs.hidden_size
  ff = {'t5': 'd_ff', 'mt5': 'd_ff', 'bert': 'intermediate_size'}.get(model_type)
  assert (ours.vocab_size, ours.d_model, ours.num_heads, ours.d_ff) == (
      theirs.vocab_size, hidden, theirs.num_attention_heads,
      getattr(theirs, ff) if ff else 4 * hidden)  # GPT-2's n_inner None: 4 x n_embd
  assert ours.d_kv == (theirs.d_kv if model_type in ('t5', 'mt5') else
                       hidden // theirs.num_attention_heads)
  layers = (ours.num_encoder_layers, ours.num_decoder_layers)
  if model_type in ('t5', 'mt5'):
    assert layers == (theirs.num_layers, theirs.num_decoder_layers)
  else:
    assert layers == ((theirs.num_hidden_layers, 0) if model_type == 'bert' else
                      (0, theirs.num_hidden_layers))
  assert ours.tie_embeddings == theirs.tie_word_embeddings


def test_an_input_that_is_no_directory_is_named_as_such(tmp_path):
  """convert --input=/nonexistent said '/nonexistent/config.json does not exist'."""
  from t5x_lite import hf_config
  (tmp_path / 'file').write_text('x')
  for path, what in ((tmp_path / 'absent', 'does not exist'), (tmp_path / 'file', 'is not a '
                                                                'directory')):
    with pytest.raises(ValueError, match=rf'^{path} {what}: a Hugging Face model directory '
                                         r'holds config.json and model.safetensors\.$'):
      hf_config.read_config(str(path))
