"""The run's gin configuration for train.py and eval.py: parsed (typos fail loudly), checked, saved."""

from __future__ import annotations

import contextlib
import os
import re
from typing import TYPE_CHECKING

import gin

import keras_ebm.configurables  # noqa: F401  (registers every configurable)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from typing import Any


def _tolerant_existence_check(check):
    def exists(path):
        try:
            return check(path)
        except TypeError:  # gin's Python-package reader on a namespace package (gin_configs/)
            return False

    exists.keras_ebm_tolerant = True
    return exists


# An `include 'gin_configs/tiny.gin'` parsed from another working directory: gin's second file
# reader looks the path up as a Python package and fails with a TypeError on `gin_configs`, a
# folder without __init__.py, before the repository-root search path is tried.
gin.config._FILE_READERS[:] = [
    (reader, check if getattr(check, "keras_ebm_tolerant", False) else _tolerant_existence_check(check))
    for reader, check in gin.config._FILE_READERS
]


def parse_gin(gin_files: Sequence[str], gin_params: Sequence[str]) -> None:
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
        hint = ""
        if "Failed to parse token" in str(e) or "malformed node" in str(e):
            hint = " A string value needs quotes: DATASET = 'digits', not DATASET = digits."
        raise ValueError(
            f"Invalid gin configuration ({type(e).__name__}): {e}\nCheck the spelling of the "
            f"configurable/parameter against keras_ebm/configurables.py and docs/configuration.md.{hint}"
        ) from e
    check_unread_macros(files, gin_params)


def _macro_references(value, out):
    if isinstance(value, gin.config.ConfigurableReference):
        if value.selector == "gin.macro" and value.scopes:
            out.add(value.scopes[-1])
    elif isinstance(value, dict):
        for v in value.values():
            _macro_references(v, out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _macro_references(v, out)
    return out


@gin.configurable("optional_macros", module="keras_ebm.run_config")
def optional_macros(names: Sequence[str] = ()) -> tuple[str, ...]:
    """Macros a config file sets for the configs that read them and that others may leave unread,
    declared in a scope of the file's own so that several files add up
    (`tiny/optional_macros.names = ['SGLD_STEPS', ...]` in tiny.gin, which serves every config):
    the unread-macro check (`check_unread_macros`) lets these pass in files (not in --gin_param)."""
    return tuple(names)


_MACRO_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=", re.M)
_SAVED_CONFIG = re.compile(r"^(# keras_ebm config files: .*|# Macros:\n# =+)$", re.M)


_MACRO_REF = re.compile(r"%([A-Za-z_][A-Za-z0-9_]*)")
_INCLUDE = re.compile(r"^include\s+['\"]([^'\"]+)['\"]", re.M)


def _config_texts(gin_files):
    """`(path, text)` of the gin files and, depth first, the files they include (resolved as
    `parse_gin` resolves them: the working directory, then the repository root)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    seen, out, todo = set(), [], list(gin_files)
    while todo:
        path = todo.pop(0)
        full = path if os.path.exists(path) else os.path.join(root, path)
        if full in seen or not os.path.isfile(full):
            continue
        seen.add(full)
        with open(full) as f:
            text = f.read()
        out.append((path, text))
        todo = _INCLUDE.findall(text) + todo
    return out


def _is_saved_config(text):
    """A run's config.gin as `save_config` (or gin.config_str) wrote it."""
    return bool(_SAVED_CONFIG.search(text))


def check_unread_macros(gin_files: Sequence[str], gin_params: Sequence[str]) -> None:
    """A macro (`NAME = value`) that no binding of the parsed config reads is a typo (TRAIN_STEP for
    TRAIN_STEPS: the config's own value silently stays) or a setting this config does not have
    (SGLD_STEPS for softmax): gin accepts both without a word, so refuse them, in gin files and in
    --gin_param alike, naming the closest macro the config reads (difflib). Exempt: the macros an
    overlay declares optional (`optional_macros.names`, e.g. tiny.gin's trainer-specific ones),
    and those of a run's saved config.gin (eval.py, resume: checked when it was trained)."""
    import difflib

    used = set()
    for params in gin.config._CONFIG.values():
        _macro_references(params, used)
    defined = sorted(scope for scope, selector in gin.config._CONFIG if selector == "gin.macro")
    allowed = set()
    for (_, selector), params in gin.config._CONFIG.items():  # every scope: overlays add up
        if selector.endswith("optional_macros"):
            allowed.update(params.get("names") or ())
    where = {}
    for binding in gin_params:
        for name in _MACRO_LINE.findall(str(binding)):
            where.setdefault(name, "--gin_param")
        used.update(_MACRO_REF.findall(str(binding)))
    for path, text in _config_texts(gin_files):
        # A macro read by any binding of the files counts as read, even where a later binding (a
        # file, --gin_param run_training.train_steps = 3000) replaced that binding.
        used.update(_MACRO_REF.findall(text))
        if _is_saved_config(text):
            allowed.update(_MACRO_LINE.findall(text))
        else:
            for name in _MACRO_LINE.findall(text):
                where.setdefault(name, os.path.basename(path))
    unread = [
        name for name in defined if name not in used and (name not in allowed or where.get(name) == "--gin_param")
    ]
    if not unread:
        return
    lines = []
    for name in unread:
        close = difflib.get_close_matches(name, sorted(used), n=1)
        origin = where.get(name, "an included gin file")
        lines.append(f"  {name} (set in {origin})" + (f": did you mean {close[0]}?" if close else ""))
    raise ValueError(
        "These macros are read by nothing in the config, so they would change nothing (gin accepts "
        "them without a word):\n" + "\n".join(lines) + "\nCheck the spelling against the macros the "
        "config reads (" + ", ".join(sorted(used)) + "). An overlay that serves several configs may "
        "declare the ones others leave unread: <scope>/optional_macros.names = [...] (see "
        "gin_configs/tiny.gin). Received: " + ", ".join(unread)
    )


def check_model_dir(model_dir: str | os.PathLike) -> None:
    """--model_dir must be a directory (or not exist yet): refuse a file before anything runs."""
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise ValueError(
            f"--model_dir must be a directory (created if missing); {model_dir} is a file. Pass a "
            f"directory path, e.g. --model_dir=runs/my_run. Received: --model_dir={model_dir}"
        )


# run_training bindings that may change between calls on one model_dir (resume longer, evaluate...).
RUN_CONTROL = (
    "train_steps",
    "max_minutes",
    "evaluate",
    "export",
    "export_onnx",
    "progress",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "jit_compile",
    "peer_timeout_seconds",
    "actions",
)


def _canonical(value):
    """repr with dict keys sorted (gin writes dicts sorted; files may list them in any order)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_canonical(value[k])}" for k in sorted(value, key=repr)) + "}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_canonical(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    return repr(value)


def config_bindings() -> dict[str, str]:
    """Every parsed binding (macros included) as `{"scope/selector.param": canonical repr}`."""
    out = {}
    for (scope, selector), params in gin.config._CONFIG.items():
        for param, value in params.items():
            out[f"{scope + '/' if scope else ''}{selector}.{param}"] = _canonical(value)
    return out


def check_run_config(model_dir: str | os.PathLike, gin_files: Sequence[str], gin_params: Sequence[str]) -> None:
    """Refuse, before anything is written, to train into a run whose `config.gin` says otherwise.

    `<model_dir>/config.gin` is the config of the run's checkpoints (eval.py reads it back):
    training with other bindings would overwrite it, then fail restoring the checkpoints (or, worse,
    resume them into another model). Only run-control bindings of `run_training` (`RUN_CONTROL`:
    train_steps, max_minutes, evaluate, ...) may change. Leaves the new config parsed.
    """
    check_model_dir(model_dir)
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
            f"run_training.train_steps may change: {', '.join(RUN_CONTROL)})."
        )


def _checkpoint_index(model_dir):
    path = os.path.join(model_dir, "checkpoints", "checkpoint")
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return f.read()


def _only_initial_checkpoint(index):
    """The checkpoint index lists nothing but the step-0 checkpoint (saved before any step)."""
    if index is None:
        return True
    paths = [
        line.split(":", 1)[1].strip().strip('"')
        for line in index.decode().splitlines()
        if line.startswith("all_model_checkpoint_paths")
    ]
    return all(p.endswith("-0") for p in paths)


@contextlib.contextmanager
def config_restored_on_failure(model_dir: str | os.PathLike) -> Iterator[None]:
    """If the body raises before it trained a step, leave `model_dir` as it was: the previous
    `config.gin` is put back (or the new one removed), and what this call created for a run with
    no checkpoint (the step-0 checkpoint, or the whole directory) is removed, so that a corrected
    command is not refused as another config. A run that trained keeps everything."""
    import shutil

    path = os.path.join(model_dir, "config.gin")
    checkpoints = os.path.join(model_dir, "checkpoints")
    existed_dir = os.path.isdir(model_dir)
    had_checkpoints = os.path.isdir(checkpoints)
    old = None
    if os.path.isfile(path):
        with open(path, "rb") as f:
            old = f.read()
    index = _checkpoint_index(model_dir)
    try:
        yield
    except BaseException:
        now = _checkpoint_index(model_dir)
        if now == index or (not had_checkpoints and _only_initial_checkpoint(now)):
            if not existed_dir:
                shutil.rmtree(model_dir, ignore_errors=True)
            else:
                if old is not None:
                    staging = f"{path}.tmp-{os.getpid()}"
                    with open(staging, "wb") as f:
                        f.write(old)
                    os.replace(staging, path)
                elif os.path.isfile(path):
                    os.remove(path)
                if not had_checkpoints:
                    shutil.rmtree(checkpoints, ignore_errors=True)
        raise


def default_model_dir(gin_files: Sequence[str]) -> str:
    """`runs/<config name>`: the gin files' names without `.gin`, joined by '_' (train.py's
    --model_dir when none is given), e.g. runs/clel_large, runs/sadajem_tiny."""
    stems = [os.path.splitext(os.path.basename(str(f)))[0] for f in gin_files]
    return os.path.join("runs", "_".join(s for s in stems if s) or "run")


CONFIG_FILES_HEADER = "# keras_ebm config files: "


def config_files(model_dir: str | os.PathLike) -> list[str]:
    """The gin files a run was trained with, as `save_config` recorded them (a list; empty when
    the run's config.gin does not say)."""
    path = os.path.join(model_dir, "config.gin")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        for line in f:
            if line.startswith(CONFIG_FILES_HEADER):
                return [p for p in line[len(CONFIG_FILES_HEADER) :].strip().split(", ") if p]
            if not line.startswith("#"):
                break
    return []


def save_config(model_dir: str | os.PathLike, gin_files: Sequence[str] = (), extra_bindings: str = "") -> None:
    """Write every parsed binding to `<model_dir>/config.gin` (eval.py reads it back), headed by
    the names of the gin files it came from (`config_files`, report rows); `extra_bindings` (gin
    text) are appended, overriding what precedes them (a baseline run's own trainer)."""
    os.makedirs(model_dir, exist_ok=True)
    own = os.path.abspath(os.path.join(model_dir, "config.gin"))
    if [os.path.abspath(str(f)) for f in gin_files] == [own]:  # resumed with its own config.gin
        gin_files = config_files(model_dir)
    header = f"{CONFIG_FILES_HEADER}{', '.join(str(f) for f in gin_files)}\n" if gin_files else ""
    text = header + "import keras_ebm.configurables\n\n" + gin.config_str() + extra_bindings
    # Written beside and renamed into place: a kill mid-write must not leave a truncated config
    # that the rerun (check_run_config) and eval.py would read back.
    path = os.path.join(model_dir, "config.gin")
    staging = f"{path}.tmp-{os.getpid()}"
    with open(staging, "w") as f:
        f.write(text)
    os.replace(staging, path)


def save_baseline_config(model_dir: str | os.PathLike, baseline_dir: str | os.PathLike) -> str | None:
    """Write `<baseline_dir>/config.gin` for the baseline run that `run_training.baseline` trains
    beside the run in `model_dir` (the quickstart's `baseline/`): the parsed config with
    `run_training.trainer` set to the baseline and no baseline of its own, so that eval.py,
    `--compare` and `restore` read it as a run of its own. Does nothing when gin binds no
    `run_training.baseline` (a Python caller of `run_training`)."""
    try:
        reference = gin.query_parameter("run_training.baseline")
    except ValueError:
        return None
    if not isinstance(reference, gin.config.ConfigurableReference):
        return None
    extra = (
        "\n# The baseline trained beside the run in the parent directory: its own trainer, no "
        f"baseline of its own.\nrun_training.trainer = {reference!r}\nrun_training.baseline = None\n"
    )
    save_config(baseline_dir, gin_files=config_files(model_dir), extra_bindings=extra)
    return os.path.join(baseline_dir, "config.gin")


def resolve_run_training() -> dict[str, Any]:
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


def resolve_parameter(binding_key: str) -> Any:
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
