"""Update: how the store learns from outcomes (Mem^p's third part).

- :mod:`memp_cli.update.outcomes`: an append-only ledger of which memory was used by which
  run and how that run ended. A memory's usage statistics are derived from it, so outcome
  counting never rewrites a memory file (a hand edit and a cron ingest cannot fight over one).
- :mod:`memp_cli.update.history`: every content a memory file has had, by which command or by
  hand, when and why; ``diff`` between any two versions and ``revert`` (itself a version).
- :mod:`memp_cli.update.trash`: forgetting on purpose. A forgotten (or pruned) memory moves to
  the store's trash with its reason and leaves a tombstone, so distill never rebuilds it;
  ``restore`` brings it back whole. Nothing is deleted without a trash step.
"""
