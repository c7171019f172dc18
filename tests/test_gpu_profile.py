"""launch/gpu_profile.py reads a Perfetto trace: GPU stream kernels only, per step, by kind."""
import gzip
import importlib.util
import json
import os
import subprocess
import sys

from tiny_run import ROOT

spec = importlib.util.spec_from_file_location(
    'gpu_profile', os.path.join(ROOT, 'launch', 'gpu_profile.py'))
gpu_profile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_profile)


def test_kernel_kinds():
  kind = gpu_profile.kind_of
  # cuDNN's flash kernels also name sm90 / wgmma: attention, not matmul.
  assert kind('cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26') == 'attention'
  assert kind('void cudnn::fusion::fmha_dbias<true>(void const*)') == 'attention'
  assert kind('nvjet_sm90_tst_128x128_64x6_2x1_v_bz_TNT') == 'matmul'
  assert kind('gemm_fusion_dot_42') == 'matmul'
  assert kind('loop_dynamic_update_slice_fusion_3') == 'other'
  assert kind('memcpy128') == 'other'


def test_gpu_kernel_times_reads_gpu_streams_per_step(tmp_path):
  meta = lambda pid, tid, what, name: dict(ph='M', pid=pid, tid=tid, name=what,
                                           args={'name': name})
  kernel = lambda pid, tid, name, dur: dict(ph='X', pid=pid, tid=tid, name=name, ts=0, dur=dur)
  events = [meta(1, 0, 'process_name', '/device:GPU:0'), meta(2, 0, 'process_name', '/host:CPU'),
            meta(1, 7, 'thread_name', 'Stream #14(Compute,Memset)'),
            meta(1, 8, 'thread_name', 'XLA Ops'),  # the same ops again, as a summary line
            kernel(1, 7, 'nvjet_gemm', 3000), kernel(1, 7, 'nvjet_gemm', 1000),
            kernel(1, 7, 'memcpy128', 500), kernel(1, 8, 'nvjet_gemm', 4000),
            kernel(2, 0, 'nvjet_gemm', 9000)]  # host events are not kernels
  (tmp_path / 'x').mkdir()
  with gzip.open(tmp_path / 'x' / 'h.trace.json.gz', 'wt') as f:
    json.dump({'traceEvents': events}, f)
  times = gpu_profile.gpu_kernel_times(str(tmp_path), steps=2)
  assert times == {'nvjet_gemm': (2.0, 1.0), 'memcpy128': (0.25, 0.5)}


def test_command_names_a_bad_config_and_a_trace_without_gpu_kernels(tmp_path):
  """The `cli.run` error contract: one line, exit 1 (here, on a CPU, the trace holds no GPU
  kernels; before that, a bad --config override is named). The trace's temporary directory
  is removed (each run left one behind)."""
  tiny = ['--config.model.num_encoder_layers=1', '--config.model.num_decoder_layers=1',
          '--config.model.d_model=32', '--config.model.d_ff=64', '--config.model.num_heads=2',
          '--config.model.vocab_size=512', '--config.data.inputs_length=16',
          '--config.data.targets_length=8', '--config.train.batch_size=2',
          '--config.model.attention_impl=xla']
  script = os.path.join(ROOT, 'launch', 'gpu_profile.py')
  for extra, message in ((['--config.model.no_such_field=1'], 'no_such_field'),
                         ([], 'no GPU kernel in the trace (cpu backend)')):
    out = subprocess.run([sys.executable, script] + tiny + extra, capture_output=True,
                         text=True, cwd=ROOT, env={**os.environ, 'JAX_PLATFORMS': 'cpu',
                                                   'TMPDIR': str(tmp_path)})
    assert out.returncode == 1, out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith('gpu_profile: error:') and message in last, last
  assert not list(tmp_path.glob('gpu_profile_*'))
