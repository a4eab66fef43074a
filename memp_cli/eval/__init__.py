"""Retrieval evaluation: ranking metrics (:mod:`.metrics`) and task labels (:mod:`.labels`)."""
