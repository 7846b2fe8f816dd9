"""Evaluators registered by name and configured from gin (big_vision's evaluators: one small file each).

An evaluator is a class in a file of its own, registered with `@register("name")`, which also makes
it gin-configurable under that name (`robustness.epsilons = [1, 2, 4]`). `evaluate(evaluators=[...])`
creates each one by name and runs them in order on one `EvalContext`, which holds what they share
and makes it once, when first needed: the output directory, the in-distribution test set
(`run_eval.in_dist`), the trainer restored from the checkpoint, the samples. What an evaluator
returns is merged into `<output_dir>/results.json` under its `key` (`runner.merge_results`).

The results markdown (`runner.merge_results`) and the report across runs (`report.compare_runs`)
ask every registered evaluator for its part (`markdown` or, one paragraph per entry, `paragraph`;
`columns`, `counts`, `compare_plots`), so a new evaluation is one new file:

    from keras_ebm.evaluation import registry

    @registry.register("brightness")
    class Brightness(registry.Evaluator):
        key = "brightness"  # results.json entry

        def __init__(self, max_images=100):  # gin: brightness.max_images = 50
            self.max_images = max_images

        def run(self, ctx):
            x, _ = ctx.test_set()
            return {"mean": {"value": float(x[:self.max_images].mean()), "num_examples": len(x)}}

and `python eval.py --model_dir=runs/x --gin_param='import my_evaluators' --evaluators=brightness`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import gin

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import Any

    import numpy as np

    from keras_ebm.trainers.base import EBMTrainer

    # A column of the report across runs: (title, getter(results) -> value, "pct" or "num").
    Column = tuple[str, Callable[[Mapping[str, Any]], Any], str]

GIN_MODULE = "keras_ebm.evaluation.evaluators"
_EVALUATORS = {}


class UsageError(ValueError):
    """Options that do not go together (eval.py shows it as a usage error of its flags)."""


class Evaluator:
    """One evaluation. Subclasses set `key` (the results.json entry their `run` returns, None when
    they write files of their own) and take their options as `__init__` arguments (gin binds them).

    Class-level hooks read results.json back (they need no instance):
    `markdown(entries)` lines of results.md (by default a paragraph per entry, `paragraph(name,
    entry)`, when the subclass defines it), `columns(results_list)` and `counts(entries)` of the
    report across runs, `compare_plots(runs, output_dir)` its extra plots.
    """

    name = None  # set by `register`
    key = None
    export_only = False  # reads nothing but the export (the trainer, if any needs it, is restored after)
    # Optional `paragraph(name, entry) -> str` (a staticmethod): the results.md text of one entry.
    paragraph: Callable[[str, Mapping[str, Any]], str] | None = None

    @property
    def needs_model(self) -> bool:
        """True when `run` uses the trainer restored from the checkpoint (`ctx.model`)."""
        return False

    def run(self, ctx: EvalContext) -> dict[str, Any] | None:
        """Evaluate; returns `{name: result}` to merge under `key`, or None."""
        raise NotImplementedError

    @classmethod
    def markdown(cls, entries: Mapping[str, Any]) -> list[str]:
        """results.md lines of this evaluator's entries: a paragraph per entry (`paragraph`), if
        the evaluator defines one."""
        return [] if cls.paragraph is None else paragraphs(entries, cls.paragraph)

    @classmethod
    def columns(cls, results_list: Sequence[Mapping[str, Any]]) -> list[Column]:
        """`[(title, getter(results) -> value, "pct" or "num")]` of the report across runs."""
        return []

    @classmethod
    def counts(cls, entries: Mapping[str, Any]) -> dict[str, int]:
        """`{what: number of images}` behind this evaluator's numbers, for the report."""
        return {}

    @classmethod
    def compare_plots(
        cls, runs: Mapping[str, tuple[str, Mapping[str, Any]]], output_dir: str | os.PathLike
    ) -> list[str]:
        """Plots of the report across runs (`runs`: `{name: (eval_dir, results)}`); returns paths."""
        return []


def paragraphs(entries: Mapping[str, Any], text: Callable[[str, Any], str]) -> list[str]:
    """results.md lines of an evaluator's entries that take one paragraph each: a blank line, then
    `text(name, entry)`, for every entry in order (for `Evaluator.markdown`)."""
    return [line for name, r in entries.items() for line in ("", text(name, r))]


def register(name: str) -> Callable[[type[Evaluator]], type[Evaluator]]:
    """Class decorator: registers an `Evaluator` subclass under `name`, gin-configurable as `name`."""

    def decorate(cls):
        if name in _EVALUATORS:
            raise ValueError(f"An evaluator named {name!r} is already registered ({_EVALUATORS[name].__name__}).")
        cls.name = name
        configurable = gin.configurable(name, module=GIN_MODULE)(cls)
        _EVALUATORS[name] = configurable
        return configurable

    return decorate


def unregister(name: str) -> None:
    """Removes `name` from the registry (tests; gin keeps the configurable)."""
    _EVALUATORS.pop(name)


def _builtins():
    from keras_ebm.evaluation import evaluators  # noqa: F401  (registers the built-in evaluators)


def names() -> tuple[str, ...]:
    """Every registered evaluator's name, in registration order (the order of the reports)."""
    _builtins()
    return tuple(_EVALUATORS)


def get(name: str) -> type[Evaluator]:
    """The registered evaluator class `name`."""
    _builtins()
    if name not in _EVALUATORS:
        raise UsageError(
            f"Unknown evaluator {name!r}; registered: {', '.join(_EVALUATORS)}. Register one with "
            "keras_ebm.evaluation.registry.register (and import its module, e.g. --gin_param='import m')."
        )
    return _EVALUATORS[name]


def keyed() -> list[type[Evaluator]]:
    """The registered evaluator classes that add an entry to results.json, in registration order."""
    _builtins()
    return [cls for cls in _EVALUATORS.values() if cls.key]


def result_keys() -> list[str]:
    """The results.json entries evaluators add beside `run_eval`'s ("robustness", ...)."""
    return tuple(cls.key for cls in keyed())


class EvalContext:
    """What the evaluators of one run share, each made once, when first asked for.

    Args:
        model_dir: the train.py run directory (needed by evaluators that use the trainer).
        saved_model: an export, instead of `<model_dir>/export`.
        output_dir: where results go (default `<model_dir>/eval`, else `./eval`).
        max_examples: use only the first N images of every set (test set, attacked images, scored
            samples); the standard evaluation's default is `run_eval.max_examples`.
        in_dist: the in-distribution spec (default the gin binding `run_eval.in_dist`).
        reparse_config: parses this run's gin config again (after an evaluator parsed another
            run's, `restore.restore_run`); eval.py passes its own.
        evaluators: the evaluator instances of the run (the "samples" one supplies `samples`).
    """

    def __init__(
        self,
        model_dir: str | os.PathLike | None = None,
        saved_model: str | os.PathLike | None = None,
        output_dir: str | os.PathLike | None = None,
        max_examples: int | None = None,
        in_dist: Mapping[str, Any] | Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
        reparse_config: Callable[[], None] | None = None,
        evaluators: Sequence[Evaluator] = (),
    ) -> None:
        self.model_dir = model_dir
        self.saved_model = saved_model
        self.output_dir = output_dir or os.path.join(model_dir or ".", "eval")
        self.max_examples = max_examples
        self._in_dist = in_dist
        self._reparse_config = reparse_config
        self.evaluators = list(evaluators)
        self._model = None
        self._samples = None

    @property
    def in_dist(self) -> Mapping[str, Any] | Callable[[], tuple[np.ndarray, np.ndarray]]:
        if self._in_dist is None:
            from keras_ebm import run_config

            self._in_dist = run_config.resolve_parameter("run_eval.in_dist")
        return self._in_dist

    def test_set(self, max_examples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`(uint8 images, labels)` of the in-distribution set, the first `max_examples` (default
        the context's)."""
        from keras_ebm.evaluation import runner

        return runner.load_set(self.in_dist, self.max_examples if max_examples is None else max_examples)

    @property
    def restored(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> EBMTrainer:
        """The trainer restored from `<model_dir>`'s last checkpoint (restored on first use)."""
        if self._model is None:
            if not self.model_dir:
                raise UsageError(
                    "This evaluation needs model_dir: it uses the trainer restored from its checkpoint "
                    "(an export has no gradient and no sampler)."
                )
            from keras_ebm import restore

            self._model = restore.restore_trainer(self.model_dir)
        return self._model

    @property
    def samples(self) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        """`{name: (uint8 images, labels or None)}` from the run's "samples" evaluator (drawn once)."""
        if self._samples is None:
            source = next((e for e in self.evaluators if e.name == "samples"), None) or get("samples")()
            self._samples = source.collect(self)
        return self._samples

    def reparse_config(self) -> None:
        if self._reparse_config is not None:
            self._reparse_config()


@gin.configurable(module="keras_ebm.evaluation")
def evaluate(
    evaluators: Sequence[str] = ("standard",),
    model_dir: str | os.PathLike | None = None,
    saved_model: str | os.PathLike | None = None,
    output_dir: str | os.PathLike | None = None,
    max_examples: int | None = None,
    in_dist: Mapping[str, Any] | Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
    reparse_config: Callable[[], None] | None = None,
) -> dict[str, dict[str, Any] | None]:
    """Runs the registered evaluators `evaluators` (names) in order; what eval.py calls.

    Every evaluator is created first (gin binds its options), then run on one `EvalContext` (see
    there for the arguments). When one of them needs the trainer, it is restored once, before the
    first evaluator that reads more than the export. Entries an evaluator returns are merged into
    `<output_dir>/results.json` under its `key`.

    Returns:
        `{evaluator name: what its run returned}`.
    """
    created = [get(name)() for name in evaluators]
    ctx = EvalContext(
        model_dir=model_dir,
        saved_model=saved_model,
        output_dir=output_dir,
        max_examples=max_examples,
        in_dist=in_dist,
        reparse_config=reparse_config,
        evaluators=created,
    )
    wants_model = any(e.needs_model for e in created)
    out = {}
    for evaluator in created:
        if wants_model and not evaluator.export_only and not ctx.restored:
            ctx.model  # noqa: B018  (restore now, in the order eval.py always did)
        out[evaluator.name] = entries = evaluator.run(ctx)
        if evaluator.key and entries is not None:
            from keras_ebm.evaluation import runner

            runner.merge_results(ctx.output_dir, evaluator.key, entries)
    return out
