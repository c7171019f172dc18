"""The worked examples in docstrings (`>>>`) are run: an example that no longer holds fails."""
import doctest
import importlib
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / 't5x_lite'
WITH_EXAMPLES = sorted(
    '.'.join(('t5x_lite',) + p.relative_to(PACKAGE).with_suffix('').parts)
    for p in PACKAGE.rglob('*.py') if '>>>' in p.read_text())


def test_examples_are_found():
  assert {'t5x_lite.train_loop', 't5x_lite.validation'} <= set(WITH_EXAMPLES)


@pytest.mark.parametrize('name', WITH_EXAMPLES)
def test_docstring_examples(name):
  result = doctest.testmod(importlib.import_module(name))
  assert result.attempted > 0 and result.failed == 0, result
