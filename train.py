"""Train a keras_ebm model from gin configs: `python train.py --gin_file=gin_configs/quickstart.gin`.

A thin wrapper of `keras_ebm.scripts.train` (installed as the `keras-ebm-train` command); see
`python train.py --help` and the README.
"""

from keras_ebm.scripts.train import FLAGS, main, run  # noqa: F401  (tests call main in-process)

if __name__ == "__main__":
    run()
