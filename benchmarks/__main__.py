"""python -m benchmarks [--quick | --tiny] [--only NAME ...] [--json FILE]

Runs the benchmarks in turn, prints each one's figures, ratios and targets as it finishes, and
writes them all with the machine's description to FILE. Sizes: full by default (the figures in
README "Performance"), --quick for a check in under ten minutes on a shared 2-core machine,
--tiny for the test suite (seconds; the figures mean nothing).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import time
import traceback
import warnings

BENCHMARKS = ("trainer_overhead", "precision_speed", "input_headroom", "compute_efficiency", "ingest_throughput",
              "serving_latency", "scaling", "default_run", "remote_root", "dask_workers",
              "beam_remote_writes")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[2])
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_const", const="quick", dest="size",
                       help="small sizes and fewer rounds (under 10 minutes on 2 cores)")
    sizes.add_argument("--tiny", action="store_const", const="tiny", dest="size",
                       help="smallest sizes, to check that the benchmarks run (figures are meaningless)")
    parser.add_argument("--only", action="append", choices=BENCHMARKS, metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    parser.add_argument("--json", metavar="FILE", help="write every figure and the machine's description here")
    parser.set_defaults(size="full")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message=".*shuffle=True. was passed")
    from benchmarks.report import machine, write_json

    names = args.only or list(BENCHMARKS)
    document = {"size": args.size, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
                "benchmarks": {}, "failed": {}}
    print(f"convpipe benchmarks ({args.size}) on {document['machine']['cpu_model']}, "
          f"{document['machine']['cores']} cores, load {document['machine']['load_average']}", flush=True)
    started = time.perf_counter()
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        try:
            result = module.run(args.size)
        except Exception as exc:  # one broken benchmark should not hide the others' figures
            document["failed"][name] = f"{type(exc).__name__}: {exc}"
            print(f"== {name}: FAILED\n{traceback.format_exc()}", flush=True)
            continue
        document["benchmarks"][name] = result.to_dict()
        print("\n".join(result.lines()), flush=True)
    document["seconds"] = round(time.perf_counter() - started, 1)
    document["load_average_after"] = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    print(f"done in {document['seconds']:.0f} s", flush=True)
    if args.json:
        write_json(args.json, document)
        print(f"wrote {args.json}")
    return 1 if document["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
