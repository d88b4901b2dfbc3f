"""Reading a job file: ``yaml.safe_load``, path resolution, the schema, then the checks.

Relative paths inside the YAML (source, output, weights) are resolved against
the directory of the YAML file, so a job file travels with its models. Paths
given on the command line are relative to the working directory. URLs
(``s3://...``, ``memory://...``) are used as they are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from segflow.config.schema import JobConfig
from segflow.config.validation import ConfigError, _is_url, _pydantic_issues, _semantic_issues
from segflow.tasks.stages.registry import ADAPTERS


def _resolve(path: str, base: Path | str) -> str:
    """Make a relative path absolute against ``base`` (a folder, or the URL of a remote job file's folder); URLs stay
    as they are."""
    if _is_url(path):
        return path
    if isinstance(base, str) and _is_url(base):
        import posixpath

        if path.startswith("/"):
            return path
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, path))}"
    p = Path(os.path.expanduser(path))
    return str(p if p.is_absolute() else (Path(base) / p).resolve())


def parse_config(
    data: Any,
    file: str = "<config>",
    base_dir: str | Path | None = None,
    overrides: dict[str, str] | None = None,
    check_files: bool = True,
) -> JobConfig:
    """Validate an already-loaded mapping. ``overrides`` (``source``, ``output``, ``gold_set``, ``gold_panoptic``,
    ``gold_semantic``, ``gold_video``, ``calibration``) are CLI values, relative to cwd."""
    if data is None:
        raise ConfigError(file, [("", "the file is empty")])
    if not isinstance(data, dict):
        raise ConfigError(file, [("", f"the top level must be a mapping of keys, got {type(data).__name__}")])
    base: Path | str = (
        (base_dir if isinstance(base_dir, str) and _is_url(base_dir) else Path(base_dir))
        if base_dir is not None
        else Path.cwd()
    )
    try:
        job = JobConfig.model_validate(dict(data))
    except ValidationError as e:
        raise ConfigError(file, _pydantic_issues(e)) from None
    job = _resolve_paths(job, base, overrides or {})
    issues = _semantic_issues(job, check_files)
    if issues:
        raise ConfigError(file, issues)
    return job


def _resolve_paths(job: JobConfig, base: Path | str, overrides: dict[str, str]) -> JobConfig:
    """``job`` with its relative paths resolved against ``base`` (the job file's folder) and the CLI's
    ``overrides`` applied (relative to the working directory)."""
    cwd = Path.cwd()
    src = job.source
    if overrides.get("source"):
        src = src.model_copy(update={"url": _resolve(overrides["source"], cwd), "list": None, "pattern": None})
    elif src.url:
        src = src.model_copy(update={"url": _resolve(src.url, base)})
    elif src.list:  # one of url and list is set (SourceConfig checks it)
        src = src.model_copy(update={"list": _resolve(src.list, base)})

    def path(key: str, value: str | None) -> str | None:
        """A CLI override (relative to cwd) or the job's value (relative to the job file)."""
        if overrides.get(key):
            return _resolve(overrides[key], cwd)
        return _resolve(value, base) if value else value

    calibration = path("calibration", job.accept.calibration)
    stages = {name: _resolve_weights(st, base) for name, st in job.stages.items()}
    publish = job.publish.model_copy(update={"dest": _resolve(job.publish.dest, base)}) if job.publish else None
    return job.model_copy(
        update={
            "source": src,
            "output": _resolve(overrides["output"], cwd) if overrides.get("output") else _resolve(job.output, base),
            "stages": stages,
            "gold_set": path("gold_set", job.gold_set),
            "gold_panoptic": path("gold_panoptic", job.gold_panoptic),
            "gold_semantic": path("gold_semantic", job.gold_semantic),
            "gold_video": path("gold_video", job.gold_video),
            "accept": job.accept.model_copy(update={"calibration": calibration}),
            "publish": publish,
        }
    )


def _resolve_weights(st: Any, base: Path | str) -> Any:
    """A stage with its ``weights`` resolved against ``base``; a built-in model name (``yolov8n-seg.yaml``, no
    such file beside the job) and ``hub:`` references stay as they are."""
    if not hasattr(st, "weights"):
        return st
    w = st.weights
    keep = (
        ADAPTERS[st.kind].weights == "file_or_builtin"
        and w.endswith((".yaml", ".yml"))
        and "/" not in w
        and not (isinstance(base, Path) and (base / w).exists())
    ) or w.startswith("hub:")
    return st.model_copy(update={"weights": w if keep else _resolve(w, base)})


def load_config(path: str | Path, overrides: dict[str, str] | None = None, check_files: bool = True) -> JobConfig:
    """Read and validate a job file (a local path or any fsspec URL). Raises :class:`ConfigError` naming the file and
    key path.

    Relative paths inside the file resolve against the file's folder (for a
    URL: against the URL's folder).
    """
    name = str(path)
    remote = isinstance(path, str) and _is_url(path)
    try:
        if isinstance(path, str) and remote:
            from segflow.tasks.io.storage import open_fs, read_bytes

            fs, fpath = open_fs(path)
            text = read_bytes(fs, fpath).decode("utf-8")
            base_dir: str | Path = path.rsplit("/", 1)[0]
        else:
            p = Path(path)
            text = p.read_text(encoding="utf-8")
            base_dir = p.resolve().parent
    except FileNotFoundError:
        raise ConfigError(name, [("", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(name, [("", f"cannot read: {e}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(name, [("", f"{where}invalid YAML: {problem}")]) from None
    return parse_config(data, file=name, base_dir=base_dir, overrides=overrides, check_files=check_files)
