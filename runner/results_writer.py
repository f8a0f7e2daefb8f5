"""results.parquet written while the job runs, by a process of its own.

Following the job inside its own process (export.FollowingResults on a worker thread) cost
that process pyarrow, a row group of up to 32 MB in Arrow, and the churn of turning
checkpoint rows into Python objects and then Arrow: 70-100 MB of a million-row job's RSS,
and a thread that took the GIL from the event loop for 7 s a million rows. A child process
holds all of that instead; the job's process keeps the engine alone, and the child's memory
goes back whole when it ends.

The child reads one command a line on stdin and answers one line on stdout:
``follow`` -> ``ok N`` (rows in the file so far); ``finish`` -> ``done N`` (the file is in
place) or ``failed REASON``; end of input (the job ended without it, or was killed) -> the
temp file is removed and the child exits. The parent never waits on a child that died: a
write that failed, or a child that is gone, makes `finish` export in the parent instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

from .errors import CheckpointError
from .store import FinishedRows, Store
from .store.opening import earlier_attempts

__all__ = ["ResultsWriter"]

_EXIT_WAIT_S = 30.0
# The child imports this very package: not from the working directory (`-c` puts it first,
# and a `runner` folder there would be taken), and from the folder this one came from when
# it is not installed.
_CHILD = (
    f"import sys; del sys.path[0]; sys.path.append({str(Path(__file__).resolve().parents[1])!r}); "
    "from runner.results_writer import main; main(sys.argv[1:])"
)


class ResultsWriter:
    """The job's handle on the child: `follow`, then `finish` or `abandon`. Each blocks
    until the child answers: call them from a worker thread."""

    def __init__(self, checkpoint: Path, path: Path, stop: int) -> None:
        """`stop`: the file stops short of this seq until `finish` (an earlier run's open
        rows may still change); the spec's row count when there are none."""
        self.path = path
        self.written = 0
        self.failed = False
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(checkpoint), str(path), str(stop)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # A session of its own: a Ctrl-C at the terminal is the job's to act on, and
            # the job tells the child (or its end of input does).
            start_new_session=True,
        )

    def follow(self) -> None:
        answer = self._ask("follow")
        if answer is not None and answer[0] == "ok":
            self.written = int(answer[1])

    def finish(self, store: Store) -> int:
        """The file in place with every stored row; exported here if the child failed."""
        answer = self._ask("finish")
        self._end()
        if answer is not None and answer[0] == "done":
            self.written = int(answer[1])
            return self.written
        from .export import write_results_parquet

        return write_results_parquet(store, self.path)

    def abandon(self) -> None:
        self._end()

    def _ask(self, command: str) -> list[str] | None:
        proc = self._proc
        if proc is None or self.failed:
            return None
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(command.encode() + b"\n")
            proc.stdin.flush()
            line = proc.stdout.readline().decode().split(maxsplit=1)
        except (OSError, ValueError):  # gone (EPIPE); a closed pipe is a ValueError
            line = []
        if not line or line[0] == "failed":
            self.failed = True
            return None
        return line

    def _end(self) -> None:
        """Close the child's input (it drops an unfinished file) and wait for it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(_EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        self._drop_temp()  # a child that was killed or crashed left it (a finished one did not)

    def _drop_temp(self) -> None:
        # The name export._ResultsFile writes to (not imported: it would load pyarrow here).
        with contextlib.suppress(OSError):
            self.path.with_suffix(".parquet.tmp").unlink(missing_ok=True)


def _serve(checkpoint: Path, path: Path, stop: int, commands: IO[str], answers: IO[str]) -> None:
    from .export import FollowingResults

    rows = FinishedRows(checkpoint)
    try:
        earlier = earlier_attempts(rows.conn)
    finally:
        rows.close()
    follower = FollowingResults(checkpoint, path, stop, earlier=earlier)
    try:
        for line in commands:
            command = line.strip()
            if command == "follow":
                follower.follow()
                answer = "failed write" if follower.failed else f"ok {follower.written}"
            elif command == "finish":
                try:
                    answer = f"done {follower.close()}"
                except CheckpointError as exc:
                    answer = f"failed {exc}"
            else:
                answer = f"failed unknown command {command!r}"
            answers.write(answer.replace("\n", " ") + "\n")
            answers.flush()
            if command == "finish":
                return
    finally:
        follower.abandon()  # after `close`: nothing left to drop


def main(argv: list[str]) -> None:
    # SIGINT is the job's to act on; it reaches this process only if sent to it alone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    checkpoint, path, stop = Path(argv[0]), Path(argv[1]), int(argv[2])
    with contextlib.suppress(BrokenPipeError):
        _serve(checkpoint, path, stop, sys.stdin, sys.stdout)
    os._exit(0)  # no interpreter teardown: pyarrow's takes longer than the work left
