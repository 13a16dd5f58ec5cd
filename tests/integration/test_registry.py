"""The model registry on both stores (a local folder and the local S3 server): versions,
champions, concurrent writers, tampering."""

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from medray.cluster.errors import NotFoundError
from medray.cluster.registry import Registry, RegistryError
from medray.cluster.storage import Storage


def files(tmp_path, tag):
    folder = tmp_path / tag
    folder.mkdir()
    (folder / "weights.pt").write_bytes(b"weights-" + tag.encode())
    (folder / "model_card.md").write_text(f"# model {tag}\n")
    return {p.name: p for p in folder.iterdir()}


def test_register_promote_rollback(storage, tmp_path):
    registry = Registry(storage)
    v1 = registry.register("breast", files(tmp_path, "a"), {"metrics": {"auroc": 0.9}})
    v2 = registry.register("breast", files(tmp_path, "b"), {"metrics": {"auroc": 0.93}})
    assert (v1, v2) == (1, 2)
    assert registry.models() == ["breast"] and registry.versions("breast") == [1, 2]
    assert registry.champion("breast") is None
    registry.promote("breast", 1)
    registry.promote("breast", 2)
    assert registry.resolve("breast") == ("breast", 2)
    assert registry.rollback("breast")["version"] == 1
    assert registry.resolve("breast") == ("breast", 1)
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback("breast")
    assert registry.version_info("breast", 2)["metrics"] == {"auroc": 0.93}
    assert registry.read_file("breast", 2, "weights.pt") == b"weights-b"


def test_versions_are_immutable_and_numbers_never_reused(storage, tmp_path):
    registry = Registry(storage)
    registry.register("m", files(tmp_path, "a"), {})
    before = registry.read_file("m", 1, "weights.pt")
    registry.register("m", files(tmp_path, "b"), {})
    assert registry.read_file("m", 1, "weights.pt") == before
    from medray.cluster.storage import AlreadyExistsError

    with pytest.raises(AlreadyExistsError):
        storage.write_json("models/m/versions/1/version.json", {"hacked": True}, exclusive=True)


def test_tampered_weights_are_refused(storage, tmp_path):
    registry = Registry(storage)
    registry.register("m", files(tmp_path, "a"), {})
    storage.write_bytes("models/m/versions/1/weights.pt", b"evil")
    with pytest.raises(RegistryError, match="does not match its recorded sha256"):
        registry.download("m", 1, tmp_path / "out")


def test_bad_references(storage, tmp_path):
    registry = Registry(storage)
    with pytest.raises(NotFoundError, match="not in the registry"):
        registry.resolve("nothing")
    registry.register("m", files(tmp_path, "a"), {})
    with pytest.raises(NotFoundError, match="has no version 7"):
        registry.promote("m", 7)
    assert registry.champion("m") is None  # a failed promote changes nothing
    with pytest.raises(RegistryError, match="has no champion"):
        registry.resolve("m")
    storage.write_json("models/m/champion.json", {"version": 9, "since": "x", "history": []})
    with pytest.raises(RegistryError, match="points to version 9, which does not exist"):
        registry.resolve("m")
    with pytest.raises(RegistryError, match="not allowed"):
        registry.resolve("../x")


# Concurrent writers ------------------------------------------------------------------
class Rendezvous(Storage):
    """Real storage whose first write of each thread under `prefix` waits for the other
    threads' first writes: every writer has read the registry before any of them writes,
    the interleaving that loses data if writers can clash."""

    def __init__(self, root, barrier, prefix):
        super().__init__(root)
        self.barrier, self.prefix, self.seen = barrier, prefix, threading.local()

    def _meet(self, key):
        if key.startswith(self.prefix) and not getattr(self.seen, "met", False):
            self.seen.met = True
            self.barrier.wait(timeout=30)

    def write_bytes(self, key, data, **kwargs):
        self._meet(key)
        super().write_bytes(key, data, **kwargs)

    def put_file(self, key, local_path):
        self._meet(key)
        super().put_file(key, local_path)


def in_threads(functions):
    with ThreadPoolExecutor(len(functions)) as pool:
        return [future.result(timeout=120) for future in [pool.submit(f) for f in functions]]


def test_concurrent_registers_never_touch_each_others_files(storage, tmp_path):
    barrier = threading.Barrier(3)
    writers = [Registry(Rendezvous(storage.root, barrier, "models/m/")) for _ in range(3)]
    tags = ["a", "b", "c"]
    versions = in_threads([lambda r=r, t=t: (t, r.register("m", files(tmp_path, t), {"tag": t}))
                           for r, t in zip(writers, tags)])
    registry = Registry(storage)
    assert sorted(v for _, v in versions) == [1, 2, 3] == registry.versions("m")
    for tag, version in versions:  # each version holds its own writer's weights, and loads
        assert registry.version_info("m", version)["tag"] == tag
        assert registry.read_file("m", version, "weights.pt") == f"weights-{tag}".encode()
        folder = registry.download("m", version, tmp_path / f"out-{version}")
        assert (folder / "model_card.md").read_text() == f"# model {tag}\n"


def test_concurrent_promotions_keep_every_promotion_in_history(storage, tmp_path):
    registry = Registry(storage)
    for tag in "abcd":
        registry.register("m", files(tmp_path, tag), {})
    registry.promote("m", 1)
    barrier = threading.Barrier(3)
    promoters = [Registry(Rendezvous(storage.root, barrier, "models/m/champion.json")) for _ in range(3)]
    in_threads([lambda r=r, v=v: r.promote("m", v) for r, v in zip(promoters, (2, 3, 4))])
    pointer = registry.champion("m")
    history = [entry["version"] for entry in pointer["history"]]
    assert history[0] == 1 and sorted(history[1:] + [pointer["version"]]) == [2, 3, 4]
    # Rolling back walks the same history, one step each.
    assert [registry.rollback("m")["version"] for _ in range(3)] == history[::-1]


def test_concurrent_first_promotions_keep_both(storage, tmp_path):
    registry = Registry(storage)
    for tag in "ab":
        registry.register("m", files(tmp_path, tag), {})
    barrier = threading.Barrier(2)
    promoters = [Registry(Rendezvous(storage.root, barrier, "models/m/champion.json")) for _ in range(2)]
    in_threads([lambda r=r, v=v: r.promote("m", v) for r, v in zip(promoters, (1, 2))])
    pointer = registry.champion("m")
    assert sorted([pointer["version"], *(e["version"] for e in pointer["history"])]) == [1, 2]


def test_a_claimed_but_unpublished_number_is_skipped(storage, tmp_path):
    registry = Registry(storage)
    storage.write_json("models/m/versions/1/.claim", {"claimed_at": "x"}, exclusive=True)  # a writer that died
    assert registry.register("m", files(tmp_path, "a"), {}) == 2
    assert registry.versions("m") == [2]


# Stored file names ---------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["../../../../escape.txt", "/etc/passwd", "sub/weights.pt", ".hidden", "nl\n"])
def test_a_version_file_name_that_escapes_is_refused(storage, tmp_path, bad):
    registry = Registry(storage)
    registry.register("m", files(tmp_path, "a"), {})
    info = storage.read_json("models/m/versions/1/version.json")
    info["files"][bad] = hashlib.sha256(b"evil").hexdigest()
    storage.write_json("models/m/versions/2/version.json", {**info, "version": 2})
    target = tmp_path / "deep" / "a" / "b" / "c" / "out"
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(RegistryError, match="file name .* is not allowed"):
        registry.download("m", 2, target)
    with pytest.raises(RegistryError, match="file name .* is not allowed"):
        registry.read_file("m", 2, "weights.pt")
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "deep" / "escape.txt").exists()
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file() and p not in before) == []


def test_register_refuses_file_names_that_are_not_plain(storage, tmp_path):
    source = tmp_path / "w.pt"
    source.write_bytes(b"w")
    for bad in ("../w.pt", "a/w.pt", "version.json"):
        with pytest.raises(RegistryError):
            Registry(storage).register("m", {bad: source}, {})
    assert Registry(storage).versions("m") == []


@pytest.mark.parametrize("ref", ["ecg@", "ecg@x", "ecg@v", "ecg@-1", "ecg@v1\n", "ecg@v1@v2"])
def test_a_malformed_version_is_refused_by_both(storage, ref):
    from medray.cluster.errors import MedrayError
    from medray.train.data.dataset import parse_ref

    with pytest.raises(RegistryError, match=r"model reference .* is not NAME or NAME@vN"):
        Registry(storage).resolve(ref)
    with pytest.raises(MedrayError, match=r"dataset reference .* is not NAME or NAME@vN"):
        parse_ref(ref)
