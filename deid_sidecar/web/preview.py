"""Live previews: one JPEG encode per published frame, however many viewers watch, and a viewer cap.

A camera worker hands out each published frame as a lazy `encode()` callable (`latest_jpeg`).
Without sharing, every MJPEG viewer ran its own encode of the same frame: 200 viewers took a camera
from 10 to under 4 fps. `SharedJpeg` runs one encode per callable and lets every viewer await it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

Encode = Callable[[], bytes | None]


@dataclass
class SharedJpeg:
    """The JPEG of a camera's newest published (anonymized) frame, encoded once."""

    _encode: Encode | None = None
    _result: asyncio.Future[bytes | None] | None = None

    async def get(self, encode: Encode) -> bytes | None:
        if encode is not self._encode or self._result is None:
            self._encode = encode
            self._result = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(None, encode))
        # shield: a viewer who leaves must not cancel the encode the others are waiting for.
        return await asyncio.shield(self._result)


@dataclass
class CameraPreview:
    """Preview state of one camera: the shared encode of its output and the count of MJPEG viewers."""

    limit: int
    output: SharedJpeg = field(default_factory=SharedJpeg)
    viewers: int = 0

    def join(self) -> bool:
        """Count one more viewer; False when `limit` viewers already watch."""
        if self.viewers >= self.limit:
            return False
        self.viewers += 1
        return True

    def leave(self) -> None:
        self.viewers -= 1
