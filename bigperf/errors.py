"""Exceptions that more than one part of bigperf raises or catches.

LayerRefused is raised by the layers (bigperf.nn) and caught by bigperf.swap, so it lives
here rather than in either; bigperf.nn.sparse_linear re-exports it for older imports.
"""

from __future__ import annotations


class LayerRefused(ValueError):
    """This layer cannot take the requested format (swap keeps it and reports why)."""
