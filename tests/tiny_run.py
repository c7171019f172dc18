"""The tiny model that the command-line tests train in subprocesses (seconds per run)."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_MODEL = [
    '--config=configs/default.py',
    '--config.model.d_model=32', '--config.model.d_ff=64', '--config.model.num_heads=2',
    '--config.model.d_kv=16', '--config.data.inputs_length=64', '--config.train.batch_size=8',
]
