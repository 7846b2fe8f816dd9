"""Every `model.fit` example of the README runs as written (so the README cannot drift from the code).

The examples are the python blocks marked `<!-- readme-example: NAME -->`. Each runs in a fresh
process in a temporary directory (as a user would paste it), then runs again and must resume from
its finished run without training. The README section also must not name documents that are not in
the repository.
"""

import os
import re
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
