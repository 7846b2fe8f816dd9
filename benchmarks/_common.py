"""Helpers shared by the benchmark scripts."""

import os
import platform


def device_name():
    """A file-name-safe name of this device: the first GPU's name, else cpu<cores>_<arch>."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return details.get("device_name", "gpu").replace(" ", "_")
    return f"cpu{os.cpu_count()}_{platform.machine()}"
