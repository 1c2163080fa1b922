"""Compare CPU inference runtimes on one extractor: Keras float32, OpenVINO f32 / bf16 / INT8, ONNX Runtime.

    python bench/runtimes.py                                     # devdata's Lite0 at 224 on real photos
    python bench/runtimes.py --backbone EfficientNetB6 --weights null --image-size 528 --batch-size 4
    python bench/runtimes.py --variants keras openvino-bf16 openvino-int8 --json

Each variant runs the same fixed batch of real photos (decoded and resized once, beforehand)
in a loop: images/s of the forward pass alone, best of ``--rounds`` rounds that alternate
the variants (shared machines are noisy), and the smallest cosine similarity between its
features and Keras float32's on ``--check-images`` other photos. The variants:

- ``keras``: ``tf.function`` of the Keras model (the reference);
- ``openvino-f32``, ``openvino-bf16``: the product's converted model (fewlabel/features/runtimes.py)
  compiled with that ``INFERENCE_PRECISION_HINT``;
- ``openvino-int8``: the product's NNCF post-training quantization of that model
  (fewlabel/features/int8.py), calibrated on ``--calibration-images`` photos (not the checked
  ones), run with bf16 where not INT8 (f32 with ``--no-bf16``);

AVX2-only CPUs are emulated with ``ONEDNN_MAX_CPU_ISA=AVX2`` (docs/speed.md says how far
that holds: TensorFlow's oneDNN and OpenVINO's convolutions drop to AVX2 kernels; OpenVINO's
own element-wise kernels keep AVX-512, and bf16 cannot be emulated).
- ``onnxruntime``: the Keras graph frozen and converted by tf2onnx (needs ``onnxruntime``
  and ``tf2onnx``), run by ONNX Runtime's CPU provider.

Photos come from ``--images`` (default: devdata's VOC2007 JPEGImages, when present), so the
quantization sees real statistics; the product's quality with a runtime is measured by
bench/quality.py (``features.runtime``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

from bench.featurize import min_cosine  # noqa: E402

DEVDATA = Path(os.environ.get("FEWLABEL_DEVDATA") or REPO_ROOT.parent / "shared" / "devdata")  # as bench/quality.py
DEFAULT_IMAGES = DEVDATA / "VOCdevkit" / "VOC2007" / "JPEGImages"
LITE0 = DEVDATA / "weights" / "efficientnet_lite0_imagenet.keras"
VARIANTS = ("keras", "openvino-f32", "openvino-bf16", "openvino-int8", "onnxruntime")
PACKAGES = {"openvino-f32": "openvino", "openvino-bf16": "openvino", "openvino-int8": "openvino nncf",
            "onnxruntime": "onnxruntime tf2onnx"}


def load_pixels(paths: list[str], size: int) -> np.ndarray:
    """The photos as the stage feeds them: decoded, resized to (size, size), float32 0..255."""
    from fewlabel.features.views import load_image
    return np.stack([load_image(path, size).numpy() for path in paths])


def openvino_runner(model_file: Path, precision: str, batch_size: int):
    from fewlabel.features.runtimes import OpenVinoExtractor
    return OpenVinoExtractor(model_file, precision, batch_size)


def kernel_kinds(runner) -> dict:
    """How many nodes of an OpenVINO runner's execution graph run each kernel kind
    (``brgconv_avx2_dw_f32``, ``jit_avx512_f32``, ...): which ISA it really uses."""
    import collections
    kinds = collections.Counter(op.get_rt_info()["primitiveType"].astype(str)
                                for op in runner.compiled.get_runtime_model().get_ops()
                                if "primitiveType" in op.get_rt_info())
    return dict(kinds.most_common())


def int8_runner(model_file: Path, calibration_paths: list[str], batch_size: int, float_precision: str):
    """The product's INT8 model (fewlabel.features.int8: NNCF post-training quantization of
    the OpenVINO model, calibrated on ``calibration_paths``), its float layers at ``float_precision``."""
    from fewlabel.features.int8 import quantize
    target = model_file.with_name("int8.xml")
    quantize(model_file, calibration_paths, target)
    return openvino_runner(target, float_precision, batch_size)


def onnxruntime_runner(keras_model, size: int):
    """The Keras graph with its variables frozen, converted by tf2onnx, run by ONNX Runtime.
    (Keras's own ``export(format='onnx')`` leaves the Normalization layer's constants as
    extra inputs; freezing first avoids that.)"""
    import onnxruntime
    import tensorflow as tf
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    forward = tf.function(lambda x: keras_model(x, training=False))
    frozen = convert_variables_to_constants_v2(
        forward.get_concrete_function(tf.TensorSpec([None, size, size, 3], tf.float32)))
    proto, _ = tf2onnx.convert.from_graph_def(frozen.graph.as_graph_def(), opset=17,
                                              input_names=[t.name for t in frozen.inputs],
                                              output_names=[t.name for t in frozen.outputs])
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {name: batch})[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default=str(LITE0) if LITE0.is_file() else "EfficientNetB0")
    parser.add_argument("--weights", default="imagenet", help="imagenet (a .keras file keeps its own), null or a file")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=4, help="timed batches per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", default=str(DEFAULT_IMAGES), help="a folder of photos (*.jpg)")
    parser.add_argument("--calibration-images", type=int, default=300)
    parser.add_argument("--check-images", type=int, default=64)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--no-bf16", action="store_true",
                        help="INT8's float layers at f32, as on a CPU without bfloat16 (with ONEDNN_MAX_CPU_ISA=AVX2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args()
    load_before = os.getloadavg()
    weights = None if args.weights in ("null", "none") else args.weights
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if args.json else print

    import tensorflow as tf
    from fewlabel.features.keras_models import build_extractor
    from fewlabel.features.runtimes import _convert_to_openvino, _module as runtimes_module

    photos = sorted(str(p) for p in Path(args.images).glob("*.jpg"))
    needed = args.batch_size + args.check_images + args.calibration_images
    if len(photos) < needed:
        raise SystemExit(f"{args.images}: {len(photos)} photos, {needed} needed (--images)")
    photos = [photos[i] for i in np.random.default_rng(0).permutation(len(photos))[:needed]]
    size = args.image_size
    timed = load_pixels(photos[:args.batch_size], size)
    check = load_pixels(photos[args.batch_size:args.batch_size + args.check_images], size)
    calibration_paths = photos[args.batch_size + args.check_images:]

    keras_model, size = build_extractor(args.backbone, weights, size)
    forward = tf.function(lambda x: keras_model(x, training=False),
                          input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
    runners = {"keras": lambda batch: forward(batch).numpy()}
    work = Path(tempfile.mkdtemp(prefix="bench-runtimes-"))
    model_file = work / "model.xml"
    if any(v.startswith("openvino") for v in args.variants) and runtimes_module("openvino"):
        _convert_to_openvino(keras_model, model_file)
    for variant in args.variants:
        try:
            if variant in ("openvino-f32", "openvino-bf16"):
                runners[variant] = openvino_runner(model_file, variant.split("-")[1], args.batch_size)
            elif variant == "openvino-int8":
                runners[variant] = int8_runner(model_file, calibration_paths, args.batch_size,
                                               "f32" if args.no_bf16 else "bf16")
            elif variant == "onnxruntime":
                runners[variant] = onnxruntime_runner(keras_model, size)
        except ImportError as error:
            say(f"{variant}: skipped ({error}; pip install {PACKAGES[variant]})")

    def run_all(runner, pixels):
        return np.concatenate([runner(np.ascontiguousarray(pixels[i:i + args.batch_size]))
                               for i in range(0, len(pixels), args.batch_size)])

    reference = run_all(runners["keras"], check)
    results = {name: {"images_per_second": 0.0, "min_cosine_to_keras_fp32": min_cosine(run_all(runner, check), reference)}
               for name, runner in runners.items()}
    for name, runner in runners.items():
        runner(timed)  # warm-up
    for _ in range(args.rounds):
        for name, runner in runners.items():
            began = time.perf_counter()
            for _ in range(args.batches):
                runner(timed)
            speed = args.batches * args.batch_size / (time.perf_counter() - began)
            results[name]["images_per_second"] = max(results[name]["images_per_second"], speed)
    keras_speed = results["keras"]["images_per_second"]
    for name, result in results.items():
        result["ratio_to_keras"] = result["images_per_second"] / keras_speed
        say(f"{name:15s} {result['images_per_second']:7.2f} img/s  {result['ratio_to_keras']:.2f}x keras  "
            f"min cosine to keras fp32 {result['min_cosine_to_keras_fp32']:.6f}")
    # a shared machine: the load average (1, 5, 15 min) before and after, and the oneDNN ISA cap
    context = {"load_average": [list(load_before), list(os.getloadavg())],
               "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
               "openvino_kernels": {name: kernel_kinds(runner) for name, runner in runners.items()
                                    if name.startswith("openvino")}}
    say(f"load average before {context['load_average'][0]}, after {context['load_average'][1]}; "
        f"ONEDNN_MAX_CPU_ISA={context['onednn_max_cpu_isa']}")
    if args.json:
        print(json.dumps({"backbone": Path(args.backbone).stem, "image_size": size, "batch_size": args.batch_size,
                          **context, "variants": results}))


if __name__ == "__main__":
    main()
