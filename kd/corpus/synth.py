"""Build the built-in multi-domain speech corpus with eSpeak NG.

``build_corpus(out_dir, preset, seed)`` writes, for every domain and split, a Kaldi/ESPnet
style data dir (``wav.scp``, ``text``, ``utt2spk``, ``spk2utt``, ``utt2dom``) with 16 kHz mono
16-bit WAV files and an ``alignments.jsonl`` of phone and word intervals; plus a
``manifest.jsonl`` over all utterances and a ``corpus.json`` summary. The same seed gives
the same bytes, whatever the number of worker processes.

Layout::

    OUT/corpus.json  OUT/manifest.jsonl  OUT/phones.txt
    OUT/{us,uk,target}/{train,dev,test}/{wav.scp,text,utt2spk,spk2utt,utt2dom,alignments.jsonl}
    OUT/wav/<domain>/<split>/<utt>.wav

Paths in ``wav.scp`` are relative to the data dir that holds it (the toolkit's readers
resolve them so; absolute paths work too).
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kd.core.io import atomic_write_bytes, atomic_write_text, clear_done, is_done, mark_done, write_json
from kd.corpus.domains import DOMAIN_BY_NAME, DOMAINS, PRESETS, SPLITS, CorpusPreset, Speaker, make_speakers

SAMPLE_RATE = 16000
CORPUS_VERSION = 1
# Utterances synthesised by one fresh worker process. eSpeak's waveform generator keeps
# state from one utterance to the next, so every chunk starts in a new process: the
# output then depends on the seed only, not on the number of workers.
CHUNK_SIZE = 48
SPLIT_FILE = "corpus_split.json"  # in every data dir: the split's plan digest (split_digest)
BABBLE_SENTENCES = 200


@dataclass(frozen=True)
class UttSpec:
    """Everything a worker needs to render one utterance."""

    utt: str
    domain: str
    split: str
    speaker: Speaker
    text: str
    wav_path: str  # relative to the corpus root
    gain: float  # peak amplitude after normalisation
    noise: str | None  # "pink", "babble" or None
    snr_db: float | None
    rt60: float | None
    babble: tuple[tuple[str, str, str, int, int], ...]  # (text, voice, variant, pitch, rate)
    seed: tuple[int, ...]


def _phone_label(name: str) -> str:
    """eSpeak phoneme mnemonic without stress marks and allophone marks; pauses become ``sil``."""
    if name.startswith("_"):
        return "sil"
    return name.replace("'", "").replace(",", "").replace("#", "") or "sil"


def _alignments(synth, text: str, duration: float, phoneme_count) -> tuple[list, list]:
    """Phone intervals and word intervals (seconds) from eSpeak's events.

    eSpeak sometimes reports one word event for a run of words it joins (``in the``); the
    phones of such a run are shared out in order, in proportion to each word's phoneme count
    when spoken alone (``phoneme_count(word)``).
    """
    words = text.split(" ")
    starts = [t for t, _ in synth.phones]
    phones = []
    for i, (t, name) in enumerate(synth.phones):
        start = round(min(t, duration), 3)
        end = round(min(starts[i + 1] if i + 1 < len(starts) else duration, duration), 3)
        if end > start:
            phones.append([start, end, _phone_label(name)])
    if phones and phones[0][0] > 0:  # leading silence before eSpeak's first event
        phones.insert(0, [0.0, phones[0][0], "sil"])
    events = {w: t for t, w in synth.words if 0 <= w < len(words)}
    events.setdefault(0, 0.0)
    leaders = sorted(events)  # word indices that start a run
    runs = {k: list(range(k, leaders[j + 1] if j + 1 < len(leaders) else len(words))) for j, k in enumerate(leaders)}
    run_phones: dict[int, list] = {k: [] for k in leaders}
    for p in phones:
        if p[2] == "sil":
            continue
        owner = leaders[0]
        for k in leaders:
            if events[k] <= p[0] + 1e-9:
                owner = k
        run_phones[owner].append(p)
    intervals: list[list] = []
    for k in leaders:
        members, ps = runs[k], run_phones[k]
        weights = [phoneme_count(words[m]) for m in members] if len(members) > 1 else [1]
        total, taken = sum(weights), 0
        for j, m in enumerate(members):
            share = len(ps) - taken if j == len(members) - 1 else round(len(ps) * sum(weights[: j + 1]) / total) - taken
            own = ps[taken: taken + max(share, 0)]
            taken += len(own)
            if own:
                intervals.append([own[0][0], own[-1][1], words[m]])
            else:  # no phone left for this word: zero length where the previous word ends
                t = intervals[-1][1] if intervals else round(events[k], 3)
                intervals.append([t, t, words[m]])
    return phones, intervals


def _render(spec: UttSpec, engine) -> tuple[np.ndarray, list, list]:
    from scipy.signal import resample_poly

    from kd.corpus import effects
    from kd.corpus.espeak import VoiceSettings

    spk = spec.speaker
    synth = engine.synthesize(spec.text, VoiceSettings(spk.voice, spk.variant, pitch=spk.pitch, rate=spk.rate))
    if synth.sample_rate != 22050:
        raise RuntimeError(f"Expected eSpeak at 22050 Hz, found {synth.sample_rate}")
    x = resample_poly(synth.samples.astype(np.float32) / 32768.0, 320, 441).astype(np.float32)
    rng = np.random.default_rng(list(spec.seed))
    if spec.rt60 is not None:
        x = effects.reverberate(x, effects.synthetic_rir(spec.rt60, SAMPLE_RATE, rng))
    if spec.noise == "pink":
        x = effects.mix_at_snr(x, effects.pink_noise(len(x), rng), spec.snr_db)
    elif spec.noise == "babble":
        babble = np.zeros_like(x)
        for text, voice, variant, pitch, rate in spec.babble:
            b = engine.synthesize(text, VoiceSettings(voice, variant, pitch=pitch, rate=rate)).samples
            b = resample_poly(b.astype(np.float32) / 32768.0, 320, 441).astype(np.float32)
            b = np.resize(b, len(x)) if len(b) else np.zeros_like(x)
            babble += np.roll(b, int(rng.integers(len(x))))
        x = effects.mix_at_snr(x, babble, spec.snr_db)
    x = effects.normalize_peak(x, spec.gain)
    duration = len(x) / SAMPLE_RATE
    phones, words = _alignments(synth, spec.text, duration, engine.phoneme_count)
    return x, phones, words


def _render_chunk(args: tuple[str, list[UttSpec]]) -> list[dict]:
    """Worker: render a chunk of utterances in a fresh process and write their WAV files."""
    import soundfile as sf

    from kd.corpus.espeak import Espeak

    root, specs = args
    engine = Espeak()
    records = []
    for spec in specs:
        x, phones, words = _render(spec, engine)
        pcm = np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)
        buf = io.BytesIO()
        sf.write(buf, pcm, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        atomic_write_bytes(Path(root) / spec.wav_path, buf.getvalue(), durable=False)
        records.append({
            "utt": spec.utt, "domain": spec.domain, "split": spec.split, "speaker": spec.speaker.id,
            "path": spec.wav_path, "num_samples": int(len(pcm)), "duration": round(len(pcm) / SAMPLE_RATE, 4),
            "text": spec.text, "voice": spec.speaker.voice, "variant": spec.speaker.variant,
            "pitch": spec.speaker.pitch, "rate": spec.speaker.rate, "noise": spec.noise,
            "snr_db": spec.snr_db, "rt60": spec.rt60, "phones": phones, "words": words,
        })
    return records


def plan_corpus(preset: CorpusPreset, seed: int) -> list[UttSpec]:
    """Every utterance of the corpus, with all random choices drawn up front (seeded)."""
    from kd.corpus.sentences import generate_splits

    counts = {f"{d}/{s}": preset.sizes[d][s].utterances for d in preset.sizes for s in SPLITS}
    counts["babble"] = BABBLE_SENTENCES
    sentences = generate_splits(counts, seed=seed, min_words=preset.min_words, max_words=preset.max_words,
                                task=preset.task)
    babble_pool = sentences["babble"]
    specs: list[UttSpec] = []
    for d_index, domain in enumerate(DOMAINS):
        if domain.name not in preset.sizes:
            continue
        speakers = make_speakers(domain, preset.sizes[domain.name], seed)
        for s_index, split in enumerate(SPLITS):
            spk_list = speakers[split]
            for i, text in enumerate(sentences[f"{domain.name}/{split}"]):
                spk = spk_list[i % len(spk_list)]
                utt = f"{spk.id}-{i:06d}"
                rng = np.random.default_rng([seed, d_index, s_index, i])
                noise = snr = rt60 = None
                babble: tuple = ()
                if rng.random() < domain.reverb_prob:
                    rt60 = round(float(rng.uniform(*domain.rt60)), 3)
                if rng.random() < domain.noise_prob:
                    snr = float(domain.snr_db[int(rng.integers(len(domain.snr_db)))])
                    noise = "babble" if rng.random() < domain.babble_prob else "pink"
                    if noise == "babble":
                        babble = tuple(
                            (babble_pool[int(rng.integers(len(babble_pool)))],
                             str(DOMAINS[int(rng.integers(len(DOMAINS)))].voices[0]),
                             str(domain.variants[int(rng.integers(len(domain.variants)))]),
                             int(rng.integers(20, 80)), int(rng.integers(140, 220)))
                            for _ in range(int(rng.integers(3, 6)))
                        )
                specs.append(UttSpec(
                    utt=utt, domain=domain.name, split=split, speaker=spk, text=text,
                    wav_path=f"wav/{domain.name}/{split}/{utt}.wav", gain=round(float(rng.uniform(0.3, 0.9)), 3),
                    noise=noise, snr_db=snr, rt60=rt60, babble=babble, seed=(seed, d_index, s_index, i, 1),
                ))
    return specs


def _write_data_dir(root: Path, domain: str, split: str, records: list[dict]) -> None:
    d = root / domain / split
    recs = sorted(records, key=lambda r: r["utt"])
    rel = os.path.relpath(root, d)
    atomic_write_text(d / "wav.scp", "".join(f"{r['utt']} {rel}/{r['path']}\n" for r in recs))
    atomic_write_text(d / "text", "".join(f"{r['utt']} {r['text']}\n" for r in recs))
    atomic_write_text(d / "utt2spk", "".join(f"{r['utt']} {r['speaker']}\n" for r in recs))
    atomic_write_text(d / "utt2dom", "".join(f"{r['utt']} {r['domain']}\n" for r in recs))
    spk2utt: dict[str, list[str]] = {}
    for r in recs:
        spk2utt.setdefault(r["speaker"], []).append(r["utt"])
    atomic_write_text(d / "spk2utt", "".join(f"{s} {' '.join(u)}\n" for s, u in sorted(spk2utt.items())))
    lines = [json.dumps({"utt": r["utt"], "phones": r["phones"], "words": r["words"]}) for r in recs]
    atomic_write_text(d / "alignments.jsonl", "".join(line + "\n" for line in lines))


def summarize(records: list[dict]) -> dict:
    """Utterances, speakers and hours of audio per domain and split."""
    out: dict = {}
    for r in records:
        s = out.setdefault(r["domain"], {}).setdefault(r["split"], {"utterances": 0, "hours": 0.0, "speakers": set()})
        s["utterances"] += 1
        s["hours"] += r["duration"] / 3600.0
        s["speakers"].add(r["speaker"])
    for splits in out.values():
        for s in splits.values():
            s["speakers"] = len(s["speakers"])
            s["hours"] = round(s["hours"], 4)
    return out


def task_vocabulary(preset: str | CorpusPreset) -> list[str]:
    """Every word that a corpus preset's grammar can produce, sorted."""
    from kd.corpus import alnum, sentences

    task = (PRESETS[preset] if isinstance(preset, str) else preset).task
    return sorted(alnum.vocabulary() if task is sentences.Task.ALNUM else sentences.vocabulary())


def engine_version() -> str:
    """The eSpeak NG build that renders the audio (the pinned ``espeakng-loader`` package)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"espeakng-loader {version('espeakng-loader')}"
    except PackageNotFoundError:
        return "espeakng-loader unknown"


def split_digest(specs: list[UttSpec], engine: str) -> str:
    """What identifies one split's audio without rendering it: the corpus version, the engine and every
    utterance's plan (text, speaker, effects, seeds), 16 hex digits of SHA-256."""
    h = hashlib.sha256(f"corpus {CORPUS_VERSION}\n{engine}\n".encode("utf-8"))
    for spec in specs:
        h.update(json.dumps(asdict(spec), sort_keys=True).encode("utf-8") + b"\n")
    return h.hexdigest()[:16]


def _write_planned_dir(root: Path, domain: str, split: str, specs: list[UttSpec], digest: str, engine: str) -> None:
    """A split's data dir from its plan: transcripts, speakers and the WAV paths (the audio may not be
    rendered yet: reading it is then an error naming the missing file), and ``corpus_split.json``."""
    d = root / domain / split
    ordered = sorted(specs, key=lambda spec: spec.utt)
    rel = os.path.relpath(root, d)
    atomic_write_text(d / "wav.scp", "".join(f"{u.utt} {rel}/{u.wav_path}\n" for u in ordered))
    atomic_write_text(d / "text", "".join(f"{u.utt} {u.text}\n" for u in ordered))
    atomic_write_text(d / "utt2spk", "".join(f"{u.utt} {u.speaker.id}\n" for u in ordered))
    atomic_write_text(d / "utt2dom", "".join(f"{u.utt} {u.domain}\n" for u in ordered))
    spk2utt: dict[str, list[str]] = {}
    for u in ordered:
        spk2utt.setdefault(u.speaker.id, []).append(u.utt)
    atomic_write_text(d / "spk2utt", "".join(f"{k} {' '.join(v)}\n" for k, v in sorted(spk2utt.items())))
    write_json(d / SPLIT_FILE, {"version": CORPUS_VERSION, "engine": engine, "digest": digest,
                                "utterances": len(ordered)})


def _split_records(root: Path, domain: str, split: str) -> list[dict]:
    path = root / domain / split / "records.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def build_corpus(out_dir: str | os.PathLike, preset: str | CorpusPreset = "cpu", seed: int = 0,
                 jobs: int | None = None, progress: bool = True, splits: list[str] | None = None) -> dict:
    """Synthesise the corpus into ``out_dir``; a split already rendered with the same plan is kept.

    Args:
        splits: the ``"domain/split"`` names whose audio is rendered (None: every split). Every split's
            data dir is written from the plan either way (transcripts, speakers, WAV paths and
            ``corpus_split.json`` with the split's :func:`split_digest`), so that a recipe can read
            transcripts and identify the data of a split (``kd.recipes.shipped.data_digest``) whose audio it never
            needs; a later call renders the rest. The audio of an utterance does not depend on which
            splits are rendered: the utterances are rendered in the same chunks of the whole plan.

    Returns the summary written to ``corpus.json`` plus synthesis timings.
    """
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"Unknown corpus preset {preset!r}; expected one of {sorted(PRESETS)}")
        preset = PRESETS[preset]
    root = Path(out_dir)
    all_splits = [f"{d}/{s}" for d in preset.sizes for s in SPLITS]
    wanted = all_splits if splits is None else list(dict.fromkeys(splits))
    unknown = sorted(set(wanted) - set(all_splits))
    if unknown:
        raise ValueError(f"splits: unknown {unknown}; expected some of {all_splits}")
    engine = engine_version()
    specs = plan_corpus(preset, seed)
    by_split: dict[str, list[UttSpec]] = {name: [] for name in all_splits}
    for spec in specs:
        by_split[f"{spec.domain}/{spec.split}"].append(spec)
    digests = {name: split_digest(by_split[name], engine) for name in all_splits}
    # a split is rendered when its marker holds its digest
    rendered = {name for name in all_splits if is_done(root / name, {"digest": digests[name]})}
    config = {"version": CORPUS_VERSION, "preset": preset.to_dict(), "seed": seed,
              "domains": [asdict(DOMAIN_BY_NAME[d]) for d in preset.sizes], "engine": engine}
    todo = [name for name in wanted if name not in rendered]
    if not todo and is_done(root, {**config, "rendered": sorted(rendered)}):
        summary = json.loads((root / "corpus.json").read_text())
        summary["skipped"] = True
        return summary
    clear_done(root)
    for name in all_splits:
        domain, split = name.split("/")
        _write_planned_dir(root, domain, split, by_split[name], digests[name], engine)
    # the chunks of the whole plan that hold an utterance to render: eSpeak keeps state from one
    # utterance to the next within a worker, so an utterance's audio depends on its chunk
    chunks = [specs[i:i + CHUNK_SIZE] for i in range(0, len(specs), CHUNK_SIZE)]
    todo_set = set(todo)
    chunks = [(str(root), c) for c in chunks if any(f"{u.domain}/{u.split}" in todo_set for u in c)]
    jobs = jobs or os.cpu_count() or 1
    start = time.perf_counter()
    records: list[dict] = []
    if chunks:
        # import what the workers use once here: forked workers inherit it (scipy.signal alone
        # takes seconds to import, which every fresh worker would otherwise pay)
        import scipy.signal  # noqa: F401
        import soundfile  # noqa: F401

        from kd.corpus import effects  # noqa: F401

        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(processes=min(jobs, len(chunks)), maxtasksperchild=1) as pool:
            it = pool.imap(_render_chunk, chunks)
            if progress:
                from tqdm import tqdm

                n = sum(len(c) for _, c in chunks)
                it = tqdm(it, total=len(chunks), desc=f"synthesising {n} utterances", unit="chunk")
            for chunk_records in it:
                records.extend(chunk_records)
    elapsed = time.perf_counter() - start
    for name in todo:
        domain, split = name.split("/")
        mine = [r for r in records if r["domain"] == domain and r["split"] == split]
        _write_data_dir(root, domain, split, mine)
        atomic_write_text(root / name / "records.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in mine))
        mark_done(root / name, {"digest": digests[name]})
        rendered.add(name)
    # the root files over every rendered split, in the plan's order
    done_records = [r for name in all_splits if name in rendered for r in _split_records(root, *name.split("/"))]
    atomic_write_text(root / "manifest.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in done_records))
    phones = sorted({p for r in done_records for _, _, p in r["phones"]})
    atomic_write_text(root / "phones.txt", "".join(p + "\n" for p in phones))
    summary = {"version": CORPUS_VERSION, "preset": preset.name, "seed": seed, "sample_rate": SAMPLE_RATE,
               "splits": summarize(done_records), "num_phones": len(phones),
               "hours": round(sum(r["duration"] for r in done_records) / 3600.0, 4),
               "not_rendered": [name for name in all_splits if name not in rendered]}
    write_json(root / "corpus.json", summary)
    audio_s = sum(r["duration"] for r in records)
    timing = {"synthesis_seconds": round(elapsed, 2), "audio_seconds": round(audio_s, 1),
              "realtime_factor": round(audio_s / max(elapsed, 1e-9), 1), "jobs": jobs}
    mark_done(root, {**config, "rendered": sorted(rendered)}, **timing)
    return {**summary, **timing, "skipped": False}
