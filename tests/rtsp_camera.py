"""A real RTSP camera stand-in: GStreamer's RTSP server serving an H.264 file at /cam.

Run with Debian's system python3 (it has the GObject bindings):
    /usr/bin/python3 tests/rtsp_camera.py FILE PORT
Prints "READY" once listening. Each client gets the file from its start (not shared).
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    path, port = sys.argv[1], sys.argv[2]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    # An unlimited pool: with the default, TCP clients can deadlock the server.
    server.get_thread_pool().set_max_threads(-1)
    factory = GstRtspServer.RTSPMediaFactory()
    # config-interval=-1 re-inserts SPS/PPS before every keyframe: sliced keyframes decode corrupt otherwise.
    factory.set_launch(
        f"( filesrc location={path} ! qtdemux ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 )"
    )
    factory.set_shared(False)
    server.get_mount_points().add_factory("/cam", factory)
    server.attach(None)
    print("READY", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
