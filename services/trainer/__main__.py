"""`python -m services.trainer [all|api|worker]`

  all (default)  serves TrainingService and runs one training worker
  api            serves TrainingService (and relays its outbox); no training here
  worker         one training worker, no gRPC server: start more to add capacity

Each runs until SIGTERM or SIGINT; a worker stopping mid-job checkpoints it at the next
step boundary and hands it back (QUEUED) for the next idle worker.
"""

import sys

from services.trainer.settings import TrainerSettings

USAGE = "usage: python -m services.trainer [all|api|worker]"


def main(argv: list[str]) -> int:
    mode = argv[1] if len(argv) > 1 else "all"
    if mode not in ("all", "api", "worker") or len(argv) > 2:
        print(USAGE, file=sys.stderr)
        return 2
    from services.trainer.runner import run_all, run_api, run_worker

    settings = TrainerSettings()
    return {"all": run_all, "api": run_api, "worker": run_worker}[mode](settings)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
