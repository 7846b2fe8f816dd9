"""CLEL (Lee et al., ICLR 2023, arXiv:2303.03023): the trainer (`trainer.py`) and the EMA copies of its
networks (`ema.py`); its networks are in `keras_ebm.backbones.clel`."""

from keras_ebm.trainers.clel.ema import ModelEMA
from keras_ebm.trainers.clel.trainer import CLEL

__all__ = ["CLEL", "ModelEMA"]
