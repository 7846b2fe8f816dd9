"""The built-in evaluators, one file each, registered by name (`keras_ebm.evaluation.registry`).

Imported in the order of the reports: results.md and the report across runs list the entries of
robustness, generative, sample_quality and ais ("likelihood") in this order.
"""

# The import order is the registration order (the order of the reports' sections): not sorted.
# isort: off
from keras_ebm.evaluation.evaluators import (  # noqa: F401  (each module registers its evaluator)
    standard,
    robustness,
    generative,
    sample_quality,
    ais,
    samples,
    compare,
)
# isort: on
