"""The package names no file of its own that the repository does not have.

Every comment and string literal of keras_ebm/ (docstrings, error messages) is searched for file
names ending in .md, .py, .gin or .json. One is checked when it is a file of this repository:

* a path whose first part is a top-level entry of the repository (`gin_configs/tiny.gin`,
  `docs/fid.md`, `tests/test_gmmc.py`) or a sub-package of keras_ebm (`trainers/base.py`) must
  exist; a path that leaves the repository (`../x/README.md`) is always stale;
* a bare `*.md` or `*.gin` name (`STYLE.md`, `tiny.gin`) must be a file of the repository, or a
  file a run writes (a name the package spells as a string literal of its own: `config.gin`,
  `results.md`).

Other paths (`models/ebm.py`) and bare `*.py` / `*.json` names (`train_wrn.py`,
`bpda_eot_attack_jem.json`) are left alone: the docstrings cite them from the official
repositories.
"""

import io
import os
import re
import tokenize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "keras_ebm")
FILE_NAME = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*[\w-]+(?:\.[\w-]+)*\.(?:md|py|gin|json))\b")


def _texts(path):
    """`(line, text)` of every comment and string literal of a Python file."""
    with open(path) as f:
        source = f.read()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.COMMENT, tokenize.STRING):
            yield token.start[0], token.string


def _package_files():
    for folder, dirs, files in os.walk(PACKAGE):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                yield os.path.join(folder, name)


def _repository_names():
    names = set()
    for _folder, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("__pycache__", "runs")]
        names.update(files)
    return names


def stale_references(paths):
    """`["file:line: name", ...]` for the names of repository files in `paths` that do not exist."""
    top = set(os.listdir(REPO))
    subpackages = {d for d in os.listdir(PACKAGE) if os.path.isdir(os.path.join(PACKAGE, d))}
    repository = _repository_names()
    texts = [(path, line, text) for path in paths for line, text in _texts(path)]
    # Files a run writes or reads by a fixed name: the package spells them as literals of their own.
    literals = {text.strip("'\"") for _, _, text in texts if FILE_NAME.fullmatch(text.strip("'\""))}
    stale = []
    for path, line, text in texts:
        for name in FILE_NAME.findall(text):
            first = name.split("/")[0]
            if "/" in name:
                if first == "..":
                    missing = True
                elif first in top:
                    missing = not os.path.exists(os.path.join(REPO, name))
                elif first in subpackages:
                    missing = not os.path.exists(os.path.join(PACKAGE, name))
                else:
                    continue  # a path of another repository
            elif name.endswith((".md", ".gin")):
                missing = name not in repository and name not in literals
            else:
                continue
            if missing:
                stale.append(f"{os.path.relpath(path, REPO)}:{line}: {name}")
    return stale


def test_the_package_names_only_files_the_repository_has():
    stale = stale_references(list(_package_files()))
    assert not stale, "Files named in keras_ebm/ that the repository does not have:\n" + "\n".join(stale)


def test_stale_names_are_found(tmp_path):
    """The check fails on each kind of stale name (and passes the ones that are not)."""
    module = tmp_path / "module.py"
    module.write_text(
        '"""Conventions of STYLE.md; see gin_configs/nowhere.gin and docs/fid.md, trainers/base.py,\n'
        'trainers/missing.py; cited: models/ebm.py, train_wrn.py."""\n'
        "# The format: ../shared/data/README.md; overlays: tiny.gin, other.gin; writes results.md.\n"
        'OUT = "results.md"\n'
    )
    found = [entry.split(": ", 1)[1] for entry in stale_references([str(module)])]
    assert found == [
        "STYLE.md",
        "gin_configs/nowhere.gin",
        "trainers/missing.py",
        "../shared/data/README.md",
        "other.gin",
    ]
