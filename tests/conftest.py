"""Shared fixtures: tiny offline models saved to files, synthetic images, job files, Prefect.

Models are built from configs with random weights and loaded back through the
same loaders users use. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers on two cores: one compute thread each, no oversubscription
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from segflow.demo.synthetic import SHAPE_CLASSES, write_scene_set


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    os.environ["SEGFLOW_CACHE_DIR"] = str(tmp_path_factory.mktemp("segflow-cache"))
    yield


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from tests.support.tiny import (
        make_tiny_grounding_dino,
        make_tiny_mask2former,
        make_tiny_maskrcnn,
        make_tiny_owl,
        make_tiny_promptable,
        make_tiny_sam,
        make_tiny_sam3,
        make_tiny_semantic,
        make_tiny_video_model,
        make_tiny_yolo,
    )

    d = tmp_path_factory.mktemp("models")
    return {
        "yolo": make_tiny_yolo(d / "yolo-tiny.pt", SHAPE_CLASSES, seed=0),
        "sam": make_tiny_sam(d / "sam-tiny.pt", seed=0),
        # labels: the shapes plus one the test ontologies lack (mapping must drop it)
        "mask2former": make_tiny_mask2former(
            d / "m2f-tiny.pt", [*SHAPE_CLASSES, "sky"], seed=0, pretrained_dir=d / "m2f-tiny"
        ),
        "mask2former_dir": d / "m2f-tiny",
        "maskrcnn": make_tiny_maskrcnn(d / "maskrcnn-tiny.pt", SHAPE_CLASSES, seed=0),
        "owlv2": make_tiny_owl(d / "owlv2-tiny", "owlv2"),
        "owlvit": make_tiny_owl(d / "owlvit-tiny", "owlvit"),
        "grounding_dino": make_tiny_grounding_dino(
            d / "gdino-tiny", ["forklift", "fork", "lift", "truck", "pallet", *SHAPE_CLASSES]
        ),
        "sam2": make_tiny_promptable(d / "sam2-tiny", "sam2"),
        "sam3": make_tiny_sam3(d / "sam3-tiny"),
        "sam2_video": make_tiny_video_model(d / "sam2-video-tiny", "sam2_video"),
        "semantic": make_tiny_semantic(d / "semantic-tiny.pt", ["void", *SHAPE_CLASSES], seed=0),
    }


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def _scenes_seed1(tmp_path_factory) -> Path:
    """The 20 scenes of seed 1 (two of them corrupt), drawn once per worker: :func:`image_dir` copies them."""
    d = tmp_path_factory.mktemp("scenes-seed1") / "images"
    write_scene_set(d, 20, seed=1, corrupt=True, size_range=(160, 400))
    return d


@pytest.fixture()
def image_dir(tmp_path, _scenes_seed1) -> Path:
    """A test's own copy of the seed-1 scenes (tests add, remove and damage files in it)."""
    d = tmp_path / "images"
    shutil.copytree(_scenes_seed1, d)
    return d


def job_dict(images: str, output: str, yolo: str, sam: str, **over) -> dict:
    job = {
        "name": "test-job",
        "source": {"url": str(images)},
        "output": str(output),
        "shard_size": 6,
        "ontology": [{"id": i + 1, "name": n} for i, n in enumerate(SHAPE_CLASSES)],
        "stages": {
            "detector": {
                "kind": "yolo",
                "weights": str(yolo),
                "conf": 0.0,
                "imgsz": 160,
                "max_det": 4,
                "batch_size": 4,
                "device": "cpu",
            },
            "masks": {"kind": "sam", "needs": ["detector"], "weights": str(sam), "batch_size": 2, "device": "cpu"},
        },
        "runtime": {"max_workers": 2},
    }
    for k, v in over.items():
        job[k] = v
    return job


@pytest.fixture()
def write_job(tmp_path, tiny_models):
    """Write a job YAML (defaults: tiny models, 6 images per shard); returns its path."""

    def _write(images, output, name="job.yaml", mutate=None, **over) -> Path:
        job = job_dict(images, output, tiny_models["yolo"], tiny_models["sam"], **over)
        if mutate:
            mutate(job)
        p = tmp_path / name
        p.write_text(yaml.safe_dump(job, sort_keys=False))
        return p

    return _write


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 (as s3fs's own tests run it); credentials only in the environment."""
    import logging

    from moto.server import ThreadedMotoServer

    # the server's request log is written from its own threads, to whatever stderr a test captures at the time:
    # torn down mid-write it printed "--- Logging error --- Traceback" into tests that assert there is none
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "segflow-test-key-id",
            "AWS_SECRET_ACCESS_KEY": "segflow-test-secret-do-not-log",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture()
def s3(s3_server):
    """A clean S3 (state reset) and an s3fs filesystem talking to it."""
    import boto3
    import requests
    import s3fs

    requests.post(f"{s3_server}/moto-api/reset", timeout=10)
    client = boto3.client("s3", endpoint_url=s3_server)
    for bucket in ("segflow-src", "segflow-out", "segflow-models"):
        client.create_bucket(Bucket=bucket)
    s3fs.S3FileSystem.clear_instance_cache()
    return s3fs.S3FileSystem(endpoint_url=s3_server, use_listings_cache=False)


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of moto's S3 server that injects storage faults.

    ``add(method, pattern, kind, times)``: the next ``times`` requests whose method
    and path match get ``kind`` instead of being forwarded: ``slowdown`` (503
    SlowDown), ``error500``, ``denied`` (403 AccessDenied) or ``reset`` (the
    connection is closed without an answer). Everything else goes to moto.
    """

    def __init__(self, upstream: str):
        import http.server
        import re
        import threading
        import urllib.parse

        self.upstream = urllib.parse.urlparse(upstream)
        self.rules: list[dict] = []
        self.hits: list[tuple[str, str, str]] = []
        self.requests: list[tuple[str, str, str]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _handle(self):
                import http.client

                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                rule = proxy._match(self.command, self.path)
                proxy.requests.append((self.command, self.path.split("?")[0], rule["kind"] if rule else "forwarded"))
                if rule is not None:
                    proxy.hits.append((self.command, self.path, rule["kind"]))
                    if rule["kind"] == "reset":
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    status, code, msg = {
                        "slowdown": (503, "SlowDown", "Please reduce your request rate."),
                        "error500": (500, "InternalError", "We encountered an internal error."),
                        "denied": (403, "AccessDenied", "Access Denied"),
                    }[rule["kind"]]
                    payload = (
                        '<?xml version="1.0" encoding="UTF-8"?>'
                        f"<Error><Code>{code}</Code><Message>{msg}</Message></Error>"
                    ).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload) if self.command != "HEAD" else 0))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                upstream_length = resp.getheader("Content-Length")
                self.send_header(
                    "Content-Length", upstream_length if self.command == "HEAD" and upstream_length else str(len(data))
                )
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._re = re
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, method: str, pattern: str, kind: str, times: int) -> None:
        with self.lock:
            self.rules.append({"method": method, "re": self._re.compile(pattern), "kind": kind, "left": times})

    def _match(self, method: str, path: str):
        with self.lock:
            for r in self.rules:
                if r["left"] > 0 and r["method"] in (method, "*") and r["re"].search(path):
                    r["left"] -= 1
                    return r
        return None

    def count(self, kind: str | None = None) -> int:
        return sum(1 for h in self.hits if kind is None or h[2] == kind)

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture()
def s3_faults(s3, s3_server, monkeypatch):
    """Point segflow's S3 traffic at a fault-injecting proxy in front of moto."""
    import s3fs

    proxy = FaultProxy(s3_server)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    s3fs.S3FileSystem.clear_instance_cache()
    yield proxy
    proxy.close()
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, prefect_harness):
    """`segflow demo` on 30 scenes (seed 3): images, ground truth and the finished run in ``out/``. Shared by the
    session: a test that changes the run works on a copy (:func:`demo_copy`)."""
    from segflow.flows import cli

    out = tmp_path_factory.mktemp("demo")
    assert cli.main(["demo", "--output", str(out), "--images", "30", "--seed", "3", "--no-progress"]) == 0
    return out


@pytest.fixture()
def demo_copy(demo_run, tmp_path):
    """A private copy of the demo's finished run (``out``) beside its images, the same paths inside."""
    import shutil

    dst = tmp_path / "demo"
    shutil.copytree(demo_run / "out", dst / "out")
    return dst / "out"


@pytest.fixture(autouse=True)
def _one_thread_per_worker():
    """Under xdist, put torch back to one thread after a test that raised it (`train-demo-models` runs in-process
    and takes every core): the rest of that worker's tests would oversubscribe the cores."""
    yield
    if os.environ.get("PYTEST_XDIST_WORKER") and "torch" in sys.modules:
        import torch

        if torch.get_num_threads() != 1:
            torch.set_num_threads(1)


#: Fixtures of the session's demo run: the test files that use them form one xdist work unit, so it is built once.
_DEMO_FIXTURES = frozenset({"demo_run", "demo_copy"})


def _uses_demo_run(path: Path) -> bool:
    """Whether a test file's functions (tests or its own fixtures) take a demo-run fixture."""
    import ast

    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError):
        return False
    return any(
        a.arg in _DEMO_FIXTURES
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
        for a in (*f.args.posonlyargs, *f.args.args, *f.args.kwonlyargs)
    )


@functools.cache
def _file_unit(root: Path, path: str) -> str:
    return "demo-run" if _uses_demo_run(root / path) else path


def work_unit(root: Path, nodeid: str) -> str:
    """The xdist work unit of a test (``nodeid`` relative to ``root``): its file, or ``demo-run``."""
    return _file_unit(root, nodeid.split("::", 1)[0])


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist's: no error where it is not loaded (-p no:xdist)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup``: one work unit per test file (its module fixtures are built on one worker), the files that
    use the demo run being one unit together.

    Done here, not with ``xdist_group`` marks: pytest-xdist 3.8 groups by suffixing each item's node id with its group
    on the worker, which pytest 9.2's structured node ids ignore, so the marks silently do nothing and the suite ran
    as ``--dist load`` (the demo run built on both workers; pytest-dev/pytest-xdist#1386)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    root = Path(str(config.rootpath))

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(root, nodeid)

    return FileScheduling(config, log)
