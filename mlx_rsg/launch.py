"""`mlx-rsg launch`: mlx.launch with an exit code, and the failure as the last line.

mlx.launch (MLX 0.32) relays every rank's output and exits 0 even when every rank failed; a
failing rank's one `error:` line then arrives among the other ranks' `[ring] ... closed` lines
and the launcher's warnings. This runs mlx.launch unchanged (the same options, its output as it
comes) and reads the relayed stderr for how each rank ended: an `error: rank R: ...` line (what
every mlx-rsg command prints on failure) or the launcher's "Node with rank R exited with code C"
/ "was killed". When any rank failed it ends with the cause (the first error that is not a rank
losing its peer) as the last line and exits 2; when every rank succeeded, 0. It reads the output,
not files, so ranks on other hosts count too. No MLX is imported here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from typing import BinaryIO

from mlx_rsg.errors import PEER_LOST

LAUNCHER = "import sys; from mlx._distributed_utils.launch import main; sys.exit(main())"
ERROR = re.compile(r"error: rank (\d+): (.*)")
NODE = re.compile(r"Node with rank (\d+) (exited with code -?\d+|was killed)")


def launch(args: list[str], relay: BinaryIO | None = None) -> int:
    """Run `mlx.launch ARGS`, relaying its stderr to `relay` (this process's stderr); returns
    the exit code this command ends with."""
    relay = relay or sys.stderr.buffer
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, *args], stderr=subprocess.PIPE)
    errors: list[str] = []
    failed: list[str] = []
    pending = b""
    try:
        for chunk in iter(lambda: proc.stderr.read1(1 << 16), b""):
            relay.write(chunk)
            relay.flush()
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                _note(line.decode(errors="replace"), errors, failed)
        _note(pending.decode(errors="replace"), errors, failed)
        code = proc.wait()
    except KeyboardInterrupt:  # the ranks got the same SIGINT; let the launcher stop them
        proc.wait()
        return 130
    cause = next((e for e in errors if PEER_LOST not in e), errors[0] if errors else None)
    if cause is None and failed:
        cause = f"error: {failed[0]}"
    if cause is None:
        return code  # mlx.launch's own usage errors keep its code and its last line
    relay.write(f"{cause}\n".encode())
    relay.flush()
    return 2


def _note(line: str, errors: list[str], failed: list[str]) -> None:
    """Record a rank's `error:` line or the launcher's word that a rank failed."""
    line = line.rsplit("\r", 1)[-1]  # a progress bar's carriage returns before the message
    if m := ERROR.search(line):
        errors.append(f"error: rank {m.group(1)}: {m.group(2).rstrip()}")
    elif (m := NODE.search(line)) and m.group(2) != "exited with code 0":
        failed.append(f"rank {m.group(1)} {m.group(2)}")
