"""Export an ultralytics YOLOv8 detection checkpoint (.pt) to ONNX.

Run ONLY by `fetch.py` with the python of a throw-away environment that has torch and ultralytics
(`python export_yolo.py CHECKPOINT OUTPUT`); it never runs inside the sidecar. It imports nothing from
`deid_sidecar`, so it works as a plain script in that environment.

Output: input `images` (1, 3, H, W) RGB in 0..1 with H and W dynamic multiples of 32,
output `output0` (1, 4 + nc, A): cx, cy, w, h in input pixels, then class scores.
"""

from __future__ import annotations

import sys
from typing import Any

#: Traced at this size; H and W stay dynamic in the graph.
TRACE_SIZE = 640
#: Largest difference tolerated between torch and onnxruntime outputs (the export doc saw 6e-4).
TOLERANCE = 2e-2


def load_model(checkpoint: str) -> Any:
    import torch  # type: ignore[import-not-found]

    # The checkpoint pickles ultralytics module classes: weights_only=True cannot load it.
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = (ckpt.get("ema") or ckpt["model"]).float().eval()
    model = model.fuse(verbose=False)
    for module in model.modules():
        if hasattr(module, "export") and hasattr(module, "dynamic"):
            # Detect head: return the raw (1, 4 + nc, A) tensor and rebuild anchors from the input shape.
            module.export = True
            module.dynamic = True
            module.format = "onnx"
    return model


def export(checkpoint: str, output: str) -> None:
    import torch

    model = load_model(checkpoint)
    dummy = torch.zeros(1, 3, TRACE_SIZE, TRACE_SIZE)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (dummy,),
            output,
            opset_version=17,
            input_names=["images"],
            output_names=["output0"],
            dynamic_axes={"images": {2: "height", 3: "width"}, "output0": {2: "anchors"}},
            dynamo=False,  # the legacy tracer handles ultralytics' python control flow
        )
    check(model, output)


def check(model: Any, output: str) -> None:
    """Compare torch and onnxruntime on a non-square random input: a bad export fails the fetch."""
    import numpy as np
    import onnxruntime as ort
    import torch

    x = torch.rand(1, 3, 384, 640)
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(output, providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x.numpy()})[0]
    if got.shape != expected.shape:
        raise SystemExit(f"export check: shape {got.shape} != torch {expected.shape}")
    diff = float(np.abs(got - expected).max())
    if diff > TOLERANCE:
        raise SystemExit(f"export check: onnxruntime differs from torch by {diff:.3g}")
    print(f"export check: output {tuple(got.shape)}, max |onnx - torch| = {diff:.2g}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: export_yolo.py CHECKPOINT.pt OUTPUT.onnx")
    export(sys.argv[1], sys.argv[2])
