"""Peak memory of a training run: CUDA allocator peak on GPU, sampled RSS on CPU."""

from __future__ import annotations

import threading
from types import TracebackType

import psutil
import torch


class PeakMemory:
    """Context manager; `.peak_bytes` after exit. On CPU a thread samples the process RSS
    every `interval_s` (the peak between samples can be missed; ru_maxrss would be exact
    but is a whole-process, whole-lifetime maximum)."""

    def __init__(self, device: torch.device, interval_s: float = 0.02) -> None:
        self.device = device
        self.interval_s = interval_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        process = psutil.Process()
        while True:
            self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)
            if self._stop.wait(self.interval_s):
                return

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()

    @property
    def kind(self) -> str:
        return "cuda_max_allocated" if self.device.type == "cuda" else "process_rss_sampled"
