"""Every `model.fit` example of the README and of docs/ runs as written (so they cannot drift from
the code), every shell command of them is checked or marked with why it cannot run offline, and
every link and repository path they name exists.

The documents are README.md and every page under docs/ (the mkdocs site). The examples are the
python blocks marked `<!-- readme-example: NAME -->`. Each runs in a fresh process in a temporary
directory (as a user would paste it), then runs again and must resume from its finished run without
training. An example may appear in the README and in one docs page under the same name only as the
same code. The documents also must not name internal notes or documents that are not in the
repository.
"""

import glob
import json
import os
import re
import shlex
import subprocess
import sys
import unicodedata

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
DOCS = [README] + sorted(glob.glob(os.path.join(REPO, "docs", "**", "*.md"), recursive=True))
EXAMPLE = re.compile(r"<!-- readme-example: (\w+) -->\n```python\n(.*?)```", re.S)


def _rel(path):
    return os.path.relpath(path, REPO)


def _read(path):
    with open(path) as f:
        return f.read()


def examples():
    """{name: code} over README.md and docs/; a name found twice must hold the same code."""
    out, where = {}, {}
    for path in DOCS:
        for name, code in EXAMPLE.findall(_read(path)):
            if name in out:
                assert out[name] == code, f"example {name!r} differs between {where[name]} and {_rel(path)}"
                assert where[name] == "README.md", f"example {name!r} is in {where[name]} and {_rel(path)}"
            out[name], where[name] = code, where.get(name, _rel(path))
    return out


def test_the_readme_example_is_the_docs_example():
    readme = dict(EXAMPLE.findall(_read(README)))
    assert list(readme) == ["softmax"]
    fit = dict(EXAMPLE.findall(_read(os.path.join(REPO, "docs", "fit.md"))))
    assert fit["softmax"] == readme["softmax"]


def test_every_method_has_an_example():
    assert sorted(examples()) == ["clel", "gmmc", "hdge", "sadajem", "softmax"]


# The softmax example runs in the default suite; the four EBMs (20-30 s each, twice) in the slow one.
@pytest.mark.parametrize(
    "name", [n if n == "softmax" else pytest.param(n, marks=pytest.mark.slow) for n in sorted(examples())]
)
def test_readme_example_runs_and_resumes(name, tmp_path):
    script = tmp_path / f"{name}.py"
    script.write_text(examples()[name])
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), TF_CPP_MIN_LOG_LEVEL="3")
    first = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    runs = os.listdir(tmp_path / "runs")
    assert len(runs) == 1 and os.listdir(tmp_path / "runs" / runs[0] / "checkpoints")
    again = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resumed from" in again.stdout and "nothing to do" in again.stdout, again.stdout[-2000:]


def test_readme_cites_only_what_users_have():
    for path in DOCS + [os.path.join(REPO, "mkdocs.yml"), os.path.join(REPO, "CHANGELOG.md")]:
        text = _read(path)
        for internal in ("ENVIRONMENT.md", "CODE_FACTS", "STYLE.md", "PAPERS.md", "shared/reference"):
            assert internal not in text, f"{_rel(path)} names {internal}, which users do not have"


def test_history_is_in_the_changelog():
    """The README and docs/ describe what is; what changed, and what users saw before, is in
    CHANGELOG.md."""
    for path in DOCS:
        text = _read(path)
        for history in ("this release", "previous release", "(before:", "previous order"):
            assert history not in text, f"{_rel(path)}: {history!r} reads as history (CHANGELOG.md)"


def test_the_readme_is_short():
    assert _read(README).count("\n") <= 300


def _slug(heading):
    """The anchor Python-Markdown's toc extension (mkdocs) gives a heading."""
    text = re.sub(r"[`*]", "", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(path):
    text = re.sub(r"```.*?```", "", _read(path), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_every_link_of_the_docs_exists():
    """Relative links of README.md and docs/ point at files of the repository (and at headings that
    exist in them); mkdocs build --strict checks the site's links again, this also covers the README."""
    broken = []
    for path in DOCS:
        text = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", _read(path), flags=re.S))
        for target in LINK.findall(text):
            if re.match(r"^[a-z]+:", target):
                continue  # https://, mailto:
            file, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            if not os.path.exists(full):
                broken.append(f"{_rel(path)}: {target} (no {_rel(full)})")
            elif anchor and full.endswith(".md") and anchor not in _anchors(full):
                broken.append(f"{_rel(path)}: {target} (no heading #{anchor} in {_rel(full)})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_config_page_lists_every_config():
    """docs/configuration.md names every file of gin_configs/ (`gmmc_{dis,gen}.gin` names both)."""
    text = _read(os.path.join(REPO, "docs", "configuration.md"))
    named = set()
    for name in re.findall(r"`([\w/{},]+\.gin)`", text):
        m = re.match(r"(.*)\{(.*?)\}(.*)", name)
        named.update(m.group(1) + part + m.group(3) for part in m.group(2).split(",")) if m else named.add(name)
    configs = {
        os.path.relpath(p, os.path.join(REPO, "gin_configs"))
        for p in glob.glob(os.path.join(REPO, "gin_configs", "**", "*.gin"), recursive=True)
    }
    assert not configs - named, f"configs missing from docs/configuration.md: {sorted(configs - named)}"


# Paths the documents name on purpose although they do not exist: the error a user sees for them.
NAMED_BUT_ABSENT = {"gin_configs/tiny_cnn.gin": "docs/reliability.md shows the error for a missing --gin_file"}
REPO_PATH = re.compile(r"(?<![\w/.~-])((?:docs|gin_configs|benchmarks|tests|keras_ebm)/[\w./-]*[\w/])")


def test_the_docs_name_no_missing_file():
    """Every repository path the documents name (docs/..., gin_configs/..., benchmarks/..., tests/...,
    keras_ebm/...) exists; a pattern ({a,b}, <name>, *) is left alone."""
    missing = []
    for path in DOCS:
        for m in REPO_PATH.finditer(_read(path)):
            name, after = m.group(1), m.string[m.end(1) : m.end(1) + 2]
            if re.match(r"\.?[{<*]", after) or name in NAMED_BUT_ABSENT:
                continue  # a pattern, or an absent path named on purpose
            if not os.path.exists(os.path.join(REPO, name)):
                missing.append(f"{_rel(path)}: {name}")
    assert not missing, "documents name files that are not in the repository:\n" + "\n".join(missing)


# ------------------------------------------------------------------------------ shell commands
# Every command of the ```bash blocks of README.md and docs/ is extracted. train.py / eval.py /
# keras-ebm-* / `python -m keras_ebm...` commands are checked where they stand: their flags parse, the gin files
# they name exist and parse with their bindings (a placeholder such as <name> takes the quickstart).
# Other commands (pip, venv, pytest, several machines, ...) need a marker comment on the line before
# their block: `<!-- readme-commands: not run offline: <why> -->`. train.py / eval.py commands
# written inline (`python eval.py --model_dir=...` in a table or a sentence) are checked the same
# way. The quickstart block and its eval / compare commands also run for real, at tiny size (slow
# test below).
BLOCK = re.compile(r"(?:<!-- readme-commands: (?P<marker>[^>]*?) -->\n)?```(?:bash|sh|shell)\n(?P<body>.*?)```", re.S)
SCRIPTS = {"train.py": "train", "eval.py": "eval", "keras-ebm-train": "train", "keras-ebm-eval": "eval"}


def readme_commands(paths=None):
    """[("file:line", command, marker or None)] of every ```bash block of README.md and docs/,
    continuation lines joined, comments dropped, `a && b` split."""
    out = []
    for path in paths or DOCS:
        text = _read(path)
        for m in BLOCK.finditer(text):
            line = text[: m.start("body")].count("\n") + 1
            body = re.sub(r"\\\n\s*", " ", m.group("body"))
            for k, raw in enumerate(body.splitlines()):
                command = re.sub(r"(^|\s)#.*$", "", raw).strip()
                for part in (p.strip() for p in command.split("&&")):
                    if part:
                        out.append((f"{_rel(path)}:{line + k}", part, m.group("marker")))
    return out


INLINE = re.compile(r"`((?:python (?:train|eval)\.py|keras-ebm-(?:train|eval)) -[^`]*)`")


def inline_commands():
    """[("file:line", command)] of the train.py / eval.py commands written inline (`python eval.py
    --model_dir=...` in a table or a sentence), checked like the blocks' commands."""
    out = []
    for path in DOCS:
        text = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), _read(path), flags=re.S)
        for m in INLINE.finditer(text):
            command = re.sub(r"\[(--[^\]]+)\]", r"\1", " ".join(m.group(1).split()))  # [--optional] flags too
            out.append((f"{_rel(path)}:{text[: m.start()].count(chr(10)) + 1}", command))
    return out


def _script_call(command):
    """`(script kind, argv)` of a train/eval command (environment assignments dropped), else None."""
    words = shlex.split(command)
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        words = words[1:]
    if words[:1] == ["python"] and len(words) > 1 and words[1] in SCRIPTS:
        return SCRIPTS[words[1]], words[2:]
    if words and words[0] in SCRIPTS:
        return SCRIPTS[words[0]], words[1:]
    return None


def _gin_of(argv):
    files = [a.split("=", 1)[1].replace("<name>", "quickstart") for a in argv if a.startswith("--gin_file=")]
    params = [a.split("=", 1)[1] for a in argv if a.startswith("--gin_param=")]
    return files, params


def test_readme_commands_are_found():
    readme = [c for _, c, _ in readme_commands([README])]
    assert any("gin_configs/quickstart.gin" in c for c in readme)
    assert any("eval.py --compare runs/quickstart runs/quickstart/baseline" in c for c in readme)
    where = {w.split(":")[0] for w, _, _ in readme_commands()}
    for page in ("jem", "gmmc", "hdge", "clel", "data", "training", "evaluation"):
        assert f"docs/{page}.md" in where, page
    assert len(readme_commands()) > 60


def test_every_readme_command_is_checked_or_marked():
    """Each command of README.md and docs/ parses as written (flags, gin files and bindings), or its
    block says why it cannot run offline. No command may name a file a fresh clone does not have."""
    import gin

    from keras_ebm import run_config

    calls = {"train": [], "eval": []}
    unmarked = []
    inline = [(line, command, None) for line, command in inline_commands()]
    assert len(inline) >= 10, inline  # the evaluation page's table of paper columns
    for line, command, marker in readme_commands() + inline:
        call = _script_call(command)
        if call is None:
            words = shlex.split(command)
            if words[0] == "export" and all("=" in w for w in words[1:]):
                continue  # an environment variable for the commands after it
            if words[:3] == ["python", "-m", "keras_ebm.data.prepare"]:
                out = subprocess.run(
                    [sys.executable, "-m", "keras_ebm.data.prepare", "--help"],
                    cwd=REPO,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
                assert out.returncode == 0 and words[3] in out.stdout, (line, out.stderr[-2000:])
                continue
            if marker is None:
                unmarked.append(f"{line}: {command}")
            else:
                assert marker.startswith("not run offline: ") and len(marker) > 30, (line, marker)
            continue
        kind, argv = call
        if "$" in command:  # shell variables: only in a marked block
            assert marker is not None, f"{line}: {command}"
            continue
        calls[kind].append(argv)
        files, params = _gin_of(argv)
        for path in files:
            assert os.path.isfile(os.path.join(REPO, path)), f"{line}: {path} is not in the repository"
        if files or params:
            with gin.unlock_config():
                gin.clear_config()
                run_config.parse_gin(files, params)
    assert not unmarked, "commands neither checked nor marked:\n" + "\n".join(unmarked)
    # The flags of every command, parsed by the scripts' own flag definitions (no TensorFlow).
    for kind, argvs in calls.items():
        code = (
            f"import sys, json\nfrom absl import flags\nimport keras_ebm.scripts.{kind}\n"
            "for argv in json.load(sys.stdin):\n    flags.FLAGS.unparse_flags()\n"
            f"    flags.FLAGS(['{kind}.py'] + argv)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            input=json.dumps(argvs),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            env=dict(os.environ, PYTHONPATH=REPO),
        )
        assert out.returncode == 0, out.stderr[-3000:]


def test_readme_points_at_no_undistributed_overlay():
    """The data overlay the documents tell an offline user to add is in the repository and reads the
    files docs/data.md tells them to download (not the project's own JPEG archive)."""
    text = "\n".join(_read(path) for path in DOCS)
    for hint in re.findall(r"offline: add (--gin_file=[\w/.]+)", text):
        assert hint == "--gin_file=gin_configs/data/cifar10_python.gin", hint
    assert "tfds, online" not in text
    assert "train/make_dataset_fn.download = False" in text  # the binding that controls downloads


@pytest.mark.slow
def test_quickstart_block_and_its_eval_commands_run(tmp_path):
    """The quickstart command (at tiny size: tiny.gin, evaluation on) and the eval.py and --compare
    commands of the README and docs/ on its two run folders, as written, in a fresh working directory."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user runs it: train.py quietens TensorFlow itself
    ran, seen = [], set()
    for line, command, _ in readme_commands():
        call = _script_call(command)
        if call is None or "runs/quickstart" not in command or command in seen:
            continue
        seen.add(command)  # the same command on two pages runs once
        kind, argv = call
        if kind == "train":
            argv = argv + ["--gin_file=gin_configs/tiny.gin", "--gin_param=run_training.evaluate = True"]
        out = subprocess.run(
            [sys.executable, os.path.join(REPO, f"{kind}.py")] + argv,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, (line, command, out.stdout[-3000:], out.stderr[-3000:])
        assert "cuInit" not in out.stderr and "oneDNN" not in out.stderr, out.stderr[:2000]
        ran.append(kind)
    assert ran[0] == "train" and ran.count("eval") >= 2
    report = (tmp_path / "runs" / "quickstart" / "report" / "report.md").read_text()
    assert "| SADAJEM (quickstart, tiny) | runs/quickstart |" in report
    assert "| SoftmaxClassifier (quickstart, tiny, baseline) | runs/quickstart/baseline |" in report
    results = json.loads((tmp_path / "runs" / "quickstart" / "baseline" / "eval" / "results.json").read_text())
    assert list(results["ood"]) == ["interp", "photos"] and "robustness" in results
