"""FID / IS / KID of the samples (or their classifier-feature stand-ins) against the training split
of the in-distribution set (`suite.run_generative`).

gin (eval.py flag): `generative.inception` (False: --inception_weights=none), `feature_classifier`
(--feature_classifier), `reference_examples` (--reference_examples); the Inception network is
`inception_features`' (--feature_network, --fid_inception_weights, --fid_preprocessing,
--inception_weights bind `inception_features.network`, `weights`, `preprocessing`, `keras_weights`).
The samples come from the "samples" evaluator.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from keras_ebm.evaluation import registry, report, suite

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

INCEPTION_METRICS = ("fid", "inception_score", "kid")
GENERATIVE_METRICS = INCEPTION_METRICS + ("classifier_fd", "classifier_score", "classifier_kd")


@registry.register("generative")
class Generative(registry.Evaluator):
    key = "generative"

    def __init__(
        self, inception: bool = True, feature_classifier: str | None = None, reference_examples: int | None = None
    ) -> None:
        self.inception = inception
        self.feature_classifier = feature_classifier
        self.reference_examples = reference_examples

    def feature_networks(self, ctx: registry.EvalContext) -> list[Any]:
        """The feature networks; built before the samples are drawn (no Inception weights: fail early)."""
        nets = []
        if self.inception:
            from keras_ebm import configurables

            nets.append(configurables.inception_features())
        if self.feature_classifier:
            from keras_ebm import restore
            from keras_ebm.evaluation.generative import ClassifierFeatures

            classifier = restore.restore_run(self.feature_classifier)
            ctx.reparse_config()  # back to this run's config
            name = f"{os.path.basename(os.path.normpath(self.feature_classifier))}_step{restore.step_of(classifier)}"
            nets.append(ClassifierFeatures(classifier, name))
        if not nets:
            raise registry.UsageError("--inception_weights=none needs --feature_classifier.")
        return nets

    def run(self, ctx: registry.EvalContext) -> dict[str, Any] | None:
        nets = self.feature_networks(ctx)
        return suite.run_generative(
            ctx.samples,
            nets,
            ctx.in_dist,
            reference_examples=self.reference_examples,
            max_examples=ctx.max_examples,
            output_dir=ctx.output_dir,
        )

    @staticmethod
    def paragraph(name: str, r: Mapping[str, Any]) -> str:
        metrics = ", ".join(f"{k} {r[k]:.4g}" for k in GENERATIVE_METRICS if k in r)
        return (
            f"Samples {name}: {metrics} ({r['num_samples']} samples; reference "
            f"{r['reference']['dataset']}/{r['reference']['split']}, {r['reference']['num_examples']} "
            f"images; {r['feature_network']})"
        )

    @classmethod
    def columns(cls, results_list: Sequence[Mapping[str, Any]]) -> list[registry.Column]:
        gen = [r.get("generative") or {} for r in results_list]
        names = report.union(gen)
        cols = []
        for name in names:
            sample_set = name.split("/")[0]
            network = next(g[name].get("feature_network") for g in gen if name in g) or name.partition("/")[2]
            for metric in GENERATIVE_METRICS:
                if any(metric in g.get(name, {}) for g in gen):
                    if metric in INCEPTION_METRICS:  # always say which Inception: only fid_inception's match papers
                        title = f"{metric} [{sample_set}] ({network})"
                    elif len(names) > len({n.split("/")[0] for n in names}):
                        title = f"{metric} [{name}]"  # the same sample set in two feature spaces
                    else:
                        title = f"{metric} [{sample_set}]"
                    cols.append(
                        (title, lambda r, n=name, m=metric: (r.get("generative") or {}).get(n, {}).get(m), "num")
                    )
        return cols

    @classmethod
    def counts(cls, entries: Mapping[str, Any]) -> dict[str, int]:
        counts = {}
        for name, r in entries.items():
            counts[f"{name.split('/')[0]} samples"] = r.get("num_samples")
            ref = r.get("reference", {})
            counts[f"reference {ref.get('dataset')}/{ref.get('split')} ({r.get('feature_network')})"] = ref.get(
                "num_examples"
            )
        return counts
