"""Experiments: comparisons of several training runs, one option of the ``experiment`` config group
each. ``python train.py experiment=NAME`` calls the function the option names in ``_target_``
with the typed and the untyped config, the run folders, the overrides and the parent run."""
