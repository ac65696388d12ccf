"""`ra data prepare`: a corpus -> nanoGPT's token files, with meta.json and a content hash.

Design notes: docs/data.md.
"""

from __future__ import annotations
