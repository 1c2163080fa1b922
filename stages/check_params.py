"""check_params: validate every key of params.yaml, first of all stages.

Each stage validates the whole file when it starts, but DVC runs a stage only when the
params it names change: a typo such as ``dvc exp run -S '+data.clases=[dog]'`` changes no
stage's params, so nothing would run and the typo would pass silently. This stage depends
on the whole file (``params: - params.yaml:`` in dvc.yaml), so any edit reruns it, and a
bad key or value fails the run at once, naming the key.

Its output is the same for every valid file, so the stages after it (download depends on
it) rerun only when their own params change.
"""
from __future__ import annotations

import argparse
import sys

from fewlabel.errors import PipelineError, run_main
from fewlabel.io import write_text
from fewlabel.params import load_params

#: The output's whole content: fixed, so that a valid change leaves it byte-identical.
VALID = "params.yaml: every key is known and every value valid\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--out", required=True, help="marker file written when the params are valid")
    args = parser.parse_args(argv)
    params = load_params(args.params)  # raises PipelineError naming the key on any problem
    check_engine(params.features.engine)
    check_runtime(params.features.runtime, params.features.precision)
    write_text(args.out, VALID)
    print(f"{args.params}: valid", file=sys.stderr)


def check_engine(engine_name: str) -> None:
    """features.engine: ray needs Ray installed here; say so now, not when featurize next reruns
    (``auto`` picks ray only where $RAY_ADDRESS is set, which featurize checks)."""
    from fewlabel.features import engine
    if engine_name == "ray" and not engine.ray_installed():
        raise PipelineError(f"params.yaml: features.engine is ray, but Ray Data, the optional distributed engine, "
                            f"is not installed: install it with `pip install -r {engine.REQUIREMENTS_FILE}`, or "
                            f"set features.engine to single (or auto)")


def check_runtime(runtime: str, precision: str) -> None:
    """features.runtime and features.precision: what featurize would refuse on this machine (a
    runtime not installed, bf16 on a CPU without bfloat16), said now; bf16 with runtime auto
    too, which would silently run Keras float32 instead."""
    from fewlabel.features import runtimes
    if runtime != "auto":
        runtimes.choose_runtime(runtime, precision)  # raises naming the key and the fix
    elif precision == "bf16" and not runtimes.openvino_bf16_supported():
        raise PipelineError("params.yaml: features.precision is bf16, but this machine cannot run it (openvino "
                            "not installed, or a CPU without bfloat16 instructions: AVX512-BF16 or AMX); set "
                            "features.precision to auto (bf16 where the CPU has it, else f32) or f32")


if __name__ == "__main__":
    run_main(main)
