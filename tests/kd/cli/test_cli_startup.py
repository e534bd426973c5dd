"""The ``kd`` command starts cheaply: help and the corpus commands import no torch, transformers,
ESPnet or accelerate, and no parser default probes CUDA."""

import argparse
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "espnet", "espnet2", "accelerate")


def _heavy_after(code: str) -> list[str]:
    """The heavy modules loaded after ``code`` runs in a fresh interpreter (stdout silenced)."""
    script = ("import contextlib, io, sys\n"
              "with contextlib.redirect_stdout(io.StringIO()):\n"
              + "".join(f"    {line}\n" for line in code.splitlines())
              + f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    return [m for m in out.strip().split(",") if m]


def _help(argv: list[str]) -> str:
    return (f"from kd.cli import main\n"
            f"try:\n"
            f"    main({argv!r})\n"
            f"except SystemExit as e:\n"
            f"    assert e.code == 0, e.code\n")


@pytest.mark.parametrize("argv", [["--help"], ["corpus", "--help"], ["corpus", "synth", "--help"]])
def test_help_imports_nothing_heavy(argv):
    assert _heavy_after(_help(argv)) == []


def test_every_subcommand_help_imports_nothing_heavy():
    from kd.cli import build_parser

    def commands(parser, prefix):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield prefix + [name]
                    yield from commands(child, prefix + [name])

    all_commands = list(commands(build_parser(), []))
    assert ["corpus", "synth"] in all_commands and ["export", "espnet"] in all_commands
    code = "\n".join(_help(argv + ["--help"]) for argv in all_commands)
    assert _heavy_after(code) == []


def test_corpus_synth_modules_import_nothing_heavy():
    # the modules `kd corpus synth` imports when it runs, its worker processes' included
    code = "import kd.cli, kd.corpus.synth, kd.corpus.effects, kd.corpus.espeak, kd.corpus.sentences"
    assert _heavy_after(code) == []


def test_entry_point_help_runs_without_heavy_modules():
    # the same through the interpreter's module runner, as the console script does
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "kd.cli", "--help"], capture_output=True,
                         text=True, check=True)
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "usage: kd" in out.stdout
    assert not imported & set(HEAVY)


def test_device_default_resolved_when_the_command_runs():
    from kd.cli import build_parser
    from kd.cli.common import device

    for argv in (["analyze", "m", "--data", "d", "--out", "o"], ["eval", "m", "--data", "d"],
                 ["compare", "m", "--reference", "r", "--data", "d", "--out", "o"],
                 ["bench", "analyze", "m", "--data", "d"], ["bench", "speed", "m"]):
        assert build_parser().parse_args(argv).device is None
    assert device("cpu") == "cpu"
    assert device(None) in ("cpu", "cuda")


@pytest.mark.parametrize("spelling", ["ctc_greedy", "ctc-greedy"])
def test_eval_method_is_the_decode_config_value(spelling):
    from kd.cli import build_parser
    from kd.evaluation.decode import DecodeMethod

    args = build_parser().parse_args(["eval", "m", "--data", "d", "--method", spelling])
    assert DecodeMethod(args.method) is DecodeMethod.CTC_GREEDY
    choices = next(a.choices for a in build_parser()._subparsers._group_actions[0].choices["eval"]._actions
                   if a.dest == "method")
    assert sorted(choices) == sorted(m.value for m in DecodeMethod)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "m", "--data", "d", "--method", "greedy"])
