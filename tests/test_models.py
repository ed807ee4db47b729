"""Registry lookups and errors; fetch verification, extraction safety and idempotence."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from deid_sidecar.core.detections import Label
from deid_sidecar.errors import ModelMissingError, UserError
from deid_sidecar.models import fetch, registry


def test_registry_is_consistent() -> None:
    for model_id, spec in registry.MODELS.items():
        assert spec.id == model_id
        assert spec.sources and spec.licence
        assert spec.sha256 is None or len(spec.sha256) == 64
    for media_id, media in registry.MEDIA.items():
        assert media.id == media_id and len(media.sha256) == 64
    assert registry.MODELS["centerface"].task is Label.FACE
    assert set(registry.default_model_ids()) <= set(registry.MODELS)


def test_unknown_model_lists_known_ids(tmp_path: Path) -> None:
    with pytest.raises(ModelMissingError, match=r"unknown model 'no-such-model' \(known: centerface"):
        registry.model_path(tmp_path, "no-such-model")
    with pytest.raises(UserError, match="unknown media"):
        fetch.fetch_media(["nope"], tmp_path)


def test_missing_model_names_the_fetch_command(tmp_path: Path) -> None:
    with pytest.raises(ModelMissingError, match="fetch it with: deid-sidecar models fetch centerface"):
        registry.model_path(tmp_path, "centerface")


def test_describe_models_marks_fetched(tmp_path: Path) -> None:
    (tmp_path / "centerface.onnx").write_bytes(b"x")
    table = registry.describe_models(tmp_path).splitlines()
    assert table[0].split() == ["id", "task", "licence", "fetched", "int8", "copy"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows["centerface"][-2:] == [str(tmp_path / "centerface.onnx"), "no"]
    assert rows["yolov8n-plate"][-2:] == ["no", "no"]
    assert rows["retina-plate"][-1] == "-"  # no int8 recipe: float only


def test_verify_mismatch_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"hello")
    fetch.verify(path, hashlib.sha256(b"hello").hexdigest(), "f")
    with pytest.raises(UserError, match="sha256 mismatch for f"):
        fetch.verify(path, "0" * 64, "f")


def test_cached_media_with_wrong_content_fails_verification(tmp_path: Path) -> None:
    spec = registry.MEDIA["t1"]
    member = fetch.cache_dir(tmp_path / "media") / "members" / "insightface-2.1" / spec.source.member
    member.parent.mkdir(parents=True)
    member.write_bytes(b"not the photo")
    with pytest.raises(UserError, match="sha256 mismatch"):
        fetch.fetch_media(["t1"], tmp_path / "media")
    assert not (tmp_path / "media" / spec.filename).exists()


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "a/../../b", ""])
def test_unsafe_member_names_are_refused(name: str) -> None:
    with pytest.raises(UserError, match="unsafe"):
        fetch.safe_member(name)


def test_extract_member_from_zip_and_tar(tmp_path: Path) -> None:
    wheel = tmp_path / "p-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("p/data/x.bin", b"zip-data")
    fetch.extract_member(wheel, "p/data/x.bin", tmp_path / "out" / "x.bin")
    assert (tmp_path / "out" / "x.bin").read_bytes() == b"zip-data"

    sdist = tmp_path / "p-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        info = tarfile.TarInfo("p-1.0/assets/y.png")
        info.size = 8
        tf.addfile(info, io.BytesIO(b"tar-data"))
    fetch.extract_member(sdist, "p-1.0/assets/y.png", tmp_path / "y.png")
    assert (tmp_path / "y.png").read_bytes() == b"tar-data"
    with pytest.raises(UserError, match="has no member"):
        fetch.extract_member(sdist, "p-1.0/missing", tmp_path / "z")


def test_fetch_is_idempotent(models_dir: Path, media_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fetch.fetch_models(["centerface"], models_dir)
    fetch.fetch_media(["t1"], media_dir)
    assert capsys.readouterr().out.splitlines() == [
        "centerface: ok (cached)",
        "centerface int8: ok (cached)",
        "t1: ok (cached)",
    ]
    assert fetch.sha256_file(models_dir / "centerface.onnx") == registry.MODELS["centerface"].sha256


def test_unreachable_sources_are_reported_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(*_args: object, **_kwargs: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(fetch.urllib.request, "urlopen", offline)  # tests never leave the machine
    with pytest.raises(UserError) as caught:
        fetch.fetch_models(["yolov9t-384-plate"], tmp_path / "models")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("could not fetch model 'yolov9t-384-plate': https://")
