"""Trainers: keras.Model subclasses that share one train_step (see base.py)."""

from keras_ebm.trainers.base import EBMTrainer
from keras_ebm.trainers.clel import CLEL
from keras_ebm.trainers.gmmc import GMMC
from keras_ebm.trainers.hdge import HDGE
from keras_ebm.trainers.jem import JEM, JEMPP, SADAJEM
from keras_ebm.trainers.softmax import SoftmaxClassifier

__all__ = ["CLEL", "EBMTrainer", "GMMC", "HDGE", "JEM", "JEMPP", "SADAJEM", "SoftmaxClassifier"]
