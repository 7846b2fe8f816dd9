"""AIS log Z and test log-likelihood (nats, bits/dim) of the restored trainer's E(x) on its pixel
box (`suite.run_ais`); results.json entry "likelihood".

gin (eval.py flag): `ais.num_chains` (--ais_chains), `num_temperatures` (--ais_temperatures),
`sampler` (--ais_sampler), `base` (--ais_base).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keras_ebm.evaluation import registry, report, suite

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any


@registry.register("ais")
class AIS(registry.Evaluator):
    key = "likelihood"

    def __init__(
        self, num_chains: int = 64, num_temperatures: int = 1000, sampler: str = "mala", base: str = "uniform"
    ) -> None:
        self.num_chains, self.num_temperatures, self.sampler, self.base = num_chains, num_temperatures, sampler, base

    @property
    def needs_model(self) -> bool:
        return True

    def run(self, ctx: registry.EvalContext) -> dict[str, Any]:
        x, _ = ctx.test_set()
        return suite.run_ais(
            ctx.model,
            x,
            num_chains=self.num_chains,
            num_temperatures=self.num_temperatures,
            sampler=self.sampler,
            base=self.base,
        )

    @staticmethod
    def paragraph(name: str, r: Mapping[str, Any]) -> str:
        return (
            f"AIS {name}: log Z {r['log_z']:.2f} +- {r['log_z_stderr']:.2f} (standard error over "
            f"{r['num_chains']} chains, ESS {r['ess']:.0f}, {r['num_temperatures']} temperatures); test "
            f"log-likelihood {r['log_likelihood']:.2f} nats ({r['bits_per_dim']:.3f} bits/dim"
            f"{', dequantised' if r['dequantized'] else ''}; {r['num_examples']} images). " + r["variance_note"]
        )

    @classmethod
    def columns(cls, results_list: Sequence[Mapping[str, Any]]) -> list[registry.Column]:
        return [
            (f"{label} [{name}]", lambda r, n=name, k=key: (r.get("likelihood") or {}).get(n, {}).get(k), "num")
            for name in report.union([r.get("likelihood") or {} for r in results_list])
            for key, label in (
                ("log_z", "log Z"),
                ("log_z_stderr", "log Z s.e."),
                ("log_likelihood", "test LL nats"),
                ("bits_per_dim", "bits/dim"),
            )
        ]

    @classmethod
    def counts(cls, entries: Mapping[str, Any]) -> dict[str, int]:
        return {
            f"{name} test images (AIS chains: {r.get('num_chains')})": r.get("num_examples")
            for name, r in entries.items()
        }
