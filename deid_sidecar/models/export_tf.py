"""Convert a TF Object Detection API frozen graph (.pb) to ONNX with tf2onnx, and check the result.

Run ONLY by `convert.py` with the python of a throw-away environment that has tensorflow-cpu, tf2onnx
and onnxruntime (`python export_tf.py GRAPH.pb OUTPUT.onnx CHECK_INPUT.npy`); it never runs inside the
sidecar. It imports nothing from `deid_sidecar`, so it works as a plain script in that environment.

Output: input `image_tensor:0` (1, H, W, 3) uint8 RGB (the graph resizes to its own 300x300 inside);
outputs in this order: `detection_boxes:0` (1, N, 4) ymin, xmin, ymax, xmax normalized to the input,
`detection_scores:0` (1, N), `detection_classes:0` (1, N) 1-based class ids, `num_detections:0` (1,).
Non-maximum suppression stays inside the graph.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

INPUT = "image_tensor:0"
#: The order the adapter reads them in.
OUTPUTS = ("detection_boxes:0", "detection_scores:0", "detection_classes:0", "num_detections:0")
#: NonMaxSuppression and the graph's while loops convert cleanly from here on; onnxruntime runs it.
OPSET = 17
#: Largest difference tolerated between TF and onnxruntime on the check frame (boxes and scores; the
#: same kernels in float32 give about 1e-5, a wrong conversion differs by far more).
TOLERANCE = 1e-3
#: Only detections TF scores at least this high are compared: below it, near-equal scores may swap
#: places between the two runtimes without anything being wrong.
COMPARE_FROM = 0.1
#: The check frame must give at least one confident detection, or comparing would prove nothing.
MIN_CHECK_SCORE = 0.5


def load_graph_def(path: str) -> Any:
    import tensorflow as tf  # type: ignore[import-untyped]

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(Path(path).read_bytes())
    return graph_def


def convert(graph_path: str, output: str) -> Any:
    import tf2onnx  # type: ignore[import-not-found]

    graph_def = load_graph_def(graph_path)
    tf2onnx.convert.from_graph_def(
        graph_def,
        input_names=[INPUT],
        output_names=list(OUTPUTS),
        opset=OPSET,
        output_path=output,
    )
    return graph_def


def run_tf(graph_def: Any, image: Any) -> list[Any]:
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        return list(session.run(list(OUTPUTS), feed_dict={INPUT: image}))


def check(graph_def: Any, output: str, check_input: str) -> None:
    """Compare TF and onnxruntime on a real photo with people: a bad conversion fails the fetch."""
    import numpy as np
    import onnxruntime as ort

    image = np.load(check_input)
    boxes, scores, classes, count = run_tf(graph_def, image)
    session = ort.InferenceSession(output, providers=["CPUExecutionProvider"])
    got_boxes, got_scores, got_classes, got_count = session.run(None, {INPUT: image})
    if got_boxes.shape != boxes.shape or got_scores.shape != scores.shape:
        raise SystemExit(f"export check: shapes {got_boxes.shape} {got_scores.shape} != TF's")
    if float(scores[0, 0]) < MIN_CHECK_SCORE:
        raise SystemExit(f"export check: TF's best score on the check frame is only {scores[0, 0]:.2f}")
    n = int((scores[0] >= COMPARE_FROM).sum())
    diff = max(
        float(np.abs(got_boxes[0, :n] - boxes[0, :n]).max()),
        float(np.abs(got_scores[0, :n] - scores[0, :n]).max()),
    )
    if diff > TOLERANCE or not np.array_equal(got_classes[0, :n], classes[0, :n]):
        raise SystemExit(f"export check: onnxruntime differs from TF by {diff:.3g} on {n} detections")
    if int(got_count[0]) != int(count[0]):
        raise SystemExit(f"export check: {int(got_count[0])} detections, TF has {int(count[0])}")
    print(f"export check: {n} detections above {COMPARE_FROM}, max |onnx - tf| = {diff:.2g}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit("usage: export_tf.py GRAPH.pb OUTPUT.onnx CHECK_INPUT.npy")
    check(convert(sys.argv[1], sys.argv[2]), sys.argv[2], sys.argv[3])
