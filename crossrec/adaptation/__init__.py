"""Cross-domain adaptation: frozen LLM text embeddings -> shared item adaptor -> sequence user encoder.

Modules: ``data`` (contract loader + tensors), ``model`` (adaptor, encoder, scorer), ``strategies``
(transfer strategies by name), ``trainer``, ``baselines``, ``pipeline`` (the full comparison run),
``artifacts`` (save/load a trained model), ``inference`` (scoring API for streaming and batch).
Import heavy pieces from their modules; this package file stays light.
"""
