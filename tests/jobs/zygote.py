"""A warm fork server for the job tests: it imports torch, jobs and the examples once (a cold start
costs ~4 s here, mostly torch and the optimizer's first-use import of torch._dynamo), then forks
one real child process per request. The children are ordinary processes: the tests signal them
by pid, they checkpoint, exit 75, get SIGKILLed. Single-threaded at every fork.

Requests on stdin, one JSON line each: {"module", "argv", "env", "cwd", "out", "hold", "new_session",
"function"} (with "function": call module.function(*argv) instead of running the module as __main__).
Replies on stdout: {"pid": P} once forked, {"exited": P, "status": waitpid status} when it ends.
"""
import json
import os
import runpy
import select
import sys
import traceback


def warm_up() -> None:
    import torch
    import traind.jobs.examples.large      # noqa: F401
    import traind.jobs.examples.own_loop   # noqa: F401
    import traind.jobs.examples.tiny       # noqa: F401
    import traind.jobs.training.trainer             # noqa: F401
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])   # pulls in torch._dynamo


def run_child(req: dict) -> None:
    """In the forked child: become the requested `python -m module argv...`; never returns."""
    code = 1
    try:
        if req.get("new_session"):
            os.setsid()
        out = os.open(req["out"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)       # replaces the zygote's request pipe in the child
        os.dup2(out, 1)           # and its reply pipe
        os.dup2(out, 2)
        os.close(out)
        os.close(devnull)
        os.environ.clear()
        os.environ.update(req["env"])
        os.chdir(req["cwd"])
        if req.get("hold") is not None:
            import time
            from traind.store import faults
            hold = float(req["hold"])
            faults.fault_hook = lambda point: time.sleep(hold) if point == "begin:mkdir" else None
        sys.argv = [req["module"], *req["argv"]]
        try:
            if req.get("function"):         # {"function": "main", "argv": [positional args]}
                getattr(__import__(req["module"], fromlist=["_"]), req["function"])(*req["argv"])
            else:
                sys.modules.pop(req["module"], None)    # run it fresh as __main__, as `-m` does
                runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exit_:
            if exit_.code is None:
                code = 0
            elif isinstance(exit_.code, int):
                code = exit_.code
            else:
                print(exit_.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main() -> None:
    warm_up()
    stdin, stdout = sys.stdin.buffer.raw.fileno(), sys.stdout.fileno()
    pending = b""
    children: set[int] = set()

    def reply(msg: dict) -> None:
        os.write(stdout, (json.dumps(msg) + "\n").encode())

    reply({"ready": os.getpid()})
    while True:
        readable, _, _ = select.select([stdin], [], [], 0.002)
        if readable:
            data = os.read(stdin, 65536)
            if not data:
                return                      # the test process is gone
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                req = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    run_child(req)
                children.add(pid)
                reply({"pid": pid})
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
                reply({"exited": pid, "status": status})


if __name__ == "__main__":
    main()
