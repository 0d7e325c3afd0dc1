"""Shared data: trajectory files, their tokens, and the decoding-command phrasings.

Training reads trajectories to learn the heads; evaluation reads them as held-out data, and
both append the same decoding commands to prompts. So the formats live here, below both:

- ``trajectories``: the JSONL format ``autodeco sample`` writes, read and validated
  (:class:`~autodeco.data.trajectories.Trajectory`, ``read_trajectories``, ``data_fingerprint``).
- ``tokens``: completion-only labels and right-padded batches
  (:class:`~autodeco.data.tokens.TrainingExample`, ``tokenize_trajectory``, ``collate``).
- ``phrasings``: low- and high-diversity command phrasings (``control_phrasings.json``) and
  ``append_command``.
"""
