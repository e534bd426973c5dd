"""Third-party noise kept off the console: ``kd`` commands print their own progress and results.

Each filter is as narrow as the noise allows (one message, one module) and says why what it
hides is harmless. :func:`espnet_imports` is called before the toolkit imports ESPnet; it is
cheap and idempotent, so every place that imports ESPnet calls it rather than relying on an
earlier caller.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import sys
import types
import warnings

# printed by espnet.nets.pytorch_backend.transformer.attention on import when the optional
# flash_attn package is missing; the toolkit builds every ESPnet block with use_flash_attn=False
# (kd.models.asr, kd.models.export_espnet), so the fallback it announces is the code that runs anyway
FLASH_ATTN_MESSAGE = "Failed to import Flash Attention, using ESPnet default:"

_ESPNET_ATTENTION = "espnet.nets.pytorch_backend.transformer.attention"


def espnet_imports() -> None:
    """Import ESPnet's attention module without its flash-attn message, defer ``g2p_en``, and
    filter the FutureWarning ESPnet's model raises on every forward pass."""
    _filter_espnet_warnings()
    _defer_module("g2p_en")
    if _ESPNET_ATTENTION in sys.modules:
        return
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured):
            importlib.import_module(_ESPNET_ATTENTION)
    finally:
        # anything else the import printed still reaches the console
        kept = [line for line in captured.getvalue().splitlines(keepends=True)
                if not line.startswith(FLASH_ATTN_MESSAGE)]
        sys.stdout.write("".join(kept))


def _filter_espnet_warnings() -> None:
    # ESPnetASRModel.encode enters torch.cuda.amp.autocast(self.autocast_frontend, ...), a
    # deprecated alias that behaves as torch.amp.autocast("cuda", ...); the toolkit leaves
    # autocast_frontend False, so the context is disabled, and the fix belongs in ESPnet. Added
    # again on each call: warnings.catch_warnings (pytest wraps every test in one) drops filters
    # on exit.
    warnings.filterwarnings("ignore", message=r"`torch\.cuda\.amp\.autocast\(args\.\.\.\)` is deprecated",
                            category=FutureWarning, module=r"espnet2\.asr\.espnet_model")


class _DeferredModule(types.ModuleType):
    """A stand-in in ``sys.modules`` that imports the real module on the first use of one of its
    public names. Dunder look-ups (``__spec__``, ``__file__``, ``__path__``, ``__wrapped__``, ...)
    do not count: ``importlib.util.find_spec`` and tools that walk ``sys.modules`` make them, and
    they must not run the module's body."""

    def __init__(self, spec: importlib.machinery.ModuleSpec):
        super().__init__(spec.name)
        self.__spec__ = spec
        self.__file__ = spec.origin
        if spec.submodule_search_locations is not None:
            self.__path__ = list(spec.submodule_search_locations)

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        real = self.__dict__.get("_real_module")
        if real is None:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
            real = importlib.import_module(self.__name__)
            self.__dict__["_real_module"] = real
        return getattr(real, name)


def _defer_module(name: str) -> None:
    # g2p_en downloads NLTK's tagger and CMU dictionary in its module body (a failing network
    # call, printed to stderr, offline), and ESPnet's phoneme tokenizer imports it at the top; the
    # toolkit's models use character or SentencePiece tokens, so ESPnet's g2p never runs and the
    # import can wait until something uses it
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is not None:
        sys.modules[name] = _DeferredModule(spec)
