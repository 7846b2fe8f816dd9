"""Gin parsing shared by train.py and eval.py: typos fail loudly, the config is saved with the run."""

import os

import gin

import keras_ebm.configurables  # noqa: F401  (registers every configurable)


def parse_gin(gin_files, gin_params):
    """Parse gin files then bindings with `skip_unknown=False` (a typo is an error, as in dopamine).

    Relative `include` paths resolve against the working directory and the repository root.
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    gin.add_config_file_search_path(root)
    for path in gin_files:
        if not os.path.exists(path) and not os.path.exists(os.path.join(root, path)):
            raise FileNotFoundError(
                f"gin config file not found: {path}. Configs live in gin_configs/ (e.g. "
                "gin_configs/quickstart.gin). Received: --gin_file=" + str(path)
            )
    files = [p if os.path.exists(p) else os.path.join(root, p) for p in gin_files]
    try:
        gin.parse_config_files_and_bindings(files, gin_params, skip_unknown=False)
    except (ValueError, KeyError, SyntaxError) as e:
        raise ValueError(
            f"Invalid gin configuration ({type(e).__name__}): {e}\nCheck the spelling of the "
            "configurable/parameter against keras_ebm/configurables.py and the README."
        ) from e


def save_config(model_dir):
    """Write every parsed binding to `<model_dir>/config.gin` (eval.py reads it back)."""
    os.makedirs(model_dir, exist_ok=True)
    text = "import keras_ebm.configurables\n\n" + gin.config_str()
    with open(os.path.join(model_dir, "config.gin"), "w") as f:
        f.write(text)


def resolve_run_training():
    """The objects `run_training` would receive from the parsed gin config (benchmarks, tests).

    Returns a dict with `trainer` and `optimizer` (zero-argument builders) and `train_data`
    (`fn(input_context)`), plus every other bound run_training parameter.
    """
    out = {}
    for name in ("trainer", "optimizer", "encoder_optimizer", "train_data", "train_steps"):
        try:
            value = gin.query_parameter(f"run_training.{name}")
        except ValueError:
            continue
        out[name] = _resolve(value)
    return out


def resolve_parameter(binding_key):
    """`gin.query_parameter(binding_key)` with references and macros inside dicts, lists and tuples
    evaluated, as gin does when it calls the configurable (e.g. `run_eval.in_dist` with a %MACRO)."""
    return _resolve(gin.query_parameter(binding_key))


def _resolve(value):
    if isinstance(value, gin.config.ConfigurableReference):
        fn = value.scoped_configurable_fn
        return fn() if value.evaluate else fn
    if isinstance(value, dict):
        return {k: _resolve(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v) for v in value)
    return value
