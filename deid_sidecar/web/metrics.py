"""`GET /metrics`: Prometheus text exposition (version 0.0.4) of camera stats and job counts."""

from __future__ import annotations

from aiohttp import web

from deid_sidecar.web.state import state_of

# (stats key, metric name, type, help). Counters end in _total as Prometheus expects.
CAMERA_METRICS = (
    ("fps_in", "deid_camera_fps_in", "gauge", "Frames per second decoded from the camera."),
    ("fps_detect", "deid_camera_fps_detect", "gauge", "Detections per second."),
    ("fps_out", "deid_camera_fps_out", "gauge", "Frames per second published."),
    ("latency_ms", "deid_camera_latency_ms", "gauge", "Capture to publish latency (ms)."),
    ("last_frame_age_s", "deid_camera_last_frame_age_seconds", "gauge", "Age of the newest camera frame."),
    ("readers", "deid_camera_readers", "gauge", "Clients reading the anonymized stream."),
    ("frames_in", "deid_camera_frames_in_total", "counter", "Frames decoded."),
    ("frames_out", "deid_camera_frames_out_total", "counter", "Frames published."),
    (
        "frames_dropped",
        "deid_camera_frames_dropped_total",
        "counter",
        "Frames lost (queue overflow, failed or held).",
    ),
    (
        "frames_skipped",
        "deid_camera_frames_skipped_total",
        "counter",
        "Frames left out on purpose to keep to the output fps.",
    ),
    ("frames_masked_whole", "deid_camera_frames_masked_whole_total", "counter", "Frames masked whole."),
    ("detections_run", "deid_camera_detections_total", "counter", "Detector runs."),
    ("detector_errors", "deid_camera_detector_errors_total", "counter", "Detector failures and timeouts."),
    ("reconnects", "deid_camera_reconnects_total", "counter", "Camera reconnects."),
    ("readers_dropped", "deid_camera_readers_dropped_total", "counter", "Slow readers dropped."),
)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
STATES = ("starting", "online", "offline", "degraded", "stopped", "paused")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(stats: dict[str, dict[str, object]], paused: set[str], jobs: dict[str, int]) -> str:
    lines: list[str] = []
    for key, name, kind, help_text in CAMERA_METRICS:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for camera, snapshot in stats.items():
            value = snapshot.get(key)
            if isinstance(value, int | float):
                lines.append(f'{name}{{camera="{_label(camera)}"}} {float(value)}')
    lines += ["# HELP deid_camera_state 1 for the camera's current state.", "# TYPE deid_camera_state gauge"]
    for camera, snapshot in stats.items():
        current = "paused" if camera in paused else str(snapshot.get("state"))
        for state in STATES:
            lines.append(
                f'deid_camera_state{{camera="{_label(camera)}",state="{state}"}} {int(state == current)}'
            )
    lines += ["# HELP deid_jobs Upload jobs by state.", "# TYPE deid_jobs gauge"]
    lines += [f'deid_jobs{{state="{state}"}} {count}' for state, count in sorted(jobs.items())]
    return "\n".join(lines) + "\n"


async def metrics(request: web.Request) -> web.Response:
    state = state_of(request)
    stats = {name: p.stats.snapshot() for name, p in state.pipelines.items()}
    paused = {name for name, p in state.pipelines.items() if p.paused}
    text = render(stats, paused, state.jobs.counts())
    headers = {"Content-Type": CONTENT_TYPE, "X-Content-Type-Options": "nosniff"}
    return web.Response(body=text.encode(), headers=headers)
