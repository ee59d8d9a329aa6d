"""Int8 inference spike (issue #27): a trained network quantized with ONNX Runtime static quantization (QDQ, per
channel), and with OpenVINO + NNCF (the openvino extra) where installed, against fp32 ONNX Runtime and PyTorch, in
one run.

    MEDSEG_DATA_ROOT=../shared/data python benchmarks/int8.py RUN [--out DIR] [--repeats 7] [--calibration 32] \
        [--no-amx]

RUN: a trained run folder (2D or 3D). The fp32 ONNX file is medseg's own export (``export_model``: parity-checked
against PyTorch); every int8 file is quantized from it, calibrated (MinMax) on a fixed, seeded set of TRAINING cases
preprocessed as the predictor preprocesses them (2D: whole images at the working size; 3D: windows of the working
shape from the preprocessed volumes). medseg's UNets export as Conv (BatchNorm folded in) -> PReLU, residual Add,
skip Concat and ConvTranspose; ONNX Runtime's quantizer never quantizes PReLU. ONNX Runtime variants: activations
uint8 or int8 (weights int8, per channel), every quantizable op (Conv, ConvTranspose, Add, Concat) or
Conv/ConvTranspose only, with and without ``quant_pre_process`` first. The calibration ranges are cached in DIR,
so a second run (``--no-amx``) quantizes the same models.

Prints, per variant: ms per image (2D: one forward pass at the working size, over the first test images) or per
volume (3D: the predictor's sliding window over the preprocessed test volume), the median over interleaved repeats
after a warm-up round; the ratio against ONNX Runtime fp32 and PyTorch fp32 timed in the same run; Dice against the
ground truth over the recorded test split (raw and post-processed, the pipeline's TTA); the lowest and mean
per-case Dice between the variant's raw masks and ONNX Runtime fp32's over the validation and test cases.

``--no-amx``: a seccomp filter makes the kernel refuse AMX to this process (``arch_prctl(ARCH_REQ_XCOMP_PERM)``
fails), so ONNX Runtime's MLAS, PyTorch's oneDNN and OpenVINO run their AVX512-VNNI kernels. VNNI itself cannot be
switched off this way (MLAS reads it from CPUID).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

CONV_OPS = ["Conv", "ConvTranspose"]
FLAGS = ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
ORT_FP32 = "ONNX Runtime fp32"


def deny_amx() -> None:
    """Install a seccomp filter: ``arch_prctl(ARCH_REQ_XCOMP_PERM, ...)`` fails with EPERM, everything else runs.
    Linux hands AMX tiles only to a process that asked this way, so every library then falls back without AMX."""
    import ctypes

    arch_x86_64, nr_arch_prctl, req_xcomp_perm = 0xC000003E, 158, 0x1023
    allow, deny = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    load, jump_equal, ret = 0x20, 0x15, 0x06  # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K
    program = [  # seccomp_data: nr at 0, arch at 4, args[0] (low word) at 16
        (load, 0, 0, 4),
        (jump_equal, 1, 0, arch_x86_64),
        (ret, 0, 0, allow),
        (load, 0, 0, 0),
        (jump_equal, 0, 3, nr_arch_prctl),
        (load, 0, 0, 16),
        (jump_equal, 0, 1, req_xcomp_perm),
        (ret, 0, 0, deny),
        (ret, 0, 0, allow),
    ]

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    filters = (SockFilter * len(program))(*(SockFilter(*row) for row in program))
    libc = ctypes.CDLL(None, use_errno=True)
    ulong = ctypes.c_ulong
    if libc.prctl(38, ulong(1), ulong(0), ulong(0), ulong(0)) != 0:  # PR_SET_NO_NEW_PRIVS
        sys.exit(f"--no-amx: prctl(PR_SET_NO_NEW_PRIVS) failed (errno {ctypes.get_errno()})")
    fprog = SockFprog(len(program), filters)
    if libc.prctl(22, ulong(2), ctypes.byref(fprog), ulong(0), ulong(0)) != 0:  # PR_SET_SECCOMP, FILTER
        sys.exit(f"--no-amx: the seccomp filter was refused (errno {ctypes.get_errno()})")
    if libc.syscall(ctypes.c_long(nr_arch_prctl), ulong(req_xcomp_perm), ulong(18)) == 0:  # XFEATURE_XTILEDATA
        sys.exit("--no-amx: AMX is still granted to this process")


def cpu_description() -> str:
    """The CPU's model name and the instruction-set flags int8 and bf16 kernels use."""
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown CPU")
    flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    return model + ": " + ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in FLAGS)


def preprocessed(predictor, image):
    """One case as the predictor's network sees it: (1, C, *spatial) after the validation preprocessing."""
    return predictor.preprocess({"image": image})["image"].as_tensor()[None]


def quantized_models(fp32: Path, calibration: list, folder: Path) -> dict[str, Path]:
    """The ONNX Runtime int8 variants of ``fp32`` (QDQ, per-channel int8 weights, MinMax ranges cached in
    ``folder``)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    from medseg.infer.backends import INPUT_NAME

    class Calibration(CalibrationDataReader):
        """The calibration inputs, one range at a time (``CalibStridedMinMax``: ranges merged, memory bounded)."""

        def __init__(self) -> None:
            self.position, self.end = 0, len(calibration)

        def __len__(self) -> int:
            return len(calibration)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.position, self.end = start_index, end_index

        def get_next(self) -> dict | None:
            if self.position >= self.end:
                return None
            self.position += 1
            return {INPUT_NAME: calibration[self.position - 1]}

    sources = {"": fp32}
    try:
        # symbolic shape inference stops at the dynamic spatial axes; ONNX's own shape inference and the optimizer run
        quant_pre_process(str(fp32), str(folder / "model.pre.onnx"), skip_symbolic_shape=True)
        sources["pre-processed + "] = folder / "model.pre.onnx"
    except Exception as exc:  # symbolic shape inference or the optimizer refusing the graph
        print(f"quant_pre_process failed: {str(exc)[:200]}")
    u8, s8 = QuantType.QUInt8, QuantType.QInt8
    specs = [(prefix, ops, act) for prefix in sources for ops, act in ((None, u8), (CONV_OPS, u8), (None, s8))]
    models = {}
    for index, (prefix, ops, activation) in enumerate(specs):
        scope = "Conv/ConvTranspose only" if ops else "all ops"
        name = f"int8 {prefix}QDQ {'U8S8' if activation == u8 else 'S8S8'}, {scope}"
        target = folder / f"int8-{index}.onnx"
        started = time.perf_counter()
        quantize_static(
            str(sources[prefix]),
            str(target),
            Calibration(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=ops,
            per_channel=True,
            activation_type=activation,
            weight_type=QuantType.QInt8,
            # one input per range: the 3D intermediate tensors of all windows at once would not fit in memory
            # (CalibMaxIntermediateOutputs drops the collected outputs without merging them in onnxruntime 1.32)
            extra_options={"CalibStridedMinMax": 1},
            calibration_cache_path=folder / f"ranges{'-pre' if prefix else ''}.json",  # all-ops ranges: a superset
        )
        print(f"{name}: written in {time.perf_counter() - started:.1f} s, {target.stat().st_size / 1e6:.2f} MB")
        models[name] = target
    return models


def openvino_networks(fp32: Path, calibration: list, checkpoint: Path, folder: Path) -> dict:
    """OpenVINO fp32 and NNCF int8 (default preset) of ``fp32``, and the int8 file ``medseg export --format openvino
    --quantize int8`` writes (with accuracy control; reused from ``folder`` when there, so a timing run does not
    quantize again), each run by medseg's OpenVINO backend (f32 inference precision: on an AMX CPU OpenVINO's
    default is bf16)."""
    import openvino as ov

    from medseg.infer.backends import OpenVinoNetwork
    from medseg.infer.export import export_model
    from medseg.infer.openvino_export import quantize_int8

    networks = {f"OpenVINO {ov.__version__.split('-')[0]} fp32": OpenVinoNetwork(fp32)}
    started = time.perf_counter()
    static = networks[next(iter(networks))].model.clone()
    static.reshape([-1, *calibration[0].shape[1:]])  # as medseg's export: dynamic axes broke NNCF's 3D int8
    default = folder / "model.nncf-default.xml"
    ov.save_model(quantize_int8(static, calibration), default, compress_to_fp16=False)
    print(f"NNCF int8: quantized in {time.perf_counter() - started:.1f} s")
    networks["OpenVINO int8 (NNCF)"] = OpenVinoNetwork(default)
    shipped = folder / "model.int8.xml"
    if not shipped.is_file():
        started = time.perf_counter()
        export_model(checkpoint, "openvino", shipped, quantize="int8")
        print(f"medseg export --quantize int8: {time.perf_counter() - started:.1f} s")
    networks["OpenVINO int8 (medseg export)"] = OpenVinoNetwork(shipped)
    return networks


def timed(predictors: dict, batches: list, repeats: int) -> dict[str, tuple[float, float]]:
    """Median and fastest seconds per case of each predictor's network (2D: one pass; 3D: the sliding window, no
    TTA), rounds interleaved, the first one a warm-up. The fastest round is the one least disturbed by other work."""
    import torch

    from medseg.infer.inferers import mirrored_probabilities

    seconds: dict[str, list[float]] = {name: [] for name in predictors}
    with torch.inference_mode():
        for _ in range(repeats + 1):
            for name, predictor in predictors.items():
                started = time.perf_counter()
                for batch in batches:
                    mirrored_probabilities(predictor.runtime, batch, False, predictor.inferer, predictor.multilabel)
                seconds[name].append((time.perf_counter() - started) / len(batches))
    return {name: (statistics.median(values[1:]), min(values[1:])) for name, values in seconds.items()}


def accuracy(predictor, test: list[dict], val: list[dict], settings, folder: Path) -> tuple[dict, dict]:
    """The test split's evaluation summary (raw and post-processed) and the raw masks of the test and validation
    cases."""
    from medseg.evaluation.evaluate import evaluate

    masks = {}
    folder.mkdir(parents=True, exist_ok=True)
    summary = evaluate(predictor, test, settings, folder, on_case=lambda r, s: masks.__setitem__(r["id"], s.raw))
    for record in val:
        masks[record["id"]] = predictor.predict(record["image"]).raw
    return summary, masks


def run(args: argparse.Namespace) -> None:
    import warnings

    import numpy as np
    import onnxruntime
    import torch

    from medseg.config.schema import PipelineConfig
    from medseg.config.settings import data_settings, evaluation_settings
    from medseg.data.dataset import prepare_data
    from medseg.evaluation.metrics import dice_score
    from medseg.infer.backends import Backend, OnnxNetwork
    from medseg.infer.export import export_model
    from medseg.infer.openvino_export import calibration_inputs
    from medseg.infer.predictor import Predictor
    from medseg.models.checkpoint import load_checkpoint, resolve_checkpoint

    warnings.filterwarnings("ignore", category=FutureWarning)  # MONAI's surface-distance deprecation, per case
    folder = args.out or Path("/tmp") / f"int8-{args.run.name}"
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = resolve_checkpoint(args.run)
    cfg = PipelineConfig.model_validate(load_checkpoint(checkpoint)["config"])
    data = prepare_data(data_settings(cfg))
    train, val, test = data.subset("train"), data.subset("val"), data.subset("test")
    reference = Predictor.from_model(checkpoint, backend="torch", device="cpu")
    settings = reference.settings
    unit = "image" if settings.spatial_dims == 2 else "volume"
    print(f"CPU: {cpu_description()}; AMX {'refused (--no-amx)' if args.no_amx else 'available'}")
    print(
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; "
        f"model {checkpoint} ({settings.spatial_dims}D, working shape {settings.working_shape}); "
        f"splits {len(train)}/{len(val)}/{len(test)} ({data.splits_path}); TTA {reference.tta}"
    )

    fp32 = export_model(checkpoint, "onnx", folder / "model.onnx").path
    calibration = calibration_inputs(reference, train, args.calibration, args.seed)
    print(f"calibration: {len(calibration)} inputs of shape {calibration[0].shape} from {len(train)} training cases")
    networks = {ORT_FP32: OnnxNetwork(fp32)}
    quantized = quantized_models(fp32, calibration, folder)
    networks |= {name: OnnxNetwork(path) for name, path in quantized.items() if any(k in name for k in args.only)}
    if any(k in "OpenVINO" for k in args.only):
        try:
            networks |= openvino_networks(fp32, calibration, checkpoint, folder)
        except Exception as exc:  # not installed, or its conversion failing: reported, the rest still runs
            print(f"OpenVINO + NNCF left out: {type(exc).__name__}: {str(exc)[:300]}")
    predictors = {"PyTorch fp32": reference}
    predictors |= {
        name: Predictor(net, settings, reference.steps, reference.tta, backend=Backend())
        for name, net in networks.items()
    }

    batches = [preprocessed(reference, record["image"]) for record in test[: args.timing_cases]]
    load = os.getloadavg()[0]
    seconds = timed(predictors, batches, args.repeats)
    print(f"load average (1 min) before timing {load:.2f}, after {os.getloadavg()[0]:.2f} (this run alone: ~2)")
    results, masks = {}, {}
    for name, predictor in predictors.items():
        results[name] = {"seconds": seconds[name][0], "fastest": seconds[name][1], "raw": float("nan")}
        results[name]["postprocessed"] = float("nan")
        masks[name] = {}
        if not args.timing_only:
            place = folder / "evaluation" / name.replace("/", "+")
            summary, masks[name] = accuracy(predictor, test, val, evaluation_settings(cfg), place)
            results[name] |= {
                "raw": summary["raw"]["dice"]["mean"],
                "postprocessed": summary["postprocessed"]["dice"]["mean"],
            }

    base = results[ORT_FP32]
    print(
        f"\n{args.repeats} interleaved repeats after a warm-up, ms per {unit}: median / fastest; "
        f"{len(batches)} test {unit}(s) timed; Dice over {len(test)} test cases, agreement over "
        f"{len(test) + len(val)} validation + test cases"
    )
    print(
        f"| variant | ms per {unit} | vs ORT fp32 | vs PyTorch fp32 | test Dice raw | post-processed | "
        "raw Dice - ORT fp32 | mask Dice vs ORT fp32: min / mean |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, row in results.items():
        agreement = [dice_score(masks[name][case], masks[ORT_FP32][case]) for case in masks[ORT_FP32]] or [np.nan]
        row["agreement_min"], row["agreement_mean"] = float(min(agreement)), float(np.mean(agreement))
        print(
            f"| {name} | {row['seconds'] * 1000:.1f} / {row['fastest'] * 1000:.1f} | "
            f"{base['seconds'] / row['seconds']:.2f}x / {base['fastest'] / row['fastest']:.2f}x | "
            f"{results['PyTorch fp32']['seconds'] / row['seconds']:.2f}x | {row['raw']:.4f} | "
            f"{row['postprocessed']:.4f} | {row['raw'] - base['raw']:+.4f} | "
            f"{row['agreement_min']:.4f} / {row['agreement_mean']:.4f} |"
        )
    report = folder / f"int8_results{'_noamx' if args.no_amx else ''}{'_timing' if args.timing_only else ''}.json"
    report.write_text(json.dumps({"cpu": cpu_description(), "no_amx": args.no_amx, "results": results}, indent=1))
    print(f"\nwritten: {report}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a trained run folder (or its checkpoint)")
    parser.add_argument("--out", type=Path, default=None, help="where the ONNX files and results go")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calibration", type=int, default=32, help="calibration images (2D) or windows (3D)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration choice")
    parser.add_argument("--timing-cases", type=int, default=8, help="test images (2D) or volumes (3D) timed")
    parser.add_argument("--no-amx", action="store_true", help="refuse AMX to this process (seccomp)")
    parser.add_argument("--timing-only", action="store_true", help="no Dice (e.g. the same models again, --no-amx)")
    parser.add_argument(
        "--only", nargs="+", default=[""], help="time only the variants whose names contain one of these (and fp32)"
    )
    args = parser.parse_args()
    if args.no_amx:
        deny_amx()  # before torch, ONNX Runtime or OpenVINO is imported
    run(args)


if __name__ == "__main__":
    main()
