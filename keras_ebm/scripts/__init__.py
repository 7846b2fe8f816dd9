"""The command-line programs: `keras-ebm-train` / `python train.py` (`keras_ebm.scripts.train`) and
`keras-ebm-eval` / `python eval.py` (`keras_ebm.scripts.eval`).

Each module defines its absl flags, a `main(argv)` that raises on error (tests call it in-process),
and `run()`, the console-script entry point. What both share lives here:

* `prepare_environment()`: the Keras backend, and TensorFlow's start-up noise silenced
  (`TF_CPP_MIN_LOG_LEVEL`, the oneDNN / CUDA lines) unless the user set the log level;
* `run_main(main)`: `absl.app.run(main)` that prints a user error (bad config, missing data, bad
  input) as one message, and the traceback only with `--verbose` or `KERAS_EBM_VERBOSE=1`.
"""

from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

VERBOSE_ENV = "KERAS_EBM_VERBOSE"

# Lines TensorFlow's C++ side prints while it loads and looks for GPUs, before absl's logging is
# initialised (so TF_CPP_MIN_LOG_LEVEL does not hide them): the oneDNN note, "Could not find cuda
# drivers", "failed call to cuInit" on a machine without a GPU, and absl's own preamble.
_STARTUP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWE]\d{4} [\d:. ]+\d+ (port|cudart_stub|cuda_platform|cuda_executor|cpu_feature_guard|"
    r"cuda_dnn|cuda_fft|cuda_blas|cpu_utils)\.cc:\d+\] .*)$"
)


def prepare_environment() -> bool:
    """Keras on TensorFlow, and TensorFlow quiet while it starts (unless the user chose a log
    level): call before anything imports TensorFlow. Returns True when the start-up is quietened."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return False
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return True


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and let it probe for GPUs with file descriptor 2 captured; replay
    whatever it printed except the known start-up lines (`_STARTUP_NOISE`), so a real error
    still shows. `tf.config.list_physical_devices` triggers the CUDA probe without creating the
    eager context (MultiWorkerMirroredStrategy must be created before that)."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        kept = [
            line
            for line in captured.read().decode(errors="replace").splitlines()
            if line.strip() and not _STARTUP_NOISE.match(line)
        ]
    if kept:
        print("\n".join(kept), file=sys.stderr, flush=True)


def verbose(flag_value: bool = False) -> bool:
    """Tracebacks wanted: `--verbose` or KERAS_EBM_VERBOSE set to anything but '', '0', 'false'."""
    return bool(flag_value) or os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the command, config, data or input was wrong (the library's own
    checks raise these with what to do), printed as one message."""
    types = [ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, MemoryError]
    try:
        from keras_ebm import distribute, divergence

        types += [divergence.DivergenceError, distribute.WorkerLostError]
    except Exception:  # noqa: BLE001  (TensorFlow failed to import: nothing more to add)
        pass
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        types.append(tf.errors.InvalidArgumentError)  # the train step's input asserts
    return tuple(types)


def error_message(error: BaseException) -> str:
    """The one-line form of `error`: `TypeName: message`, a TensorFlow assert without its graph
    context (the op names and the 'Summarized data' lines that follow the message)."""
    text = str(error)
    message = getattr(error, "message", None)
    if isinstance(message, str) and "tensorflow" in type(error).__module__:
        # Graph mode: "Graph execution error: ... Detected at node ... assertion failed: [msg]
        # [[{{node ...}}]]"; eager: "Expected '...' to be true. Summarized data: b'msg'".
        found = (
            re.search(r"assertion failed: \[(.*?)\]\s*(?:\n\t \[\[|\Z)", message, re.S)
            or re.search(r"Summarized data: b'(.*?)'", message, re.S)
            or re.search(r"\n\n(?:.*\n\n)?(.*?)\s*(?:\n\t \[\[|\Z)", message, re.S)
        )
        text = (found.group(1) if found else message).strip()
    return f"{type(error).__name__}: {without_gin_context(text)}"


def without_gin_context(text: str) -> str:
    """`text` without the line gin appends to an error raised in a configurable ("  In call to
    configurable 'run_training' (<function run_training at 0x...>)"): not the user's concern."""
    return re.sub(r"\n\s*In call to configurable .*$", "", text, flags=re.M).strip()


def run_main(main: Callable[[list[str]], Any], verbose_flag_name: str = "verbose") -> None:
    """See `_run_main`; `main` is the `main` of a module of this package, whose docstring and
    flags `--help` shows."""
    import importlib

    from absl import flags

    module = importlib.import_module(main.__module__)
    # --help lists the key flags of the program's own file (train.py, or the console script) and
    # prints its docstring: give it the module's.
    for flag in flags.FLAGS.get_key_flags_for_module(module.__name__):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    sys.modules["__main__"].__doc__ = module.__doc__
    _run_main(main, verbose_flag_name)


def _run_main(main, verbose_flag_name):
    """`absl.app.run(main)` for a console script: the environment prepared
    (`prepare_environment`), TensorFlow imported quietly once the flags parsed (`--help` stays
    fast), and a user error (`user_error_types`) ending the program with its message on stderr and
    exit status 1, the traceback only with --verbose / KERAS_EBM_VERBOSE=1."""
    from absl import app, flags

    quiet = prepare_environment()

    def wrapped(argv):
        if quiet:
            import_tensorflow_quietly()
        try:
            return main(argv)
        except app.UsageError:
            raise  # absl prints these with the usage line
        except user_error_types() as error:
            want_traceback = verbose(
                getattr(flags.FLAGS, verbose_flag_name, False) if flags.FLAGS.is_parsed() else False
            )
            if want_traceback:
                raise
            print(
                f"\n{error_message(error)}\n\n(This is the whole error; for the traceback add "
                f"--verbose or set {VERBOSE_ENV}=1.)",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(1)

    app.run(wrapped)
