"""BERT (encoder-only, masked LM): `--config=configs/bert.py:base` (tiny | base)."""
from configs import base

SIZES = {
    #        d_model d_ff  heads layers
    'tiny': (64, 256, 4, 2),
    'base': (768, 3072, 12, 12),
}


def get_config(size: str = 'base'):
  if size not in SIZES:
    raise ValueError(f'unknown BERT size {size!r}; choose one of {", ".join(SIZES)}.')
  cfg = base.get_base_config()
  d_model, d_ff, heads, n_layers = SIZES[size]
  cfg.model.update(dict(
      family='encoder', vocab_size=30522, d_model=d_model, d_ff=d_ff, num_heads=heads,
      num_encoder_layers=n_layers, num_decoder_layers=0,
      mlp_activations=('gelu_exact',), norm='layer', norm_eps=1e-12, post_norm=True,
      use_bias=True, position_embedding='absolute', max_position_embeddings=512,
      type_vocab_size=2, scale_attention_logits=True, tie_embeddings=True,
      init_scheme='normal_0.02', dropout_sites='bert_gpt2'))
  # BERT's head size follows d_model and num_heads, also when the command line overrides
  # them (a fixed d_kv would leave heads x d_kv != d_model: no BertForMaskedLM has that).
  cfg.model.d_kv = cfg.model.get_ref('d_model') // cfg.model.get_ref('num_heads')
  cfg.data.objective = 'mlm'
  # BERT's pretraining: 1M steps, 10k warmup (cosine here, linear in the paper). The tiny
  # size keeps the base's 1000 steps with a warmup that leaves room for the decay.
  cfg.optimizer.update(dict(name='adamw', schedule='cosine', learning_rate=1e-4,
                            warmup_steps=10_000 if size != 'tiny' else 100,
                            weight_decay=0.01))
  cfg.optimizer.z_loss = 0.0  # a T5 (t5x) regulariser: BERT trained without it
  if size != 'tiny':
    cfg.train.steps = 1_000_000
    # BERT's dropout 0.1 on every layer (paper §A.2, transformers' BertConfig). The tiny size,
    # a smoke-test model, stays deterministic.
    cfg.model.dropout_rate = 0.1
  return cfg
