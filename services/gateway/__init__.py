"""The gateway service: inference routing, deployments and A/B experiments (InferenceGateway in proto/posttrain/v1/gateway.proto)."""
