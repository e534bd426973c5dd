"""Evaluation of trained models: decoding, error rates and the evidence behind claims (``kd eval``).

- :mod:`kd.evaluation.decode`, :mod:`kd.evaluation.beam`: CTC greedy and joint CTC/attention beam
  search of the toolkit's ASR models (ESPnet's search, and the same search batched over utterances);
- :mod:`kd.evaluation.hf_ctc`: greedy CTC transcription of Hugging Face ``*ForCTC`` folders;
- :mod:`kd.evaluation.evaluate`: WER/CER per domain, parameters and real-time factor (``kd eval``);
- :mod:`kd.evaluation.conditions`: error rates of the built-in corpus split by recording condition;
- :mod:`kd.evaluation.evidence`: paired intervals over seeds and utterances, verdicts on claims.

Nothing here imports the training code (:mod:`kd.training`, :mod:`kd.ssl`): models are read from
their folders (:mod:`kd.models.model_dir`, :func:`kd.compression.io.load_speech_model`).
"""
