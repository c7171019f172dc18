"""launch/gpu_profile.py reads a Perfetto trace: GPU stream kernels only, per step, by kind."""
import gzip
import importlib.util
import json
import os

import pytest

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


def test_overrides_set_existing_fields_and_name_a_bad_one():
  from configs import t5_v1_1_bf16
  cfg = t5_v1_1_bf16.get_config('large')
  gpu_profile.apply_override(cfg, 'model.remat=dots')
  gpu_profile.apply_override(cfg, 'model.scan_layers=False')
  gpu_profile.apply_override(cfg, 'train.batch_size=64')
  assert (cfg.model.remat, cfg.model.scan_layers, cfg.train.batch_size) == ('dots', False, 64)
  for bad in ('model.no_such_field=1', 'model.remat', 'remat=dots'):
    with pytest.raises(SystemExit, match='expected SECTION.FIELD=VALUE'):
      gpu_profile.apply_override(cfg, bad)
