"""`python -m services.gateway`: serves InferenceGateway until SIGTERM."""

import sys

from posttrain.rpc import service_main
from services.gateway.servicer import SERVICE_NAME, register
from services.gateway.settings import GatewaySettings

if __name__ == "__main__":
    sys.exit(service_main(GatewaySettings(), register, service_names=[SERVICE_NAME]))
