"""Several processes (torchrun, CPU/gloo, FSDP2) against one plain process.

One torchrun of 2 processes (this file run as a script: `_worker`) trains every scenario
in one process group; the cancelled scenario is then resumed by NEW processes through
`distributed.launch`, i.e. the recipe `python -m posttrain.training` under torchrun.
Single-process references run in the pytest process with batch_size x 2: the same global
batch. Tolerances: 2e-6 relative on losses and eval losses (CPU fp32; measured <= 1.7e-7:
per-rank padding and summation order are the only differences), 1e-6 absolute for the
resume (measured: identical).

QLoRA: on CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights in place at the first
eval forward and then uses another kernel (eval losses differ by ~2e-6 relative). Under FSDP
the repacking is turned off (re-gathered shards would undo it), so the one-process
references turn it off too: `_plain_4bit_kernel`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from posttrain.data.chat_template import encode_rows
from posttrain.training import LocalCheckpointStore, TrainingJobConfig, evaluate_loss, run_training
from posttrain.training.distributed import Ranks, check_supported, launch, torchrun_command
from posttrain.training.methods import Runtime, get_method

CPU = Runtime(device=torch.device("cpu"), compute_dtype=torch.float32)
PROCESSES = 2
PER_RANK_BATCH = 2
LOSS_RTOL = 2e-6

# name -> (TrainingJobConfig fields, training rows). lora: 29 rows in global batches of 4
# make 8 steps, the last with one row, so rank 1 runs a zero-weight forward there.
SCENARIOS: dict[str, tuple[dict, int]] = {
    "full": ({"method": "full", "max_steps": 4, "grad_accum": 2, "eval_every": 2}, 32),
    "lora": ({"method": "lora", "method_config": {"rank": 4, "dropout": 0.0}}, 29),
    "qlora": (
        {"method": "qlora", "method_config": {"rank": 4, "dropout": 0.0}, "max_steps": 3},
        32,
    ),
    "ia3": ({"method": "ia3", "max_steps": 3}, 32),
    # Dropout on: every rank's RNG must come back from the checkpoint.
    "resume": (
        {"method": "lora", "method_config": {"rank": 4, "dropout": 0.1}, "max_steps": 4},
        32,
    ),
}
COMPARED = ("full", "lora", "qlora", "ia3")


def _config(base: str, name: str, batch_size: int) -> TrainingJobConfig:
    fields, _ = SCENARIOS[name]
    values = dict(
        base_model=base, batch_size=batch_size, lr=5e-3, warmup_steps=1, seed=7, device="cpu"
    )
    return TrainingJobConfig(**(values | fields))


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _losses(history: list[dict]) -> list[float]:
    return [h["loss"] for h in history]


def _plain_4bit_kernel():
    return mock.patch("bitsandbytes.nn.modules.has_avx512bf16", lambda: False)


@pytest.fixture(scope="module")
def runs(tiny_model, train_rows, eval_rows, tmp_path_factory) -> dict:
    """Every scenario on 2 processes; the cancelled one resumed by new processes."""
    work = tmp_path_factory.mktemp("distributed")
    eval_file = _write_jsonl(work / "eval.jsonl", eval_rows)
    jobs = {}
    for name, (_, count) in SCENARIOS.items():
        train_file = _write_jsonl(work / f"train-{count}.jsonl", train_rows[:count])
        config = _config(str(tiny_model), name, PER_RANK_BATCH)
        jobs[name] = {"config": config.to_dict(), "train": str(train_file), "out": str(work / name)}
    jobs["resume_straight"] = dict(jobs["resume"], out=str(work / "resume_straight"))
    jobs["resume"]["cancel_after"] = 2
    spec = {"jobs": jobs, "eval": str(eval_file), "results": str(work / "results")}
    (work / "spec.json").write_text(json.dumps(spec))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command = [*torchrun, f"--nproc_per_node={PROCESSES}", __file__, str(work / "spec.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    results = {
        rank: json.loads((work / f"results-{rank}.json").read_text()) for rank in range(PROCESSES)
    }

    # New processes resume the cancelled run: the recipe under torchrun, via launch().
    events = []
    resumed = launch(
        TrainingJobConfig.from_dict(jobs["resume"]["config"]),
        jobs["resume"]["train"],
        eval_file,
        jobs["resume"]["out"],
        nproc_per_node=PROCESSES,
        progress=events.append,
        poll_s=0.2,
    )
    return {"work": work, "results": results, "launch": resumed, "launch_events": events}


@pytest.fixture(scope="module")
def references(tiny_model, train_rows, eval_rows, tmp_path_factory) -> dict:
    """One plain process with batch_size x processes: the same global batches."""
    work = tmp_path_factory.mktemp("single")
    out = {}
    for name in COMPARED:
        config = _config(str(tiny_model), name, PER_RANK_BATCH * PROCESSES)
        rows = train_rows[: SCENARIOS[name][1]]
        with _plain_4bit_kernel():
            out[name] = run_training(config, rows, eval_rows, work / name)
    return out


@pytest.mark.parametrize("name", COMPARED)
def test_two_processes_match_one_process_on_the_same_global_batch(name, runs, references) -> None:
    ranks = runs["results"]
    single = references[name]
    dist = ranks[0][name]
    assert dist["status"] == "completed" and len(dist["history"]) == len(single.history)

    def numbers(history: list[dict]) -> list[dict]:  # all but the (per-rank) timing
        return [{k: v for k, v in h.items() if k != "tokens_per_second"} for h in history]

    assert numbers(dist["history"]) == numbers(ranks[1][name]["history"]), "ranks agree"
    for ours, theirs in zip(dist["history"], single.history, strict=True):
        assert ours["step"] == theirs["step"] and ours["epoch"] == theirs["epoch"]
        assert (ours["tokens"], ours["label_tokens"]) == (theirs["tokens"], theirs["label_tokens"])
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=LOSS_RTOL)
        assert ours["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-4)
        assert ours["lr"] == theirs["lr"]
    assert [e["step"] for e in dist["eval_history"]] == [e["step"] for e in single.eval_history]
    for ours, theirs in zip(dist["eval_history"], single.eval_history, strict=True):
        assert ours["eval_loss"] == pytest.approx(theirs["eval_loss"], rel=LOSS_RTOL)
    assert _losses(dist["history"])[-1] < _losses(dist["history"])[0], "it learns"
    # Progress events only on rank 0, one per step.
    assert (dist["events"], ranks[1][name]["events"]) == (len(single.history), 0)


def test_lora_epoch_ends_with_a_step_smaller_than_the_ranks(runs) -> None:
    history = runs["results"][0]["lora"]["history"]
    assert len(history) == 8 and history[-1]["tokens"] < history[0]["tokens"] / 2


def test_sharded_checkpoint_resumes_in_new_processes(runs) -> None:
    """2 steps, cancel (sharded checkpoint), new processes resume 2 more == 4 straight."""
    work = runs["work"]
    first = runs["results"][0]["resume"]
    straight = runs["results"][0]["resume_straight"]
    assert first["status"] == "cancelled" and len(first["history"]) == 2
    assert runs["launch"].status == "completed"
    assert [e.step for e in runs["launch_events"]] == [3, 4]  # once each: rank 0 only
    report = json.loads(runs["launch"].report_path.read_text())
    assert report["resumed_from_step"] == 2 and report["processes"] == PROCESSES
    assert [h["step"] for h in report["history"]] == [1, 2, 3, 4]
    for ours, theirs in zip(report["history"], straight["history"], strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-6)
    assert report["history"][:2] == first["history"]

    store = LocalCheckpointStore(work / "resume" / "checkpoints")
    assert store.steps() == [2, 4]
    folder = work / "resume" / "checkpoints" / "step-00000004"
    state = json.loads((folder / "state.json").read_text())
    assert (state["format"], state["world_size"]) == ("posttrain.checkpoint.sharded.v1", 2)
    assert (folder / "sharded" / ".metadata").is_file()
    assert sorted(p.name for p in (folder / "rng").iterdir()) == ["rank-00000.pt", "rank-00001.pt"]
    assert not (work / "resume" / "checkpoint-staging").exists(), "staging is cleaned up"


@pytest.mark.slow  # two more torchrun launches (~30 s on 2 shared cores)
def test_launch_cancels_before_the_first_step_and_resumes_from_step_0(runs, tmp_path) -> None:
    """should_cancel -> OUT/CANCEL -> rank 0 stops every rank before the first step: a
    sharded checkpoint of step 0 (weights, no AdamW state yet). New processes resume from it
    and train the lora scenario's 8 steps exactly as the uninterrupted run."""
    job = json.loads((runs["work"] / "spec.json").read_text())["jobs"]["lora"]
    config = TrainingJobConfig.from_dict(job["config"])
    out = tmp_path / "run"
    cancelled = launch(
        config, job["train"], None, out, nproc_per_node=PROCESSES,
        should_cancel=lambda: True, poll_s=0.1,
    )  # fmt: skip
    assert (cancelled.status, cancelled.returncode) == ("cancelled", 0)
    report = json.loads(cancelled.report_path.read_text())
    assert (report["status"], report["steps"]) == ("cancelled", 0)
    assert LocalCheckpointStore(out / "checkpoints").steps() == [0]
    resumed = launch(config, job["train"], None, out, nproc_per_node=PROCESSES)
    report = json.loads(resumed.report_path.read_text())
    assert resumed.status == "completed" and report["resumed_from_step"] == 0
    straight = runs["results"][0]["lora"]["history"]
    for ours, theirs in zip(report["history"], straight, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-6)


def test_launch_stops_torchrun_and_its_ranks_after_the_cancel_grace(
    tiny_model, train_rows, tmp_path
) -> None:
    """Ranks that do not reach a step boundary within cancel_grace_s (here 0, asked as soon
    as both ranks run): torchrun and its ranks are terminated, status "cancelled"."""
    import psutil

    started: list[subprocess.Popen] = []
    ranks: list[psutil.Process] = []
    popen = subprocess.Popen

    def recording_popen(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]

    def both_ranks_run() -> bool:
        ranks[:] = psutil.Process(started[0].pid).children(recursive=True)
        return len(ranks) >= PROCESSES

    train = _write_jsonl(tmp_path / "train.jsonl", train_rows[:8])
    config = _config(str(tiny_model), "lora", PER_RANK_BATCH)
    with mock.patch("subprocess.Popen", side_effect=recording_popen):
        stopped = launch(
            config, train, None, tmp_path / "run", nproc_per_node=PROCESSES,
            should_cancel=both_ranks_run, cancel_grace_s=0.0,
            output=tmp_path / "torchrun.log", poll_s=0.1,
        )  # fmt: skip
    assert stopped.status == "cancelled" and stopped.returncode != 0
    assert not (tmp_path / "run" / "report").exists()
    assert len(ranks) >= PROCESSES and not any(r.is_running() for r in ranks)


def test_resume_with_another_number_of_processes_is_refused(runs) -> None:
    job = json.loads((runs["work"] / "spec.json").read_text())["jobs"]["resume"]
    with pytest.raises(ValueError, match="written by 2 process"):
        run_training(TrainingJobConfig.from_dict(job["config"]), job["train"], None, job["out"])


@pytest.mark.parametrize("name", ["full", "lora", "qlora"])
def test_distributed_artifact_loads_in_vanilla_transformers_and_peft(
    name, runs, references, tiny_model, tiny_tokenizer, eval_rows
) -> None:
    """Gathered on rank 0 and saved by the method, the artifact is the trained model: its
    eval loss equals the distributed run's and the single-process run's."""
    dist = runs["results"][0][name]
    kind = get_method(name).artifact_kind
    artifact = Path(dist["artifacts"][kind])
    if kind == "full":
        model = AutoModelForCausalLM.from_pretrained(artifact).eval()
        config = json.loads((artifact / "config.json").read_text())
        assert config["architectures"] == ["LlamaForCausalLM"]  # not FSDPLlamaForCausalLM
    else:
        kwargs = {}
        if name == "qlora":
            kwargs = {
                "device_map": "cpu",
                "quantization_config": BitsAndBytesConfig(
                    load_in_4bit=True,
                    bnb_4bit_quant_type="nf4",
                    bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=torch.float32,
                ),
            }
        with _plain_4bit_kernel():
            base = AutoModelForCausalLM.from_pretrained(tiny_model, **kwargs)
        model = PeftModel.from_pretrained(base, artifact).eval()
    assert (artifact / "tokenizer.json").is_file()
    evals, _ = encode_rows(eval_rows, tiny_tokenizer, max_seq_len=1024)
    loss = evaluate_loss(
        model, evals, batch_size=4, pad_id=tiny_tokenizer.pad_token_id, runtime=CPU
    )
    assert loss == pytest.approx(dist["eval_history"][-1]["eval_loss"], rel=LOSS_RTOL)
    assert loss == pytest.approx(references[name].metrics["final_eval_loss"], rel=LOSS_RTOL)


# Pure pieces: no processes.


def test_ranks_split_every_micro_batch_into_disjoint_consecutive_shares() -> None:
    plan = [[[0], [1], [2], [3]], [[4], [5], [6]], [[7]]]
    shares = [Ranks(rank=r, world_size=2, distributed=True).split(plan) for r in (0, 1)]
    assert shares[0] == [[[0], [1]], [[4]], []]  # [] -> a zero-weight forward
    assert shares[1] == [[[2], [3]], [[5], [6]], [[7]]]
    four = [Ranks(rank=r, world_size=4, distributed=True).split([list(range(5))]) for r in range(4)]
    assert [len(s[0]) for s in four] == [1, 1, 1, 2]
    assert Ranks().split(plan) is plan
    turns = [Ranks(rank=r, world_size=2, distributed=True).take_turns([0, 4, 8]) for r in (0, 1)]
    assert turns == [[0, 8], [4, None]]


def test_torchrun_command_for_one_node_and_several() -> None:
    one = torchrun_command("job.yaml", "t.jsonl", "e.jsonl", "out", nproc_per_node=8, python="py")
    assert one == [
        "py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=8",
        "-m", "posttrain.training", "job.yaml", "--train", "t.jsonl", "--out", "out",
        "--eval", "e.jsonl",
    ]  # fmt: skip
    two = torchrun_command(
        "j", "t", None, "o", nproc_per_node=4, nnodes=2, node_rank=1, master_addr="10.0.0.1"
    )
    assert "--nnodes=2" in two and "--node_rank=1" in two and "--master_addr=10.0.0.1" in two
    assert "--standalone" not in two and "--eval" not in two
    with pytest.raises(ValueError, match="master_addr"):
        torchrun_command("j", "t", None, "o", nproc_per_node=4, nnodes=2)


def test_methods_without_an_fsdp_path_are_refused_before_loading() -> None:
    several = Ranks(rank=0, world_size=2, distributed=True)
    for name in ("prefix", "prompt"):
        with pytest.raises(ValueError, match="not supported with several processes"):
            check_supported(get_method(name), several)
        check_supported(get_method(name), Ranks())  # one process: fine


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (NCCL, bf16 autocast)")
@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_gpu_processes_match_one_gpu_process(
    method, tiny_model, train_rows, eval_rows, tmp_path
) -> None:
    """The GPU hook: the recipe under torchrun on NCCL (one process per GPU, at most 2),
    cancelled before its first step and resumed by new processes, against one plain process
    on the same global batch; the artifact loads. bf16 autocast: 5e-3 relative. The same
    checks as a script on 2x H200 (torch 2.11): max 1.4e-4 full, 8.9e-4 lora (40 steps),
    4.5e-5 qlora."""
    processes = min(2, torch.cuda.device_count())
    values = dict(
        base_model=str(tiny_model), method=method, max_steps=4, lr=5e-3, seed=7, device="cuda"
    )
    if method != "full":
        values["method_config"] = {"rank": 4, "dropout": 0.0}
    train = _write_jsonl(tmp_path / "train.jsonl", train_rows)
    evals = _write_jsonl(tmp_path / "eval.jsonl", eval_rows)
    config = TrainingJobConfig(**values, batch_size=PER_RANK_BATCH)
    out = tmp_path / "run"
    first = launch(config, train, evals, out, nproc_per_node=processes, should_cancel=lambda: True)
    assert first.status == "cancelled"
    events: list = []
    done = launch(config, train, evals, out, nproc_per_node=processes, progress=events.append)
    assert done.status == "completed" and [e.step for e in events] == [1, 2, 3, 4]
    report = json.loads(done.report_path.read_text())
    single = run_training(
        TrainingJobConfig(**values, batch_size=PER_RANK_BATCH * processes),
        train_rows,
        eval_rows,
        tmp_path / "single",
    )
    for ours, theirs in zip(report["history"], single.history, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=5e-3)
    artifact = Path(next(iter(report["artifacts"].values())))
    if method == "full":
        AutoModelForCausalLM.from_pretrained(artifact)
    else:
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), artifact)


def _worker(spec_file: str) -> None:
    """One rank under torchrun: every job in one gloo process group; writes its results."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    spec = json.loads(Path(spec_file).read_text())
    dist.init_process_group("gloo")  # run_training uses the group it finds
    results = {}
    for name, job in spec["jobs"].items():
        events: list = []
        cancel_after = job.get("cancel_after")
        result = run_training(
            TrainingJobConfig.from_dict(job["config"]),
            job["train"],
            spec["eval"],
            job["out"],
            LocalCheckpointStore(Path(job["out"]) / "checkpoints", keep_last=2),
            progress=events.append,
            should_cancel=(lambda e=events, n=cancel_after: len(e) >= n) if cancel_after else None,
        )
        results[name] = {
            "status": result.status,
            "history": result.history,
            "eval_history": result.eval_history,
            "artifacts": {k: str(v) for k, v in result.artifacts.items()},
            "events": len(events),
        }
    rank = dist.get_rank()
    Path(f"{spec['results']}-{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    _worker(sys.argv[1])
