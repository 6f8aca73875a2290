"""Token counts with the named base model's own tokenizer.

An upload may name a registered base model (UploadMetadata.tokenizer_base_model); its
tokenizer files are fetched from the base model's folder artifact once, cached by the
folder's sha256, and used for the token budget and statistics. Without a name the
approximate counter of posttrain.data is used.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from posttrain.data import HFTokenCounter, TokenCounter
from posttrain.storage import ArtifactRef, ArtifactStore

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# base model name -> the ArtifactRef of its folder manifest (raises if unknown)
BaseModelWeights = Callable[[str], ArtifactRef]


class TokenizerCache:
    def __init__(self, store: ArtifactStore, cache_dir: Path):
        self.store = store
        self.cache_dir = Path(cache_dir)
        self._counters: dict[str, TokenCounter] = {}

    def counter_for(self, weights: ArtifactRef) -> TokenCounter:
        if weights.sha256 in self._counters:
            return self._counters[weights.sha256]
        target = self.cache_dir / weights.sha256
        if not (target / "tokenizer.json").is_file():
            manifest = self.store.get_manifest(weights)
            wanted = [e for e in manifest.files if e.path in TOKENIZER_FILES]
            if not any(e.path == "tokenizer.json" for e in wanted):
                raise ValueError(f"the base model folder {weights.uri} has no tokenizer.json")
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".tok-", dir=self.cache_dir))
            for entry in wanted:
                (staging / entry.path).write_bytes(self.store.get_bytes(self.store.file_ref(entry)))
            staging.rename(target)  # whole or not at all
        counter = HFTokenCounter.from_pretrained(target)
        self._counters[weights.sha256] = counter
        return counter
