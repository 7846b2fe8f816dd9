"""Every `model.fit` example of the README runs as written (so the README cannot drift from the code),
and every shell command of the README is checked or marked with why it cannot run offline.

The examples are the python blocks marked `<!-- readme-example: NAME -->`. Each runs in a fresh
process in a temporary directory (as a user would paste it), then runs again and must resume from
its finished run without training. The README section also must not name documents that are not in
the repository.
"""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
EXAMPLE = re.compile(r"<!-- readme-example: (\w+) -->\n```python\n(.*?)```", re.S)


def examples():
    with open(README) as f:
        return dict(EXAMPLE.findall(f.read()))


def test_every_method_has_an_example():
    assert sorted(examples()) == ["clel", "gmmc", "hdge", "sadajem", "softmax"]


# The softmax example runs in the default suite; the four EBMs (20-30 s each, twice) in the slow one.
@pytest.mark.parametrize("name", [n if n == "softmax" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(examples())])
def test_readme_example_runs_and_resumes(name, tmp_path):
    script = tmp_path / f"{name}.py"
    script.write_text(examples()[name])
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="3")
    first = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    runs = os.listdir(tmp_path / "runs")
    assert len(runs) == 1 and os.listdir(tmp_path / "runs" / runs[0] / "checkpoints")
    again = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resumed from" in again.stdout and "nothing to do" in again.stdout, again.stdout[-2000:]


def test_readme_cites_only_what_users_have():
    with open(README) as f:
        text = f.read()
    for internal in ("ENVIRONMENT.md", "CODE_FACTS", "STYLE.md", "PAPERS.md", "shared/reference"):
        assert internal not in text, f"README names {internal}, which users do not have"


# ------------------------------------------------------------------------------ shell commands
# Every command of the README's ```bash blocks is extracted. train.py / eval.py / keras-ebm-* /
# `python -m keras_ebm...` commands are checked where they stand: their flags parse, the gin files
# they name exist and parse with their bindings (a placeholder such as <name> takes the quickstart).
# Other commands (pip, venv, pytest, several machines, ...) need a marker comment on the line before
# their block: `<!-- readme-commands: not run offline: <why> -->`. The quickstart block and its
# eval / compare commands also run for real, at tiny size (slow test below).
BLOCK = re.compile(r"(?:<!-- readme-commands: (?P<marker>[^>]*?) -->\n)?```(?:bash|sh|shell)\n(?P<body>.*?)```", re.S)
SCRIPTS = {"train.py": "train", "eval.py": "eval", "keras-ebm-train": "train", "keras-ebm-eval": "eval"}


def readme_commands():
    """[(line number, command, marker or None)] of every ```bash block, continuation lines joined,
    comments dropped, `a && b` split."""
    with open(README) as f:
        text = f.read()
    out = []
    for m in BLOCK.finditer(text):
        line = text[: m.start("body")].count("\n") + 1
        body = re.sub(r"\\\n\s*", " ", m.group("body"))
        for k, raw in enumerate(body.splitlines()):
            command = re.sub(r"(^|\s)#.*$", "", raw).strip()
            for part in (p.strip() for p in command.split("&&")):
                if part:
                    out.append((line + k, part, m.group("marker")))
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
    commands = [c for _, c, _ in readme_commands()]
    assert any("gin_configs/quickstart.gin" in c for c in commands)
    assert any("eval.py --compare runs/quickstart runs/quickstart/baseline" in c for c in commands)
    assert len(commands) > 40


def test_every_readme_command_is_checked_or_marked():
    """Each command parses as written (flags, gin files and bindings), or its block says why it
    cannot run offline. Nothing of the README may name a file a fresh clone does not have."""
    import gin

    from keras_ebm import run_config

    calls = {"train": [], "eval": []}
    unmarked = []
    for line, command, marker in readme_commands():
        call = _script_call(command)
        if call is None:
            words = shlex.split(command)
            if words[0] == "export" and all("=" in w for w in words[1:]):
                continue  # an environment variable for the commands after it
            if words[:3] == ["python", "-m", "keras_ebm.data.prepare"]:
                out = subprocess.run([sys.executable, "-m", "keras_ebm.data.prepare", "--help"], cwd=REPO,
                                     capture_output=True, text=True, timeout=120)
                assert out.returncode == 0 and words[3] in out.stdout, (line, out.stderr[-2000:])
                continue
            if marker is None:
                unmarked.append(f"line {line}: {command}")
            else:
                assert marker.startswith("not run offline: ") and len(marker) > 30, (line, marker)
            continue
        kind, argv = call
        if "$" in command:  # shell variables: only in a marked block
            assert marker is not None, f"line {line}: {command}"
            continue
        calls[kind].append(argv)
        files, params = _gin_of(argv)
        for path in files:
            assert os.path.isfile(os.path.join(REPO, path)), f"line {line}: {path} is not in the repository"
        if files or params:
            with gin.unlock_config():
                gin.clear_config()
                run_config.parse_gin(files, params)
    assert not unmarked, "README commands neither checked nor marked:\n" + "\n".join(unmarked)
    # The flags of every command, parsed by the scripts' own flag definitions (no TensorFlow).
    for kind, argvs in calls.items():
        code = ("import sys, json\nfrom absl import flags\nimport keras_ebm.scripts.%s\n"
                "for argv in json.load(sys.stdin):\n    flags.FLAGS.unparse_flags()\n"
                "    flags.FLAGS(['%s.py'] + argv)\n" % (kind, kind))
        out = subprocess.run([sys.executable, "-c", code], input=json.dumps(argvs), cwd=REPO, capture_output=True,
                             text=True, timeout=120, env=dict(os.environ, PYTHONPATH=REPO))
        assert out.returncode == 0, out.stderr[-3000:]


def test_readme_points_at_no_undistributed_overlay():
    """The data overlay the README tells an offline user to add is in the repository and reads the
    files the README tells them to download (not the project's own JPEG archive)."""
    with open(README) as f:
        text = f.read()
    for hint in re.findall(r"offline: add (--gin_file=[\w/.]+)", text):
        assert hint == "--gin_file=gin_configs/data/cifar10_python.gin", hint
    assert "tfds, online" not in text
    assert 'train/make_dataset_fn.download = False' in text  # the binding that controls downloads


@pytest.mark.slow
def test_quickstart_block_and_its_eval_commands_run(tmp_path):
    """The quickstart command (at tiny size: tiny.gin, evaluation on) and the README's eval.py and
    --compare commands on its two run folders, as written, in a fresh working directory."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # as a user runs it: train.py quietens TensorFlow itself
    ran = []
    for line, command, _ in readme_commands():
        call = _script_call(command)
        if call is None or "runs/quickstart" not in command:
            continue
        kind, argv = call
        if kind == "train":
            argv = argv + ["--gin_file=gin_configs/tiny.gin", "--gin_param=run_training.evaluate = True"]
        out = subprocess.run([sys.executable, os.path.join(REPO, f"{kind}.py")] + argv, cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, (line, command, out.stdout[-3000:], out.stderr[-3000:])
        assert "cuInit" not in out.stderr and "oneDNN" not in out.stderr, out.stderr[:2000]
        ran.append(kind)
    assert ran[0] == "train" and ran.count("eval") >= 2
    report = (tmp_path / "runs" / "quickstart" / "report" / "report.md").read_text()
    assert "| SADAJEM (quickstart, tiny) | runs/quickstart |" in report
    assert "| SoftmaxClassifier (quickstart, tiny, baseline) | runs/quickstart/baseline |" in report
    results = json.loads((tmp_path / "runs" / "quickstart" / "baseline" / "eval" / "results.json").read_text())
    assert list(results["ood"]) == ["interp", "photos"] and "robustness" in results
