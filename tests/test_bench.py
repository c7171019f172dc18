"""`python -m t5x_lite.bench` at tiny shapes: every figure printed and returned, honest MFU."""
import json
import os
import subprocess
import sys

import pytest

from tiny_run import ROOT

TINY = dict(d_model=32, d_ff=64, num_heads=2, d_kv=16, num_encoder_layers=1,
            num_decoder_layers=1)
FIGURES = ('peak_flops', 'train_step_ms', 'train_tokens_per_s', 'train_mfu', 'grad_step_ms',
           'hf_grad_step_ms', 'grad_step_ratio_vs_hf', 'greedy_tokens_per_s',
           'hf_greedy_tokens_per_s', 'greedy_ratio_vs_hf', 'beam_tokens_per_s',
           'hf_beam_tokens_per_s', 'beam_ratio_vs_hf', 'pipeline_positions_per_s',
           'pipeline_tokens_per_s')


def _tiny_config():
  from configs import default
  cfg = default.get_config()
  cfg.model.update(TINY)
  # One input stream: each one costs ~1 s of tf.data tracing per pipeline the bench builds.
  cfg.data.update(dict(inputs_length=32, targets_length=8, num_virtual_shards=1))
  cfg.train.batch_size = 8  # the test session's 8 CPU devices split the batch
  return cfg


def test_bench_prints_and_returns_every_figure_and_mfu_is_flops_over_time_over_peak(
    monkeypatch):
  from t5x_lite import accounting, benchmark, throughput
  # One real measurement, returned 3x higher the second time, as if the machine were busy
  # during the first (two real ones can differ more than that on a loaded CI host).
  measured_peaks = []
  real_matmul_peak = throughput.matmul_peak

  def matmul_peak():
    first = measured_peaks[0] if measured_peaks else real_matmul_peak()
    measured_peaks.append(first * (1 + 2 * len(measured_peaks)))
    return measured_peaks[-1]
  monkeypatch.setattr(throughput, 'matmul_peak', matmul_peak)
  cfg = _tiny_config()
  lines = []
  out = benchmark.run(cfg, steps=2, rounds=1, beam_size=2, pipeline_seconds=0.2,
                      print_fn=lines.append)
  text = '\n'.join(lines)
  for key in FIGURES:
    assert out[key] > 0, key
  # The printed lines carry the figures (rounded as printed).
  assert f'{out["peak_flops"] / 1e9:,.1f} GFLOP/s' in text
  assert f'{out["train_step_ms"]:,.1f} ms' in text and f'MFU {100 * out["train_mfu"]:.1f}%' in text
  assert f'ratio FlaxT5/ours {out["grad_step_ratio_vs_hf"]:.2f}x' in text
  assert f'ours {out["greedy_tokens_per_s"]:,.0f} new tokens/s' in text
  assert f'{out["pipeline_positions_per_s"]:,.0f} token positions/s' in text
  assert 'MFU = train FLOPs per example' in text
  # MFU recomputed from the accounting's FLOPs, the step time and the peak.
  per_example = accounting.flops_per_token(cfg)['per_example']['train']
  import jax
  assert out['devices'] == jax.device_count()
  expected = (per_example * cfg.train.batch_size / (out['train_step_ms'] / 1e3)
              / (jax.device_count() * out['peak_flops']))
  assert abs(out['train_mfu'] - expected) <= 1e-9 * expected
  # The fastest of the 2 timed steps, against the same peak.
  assert out['train_steps_timed'] == 2 and out['train_step_fastest_ms'] <= out['train_step_ms']
  fastest = expected * out['train_step_ms'] / out['train_step_fastest_ms']
  assert abs(out['train_mfu_fastest_step'] - fastest) <= 1e-9 * fastest
  assert (f'the fastest, {out["train_step_fastest_ms"]:,.1f} ms: MFU '
          f'{100 * out["train_mfu_fastest_step"]:.1f}%') in text
  # The peak is the better of the measurements before and after the train step.
  assert len(measured_peaks) == 2 and out['peak_flops'] == measured_peaks[1]
  # Tokens/s counts every input and target position of a row.
  assert abs(out['train_tokens_per_s'] - 8 * 40 / (out['train_step_ms'] / 1e3)) < 1e-6 * 40
  # Greedy ratio is ours / FlaxT5.
  assert abs(out['greedy_ratio_vs_hf'] - out['greedy_tokens_per_s'] /
             out['hf_greedy_tokens_per_s']) < 1e-9


def test_measure_train_step_times_each_step():
  from t5x_lite import throughput
  r = throughput.measure_train_step(_tiny_config(), steps=3)
  times = r['step_times']
  assert len(times) == 3 and all(t > 0 for t in times)
  assert r['step_time'] == sum(times) / 3 and r['fastest_step_time'] == min(times)
  assert abs(r['examples_per_sec'] - 8 / r['step_time']) < 1e-9 * r['examples_per_sec']


def test_measured_peak_is_a_real_matmul_rate():
  from t5x_lite import throughput
  for dtype in ('float32', 'bfloat16'):
    peak = throughput.matmul_peak(n=256, repeats=3, dtype=dtype)
    assert 1e8 < peak < 1e13  # between 0.1 GFLOP/s and 10 TFLOP/s on any CPU


def test_bench_command_json():
  args = [f'--config.model.{k}={v}' for k, v in TINY.items()] + [
      '--config.data.inputs_length=32', '--config.data.targets_length=8',
      '--config.data.num_virtual_shards=1', '--config.train.batch_size=4', '--steps=1',
      '--rounds=1', '--beam_size=2', '--pipeline_seconds=0.2', '--noreference',
      '--peak_flops=1e9', '--matmuls', '--json']
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', JAX_PLATFORMS='cpu')
  r = subprocess.run([sys.executable, '-m', 't5x_lite.bench', *args], cwd=ROOT,
                     capture_output=True, text=True, timeout=600, env=env)
  assert r.returncode == 0, r.stderr[-2000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert out['peak_source'] == 'given' and out['peak_flops'] == 1e9
  assert out['hf_grad_step_ms'] is None and 'noreference' in out['notes']['hf']
  assert out['train_mfu'] > 0 and out['greedy_tokens_per_s'] > 0
  ceiling = out['matmul_ceiling']
  assert ceiling['forward_flops'] == sum(r['count'] * r['flops'] for r in out['matmuls'])
  assert ceiling['ceiling_mfu'] == ceiling['forward_flops'] / ceiling['forward_s'] / 1e9
  assert all(r['of_peak'] == r['flops_per_sec'] / 1e9 for r in out['matmuls'])


def test_bench_decode_only_runs_just_the_decode_comparison():
  """--decode_only: greedy and beam figures beside FlaxT5, no peak, train step or pipeline;
  the rows of ours that ended early (EOS) are counted, since FlaxT5 always runs to length."""
  from t5x_lite import benchmark
  lines = []
  out = benchmark.run(_tiny_config(), rounds=1, beam_size=2, decode_only=True,
                      print_fn=lines.append)
  assert len(lines) == 2 and lines[0].startswith('greedy decode') and 'beam-2 decode' in lines[1]
  for key in ('greedy_tokens_per_s', 'hf_greedy_tokens_per_s', 'beam_tokens_per_s',
              'hf_beam_tokens_per_s'):
    assert out[key] > 0, key
  assert 0 <= out['greedy_rows_ended_early'] <= 8 and 0 <= out['beam_rows_ended_early'] <= 8
  assert not any(k in out for k in ('peak_flops', 'train_step_ms', 'pipeline_positions_per_s'))


def test_bench_refuses_flags_that_exclude_each_other():
  from t5x_lite import benchmark
  with pytest.raises(ValueError, match='--train_only and --decode_only exclude each other'):
    benchmark.run(_tiny_config(), train_only=True, decode_only=True)
  with pytest.raises(ValueError, match='--matmuls times the train step'):
    benchmark.run(_tiny_config(), decode_only=True, matmuls=True)  # it ignored --matmuls


def test_matmul_rates_cover_every_matmul_of_the_forward_pass_with_its_count():
  """`bench --matmuls`: one row per distinct matmul shape, counted per forward pass, written
  out here by hand from T5's architecture (gated MLP, untied logits, cross-attention)."""
  from t5x_lite import throughput
  cfg = _tiny_config()                         # batch 8, 32 inputs, 8 targets
  cfg.model.update(dict(d_kv=8, num_encoder_layers=2, num_decoder_layers=1))
  b, d, f, hk, h, dk, v = 8, 32, 64, 16, 2, 8, cfg.model.vocab_size
  e, t = b * 32, b * 8                         # encoder and decoder tokens
  got = {r['shape']: (r['count'], r['flops'])
         for r in throughput.matmul_rates(cfg, repeats=1, peak_n=128)}
  dense = lambda rows, k, n, count: (f'[{rows}, {k}] x [{k}, {n}]', (count, 2 * rows * k * n))
  attn = lambda q, kv, count: [
      (f'[{b}, {q}, {h}, {dk}] x [{b}, {kv}, {h}, {dk}]', (count, 2 * b * h * q * kv * dk)),
      (f'[{b}, {h}, {q}, {kv}] x [{b}, {h}, {kv}, {dk}]', (count, 2 * b * h * q * kv * dk))]
  want = dict([
      dense(e, d, hk, 2 * 3 + 2),   # encoder q, k, v in 2 layers; cross-attention k, v
      dense(e, hk, d, 2),           # encoder attention out
      dense(e, d, f, 2 * 2), dense(e, f, d, 2),          # wi_0 and wi_1, wo
      dense(t, d, hk, 3 + 1),       # decoder self-attention q, k, v; cross-attention q
      dense(t, hk, d, 2),           # self- and cross-attention out
      dense(t, d, f, 2), dense(t, f, d, 1),
      dense(t, d, v, 1),            # logits
      *attn(32, 32, 2), *attn(8, 8, 1), *attn(8, 32, 1)])
  assert got == want


@pytest.mark.parametrize('config_name', ['bert', 'gpt', 't5_decoder_only'])
def test_matmul_rates_add_up_to_the_accounted_forward_flops(config_name):
  """Every family (tied and untied logits, MLM transform, prefix LM): sum(count * flops) is
  `accounting.FORMULA`'s forward FLOPs for the batch, so the ceiling leaves no matmul out."""
  import importlib
  from t5x_lite import accounting, throughput
  cfg = importlib.import_module(f'configs.{config_name}').get_config()
  cfg.model.update(dict(d_model=32, d_ff=48, num_heads=2, d_kv=8, vocab_size=300))
  cfg.train.batch_size = 2
  rows = throughput.matmul_rates(cfg, repeats=1, peak_n=128)
  want = accounting.flops_per_token(cfg)['per_example']['forward'] * 2
  assert sum(r['count'] * r['flops'] for r in rows) == want
  assert all(r['flops_per_sec'] > 1e6 and r['peak_flops_per_sec'] > 1e6 for r in rows)


def test_matmul_ceiling_is_the_flops_weighted_rate_over_the_peak():
  from t5x_lite import throughput
  rows = [dict(count=3, flops=2e9, flops_per_sec=1e11),    # 60 ms
          dict(count=1, flops=4e9, flops_per_sec=2e10)]    # 200 ms
  c = throughput.matmul_ceiling(rows, peak=1e11)
  assert c['forward_flops'] == 10e9
  assert abs(c['forward_s'] - 0.26) < 1e-12 and abs(c['train_s'] - 0.78) < 1e-12
  assert abs(c['ceiling_mfu'] - 10e9 / 0.26 / 1e11) < 1e-12


def test_bench_matmuls_peak_is_the_best_of_all_its_measurements_and_sets_the_ceiling(monkeypatch):
  """With --matmuls the peak is also timed beside each matmul shape; a slower measurement
  before and after the step (here 1 FLOP/s) must not be what MFU and the ceiling use."""
  from t5x_lite import benchmark, throughput
  monkeypatch.setattr(throughput, 'matmul_peak', lambda: 1.0)
  real_rates = throughput.matmul_rates  # real timings, smaller peak matmuls (test time)
  monkeypatch.setattr(throughput, 'matmul_rates',
                      lambda config: real_rates(config, repeats=2, peak_n=256))
  lines = []
  out = benchmark.run(_tiny_config(), steps=1, train_only=True, matmuls=True,
                      print_fn=lines.append)
  rows = out['matmuls']
  assert out['peak_flops'] == max(r['peak_flops_per_sec'] for r in rows) > 1.0
  assert out['train_mfu'] == out['train_flops_per_s'] / out['devices'] / out['peak_flops']
  c = out['matmul_ceiling']
  assert c['ceiling_mfu'] == c['forward_flops'] / c['forward_s'] / out['peak_flops']
  assert lines[-1].endswith(f'MFU would be {100 * c["ceiling_mfu"]:.1f}% (the ceiling)')


def test_bench_uses_a_known_devices_datasheet_peak(monkeypatch):
  """A device kind in `accounting.PEAK_FLOPS` (an H100 in the GPU benchmark) is measured
  against its datasheet peak, not a float32 matmul: here the CPU pretends to be listed."""
  from t5x_lite import accounting, benchmark, throughput

  asked = []

  def bf16_matmul_only(n=1024, repeats=10, dtype='float32'):
    asked.append((n, dtype))
    if dtype != 'bfloat16':
      raise AssertionError('a listed device must not measure a float32 matmul peak')
    return 5e11  # the figure printed beside the datasheet's, as measured on the chip
  monkeypatch.setattr(throughput, 'matmul_peak', bf16_matmul_only)
  monkeypatch.setattr(accounting, 'PEAK_FLOPS', (('cpu', 2e12),))
  lines = []
  out = benchmark.run(_tiny_config(), steps=1, train_only=True, print_fn=lines.append)
  assert out['peak_source'] == 'datasheet' and out['peak_flops'] == 2e12
  assert out['train_mfu'] == out['train_flops_per_s'] / out['devices'] / 2e12
  assert lines[0].startswith('peak: 2,000.0 GFLOP/s per device (datasheet: dense bf16 peak')
  assert asked == [(8192, 'bfloat16')] and out['measured_bf16_matmul_flops'] == 5e11
  assert lines[0].endswith('bfloat16 8192^3 matmuls: 0 TFLOP/s)')  # 0.5 TFLOP/s, rounded
  assert out['train_mfu_of_measured_matmul'] == out['train_mfu'] * 4
  assert f'matmul instead of the datasheet: MFU {400 * out["train_mfu"]:.1f}%' in lines[2]


@pytest.mark.parametrize('name,objective', [('bert', 'mlm'), ('gpt', 'causal_lm'),
                                            ('t5_decoder', 'prefix_lm'), ('t5', 'span_corruption')])
def test_pipeline_throughput_counts_the_positions_each_family_reads(name, objective):
  # Every family, not only the encoder-decoder: positions per row are what the model's stacks
  # read (families.stream_lengths), the same positions the train step's tokens/s counts.
  from tiny_run import tiny_config
  from t5x_lite import families, throughput
  cfg = tiny_config(name, data=dict(objective=objective, inputs_length=24, targets_length=12,
                                    num_virtual_shards=1))
  pos, real, batch = throughput.pipeline_throughput(cfg, 0.2, 4)
  lengths = families.stream_lengths(cfg)
  keys = throughput.stream_token_features(cfg.model.family)
  assert sum(batch[k].shape[1] for k in keys) == lengths['encoder'] + lengths['decoder']
  assert sum(batch[k].shape[0] for k in keys) == 4 * len(keys)
  assert pos > 0 and 0 < real <= pos


def test_bench_runs_for_an_encoder_only_and_a_decoder_only_config():
  from tiny_run import tiny_config
  from t5x_lite import benchmark
  for name in ('bert', 'gpt'):
    # GPT's position table exactly as long as its rows: decode continues 16-token prompts
    # to the row length, never past the table.
    cfg = tiny_config(name, layers=1, train=dict(batch_size=8), max_position_embeddings=32,
                      data=dict(inputs_length=32, targets_length=32, num_virtual_shards=1))
    lines = []
    out = benchmark.run(cfg, steps=1, rounds=1, beam_size=2, pipeline_seconds=0.2,
                        print_fn=lines.append)
    assert out['train_mfu'] > 0 and out['pipeline_positions_per_s'] > 0, name
    assert out['hf_grad_step_ms'] is None and 'not a T5 encoder-decoder' in out['notes']['hf']
    if name == 'bert':
      assert out['notes']['decode'] == 'encoder-only family: nothing to decode'
    else:
      assert out['greedy_tokens_per_s'] > 0 and out['beam_tokens_per_s'] > 0
      assert out['decode_new_tokens'] == 32 - 16


def test_a_decode_length_past_the_position_table_is_refused_before_any_timing(monkeypatch):
  from tiny_run import tiny_config
  from t5x_lite import benchmark, throughput
  cfg = tiny_config('gpt', layers=1, train=dict(batch_size=8), max_position_embeddings=32,
                    data=dict(inputs_length=32, targets_length=32, num_virtual_shards=1))
  timed = []
  monkeypatch.setattr(throughput, 'matmul_peak', lambda *a, **k: timed.append(1) or 1e9)
  # 16 prompt tokens + 17 new - 1 (the last is never fed back) = 32 positions: fits.
  benchmark._check_decode_fits(cfg, 17)
  for kwargs in (dict(), dict(decode_only=True)):
    with pytest.raises(ValueError, match=r'a prompt of 16 tokens continued by '
                       r'--decode_length=18 needs 33 positions; .*max_position_embeddings=32'):
      benchmark.run(cfg, decode_length=18, **kwargs)
  assert not timed
  benchmark.run(cfg, decode_length=18, train_only=True, steps=1, print_fn=lambda _: None)
  assert timed  # --train_only decodes nothing: the length is not checked
