"""tf.distribute helpers shared by every trainer and by train.py.

Conventions (see docs/jem.md, "Distribution"):
* Losses inside `train_step` are per-replica means. Keras 3's optimizer *sums* gradients over
  replicas, so the gradient is taken of `scale_loss(loss)` = loss / num_replicas; trackers record
  the unscaled value. One device and N replicas with the same global batch then take the same step.
* Anything contrastive gathers its negatives from every replica with `cross_replica_concat`.
* Randomness inside a replica folds the replica id into the seed (`replica_seed`), because a
  mirrored `keras.random.SeedGenerator` advances identically on every replica.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import traceback
from typing import TYPE_CHECKING

import tensorflow as tf

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    import keras


def num_replicas() -> int:
    return tf.distribute.get_strategy().num_replicas_in_sync


def scale_loss(loss: tf.Tensor) -> tf.Tensor:
    """Divide a per-replica mean loss by the number of replicas in sync (gradients are summed)."""
    n = tf.distribute.get_strategy().num_replicas_in_sync
    return loss if n == 1 else loss / tf.cast(n, loss.dtype)


def replica_id() -> tf.Tensor:
    ctx = tf.distribute.get_replica_context()
    if ctx is None:
        return tf.constant(0, tf.int32)
    return tf.cast(ctx.replica_id_in_sync_group, tf.int32)


def cross_replica_concat(tensor: tf.Tensor, axis: int = 0) -> tf.Tensor:
    """Concatenate `tensor` from every replica along `axis` (identity without a strategy).

    Every replica gets the same global tensor, ordered by replica id (SimCLR's
    tpu_cross_replica_concat; MoCo's concat_all_gather). Gradients do not flow to other replicas.
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return tensor
    return ctx.all_gather(tf.stop_gradient(tensor), axis=axis)


def replica_seed(seed_generator: keras.random.SeedGenerator) -> tf.Tensor:
    """A stateless seed [2] that differs per replica: fold the replica id into the generator's draw."""
    seed = tf.convert_to_tensor(seed_generator.next())
    return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), replica_id())


DEFAULT_PEER_TIMEOUT_SECONDS = 30


class WorkerLostError(RuntimeError):
    """A worker of a MultiWorkerMirroredStrategy run stopped responding (it died, was killed or
    lost the network): the collectives of the others were aborted. The TensorFlow error is the
    `__cause__`. Restart every worker with the same command: the run resumes from the last
    checkpoint in `model_dir`."""


# What TensorFlow raises on the surviving workers when a peer is lost: the coordination service's
# missing heartbeats or a refused connection abort the collectives (UnavailableError); a collective
# timeout raises DeadlineExceededError; a peer restarted mid-run gives FailedPreconditionError or
# AbortedError (collective_all_reduce_strategy.py lists the same kinds for its health check).
PEER_FAILURES = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.FailedPreconditionError,
    tf.errors.AbortedError,
)


def make_strategy(
    devices: Sequence[str] | None = None, peer_timeout_seconds: float = DEFAULT_PEER_TIMEOUT_SECONDS
) -> tf.distribute.Strategy:
    """The strategy train.py uses.

    * TF_CONFIG naming several tasks ("worker" and optional "chief"): MultiWorkerMirroredStrategy.
      A worker that sends no heartbeat for `peer_timeout_seconds` counts as lost: the other
      workers' collectives are aborted and `run_training` raises `WorkerLostError` (None keeps
      TensorFlow's default, 10 s). It must be the first TensorFlow work of the process.
    * otherwise several visible GPUs (or `devices`): MirroredStrategy.
    * otherwise the default strategy on the one CPU/GPU.
    """
    if os.environ.get("TF_CONFIG"):
        cluster = json.loads(os.environ["TF_CONFIG"]).get("cluster", {})
        # A "chief" task counts as a worker (TF's MultiWorkerMirroredStrategy convention).
        if len(cluster.get("worker", [])) + len(cluster.get("chief", [])) > 1:
            if peer_timeout_seconds is not None:
                _configure_peer_timeout(cluster, peer_timeout_seconds)
            return tf.distribute.MultiWorkerMirroredStrategy()
    if devices:
        return tf.distribute.MirroredStrategy(devices)
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _configure_peer_timeout(cluster, seconds):
    """Configure the coordination service MultiWorkerMirroredStrategy starts (the same service,
    leader and jobs as its own `configure_coordination_service` call in TF 2.21, which it skips
    once one is configured) with a heartbeat timeout of `seconds`."""
    if not seconds > 0:
        raise ValueError(
            f"peer_timeout_seconds must be a positive number of seconds (or None for "
            f"TensorFlow's default). Received: {seconds!r}"
        )
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    spec = tf.train.ClusterSpec(cluster)
    jobs = [
        coordination_config_pb2.CoordinatedJob(name=job, num_tasks=spec.num_tasks(job))
        for job in ("chief", "worker")
        if job in spec.jobs
    ]
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(spec),
        coordinated_jobs=jobs,
        heartbeat_timeout_in_ms=int(1000 * seconds),
    )


def worker_lost_error(error: BaseException, checkpoint: str | None = None) -> WorkerLostError:
    """The `WorkerLostError` (cause: `error`) a multi-worker loop raises when a peer is lost."""
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", getattr(error, "message", None) or str(error))
    if "aborted by:" in text:  # the reason, not the graph node that was running
        text = text.split("aborted by:", 1)[1]
    reason = " ".join(line.strip() for line in text.strip().splitlines()[:2] if line.strip())[:400]
    where = (
        f"the last checkpoint is {checkpoint}"
        if checkpoint
        else "no checkpoint had been written yet (the run starts over)"
    )
    message = (
        f"a peer worker stopped responding, so the collectives of this worker were aborted "
        f"({type(error).__name__}: {reason}). Training cannot "
        f"continue in this process: nothing was saved after the failure and {where}. Restart every "
        "worker with the same command (same TF_CONFIG and model_dir): the run resumes from the last "
        "checkpoint. How long a silent worker is waited for: run_training.peer_timeout_seconds."
    )
    return WorkerLostError(message)


@contextlib.contextmanager
def exit_when_worker_lost(exit_code: int = 1) -> Iterator[None]:
    """For the main function of a training script (train.py uses it): on `WorkerLostError`, print
    the traceback and end the process at once (`os._exit`), skipping TensorFlow's teardown, which
    can wait on the lost peer (2-5 s usually; once 62 s here with a frozen peer). Nothing is being
    written then: the loop saves nothing after the failure. Unflushed TensorBoard events of the
    steps since the last flush are lost (those steps are trained again after the restart)."""
    try:
        yield
    except WorkerLostError:
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)


def gather_from_workers(strategy: tf.distribute.Strategy, value: int) -> list[int]:
    """`value` (a scalar int) of every replica of `strategy`, in replica order (one collective)."""
    per_replica = strategy.run(lambda: tf.constant(value, tf.int64)[None])
    return [int(v) for v in strategy.gather(per_replica, axis=0).numpy()]


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes checkpoints, summaries and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    # Worker 0 is the chief only when the cluster has no "chief" task.
    has_chief = bool(resolver.cluster_spec().as_dict().get("chief"))
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief
