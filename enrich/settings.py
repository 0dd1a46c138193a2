"""Where a run's settings come from, and the only module that reads the environment and the
settings file for them: flags > environment (``ENRICH_<NAME>``) > settings file (``enrich.toml``
or ``[tool.enrich]`` in ``pyproject.toml``) > defaults, into one validated :class:`RunConfig`
whose ``origins`` say where each value came from. Also the environment a run passes on
(object-store options for delta-rs, the source's settings for read tasks)."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI (a dependency there)
    import tomli as tomllib

from enrich.config import SECRET_ENV, RunConfig
from enrich.errors import UsageError

_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig) if f.name != "origins"}


def _coerce(name: str, value: Any, origin: str) -> Any:
    """Turn a string from the environment or a TOML value into the field's type (``origin``:
    where it came from, for the error)."""
    kind = _FIELDS[name].type
    try:
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
                raise ValueError
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "int | None":
            return None if value in (None, "") else int(value)
        if kind == "str | None":
            return None if value in (None, "") else str(value)
        if name == "engine_kwargs":
            parsed = json.loads(value) if isinstance(value, str) else value
            if not isinstance(parsed, dict):
                raise ValueError
            return parsed
    except (TypeError, ValueError, json.JSONDecodeError):
        raise UsageError(f"{origin}: {_FLAG_OF.get(name, name)} = {value!r} is not "
                         f"{_KINDS[str(kind)][1] if str(kind) in _KINDS else 'valid'}") from None
    return str(value)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# Per field type (as the dataclass spells it): what a value given in Python must be, and how
# an error names that type. Types not listed are not checked here.
_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "int": (_is_int, "a whole number"),
    "int | None": (_is_int, "a whole number"),
    "float": (lambda v: _is_int(v) or isinstance(v, float), "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "str | None": (lambda v: isinstance(v, str), "a string"),
    "EngineName": (lambda v: isinstance(v, str), "a string"),
    "Mapping[str, Any]": (lambda v: isinstance(v, Mapping), "a JSON object"),
}


def load_config_file(path: str | Path | None = None, *, cwd: Path | None = None) -> tuple[dict[str, Any], str]:
    """Read ``enrich.toml`` (or ``[tool.enrich]`` of ``pyproject.toml``) from ``cwd``."""
    cwd = cwd or Path.cwd()
    candidates = [Path(path)] if path else [cwd / "enrich.toml", cwd / "pyproject.toml"]
    for cand in candidates:
        if not cand.is_file():
            if path:
                raise UsageError(f"--config: no such file {cand}")
            continue
        try:
            data = tomllib.loads(cand.read_text("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{cand}: not valid TOML ({exc})") from None
        if cand.name == "pyproject.toml" and not path:
            data = data.get("tool", {}).get("enrich", {})
            if not data:
                continue
        values = {k.replace("-", "_"): v for k, v in data.items()}
        values = {ALIASES.get(k, k): v for k, v in values.items()}
        unknown = sorted(set(values) - set(_FIELDS))
        if unknown:
            raise UsageError(f"{cand}: unknown setting(s) {', '.join(unknown)}")
        return values, str(cand)
    return {}, ""


def resolve(
    flags: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
    cwd: Path | None = None,
) -> RunConfig:
    """Merge flags > environment > config file > defaults into a validated :class:`RunConfig`."""
    flags = {ALIASES.get(k, k): v for k, v in flags.items()}
    unknown = sorted(set(flags) - set(_FIELDS))
    if unknown:
        raise UsageError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}")
    for name, value in flags.items():
        if value is not None:
            _check_type(name, value)
    values, origins = _layered(_FIELDS, flags, env, config_file, cwd)
    if "until" not in values:
        raise UsageError("--until is required (the number of source rows to cover)")
    return RunConfig(**values, origins=origins)


# Settings whose field name is not the flag's (--gpu-wait sets gpu_wait_s): the flag's name is
# accepted wherever a setting is named (the Python API, the settings file).
ALIASES = {"gpu_wait": "gpu_wait_s"}
_FLAG_OF = {v: k for k, v in ALIASES.items()}


def _check_type(name: str, value: Any) -> None:
    """Settings given as values (the Python API) have the field's type: ``until="10"`` is an
    error in one line, not a TypeError from deep inside."""
    kind = _KINDS.get(str(_FIELDS[name].type))
    if kind is not None and not kind[0](value):
        raise UsageError(f"{_FLAG_OF.get(name, name)}={value!r}: expected {kind[1]}, got "
                         f"{type(value).__name__}")


def resolve_settings(names: Sequence[str], flags: Mapping[str, Any] | None = None, *,
                     env: Mapping[str, str] | None = None, config_file: str | None = None,
                     cwd: Path | None = None) -> dict[str, Any]:
    """Some settings alone (``enrich status``/``sql``/``compact``/``gallery``: the table, the
    checkpoint folder, the lock's time to live), by the same precedence as a run: flags >
    ``ENRICH_*`` > config file > RunConfig's defaults."""
    values, origins = _layered(names, flags or {}, env, config_file, cwd)
    cfg = RunConfig(until=0, **values, origins=origins)  # validated as a run's settings are
    return {n: getattr(cfg, n) for n in names}


def _layered(names: Iterable[str], flags: Mapping[str, Any], env: Mapping[str, str] | None,
             config_file: str | None, cwd: Path | None) -> tuple[dict[str, Any], dict[str, str]]:
    env = os.environ if env is None else env
    file_values, file_name = load_config_file(config_file, cwd=cwd)
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for name in names:
        env_name = ("RAY_ADDRESS" if name == "ray_address"
                    else f"ENRICH_{_FLAG_OF.get(name, name).upper()}")
        if flags.get(name) is not None:
            values[name], origins[name] = flags[name], "flag"
        elif env.get(env_name) not in (None, ""):
            values[name], origins[name] = _coerce(name, env[env_name], env_name), f"env {env_name}"
        elif name in file_values:
            values[name], origins[name] = (_coerce(name, file_values[name], file_name),
                                           f"file {file_name}")
        else:
            origins[name] = "default"
    return values, origins


def storage_options_from_env() -> dict[str, str]:
    """Object-store settings that delta-rs does not pick up from the environment by itself.
    (Credentials it reads itself; they never pass through enrich.)"""
    names = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ALLOW_HTTP", "AWS_S3_ALLOW_UNSAFE_RENAME")
    if os.environ.get("AWS_S3_ALLOW_UNSAFE_RENAME", "").lower() in ("1", "true", "yes"):
        _warn_unsafe_rename()
    return {name: os.environ[name] for name in names if os.environ.get(name)}


@functools.lru_cache(maxsize=1)
def _warn_unsafe_rename() -> None:
    """Once per process: delta-rs commits to S3 with conditional writes unless this is set."""
    logging.getLogger("enrich").warning(
        "AWS_S3_ALLOW_UNSAFE_RENAME is set: it turns off delta-rs's protection against two "
        "writers committing the same table version; S3, R2 and MinIO need no such setting")


# The driver's settings for reaching the source, which read tasks on other processes and nodes
# need too: Ray starts workers with the cluster's environment, not the driver's, so a hub
# endpoint, token or offline switch, or object-store settings, set where `enrich` was started
# would otherwise not apply to the reads.
SOURCE_ENV_PREFIXES = ("HF_", "HUGGING_FACE_", "AWS_", "GOOGLE_", "AZURE_", "FSSPEC_")


def source_env_from_env() -> dict[str, str]:
    """Environment variables the read tasks get from the driver (their runtime_env). Secrets are
    not among them: Ray keeps a task's runtime_env in its control plane and shows it in its
    dashboard, so tokens and keys must be set on the cluster's nodes (a local Ray started by
    enrich inherits them from the driver anyway)."""
    secret = ("TOKEN", "SECRET", "KEY", "PASSWORD", "CREDENTIALS")
    return {k: v for k, v in os.environ.items() if k.startswith(SOURCE_ENV_PREFIXES)
            and k not in SECRET_ENV and not any(w in k for w in secret)}
