"""Issue 21: the job's output reaches the console line by line. The log watch wakes the loop when
the attempt's log grows (and only then); RealOS echoes each line as it comes, not once a second."""
import select
import subprocess
import sys
import time

from traind.supervisor.logwatch import LogWatch


def test_the_watch_wakes_on_a_write_and_not_otherwise(tmp_path):
    log = tmp_path / "attempt-1.log"
    log.touch()
    watch = LogWatch.open()
    assert watch is not None                       # Linux: inotify is there
    watch.watch(log)
    assert select.select([watch], [], [], 0.2)[0] == []          # nothing written: no wake-up
    with open(log, "a") as f:
        f.write("step 1\n")
    assert select.select([watch], [], [], 2.0)[0] == [watch]     # a write: a wake-up
    watch.drain()
    assert select.select([watch], [], [], 0.2)[0] == []          # drained: quiet again
    watch.close()


def test_traind_run_echoes_each_line_before_the_next_is_printed(tmp_path):
    """Lines 0.5 s apart: each reaches `traind run`'s output before the job prints the next (the
    loop's batched read alone left them up to a second behind, often two at once)."""
    job = tmp_path / "printer.py"
    job.write_text("import time\nfor i in range(6):\n    print(f'line {i}', flush=True)\n    time.sleep(0.5)\n")
    spec = tmp_path / "printer.yaml"
    spec.write_text(f"name: printer\ncommand: [{sys.executable}, {job}]\nrun_dir: {tmp_path / 'run'}\n")
    p = subprocess.Popen([sys.executable, "-m", "traind", "run", str(spec)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    seen = [time.monotonic() for line in p.stdout if "| line " in line]
    assert p.wait(30) == 0 and len(seen) == 6
    gaps = [b - a for a, b in zip(seen, seen[1:])]
    assert min(gaps) > 0.25, gaps          # never two lines in one batch
