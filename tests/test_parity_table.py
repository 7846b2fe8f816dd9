"""docs/parity.md's parity table is the one the parity tests' tolerances and cells give."""

import importlib
import pathlib

import parity_common as pc

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_parity_table_is_current():
    for path in sorted((ROOT / "tests").glob("test_parity_*.py")):
        if path.stem != "test_parity_table":
            importlib.import_module(path.stem)
    text = (ROOT / "docs" / "parity.md").read_text()
    assert pc.table_in(text) == pc.render_table(), (
        "docs/parity.md's parity table is out of date: run `PYTHONPATH=.:tests python benchmarks/parity/table.py`"
    )
