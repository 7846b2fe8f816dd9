"""tf.distribute helpers shared by every trainer and by train.py.

Conventions (see README, "Distribution"):
* Losses inside `train_step` are per-replica means. Keras 3's optimizer *sums* gradients over
  replicas, so the gradient is taken of `scale_loss(loss)` = loss / num_replicas; trackers record
  the unscaled value. One device and N replicas with the same global batch then take the same step.
* Anything contrastive gathers its negatives from every replica with `cross_replica_concat`.
* Randomness inside a replica folds the replica id into the seed (`replica_seed`), because a
  mirrored `keras.random.SeedGenerator` advances identically on every replica.
"""

import json
import os

import tensorflow as tf


def num_replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync


def scale_loss(loss):
    """Divide a per-replica mean loss by the number of replicas in sync (gradients are summed)."""
    n = tf.distribute.get_strategy().num_replicas_in_sync
    return loss if n == 1 else loss / tf.cast(n, loss.dtype)


def replica_id():
    ctx = tf.distribute.get_replica_context()
    if ctx is None:
        return tf.constant(0, tf.int32)
    return tf.cast(ctx.replica_id_in_sync_group, tf.int32)


def cross_replica_concat(tensor, axis=0):
    """Concatenate `tensor` from every replica along `axis` (identity without a strategy).

    Every replica gets the same global tensor, ordered by replica id (SimCLR's
    tpu_cross_replica_concat; MoCo's concat_all_gather). Gradients do not flow to other replicas.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return tensor
    return ctx.all_gather(tf.stop_gradient(tensor), axis=axis)


def replica_seed(seed_generator):
    """A stateless seed [2] that differs per replica: fold the replica id into the generator's draw."""
    seed = tf.convert_to_tensor(seed_generator.next())
    return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), replica_id())


def make_strategy(devices=None):
    """The strategy train.py uses.

    * TF_CONFIG naming several tasks ("worker" and optional "chief"): MultiWorkerMirroredStrategy.
    * otherwise several visible GPUs (or `devices`): MirroredStrategy.
    * otherwise the default strategy on the one CPU/GPU.
    """
    if os.environ.get("TF_CONFIG"):
        cluster = json.loads(os.environ["TF_CONFIG"]).get("cluster", {})
        # A "chief" task counts as a worker (TF's MultiWorkerMirroredStrategy convention).
        if len(cluster.get("worker", [])) + len(cluster.get("chief", [])) > 1:
            return tf.distribute.MultiWorkerMirroredStrategy()
    if devices:
        return tf.distribute.MirroredStrategy(devices)
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def is_chief(strategy):
    """True on the worker that writes checkpoints, summaries and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    # Worker 0 is the chief only when the cluster has no "chief" task.
    has_chief = bool(resolver.cluster_spec().as_dict().get("chief"))
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief
