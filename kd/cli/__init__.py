"""The ``kd`` command. Each subcommand is a thin wrapper over one library function.

The library modules (and through them torch, transformers, ESPnet) are imported inside the
functions that run the subcommands, and no parser default calls into them, so that ``kd --help``
and ``kd corpus ...`` start in a fraction of a second (tests/kd/test_cli_startup.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

def _corpus_synth(args: argparse.Namespace) -> int:
    from kd.corpus.synth import build_corpus

    summary = build_corpus(args.out, preset=args.preset, seed=args.seed, jobs=args.jobs, progress=not args.quiet)
    print(format_corpus_summary(summary))
    return 0


def format_corpus_summary(summary: dict) -> str:
    lines = [f"corpus: preset={summary['preset']} seed={summary['seed']} {summary['hours']:.3f} h of audio, "
             f"{summary['num_phones']} phone labels"]
    if summary.get("skipped"):
        lines.append("(already built with these settings: nothing to do)")
    else:
        lines.append(f"synthesis: {summary['synthesis_seconds']:.1f} s wall for {summary['audio_seconds']:.0f} s of "
                     f"audio = {summary['realtime_factor']:.0f}x real time on {summary['jobs']} processes")
    lines.append(f"{'domain':<8} {'split':<6} {'utts':>6} {'spk':>4} {'hours':>8}")
    for domain, splits in summary["splits"].items():
        for split, s in splits.items():
            lines.append(f"{domain:<8} {split:<6} {s['utterances']:>6} {s['speakers']:>4} {s['hours']:>8.3f}")
    return "\n".join(lines)


def _data_check(args: argparse.Namespace) -> int:
    from kd.data.check import check_data_dir

    report = check_data_dir(args.data_dir, sample_rate=args.sample_rate, token_list=args.token_list,
                            check_samples=not args.headers_only)
    for issue in report.issues:
        print(issue)
    print(report.summary())
    return 0 if report.ok else 1


def _analyze(args: argparse.Namespace) -> int:
    from kd.analyze.layerwise import AnalyzeConfig, analyze_model_dir

    config = AnalyzeConfig(max_utterances=args.max_utterances, device=_device(args.device), seed=args.seed,
                           attention=not args.no_attention, frames_per_utterance=args.frames_per_utterance,
                           mi_pairs=args.mi_pairs, probe_kind=args.probe_kind)
    report = analyze_model_dir(args.model_dir, args.data, args.out, config)
    print(report.to_markdown())
    print(f"report: {args.out}/report.json, {args.out}/report.md, figures in {args.out}/figures/")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from kd.plan.from_report import PlanMethod, plan_from_report

    budget = args.budget
    if (budget is None) == (args.budget_ms is None):
        raise SystemExit("kd plan: give exactly one of --budget (layers) and --budget-ms (with --latency)")
    if args.budget_ms is not None:
        from analysis.report import AnalysisReport
        from kd.plan.planners import layers_for_latency_budget

        measured = []
        for item in args.latency or []:
            layers, _, ms = item.partition(":")
            try:
                measured.append((int(layers), float(ms)))
            except ValueError:
                raise SystemExit(f"kd plan: --latency expects LAYERS:MS (e.g. 12:85.0), found {item!r}") from None
        teacher_layers = AnalysisReport.load(args.report).num_layers - 1
        budget = layers_for_latency_budget(measured, args.budget_ms, teacher_layers)
        print(f"latency budget {args.budget_ms} ms -> {budget} layers")
    plan = plan_from_report(args.report, budget_layers=budget, method=PlanMethod(args.method),
                            share_blocks=args.share, reuse_threshold=args.reuse_threshold)
    plan.save(args.out)
    print(plan.to_json())
    return 0


def _compress(args: argparse.Namespace) -> int:
    from kd.compression.apply import compress_model_dir

    out = compress_model_dir(args.model_dir, args.plan, args.out, decoder_plan_path=args.decoder_plan)
    print(f"student saved to {out}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from kd.analyze.compare import compare_models, save_comparison

    result = compare_models(args.models, args.reference, args.data, max_utterances=args.max_utterances,
                            device=_device(args.device), seed=args.seed, progress=True)
    paths = save_comparison(result, args.out)
    for model, curve in zip(result.models, (result.same_layer(i) for i in range(len(result.models)))):
        print(f"{model}: same-layer CKA " + " ".join(f"{v:.3f}" for v in curve))
    print(f"written: {', '.join(map(str, paths))}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from kd.evaluation.decode import DecodeConfig, DecodeMethod
    from kd.evaluation.evaluate import evaluate

    from kd.evaluation.hf_ctc import is_hf_model_folder

    method = args.method or ("ctc_greedy" if is_hf_model_folder(args.model_dir) else "beam")
    config = DecodeConfig(method=DecodeMethod(method), beam_size=args.beam_size,
                          ctc_weight=args.ctc_weight, penalty=args.penalty, maxlenratio=args.maxlenratio)
    report = evaluate(args.model_dir, args.data, config, device=_device(args.device), out_dir=args.out,
                      progress=True)
    print(report.to_markdown())
    return 0


def _export(args: argparse.Namespace) -> int:
    from kd.models.export_espnet import export_espnet

    out = export_espnet(args.model_dir, args.out)
    print(f"ESPnet model folder written to {out} (config.yaml + model.pth; decode with Speech2Text)")
    return 0


def _train(args: argparse.Namespace) -> int:
    from kd.training.loop import distill_from_yaml, train_from_yaml

    fn = distill_from_yaml if args.command == "distill" else train_from_yaml
    result = fn(args.config, args.out, resume=not args.no_resume)
    print(json.dumps(result.to_dict(), indent=1))
    return 0


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
    result = bench_analyze(model, args.data, Path(args.work) / "report", device=_device(args.device),
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


def _key_values(items: list[str], option: str) -> dict:
    """``["d_model=256", "encoder_layers=12"]`` -> a dict, each value read as YAML (numbers, booleans)."""
    from kd.core.io import load_yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{option}: expected KEY=VALUE, found {item!r}")
        out[key] = load_yaml(value)
    return out


def _bench_train(args: argparse.Namespace) -> int:
    from kd.bench.train import bench_train, train_table

    result = bench_train(args.data, args.out, teacher=args.teacher, preset=args.preset,
                         overrides=_key_values(args.set, "--set"), window=args.window, windows=args.windows,
                         max_seconds=args.max_seconds, max_utterances=args.max_utterances,
                         mixed_precision=args.mixed_precision, peak=args.peak_tflops, seed=args.seed,
                         out_md=args.table, command="kd " + " ".join(sys.argv[1:]))
    print(train_table(result))
    return 0


def _distill_layers(args: argparse.Namespace) -> int:
    import dataclasses

    from kd.compression import count_parameters, load_student
    from kd.ssl.layer_distill import LayerDistillConfig, distill_plan
    from kd.ssl.config import OptimSettings

    config = LayerDistillConfig.from_preset(args.preset)
    optim = _key_values(args.set, "--set")
    if optim:
        unknown = sorted(set(optim) - {f.name for f in dataclasses.fields(OptimSettings)})
        if unknown:
            raise ValueError(f"--set: unknown OptimSettings field(s) {unknown}; expected some of "
                             f"{[f.name for f in dataclasses.fields(OptimSettings)]}")
        config = dataclasses.replace(config, optim=OptimSettings.from_dict({**config.optim.to_dict(), **optim}))
    result = distill_plan(args.teacher, args.plan, args.data, args.out, config, student_dir=args.student,
                          progress=True)
    student = load_student(result.model_dir)
    print(f"student ({count_parameters(student):,} parameters) after {result.steps} updates"
          f"{' (finished earlier; skipped)' if result.skipped else ''}: {result.model_dir}")
    return 0


def _preset_with_settings(cls, preset: str, items: list[str], option: str = "--set"):
    """``cls.from_preset(preset)`` with KEY=VALUE settings over it: fields of ``cls``, or
    ``optim.FIELD`` for its OptimSettings; names and types checked by ``cls.from_dict``."""
    data = cls.from_preset(preset).to_dict()
    for key, value in _key_values(items, option).items():
        section, dot, field = key.partition(".")
        if dot and section == "optim":
            data["optim"][field] = value
        elif dot:
            raise ValueError(f"{option}: {key!r}: only optim.FIELD names a nested setting")
        else:
            data[key] = value
    return cls.from_dict(data)


def _ssl_pretrain(args: argparse.Namespace) -> int:
    from kd.ssl.config import SSLConfig
    from kd.ssl.pretrain import pretrain

    config = _preset_with_settings(SSLConfig, args.preset, args.set + [f"optim.seed={args.seed}"])
    result = pretrain(config, args.data, args.out)
    print(result)
    if "message" in result.metrics:
        print(f"pre-training outcome: {result.metrics['message']}")
    return 0


def _ssl_finetune(args: argparse.Namespace) -> int:
    from kd.ssl.config import CTCConfig
    from kd.ssl.finetune import finetune_ctc

    from pathlib import Path

    pretrained = Path(args.pretrained)
    if (pretrained / "model" / "config.json").is_file():  # a pretrain stage folder: its final model
        pretrained = pretrained / "model"
    result = finetune_ctc(pretrained, args.data, args.out, _preset_with_settings(CTCConfig, args.preset, args.set),
                          eval_dirs=args.eval)
    print(result)
    return 0


_DEVICE_HELP = "torch device (default: cuda when available, else cpu)"


def build_parser() -> argparse.ArgumentParser:
    from kd.corpus.domains import PRESETS  # plain Python: no torch import for `kd --help`

    parser = argparse.ArgumentParser(prog="kd", description="Analyse, compress and distil speech Transformers.")
    sub = parser.add_subparsers(dest="command", required=True)

    corpus = sub.add_parser("corpus", help="the built-in synthetic multi-domain corpus")
    corpus_sub = corpus.add_subparsers(dest="corpus_command", required=True)
    synth = corpus_sub.add_parser("synth", help="synthesise the corpus with eSpeak NG")
    synth.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="size preset")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(run=_corpus_synth)

    data = sub.add_parser("data", help="data dirs")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="validate a Kaldi/ESPnet data dir")
    check.add_argument("data_dir")
    check.add_argument("--sample-rate", type=int, default=16000)
    check.add_argument("--token-list", default=None, help="ESPnet-style character token list to check against")
    check.add_argument("--headers-only", action="store_true", help="do not decode samples (skips the NaN check)")
    check.set_defaults(run=_data_check)

    an = sub.add_parser("analyze", help="layer-wise analysis of a model on a data dir")
    an.add_argument("model_dir", help="Hugging Face checkpoint folder or kd ASR model dir")
    an.add_argument("--data", required=True, help="data dir (alignments.jsonl enables phone/word analyses)")
    an.add_argument("--out", required=True, help="output folder for report.json, report.md, figures/")
    an.add_argument("--max-utterances", type=int, default=200)
    an.add_argument("--frames-per-utterance", type=int, default=48)
    an.add_argument("--no-attention", action="store_true", help="skip attention analyses")
    an.add_argument("--probe-kind", choices=("linear", "mlp1", "mlp2"), default="linear",
                    help="phone and speaker probe depth: linear, one hidden layer (mlp1) or two (mlp2)")
    an.add_argument("--mi-pairs", type=int, default=4,
                    help="label-free MI bound: section pairs per utterance (each section run through the model alone)")
    an.add_argument("--device", default=None, help=_DEVICE_HELP)
    an.add_argument("--seed", type=int, default=0)
    an.set_defaults(run=_analyze)

    pl = sub.add_parser("plan", help="compression plan from an analysis report")
    pl.add_argument("report", help="report.json written by kd analyze")
    pl.add_argument("--budget", type=int, default=None, help="number of Transformer layers (weight sets with --share)")
    pl.add_argument("--budget-ms", type=float, default=None,
                    help="latency budget: the most layers whose predicted latency fits (needs --latency)")
    pl.add_argument("--latency", action="append", metavar="LAYERS:MS",
                    help="a measured latency of a model of that depth (kd bench speed); two or more depths")
    pl.add_argument("--method", default="analysis", choices=["analysis", "first-k", "every-k", "linspace"])
    pl.add_argument("--share", action="store_true", help="keep depth, share weights within similar blocks")
    pl.add_argument("--reuse-threshold", type=float, default=None, help="attention JSD (bits) below which to reuse")
    pl.add_argument("--out", required=True, help="plan.json")
    pl.set_defaults(run=_plan)

    co = sub.add_parser("compress", help="apply a plan to a Hugging Face checkpoint or a kd ASR model dir")
    co.add_argument("model_dir")
    co.add_argument("plan", help="plan.json (for a kd ASR model dir: over its encoder layers)")
    co.add_argument("--decoder-plan", default=None, help="kd ASR model dirs: plan.json over the decoder layers")
    co.add_argument("--out", required=True)
    co.set_defaults(run=_compress)

    cm = sub.add_parser("compare", help="linear CKA between the layers of models (checkpoints, teacher vs student)")
    cm.add_argument("models", nargs="+", help="model folders to compare with the reference")
    cm.add_argument("--reference", required=True, help="the model each one is compared with")
    cm.add_argument("--data", required=True, help="data dir whose utterances all models run")
    cm.add_argument("--out", required=True, help="folder for comparison.json and same_layer_cka.png")
    cm.add_argument("--max-utterances", type=int, default=100)
    cm.add_argument("--device", default=None, help=_DEVICE_HELP)
    cm.add_argument("--seed", type=int, default=0)
    cm.set_defaults(run=_compare)

    for name, text in (("train", "train an ASR model (teacher, or student without KD) from a YAML config"),
                       ("distill", "train a student with knowledge distillation from a YAML config")):
        tr = sub.add_parser(name, help=text)
        tr.add_argument("config", help="YAML config (see recipes/ and kd/training/config.py)")
        tr.add_argument("out", help="run dir (resumed from its newest finished checkpoint if present)")
        tr.add_argument("--no-resume", action="store_true", help="refuse a run dir that already has checkpoints")
        tr.set_defaults(run=_train)

    dl = sub.add_parser("distill-layers", help="layer-to-layer distillation (DistilHuBERT) of a wav2vec2-family "
                                               "student built by a plan")
    dl.add_argument("teacher", help="Hugging Face checkpoint folder (wav2vec2 / HuBERT / WavLM) or a student folder")
    dl.add_argument("plan", help="plan JSON (kd plan); its layer map pairs teacher and student layers")
    dl.add_argument("--data", nargs="+", required=True, help="data dirs (audio only is used)")
    dl.add_argument("--out", required=True, help="stage folder: student/, heads, log.csv (a finished one is skipped)")
    dl.add_argument("--student", default=None, help="initial student folder (default: kd.compress(teacher, plan))")
    dl.add_argument("--preset", default="cpu", choices=["tiny", "cpu", "gpu"])
    dl.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="optimiser settings over the preset (steps, lr, warmup_steps, max_batch_seconds, ...)")
    dl.set_defaults(run=_distill_layers)

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
    bz.add_argument("--device", default=None, help=_DEVICE_HELP)
    bz.add_argument("--max-utterances", type=int, default=200)
    bz.add_argument("--work", default="exp/bench_analyze", help="folder for the report (and the random model)")
    bz.add_argument("--out", default="docs/bench/analyze.json")
    bz.add_argument("--table", default="docs/bench/analyze.md")
    bz.set_defaults(run=_bench_analyze)

    bs = bench_sub.add_parser("speed", help="parameters, latency and real-time factor of model folders")
    bs.add_argument("model_dirs", nargs="+", help="Hugging Face checkpoint folders or kd students")
    bs.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    bs.add_argument("--seconds", type=float, default=8.0, help="audio per utterance")
    bs.add_argument("--device", default=None, help=_DEVICE_HELP)
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
    bt.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="AsrConfig fields over the preset")
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

    ssl = sub.add_parser("ssl", help="a self-supervised wav2vec 2.0 teacher")
    ssl_sub = ssl.add_subparsers(dest="ssl_command", required=True)
    sp = ssl_sub.add_parser("pretrain", help="wav2vec 2.0 pre-training (keeps checkpoints for learning dynamics)")
    sp.add_argument("--data", nargs="+", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--preset", default="cpu", choices=["tiny", "cpu", "gpu"])
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="SSLConfig fields over the preset (diversity_weight=0.3, mask_length=4, ...) and "
                         "optim.FIELD for its optimiser (optim.lr=1e-4, optim.steps=400, ...)")
    sp.set_defaults(run=_ssl_pretrain)
    sf = ssl_sub.add_parser("finetune", help="CTC fine-tuning of a pre-trained encoder")
    sf.add_argument("pretrained", help="the pretrain stage folder (or its model/ folder)")
    sf.add_argument("--data", nargs="+", required=True)
    sf.add_argument("--eval", nargs="*", default=[], help="data dirs scored (WER/CER) after training")
    sf.add_argument("--out", required=True)
    sf.add_argument("--preset", default="cpu", choices=["tiny", "cpu", "gpu"])
    sf.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="CTCConfig fields over the preset (freeze_feature_encoder=false, ...) and optim.FIELD "
                         "(optim.steps=800, ...)")
    sf.set_defaults(run=_ssl_finetune)

    ev = sub.add_parser("eval", help="WER/CER per domain, parameters and real-time factor of an ASR model dir "
                                     "or a Hugging Face CTC checkpoint folder")
    ev.add_argument("model_dir", help="a kd model dir (config.yaml), or a Hugging Face *ForCTC folder (config.json, "
                                      "vocab.json or tokens.txt) or compressed student of one")
    ev.add_argument("--data", nargs="+", required=True, help="one or more data dirs")
    ev.add_argument("--out", default=None, help="folder for report.json, report.md, hyp.txt, utterances.jsonl")
    ev.add_argument("--method", default=None, choices=["beam", "ctc_greedy"], type=lambda s: s.replace("-", "_"),
                    help="kd.evaluation.decode.DecodeMethod, as in a decode config (ctc-greedy is read as ctc_greedy); default: "
                         "beam for a kd model dir, ctc_greedy (the only one) for a Hugging Face CTC folder")
    ev.add_argument("--beam-size", type=int, default=10)
    ev.add_argument("--ctc-weight", type=float, default=0.3)
    ev.add_argument("--penalty", type=float, default=0.0)
    ev.add_argument("--maxlenratio", type=float, default=0.0)
    ev.add_argument("--device", default=None, help=_DEVICE_HELP)
    ev.set_defaults(run=_eval)

    ex = sub.add_parser("export", help="export a model dir to another toolkit's format")
    ex_sub = ex.add_subparsers(dest="export_format", required=True)
    es = ex_sub.add_parser("espnet", help="ESPnet model folder that espnet2's Speech2Text decodes")
    es.add_argument("model_dir")
    es.add_argument("--out", required=True)
    es.set_defaults(run=_export)
    return parser


def _device(name: str | None) -> str:
    """``--device`` as given, or CUDA when available, else the CPU. Resolved when a command runs,
    not as the parser's default, so that ``kd --help`` imports no torch and probes no driver."""
    if name is not None:
        return name
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        print(f"kd: error: {e}", file=sys.stderr)
        return 2
