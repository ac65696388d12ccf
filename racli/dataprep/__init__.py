"""`ra data prepare`: a corpus -> nanoGPT's token files, with meta.json and a content hash.

One module per job:

* ``sources``    what the SOURCE arguments name (files, folders with globs, JSONL, Parquet,
                 Hugging Face datasets), cut into chunks of documents;
* ``tokenizers`` GPT-2 BPE (tiktoken), a byte-level BPE trained on the corpus (Hugging Face
                 ``tokenizers``), raw bytes;
* ``split``      which whole documents go to the validation split (deterministic from a seed);
* ``writer``     the output folder: temporary files, meta.json, the final rename;
* ``identity``   the content hash of token files (shared with ``ra train``);
* ``prepare``    the job itself: parallel tokenisation, progress, the size limit.

Nothing here imports torch.
"""

from __future__ import annotations
