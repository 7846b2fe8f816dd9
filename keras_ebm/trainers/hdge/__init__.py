"""HDGE (Liu & Abbeel, arXiv:2007.09070): the trainer (`trainer.py`) and the feature queue of its
contrastive negatives (`queue.py`)."""

from keras_ebm.trainers.hdge.queue import FeatureQueue
from keras_ebm.trainers.hdge.trainer import HDGE

__all__ = ["HDGE", "FeatureQueue"]
