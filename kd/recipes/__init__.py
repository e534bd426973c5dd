"""Recipe building blocks: what ``recipes/*/run.py`` strings together, over every stage of the pipeline.

Machinery every recipe uses:

- :mod:`kd.recipes.stages`: numbered stages with completion markers; presets checked up front;
- :mod:`kd.recipes.parallel`: independent jobs (training runs, evaluations) on worker processes;
- :mod:`kd.recipes.shipped`: models committed with a recipe, restored by fingerprint;
- :mod:`kd.recipes.experiment`: conditions, student runs and their evaluations, seed summaries.

The stages of each recipe as library functions:

- :mod:`kd.recipes.multidomain`, :mod:`kd.recipes.multidomain_stages`: ``recipes/multidomain_ukd``;
- :mod:`kd.recipes.asr_compress`: ``recipes/asr_compress``;
- :mod:`kd.recipes.plan_study`: the plans and results table of ``recipes/w2v2_compress``.

Nothing below this package imports it.
"""
