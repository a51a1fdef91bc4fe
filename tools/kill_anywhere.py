#!/usr/bin/env python
"""Kill a training run with SIGKILL at random moments; check that ``--resume`` always continues.

A short CPU run of ``train_net.py`` (the synthetic panoptic config at 64 pixels, a data-loader
worker, a checkpoint every ``--period`` iterations, evaluation every ``--eval-period``) is killed
``--kills`` times, each time in one of four phases taken in turn: data loading (the main process
waiting for its batch), the step (forward, backward, optimizer), evaluation, and checkpoint
writing. The whole process group goes (main process and loader workers), as when a machine
dies. After each kill the script checks that ``last_checkpoint`` names a loadable checkpoint,
then starts ``train_net.py --resume`` again; the next run must start at most one checkpoint
period behind the last finished iteration. After the last kill the run is left to finish; its
final checkpoint must hold ``MAX_ITER`` optimizer and scheduler steps.

To know where a run is, the child process is ``train_net.py``'s ``main`` with a trainer that
prints a line at the start of each phase (this script's ``--child`` mode); the kill comes after
a random delay within the phase's typical length, and the phase the run was in when killed is
read back from the last line it printed.

Usage::

    nice -n 10 python tools/kill_anywhere.py [--kills 10] [--seed 0] [--work-dir DIR]

Prints "N/N resumed" and writes ``benchmarks/results/kill_anywhere.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(
    ROOT,
    "configs",
    "synthetic",
    "panoptic-segmentation",
    "maskformer2_R18_synthetic.yaml",
)
RESULT = os.path.join(ROOT, "benchmarks", "results", "kill_anywhere.json")
MARK = "@@phase"  # prefix of the child's phase lines
PHASES = ("data", "step", "eval", "checkpoint")
# Start line of each phase; the phase a kill landed in is read from the last line printed.
STARTS = {
    "data": "data",
    "step": "step",
    "eval": "eval-start",
    "checkpoint": "save-start",
}
AFTER = {"eval-end": "hooks", "save-end": "hooks", "hooks": "hooks", "start": "set-up"}
# Small images, a shallower model, a loader worker.
TINY = [
    "INPUT.IMAGE_SIZE", "64",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "96",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.WARMUP_ITERS", "0",
    "DATALOADER.NUM_WORKERS", "1",
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "784",
    "MODEL.MASK_FORMER.DEC_LAYERS", "4",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
    "MODEL.DEVICE", "cpu",
]  # fmt: skip


# ------------------------------------------------------------------------------ child process
def _emit(*fields) -> None:
    print(MARK, *fields, flush=True)


def _child(argv: list[str]) -> int:
    """``train_net.py`` ``main`` with a trainer that announces its phases on stdout."""
    sys.path.insert(0, ROOT)
    from detectron2.engine import HookBase, default_argument_parser

    import train_net

    class Announce(HookBase):
        def before_train(self):
            _emit("start", self.trainer.start_iter)

        def before_step(self):
            _emit("data", self.trainer.iter)  # run_step first waits for the batch

        def after_step(self):
            _emit("hooks", self.trainer.iter)  # the step is done; checkpoint, eval, logs

        def after_train(self):
            _emit("end", self.trainer.iter)

    class Batches:
        """The training loader; a line when a batch has arrived (the step starts)."""

        def __init__(self, loader):
            self.loader = loader

        def __iter__(self):
            for batch in self.loader:
                _emit("step")
                yield batch

    class AnnouncingTrainer(train_net.Trainer):
        def __init__(self, cfg):
            super().__init__(cfg)
            save = self.checkpointer.save

            def announced_save(name, **kwargs):
                _emit("save-start", name)
                save(name, **kwargs)
                _emit("save-end", name)

            self.checkpointer.save = announced_save

        def build_hooks(self):
            return [Announce(), *super().build_hooks()]

        @classmethod
        def build_train_loader(cls, cfg):
            return Batches(super().build_train_loader(cfg))

        @classmethod
        def test(cls, cfg, model, evaluators=None):
            _emit("eval-start")
            results = super().test(cfg, model, evaluators)
            _emit("eval-end")
            return results

    train_net.Trainer = AnnouncingTrainer
    args = default_argument_parser().parse_args(argv)
    train_net.main(args)
    return 0


# ----------------------------------------------------------------------------- parent process
def _checkpoint_state(output_dir: str) -> dict:
    """What ``last_checkpoint`` names, and whether that file loads (with its iteration)."""
    import torch

    tag = os.path.join(output_dir, "last_checkpoint")
    if not os.path.exists(tag):
        return {"last_checkpoint": None, "loadable": True, "iteration": None}
    with open(tag) as f:
        name = f.read().strip()
    try:
        data = torch.load(os.path.join(output_dir, name), map_location="cpu", weights_only=True)
        return {
            "last_checkpoint": name,
            "loadable": "model" in data,
            "iteration": int(data["iteration"]),
        }
    except Exception as e:  # noqa: BLE001  (any failure to load is the finding)
        return {
            "last_checkpoint": name,
            "loadable": False,
            "error": f"{type(e).__name__}: {e}",
        }


class Run:
    """One ``train_net.py`` process group whose phase lines are read in a thread."""

    def __init__(self, args: list[str], env: dict, log_path: str):
        self.log = open(log_path, "a")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--child", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue = queue.Queue()
        self.last: list[str] = []
        self.last_done: int | None = None  # iteration of the last "hooks" line
        self.seen: list[tuple[float, list[str]]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith(MARK):
                fields = line.split()[1:]
                self.last = fields
                if fields[0] == "hooks":
                    self.last_done = int(fields[1])
                self.lines.put((time.monotonic(), fields))
            else:
                self.log.write(line)
        self.lines.put(None)

    def next_line(self, timeout: float):
        item = self.lines.get(timeout=timeout)
        if item is not None:
            self.seen.append(item)
        return item

    def kill(self):
        os.killpg(self.proc.pid, signal.SIGKILL)  # the process group this script started
        self.proc.wait()
        self.reader.join(timeout=30)  # the lines printed before the kill, up to the pipe's end

    def close(self):
        self.proc.wait()
        self.log.close()


def _durations(runs: list[Run], start: str) -> list[float]:
    """Seconds from each ``start`` line to the next line, over the lines seen so far."""
    out = []
    for run in runs:
        for (t0, fields), (t1, _) in zip(run.seen, run.seen[1:]):
            if fields[0] == start:
                out.append(t1 - t0)
    return out


def _kill_once(run: Run, phase: str, rng: random.Random, history: list[Run], period: int):
    """Wait for the start of ``phase`` (its n-th occurrence in this run, n random), sleep a
    random part of its typical length, SIGKILL. Returns what was seen."""
    start_line = STARTS[phase]
    occurrence = {
        "data": rng.randint(1, 2 * period),
        "step": rng.randint(1, 2 * period),
        "eval": 1,
        "checkpoint": rng.randint(1, 2),
    }[phase]
    default = {"data": 0.02, "step": 0.3, "eval": 2.0, "checkpoint": 0.3}[phase]
    seen, start_iter = 0, None
    while True:
        item = run.next_line(timeout=900)
        if item is None:
            return {"finished_before_kill": True, "start_iter": start_iter}
        _, fields = item
        if fields[0] == "start":
            start_iter = int(fields[1])
        if fields[0] == start_line:
            seen += 1
            if seen == occurrence:
                break
    typical = _durations(history + [run], start_line) or [default]
    delay = rng.uniform(0.0, sorted(typical)[len(typical) // 2])
    time.sleep(delay)
    run.kill()
    last, last_done = list(run.last), run.last_done  # the lines printed up to the kill
    in_phase = {
        "data": "data",
        "step": "step",
        "eval-start": "eval",
        "save-start": "checkpoint",
    }
    return {
        "target_phase": phase,
        "phase_at_kill": in_phase.get(last[0], AFTER.get(last[0], last[0])),
        "last_line": " ".join(last),
        "delay_s": round(delay, 3),
        "start_iter": start_iter,
        "last_finished_iteration": last_done,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--period", type=int, default=5, help="SOLVER.CHECKPOINT_PERIOD")
    parser.add_argument("--eval-period", type=int, default=20, help="TEST.EVAL_PERIOD")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the run")
    parser.add_argument("--work-dir", default=None, help="default: a temporary folder")
    parser.add_argument("--output", default=RESULT)
    args = parser.parse_args(argv)

    import mask2former  # noqa: F401
    from mask2former.data.synthetic import generate_synthetic_dataset

    rng = random.Random(args.seed)
    work = args.work_dir or tempfile.mkdtemp(prefix="kill_anywhere_")
    output_dir = os.path.join(work, "output")
    shutil.rmtree(output_dir, ignore_errors=True)
    data_root = generate_synthetic_dataset(
        os.path.join(work, "data"),
        num_train=16,
        num_val=4,
        min_size=64,
        max_size=96,
        progress=False,
    )
    env = dict(
        os.environ,
        M2F_SYNTHETIC_ROOT=data_root,
        PYTHONWARNINGS="ignore",
        OMP_NUM_THREADS=str(args.threads),
        PYTHONUNBUFFERED="1",
    )
    train_args = [
        "--resume", "--config-file", CONFIG, *TINY,
        "SOLVER.MAX_ITER", str(args.max_iter),
        "SOLVER.CHECKPOINT_PERIOD", str(args.period),
        "TEST.EVAL_PERIOD", str(args.eval_period),
        "OUTPUT_DIR", output_dir,
    ]  # fmt: skip
    log_path = os.path.join(work, "runs.log")
    started = time.time()
    kills, history = [], []
    for k in range(args.kills):
        phase = PHASES[k % len(PHASES)]
        run = Run(train_args, env, log_path)
        kill = _kill_once(run, phase, rng, history, args.period)
        run.close()
        history.append(run)
        if kill.get("finished_before_kill"):
            print(f"the run ended before kill {k + 1}: raise --max-iter for more kills")
            break
        kill["after_kill"] = _checkpoint_state(output_dir)
        kills.append(kill)
        print(f"kill {k + 1}: {json.dumps(kill)}", flush=True)

    final = Run(train_args, env, log_path)
    last_start, end = None, None
    while (item := final.next_line(timeout=3600)) is not None:
        if item[1][0] == "start":
            last_start = int(item[1][1])
        elif item[1][0] == "end":
            end = int(item[1][1])
    final.close()

    # Each kill is "resumed" when the next run started from what last_checkpoint named, that
    # file loaded, and at most one checkpoint period of finished iterations was lost.
    starts = [kill.get("start_iter") for kill in kills[1:]] + [last_start]
    resumed, lost = 0, []
    for kill, next_start in zip(kills, starts):
        state = kill["after_kill"]
        expected = 0 if state["iteration"] is None else state["iteration"] + 1
        done = kill.get("last_finished_iteration")
        kill["next_start_iter"] = next_start
        kill["lost_iterations"] = None if done is None else done + 1 - next_start
        ok = (
            state["loadable"]
            and next_start == expected
            and (kill["lost_iterations"] is None or kill["lost_iterations"] <= args.period)
        )
        kill["resumed"] = bool(ok)
        resumed += ok
        if kill["lost_iterations"] is not None:
            lost.append(kill["lost_iterations"])

    import torch

    final_file = os.path.join(output_dir, "model_final.pth")
    final_state = {}
    if os.path.exists(final_file):
        data = torch.load(final_file, map_location="cpu", weights_only=True)
        trainer = data["trainer"]
        steps = {float(s["step"]) for s in trainer["_trainer"]["optimizer"]["state"].values()}
        final_state = {
            "iteration": int(data["iteration"]),
            "scheduler_steps": int(trainer["hooks"]["LRScheduler"]["last_epoch"]),
            "optimizer_steps": sorted(steps),
        }
    completed = (
        end is not None
        and end >= args.max_iter  # max_iter + 1 when the run had already ended
        and final_state.get("iteration") == args.max_iter - 1
        and final_state.get("scheduler_steps") == args.max_iter
        and final_state.get("optimizer_steps") == [float(args.max_iter)]
    )
    hit = sorted({kill.get("phase_at_kill") for kill in kills if "phase_at_kill" in kill})
    report = {
        "resumed": resumed,
        "kills": len(kills),
        "summary": f"{resumed}/{len(kills)} resumed",
        "completed_with_right_iteration_count": completed,
        "final": final_state,
        "max_lost_iterations": max(lost) if lost else 0,
        "checkpoint_period": args.period,
        "phases_hit": hit,
        "max_iter": args.max_iter,
        "eval_period": args.eval_period,
        "seed": args.seed,
        "threads": args.threads,
        "wall_s": round(time.time() - started, 1),
        "loadavg": open("/proc/loadavg").read().split()[:3],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "details": kills,
        "log": log_path,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    print(
        f"{report['summary']}; run completed with the right iteration count: {completed}; "
        f"at most {report['max_lost_iterations']} iterations lost (period {args.period}); "
        f"phases hit: {', '.join(hit)}; written to {args.output}"
    )
    return 0 if resumed == len(kills) and completed else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.exit(_child(sys.argv[2:]))
    sys.exit(main())
