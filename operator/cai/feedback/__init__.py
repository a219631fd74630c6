"""AI feedback (RL-CAI): the multiple-choice prompts a feedback model answers (`prompts`), the
arithmetic from option log-probabilities to soft labels (`labels`), the labeller that runs them
through a backend (`labeller`), and the statistics of judgements (`statistics`).

A library under the stages `label-preferences`, `train-preference-model` and `evaluate` (and
`bench/labeling.py`); it talks to models only through `cai.models.backends.Backend`, so nothing
here imports torch.
"""
