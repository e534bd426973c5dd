"""A quiet console: the toolkit's ESPnet paths print none of ESPnet's import-time messages,
FutureWarnings or NLTK download attempts (kd/core/quiet.py)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kd.core.quiet import FLASH_ATTN_MESSAGE, _DeferredModule

# a tiny model built, run forward (ESPnetASRModel.encode) and exported with `kd export espnet`
# (ESPnet's ASRTask, whose imports reach its phoneme tokenizer and g2p_en), in a fresh interpreter
# so that no earlier import in the test process hides a message; -W default shows every warning
SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path

    import torch

    from kd.cli import main
    from kd.data.text import CharTokenizer
    from kd.models.asr import AsrConfig, build_asr_model
    from kd.models.model_dir import save_model_dir

    out = Path(sys.argv[1])
    tokenizer = CharTokenizer.from_texts(["abc"])
    model = build_asr_model(AsrConfig.tiny(vocab_size=tokenizer.vocab_size), list(tokenizer.tokens))
    model(0.1 * torch.randn(1, 8000), torch.tensor([8000]), torch.tensor([[3, 4]]), torch.tensor([2]))
    save_model_dir(model, tokenizer, out / "model")
    assert main(["export", "espnet", str(out / "model"), "--out", str(out / "espnet")]) == 0
    print("nltk imported:", "nltk" in sys.modules)
""")


@pytest.fixture(scope="module")
def export_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("quiet")
    return subprocess.run([sys.executable, "-W", "default", "-c", SCRIPT, str(out)], capture_output=True,
                          text=True, check=True)


@pytest.mark.slow  # export_run: 23 s on the 2-core machine (a fresh interpreter importing ESPnet); pytest -m slow
def test_no_flash_attention_message(export_run):
    assert "Flash Attention" not in export_run.stdout + export_run.stderr
    assert "ESPnet model folder written to" in export_run.stdout  # the command's own output stays


@pytest.mark.slow  # export_run: 23 s on the 2-core machine (a fresh interpreter importing ESPnet); pytest -m slow
def test_no_future_warnings(export_run):
    assert "FutureWarning" not in export_run.stderr, export_run.stderr


@pytest.mark.slow  # export_run: 23 s on the 2-core machine (a fresh interpreter importing ESPnet); pytest -m slow
def test_no_nltk_download_attempt(export_run):
    assert "nltk" not in export_run.stderr, export_run.stderr
    assert "nltk imported: False" in export_run.stdout


def test_flash_attention_message_is_the_one_espnet_prints():
    # the filter matches by prefix: it must still be the text ESPnet prints
    from importlib.util import find_spec

    source = Path(find_spec("espnet.nets.pytorch_backend.transformer.attention").origin).read_text()
    assert f'print(f"{FLASH_ATTN_MESSAGE} {{e}}")' in source


def test_a_deferred_module_runs_on_its_first_name_only(tmp_path, monkeypatch):
    package = tmp_path / "deferred_probe"
    package.mkdir()
    (package / "__init__.py").write_text("import sys\nsys.deferred_probe_ran = True\nVALUE = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "deferred_probe", raising=False)
    from importlib.util import find_spec

    spec = find_spec("deferred_probe")
    stand_in = _DeferredModule(spec)
    monkeypatch.setitem(sys.modules, "deferred_probe", stand_in)
    import deferred_probe

    assert deferred_probe is stand_in
    assert find_spec("deferred_probe") is spec and not hasattr(stand_in, "__wrapped__")
    assert not hasattr(sys, "deferred_probe_ran")
    assert deferred_probe.VALUE == 3 and sys.deferred_probe_ran
    monkeypatch.delattr(sys, "deferred_probe_ran")
