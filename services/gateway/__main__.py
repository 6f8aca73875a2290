"""`python -m services.gateway`: serves InferenceGateway, deploys what deployment.requested
asks for, and publishes inference events until SIGTERM."""

import sys

from posttrain.rpc import service_main
from services.gateway.handlers import workers
from services.gateway.servicer import SERVICE_NAME, register
from services.gateway.settings import GatewaySettings

if __name__ == "__main__":
    sys.exit(
        service_main(GatewaySettings(), register, service_names=[SERVICE_NAME], workers=workers)
    )
