"""`traind plot RUN_DIR -o run.png`: a picture of a run across all its attempts.

Loss and every other logged metric against the step (metrics.jsonl: on resume the lines past the
resumed step were dropped, so it is the run's one history), and from events.jsonl: where each
attempt started (its resume point), where attempts ended by a crash or a preemption, and the
checkpoints as ticks. matplotlib is an optional extra (`pip install 'traind[plot]'`), imported by
this command only.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..contract import exitcodes
from ..contract.errors import TraindError, UsageError
from ..supervisor.runfiles import read_events

SKIP = ("step", "epoch", "time", "steps_per_s")      # not metrics: the axes and the timing fields
PREEMPTED_EXIT = exitcodes.PREEMPTED


def register(sub) -> None:
    p = sub.add_parser("plot", help="draw a run: metrics against step, attempts, crashes, preemptions, checkpoints",
                       description="Draw the run in RUN_DIR as a PNG: loss and every logged metric against the "
                                   "step across all attempts, with attempt boundaries, crashes and preemptions "
                                   "marked, checkpoints as ticks and the resume points. Needs matplotlib "
                                   "(pip install 'traind[plot]').")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("-o", "--output", type=Path, default=Path("run.png"), metavar="FILE.png",
                   help="where to write the picture (default run.png)")
    p.set_defaults(func=cmd_plot)


def read_history(run_dir: Path) -> dict:
    """What the picture shows, as data: metrics by name, attempts, ends, checkpoints."""
    path = run_dir / "metrics.jsonl"
    metrics: dict[str, list[tuple[int, float]]] = {}
    for line in (path.read_text(errors="replace") if path.is_file() else "").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue            # a line torn by a kill
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            continue
        for key, value in row.items():
            if key not in SKIP and isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics.setdefault(key, []).append((row["step"], float(value)))
    starts, ends, checkpoints = [], [], []
    timeline: list[list] = []    # [attempt, seconds from the first start, seconds at its end, how it ended]
    events = read_events(run_dir)
    if not metrics and not events:
        raise UsageError(f"{run_dir}: no metrics.jsonl and no events.jsonl (not a run dir of traind run)")
    first = next((e["time"] for e in events if isinstance(e.get("time"), (int, float))), 0.0)
    for event in events:
        kind, when = event.get("event"), event.get("time") if isinstance(event.get("time"), (int, float)) else first
        if kind == "spawned":
            starts.append((event.get("attempt"), event.get("checkpoint_step") or 0))
            timeline.append([event.get("attempt"), when - first, None, "running"])
        elif kind == "checkpoint" and isinstance(event.get("checkpoint_step"), int):
            checkpoints.append((event["checkpoint_step"], event.get("reason")))
        elif kind == "transition" and event.get("exit_code", 0) != 0 and isinstance(event.get("last_step"), int):
            how = "preempted" if event.get("exit_code") == PREEMPTED_EXIT or event.get("target") == "preempted" \
                else "crash"
            ends.append((event["last_step"], how, event.get("attempt")))
        if kind == "transition" and "exit_code" in event and timeline and timeline[-1][2] is None:
            code = event.get("exit_code")
            timeline[-1][2:] = [when - first, "finished" if code == 0 else "preempted" if code == PREEMPTED_EXIT
                                or event.get("target") == "preempted" else "crash"]
    return {"metrics": metrics, "starts": starts, "ends": ends, "checkpoints": checkpoints, "timeline": timeline}


COLOURS = {"crash": "tab:red", "preempted": "tab:orange", "finished": "tab:blue", "running": "tab:gray"}


def draw_timeline(plt, history: dict, title: str):
    """A job that reports no steps (it does not speak traind's channel): its attempts against
    time, each coloured by how it ended."""
    fig, ax = plt.subplots(figsize=(10, 1.0 + 0.4 * len(history["timeline"])))
    for attempt, start, end, how in history["timeline"]:
        ax.barh(attempt, (start if end is None else end) - start or 0.5, left=start, color=COLOURS[how])
    ax.set_xlabel("seconds since the first attempt started")
    ax.set_ylabel("attempt")
    ax.set_title(title + " (no steps reported: attempts against time)")
    from matplotlib.patches import Patch
    ax.legend(handles=[Patch(color=c, label=h) for h, c in COLOURS.items()], loc="upper right", fontsize="small")
    return fig


def draw(history: dict, out: Path, title: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")               # files only, never a display
        import matplotlib.pyplot as plt
    except ImportError:
        raise TraindError("traind plot needs matplotlib: pip install 'traind[plot]'") from None
    names = sorted(history["metrics"], key=lambda n: (n != "loss", n))
    if not names:
        if not history["timeline"]:
            raise UsageError(f"{title}: metrics.jsonl has no numeric metric to draw")
        _save(plt, draw_timeline(plt, history, title), out)
        return
    fig, axes = plt.subplots(len(names), 1, sharex=True, figsize=(10, 2.2 * len(names) + 1), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        steps, values = zip(*history["metrics"][name])
        ax.plot(steps, values, lw=1, color="tab:blue")
        ax.set_ylabel(name)
        for attempt, step in history["starts"][1:]:
            ax.axvline(step, color="tab:green", lw=1, ls="--")
        for step, how, _ in history["ends"]:
            ax.axvline(step, color="tab:orange" if how == "preempted" else "tab:red", lw=1.2)
        for step, reason in history["checkpoints"]:
            ax.plot([step], [0], marker="|", markersize=10, color="tab:gray", transform=ax.get_xaxis_transform(),
                    clip_on=False)
    top = axes[0, 0]
    top.set_title(title)
    from matplotlib.lines import Line2D
    top.legend(handles=[Line2D([], [], color="tab:green", ls="--", label="attempt resumed here"),
                        Line2D([], [], color="tab:red", label="crash"),
                        Line2D([], [], color="tab:orange", label="preemption (exit 75)"),
                        Line2D([], [], color="tab:gray", marker="|", ls="", label="checkpoint")],
               loc="upper right", fontsize="small")
    axes[-1, 0].set_xlabel("step")
    _save(plt, fig, out)


def _save(plt, fig, out: Path) -> None:
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=100)
    except OSError as err:
        raise UsageError(f"{out}: cannot write: {err.strerror or err}") from None
    finally:
        plt.close(fig)


def cmd_plot(args) -> int:
    run_dir = args.run_dir
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: not a directory")
    history = read_history(run_dir)
    ended = [how for *_, how in history["timeline"]]
    draw(history, args.output, f"{run_dir}: {len(history['starts'])} attempt(s), "
                                f"{ended.count('crash')} crash(es), {ended.count('preempted')} preemption(s)")
    print(f"wrote {args.output}")
    return 0
