"""A shard's reads run ahead of the models: one batch plus ``runtime.prefetch`` images in flight, in plan order."""

import io
import threading
import time

import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from PIL import Image

from segflow.config import JobConfig
from segflow.tasks.shard.runner import _decoded_stream


class CountingMemoryFS(MemoryFileSystem):
    """fsspec's in-memory filesystem, recording every read (an object store's GETs)."""

    protocol = "countmem"
    reads: list[str] = []
    lock = threading.Lock()

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(path.removeprefix("countmem://"))

    def cat_file(self, path, start=None, end=None, **kwargs):
        with CountingMemoryFS.lock:
            CountingMemoryFS.reads.append(path)
        return super().cat_file(path, start, end, **kwargs)


@pytest.fixture()
def rows():
    fsspec.register_implementation("countmem", CountingMemoryFS, clobber=True)
    fs = CountingMemoryFS()
    out = []
    for i in range(30):
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 12, 3), i, np.uint8)).save(buf, format="PNG")
        fs.pipe_file(f"/read-ahead/{i:03d}.png", buf.getvalue())
        out.append({"image_id": i + 1, "uri": f"countmem:///read-ahead/{i:03d}.png", "key": f"{i:03d}.png"})
    CountingMemoryFS.reads.clear()
    yield out
    fs.rm("/read-ahead", recursive=True)


def _job(prefetch: int, batch_size: int) -> JobConfig:
    return JobConfig.model_validate(
        {
            "name": "read-ahead",
            "source": {"url": "countmem:///read-ahead"},
            "output": "countmem:///read-ahead-out",
            "ontology": [{"id": 1, "name": "thing"}],
            "stages": {
                "detector": {"kind": "yolo", "weights": "unused.pt", "batch_size": batch_size, "device": "cpu"},
                "masks": {"kind": "sam", "needs": ["detector"], "weights": "unused.pt", "device": "cpu"},
            },
            "runtime": {"prefetch": prefetch},
        }
    )


def _settled_reads() -> int:
    """Reads started once the pool has nothing left to do (the consumer holds the stream)."""
    last, same = -1, 0
    while same < 5:
        time.sleep(0.02)
        n = len(CountingMemoryFS.reads)
        same = same + 1 if n == last else 0
        last = n
    return last


@pytest.mark.parametrize(("prefetch", "batch_size"), [(3, 8), (1, 1), (4, 2)])
def test_one_batch_plus_prefetch_images_are_read_ahead(rows, prefetch, batch_size):
    stream = _decoded_stream(rows, _job(prefetch, batch_size))
    row, first = next(stream)
    assert row is rows[0] and first.pixels[0, 0, 0] == 0
    # the first image was handed over and its place refilled: a batch and prefetch more are read, no further
    assert _settled_reads() == batch_size + prefetch + 1
    rest = list(stream)
    assert [r for r, _ in rest] == rows[1:]  # plan order, every image once
    assert [img.pixels[0, 0, 0] for _, img in rest] == list(range(1, 30))
    assert sorted(CountingMemoryFS.reads) == sorted(r["uri"].removeprefix("countmem://") for r in rows)
