"""Remote checkpoints: upload throughput against a plain s3fs put, and what the background upload
costs the training steps meanwhile. One run, side by side, against a real S3 server (moto) on
127.0.0.1 in its own process (pinned to the last core: it stands in for a store elsewhere).

    python benchmarks/bench_remote.py [--size-mib 256] [--repeat 2] [--train-seconds 6] [--uploads 2]

Rows:
  (1) plain s3fs put_file of the state file (the floor: same bytes, same server, same client)
  (2) traind's upload (traind.store.remote.Remote.upload): verify the local copy, upload the data,
      check the sizes, the manifest last, read it back
  (3) a torch training loop (OMP_NUM_THREADS=1, its own process pinned to core 0): median step
      time alone, and while the supervisor's mirror (traind.supervisor.mirror, a thread of this
      process, unpinned) uploads back to back; plus the uploader's CPU time per GiB
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.update(AWS_EC2_METADATA_DISABLED="true", AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                  AWS_DEFAULT_REGION="us-east-1")
MIB = 1 << 20
BUCKET = "bench"

TRAIN = r"""
import sys, time, torch
torch.manual_seed(0)
layers = [torch.nn.Linear(1024, 1024) for _ in range(4)]
model = torch.nn.Sequential(*[m for l in layers for m in (l, torch.nn.ReLU())])
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x = torch.randn(64, 1024)
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    t = time.monotonic()
    loss = model(x).square().mean()
    opt.zero_grad(); loss.backward(); opt.step()
    print(f"{t:.6f} {time.monotonic() - t:.6f}", flush=True)
"""


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_server() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = (os.cpu_count() or 1) - 1
    try:
        os.sched_setaffinity(proc.pid, {last})
    except OSError:
        pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto_server did not start")


def make_checkpoint(ckpt_dir: Path, step: int, size: int) -> Path:
    from traind import store
    pending = store.begin(ckpt_dir, step, size)
    block = os.urandom(16 * MIB)
    with open(pending.file_path(store.STATE_NAME), "wb") as f:
        for i in range(0, size, len(block)):
            f.write(block[: min(len(block), size - i)])
    return pending.commit(step, 0, "periodic", {}).path


def best(times: list[float]) -> str:
    return f"best {min(times):.2f} s, median {statistics.median(times):.2f} s"


def train(seconds: float) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", TRAIN, str(seconds)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        os.sched_setaffinity(proc.pid, {0})      # the training core; the server has the last one
    except OSError:
        pass
    return proc


def step_times(out: str, start: float, end: float) -> list[float]:
    found = []
    for line in out.splitlines():
        t, d = map(float, line.split())
        if start <= t and t + d <= end:
            found.append(d)
    return found


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--train-seconds", type=float, default=6.0, help="of the training-alone phase")
    ap.add_argument("--uploads", type=int, default=2, help="background uploads while training")
    args = ap.parse_args()
    import s3fs
    from traind.store.remote import Remote
    from traind.supervisor.mirror import Mirror
    size = args.size_mib * MIB
    server, endpoint = start_server()
    tmp = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    try:
        options = {"key": "testing", "secret": "testing", "endpoint_url": endpoint}
        fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
        fs.mkdir(BUCKET)
        run_dir = tmp / "run"
        ckpt = make_checkpoint(run_dir / "checkpoints", 1, size)
        state = ckpt / "state.pt"
        plain, ours, cpu_plain, cpu_ours = [], [], [], []
        for i in range(args.repeat):
            t, c = time.monotonic(), time.process_time()
            fs.put_file(str(state), f"{BUCKET}/plain-{i}/state.pt")
            plain.append(time.monotonic() - t)
            cpu_plain.append(time.process_time() - c)
            remote = Remote(f"s3://{BUCKET}/ours-{i}", options)
            t, c = time.monotonic(), time.process_time()
            up = remote.upload(ckpt, 1)
            ours.append(time.monotonic() - t)
            cpu_ours.append(time.process_time() - c)
            assert up.how == "uploaded" and remote.latest_valid()[0].step == 1
        mb = size / 1e6
        print(f"state {args.size_mib} MiB, server moto (own process, pinned to the last core), "
              f"client s3fs {s3fs.__version__}")
        gib = size / (1 << 30)
        print(f"(1) plain s3fs put_file     : {best(plain)}  = {mb / min(plain):.1f} MB/s; "
              f"client CPU {min(cpu_plain) / gib:.2f} CPU-s/GiB")
        print(f"(2) traind Remote.upload    : {best(ours)}  = {mb / min(ours):.1f} MB/s "
              f"({min(plain) / min(ours):.2f}x the plain put's throughput); "
              f"client CPU {min(cpu_ours) / gib:.2f} CPU-s/GiB")

        # (3) training alone, then with the mirror uploading back to back
        alone = train(args.train_seconds)
        out_alone, _ = alone.communicate()
        t_alone = [float(line.split()[1]) for line in out_alone.splitlines()[5:]]
        paths = {step: make_checkpoint(run_dir / "checkpoints", step, size) for step in range(2, 2 + args.uploads)}
        events, lines = [], []
        mirror = Mirror(Remote(f"s3://{BUCKET}/mirror", options), run_dir, say=lines.append,
                        event=lambda kind, **f: events.append(kind), keep_last=1).start()
        busy = train(600)
        time.sleep(1.5)                         # past its start-up
        windows, cpu0 = [], time.process_time()
        for step, path in paths.items():
            t0 = time.monotonic()
            mirror.enqueue(path, step, "periodic")
            while mirror.committed_step != step:
                time.sleep(0.01)
            windows.append((t0, time.monotonic()))
        cpu = time.process_time() - cpu0          # this process: the mirror's thread, mostly
        busy.terminate()
        out_busy, _ = busy.communicate()
        mirror.close()
        during = [d for s, e in windows for d in step_times(out_busy, s, e)]
        up_s = [e - s for s, e in windows]
        med_alone, med_during = statistics.median(t_alone), statistics.median(during)
        print(f"(3) training step, alone    : median {med_alone * 1e3:.2f} ms ({len(t_alone)} steps)")
        print(f"    ... while uploading     : median {med_during * 1e3:.2f} ms ({len(during)} steps, "
              f"{len(windows)} background uploads of {args.size_mib} MiB, each {best(up_s)})")
        print(f"    uploader CPU time       : {cpu / (len(windows) * size / (1 << 30)):.2f} CPU-s per GiB uploaded")
        print(f"    slowdown                : {med_during / med_alone:.2f}x the step time "
              f"(training keeps {med_alone / med_during:.0%} of its speed)")
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
