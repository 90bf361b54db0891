"""Text encoders by name: the one place that turns item text into vectors.

Everything that embeds text (the Spark job, the streaming consumer for new items, the adaptation
job) goes through :func:`get_encoder`, so all of them produce vectors in the same space. This
package never imports Spark: it is plain torch + transformers and runs anywhere.
"""

from __future__ import annotations

from crossrec.encoders.base import DTYPES, TextEncoder
from crossrec.encoders.registry import ENCODER_NAMES, encoder_version, get_encoder

__all__ = ["DTYPES", "ENCODER_NAMES", "TextEncoder", "encoder_version", "get_encoder"]
