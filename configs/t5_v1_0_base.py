"""T5 v1.0 base: ReLU MLP, output logits tied to the embedding and rescaled by 1/sqrt(d)."""
from configs import base


def get_config():
  cfg = base.get_base_config()
  cfg.model.update(dict(
      family='encoder_decoder', vocab_size=32128, d_model=768, d_ff=3072, num_heads=12,
      d_kv=64, num_encoder_layers=12, num_decoder_layers=12, mlp_activations=('relu',),
      tie_embeddings=True, rescale_tied_logits=True,
      dropout_rate=0.1))  # v1.0 pretrained with dropout (v1.1 turned it off: t5_v1_1.py)
  return cfg
