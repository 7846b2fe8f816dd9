"""Rewrite the parity table of docs/parity.md from the parity tests' tolerances and cells.

    PYTHONPATH=.:tests python benchmarks/parity/table.py

The table is `tests/parity_common.render_table()` after importing every tests/test_parity_*.py
(each fills its method's row); tests/test_parity_table.py fails when the page is not current.
"""

import importlib
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import parity_common as pc  # noqa: E402


def load_rows():
    for path in sorted((ROOT / "tests").glob("test_parity_*.py")):
        if path.stem != "test_parity_table":
            importlib.import_module(path.stem)
    return pc.render_table()


def main():
    table = load_rows()
    page = ROOT / "docs" / "parity.md"
    text = page.read_text()
    current = pc.table_in(text)
    if current is None:
        raise SystemExit(f"{page} has no table markers {pc.TABLE_BEGIN!r} ... {pc.TABLE_END!r}")
    page.write_text(text.replace(current, table))
    print(f"updated {page}")


if __name__ == "__main__":
    main()
