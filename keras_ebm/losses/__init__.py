"""Loss functions of keras_ebm (pure functions of embeddings; no side effects)."""

from keras_ebm.losses.contrastive import nt_xent_loss
from keras_ebm.losses.hdge import hdge_contrastive_loss, hdge_loss, smoothed_labels

__all__ = ["hdge_contrastive_loss", "hdge_loss", "nt_xent_loss", "smoothed_labels"]
