"""Report tables: markdown tables of evaluation results in the layout of the papers' tables."""


def comparison_table(results_by_model, extra_columns=None):
    """Markdown table of accuracy, ECE and OOD AUROCs for several eval results (same OOD sets).

    `extra_columns`: optional dict column name -> {model name: cell text}, shown after the model
    name (e.g. steps reached in a same-time study).
    """
    names = list(results_by_model)
    first = results_by_model[names[0]]
    extra = extra_columns or {}
    columns = list(extra) + ["accuracy", "ECE"] + [
        f"AUROC {ood} [{score}]" for ood, by_score in first["ood"].items() for score in by_score
    ]
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name in names:
        r = results_by_model[name]
        pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        cells = [extra[c].get(name, "-") for c in extra] + [pct(r["accuracy"]), pct(r["ece"])] + [
            f"{r['ood'].get(ood, {}).get(score, float('nan')):.3f}"
            for ood, by_score in first["ood"].items() for score in by_score
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
