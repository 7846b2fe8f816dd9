"""One report across runs (`report.compare_runs`): report.md, report.json, side-by-side plots.

gin (eval.py flag): `compare.runs` (the run directories after --compare), `names`
(--compare_names), `scores` (--compare_scores), `output_dir` (--output_dir).
"""

from keras_ebm.evaluation import registry, report


@registry.register("compare")
class Compare(registry.Evaluator):
    export_only = True

    def __init__(self, runs=(), names=(), scores=(), output_dir="eval_report"):
        self.runs, self.names, self.scores, self.output_dir = runs, names, scores, output_dir

    def run(self, ctx):
        return report.compare_runs(list(self.runs), self.output_dir, names=list(self.names or ()) or None,
                                   scores=list(self.scores or ()) or None)
