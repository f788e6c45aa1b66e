"""How many steps fit in a training run of MINUTES, from the log.csv of a short probe run of the same settings.

    python benchmarks/fit_steps.py PROBE/log.csv --minutes 6 --wall 41.2

Prints the step count (for `drcn train --steps`) on stdout and how it got there on stderr. The rate is taken
over the probe's logged steps after its first log row (cuDNN's algorithm search and the first launches are
slow); the probe's start-up (its wall time, --wall, less the training time its log reports) is charged to the
run as well, and a share of the time (--spare, default 8%) is left for validation and export, so the cosine
ends before the run's --time-limit cuts it.
"""

from __future__ import annotations

import argparse
import csv
import sys


def fitted_steps(rows: list[dict[str, str]], minutes: float, wall: float, spare: float) -> tuple[int, str]:
    """(steps, explanation) from the probe's log rows; ValueError if they cannot give a rate."""
    train = [(int(row["step"]), float(row["elapsed_s"])) for row in rows if row["kind"] == "train"]
    if len(train) < 2:
        raise ValueError("the probe logged fewer than 2 train rows: no rate")
    (first_step, first_s), (last_step, last_s) = train[0], train[-1]
    if last_s <= first_s:
        raise ValueError("the probe's log has no time between its rows")
    rate = (last_step - first_step) / (last_s - first_s)
    start_up = max(wall - last_s, 0.0)
    seconds = minutes * 60 * (1 - spare) - start_up
    if seconds <= 0:
        raise ValueError(f"start-up ({start_up:.0f} s) leaves no time for training in {minutes} minutes")
    steps = max(int(rate * seconds), 1)
    why = (f"{rate:.2f} steps/s over the probe's steps {first_step}-{last_step}; start-up {start_up:.0f} s; "
           f"{seconds:.0f} s of training -> {steps} steps")  # fmt: skip
    return steps, why


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", help="the probe run's log.csv")
    parser.add_argument("--minutes", type=float, required=True, help="the run's --time-limit")
    parser.add_argument("--wall", type=float, required=True, help="the probe's wall time in seconds, start-up included")
    parser.add_argument("--spare", type=float, default=0.08, help="share of the time kept for validation and export")
    args = parser.parse_args()
    with open(args.log, newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        steps, why = fitted_steps(rows, args.minutes, args.wall, args.spare)
    except ValueError as error:
        sys.exit(f"fit_steps: {error}")
    print(why, file=sys.stderr)
    print(steps)


if __name__ == "__main__":
    main()
