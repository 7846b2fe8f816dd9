"""Trainers: keras.Model subclasses that share one train_step (see base.py)."""

from keras_ebm.trainers.base import EBMTrainer
from keras_ebm.trainers.gmmc import GMMC
from keras_ebm.trainers.jem import JEM, JEMPP, SADAJEM
from keras_ebm.trainers.softmax import SoftmaxClassifier

__all__ = ["EBMTrainer", "GMMC", "JEM", "JEMPP", "SADAJEM", "SoftmaxClassifier"]
