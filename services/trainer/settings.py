"""Settings of the trainer service (API and workers), from POSTTRAIN_* environment variables."""

from pydantic import Field

from posttrain.config import SERVICE_PORTS
from posttrain.rpc import RpcServiceSettings


class TrainerSettings(RpcServiceSettings):
    service_name: str = Field("trainer", description="name in logs, events and metrics")

    # The services SubmitJob asks, with the caller's own API key (share the api_keys
    # database between services: POSTTRAIN_AUTH_DB_URL).
    intake_target: str = Field(
        f"127.0.0.1:{SERVICE_PORTS['intake']}", description="intake host:port (GetVersion)"
    )
    registry_target: str = Field(
        f"127.0.0.1:{SERVICE_PORTS['registry']}", description="registry host:port (GetBaseModel)"
    )
    upstream_timeout_s: float = Field(10.0, description="deadline of each intake/registry call")
    default_checkpoint_every: int = Field(
        50,
        description="checkpoint cadence (steps) of jobs whose config does not set "
        "checkpoint_every, so that every job can resume after a worker dies",
    )
    max_job_processes: int = Field(
        8,
        description="most processes (GPUs) a job may ask for in resources.processes: the "
        "GPUs of the largest training worker",
    )
    max_job_nodes: int = Field(
        1,
        description="most worker nodes a job may ask for in resources.nodes; above 1 only "
        "when the workers share a folder (worker_shared_dir) for multi-node checkpoints",
    )
    watch_poll_s: float = Field(0.5, description="how often WatchJob looks for new progress")

    # Workers.
    worker_group: str = Field(
        "trainer-workers", description="Kafka consumer group of the workers (training.requested)"
    )
    worker_id: str = Field("", description="name of this worker; empty = <host>-<pid>-<random>")
    worker_cache_dir: str = Field(
        "", description="base models and datasets by sha256; empty = <state_dir>/cache"
    )
    worker_work_dir: str = Field(
        "", description="folders of running attempts; empty = <state_dir>/jobs"
    )
    worker_heartbeat_interval_s: float = Field(5.0, description="heartbeat of a running job")
    worker_stale_after_s: float = Field(
        60.0, description="a running job whose heartbeat is older is taken over by another worker"
    )
    worker_scan_interval_s: float = Field(
        5.0,
        description="an idle worker looks for a job at least this often (training.requested "
        "wakes it at once; the scan finds jobs whose event went to a busy worker, and jobs "
        "of dead workers)",
    )
    worker_max_processes: int = Field(
        0,
        description="largest job (resources.processes) this worker takes; 0 = the GPUs it "
        "sees, at least 1. Set it to run several CPU processes (gloo) on a worker without GPUs",
    )
    worker_cancel_grace_s: float = Field(
        300.0,
        description="a job of several processes that has not stopped at a step boundary this "
        "long after its cancel is terminated (it resumes from its last checkpoint)",
    )
    worker_shared_dir: str = Field(
        "",
        description="a folder every worker node sees (a ReadWriteMany volume), where the "
        "nodes of a multi-node job stage sharded checkpoints; empty = this worker takes no "
        "multi-node job",
    )
    worker_node_address: str = Field(
        "",
        description="the address other worker nodes reach this one at, when it hosts a "
        "multi-node job's rendezvous (the pod IP); empty = this host's resolved address",
    )
    worker_gang_timeout_s: float = Field(
        600.0,
        description="how long the first node of a multi-node job waits for the others to "
        "join before the job fails (retryable)",
    )
    worker_checkpoint_keep_last: int = Field(2, description="checkpoints kept per job")
    worker_torch_threads: int = Field(0, description="torch CPU threads; 0 = torch's default")

    # The comparison collector (services/trainer/comparisons.py).
    evaluator_target: str = Field(
        f"127.0.0.1:{SERVICE_PORTS['evaluator']}",
        description="evaluator host:port (ListReports of the candidates)",
    )
    registry_api_key: str = Field(
        "",
        description="the trainer's own key for the collector's reads of the registry (and the "
        "evaluator): admin in a multi-tenant install; empty = no key",
    )
    evaluator_api_key: str = Field("", description="its key for the evaluator; empty = the above")
    comparison_poll_s: float = Field(5.0, description="how often the collector looks")
    comparison_evaluation_timeout_s: float = Field(
        1800.0,
        description="how long after training a candidate may wait for its evaluation report "
        "before it is measured without one",
    )
