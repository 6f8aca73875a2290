"""The console for real: the five services as processes (started by the demo's own
Demo.start_services, on the session's Kafka, S3 and Triton), a tiny random Llama as the
base model, the console as its own process (`python -m services.console`), and Debian's
chromium driven by Selenium through /usr/bin/chromedriver (installed by `make setup`).

What the browser tests need made beforehand is made through the services' gRPC APIs,
as a client app would: the base model, a regulated dataset upload, training jobs.
Screenshots go to $POSTTRAIN_TEST_ARTIFACTS/console (or the test's temporary folder).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from posttrain.db import create_db_engine
from posttrain.demo import dataset
from posttrain.demo.run import Demo, DemoConfig
from posttrain.rpc import ApiKeyStore, make_channel
from posttrain.stack.services import free_port
from posttrain.storage import ArtifactStore
from posttrain.training import make_tiny_model
from posttrain.v1 import (
    common_pb2,
    intake_pb2,
    intake_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    training_pb2,
    training_pb2_grpc,
)

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TENANT = "acme"
BASE_MODEL = "tiny-llama"
DATASET = "console-support"
MODEL_NAME = "console-bot"
# Who signs in, with which roles (tenant acme), besides the demo's own people.
PEOPLE = {
    "carol": ["uploader", "approver", "viewer"],  # uploads, so may not approve her own upload
    "bob": ["approver", "viewer"],
    "rita": ["rater", "viewer"],
    "ops": ["operator", "viewer"],
    "vera": ["viewer"],
    "trainer": ["trainer", "viewer"],
}


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 120.0, every_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


@dataclass
class Fleet:
    demo: Demo
    keys: dict[str, str]
    console_url: str
    dataset_version: str = ""
    job_ids: list[str] = field(default_factory=list)

    def channel(self, service: str, who: str):
        return make_channel(f"127.0.0.1:{self.demo.ports[service]}", api_key=self.keys[who])

    def intake(self, who: str) -> intake_pb2_grpc.IntakeServiceStub:
        return intake_pb2_grpc.IntakeServiceStub(self.channel("intake", who))

    def registry(self, who: str) -> registry_pb2_grpc.RegistryServiceStub:
        return registry_pb2_grpc.RegistryServiceStub(self.channel("registry", who))

    def trainer(self, who: str) -> training_pb2_grpc.TrainingServiceStub:
        return training_pb2_grpc.TrainingServiceStub(self.channel("trainer", who))

    def submit_job(self, steps: int) -> str:
        job = self.trainer("trainer").SubmitJob(
            training_pb2.SubmitJobRequest(
                base_model=BASE_MODEL,
                dataset=DATASET,
                dataset_version=self.dataset_version,
                method=common_pb2.TUNING_METHOD_LORA,
                output_name=MODEL_NAME,
                hyperparameters={
                    "max_steps": str(steps),
                    "batch_size": "4",
                    "lr": "1e-3",
                    "max_seq_len": "256",
                    "checkpoint_every": str(steps),
                },
            )
        )
        self.job_ids.append(job.job_id)
        return job.job_id


def _upload(fleet: Fleet) -> str:
    """Carol uploads a regulated dataset version; it waits for a second person."""
    rows = dataset.knowledge_rows() + dataset.policy_rows()
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)

    def requests():
        yield intake_pb2.UploadDatasetRequest(
            metadata=intake_pb2.UploadMetadata(
                dataset=DATASET,
                format=intake_pb2.DATA_FORMAT_JSONL,
                schema=intake_pb2.ROW_SCHEMA_CHAT,
                regulated=True,
                description="support answers and the refusal policy",
            )
        )
        yield intake_pb2.UploadDatasetRequest(chunk=data)

    return fleet.intake("carol").UploadDataset(requests()).version.version


def _start_console(fleet_demo: Demo, log_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "POSTTRAIN_CONSOLE_PORT": str(port),
        "POSTTRAIN_CONSOLE_SECRET_KEY": "console-test-secret-0123456789",
        "POSTTRAIN_CONSOLE_POLL_INTERVAL_MS": "300",
        **{
            f"POSTTRAIN_CONSOLE_{name.upper()}_TARGET": f"127.0.0.1:{fleet_demo.ports[name]}"
            for name in ("intake", "registry", "trainer", "evaluator", "gateway")
        },
    }
    log = open(log_dir / "console.log", "ab")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.console"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the console exited ({proc.returncode}); see {log.name}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    wait_for("the console to answer /healthz", healthy, 60)
    return proc, url


@pytest.fixture(scope="module")
def fleet(stack, triton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    state = tmp_path_factory.mktemp("console-fleet")
    demo = Demo(DemoConfig(state_dir=state, eval_cases_per_tag=1))
    demo.stack = triton  # the session's stack: Demo.stop must not take it down (see below)
    console_proc = None
    with pytest.MonkeyPatch.context() as env:
        # Two shared cores: one torch thread per process.
        for name in (
            "OMP_NUM_THREADS",
            "POSTTRAIN_WORKER_TORCH_THREADS",
            "POSTTRAIN_TORCH_THREADS",
        ):
            env.setenv(name, "1")
        env.setenv("POSTTRAIN_REVIEW_SAMPLE_SIZE", "5")
        try:
            demo.start_services()
            engine = create_db_engine(demo.auth_db)
            store = ApiKeyStore(engine)
            keys = {who: store.create_key(who, roles, TENANT) for who, roles in PEOPLE.items()}
            engine.dispose()
            console_proc, url = _start_console(demo, state / "logs")
            fleet = Fleet(demo, {**demo.keys, **keys}, url)
            folder = make_tiny_model(state / "models" / BASE_MODEL, seed=0)
            artifacts = ArtifactStore.from_settings(triton.s3_settings())
            artifacts.ensure_bucket()
            ref = artifacts.put_folder(folder, f"base-models/{BASE_MODEL}")
            fleet.registry("trainer").RegisterBaseModel(
                registry_pb2.RegisterBaseModelRequest(name=BASE_MODEL, source_uri=ref.uri)
            )
            fleet.dataset_version = _upload(fleet)
            yield fleet
        finally:
            if console_proc is not None and console_proc.poll() is None:
                os.killpg(console_proc.pid, signal.SIGTERM)
                console_proc.wait(30)
            demo.stack = None  # the session's: its fixture stops it
            demo.stop()


@dataclass
class Browser:
    """One headless chromium for the module, signed in as one person at a time."""

    driver: Any
    base_url: str
    keys: dict[str, str]
    shots: Path

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def sign_in(self, who: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver.delete_all_cookies()
        self.open("/login")
        self.driver.find_element(By.ID, "api_key").send_keys(self.keys[who])
        self.navigate(self.driver.find_element(By.ID, "sign-in").click)
        assert self.driver.find_elements(By.ID, "who"), f"{who} is not signed in"

    def navigate(self, action: Callable[[], Any]) -> None:
        """Does what leaves the page (a click, a key) and waits for the next page, so that
        nothing is read from the old one: the old document is marked, and the wait is for
        a complete document without the mark (no element handles that can go stale)."""
        self.driver.execute_script("document.documentElement.dataset.left = 'yes'")
        action()
        self.wait(
            lambda d: d.execute_script(
                "return document.readyState === 'complete' && "
                "document.documentElement.dataset.left !== 'yes'"
            ),
            "the next page",
            ignoring=True,  # a script can fail while the old document unloads
        )

    def wait(
        self,
        condition: Callable[[Any], Any],
        what: str,
        timeout_s: float = 30.0,
        *,
        ignoring: bool = False,
    ):
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(
            self.driver,
            timeout_s,
            poll_frequency=0.2,
            ignored_exceptions=(WebDriverException,) if ignoring else None,
        ).until(condition, message=f"waiting for {what}")

    def text(self, element_id: str) -> str:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, element_id).text

    def screenshot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def post(self, path: str, form: dict[str, str]) -> tuple[int, str]:
        """A POST with this browser's session cookie, as a hand-made request would send it
        (the CSRF token is taken from the page the browser shows)."""
        from selenium.webdriver.common.by import By

        csrf = self.driver.find_element(By.NAME, "csrf").get_attribute("value")
        cookie = "; ".join(f"{c['name']}={c['value']}" for c in self.driver.get_cookies())
        body = urllib.parse.urlencode({**form, "csrf": csrf}).encode()
        request = urllib.request.Request(
            self.base_url + path, data=body, headers={"Cookie": cookie}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()


@pytest.fixture(scope="module")
def browser(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(
            f"{CHROMIUM} and {CHROMEDRIVER} are needed (Debian packages chromium and "
            "chromium-driver): run `make setup`"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    artifacts = os.environ.get("POSTTRAIN_TEST_ARTIFACTS")
    shots = Path(artifacts) / "console" if artifacts else tmp_path_factory.mktemp("console-shots")
    shots.mkdir(parents=True, exist_ok=True)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield Browser(driver, fleet.console_url, fleet.keys, shots)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
        print(f"\nconsole screenshots: {shots}")
