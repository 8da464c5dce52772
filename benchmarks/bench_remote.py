"""Remote checkpoints: upload throughput against a plain s3fs put, and what the background upload
costs the training steps meanwhile. One run, side by side, against a real S3 server (moto) on
127.0.0.1 in its own process (pinned to the last core: it stands in for a store elsewhere).

    python benchmarks/bench_remote.py [--size-mib 256] [--repeat 2] [--uploads 2] [--idle-seconds 5]

Rows:
  (1) plain s3fs put_file of the state file (the floor: same bytes, same server, same client)
  (2) traind's upload (traind.store.remote.Remote.upload): verify the local copy, upload the data,
      check the sizes, the manifest last, read it back
  (3) a torch training loop (OMP_NUM_THREADS=1, its own process pinned to core 0): median step
      time in idle windows and in windows where the supervisor's mirror (traind.supervisor.mirror,
      threads of this process, unpinned) uploads, alternating; with the uploads at nice 0 and at
      the mirror's nice (10); plus the uploader's CPU time per GiB
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
    ap.add_argument("--idle-seconds", type=float, default=5.0, help="idle window after each upload")
    ap.add_argument("--uploads", type=int, default=2, help="background uploads while training, per nice value")
    args = ap.parse_args()
    import s3fs
    from traind.store.remote import Remote
    from traind.supervisor import mirror as mirror_mod
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

        # (3) one training process; idle windows and upload windows alternate (the load of the
        # machine drifts: alternating cancels it), once with the uploads at nice 0, once at nice 10
        paths = {step: make_checkpoint(run_dir / "checkpoints", step, size) for step in range(2, 2 + 2 * args.uploads)}
        busy = train(3600)
        time.sleep(2.0)                         # past its start-up
        rows = {}
        for nice in (0, mirror_mod.UPLOAD_NICE):      # in this order: a thread's nice only goes up
            mirror_mod.UPLOAD_NICE = nice
            mirror = Mirror(Remote(f"s3://{BUCKET}/mirror-{nice}", options), run_dir, say=lambda text: None,
                            event=lambda kind, **f: None, keep_last=1).start()
            idle, uploads, cpu = [], [], 0.0
            for _ in range(args.uploads):
                step = min(paths)
                path = paths.pop(step)
                t0 = time.monotonic()
                c0 = time.process_time()
                mirror.enqueue(path, step, "periodic")
                while mirror.committed_step != step:
                    time.sleep(0.01)
                cpu += time.process_time() - c0
                t1 = time.monotonic()
                uploads.append((t0, t1))
                time.sleep(max(args.idle_seconds, 0.0))
                idle.append((t1 + 0.2, time.monotonic()))
            mirror.close()
            rows[nice] = (idle, uploads, cpu)
        busy.terminate()
        out, _ = busy.communicate()
        print(f"(3) training steps (torch MLP, 1 thread, pinned to core 0) in idle vs upload windows, "
              f"{args.uploads} uploads of {args.size_mib} MiB each way:")
        for nice, (idle, uploads, cpu) in rows.items():
            quiet = statistics.median([d for a, b in idle for d in step_times(out, a, b)])
            during = statistics.median([d for a, b in uploads for d in step_times(out, a, b)])
            took = [b - a for a, b in uploads]
            print(f"    uploads at nice {nice:2d}: step {quiet * 1e3:.1f} ms idle, {during * 1e3:.1f} ms while "
                  f"uploading = {during / quiet:.2f}x (training keeps {quiet / during:.0%}); upload {best(took)} "
                  f"({size / 1e6 / min(took):.1f} MB/s); uploader CPU {cpu / (len(took) * gib):.2f} CPU-s/GiB")
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
