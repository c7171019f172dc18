"""Input pipeline of t5x_lite: vocabulary, sources, objectives, packing, pipeline, rows.

  vocab.py       SentencePiece vocabulary in the T5 id layout (sentinels, [MASK])
  sources.py     source specs; text / JSONL / TSV / TFDS readers; bad-input accounting
  objectives.py  span corruption, BERT MLM, T5 iid noise, causal and prefix LM, text-to-text
  packing.py     trim-and-pack and the feature converters (docs/design.md feature names)
  pipeline.py    get_dataset(config, split, ...) -> DataIterator (deterministic, resumable)
  bench.py       `python -m t5x_lite.data.bench`: pipeline tokens/s vs a train step
"""
import os as _os

# TF feeds the host only: keep its C++ logging quiet unless the user asked otherwise.
_os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
_os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # silences its banner; data ops are integer work
