"""One report across runs (`report.compare_runs`): report.md, report.json, side-by-side plots.

gin (eval.py flag): `compare.runs` (the run directories after --compare), `names`
(--compare_names), `scores` (--compare_scores), `output_dir` (--output_dir).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keras_ebm.evaluation import registry, report

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence
    from typing import Any


@registry.register("compare")
class Compare(registry.Evaluator):
    export_only = True

    def __init__(
        self,
        runs: Sequence[str | os.PathLike] = (),
        names: Sequence[str] = (),
        scores: Sequence[str] = (),
        output_dir: str | os.PathLike = "eval_report",
    ) -> None:
        self.runs, self.names, self.scores, self.output_dir = runs, names, scores, output_dir

    def run(self, ctx: registry.EvalContext) -> dict[str, Any]:
        return report.compare_runs(
            list(self.runs),
            self.output_dir,
            names=list(self.names or ()) or None,
            scores=list(self.scores or ()) or None,
        )
