"""After-training actions of `keras_ebm.training.run_training`: what a run does once training ended.

`run_training` builds the trainer, resumes it, trains it, then calls each action of its `actions`
list, in order, with a `Run` (the run folder, the trained model, what training did, and what earlier
actions left in `Run.outputs`). Without `actions` the list comes from `run_training`'s flags, as in
earlier releases (`default_actions`):

    [SummaryAction(), ExportAction(onnx=export_onnx) if export, EvaluateAction() if evaluate,
     BaselineAction(baseline) if baseline]

Giving `actions` replaces that list: the flags `export`, `export_onnx`, `evaluate` and `baseline`
are then not used. In gin:

    run_training.actions = [@SummaryAction(), @ExportAction(), @EvaluateAction(), @SampleGridAction()]
    ExportAction.onnx = True

In Python, an action is any callable `action(run)`; optional attributes: `chief_only` (default
True: on several machines only the chief runs it) and `check()` (called before training, to fail
before hours of training rather than after, e.g. a missing package). Add one to the defaults with
`actions=default_actions(evaluate=True) + [MyAction()]`; subclass one to override it.

In the spirit of the "actions" of TensorFlow Model Garden's orbit trainers (export, best
checkpoint) that run after training steps.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import TYPE_CHECKING, Any

from keras_ebm import export as export_lib
from keras_ebm import generation, report_tables
from keras_ebm.callbacks import _log
from keras_ebm.evaluation import runner as eval_runner

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from keras_ebm.trainers.base import EBMTrainer


@dataclasses.dataclass
class Run:
    """What an action is given: one `run_training` call once training ended.

    Attributes:
        model_dir: the run folder.
        model: the trained trainer.
        chief: True on the worker that writes files (always True on one machine).
        first_step, last_step, train_steps: the step this call resumed from, the step it ended at,
            and the step it was asked to reach.
        stopped_by: "train_steps", or "max_minutes" when the time budget ended training first.
        seconds: wall-clock seconds of this call's training.
        recoveries: automatic divergence recoveries during this call.
        settings: the `run_training` arguments a second run reuses (`BaselineAction`): optimizer,
            train_data, train_steps, checkpoint_every, log_every, keep_checkpoints, export,
            evaluate, jit_compile, strategy, progress, divergence_guard, seed, max_minutes,
            encoder_optimizer, mixed_precision.
        actions: the run's actions; `from_flags`: True when they were built by `default_actions`.
        outputs: what actions leave for later ones (`EvaluateAction`: `outputs["eval"]`).
    """

    model_dir: str
    model: Any
    chief: bool
    first_step: int
    last_step: int
    train_steps: int
    stopped_by: str
    seconds: float
    recoveries: int
    settings: dict
    actions: list
    from_flags: bool = True
    outputs: dict = dataclasses.field(default_factory=dict)

    @property
    def trained_now(self) -> bool:
        """This call trained at least one step (False when the run had already reached train_steps)."""
        return self.first_step < self.train_steps


class Action:
    """Base class of the after-training actions (any callable `action(run)` also works)."""

    chief_only = True  # on several machines: run by the chief only

    def check(self) -> None:
        """Called before training starts: raise here what would otherwise fail after training."""

    def __call__(self, run: Run) -> None:
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


class SummaryAction(Action):
    """Writes `training_summary.json` (trainer, steps, stopped_by, seconds, recoveries) when this
    call trained."""

    def __call__(self, run: Run) -> None:
        if not run.trained_now:
            return
        path = os.path.join(run.model_dir, "training_summary.json")
        staging = f"{path}.tmp-{os.getpid()}"  # renamed into place: a kill leaves no torn file
        with open(staging, "w") as f:
            json.dump(
                {
                    "trainer": type(run.model).__name__,
                    "first_step": run.first_step,
                    "last_step": run.last_step,
                    "train_steps": int(run.train_steps),
                    "stopped_by": run.stopped_by,
                    "seconds": round(run.seconds, 1),
                    "recoveries": run.recoveries,
                },
                f,
                indent=2,
            )
        os.replace(staging, path)


class ExportAction(Action):
    """Writes the SavedModel to `<model_dir>/export` (`keras_ebm.export.export_model`); with
    `onnx=True` also `export/onnx/model.onnx` (needs tf2onnx: checked before training)."""

    def __init__(self, onnx: bool = False) -> None:
        self.onnx = bool(onnx)

    def check(self) -> None:
        if self.onnx:
            export_lib.import_tf2onnx()  # missing tf2onnx: fail now, not after training

    def __call__(self, run: Run) -> None:
        model = run.model
        export_dir = os.path.join(run.model_dir, "export")
        export_lib.export_model(
            model,
            export_dir,
            image_shape=model.image_shape,
            pixel_range=model.pixel_range,
            ood_score=model.default_ood_score,
            onnx=self.onnx,
        )
        _log(f"exported SavedModel to {export_dir}")

    def __repr__(self):
        return f"ExportAction(onnx={self.onnx})"


class EvaluateAction(Action):
    """Runs `keras_ebm.evaluation.run_eval(model_dir=...)` (configured by gin's `run_eval`);
    the results go to `run.outputs["eval"]`."""

    def __call__(self, run: Run) -> None:
        run.outputs["eval"] = eval_runner.run_eval(model_dir=run.model_dir)


class SampleGridAction(Action):
    """Draws samples from the trained model (`keras_ebm.generation.generate_samples`: the trainer's
    `generate`, e.g. SGLD from fresh chains) into `<model_dir>/samples/<name>.png` and `.npz`.
    Not in the default list (the replay buffer's grid, `samples/buffer.png`, is drawn by the
    training callbacks); the arguments are `generate_samples`'."""

    def __init__(
        self,
        num_samples: int = 64,
        n_steps: int | None = None,
        from_buffer: bool = False,
        conditional: bool = False,
        name: str | None = None,
    ) -> None:
        self.options = dict(
            num_samples=num_samples, n_steps=n_steps, from_buffer=from_buffer, conditional=conditional, name=name
        )

    def __call__(self, run: Run) -> None:
        run.outputs["samples"] = generation.generate_samples(
            run.model, os.path.join(run.model_dir, "samples"), **self.options
        )


class BaselineAction(Action):
    """Trains `trainer` (a zero-argument builder, e.g. `@SoftmaxClassifier`) in
    `<model_dir>/baseline` with the run's data, optimizer, steps and time budget; when both runs
    were evaluated, prints their results side by side and writes `<model_dir>/comparison.md`.

    `actions`: the baseline's own actions; by default the run's, without baseline actions (and,
    for a run configured by flags, the run's flags `export` and `evaluate`). Runs on every worker
    (the baseline trains on all of them). The baseline folder gets a config.gin of its own
    (`keras_ebm.run_config.save_baseline_config`) when the baseline comes from gin's `run_training.baseline`."""

    chief_only = False

    def __init__(self, trainer: Callable[[], EBMTrainer], actions: Sequence[Action] | None = None) -> None:
        self.trainer = trainer
        self.actions = None if actions is None else list(actions)

    def check(self) -> None:
        for action in self.actions or ():
            _check(action)

    def baseline_actions(self, run: Run) -> list[Action] | None:
        """The actions the baseline run gets (None: built from the flags in `run.settings`)."""
        if self.actions is not None:
            return self.actions
        if run.from_flags:
            return None
        return [a for a in run.actions if not isinstance(a, BaselineAction)]

    def __call__(self, run: Run) -> None:
        from keras_ebm import run_config, training  # (they import the modules that import this one)

        _log(f"training the baseline {getattr(self.trainer, '__name__', self.trainer)} with the same budget")
        baseline_dir = os.path.join(run.model_dir, "baseline")
        if run.chief:
            # A run folder of its own: eval.py, --compare and restore read its config.gin.
            run_config.save_baseline_config(run.model_dir, baseline_dir)
        actions = self.baseline_actions(run)
        # baseline=None explicit: gin would bind the baseline's baseline again.
        training.run_training(baseline_dir, self.trainer, baseline=None, actions=actions, **run.settings)
        evaluated = run.settings["evaluate"] if actions is None else any(isinstance(a, EvaluateAction) for a in actions)
        if run.chief and evaluated and "eval" in run.outputs:
            self.compare(run, baseline_dir)

    def compare(self, run: Run, baseline_dir: str | os.PathLike) -> None:
        """Prints the run's and the baseline's results side by side; writes comparison.md."""
        with open(os.path.join(baseline_dir, "eval", "results.json")) as f:
            base_results = json.load(f)
        table = report_tables.comparison_table(
            {type(run.model).__name__: run.outputs["eval"], "baseline": base_results}
        )
        with open(os.path.join(run.model_dir, "comparison.md"), "w") as f:
            f.write(table)
        print("\n" + table, flush=True)

    def __repr__(self):
        return f"BaselineAction({getattr(self.trainer, '__name__', self.trainer)!r})"


def default_actions(
    export: bool = True,
    export_onnx: bool = False,
    evaluate: bool = False,
    baseline: Callable[[], EBMTrainer] | None = None,
) -> list[Action]:
    """The actions `run_training`'s flags stand for (its `actions=None`), in the order they run."""
    actions = [SummaryAction()]
    if export:
        actions.append(ExportAction(onnx=export_onnx))
    if evaluate:
        actions.append(EvaluateAction())
    if baseline is not None:
        actions.append(BaselineAction(baseline))
    return actions


def _check(action):
    check = getattr(action, "check", None)
    if check is not None:
        check()


def check_actions(actions: Iterable[Action]) -> None:
    """Calls every action's `check()` (before training)."""
    for action in actions:
        _check(action)


def run_actions(actions: Iterable[Action], run: Run) -> None:
    """Calls the actions in order; on a non-chief worker only those with `chief_only = False`."""
    for action in actions:
        if run.chief or not getattr(action, "chief_only", True):
            action(run)
