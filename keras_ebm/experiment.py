"""Compatibility names of earlier releases; the code lives in modules named for what it does.

| name | now in |
|---|---|
| `run_training`, `build_trainer` | `keras_ebm.training` (the gin name stays `keras_ebm.experiment.run_training`) |
| checkpoints, resume, divergence recovery, time budget, logs | `keras_ebm.callbacks` |
| `DivergenceGuard`, `DivergenceError`, `RecoveryState`, `ScaledSchedule` | `keras_ebm.divergence` |
| `generate_samples`, `save_buffer_grid` | `keras_ebm.generation` |
| `comparison_table` | `keras_ebm.reports` |
| `restore_trainer` | `keras_ebm.restore` |
"""

from keras_ebm.callbacks import make_checkpoint  # noqa: F401
from keras_ebm.divergence import DivergenceError, DivergenceGuard, RecoveryState, ScaledSchedule  # noqa: F401
from keras_ebm.generation import generate_samples, save_buffer_grid  # noqa: F401
from keras_ebm.reports import comparison_table  # noqa: F401
from keras_ebm.restore import restore_trainer  # noqa: F401
from keras_ebm.training import build_trainer, run_training  # noqa: F401
