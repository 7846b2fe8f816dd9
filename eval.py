"""Evaluate a keras_ebm run: `python eval.py --model_dir=runs/quickstart` (accuracy, ECE, OOD AUROC,
plots), robustness, samples, FID, and `python eval.py --compare runs/a runs/b` (one report).

A thin wrapper of `keras_ebm.scripts.eval` (installed as the `keras-ebm-eval` command); see
`python eval.py --help` and the README.
"""

from keras_ebm.scripts.eval import FLAGS, main, run  # noqa: F401

if __name__ == "__main__":
    run()
