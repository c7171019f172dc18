"""t5x_lite.plan: parameter counts vs Hugging Face, FLOPs vs hand formulas, bytes per device."""
import json
import os
import subprocess
import sys

import jax
import pytest

from configs import bert, gpt, t5_v1_1
from t5x_lite import accounting, models
from tiny_run import tiny_config

T5_DIMS = {
    'small': dict(d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6),
    'base': dict(d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12),
}

# Counted by `transformers` in a subprocess started with the module (it overlaps the other
# tests; importing torch + transformers is most of this file's time). Models are built on
# the meta device: no memory, no init. `parameters()` counts a shared tensor once. torch and
# transformers are pinned test requirements: if they do not import, the tests fail.
HF_SCRIPT = """
import json, os, sys
os.environ['USE_TF'] = '0'; os.environ['USE_FLAX'] = '0'; os.environ['USE_TORCH'] = '1'
import torch
from transformers.models.bert import configuration_bert, modeling_bert
from transformers.models.gpt2 import configuration_gpt2, modeling_gpt2
from transformers.models.t5 import configuration_t5, modeling_t5
dims = json.loads(sys.argv[1])
models = {f't5_{k}': (modeling_t5.T5ForConditionalGeneration, configuration_t5.T5Config(
              vocab_size=32128, feed_forward_proj='gated-gelu', tie_word_embeddings=False, **v))
          for k, v in dims.items()}
models['gpt2'] = (modeling_gpt2.GPT2LMHeadModel, configuration_gpt2.GPT2Config())
models['bert_mlm'] = (modeling_bert.BertForMaskedLM, configuration_bert.BertConfig())
counts = {}
with torch.device('meta'):
  for name, (cls, cfg) in models.items():
    counts[name] = sum(p.numel() for p in cls(cfg).parameters())
print(json.dumps(counts))
"""


@pytest.fixture(scope='module', autouse=True)
def hf_counts():
  proc = subprocess.Popen([sys.executable, '-c', HF_SCRIPT, json.dumps(T5_DIMS)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  result = {}

  def get():
    if not result:
      out, err = proc.communicate(timeout=300)
      assert proc.returncode == 0, f'counting with transformers failed: {err}'
      result.update(json.loads(out.strip().splitlines()[-1]))
    return result

  yield get
  if proc.poll() is None:
    proc.kill()
    proc.communicate()


def test_gpt_flops_match_independent_formula():
  cfg = gpt.get_config('small')
  f = accounting.flops_per_token(cfg)
  d, n_layers, seq, vocab = 768, 12, cfg.data.targets_length, 50257
  # Non-embedding matmul params of GPT-2: per layer qkv 3d^2 + out d^2 + mlp 8d^2 = 12 d^2.
  assert f['matmul_params'] == dict(encoder=0, decoder=12 * d * d * n_layers, logits=vocab * d)
  assert f['dense'] == 2 * 12 * d * d * n_layers
  assert f['self_attention'] == 4 * n_layers * seq * d  # heads * d_kv = d
  assert f['cross_attention'] == 0
  assert f['logits'] == 2 * d * vocab
  assert f['forward'] == f['dense'] + f['self_attention'] + f['logits']
  assert f['train'] == 3 * f['forward']
  # nanoGPT's 6N + 12 L H Q T, with N = non-embedding matmul params + the tied wte.
  assert f['train'] == 6 * (12 * d * d * n_layers + vocab * d) + 12 * n_layers * d * seq
  assert f['per_processed_token'] == {k: f[k] for k in accounting.TERMS}
  assert f['per_example']['train'] == f['train'] * seq


def _tiny_t5():
  return tiny_config('t5', layers=1, vocab_size=128, d_model=16, d_ff=32, d_kv=8,
                     data=dict(inputs_length=8, targets_length=4))


def test_tiny_encoder_decoder_flops_by_hand():
  f = accounting.flops_per_token(_tiny_t5())
  # Kernels: attention q,k,v,o are 16x16 each (heads*d_kv = 16); gated MLP wi_0, wi_1 16x32,
  # wo 32x16. Encoder layer: 4*256 + 2*512 + 512 = 2560 params on 8 encoder tokens.
  # Decoder: self-attn 1024 + MLP 1536 + cross q,o 512 on 4 decoder tokens; cross k,v 512
  # on the 8 encoder tokens.
  dense = 2 * (2560 * 8 + 512 * 8 + (1024 + 1536 + 512) * 4)                # 73,728
  self_attention = 4 * 16 * (8 * 8 + 4 * 4)                                 # 5,120
  cross_attention = 4 * 16 * 4 * 8                                          # 2,048
  logits = 2 * 16 * 128 * 4                                                 # 16,384
  assert f['per_example'] == dict(
      dense=73_728, self_attention=5_120, cross_attention=2_048, logits=16_384,
      forward=97_280, train=291_840)
  assert (dense, self_attention, cross_attention, logits) == (73_728, 5_120, 2_048, 16_384)
  assert f['forward'] == 97_280 / 4 and f['train'] == 291_840 / 4  # per target token
  assert f['per_processed_token']['train'] == 291_840 / 12
  assert f['lengths'] == dict(encoder=8, decoder=4, target=4)


def test_scan_layers_does_not_change_counts():
  cfg = _tiny_t5()
  unscanned = (accounting.count_params(cfg)['total'], accounting.flops_per_token(cfg)['per_example'])
  cfg.model.scan_layers = True
  cfg.model.num_encoder_layers = cfg.model.num_decoder_layers = 1
  assert (accounting.count_params(cfg)['total'], accounting.flops_per_token(cfg)['per_example']) == unscanned


def test_a_cudnn_config_is_planned_without_a_gpu():
  """plan describes a GPU run from a laptop: tracing the params ran cuDNN's availability
  check (a traceback, 'cuDNN is not detected'). Every attention implementation has the
  same params."""
  def params(impl):
    cfg = tiny_config('t5', dtype='bfloat16', attention_impl=impl)
    return jax.tree.map(lambda x: (x.shape, x.dtype), models.abstract_params(cfg.model))
  assert params('cudnn') == params('xla')


def test_embed_sharded_bytes_shrink_8x_under_fsdp():
  cfg = t5_v1_1.get_config('small')
  boxed = models.abstract_params(cfg.model)
  cfg.partitioning.mesh.update(dict(data=8, fsdp=1, tensor=1))
  dp = accounting.memory_per_device(cfg, 8, boxed)
  cfg.partitioning.mesh.update(dict(data=1, fsdp=8, tensor=1))
  fsdp = accounting.memory_per_device(cfg, 8, boxed)
  assert dp['mesh'] == dict(data=8, fsdp=1, tensor=1)
  assert fsdp['mesh'] == dict(data=1, fsdp=8, tensor=1)
  emb = 'token_embedder/embedding'  # [32128, 512] (vocab, embed)
  assert dp['per_param'][emb]['bytes'] == 32128 * 512 * 4 == 65_798_144
  assert fsdp['per_param'][emb]['bytes'] == 32128 * 64 * 4 == 8_224_768
  assert fsdp['per_param'][emb]['local_shape'] == (32128, 64)
  embed_sharded = [n for n, p in dp['per_param'].items() if 'fsdp' in p['spec']]
  relpos = 'encoder/relpos_bias/rel_embedding'  # (heads, buckets): not split by fsdp
  assert relpos not in embed_sharded and len(embed_sharded) > 100
  for name in embed_sharded:
    assert dp['per_param'][name]['bytes'] == 8 * fsdp['per_param'][name]['bytes'], name
  assert dp['per_param'][relpos]['bytes'] == fsdp['per_param'][relpos]['bytes'] == 6 * 32 * 4
  # Every T5 v1.1 small param except the two relative-position tables has an embed dim.
  assert dp['params_bytes'] - 2 * 768 == 8 * (fsdp['params_bytes'] - 2 * 768)
  assert dp['params_bytes'] == 4 * 76_961_152 and dp['grads_bytes'] == dp['params_bytes']


def test_optimizer_state_bytes():
  cfg = t5_v1_1.get_config('small')
  boxed = models.abstract_params(cfg.model)
  mem = accounting.memory_per_device(cfg, 1, boxed)['per_param']
  # Adafactor: [32128, 512] factored into a row (32128) and a column (512) statistic.
  assert mem['token_embedder/embedding']['optimizer_bytes'] == 4 * (32128 + 512)
  # q kernel [512, 6, 64] is factored as T5's [512, 6 * 64] matrix: 512 + 384 statistics.
  q = 'encoder/layers_0/self_attention/query/kernel'
  assert mem[q]['optimizer_bytes'] == 4 * (512 + 384)
  # The per-parameter figures add up to the state optax itself creates (counts aside).
  import flax.linen as nn
  import jax
  from t5x_lite import optim
  tx = optim.create(cfg.optimizer, 10)
  params = nn.unbox(boxed)
  state = jax.eval_shape(tx.init, params.get('params', params))
  optax_bytes = sum(4 * x.size for x in jax.tree.leaves(state) if x.ndim > 0 and x.size > 1)
  assert sum(m['optimizer_bytes'] for m in mem.values()) == optax_bytes
  assert mem['encoder/final_norm/scale']['optimizer_bytes'] == 4 * 512  # rank 1: full
  # Under FSDP the statistics keep the sharding of the dim they keep: the embedding's column
  # statistic (embed: 512 over fsdp=8) shrinks 8x, its row statistic (vocab) does not.
  cfg.partitioning.mesh.update(dict(data=1, fsdp=8, tensor=1))
  fsdp = accounting.memory_per_device(cfg, 8, boxed)['per_param']
  assert fsdp['token_embedder/embedding']['optimizer_bytes'] == 4 * (32128 + 64)
  assert fsdp[q]['optimizer_bytes'] == 4 * (64 + 384)
  cfg.partitioning.mesh.update(dict(data=1, fsdp=1, tensor=1))
  cfg.optimizer.name = 'adamw'
  adamw = accounting.memory_per_device(cfg, 1, boxed)
  assert adamw['optimizer_bytes'] == 2 * adamw['params_bytes']
  cfg.optimizer.name = 'sgd'
  with pytest.raises(ValueError, match='config.optimizer.name'):
    accounting.memory_per_device(cfg, 1, boxed)


def test_bad_meshes_fail_with_one_sentence():
  cfg = t5_v1_1.get_config('small')
  boxed = models.abstract_params(cfg.model)
  cfg.partitioning.mesh.update(dict(data=4, fsdp=1, tensor=1))
  with pytest.raises(ValueError, match='needs 4 devices but 6 are available'):
    accounting.memory_per_device(cfg, 6, boxed)
  cfg.partitioning.mesh.update(dict(data=1, fsdp=1, tensor=8))  # 6 heads over 8
  with pytest.raises(ValueError, match=r'\(heads, size 6 = config.model.num_heads\) is not '
                                       r'divisible by mesh axes'):
    accounting.memory_per_device(cfg, 8, boxed)
  cfg.partitioning.mesh.update(dict(data=-1, fsdp=1, tensor=1))
  cfg.train.batch_size = 12
  with pytest.raises(ValueError, match='config.train.batch_size=12 is not divisible'):
    accounting.memory_per_device(cfg, 8, boxed)


CLI_RUNS = {
    'ok': ['--config=configs/t5_v1_1.py:small', '--num_devices=8',
           '--config.partitioning.mesh.fsdp=8', '--config.partitioning.mesh.data=1'],
    'bad_mesh': ['--config=configs/t5_v1_1.py:small', '--num_devices=6',
                 '--config.partitioning.mesh.data=4'],
    # Command-line overrides of d_model / num_heads: GPT-2's and BERT's derived sizes follow.
    'gpt_overridden': ['--config=configs/gpt.py:tiny', '--config.model.d_model=128',
                       '--config.model.num_heads=8'],
    'bert_overridden': ['--config=configs/bert.py:tiny', '--config.model.num_heads=8'],
    # Configs train refuses: plan refuses them too (it printed a plan, exit 0).
    'bert_heads_not_dividing': ['--config=configs/bert.py:tiny', '--config.model.num_heads=5'],
    'gpt_rows_past_positions': ['--config=configs/gpt.py:tiny',
                                '--config.data.targets_length=2048'],
    'objective_not_for_family': ['--config=configs/t5_v1_1.py:tiny',
                                 '--config.model.family=encoder'],
    'batch_not_fed_by_streams': ['--config=configs/default.py', '--num_devices=2',
                                 '--config.train.batch_size=6'],
}


@pytest.fixture(scope='module', autouse=True)
def cli_runs():
  """Start the CLI subprocesses when the module starts, so they overlap the other tests."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  procs = {k: subprocess.Popen([sys.executable, '-m', 't5x_lite.plan', *args], cwd=root,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for k, args in CLI_RUNS.items()}
  results = {}

  def result(name):
    if name not in results:
      out, err = procs[name].communicate(timeout=120)
      results[name] = subprocess.CompletedProcess(procs[name].args, procs[name].returncode,
                                                  out, err)
    return results[name]

  yield result
  for p in procs.values():
    if p.poll() is None:
      p.kill()
      p.communicate()


def test_cli_prints_total_params_and_fails_clearly(cli_runs):
  out = cli_runs('ok')
  assert out.returncode == 0, out.stderr
  assert 'parameters: 76,961,152 total' in out.stdout
  assert 'mesh data=1 fsdp=8 tensor=1 (8 devices)' in out.stdout
  assert 'train (3 x forward)' in out.stdout and 'activations (ESTIMATE)' in out.stdout
  bad = cli_runs('bad_mesh')
  assert bad.returncode == 1
  errors = [l for l in bad.stderr.splitlines() if l.startswith('plan: error:')]
  assert len(errors) == 1 and 'needs 4 devices but 6 are available' in errors[0]


def test_gpt_and_bert_head_sizes_follow_command_line_overrides(cli_runs):
  """d_kv (and GPT-2's d_ff) derive from d_model and num_heads after the overrides: they
  were fixed per size, so --config.model.num_heads=8 trained heads x d_kv != d_model, a
  model no GPT2LMHeadModel / BertForMaskedLM can hold (found only at export)."""
  gpt, bert = cli_runs('gpt_overridden'), cli_runs('bert_overridden')
  assert gpt.returncode == 0 and bert.returncode == 0, gpt.stderr + bert.stderr
  assert 'd_model=128 d_ff=512 heads=8 d_kv=16 ' in gpt.stdout
  assert 'd_model=64 d_ff=256 heads=8 d_kv=8 ' in bert.stdout


@pytest.mark.parametrize('run,message', [
    ('bert_heads_not_dividing', 'config.model.num_heads=5 is invalid: must divide d_model=64'),
    ('gpt_rows_past_positions', 'config.data.targets_length=2048 gives the decoder rows of '
                                '2048 tokens, more than config.model.max_position_embeddings'),
    ('objective_not_for_family', "config.data.objective='span_corruption' does not fit "
                                 "config.model.family='encoder'"),
    ('batch_not_fed_by_streams', 'config.train.batch_size=6 is not a multiple of '
                                 'data.num_virtual_shards=4'),
])
def test_plan_refuses_what_train_refuses(cli_runs, run, message):
  out = cli_runs(run)
  assert out.returncode == 1 and out.stdout == '', out.stdout
  errors = [l for l in out.stderr.splitlines() if l.startswith('plan: error:')]
  assert len(errors) == 1 and message in errors[0], out.stderr[-2000:]


@pytest.mark.parametrize('size', ['small', 'base'])
def test_t5_v1_1_param_count_matches_transformers(size, hf_counts):
  counts = accounting.count_params(t5_v1_1.get_config(size))
  assert sum(counts['by_module'].values()) == counts['total']
  assert set(counts['by_module']) == {'token_embedder', 'encoder', 'decoder', 'logits_head'}
  d_model = T5_DIMS[size]['d_model']
  assert counts['by_module']['token_embedder'] == 32128 * d_model
  assert counts['by_module']['logits_head'] == 32128 * d_model
  assert counts['total'] == {'small': 76_961_152, 'base': 247_577_856}[size]
  assert counts['total'] == hf_counts()[f't5_{size}']


def test_gpt2_small_param_count(hf_counts):
  counts = accounting.count_params(gpt.get_config('small'))
  assert counts['total'] == 124_439_808  # GPT-2 small, wte tied to the output layer
  assert counts['embedding'] == (50257 + 1024) * 768
  assert counts['total'] == hf_counts()['gpt2']


def test_bert_base_mlm_param_count(hf_counts):
  counts = accounting.count_params(bert.get_config('base'))
  assert counts['total'] == 109_514_298  # BertForMaskedLM, bert-base (no pooler)
  assert counts['total'] == hf_counts()['bert_mlm']


def test_peak_flops_by_device_kind_takes_the_most_specific_name():
  """'L4' matched 'NVIDIA L40S' (121 instead of 362 TFLOP/s), 'H100' the PCIe card."""
  peak = accounting.peak_flops_per_device
  assert peak('NVIDIA L40S', 0) == 362e12 and peak('NVIDIA L4', 0) == 121e12
  assert peak('NVIDIA H100 PCIe', 0) == 756e12 and peak('NVIDIA H100 80GB HBM3', 0) == 989e12
  assert peak('TPU v5 lite', 0) == 197e12 and peak('cpu', 0) == 0.0 and peak('cpu', 5.0) == 5.0
  names = [n for n, _ in accounting.PEAK_FLOPS]
  for i, name in enumerate(names):  # first match wins: no name may shadow a later one
    assert not [n for n in names[i + 1:] if name.lower() in n.lower()], name
