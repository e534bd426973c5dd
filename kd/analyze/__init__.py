"""Layer-wise analysis of the toolkit's models, the stage between data and plans (``kd analyze``, ``kd compare``).

- :mod:`kd.analyze.layerwise`: every analysis of the ``analysis`` package on a model and a data dir,
  in one pass, into one report (``kd analyze``);
- :mod:`kd.analyze.espnet_capture`: the toolkit's ESPnet ASR models as ``analysis.capture.LayerwiseModel``;
- :mod:`kd.analyze.compare`: linear CKA between the layers of several models (``kd compare``);
- :mod:`kd.analyze.summary`, :mod:`kd.analyze.figures`: readings and figures of several reports.

The metrics themselves are in the top-level ``analysis`` package, which never imports ``kd``.
"""
