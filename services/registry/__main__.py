"""`python -m services.registry`: serves RegistryService and consumes its events until SIGTERM."""

import sys

from posttrain.rpc import service_main
from services.registry.handlers import event_workers
from services.registry.servicer import SERVICE_NAME, register
from services.registry.settings import RegistrySettings

if __name__ == "__main__":
    sys.exit(
        service_main(
            RegistrySettings(), register, service_names=[SERVICE_NAME], workers=event_workers
        )
    )
