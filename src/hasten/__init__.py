"""hasten: fast inference for generative models (sparse video attention, LTR LLM scheduling)."""

__version__ = "0.1.0"
