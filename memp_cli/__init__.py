"""memp: procedural memory for LLM agents (Mem^p, arXiv 2508.06433)."""

__version__ = "0.1.0"
