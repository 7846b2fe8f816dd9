"""Adversarial robustness of the restored trainer: PGD presets or a custom grid, BPDA + EOT against
the SGLD-refinement defence, C&W L2 (`suite.run_robustness`, `suite.run_cw`).

gin (eval.py flag): `robustness.presets` (--robustness), `attack` (--attack), `epsilons`
(--epsilons), `steps` (--attack_steps), `step_size` (--attack_step_size), `relative_step_size`
(--attack_relative_step_size), `restarts` (--attack_restarts), `batch_size` (--attack_batch_size),
`defense` (--defense), `refine_steps`, `eot_reps` (--eot), `defense_reps`, `gradient_mode`, `cw`,
`cw_targeted`, `cw_steps`, `seed` (--attack_seed).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from keras_ebm.evaluation import registry, report, runner, suite
from keras_ebm.evaluation import robustness as robustness_lib

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any


@registry.register("robustness")
class Robustness(registry.Evaluator):
    key = "robustness"

    def __init__(
        self,
        presets: Sequence[str] = (),
        attack: str | None = None,
        epsilons: Sequence[float] = (),
        steps: int | None = None,
        step_size: float | None = None,
        relative_step_size: float | None = None,
        restarts: int | None = None,
        batch_size: int = 100,
        defense: str = "none",
        refine_steps: int = 10,
        eot_reps: int = 15,
        defense_reps: int = 5,
        gradient_mode: str = "bpda",
        cw: bool = False,
        cw_targeted: bool = False,
        cw_steps: int | None = None,
        seed: int = 0,
    ) -> None:
        self.presets, self.attack, self.epsilons = presets, attack, epsilons
        self.steps, self.step_size, self.relative_step_size, self.restarts = (
            steps,
            step_size,
            relative_step_size,
            restarts,
        )
        self.batch_size, self.defense, self.refine_steps = batch_size, defense, refine_steps
        self.eot_reps, self.defense_reps, self.gradient_mode = eot_reps, defense_reps, gradient_mode
        self.cw, self.cw_targeted, self.cw_steps, self.seed = cw, cw_targeted, cw_steps, seed

    @property
    def needs_model(self) -> bool:
        return True

    def run(self, ctx: registry.EvalContext) -> dict[str, Any] | None:
        x, y = ctx.test_set()
        settings = suite.pgd_settings(
            self.presets,
            self.attack,
            epsilons=self.epsilons,
            steps=self.steps,
            step_size=self.step_size,
            relative_step_size=self.relative_step_size,
            restarts=self.restarts,
        )
        defense = None
        if self.defense == "sgld":
            defense = {
                "refine_steps": self.refine_steps,
                "eot_reps": self.eot_reps,
                "defense_reps": self.defense_reps,
                "gradient_mode": self.gradient_mode,
            }
        entries = (
            suite.run_robustness(
                ctx.model,
                x,
                y,
                settings,
                defense=defense,
                batch_size=self.batch_size,
                seed=self.seed,
                output_dir=ctx.output_dir,
            )
            if settings
            else {}
        )
        for targeted in [False] * self.cw + [True] * self.cw_targeted:
            entries.update(
                suite.run_cw(
                    ctx.model,
                    x,
                    y,
                    targeted=targeted,
                    steps=self.cw_steps,
                    batch_size=self.batch_size,
                    seed=self.seed,
                    output_dir=ctx.output_dir,
                )
            )
        return entries

    @classmethod
    def markdown(cls, entries: Mapping[str, Any]) -> list[str]:
        pct = runner.pct
        lines = []
        pgd = {k: r for k, r in entries.items() if "robust_accuracy" in r}
        for name, r in pgd.items():
            eps = r["epsilons"]
            lines += [
                "",
                f"Robust accuracy, {name} ({r['norm']}, {r['steps']} steps, {r['num_examples']} images; "
                "epsilon in [0, 255] units)",
                "",
                "| clean | " + " | ".join(f"eps {e:g}" for e in eps) + " |",
                "|---|" + "---|" * len(eps),
                f"| {pct(r['clean_accuracy'])} | " + " | ".join(pct(a) for a in r["robust_accuracy"]) + " |",
            ]
        cw = {k: r for k, r in entries.items() if k not in pgd}
        return lines + registry.paragraphs(cw, cls.cw_paragraph)

    @staticmethod
    def cw_paragraph(name: str, r: Mapping[str, Any]) -> str:
        """The results.md text of one C&W entry."""
        pct = runner.pct
        return (
            f"{name}: success {pct(r.get('success_rate'))}, mean L2 "
            f"{r.get('mean_l2', float('nan')):.4f}, median L2 {r.get('median_l2', float('nan')):.4f} "
            f"([0, 1] units; {r.get('num_attacked')} of {r.get('num_examples')} images attacked)"
        )

    @classmethod
    def columns(cls, results_list: Sequence[Mapping[str, Any]]) -> list[registry.Column]:
        robust = [r.get("robustness") or {} for r in results_list]
        cols = []
        for name in report.union(robust):
            entries = [rb[name] for rb in robust if name in rb]
            if "robust_accuracy" in entries[0]:
                # the attacked subset before the attack (epsilon 0)
                cols.append((f"{name} clean", lambda r, n=name: _entry(r, n).get("clean_accuracy"), "pct"))
                for eps in report.union([e["epsilons"] for e in entries]):
                    cols.append((f"{name} eps {eps:g}", lambda r, n=name, e=eps: _robust_at(r, n, e), "pct"))
            else:  # C&W: the noise it needs ([0, 1] units) and how often it succeeds
                for key in ("mean_l2", "median_l2", "success_rate"):
                    cols.append(
                        (
                            f"{name} {key}",
                            lambda r, n=name, k=key: _entry(r, n).get(k),
                            "pct" if key == "success_rate" else "num",
                        )
                    )
        return cols

    @classmethod
    def counts(cls, entries: Mapping[str, Any]) -> dict[str, int]:
        return {
            f"{name} images": r.get("num_examples")
            if "robust_accuracy" in r
            else r.get("num_attacked", r.get("num_examples"))
            for name, r in entries.items()
        }

    @classmethod
    def compare_plots(
        cls, runs: Mapping[str, tuple[str, Mapping[str, Any]]], output_dir: str | os.PathLike
    ) -> list[str]:
        curves = [
            dict(e, name=f"{name}: {key}")
            for name, (_, r) in runs.items()
            for key, e in (r.get("robustness") or {}).items()
            if "robust_accuracy" in e
        ]
        if not curves:
            return []
        return [
            robustness_lib.robustness_curve(
                curves, os.path.join(output_dir, "report_robustness.png"), title="robust accuracy, all runs"
            )
        ]


def _entry(results, name):
    return (results.get("robustness") or {}).get(name, {})


def _robust_at(results, name, eps):
    entry = (results.get("robustness") or {}).get(name)
    if not entry or "robust_accuracy" not in entry:
        return None
    for e, acc in zip(entry["epsilons"], entry["robust_accuracy"]):
        if float(e) == float(eps):
            return acc
    return None
