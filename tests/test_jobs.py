"""Upload jobs without HTTP: names, types, ids, the worker and expiry."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from livekit import SecretDetector, write_clip

from deid_sidecar.config import parse_config
from deid_sidecar.jobs import Job, JobError, JobManager, media_kind, sanitize_filename


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("clip.mp4", "clip.mp4"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\win.ini", "win.ini"),
        ("%2e%2e%2fsecret.MP4", "secret.mp4"),
        ("my clip (1).mov", "my_clip_1_.mov"),
        (".hidden.png", "hidden.png"),
        ("", "upload"),
        ("a" * 300 + ".jpg", "a" * 80 + ".jpg"),
    ],
)
def test_sanitize_filename(given: str, expected: str) -> None:
    assert sanitize_filename(given) == expected


@pytest.mark.parametrize(("name", "kind"), [("a.mp4", "video"), ("a.MKV", "video"), ("a.jpeg", "image")])
def test_media_kind(name: str, kind: str) -> None:
    assert media_kind(name) == kind


@pytest.mark.parametrize("name", ["a.txt", "a", "a.mp4.exe", "a.html"])
def test_media_kind_refuses(name: str) -> None:
    with pytest.raises(JobError) as error:
        media_kind(name)
    assert error.value.status == 415


@pytest.fixture
def manager(tmp_path: Path) -> Any:
    jobs = JobManager(
        parse_config({}), lambda c, labels: SecretDetector(), tmp_path / "jobs", limit=1, ttl_s=10
    )
    yield jobs
    jobs.close()


@pytest.mark.parametrize(("job_id", "status"), [("../x", 400), ("ABC", 400), ("0" * 32, 404)])
def test_get_refuses_bad_ids(manager: JobManager, job_id: str, status: int) -> None:
    with pytest.raises(JobError) as error:
        manager.get(job_id)
    assert error.value.status == status


def test_job_runs_reports_progress_and_expires(manager: JobManager, tmp_path: Path) -> None:
    job_id, upload = manager.new_upload("clip.mp4")
    write_clip(upload, seconds=3.0, fps=10)
    progress: list[int] = []
    job = manager.submit(Job(job_id, "clip.mp4", "video", ["face"], None, "test"), upload)
    while job.state in ("queued", "running"):
        progress.append(job.frames)
        time.sleep(0.01)
    assert job.state == "done", job.error
    assert job.frames == 30 and sorted(progress) == progress
    assert not upload.exists() and manager.result_path(job).is_file()
    assert manager.counts()["done"] == 1
    assert manager.expire(now=time.time() + 11) == 1
    assert not manager.job_dir(job).exists()


def test_detectors_are_shared_per_label_set(manager: JobManager) -> None:
    from deid_sidecar.core.detections import Label

    assert manager.detector({Label.FACE}) is manager.detector({Label.FACE})
    assert manager.detector({Label.FACE}) is not manager.detector({Label.PERSON})
