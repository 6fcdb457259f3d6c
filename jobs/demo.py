# Thin entry point (the docstring is its --help text); it must hold no demo logic (ray_rm/demo.py).
"""The end-to-end demo: train -> serve -> relabel -> eval on the built-in data (``make demo``).

  python jobs/demo.py [--output-dir outputs/demo] [--quick] [--verbose] [train.key=value ...]
  python jobs/demo.py --prm [--output-dir outputs/demo-prm] [--quick] [--verbose]   (process reward model demo, make demo-prm)
  python jobs/demo.py --attributes [--output-dir outputs/demo_attributes] [--quick] [--verbose]   (multi-objective demo)

Starts a local Ray cluster; about 6-8 minutes on a 2-core CPU machine (--quick: ~2 minutes, a few steps).
Prints where each artifact is and writes output_dir/demo_summary.json.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ray_rm.cli import run_job  # noqa: E402
from ray_rm.config_schema import RayConfig  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="outputs/demo", help="where every stage writes (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="a few training steps and rows: checks the path, "
                                                            "not the quality")
    parser.add_argument("--attributes", action="store_true",
                        help="the multi-objective demo instead: an attribute reward model (model.head=attributes) "
                             "on built-in rated answers, per-attribute correlation before and after training "
                             "(ray_rm/configs/demo_attributes.yaml; default output-dir outputs/demo_attributes)")
    parser.add_argument("--prm", action="store_true", help="the process reward model demo: SmolLM2 + LoRA learns "
                                                          "to find the first wrong step of arithmetic solutions")
    parser.add_argument("--verbose", action="store_true",
                        help="same as ray.verbose=true: " + RayConfig.__dataclass_fields__["verbose"].metadata["help"])
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="training overrides on top of ray_rm/configs/demo.yaml")
    args = parser.parse_args(argv)
    if args.prm and args.attributes:
        parser.error("--prm and --attributes are two different demos: pick one")
    if args.attributes:
        from ray_rm.demo_attributes import run_attribute_demo

        output = args.output_dir if args.output_dir != parser.get_default("output_dir") else "outputs/demo_attributes"
        run_attribute_demo(output, args.quick, args.overrides, verbose=args.verbose)
        return
    if args.prm:
        from ray_rm.demo_prm import run_prm_demo

        out = args.output_dir if args.output_dir != "outputs/demo" else "outputs/demo-prm"
        run_prm_demo(out, args.quick, args.overrides, verbose=args.verbose)
        return
    from ray_rm.demo import run_demo

    run_demo(args.output_dir, args.quick, args.overrides, verbose=args.verbose)


if __name__ == "__main__":
    run_job(main)
