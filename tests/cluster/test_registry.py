import pytest

from cluster.errors import NotFoundError
from cluster.registry import Registry, RegistryError


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
    from cluster.storage import AlreadyExistsError

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
