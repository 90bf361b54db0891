"""crossrec: cross-domain recommendation with LLM item embeddings, batch and streaming."""

__version__ = "0.1.0"
