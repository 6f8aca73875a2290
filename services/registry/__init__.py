"""The registry service: base models, model versions, stages/aliases and lineage (RegistryService in proto/posttrain/v1/registry.proto)."""
