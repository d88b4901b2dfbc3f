"""Bad job files are rejected before any work, naming the file and the key path."""

import json

import pytest
import yaml

from segflow.config import ConfigError, job_json_schema, load_config
from segflow.flows import cli


def set_in(job, path, value):
    *parents, last = path
    for p in parents:
        job = job[p]
    if value is DELETE:
        del job[last]
    else:
        job[last] = value


DELETE = object()

BAD = [
    # (what changes, expected "key.path: message" fragment)
    (("stages", "masks", "needs"), ["detektor"], "stages.masks.needs[0]: no stage named 'detektor'"),
    (("stages", "detector", "kind"), "rcnn9000", "stages.detector.kind: unknown stage kind 'rcnn9000'"),
    (("stages", "detector", "conf"), "high", "stages.detector.conf: Input should be a valid number"),
    (("stages", "detector", "conf"), 1.5, "stages.detector.conf: Input should be less than or equal to 1"),
    (("stages", "masks", "colour"), "red", "stages.masks.colour: unknown key"),
    (("shard_sise",), 10, "shard_sise: unknown key"),
    (("ontology",), [], "ontology: the ontology is empty"),
    (("ontology", 1, "id"), 1, "ontology[1].id: duplicate id 1"),
    (
        ("stages", "masks", "weights"),
        "/nonexistent/sam.pt",
        "stages.masks.weights: file not found: /nonexistent/sam.pt",
    ),
    (("stages", "detector", "needs"), ["masks"], "stages.detector.needs: cycle: detector -> masks -> detector"),
    (
        ("stages", "masks", "needs"),
        [],
        "stages.masks.needs: a 'sam' stage needs exactly one detector stage (yolo, "
        "owlv2, owlvit, grounding_dino); found 0",
    ),
    (("stages", "masks", "sha256"), "abc", "stages.masks.sha256: must be 64 hexadecimal characters"),
    (("shard_size",), 0, "shard_size: Input should be greater than or equal to 1"),
    (("source",), {"url": "x", "list": "y"}, "source: give exactly one of 'url'"),
    (("output",), DELETE, "output: required key is missing"),
    (
        ("stages", "detector", "class_map"),
        {"square": "cube"},
        "stages.detector.class_map.square: 'cube' is not a class of the ontology",
    ),
    (
        ("source", "storage_options"),
        {"secret": "hunter2"},
        "source.storage_options.secret: credentials do not belong in the job file",
    ),
    (("runtime", "max_workers"), "many", "runtime.max_workers: Input should be a valid integer"),
    (("stages", "detector", "device"), "gpu0", "stages.detector.device: unknown device 'gpu0'"),
]


@pytest.mark.parametrize(
    "path,value,expected", BAD, ids=[e.split(":")[0] + "-" + str(i) for i, (_, _, e) in enumerate(BAD)]
)
def test_bad_config_rejected_with_key_path(path, value, expected, write_job, image_dir, tmp_path):
    job_file = write_job(image_dir, tmp_path / "out", mutate=lambda j: set_in(j, path, value))
    with pytest.raises(ConfigError) as err:
        load_config(job_file)
    assert f"{job_file}: {expected}" in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing started


def test_stage_pointing_to_itself(write_job, image_dir, tmp_path):
    job_file = write_job(
        image_dir, tmp_path / "out", mutate=lambda j: set_in(j, ("stages", "masks", "needs"), ["masks"])
    )
    with pytest.raises(ConfigError, match=r"stages.masks.needs\[0\]: a stage cannot need itself"):
        load_config(job_file)


def test_missing_source_list_is_named(write_job, image_dir, tmp_path):
    """A `source.list` that does not exist is a config error naming the key; an existing one validates."""
    missing = tmp_path / "missing.txt"
    job_file = write_job(image_dir, tmp_path / "out", mutate=lambda j: set_in(j, ("source",), {"list": str(missing)}))
    with pytest.raises(ConfigError, match=rf"source.list: file not found: {missing}"):
        load_config(job_file)
    assert cli.main(["validate", str(job_file)]) == 2
    missing.write_text("\n".join(str(p) for p in sorted(image_dir.iterdir())) + "\n")  # negative control
    assert load_config(job_file).source.list == str(missing)


def test_yaml_syntax_error_has_line(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: x\nstages: [\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: line \d+, column \d+: invalid YAML"):
        load_config(p)


def test_unsafe_yaml_tags_are_not_executed(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(p)


def test_relative_paths_resolve_against_the_job_file(write_job, image_dir, tmp_path, tiny_models, monkeypatch):
    job_file = write_job(image_dir, "out/run1", mutate=lambda j: j["source"].update(url="images"))
    monkeypatch.chdir("/")
    job = load_config(job_file)
    assert job.output == str(tmp_path / "out" / "run1")
    assert job.source.url == str(image_dir)
    cli_job = load_config(job_file, overrides={"output": "elsewhere"})  # command-line paths: relative to cwd
    assert cli_job.output == "/elsewhere"
    assert job.stage_order() == ["detector", "masks"] and job.sink_stages() == ["masks"]


def test_validate_and_schema_commands(write_job, image_dir, tmp_path, capsys):
    good = write_job(image_dir, tmp_path / "out")
    assert cli.main(["validate", str(good)]) == 0
    assert "ok" in capsys.readouterr().out
    bad = write_job(
        image_dir, tmp_path / "out", name="bad.yaml", mutate=lambda j: set_in(j, ("stages", "masks", "needs"), ["nope"])
    )
    assert cli.main(["validate", str(bad)]) == 2
    assert "bad.yaml: stages.masks.needs[0]: no stage named 'nope'" in capsys.readouterr().err
    assert cli.main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema == json.loads(json.dumps(job_json_schema()))
    assert {"source", "output", "ontology", "stages"} <= set(schema["required"])
    assert "yolo" in json.dumps(schema) and "sam" in json.dumps(schema)


def test_example_configs_validate_statically_and_cover_every_stage_kind(capsys, tmp_path):
    """`segflow validate --static` on every file in configs/ (what deploy/Dockerfile runs at build time): the file
    alone, nothing read; together the examples use every registered stage kind. Plain `validate` still checks files,
    and a URL scheme no fsspec implementation knows fails either way."""
    from pathlib import Path

    from segflow.flows import cli
    from segflow.tasks.stages.registry import ADAPTERS

    root = Path(__file__).resolve().parents[2]
    files = sorted((root / "configs").glob("*.yaml"))
    kinds = set()
    for f in files:
        assert cli.main(["validate", "--static", str(f)]) == 0, capsys.readouterr().err
        kinds |= {st["kind"] for st in yaml.safe_load(f.read_text())["stages"].values()}
    assert kinds == set(ADAPTERS), set(ADAPTERS) - kinds
    assert 'segflow validate --static "$f"' in (root / "deploy" / "Dockerfile").read_text()
    capsys.readouterr()
    job = yaml.safe_load((root / "configs" / "example.yaml").read_text())
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    assert cli.main(["validate", str(tmp_path / "job.yaml")]) == 2  # the live check: the weights are not there
    assert "stages.detector.weights" in capsys.readouterr().err
    job["output"] = "s4://bucket/labels/"
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    assert cli.main(["validate", "--static", str(tmp_path / "job.yaml")]) == 2
    assert "output: unknown URL scheme 's4'" in capsys.readouterr().err


def _with_panoptic(tiny_models, **merge):
    def mutate(j):
        j["ontology"].append({"id": 9, "name": "ground", "isthing": False})
        j["stages"]["panoptic"] = {"kind": "mask2former", "weights": str(tiny_models["mask2former"]), "device": "cpu"}
        j["stages"]["merge"] = {"kind": "panoptic_merge", "needs": ["masks", "panoptic"], **merge}

    return mutate


PANOPTIC_BAD = [
    (
        ("stages", "panoptic", "unmapped"),
        "lava",
        "stages.panoptic.unmapped: 'lava' is not a class of the ontology (or use 'drop')",
    ),
    (
        ("stages", "panoptic", "label_map"),
        {"sky": "lava"},
        "stages.panoptic.label_map.sky: 'lava' is not a class of the ontology",
    ),
    (
        ("stages", "merge", "needs"),
        ["masks"],
        "stages.merge.needs: a 'panoptic_merge' stage needs exactly one panoptic stage "
        "(mask2former, semantic); found 0",
    ),
    (
        ("stages", "merge", "needs"),
        ["panoptic"],
        "stages.merge.needs: things: instances needs an instance stage (sam, qc, "
        "sam_auto, yolo_seg or maskrcnn) in needs",
    ),
    (("stages", "merge", "needs"), ["detector", "panoptic"], "stages.merge.needs: a 'panoptic_merge' stage takes only"),
    (("stages", "merge", "things"), "everything", "stages.merge.things: Input should be 'instances' or 'panoptic'"),
    (
        ("stages", "panoptic", "weights"),
        "hub:nobody/nothing",
        "stages.panoptic.weights: hub:nobody/nothing: not in the local Hugging Face cache",
    ),
    (("gold_panoptic",), "/nonexistent/panoptic.json", "gold_panoptic: file not found: /nonexistent/panoptic.json"),
]


@pytest.mark.parametrize("path,value,expected", PANOPTIC_BAD, ids=[f"panoptic-{i}" for i in range(len(PANOPTIC_BAD))])
def test_bad_panoptic_config_rejected(path, value, expected, write_job, image_dir, tmp_path, tiny_models):
    base = _with_panoptic(tiny_models)
    job_file = write_job(image_dir, tmp_path / "out", mutate=lambda j: (base(j), set_in(j, path, value)))
    with pytest.raises(ConfigError) as err:
        load_config(job_file)
    assert f"{job_file}: {expected}" in str(err.value)


def test_panoptic_job_roles(write_job, image_dir, tmp_path, tiny_models):
    job = load_config(write_job(image_dir, tmp_path / "out", mutate=_with_panoptic(tiny_models)))
    assert job.instance_sinks() == ["masks"] and job.panoptic_sink() == "merge"
    two = write_job(
        image_dir,
        tmp_path / "out",
        name="two.yaml",
        mutate=lambda j: (_with_panoptic(tiny_models)(j), j["stages"].update(merge2=dict(j["stages"]["merge"]))),
    )
    with pytest.raises(ConfigError, match="one panoptic output per job"):
        load_config(two)


def test_sam_auto_category_must_be_in_the_ontology(write_job, image_dir, tmp_path, tiny_models):
    def mutate(j):
        j["stages"] = {"auto": {"kind": "sam_auto", "weights": str(tiny_models["sam"]), "category": "thing"}}

    with pytest.raises(ConfigError, match=r"stages.auto.category: 'thing' is not a class of the ontology"):
        load_config(write_job(image_dir, tmp_path / "out", mutate=mutate))
    ok = write_job(
        image_dir,
        tmp_path / "out",
        name="ok.yaml",
        mutate=lambda j: (mutate(j), j["ontology"].append({"id": 99, "name": "thing"})),
    )
    assert load_config(ok).instance_sinks() == ["auto"]


OWL_BAD = [
    (
        lambda j: j["ontology"][0].update(prompts=["round thing", "Square"]),
        "ontology[1].prompts: prompt 'square' is also a prompt of 'circle'",
    ),
    (lambda j: j["ontology"][0].update(prompts=[" "]), "ontology[0].prompts: empty prompt"),
    (
        lambda j: j["stages"]["detector"].update(kind="owlv2", thresholds={"cube": 0.3}),
        "stages.detector.thresholds.cube: 'cube' is not a class of the ontology",
    ),
]


@pytest.mark.parametrize("mutate,expected", OWL_BAD, ids=[f"owl-{i}" for i in range(len(OWL_BAD))])
def test_bad_text_prompt_ontology_rejected(mutate, expected, write_job, image_dir, tmp_path, tiny_models):
    def m(j):
        j["stages"]["detector"] = {"kind": "owlv2", "weights": str(tiny_models["owlv2"]), "device": "cpu"}
        mutate(j)

    job_file = write_job(image_dir, tmp_path / "out", mutate=m)
    with pytest.raises(ConfigError) as err:
        load_config(job_file)
    assert f"{job_file}: {expected}" in str(err.value)


def test_config_reference_is_generated_from_the_schema():
    """docs/config.md is what `segflow schema --markdown` prints; regenerate it when the schema changes."""
    from pathlib import Path

    from segflow.config.reference import config_reference
    from segflow.config.schema import SamStage

    docs = Path(__file__).resolve().parents[2] / "docs" / "config.md"
    text = config_reference()
    assert docs.read_text() == text, "docs/config.md is stale: run `segflow schema --markdown > docs/config.md`"
    for key in ("`source.url`", "`runtime.max_workers`", "`ontology[].id`", "`zoom_context`", "`predicted_iou`"):
        assert key in text
    description = SamStage.model_fields["mask_margin"].description
    assert " ".join(description.split()) in text  # each key's contract comes from its field


def test_a_track_stage_needs_video_and_a_video_source_checks_its_keys(capsys, tmp_path):
    """`kind: track` links a video's frames: on still images it is a config error naming the stage; `every` and
    `fps` exclude each other. Negative control: the example video job validates."""
    from pathlib import Path

    from segflow.flows import cli

    job = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "video.yaml").read_text())
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(job))
    assert cli.main(["validate", "--static", str(tmp_path / "ok.yaml")]) == 0
    still = job | {"source": {"url": job["source"]["url"]}}
    (tmp_path / "still.yaml").write_text(yaml.safe_dump(still))
    assert cli.main(["validate", "--static", str(tmp_path / "still.yaml")]) == 2
    assert "stages.tracks: a 'track' stage links a video's frames: set source.video" in capsys.readouterr().err
    both = job | {"source": job["source"] | {"video": {"every": 2, "fps": 5}}}
    (tmp_path / "both.yaml").write_text(yaml.safe_dump(both))
    assert cli.main(["validate", "--static", str(tmp_path / "both.yaml")]) == 2
    assert "source.video: give 'every' or 'fps', not both" in capsys.readouterr().err
