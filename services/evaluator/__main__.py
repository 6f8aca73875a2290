"""`python -m services.evaluator`: serves EvaluationService and evaluates every
model.registered (consumer group "evaluator") until SIGTERM."""

import sys

from posttrain.rpc import service_main
from services.evaluator.servicer import SERVICE_NAME, register, workers
from services.evaluator.settings import EvaluatorSettings

if __name__ == "__main__":
    sys.exit(
        service_main(EvaluatorSettings(), register, service_names=[SERVICE_NAME], workers=workers)
    )
