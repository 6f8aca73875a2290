"""Base models: a Hugging Face folder uploaded to the real S3 server, inspected and recorded."""

from __future__ import annotations

import pytest
from registry_factories import uid, write_hf_folder

from posttrain.db import session_scope
from posttrain.registry import base_models
from posttrain.registry.errors import BaseModelExists
from posttrain.rpc.errors import FailedPrecondition, InvalidArgument


def test_an_uploaded_folder_is_recorded_by_its_manifest_hash(engine, store, tmp_path):
    ref = store.put_folder(write_hf_folder(tmp_path / "tiny"), f"base-models/tiny-{uid()}")
    folder = base_models.inspect_folder(store, ref.uri)
    assert folder.weights.sha256 == ref.sha256 and folder.weights.uri == ref.uri
    assert folder.architecture == "LlamaForCausalLM"
    assert folder.parameters == 2 * 8 * 4  # counted from the safetensors header
    assert folder.total_size_bytes == sum(p.stat().st_size for p in (tmp_path / "tiny").iterdir())
    # The content address of the manifest names the same folder.
    by_blob = f"s3://{store.bucket}/blobs/sha256/{ref.sha256}"
    assert base_models.inspect_folder(store, by_blob).weights.sha256 == ref.sha256

    with session_scope(engine) as session:
        row, created = base_models.register(
            session, name="tiny", folder=folder, actor="trainer-bot", chat_template_revision="v1"
        )
        assert created and row.weights_sha256 == ref.sha256
    with session_scope(engine) as session:
        assert not base_models.register(session, name="tiny", folder=folder, actor="x")[1]

    other = store.put_folder(
        write_hf_folder(tmp_path / "bigger", hidden=8), f"base-models/b-{uid()}"
    )
    with session_scope(engine) as session:
        with pytest.raises(BaseModelExists) as err:
            base_models.register(
                session, name="tiny", folder=base_models.inspect_folder(store, other.uri), actor="x"
            )
    assert ref.sha256 in str(err.value) and other.sha256 in str(err.value)


def test_bad_sources_are_refused_with_what_is_wrong(store, tmp_path):
    with pytest.raises(FailedPrecondition) as err:
        base_models.inspect_folder(
            store, f"s3://{store.bucket}/base-models/never-uploaded/manifest.json"
        )
    assert "does not exist in the artifact store" in str(err.value)

    (tmp_path / "no-config").mkdir()
    (tmp_path / "no-config" / "weights.bin").write_bytes(b"\0" * 16)
    ref = store.put_folder(tmp_path / "no-config", f"base-models/nc-{uid()}")
    with pytest.raises(InvalidArgument) as err:
        base_models.inspect_folder(store, ref.uri)
    assert err.value.field == "source_uri" and "no config.json" in str(err.value)

    for uri in ("", "http://example.com/x", "s3://some-other-bucket/base-models/x/manifest.json"):
        with pytest.raises(InvalidArgument) as err:
            base_models.inspect_folder(store, uri)
        assert err.value.field == "source_uri"
