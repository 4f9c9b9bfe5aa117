"""Stock fairseq commands run without paying fairseq's import for each: one fresh interpreter
imports the commands' entry points (`fairseq_cli.hydra_train`, `fairseq_cli.generate`: about 7 s,
scikit-learn included), then forks one child per command, which runs that entry point on its own
arguments, working directory, environment and output files, exactly as the console script does
(`sys.argv[0]` is the script, so the command names itself the same way). It also runs
`python -c CODE` as a fresh interpreter would (PYTHON_CODE).

The server also imports `torch._dynamo`, which torch's optimizers import when a run first uses one
(about 4 s on a loaded machine, in every training child otherwise); importing it starts no thread.
The server runs no torch operation before it forks, and starts without OMP_NUM_THREADS, so a child
starts as a fresh process would, without thread pools: a child whose environment sets
OMP_NUM_THREADS sets torch's thread count to it before anything runs, which is what a fresh
interpreter reads it for; without it the child keeps the default of a fresh one.

The server starts with OpenMP's passive wait policy (WAIT_POLICY), which OpenMP reads once, when
torch loads it: a thread that waits for the others then sleeps instead of spinning. On 2 cores
shared with other runs a multi-threaded child otherwise spins through most of its time slices,
about 3 times the CPU time of the same run waiting passively; what it computes is the same.

`ForkingLauncher` is what the tests install as the runner's launcher (tests/conftest.py), so every
command started through `fairseq_subnets.runner` is forked from one server."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple

PROGRAMS = ("fairseq-hydra-train", "fairseq-generate")
PYTHON_CODE = "python -c"
"""`python -c CODE ARGUMENTS...` (the interpreter running the tests): the server runs CODE as a
fresh interpreter would, as __main__ with sys.argv ["-c", ARGUMENTS...]; only fairseq's commands'
modules are imported before it, never fairseq_subnets (checks of stock fairseq without the plugin
rely on that)."""
THREADS_VARIABLE = "OMP_NUM_THREADS"
WAIT_POLICY = {"OMP_WAIT_POLICY": "PASSIVE"}

SERVER = textwrap.dedent("""
    import json, os, sys, traceback
    import torch._dynamo  # noqa: F401  (torch.optim imports it at a run's first optimizer use: seconds per child)
    from fairseq_cli.generate import cli_main as generate_main
    from fairseq_cli.hydra_train import cli_main as train_main

    def python_code():
        code = sys.argv[2]
        sys.argv = ["-c", *sys.argv[3:]]
        exec(compile(code, "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})

    ENTRY_POINTS = {"fairseq-hydra-train": train_main, "fairseq-generate": generate_main, "python -c": python_code}

    def open_output(path, append):
        mode = os.O_APPEND if append else os.O_TRUNC
        return os.open(path, os.O_WRONLY | os.O_CREAT | mode, 0o666)  # the umask applies, as to a shell's >

    def run(command):
        os.chdir(command["cwd"])
        os.environ.clear()
        os.environ.update(command["env"])
        threads = os.environ.get("OMP_NUM_THREADS")
        if threads:
            import torch
            torch.set_num_threads(int(threads))
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        output = open_output(command["stdout"], command["append"])
        errors = output if command["stderr"] == command["stdout"] else open_output(command["stderr"], command["append"])
        os.dup2(output, 1)
        os.dup2(errors, 2)
        sys.argv = [command["script"], *command["arguments"]]
        ENTRY_POINTS[command["program"]]()

    def fork(command):
        pid = os.fork()
        if pid:
            return pid
        status = 1
        try:
            run(command)
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

    def signal_child(pid, number):
        reap(block=False)
        if pid in ended:  # only an unreaped child's pid is still ours: it cannot have been reused
            return False
        os.kill(pid, number)
        return True

    for line in sys.stdin:
        request = json.loads(line)
        if "start" in request:
            reply = {"pid": fork(request["start"])}
        elif "signal" in request:
            reply = {"sent": signal_child(*request["signal"])}
        else:
            reap(block=False)
            reply = {"status": ended.get(request["status"])}
        print(json.dumps(reply), flush=True)
    reap(block=True)
""")


class CommandServer:
    """A server process forking fairseq commands on request."""

    def __init__(self):
        server_env = {**{name: value for name, value in os.environ.items() if name != THREADS_VARIABLE}, **WAIT_POLICY}
        self.process = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=server_env)
        self.lock = threading.Lock()

    def request(self, request: dict) -> dict:
        with self.lock:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            reply = self.process.stdout.readline()
        if not reply:
            raise RuntimeError(f"the fairseq fork server ended (exit {self.process.wait()}); its stderr is above")
        return json.loads(reply)

    def start(self, script: str, arguments: List[str], cwd: Path, env: Mapping[str, str], stdout: Path,
              stderr: Optional[Path] = None, append: bool = False) -> "ForkedProcess":
        """Starts the console script `script` (its name says which fairseq command it is) in `cwd`
        with the environment `env`, stdout to `stdout` and stderr to `stderr` (None: `stdout` too),
        appended to them or replacing them."""
        program = program_of(script, arguments)
        command = {"program": program, "script": str(script), "arguments": [str(a) for a in arguments],
                   "cwd": str(cwd), "env": dict(env), "stdout": str(stdout),
                   "stderr": str(stderr or stdout), "append": append}
        return ForkedProcess(self, self.request({"start": command})["pid"])

    def close(self):
        """Ends the server once every child it forked has ended."""
        self.process.stdin.close()
        self.process.wait()


def program_of(script: str, arguments: List[str]) -> str:
    """Which of the server's programs a command is."""
    if script == sys.executable and arguments[:1] == ["-c"]:
        return PYTHON_CODE
    if Path(script).name in PROGRAMS:
        return Path(script).name
    raise ValueError(f"the fork server runs {', '.join(PROGRAMS)} and {sys.executable} -c, not {script}")


class ForkedProcess:
    """What the runner and the tests use of a Popen: pid, returncode, poll(), wait(), terminate()
    and kill()."""

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

    def send_signal(self, number: int):
        if self.returncode is None:
            self.server.request({"signal": [self.pid, int(number)]})

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)


class ForkingLauncher:
    """The runner's launcher in tests (`fairseq_subnets.runner.use_launcher`): every command is
    forked from one CommandServer, started when the first command comes, so a session that runs
    none pays no fairseq import. `refusal(program)`, when given, is asked before each start and
    stops it with its message (the tests refuse fairseq in tests not marked slow)."""

    def __init__(self, refusal: Optional[Callable[[str], Optional[str]]] = None):
        self.refusal = refusal
        self.server: Optional[CommandServer] = None
        self.lock = threading.Lock()

    def started_server(self, program: str) -> CommandServer:
        message = self.refusal(program) if self.refusal else None
        if message:
            raise RefusedCommand(message)
        with self.lock:
            if self.server is None:
                self.server = CommandServer()
            return self.server

    def start(self, command: List[str], log_path: Path, env: Optional[Mapping[str, str]] = None) -> ForkedProcess:
        """As SubprocessLauncher.start: `command` is a console script and its arguments, run in
        this process's working directory with `env` (None: this process's environment now)."""
        script, *arguments = command
        server = self.started_server(program_of(script, arguments))
        return server.start(script, arguments, Path.cwd(), os.environ if env is None else env, Path(log_path),
                            append=True)

    def run_all(self, commands: Dict[str, Tuple[str, List[str], Path, Path]],
                env: Optional[Mapping[str, str]] = None) -> Dict[str, int]:
        """commands: name -> (console script, arguments, working directory, stderr file; stdout is
        discarded), all started at once with `env` (None: this process's environment); returns
        name -> exit status, once all have ended."""
        env = os.environ if env is None else env
        started = {name: self.started_server(program_of(script, arguments)).start(
            script, arguments, cwd, env, Path(os.devnull), stderr) for name, (script, arguments, cwd, stderr) in
            commands.items()}
        return {name: process.wait() for name, process in started.items()}

    def close(self):
        with self.lock:
            if self.server is not None:
                self.server.close()
                self.server = None


class RefusedCommand(RuntimeError):
    """A test started a fairseq command that its markers do not allow."""
