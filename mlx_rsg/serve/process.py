"""`mlx-rsg serve` in a child process, for scripts that need a live server (the load benchmark,
the tests): started on a free port, its address read from the line it prints when it listens.

    with ServerProcess(["runs/fp32", "runs/q4"]) as server:
        urllib.request.urlopen(server.url + "/health")
"""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time


class ServerProcess:
    def __init__(self, args: list[str], timeout: float = 300):
        cmd = [sys.executable, "-c", "from mlx_rsg.cli import main; main()", "serve",
               *map(str, args), "--port", "0"]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)  # fmt: skip
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._seen: list[str] = []
        self._err: list[str] = []  # read as it comes: a full pipe would block the server
        self._readers = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=self._err.extend, args=(self.proc.stderr,),
                                          daemon=True)]  # fmt: skip
        for t in self._readers:
            t.start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                self.stop(signal.SIGKILL)
                raise TimeoutError(f"mlx-rsg serve did not listen within {timeout:.0f} s") from None
            if line is None:  # it exited before listening
                code, _, err = self.stop()
                raise RuntimeError(f"mlx-rsg serve exited with {code}: {err.strip()}")
            self._seen.append(line)
            found = re.search(r" at (http://\S+?)/ ", line)
            if found:
                self.url = found.group(1)
                return

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> tuple[int, str, str]:
        """Send `sig` (SIGTERM: a graceful stop) and wait; (exit code, stdout, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=timeout)
        for t in self._readers:  # both end at the pipes' end of file
            t.join(timeout=timeout)
        while not self._lines.empty():
            line = self._lines.get_nowait()
            if line is not None:
                self._seen.append(line)
        return self.proc.returncode, "".join(self._seen), "".join(self._err)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
