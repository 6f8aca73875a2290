"""`python -m services.intake`: serves IntakeService and consumes data.approved until SIGTERM."""

import sys

from posttrain.rpc import service_main
from services.intake.servicer import SERVICE_NAME, register, workers
from services.intake.settings import IntakeSettings

if __name__ == "__main__":
    sys.exit(
        service_main(IntakeSettings(), register, service_names=[SERVICE_NAME], workers=workers)
    )
