"""Evaluation: the sample-record schema, the metrics, and the report (PAPER.md sections 5, 6 and 8).

- :mod:`autodeco.evaluation.records`: setting keys and the ``samples.jsonl`` record, written
  durably and read back tolerating a half-written last line (resume after a kill).
- :mod:`autodeco.evaluation.metrics`: pure math: unbiased Pass@k, Pass@1 over seeds, paired
  bootstrap, and the expert-guided oracle search.
- :mod:`autodeco.evaluation.summary`: every method's scores, the oracle and the paired comparisons
  as one JSON-ready dict (rendered as ``report.md`` and figures by :mod:`autodeco.views.report`).
- :mod:`autodeco.evaluation.methods`: the methods ``autodeco eval`` compares (the comparison methods'
  rows live in :data:`autodeco.sampling.settings.COMPARISON_METHODS`).
- :mod:`autodeco.evaluation.config`: :class:`~autodeco.evaluation.config.EvalConfig`, what to evaluate
  (its fields are ``autodeco eval``'s flags).
- :mod:`autodeco.evaluation.runner`: ``autodeco eval``, every method on the same problems, in stages
  planned by :mod:`~autodeco.evaluation.plan`, on the model of :mod:`~autodeco.evaluation.loading`,
  recorded in ``run.json`` (:mod:`~autodeco.evaluation.run_record`) and ``samples.jsonl``
  (:mod:`~autodeco.evaluation.store`).
"""

from autodeco.evaluation.metrics import (
    OracleChoice,
    PairedDifference,
    default_ks,
    mean_and_std,
    oracle_from_outcomes,
    oracle_search,
    paired_bootstrap,
    pass_at_1_by_seed,
    pass_at_k,
    pass_at_k_curve,
    pick_best,
)
from autodeco.evaluation.records import (
    AUTODECO,
    GREEDY,
    RecordWriter,
    SampleRecord,
    parse_static_setting,
    read_records,
    static_setting,
)
from autodeco.evaluation.summary import (
    ORACLE,
    ORACLE_LABEL,
    build_summary,
    pick_trace_record,
)

__all__ = [
    "AUTODECO",
    "GREEDY",
    "ORACLE",
    "ORACLE_LABEL",
    "OracleChoice",
    "PairedDifference",
    "RecordWriter",
    "SampleRecord",
    "build_summary",
    "default_ks",
    "mean_and_std",
    "oracle_from_outcomes",
    "oracle_search",
    "paired_bootstrap",
    "parse_static_setting",
    "pass_at_1_by_seed",
    "pass_at_k",
    "pass_at_k_curve",
    "pick_best",
    "pick_trace_record",
    "read_records",
    "static_setting",
]
