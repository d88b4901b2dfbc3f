"""Checks of a parsed job that its schema cannot express, each reported as ``(key.path, message)``.

Ontology ids and names, stage names, ``needs`` (existence, roles, cycles),
class maps, credentials in storage options and, when asked, files that must
exist (weights, source, gold sets).
"""

from __future__ import annotations

import os
import re
from typing import Any

from pydantic import ValidationError

from segflow.config.schema import _STAGE_NAME, JobConfig
from segflow.tasks.stages.registry import ADAPTERS


class ConfigError(Exception):
    """A job file that cannot run. ``issues`` are ``(key_path, message)`` pairs."""

    def __init__(self, file: str, issues: list[tuple[str, str]]):
        self.file = file
        self.issues = issues
        super().__init__("\n".join(f"{file}: {p}: {m}" if p else f"{file}: {m}" for p, m in issues))


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _strip_union_tags(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # pydantic puts the discriminator value into the location: stages.<name>.<kind>.key
    if len(loc) >= 3 and loc[0] == "stages" and loc[2] in ADAPTERS:
        return loc[:2] + loc[3:]
    return loc


def _pydantic_issues(err: ValidationError) -> list[tuple[str, str]]:
    issues = []
    for e in err.errors():
        loc = _strip_union_tags(tuple(e["loc"]))
        kind = e["type"]
        if kind == "extra_forbidden":
            msg = "unknown key"
        elif kind == "union_tag_invalid":
            loc = loc + ("kind",)
            msg = (
                f"unknown stage kind {e['input'].get('kind')!r} (known: {', '.join(sorted(ADAPTERS))})"
                if isinstance(e.get("input"), dict)
                else e["msg"]
            )
        elif kind == "union_tag_not_found":
            loc = loc + ("kind",)
            msg = f"missing 'kind' (known: {', '.join(sorted(ADAPTERS))})"
        elif kind == "missing":
            msg = "required key is missing"
        else:
            msg = e["msg"].removeprefix("Value error, ")
        issues.append((_loc_to_path(loc), msg))
    return issues


def _is_url(s: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", s))


def _url_issue(url: str) -> str | None:
    """A URL whose scheme no fsspec implementation knows (syntax only: nothing is read or imported)."""
    if not _is_url(url):
        return None
    from fsspec.registry import known_implementations, registry

    scheme = url.split("://", 1)[0].lower()
    if scheme in known_implementations or scheme in registry:
        return None
    return f"unknown URL scheme {scheme!r} (fsspec knows e.g. s3, gs, az, file, memory, http)"


_WHERE_CREDENTIALS_GO = (
    "credentials do not belong in the job file (segflow writes the job into job.json, the report and the "
    "dataset card); use the environment, an AWS profile or a Prefect block (credentials_block)"
)


def _url_issues(job: JobConfig) -> list[tuple[str, str]]:
    from segflow.tasks.io.storage import url_credential

    keys = {"source.url": job.source.url, "source.list": job.source.list, "output": job.output}
    keys |= {"gold_set": job.gold_set, "gold_panoptic": job.gold_panoptic, "accept.calibration": job.accept.calibration}
    keys |= {"gold_semantic": job.gold_semantic, "gold_video": job.gold_video}
    keys |= {f"stages.{n}.weights": getattr(st, "weights", None) for n, st in job.stages.items()}
    keys |= {f"exports[{i}].dest": e.dest for i, e in enumerate(job.exports or [])}
    keys |= {"publish.dest": job.publish.dest if job.publish is not None else None}
    issues = []
    for k, v in keys.items():
        if not isinstance(v, str):
            continue
        if cred := url_credential(v):
            issues.append((k, f"the URL carries {cred}: {_WHERE_CREDENTIALS_GO}"))
        elif problem := _url_issue(v):
            issues.append((k, problem))
    return issues


def _semantic_issues(job: JobConfig, check_files: bool) -> list[tuple[str, str]]:
    issues: list[tuple[str, str]] = _url_issues(job) + _ontology_issues(job) + _stage_name_issues(job)
    if any(p.endswith("]") and "needs" in p for p, _ in issues):
        return issues  # cycle and role checks need valid references
    cycle = _cycle(job)
    if cycle:
        return [*issues, (f"stages.{cycle[0]}.needs", "cycle: " + " -> ".join(cycle))]
    issues += _role_issues(job)
    issues += _output_stage_issues(job)
    issues += [
        (f"stages.{n}", f"a {s.kind!r} stage links a video's frames: set source.video (docs/video.md)")
        for n, s in job.stages.items()
        if ADAPTERS[s.kind].makes_tracks and job.source.video is None
    ]
    issues += _prompt_issues(job)
    issues += _stage_class_issues(job)
    # storage options never carry credentials, at any depth (client_kwargs, headers, config_kwargs, ...)
    from segflow.tasks.io.storage import secret_keys

    issues += [
        (key, _WHERE_CREDENTIALS_GO) for key in secret_keys(job.source.storage_options, "source.storage_options")
    ]
    if check_files:
        issues += _file_issues(job)
    if job.gold_panoptic and not job.panoptic_sink():
        issues.append(("gold_panoptic", "the job has no panoptic stage (kind: mask2former) to evaluate"))
    if job.gold_video and not job.tracks():
        issues.append(("gold_video", "the job has no stage that makes tracks (kind: track or sam2_video)"))
    if job.gold_semantic and not job.panoptic_sink():
        issues.append(("gold_semantic", "the job has no stage that makes semantic maps (semantic or mask2former)"))
    return issues


def _ontology_issues(job: JobConfig) -> list[tuple[str, str]]:
    issues = []
    if not job.ontology:
        issues.append(("ontology", "the ontology is empty; declare at least one class"))
    seen_ids: dict[int, int] = {}
    seen_names: dict[str, int] = {}
    for i, c in enumerate(job.ontology):
        if c.id in seen_ids:
            issues.append((f"ontology[{i}].id", f"duplicate id {c.id} (also ontology[{seen_ids[c.id]}])"))
        seen_ids.setdefault(c.id, i)
        if c.name in seen_names:
            issues.append((f"ontology[{i}].name", f"duplicate name {c.name!r} (also ontology[{seen_names[c.name]}])"))
        seen_names.setdefault(c.name, i)
    return issues


def _stage_name_issues(job: JobConfig) -> list[tuple[str, str]]:
    """Stage names, and ``needs`` that name stages that exist (not themselves)."""
    issues = []
    if not job.stages:
        issues.append(("stages", "no stages declared"))
    for name, st in job.stages.items():
        if not _STAGE_NAME.match(name):
            issues.append((f"stages.{name}", "stage names use letters, digits, '_' and '-' and start with a letter"))
        for i, dep in enumerate(st.needs):
            if dep not in job.stages:
                issues.append((f"stages.{name}.needs[{i}]", f"no stage named {dep!r}"))
            elif dep == name:
                issues.append((f"stages.{name}.needs[{i}]", "a stage cannot need itself"))
    return issues


def _cycle(job: JobConfig) -> list[str] | None:
    """The first cycle of ``needs`` (stage names, the first repeated last), None without one."""
    state: dict[str, int] = {}

    def find_cycle(n: str, path: list[str]) -> list[str] | None:
        state[n] = 1
        for d in job.stages[n].needs:
            if state.get(d) == 1:
                return path[path.index(d) :] + [d] if d in path else [n, d]
            if state.get(d) is None:
                c = find_cycle(d, path + [d])
                if c:
                    return c
        state[n] = 2
        return None

    for n in job.stages:
        if state.get(n) is None:
            cyc = find_cycle(n, [n])
            if cyc:
                return cyc
    return None


def _kinds_of(roles: tuple[str, ...]) -> str:
    return ", ".join(k for k, a in ADAPTERS.items() if a.role in roles)


def _role_issues(job: JobConfig) -> list[tuple[str, str]]:
    """Each stage's ``needs`` against the roles its kind consumes (exactly one of each needed role, at most one
    of each optional group, nothing else)."""
    issues = []
    for name, st in job.stages.items():
        spec = ADAPTERS[st.kind]
        dep_roles = [ADAPTERS[job.stages[d].kind].role for d in st.needs]
        for role_needed in spec.needs_roles:
            alternatives = tuple(role_needed.split("|"))
            matching = [d for d, r in zip(st.needs, dep_roles) if r in alternatives]
            if len(matching) != 1:
                issues.append(
                    (
                        f"stages.{name}.needs",
                        f"a {st.kind!r} stage needs exactly one {' or '.join(alternatives)} stage "
                        f"({_kinds_of(alternatives)}); found {len(matching)}",
                    )
                )
        for group in spec.optional_roles:
            matching = [d for d, r in zip(st.needs, dep_roles) if r in group]
            if len(matching) > 1:
                issues.append(
                    (
                        f"stages.{name}.needs",
                        f"a {st.kind!r} stage takes at most one {' or '.join(group)} stage ({_kinds_of(group)}); "
                        f"found {len(matching)}: {', '.join(matching)}",
                    )
                )
        allowed = {r for g in spec.needs_roles for r in g.split("|")} | {r for g in spec.optional_roles for r in g}
        for d, r in zip(st.needs, dep_roles):
            if r not in allowed:
                what = f"takes only {', '.join(sorted(allowed))} stages" if allowed else "takes no input stages"
                issues.append((f"stages.{name}.needs", f"a {st.kind!r} stage {what}; {d!r} is a {r} stage"))
    return issues


def _output_stage_issues(job: JobConfig) -> list[tuple[str, str]]:
    """Every sink makes masks; one stage writes previews; one panoptic output."""
    issues = []
    for sink in job.sink_stages() if job.stages else []:
        if not ADAPTERS[job.stages[sink].kind].produces_masks:
            issues.append(
                (
                    f"stages.{sink}",
                    f"stage {sink!r} ({job.stages[sink].kind}) produces no masks and no stage "
                    f"consumes it; add a mask stage (e.g. kind: sam, needs: [{sink}])",
                )
            )
    previews = [n for n, s in job.stages.items() if getattr(s, "preview", False)]
    if len(previews) > 1:
        issues.append((f"stages.{previews[1]}.preview", f"one stage writes semantic/preview/: also {previews[0]!r}"))
    merges = [n for n, s in job.stages.items() if ADAPTERS[s.kind].role == "merge"]
    panoptics = [n for n, s in job.stages.items() if ADAPTERS[s.kind].role == "panoptic"]
    if len(merges) > 1:
        issues.append(
            (
                f"stages.{merges[1]}",
                f"one panoptic output per job: found {len(merges)} panoptic_merge stages ({', '.join(merges)})",
            )
        )
    elif not merges and len(panoptics) > 1:
        issues.append(
            (
                f"stages.{panoptics[1]}",
                f"several panoptic stages ({', '.join(panoptics)}): add one panoptic_merge "
                f"stage that says which makes the panoptic output",
            )
        )
    return issues


def _prompt_issues(job: JobConfig) -> list[tuple[str, str]]:
    """Text prompts are not empty and each names one class."""
    issues = []
    prompt_owner: dict[str, str] = {}
    for i, c in enumerate(job.ontology):
        for p in c.text_prompts():
            key = p.strip().lower()
            if not key:
                issues.append((f"ontology[{i}].prompts", "empty prompt"))
            elif key in prompt_owner and prompt_owner[key] != c.name:
                issues.append(
                    (
                        f"ontology[{i}].prompts",
                        f"prompt {p!r} is also a prompt of {prompt_owner[key]!r}: a prompt names one class",
                    )
                )
            prompt_owner.setdefault(key, c.name)
    return issues


def _stage_class_issues(job: JobConfig) -> list[tuple[str, str]]:
    """Per-class thresholds and class maps name classes of the ontology; each kind's own checks."""
    names = {c.name for c in job.ontology}
    issues = []
    for name, st in job.stages.items():
        for cls_name in getattr(st, "thresholds", {}) or {}:
            if cls_name not in names:
                issues.append((f"stages.{name}.thresholds.{cls_name}", f"{cls_name!r} is not a class of the ontology"))
        if hasattr(st, "issues"):  # the kind's own checks (its settings model)
            roles = [ADAPTERS[job.stages[d].kind].role for d in st.needs if d in job.stages]
            issues += st.issues(name, set(names), roles)
    for name, st in job.stages.items():
        for model_name, onto_name in getattr(st, "class_map", {}).items():
            if onto_name not in names:
                issues.append(
                    (f"stages.{name}.class_map.{model_name}", f"{onto_name!r} is not a class of the ontology")
                )
    return issues


def _file_issues(job: JobConfig) -> list[tuple[str, str]]:
    """Local files the job names exist: weights, the source, gold sets, the source list."""
    from segflow.tasks.io.weights import weights_location_issue

    issues = []
    for name, st in job.stages.items():
        if not hasattr(st, "weights"):
            continue
        problem = weights_location_issue(
            st.weights,
            builtin_yaml_ok=ADAPTERS[st.kind].weights == "file_or_builtin",
            dir_ok=ADAPTERS[st.kind].weights == "file_or_dir",
        )
        if problem:
            issues.append((f"stages.{name}.weights", problem))

    def local(url: str | None) -> str | None:
        """The path, when it is one on this machine (not a URL)."""
        return url if url and not _is_url(url) else None

    if (p := local(job.source.url)) and not os.path.exists(p):
        issues.append(("source.url", f"not found: {p}"))
    if (p := local(job.gold_set)) and not os.path.isfile(p):
        issues.append(("gold_set", f"file not found: {p}"))
    if (p := local(job.gold_video)) and not os.path.isfile(p):
        issues.append(("gold_video", f"file not found: {p}"))
    if p := local(job.gold_panoptic):
        pngs = p.removesuffix(".json")
        if not os.path.isfile(p):
            issues.append(("gold_panoptic", f"file not found: {p}"))
        elif not os.path.isdir(pngs):
            message = f"PNG folder not found: {pngs} (COCO convention: the JSON's name without .json)"
            issues.append(("gold_panoptic", message))
    if (p := local(job.gold_semantic)) and not os.path.isdir(p):
        issues.append(("gold_semantic", f"folder not found: {p}"))
    if (p := local(job.source.list)) and not os.path.isfile(p):
        issues.append(("source.list", f"file not found: {p}"))
    return issues
