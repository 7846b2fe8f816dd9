"""Evaluators registered by name and configured from gin (keras_ebm.evaluation.registry): a new
evaluation is one file, run from gin or eval.py, with its own lines in results.md and columns in the
report across runs; eval.py's flags are thin aliases of the evaluators' gin parameters."""

import inspect
import json

import gin
import numpy as np
import pytest

from keras_ebm.evaluation import adapters, registry, runner
from test_configs import _run
from test_eval_suite import fixed_export  # noqa: F401  (a fixture)

# A new evaluation: this one file, nothing else (eval.py, runner.py, report.py untouched).
TOY_MODULE = """
import numpy as np

from keras_ebm.evaluation import registry


@registry.register("{name}")
class Brightness(registry.Evaluator):
    key = "{name}"

    def __init__(self, max_images=100, label="mean"):
        self.max_images, self.label = max_images, label

    def run(self, ctx):
        x, _ = ctx.test_set()
        x = x[:self.max_images]
        return {{self.label: {{"brightness": float(np.mean(x)), "num_examples": int(len(x))}}}}

    @classmethod
    def markdown(cls, entries):
        return ["", *(f"Brightness {{n}}: {{r['brightness']:.3f}} ({{r['num_examples']}} images)"
                      for n, r in entries.items())]

    @classmethod
    def columns(cls, results_list):
        names = sorted({{n for r in results_list for n in (r.get("{name}") or {{}})}})
        return [(f"brightness [{{n}}]", lambda r, n=n: (r.get("{name}") or {{}}).get(n, {{}}).get("brightness"),
                 "num") for n in names]

    @classmethod
    def counts(cls, entries):
        return {{f"{{n}} images (brightness)": r["num_examples"] for n, r in entries.items()}}
"""


def _spec(root, file):
    return {"name": "npz", "split": "test", "local_path": str(root / file)}


def test_a_toy_evaluator_runs_from_gin_and_reports(fixed_export, tmp_path, monkeypatch):  # noqa: F811  (the fixture)
    root, _ = fixed_export
    (tmp_path / "toy_brightness_inproc.py").write_text(TOY_MODULE.format(name="brightness_inproc"))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with gin.unlock_config():
            gin.clear_config()
            gin.parse_config(
                [
                    "import toy_brightness_inproc",
                    "evaluate.evaluators = ['standard', 'brightness_inproc']",
                    "brightness_inproc.max_images = 30",
                    "brightness_inproc.label = 'first30'",
                    f"run_eval.in_dist = {_spec(root, 'test.npz')!r}",
                ]
            )
            out = tmp_path / "eval"
            results = registry.evaluate(saved_model=str(root / "export"), output_dir=str(out))
        assert set(results) == {"standard", "brightness_inproc"}
        x = np.load(root / "test.npz")["x"]
        on_disk = json.loads((out / "results.json").read_text())
        assert on_disk["brightness_inproc"]["first30"] == {
            "brightness": pytest.approx(float(np.mean(x[:30]))),
            "num_examples": 30,
        }
        assert on_disk["num_examples"] == 80  # the standard evaluation ran too, first
        assert "brightness_inproc" in runner.EXTRA_KEYS
        assert "Brightness first30:" in (out / "results.md").read_text()
        # run_eval again keeps the new entry, as it keeps the built-in ones.
        runner.run_eval(saved_model=str(root / "export"), output_dir=str(out), in_dist=_spec(root, "test.npz"))
        assert "brightness_inproc" in json.loads((out / "results.json").read_text())
    finally:
        registry.unregister("brightness_inproc")
        gin.clear_config()
    assert "brightness_inproc" not in runner.EXTRA_KEYS


def test_a_toy_evaluator_runs_from_eval_py_and_the_compare_report(fixed_export, tmp_path, monkeypatch):  # noqa: F811
    root, _ = fixed_export
    (tmp_path / "toy_brightness.py").write_text(TOY_MODULE.format(name="brightness"))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:" + __import__("os").environ.get("PYTHONPATH", ""))
    out = tmp_path / "run" / "eval"
    data = [f"--gin_param=run_eval.in_dist = {_spec(root, 'test.npz')!r}"]
    log = _run(
        [
            "eval.py",
            f"--saved_model={root / 'export'}",
            f"--output_dir={out}",
            "--nostandard",
            "--gin_param=import toy_brightness",
            "--evaluators=brightness",
            "--eval_examples=40",
            "--gin_param=brightness.label = 'capped'",
        ]
        + data
    )
    results = json.loads((out / "results.json").read_text())
    assert list(results) == ["brightness"], log  # --nostandard: only the evaluator asked for
    x = np.load(root / "test.npz")["x"]
    assert results["brightness"]["capped"]["num_examples"] == 40  # --eval_examples reaches it
    assert results["brightness"]["capped"]["brightness"] == pytest.approx(float(np.mean(x[:40])))
    report_dir = tmp_path / "report"
    _run(
        [
            "eval.py",
            "--compare",
            str(tmp_path / "run"),
            "--gin_param=import toy_brightness",
            f"--output_dir={report_dir}",
        ]
    )
    rep = json.loads((report_dir / "report.json").read_text())
    assert "brightness [capped]" in rep["columns"]
    (row,) = rep["rows"].values()
    assert row["brightness [capped]"] == pytest.approx(results["brightness"]["capped"]["brightness"])
    assert "| capped images (brightness) |" in (report_dir / "report.md").read_text()
    with pytest.raises(AssertionError, match="Unknown evaluator 'nope'"):
        _run(["eval.py", f"--saved_model={root / 'export'}", "--evaluators=nope"] + data)


# ---------------------------------------------------------------------------------- eval.py flags
def _eval_flags():
    from absl import flags

    from helpers import import_script

    return flags, import_script("eval")  # another test of this worker may have imported train's flags


def test_every_flag_binds_an_evaluator_parameter_with_the_flags_default():
    flags, eval_script = _eval_flags()
    import keras_ebm.configurables  # noqa: F401  (inception_features, run_eval)

    for flag, target in eval_script.FLAG_BINDINGS.items():
        default = flags.FLAGS[flag].default
        targets = target(default if default is not None else "x") if callable(target) else {target: default}
        for param in targets:
            configurable, name = param.rsplit(".", 1)
            fn = (
                registry.get(configurable)
                if configurable in registry.names()
                else gin.config._REGISTRY.get_match(configurable).wrapped
            )
            signature = inspect.signature(fn)
            assert name in signature.parameters, (flag, param)
            if callable(target) or configurable not in registry.names():
                continue  # the old code passed these only when given
            bound = signature.parameters[name].default
            norm = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
            assert norm(bound) == norm(default), (flag, param, bound, default)


def test_flags_given_become_gin_bindings_others_bind_nothing():
    flags, eval_script = _eval_flags()
    try:
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["eval.py", "--model_dir=x"])
        assert eval_script.flag_bindings() == []
        flags.FLAGS.unparse_flags()
        flags.FLAGS(
            [
                "eval.py",
                "--model_dir=x",
                "--epsilons=1,2",
                "--eot=3",
                "--inception_weights=NONE",
                "--clel_betas=0,0.1",
                "--cw",
                "--eval_examples=7",
            ]
        )
        assert sorted(eval_script.flag_bindings()) == sorted(
            [
                "robustness.epsilons = ['1', '2']",
                "robustness.eot_reps = 3",
                "generative.inception = False",
                "run_eval.clel_betas = [0.0, 0.1]",
                "robustness.cw = True",
                "evaluate.max_examples = 7",
            ]
        )
        with gin.unlock_config():
            gin.clear_config()
            gin.parse_config(["evaluate.evaluators = ['ais', 'robustness']"])
            assert eval_script.selected_evaluators() == ["standard", "robustness", "ais"]
            gin.clear_config()
    finally:
        flags.FLAGS.unparse_flags()


# ---------------------------------------------------------------------------------- pixel range
def test_the_adapter_decides_the_pixel_range_also_through_attack_targets():
    from keras_ebm.evaluation import robustness

    class Model:
        pixel_range = (0.0, 1.0)

        def __call__(self, x):
            return x

    model = Model()
    assert adapters.model_pixel_range(model) == (0.0, 1.0)
    assert adapters.model_pixel_range(robustness.WhiteBox(model)) == (0.0, 1.0)  # the target's .logits_fn
    assert adapters.model_pixel_range(model.__call__) == (0.0, 1.0)  # a bound method's object
    assert adapters.model_pixel_range(model, (-1, 1)) == (-1.0, 1.0)
    with pytest.raises(ValueError, match="pixel range is unknown"):
        adapters.model_pixel_range(lambda x: x)
    with pytest.raises(ValueError, match="lo < hi"):
        adapters.model_pixel_range(model, (1, 0))
