"""Hugging Face directories saved by transformers' Flax classes: `flax_model.msgpack` (single
or sharded) and safetensors whose metadata says format "flax" hold Flax names and layouts
(`kernel` [in, out], `scale`, `embedding`; GPT-2's Conv1D kernel [out, in]). `hf.load` must
read them into the same network: our logits equal the Flax model's own, on perturbed weights
(so a kernel read untransposed, or a norm scale taken for a bias, cannot pass)."""
import os

os.environ.setdefault('USE_TF', '0')

import jax
import numpy as np
import pytest
import transformers

from test_hf_parity import ENC_LEN, DEC_LEN, VOCAB, apply, rel_err
from t5x_lite import hf
from t5x_lite.hf_reference import _clip_compat

RTOL = 1e-5
SMALL = dict(vocab_size=VOCAB)
CASES = {
    'T5': (transformers.FlaxT5ForConditionalGeneration, transformers.T5Config(
        **SMALL, d_model=32, d_kv=12, d_ff=48, num_layers=2, num_decoder_layers=1, num_heads=4,
        feed_forward_proj='gated-gelu', tie_word_embeddings=False, dropout_rate=0.0,
        decoder_start_token_id=0)),
    'BERT': (transformers.FlaxBertForMaskedLM, transformers.BertConfig(
        **SMALL, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)),
    'GPT2': (transformers.FlaxGPT2LMHeadModel, transformers.GPT2Config(
        **SMALL, n_embd=32, n_layer=2, n_head=4, n_positions=64, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0)),
}


def _inputs(name):
  rng = np.random.default_rng(0)
  if name == 'T5':
    enc = rng.integers(2, VOCAB, (2, ENC_LEN)).astype(np.int32)
    enc[1, 70:] = 0
    dec = rng.integers(1, VOCAB, (2, DEC_LEN)).astype(np.int32)
    dec[:, 0] = 0
    return ({'encoder_input_tokens': enc, 'decoder_input_tokens': dec,
             'decoder_target_tokens': np.ones_like(dec)},
            dict(input_ids=enc, attention_mask=(enc != 0).astype(np.int32),
                 decoder_input_ids=dec), None)
  tokens = rng.integers(1, VOCAB, (2, 40)).astype(np.int32)
  if name == 'GPT2':
    return {'decoder_input_tokens': tokens}, dict(input_ids=tokens), None
  tokens[1, 30:] = 0
  types = rng.integers(0, 2, tokens.shape).astype(np.int32)
  return ({'encoder_input_tokens': tokens, 'encoder_token_types': types},
          dict(input_ids=tokens, attention_mask=(tokens != 0).astype(np.int32),
               token_type_ids=types), tokens != 0)


def _flax_model(name):
  cls, config = CASES[name]
  with _clip_compat():
    model = cls(config, seed=0)
  leaves, tree = jax.tree.flatten(model.params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  model.params = jax.tree.unflatten(tree, [  # zero biases, unit scales: make every one count
      x + 0.1 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])
  return model


@pytest.mark.parametrize('name,layout', [(n, layout) for n in sorted(CASES)
                                          for layout in ('msgpack', 'safetensors')]
                         + [('T5', 'msgpack_sharded')])
def test_flax_saved_directory_imports_with_the_flax_models_logits(tmp_path, name, layout):
  model = _flax_model(name)
  model.save_pretrained(tmp_path, safe_serialization=layout == 'safetensors',
                        **({'max_shard_size': '20KB'} if layout == 'msgpack_sharded' else {}))
  files = set(os.listdir(tmp_path))
  assert ('flax_model.msgpack.index.json' in files) == (layout == 'msgpack_sharded'), files
  ours, theirs, valid = _inputs(name)
  with _clip_compat():
    ref = np.asarray(model(**theirs).logits)
  model_cfg, params = hf.load(str(tmp_path))
  got = apply(model_cfg, params, ours)
  if valid is not None:
    got, ref = got[valid], ref[valid]
  assert rel_err(got, ref) <= RTOL
