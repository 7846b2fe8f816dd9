"""GMMC (Yang et al., arXiv:2010.03759): the trainer (`trainer.py`) and its max-Mahalanobis head
(`head.py`)."""

from keras_ebm.trainers.gmmc.head import MaxMahalanobisHead, build_mmc_classifier, max_mahalanobis_centers, mmc_head
from keras_ebm.trainers.gmmc.trainer import GMMC

__all__ = ["GMMC", "MaxMahalanobisHead", "build_mmc_classifier", "max_mahalanobis_centers", "mmc_head"]
