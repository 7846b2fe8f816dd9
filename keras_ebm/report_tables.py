"""Report tables: markdown tables of evaluation results in the layout of the papers' tables."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


def number(v: float | None) -> str:
    """Every number of the reports that is not a percentage: three decimals (AUROC 0.720, FID
    23.457), "-" when missing."""
    return "-" if v is None or v != v else f"{v:.3f}"


def percent(v: float | None) -> str:
    """Accuracies, ECE and other rates: one decimal, in %; "-" when missing."""
    return "-" if v is None or v != v else f"{100 * v:.1f}%"


def comparison_table(
    results_by_model: Mapping[str, Mapping[str, Any]], extra_columns: Mapping[str, Mapping[str, str]] | None = None
) -> str:
    """Markdown table of accuracy, ECE and OOD AUROCs for several eval results (same OOD sets).

    `extra_columns`: optional dict column name -> {model name: cell text}, shown after the model
    name (e.g. steps reached in a same-time study).
    """
    names = list(results_by_model)
    first = results_by_model[names[0]]
    extra = extra_columns or {}
    ood_sets = sorted(first["ood"])  # by name, as run_eval and every report order them
    columns = (
        list(extra)
        + ["accuracy", "ECE"]
        + [f"AUROC {ood} [{score}]" for ood in ood_sets for score in first["ood"][ood]]
    )
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name in names:
        r = results_by_model[name]
        cells = (
            [extra[c].get(name, "-") for c in extra]
            + [percent(r["accuracy"]), percent(r["ece"])]
            + [number(r["ood"].get(ood, {}).get(score)) for ood in ood_sets for score in first["ood"][ood]]
        )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
