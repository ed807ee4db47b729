"""An optional learned face swapper (inswapper-class ONNX model) behind the replacer's face painter.

The model is one the user supplies (`anonymize.replace_swapper`, a file path): nothing is ever
downloaded. Its contract is insightface's inswapper: inputs `target`, an aligned face (1, 3, S, S), RGB
in 0..1, on ArcFace's five-point template scaled to S (S/112, no offset), and `source`, an identity
latent (1, D); output (1, 3, S, S), the target's pose and expression wearing the source's identity, RGB
0..1. The identity here is nobody's: a fixed random unit vector per synthetic identity, so a track keeps
one anonymous face. The swapped face then goes through the same oval blend and decorrelation guard as
the k-Same faces: whatever of the original's edges the network reproduces is toned down like theirs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from deid_sidecar.anonymize.faces import ARCFACE_112, CANONICAL_LANDMARKS, CANONICAL_SIZE, similarity
from deid_sidecar.core.image import Image, as_image
from deid_sidecar.detect.runtime import create_session
from deid_sidecar.errors import ConfigError

FloatArray = npt.NDArray[np.float32]


class LearnedSwapper:
    """Runs a user's swapper model; `paint` gives the swapped face in the replacer's canonical frame."""

    def __init__(self, session: Any, identities: int, seed: int = 0) -> None:
        inputs = {i.name: list(i.shape) for i in session.get_inputs()}
        outputs = session.get_outputs()
        target, source = inputs.get("target"), inputs.get("source")
        if target is None or source is None or len(outputs) != 1:
            raise ValueError(
                f"expects inputs 'target' and 'source' and one output, has inputs {sorted(inputs)} "
                f"and {len(outputs)} output(s)"
            )
        size = target[2] if len(target) == 4 else None
        if not isinstance(size, int) or target[1] != 3 or target[3] != size:
            raise ValueError(f"input 'target' must be (1, 3, S, S) with a fixed S, is {target}")
        if len(source) != 2 or not isinstance(source[1], int):
            raise ValueError(f"input 'source' must be (1, D) with a fixed D, is {source}")
        self.session = session
        self.size = size
        self.template = ARCFACE_112 * (size / 112.0)
        rng = np.random.default_rng(seed)
        latents = rng.standard_normal((identities, source[1])).astype(np.float32)
        self.latents = latents / np.linalg.norm(latents, axis=1, keepdims=True)

    @classmethod
    def load(cls, path: Path, providers: list[str], identities: int) -> LearnedSwapper:
        if not path.is_file():
            raise ConfigError(f"anonymize.replace_swapper: file {path} does not exist")
        try:
            return cls(create_session(path, providers, threads=1), identities)
        except ValueError as exc:
            raise ConfigError(f"anonymize.replace_swapper: {path.name} {exc}") from None

    def paint(self, image: Image, landmarks: FloatArray, identity: int) -> Image:
        """The face at `landmarks` swapped to anonymous `identity`, warped into the canonical frame."""
        to_frame = similarity(self.template, landmarks)
        crop = cv2.warpAffine(
            image,
            to_frame,
            (self.size, self.size),
            flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        rgb = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        latent = self.latents[identity % len(self.latents)]
        feeds = {"target": rgb.transpose(2, 0, 1)[None], "source": latent[None]}
        swapped = np.asarray(self.session.run(None, feeds)[0], np.float32)[0].transpose(1, 2, 0)
        bgr = cv2.cvtColor(np.clip(swapped * 255.0 + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
        to_canonical = similarity(self.template, CANONICAL_LANDMARKS)
        size = (CANONICAL_SIZE, CANONICAL_SIZE)
        return as_image(
            cv2.warpAffine(bgr, to_canonical, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        )
