"""``kd bench analysis|analyze|speed|train``: benchmarks, results to JSON and a markdown table (:mod:`kd.bench`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kd.cli.common import DEVICE_HELP, device, refuse_flat_keys


def register(sub: argparse._SubParsersAction) -> None:
    """Add the bench command group to the ``kd`` parser's subcommands."""
    bench = sub.add_parser("bench", help="benchmarks (results to JSON + a markdown table)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    ba = bench_sub.add_parser("analysis", help="streamed all-pairs similarity vs a per-pair NumPy baseline")
    ba.add_argument("--layers", type=int, default=13)
    ba.add_argument("--dim", type=int, default=256)
    ba.add_argument("--frames", type=int, default=50_000)
    ba.add_argument("--device", default="cpu")
    ba.add_argument("--gpu-scale", action="store_true", help="also 25 x 768 x 1M frames on CUDA (and 1/4 of them)")
    ba.add_argument("--no-similarity", action="store_true", help="skip the CPU comparison with the NumPy baseline")
    ba.add_argument("--scale-layers", type=int, default=25)
    ba.add_argument("--scale-dim", type=int, default=768)
    ba.add_argument("--scale-frames", type=int, default=1_000_000)
    ba.add_argument("--scale-device", default="cuda")
    ba.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest on a shared 2-core VM)")
    ba.add_argument("--out", default="docs/bench/analysis.json")
    ba.add_argument("--table", default="docs/bench/analysis.md")
    ba.set_defaults(run=_bench_analysis)

    bz = bench_sub.add_parser("analyze", help="kd analyze end to end: seconds of audio analysed per second, per phase")
    bz.add_argument("model_dir", help="a model folder, or 'random-base' (a randomly initialised wav2vec 2.0 base)")
    bz.add_argument("--data", required=True, help="data dir (alignments.jsonl enables the phone/word analyses)")
    bz.add_argument("--device", default=None, help=DEVICE_HELP)
    bz.add_argument("--max-utterances", type=int, default=200)
    bz.add_argument("--work", default="exp/bench_analyze", help="folder for the report (and the random model)")
    bz.add_argument("--out", default="docs/bench/analyze.json")
    bz.add_argument("--table", default="docs/bench/analyze.md")
    bz.set_defaults(run=_bench_analyze)

    bs = bench_sub.add_parser("speed", help="parameters, latency and real-time factor of model folders")
    bs.add_argument("model_dirs", nargs="+", help="Hugging Face checkpoint folders or kd students")
    bs.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    bs.add_argument("--seconds", type=float, default=8.0, help="audio per utterance")
    bs.add_argument("--device", default=None, help=DEVICE_HELP)
    bs.add_argument("--warmup", type=int, default=3)
    bs.add_argument("--repeats", type=int, default=10)
    bs.add_argument("--attn-implementation", choices=["sdpa", "eager"], default=None,
                    help="attention implementation for every model (default: as saved); for attention-reuse "
                         "students, sdpa = fused reuse, eager = reuse of the leader's probabilities")
    bs.add_argument("--out", default="docs/bench/speed.json")
    bs.add_argument("--table", default="docs/bench/speed.md")
    bs.set_defaults(run=_bench_speed)

    bt = bench_sub.add_parser("train", help="training throughput and MFU vs an ESPnet-default-style loop; "
                                            "cached vs online teacher outputs")
    bt.add_argument("--data", required=True, help="training data dir")
    bt.add_argument("--teacher", default=None, help="a teacher run dir: also measure distillation, online and cached")
    bt.add_argument("--preset", default="small", help="the student's AsrConfig preset")
    bt.add_argument("--set", nargs="*", default=[], metavar="KEY.PATH=VALUE",
                    help="TrainConfig fields over the benchmark's config: the student's AsrConfig fields over the "
                         "preset as model.overrides.FIELD (model.overrides.d_model=256, ...), optim.lr=3e-3, ...")
    bt.add_argument("--window", type=int, default=10, help="steps per timed window (and of the warm-up)")
    bt.add_argument("--windows", type=int, default=3, help="timed windows")
    bt.add_argument("--max-seconds", type=float, default=60.0, help="padded audio seconds per micro-batch")
    bt.add_argument("--max-utterances", type=int, default=64)
    bt.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default=None,
                    help="of the kd loop (default: bf16 on CUDA, no on CPU); the baseline is always fp32")
    bt.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: datasheet)")
    bt.add_argument("--seed", type=int, default=0)
    bt.add_argument("--out", default="exp/bench_train", help="folder for train.json and the runs")
    bt.add_argument("--table", default="docs/bench/train.md")
    bt.set_defaults(run=_bench_train)


def _bench_analysis(args: argparse.Namespace) -> int:
    from kd.bench.analyze import analysis_table, bench_analysis

    result = bench_analysis(args.out, args.table, layers=args.layers, dim=args.dim, frames=args.frames,
                            device=args.device, gpu_scale=args.gpu_scale, threads=args.threads,
                            similarity=not args.no_similarity, scale_layers=args.scale_layers,
                            scale_dim=args.scale_dim, scale_frames=args.scale_frames, scale_device=args.scale_device)
    print(analysis_table(result))
    return 0


def _bench_analyze(args: argparse.Namespace) -> int:
    from kd.bench.analyze import analyze_table, bench_analyze, random_base_checkpoint

    model = args.model_dir
    if model == "random-base":
        model = random_base_checkpoint(Path(args.work) / "random-base")
    result = bench_analyze(model, args.data, Path(args.work) / "report", device=device(args.device),
                           max_utterances=args.max_utterances, out_json=args.out, out_md=args.table,
                           command="kd " + " ".join(sys.argv[1:]))
    print(analyze_table(result))
    return 0


def _bench_speed(args: argparse.Namespace) -> int:
    from kd.bench.speed import bench_speed, speed_table, write_speed_results

    results = bench_speed(args.model_dirs, batch_sizes=args.batch_sizes, seconds=args.seconds, device=args.device,
                          warmup=args.warmup, repeats=args.repeats, attn_implementation=args.attn_implementation)
    write_speed_results(results, args.out, args.table)
    print(speed_table(results))
    return 0


def _bench_train(args: argparse.Namespace) -> int:
    import dataclasses

    from kd.bench.train import bench_train, train_table
    from kd.models.asr import AsrConfig
    from kd.training.config import TrainConfig

    # the flat AsrConfig fields this command took before it read KEY.PATH=VALUE
    top = {f.name for f in dataclasses.fields(TrainConfig)}
    refuse_flat_keys(args.set, (f.name for f in dataclasses.fields(AsrConfig) if f.name not in top), "model.overrides",
                     "a field of the student's AsrConfig")
    result = bench_train(args.data, args.out, teacher=args.teacher, preset=args.preset, settings=args.set,
                         window=args.window, windows=args.windows,
                         max_seconds=args.max_seconds, max_utterances=args.max_utterances,
                         mixed_precision=args.mixed_precision, peak=args.peak_tflops, seed=args.seed,
                         out_md=args.table, command="kd " + " ".join(sys.argv[1:]))
    print(train_table(result))
    return 0
