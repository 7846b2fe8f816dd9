"""The samples classified by a reference classifier: accuracy of class-conditional samples,
confusion matrix, best / worst samples per class (`suite.run_sample_quality`).

gin (eval.py flag): `sample_quality.reference_classifier` (--reference_classifier: an export or a
train.py directory, whose export is used). The samples come from the "samples" evaluator; the
restored trainer, when there is one, ranks them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from keras_ebm.evaluation import registry, report, runner, suite

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any


@registry.register("sample_quality")
class SampleQuality(registry.Evaluator):
    key = "sample_quality"

    def __init__(self, reference_classifier: str | None = None) -> None:
        self.reference_classifier = reference_classifier

    def run(self, ctx: registry.EvalContext) -> dict[str, Any] | None:
        import tensorflow as tf

        if not self.reference_classifier:
            raise registry.UsageError(
                "--sample_quality needs --reference_classifier (an export or a train.py directory)."
            )
        samples = ctx.samples
        path = self.reference_classifier
        if os.path.isdir(os.path.join(path, "export")):
            path = os.path.join(path, "export")
        reference = tf.saved_model.load(path)
        return suite.run_sample_quality(
            samples,
            reference,
            ranking_model=ctx.model if ctx.restored else None,
            max_examples=ctx.max_examples,
            output_dir=ctx.output_dir,
        )

    @staticmethod
    def paragraph(name: str, r: Mapping[str, Any]) -> str:
        return (
            f"Sample quality {name}: accuracy under the reference classifier {runner.pct(r.get('accuracy'))} "
            f"({r['num_samples']} samples)"
        )

    @classmethod
    def columns(cls, results_list: Sequence[Mapping[str, Any]]) -> list[registry.Column]:
        return [
            (
                f"sample accuracy [{name}]",
                lambda r, n=name: (r.get("sample_quality") or {}).get(n, {}).get("accuracy"),
                "pct",
            )
            for name in report.union([r.get("sample_quality") or {} for r in results_list])
        ]

    @classmethod
    def counts(cls, entries: Mapping[str, Any]) -> dict[str, int]:
        return {f"{name} samples classified": r.get("num_samples") for name, r in entries.items()}
