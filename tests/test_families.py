"""The family table against the pipeline: plan's token counts are the rows actually fed."""
import pytest

from data_helpers import data_config
from t5x_lite import families
from t5x_lite.data import pipeline

SOURCES = {  # text_to_text needs inputs/targets fields; every other objective reads text
    'text_to_text': dict(train_source='jsonl:data/tasks/speaker/validation.jsonl',
                         validation_source='jsonl:data/tasks/speaker/validation.jsonl'),
}
CASES = [(f, o) for f, fam in families.FAMILIES.items() for o in fam.objectives]


@pytest.mark.parametrize('family,objective', CASES)
def test_stream_lengths_equal_pipeline_row_shapes(family, objective):
  # 64 inputs / 20 targets: span corruption of 64 needs 17 targets (objectives helper).
  cfg = data_config(objective=objective, inputs_length=64, targets_length=20,
                    **SOURCES.get(objective, {}))
  cfg.model.family = family
  batch = next(pipeline.get_dataset(cfg, 'validation', batch_size=4))
  lengths = families.stream_lengths(cfg)
  fam = families.get(family)
  seen = {'encoder': batch['encoder_input_tokens'].shape[1] if fam.has_encoder else 0,
          'decoder': batch['decoder_input_tokens'].shape[1] if fam.has_decoder else 0,
          'target': batch[fam.targets].shape[1]}
  assert lengths == seen
  assert batch[fam.weights].shape == batch[fam.targets].shape
  synthetic = families.synthetic_batch(cfg, 4)
  assert {k: v.shape for k, v in synthetic.items()} == \
      {k: batch[k].shape for k in synthetic}
