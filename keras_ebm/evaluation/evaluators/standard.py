"""The standard evaluation of the export (`runner.run_eval`): accuracy, ECE, OOD AUROC, plots.

Its options are `run_eval`'s gin parameters (`run_eval.in_dist`, `run_eval.ood_sets`,
`run_eval.clel_betas`, ...); the context's `max_examples`, when set, replaces `run_eval.max_examples`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keras_ebm.evaluation import registry, runner

if TYPE_CHECKING:
    from typing import Any


@registry.register("standard")
class Standard(registry.Evaluator):
    """Writes `<output_dir>/results.json` itself (keeping the entries the other evaluators merged)."""

    export_only = True

    def run(self, ctx: registry.EvalContext) -> dict[str, Any]:
        extra = {"max_examples": ctx.max_examples} if ctx.max_examples else {}
        return runner.run_eval(model_dir=ctx.model_dir, saved_model=ctx.saved_model, output_dir=ctx.output_dir, **extra)
