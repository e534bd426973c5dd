"""In-process eSpeak NG synthesis with phone and word timings.

The shared library and its data come from the ``espeakng-loader`` wheel, so no system
package is needed. eSpeak keeps global state, so use one :class:`Espeak` per process
(the corpus builder runs one per worker process).

Timings come from eSpeak's synthesis events: with phoneme events enabled at
initialisation, every phoneme and every word is reported with its audio position
(milliseconds from the start of the utterance).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

# eSpeak NG constants (speak_lib.h)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_EVENT_WORD = 1
_EVENT_END = 5
_EVENT_MSG_TERMINATED = 6
_EVENT_PHONEME = 7
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_PARAM_WORDGAP = 7


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character offset in the input text
        ("length", ctypes.c_int),  # characters, for word events
        ("audio_position", ctypes.c_int),  # milliseconds from the utterance start
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class VoiceSettings:
    """One eSpeak voice setting (a "speaker" of the synthetic corpus)."""

    voice: str  # eSpeak voice name, e.g. "en-us" or "en-GB-scotland"
    variant: str = ""  # eSpeak variant, e.g. "f3" or "m2" ("" = the voice's default)
    pitch: int = 50  # base pitch, 0-100
    pitch_range: int = 50  # pitch range, 0-100
    rate: int = 175  # words per minute, 80-450
    word_gap: int = 0  # extra pause between words, units of 10 ms

    @property
    def name(self) -> str:
        return f"{self.voice}+{self.variant}" if self.variant else self.voice


@dataclass(frozen=True)
class Synthesis:
    """One synthesised utterance at eSpeak's native rate."""

    samples: np.ndarray  # [samples] int16
    sample_rate: int
    phones: list[tuple[float, str]]  # (start seconds, eSpeak phoneme mnemonic), in order
    words: list[tuple[float, int]]  # (start seconds, 0-based index of the word in the text)


class EspeakError(RuntimeError):
    pass


class Espeak:
    """A process-wide eSpeak NG synthesiser (eSpeak keeps global state)."""

    _instance: "Espeak | None" = None

    def __new__(cls) -> "Espeak":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
            cls._instance._init()
        return cls._instance

    def _init(self) -> None:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        options = _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), options)
        if rate <= 0:
            raise EspeakError(f"espeak_Initialize failed (returned {rate})")
        self.sample_rate = int(rate)
        self._lib = lib
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int, str, int]] = []
        # keep a reference to the ctypes callback for the life of the process
        self._callback = _CALLBACK(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while True:
            ev = events[i]
            if ev.type in (0, _EVENT_MSG_TERMINATED):
                break
            if ev.type == _EVENT_PHONEME:
                name = bytes(ev.id.string).split(b"\0", 1)[0].decode("utf-8", "replace")
                self._events.append((ev.type, ev.audio_position, ev.text_position, name, 0))
            elif ev.type == _EVENT_WORD:
                self._events.append((ev.type, ev.audio_position, ev.text_position, "", ev.length))
            i += 1
        return 0

    def phoneme_count(self, word: str) -> int:
        """Number of phonemes eSpeak gives ``word`` on its own, with the current voice."""
        buf = ctypes.c_char_p(word.encode("utf-8") + b"\0")
        out = self._lib.espeak_TextToPhonemes(ctypes.byref(buf), _CHARS_UTF8, ord("|") << 8) or b""
        return max(1, len([p for p in out.decode("utf-8", "replace").replace(" ", "|").split("|") if p]))

    def synthesize(self, text: str, voice: VoiceSettings) -> Synthesis:
        """Synthesise ``text`` (plain words separated by single spaces) with ``voice``."""
        lib = self._lib
        if lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
            raise EspeakError(f"eSpeak has no voice {voice.name!r}")
        for param, value in (
            (_PARAM_RATE, voice.rate),
            (_PARAM_PITCH, voice.pitch),
            (_PARAM_RANGE, voice.pitch_range),
            (_PARAM_WORDGAP, voice.word_gap),
            (_PARAM_VOLUME, 100),
        ):
            lib.espeak_SetParameter(param, int(value), 0)
        self._chunks, self._events = [], []
        data = text.encode("utf-8") + b"\0"
        err = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        if err != 0:
            raise EspeakError(f"espeak_Synth failed with code {err} for text {text!r}")
        lib.espeak_Synchronize()
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        # character offset (1-based) of each word start -> word index
        starts, pos = {}, 0
        for index, word in enumerate(text.split(" ")):
            starts[pos + 1] = index
            pos += len(word) + 1
        phones, words = [], []
        for kind, ms, text_pos, name, _ in self._events:
            if kind == _EVENT_PHONEME:
                phones.append((ms / 1000.0, name))
            elif text_pos in starts:
                words.append((ms / 1000.0, starts[text_pos]))
        return Synthesis(samples=samples, sample_rate=self.sample_rate, phones=phones, words=words)
