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


# run_training bindings that may change between calls on one model_dir (resume longer, evaluate...).
RUN_CONTROL = ("train_steps", "max_minutes", "evaluate", "export", "progress", "log_every",
               "checkpoint_every", "keep_checkpoints", "jit_compile")


def _canonical(value):
    """repr with dict keys sorted (gin writes dicts sorted; files may list them in any order)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_canonical(value[k])}" for k in sorted(value, key=repr)) + "}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_canonical(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    return repr(value)


def config_bindings():
    """Every parsed binding (macros included) as `{"scope/selector.param": canonical repr}`."""
    out = {}
    for (scope, selector), params in gin.config._CONFIG.items():
        for param, value in params.items():
            out[f"{scope + '/' if scope else ''}{selector}.{param}"] = _canonical(value)
    return out


def check_run_config(model_dir, gin_files, gin_params):
    """Refuse, before anything is written, to train into a run whose `config.gin` says otherwise.

    `<model_dir>/config.gin` is the config of the run's checkpoints (eval.py reads it back):
    training with other bindings would overwrite it, then fail restoring the checkpoints (or, worse,
    resume them into another model). Only run-control bindings of `run_training` (`RUN_CONTROL`:
    train_steps, max_minutes, evaluate, ...) may change. Leaves the new config parsed.
    """
    path = os.path.join(model_dir, "config.gin")
    if not os.path.isfile(path):
        return
    new = config_bindings()
    with gin.unlock_config():
        gin.clear_config()
        try:
            parse_gin([path], [])
            old = config_bindings()
        finally:
            gin.clear_config()
            parse_gin(gin_files, gin_params)

    def allowed(key):
        selector, param = key.rsplit(".", 1)
        return selector.endswith("run_training") and param in RUN_CONTROL

    differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and not allowed(k))
    if differ:
        lines = "\n".join(f"  {k}: {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}" for k in differ)
        raise ValueError(
            f"{model_dir} holds a run trained with another config ({path}); these bindings differ:\n"
            f"{lines}\nNothing was written. To train the new config, use a new --model_dir (or delete "
            f"this one). To resume this run, give it its own config: python train.py "
            f"--gin_file={path} --model_dir={model_dir} (run-control bindings such as "
            f"run_training.train_steps may change: {', '.join(RUN_CONTROL)}).")


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
    for name in ("trainer", "optimizer", "encoder_optimizer", "mixed_precision", "train_data", "train_steps"):
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
