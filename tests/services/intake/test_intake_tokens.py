"""Token statistics with a named base model's own tokenizer."""

from __future__ import annotations

import grpc
from conftest import SAMPLE_ROWS, jsonl, rpc_error
from tokenizers import Tokenizer, models, pre_tokenizers

from posttrain.data import HFTokenCounter
from posttrain.v1 import intake_pb2


def _base_folder(tmp_path):
    """A base model folder whose tokenizer splits on whitespace: easy to count by hand."""
    words = sorted({w for r in SAMPLE_ROWS for m in r["messages"] for w in m["content"].split()})
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder = tmp_path / "base"
    folder.mkdir()
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    return folder


def _upload(name: str, base: str):
    yield intake_pb2.UploadDatasetRequest(
        metadata=intake_pb2.UploadMetadata(
            dataset=name,
            format=intake_pb2.DATA_FORMAT_JSONL,
            schema=intake_pb2.ROW_SCHEMA_CHAT,
            tokenizer_base_model=base,
        )
    )
    yield intake_pb2.UploadDatasetRequest(chunk=jsonl(SAMPLE_ROWS))


def test_named_base_model_tokenizer_counts_the_tokens(intake, tmp_path):
    folder = _base_folder(tmp_path)
    intake.base_models.refs["tiny-base"] = intake.store.put_folder(folder, "base-models/tiny")
    with_base = intake.stub("alice").UploadDataset(_upload("tok", "tiny-base")).report
    approx = intake.stub("alice").UploadDataset(_upload("tok-approx", "")).report
    counter = HFTokenCounter.from_pretrained(folder)
    words = sum(counter.count(m["content"]) for r in SAMPLE_ROWS for m in r["messages"])
    assert words == sum(len(m["content"].split()) for r in SAMPLE_ROWS for m in r["messages"])
    # The report's total is at least the content tokens (templates may add per-message
    # overhead), and differs from the byte-based approximation.
    assert with_base.tokens_total >= words
    assert with_base.tokens_total != approx.tokens_total


def test_unknown_base_model_is_refused_naming_it(intake):
    err = rpc_error(lambda: intake.stub("alice").UploadDataset(_upload("tok", "no-such-base")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-base" in err.details()
