"""Upload jobs without HTTP: names, types, ids, the worker and expiry, owners, and what is refused
before any work (kinds nobody detects, pictures above the pixel limits)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from imagebombs import png_bomb, video_bomb
from livekit import SecretDetector, write_clip

from deid_sidecar.config import parse_config
from deid_sidecar.jobs import Job, JobError, JobManager, media_kind, probe_upload, sanitize_filename


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


# --- owners -----------------------------------------------------------------------------------------


def _finished_job(manager: JobManager, owner: str) -> Job:
    job_id, upload = manager.new_upload("x.png")
    upload.write_bytes(cv2.imencode(".png", np.full((32, 32, 3), 90, np.uint8))[1].tobytes())
    job = manager.submit(Job(job_id, "x.png", "image", ["face"], None, owner), upload)
    while job.state in ("queued", "running"):
        time.sleep(0.01)
    assert job.state == "done", job.error
    return job


def test_a_user_gets_and_lists_only_their_own_jobs(manager: JobManager) -> None:
    alices, bobs = _finished_job(manager, "alice"), _finished_job(manager, "bob")
    assert manager.get(alices.id, "alice") is alices
    assert [job.id for job in manager.list("alice")] == [alices.id]
    assert [job.id for job in manager.list("bob")] == [bobs.id]
    with pytest.raises(JobError) as error:
        manager.get(alices.id, "bob")
    assert error.value.status == 404
    assert error.value.message == f"no job {alices.id} (it may have expired)"  # as for an unknown id


def test_without_a_user_every_job_is_visible(manager: JobManager) -> None:
    """Admins (and the API token) pass no user."""
    alices, bobs = _finished_job(manager, "alice"), _finished_job(manager, "bob")
    assert manager.get(alices.id) is alices and manager.get(bobs.id) is bobs
    assert {job.id for job in manager.list()} == {alices.id, bobs.id}


# --- refused before any work -----------------------------------------------------------------------


def test_protecting_a_kind_whose_detector_is_disabled_is_refused(tmp_path: Path) -> None:
    jobs = JobManager(parse_config({}), lambda c, labels: SecretDetector(), tmp_path / "jobs")
    try:
        jobs.check_protect(["face", "license_plate"])
        with pytest.raises(JobError) as error:
            jobs.check_protect(["face", "person"])
        assert error.value.status == 409
        assert "person" in error.value.message and "detection.person.enabled is false" in error.value.message
    finally:
        jobs.close()


def test_an_image_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    upload = tmp_path / "bomb.png"
    upload.write_bytes(png_bomb(20000, 20000))
    started = time.perf_counter()
    with pytest.raises(JobError) as error:
        probe_upload(upload, "image")
    assert time.perf_counter() - started < 2.0  # decoding it took seconds and 2.3 GB
    assert error.value.status == 413 and "20000x20000" in error.value.message
    assert "40 megapixels" in error.value.message


def test_a_video_of_huge_frames_is_refused_before_decoding(tmp_path: Path) -> None:
    upload = video_bomb(tmp_path / "input.mov", 9000, 9000)
    with pytest.raises(JobError) as error:
        probe_upload(upload, "video")
    assert error.value.status == 413 and "9000x9000" in error.value.message
    assert str(tmp_path) not in error.value.message  # the server's paths stay private


def test_an_image_of_a_type_opencv_would_still_decode_is_refused(tmp_path: Path) -> None:
    upload = tmp_path / "input.png"
    upload.write_bytes(b"P6\n4 4\n255\n" + bytes(48))  # a PPM: cv2 decodes it whatever its name
    with pytest.raises(JobError) as error:
        probe_upload(upload, "image")
    assert error.value.status == 415 and "not a readable image" in error.value.message
