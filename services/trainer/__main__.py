"""`python -m services.trainer`: serves TrainingService until SIGTERM."""

import sys

from posttrain.rpc import service_main
from services.trainer.servicer import SERVICE_NAME, register
from services.trainer.settings import TrainerSettings

if __name__ == "__main__":
    sys.exit(service_main(TrainerSettings(), register, service_names=[SERVICE_NAME]))
