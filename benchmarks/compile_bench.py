"""Training-step time of medseg's U-Net, eager vs ``torch.compile``.

Whether compiling the training step would buy more iterations in a CPU budget (it did not on
the benchmark machine: 0.74x, so the trainer has no compile option; docs/benchmarks.md). AdamW
steps of an accuracy benchmark's
network (``--case``, the shapes of ``channels_last_bench.py``; ``--deep-supervision`` as the
hippocampus row trains) with bf16 autocast and the channels-last layout as those rows use
them, once eager and once compiled (TorchInductor). Reports the first step (for the compiled
network: the compilation), the median step after warm-up, and how many steps the
compilation takes to pay for itself. nnU-Net v2 compiles its network the same way
(``nnUNet_compile``). Prints and saves JSON::

    .venv/bin/python benchmarks/compile_bench.py --threads 2 --case hippocampus --deep-supervision
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from channels_last_bench import CASES, build_case

RESULTS = Path(__file__).resolve().parent / "results" / "compile_bench.json"


def step_times(
    case: str, compiled: bool, *, bf16: bool, channels_last: bool, deep_supervision: bool, steps: int
) -> tuple[float, float]:
    """(first step s, median of the steps after two warm-up steps s)."""
    net, x, y = build_case(case, channels_last, deep_supervision)
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    forward = torch.compile(net) if compiled else net
    times = []
    for _ in range(steps + 2):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = forward(x)
            logits = out[0] if isinstance(out, (list, tuple)) else out
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    return times[0], statistics.median(times[2:])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--case", choices=sorted(CASES), default="hippocampus")
    parser.add_argument("--deep-supervision", action="store_true")
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    opts = {
        "bf16": not args.no_bf16,
        "channels_last": not args.no_channels_last,
        "deep_supervision": args.deep_supervision,
    }
    eager_first, eager = step_times(args.case, False, steps=args.steps, **opts)
    print(f"eager:    first step {eager_first:.2f} s, then {eager:.3f} s/step", flush=True)
    compiled_first, compiled = step_times(args.case, True, steps=args.steps, **opts)
    print(f"compiled: first step {compiled_first:.2f} s (compilation), then {compiled:.3f} s/step")
    saving = eager - compiled
    break_even = (compiled_first - eager_first) / saving if saving > 0 else None
    print(
        f"speed-up per step {eager / compiled:.2f}x; compilation repaid after "
        + (f"{break_even:.0f} steps" if break_even is not None else "never (no faster)")
    )
    report = {
        "case": args.case,
        "threads": args.threads,
        "steps": args.steps,
        **opts,
        "machine": platform.machine(),
        "torch": torch.__version__,
        "eager_first_s": eager_first,
        "eager_step_s": eager,
        "compiled_first_s": compiled_first,
        "compiled_step_s": compiled,
        "speedup": eager / compiled,
        "break_even_steps": break_even,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
