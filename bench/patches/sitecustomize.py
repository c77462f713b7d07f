"""Experiment only (`python -m bench.experiments guard`), never the product: loaded into `wjp worker` through
PYTHONPATH, it rebuilds the claim and success statements with their status guard written so that the
planner cannot match it to the partial indexes' predicates (`status || '' IN (…)`), leaving the primary key
as their only access path. The statements are otherwise those of ledger/transitions.py."""

import os

if os.environ.get("WJP_EXPERIMENT_HIDE_GUARD") == "1":
    from sqlalchemy import literal_column

    import ledger.transitions as transitions
    from ledger.schema import jobs
    from ledger.states import Status

    def _hidden(statuses):  # type: ignore[no-untyped-def]
        values = [literal_column(f"'{Status(s).value}'") for s in sorted(statuses)]
        return jobs.c.status.concat(literal_column("''")).in_(values)

    _original = transitions.status_in
    transitions.status_in = _hidden
    transitions._CLAIM = transitions._build_claim()
    transitions._SUCCEED = transitions._build_succeed()
    transitions.status_in = _original
