"""The examples of docs/testing.md and of the testing library's docstrings run."""
from __future__ import annotations

import doctest
from pathlib import Path

import scsi_target.testing.inprocess

DOC = Path(__file__).resolve().parent.parent / "docs" / "testing.md"
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def test_docs_testing_md_examples():
    r = doctest.testfile(str(DOC), module_relative=False, optionflags=FLAGS)
    assert r.attempted > 20 and r.failed == 0, r


def test_inprocess_docstring_examples():
    r = doctest.testmod(scsi_target.testing.inprocess, optionflags=FLAGS)
    assert r.attempted >= 5 and r.failed == 0, r
