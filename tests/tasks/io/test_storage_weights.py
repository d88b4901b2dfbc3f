import threading

import fsspec
import pytest

from segflow.tasks.io.storage import create_exclusive, open_fs, redact, safe_join, write_bytes
from segflow.tasks.io.weights import WeightsError, resolve_weights, sha256_file


def test_safe_join_refuses_escapes():
    assert safe_join("s3://b/out", "coco/panoptic/a.png") == "s3://b/out/coco/panoptic/a.png"
    for bad in ["../x.png", "a/../../x", "/etc/passwd", "s3://other/x", "", "a/./b"]:
        with pytest.raises(ValueError, match="escape the output root"):
            safe_join("s3://b/out", bad)


def test_redact_removes_credentials():
    assert redact("s3://AKIA:secret@bucket/key") == "s3://***@bucket/key"
    assert "sig" not in redact("https://h/x?X-Amz-Signature=abcdef&X-Amz-Credential=AKIA").split("***")[-1]
    assert redact("/plain/path") == "/plain/path"


def test_create_exclusive_one_winner(tmp_path):
    fs, path = open_fs(str(tmp_path / "commit.json"))
    results = []
    barrier = threading.Barrier(8)

    def worker(i):
        barrier.wait()
        results.append((i, create_exclusive(fs, path, f"writer {i}".encode())))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    winners = [i for i, won in results if won]
    assert len(winners) == 1
    assert (tmp_path / "commit.json").read_text() == f"writer {winners[0]}"
    assert [p.name for p in tmp_path.iterdir()] == ["commit.json"]  # no temporary files left


def test_create_exclusive_on_memory_fs():
    fs = fsspec.filesystem("memory")
    assert create_exclusive(fs, "/x/c.json", b"1") is True
    assert create_exclusive(fs, "/x/c.json", b"2") is False
    assert fs.cat_file("/x/c.json") == b"1"


def test_write_bytes_replaces_atomically(tmp_path):
    fs, path = open_fs(str(tmp_path / "a" / "f.bin"))
    write_bytes(fs, path, b"one")
    write_bytes(fs, path, b"two")
    assert (tmp_path / "a" / "f.bin").read_bytes() == b"two"
    assert len(list((tmp_path / "a").iterdir())) == 1


def test_weights_from_url_are_cached_and_verified(tmp_path, tiny_models):
    data = tiny_models["sam"].read_bytes()
    mem = fsspec.filesystem("memory")
    mem.pipe_file("/models/sam.pt", data)
    good = sha256_file(tiny_models["sam"])
    local = resolve_weights("memory://models/sam.pt", good)
    assert open(local, "rb").read() == data
    mem.rm_file("/models/sam.pt")
    assert resolve_weights("memory://models/sam.pt", good) == local  # served from the cache

    mem.pipe_file("/models/other.pt", b"tampered")
    with pytest.raises(WeightsError, match=f"sha256 mismatch for memory://models/other.pt: expected {good}"):
        resolve_weights("memory://models/other.pt", good)
    mem.pipe_file("/models/other.pt", data)  # the bad download was not kept
    assert open(resolve_weights("memory://models/other.pt", good), "rb").read() == data

    with pytest.raises(WeightsError, match="weights not found"):
        resolve_weights("memory://models/missing.pt")
    with pytest.raises(WeightsError, match="weights not found"):
        resolve_weights(str(tmp_path / "missing.pt"))
