"""`discard_updates()`: run Keras code without letting it change any variable.

Used where a forward pass in training mode must not move BatchNorm's moving statistics: SGLD
chains with BN in train mode (`SGLDSampler(freeze_bn_stats=True)`) and the forward pass on SGLD
samples in the JEM loss (`JEM(bn_stats_from_samples=False)`). It is a `keras.StatelessScope` that
inherits the values of an enclosing one, so it nests inside SAM's second pass (which evaluates the
loss at perturbed weights inside its own StatelessScope) without hiding the perturbed weights.
"""

from __future__ import annotations

import keras

try:  # Keras keeps the getter private; without it nesting falls back to a plain scope.
    from keras.src.backend.common.stateless_scope import get_stateless_scope
except ImportError:  # pragma: no cover

    def get_stateless_scope():
        return None


def discard_updates() -> keras.StatelessScope:
    """A `keras.StatelessScope` that discards assignments and sees any enclosing scope's values."""
    scope = keras.StatelessScope()
    outer = get_stateless_scope()
    if outer is not None:
        scope.state_mapping.update(outer.state_mapping)
    return scope
