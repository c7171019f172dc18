"""T5 v1.1 base / large for accelerators: bfloat16 activations, scanned layers.

Use as `--config=configs/t5_v1_1_bf16.py:large`. Parameters, norms, softmax, logits and the
loss stay float32 (models.py); matmuls and activations run in bfloat16. `attention_impl`
'auto' picks cuDNN flash attention on a GPU (the T5 relative bias and the masks go in as one
bias built once per stack), XLA's fused attention on TPU, and on CPU `rowwise` (one device)
or `folded` (a mesh). Scanned layers compile
once per stack instead of once per layer.
"""
from configs import t5_v1_1

SIZES = ('base', 'large')


def get_config(size: str = 'large'):
  if size not in SIZES:
    raise ValueError(f'unknown bfloat16 T5 v1.1 size {size!r}; choose one of '
                     f'{", ".join(SIZES)}.')
  cfg = t5_v1_1.get_config(size)
  cfg.model.dtype = 'bfloat16'
  cfg.model.scan_layers = True
  cfg.model.attention_impl = 'auto'
  cfg.train.batch_size = 32 if size == 'large' else 64
  return cfg
