"""Stock fairseq commands run without paying fairseq's import for each: one fresh interpreter
imports the commands' entry points (`fairseq_cli.hydra_train`, `fairseq_cli.generate`: about 7 s,
scikit-learn included), then forks one child per command, which runs that entry point on its own
arguments, working directory and output files, exactly as the console script does
(`sys.argv[0]` is the script, so the command names itself the same way). The server runs no torch
operation before it forks, so every child starts as a fresh process would, without thread pools.

`run_forked` runs a batch of commands to their end; `CommandServer` starts commands one at a time
and hands back process handles that can be polled, waited for and killed like a Popen."""
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

SERVER = textwrap.dedent("""
    import json, os, sys, traceback
    from fairseq_cli.generate import cli_main as generate_main
    from fairseq_cli.hydra_train import cli_main as train_main

    ENTRY_POINTS = {"fairseq-hydra-train": train_main, "fairseq-generate": generate_main}

    def fork(command):
        pid = os.fork()
        if pid:
            return pid
        status = 1
        try:
            os.chdir(command["cwd"])
            output = os.open(command["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            errors = output if command["stderr"] == command["stdout"] else \\
                os.open(command["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(output, 1)
            os.dup2(errors, 2)
            sys.argv = [command["script"], *command["arguments"]]
            try:
                ENTRY_POINTS[command["program"]]()
                status = 0
            except SystemExit as exit:
                status = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)

    ended = {}

    def reap(block):
        while True:
            try:
                pid, wait_status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            ended[pid] = os.waitstatus_to_exitcode(wait_status)
            if block:
                return

    for line in sys.stdin:
        request = json.loads(line)
        if "start" in request:
            reply = {"pid": fork(request["start"])}
        else:
            reap(block=False)
            reply = {"status": ended.get(request["status"])}
        print(json.dumps(reply), flush=True)
    reap(block=True)
""")


def _command(program: str, arguments: List[str], cwd: Path, stdout: Path, stderr: Optional[Path] = None) -> dict:
    from fairseq_subnets.runner import fairseq_command

    return {"program": program, "script": fairseq_command(program), "arguments": [str(a) for a in arguments],
            "cwd": str(cwd), "stdout": str(stdout), "stderr": str(stderr or stdout)}


class CommandServer:
    """A server process forking fairseq commands on request (a context manager: it ends with the
    block, after its children)."""

    def __init__(self, env):
        self.process = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env)
        self.lock = threading.Lock()

    def request(self, request: dict) -> dict:
        with self.lock:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            return json.loads(self.process.stdout.readline())

    def start(self, program: str, arguments: List[str], cwd: Path, log: Path) -> "ForkedProcess":
        """Starts the command with stdout and stderr to `log`."""
        return ForkedProcess(self, self.request({"start": _command(program, arguments, cwd, log)})["pid"])

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        self.process.stdin.close()
        self.process.wait()


class ForkedProcess:
    """What tests use of a Popen: pid, poll(), wait()."""

    def __init__(self, server: CommandServer, pid: int):
        self.server, self.pid, self.returncode = server, pid, None

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            self.returncode = self.server.request({"status": self.pid})["status"]
        return self.returncode

    def wait(self) -> int:
        while self.poll() is None:
            time.sleep(0.02)
        return self.returncode


def run_forked(commands: Dict[str, Tuple[str, List[str], Path, Path]], env) -> Dict[str, int]:
    """commands: name -> (program: fairseq-hydra-train or fairseq-generate, arguments, working
    directory, stderr file; stdout is discarded), all started at once; returns name -> exit status,
    once all have ended."""
    with CommandServer(env) as server:
        started = {name: ForkedProcess(server, server.request({"start": _command(
            program, arguments, cwd, Path(os.devnull), stderr)})["pid"])
            for name, (program, arguments, cwd, stderr) in commands.items()}
        return {name: process.wait() for name, process in started.items()}
