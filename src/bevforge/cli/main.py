"""`bevforge` console script: parses arguments and calls library code (one module per subcommand).

Each subcommand module ``bevforge.cli.<module>`` defines ``HELP: str``, ``add_arguments(parser)`` and
``run(args) -> int`` (the exit code). Modules are imported lazily so ``bevforge --help`` is fast and a
broken optional dependency only affects its own subcommand. Bad input (``bevforge.errors.InputError``: a
recipe, a setting, a file, a checkpoint) is printed as one ``error:`` line naming it and the fix, exit
status 2; any other exception keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("doctor", "check Python/torch/CUDA/NCCL/Triton, GPUs, dataset and infos"),
    "demo": ("demo", "synthetic data -> prepare -> train debug recipe -> test -> visualise -> report"),
    "synth": ("synth", "generate a synthetic nuScenes-format dataset"),
    "prepare": ("prepare", "write versioned info files for a nuScenes-format dataset"),
    "convert-infos": ("convert_infos", "convert official BEVFormer / mmdet3d info pickles"),
    "cache": ("cache", "build the pre-resized image cache"),
    "train": ("train", "train a recipe (1 CPU/GPU, or N under torchrun)"),
    "launch": ("launch", "one-click torchrun launcher (DATA_PATH, CONFIG, GPUS, NNODES, ...)"),
    "test": ("test", "inference over a split, submission JSON and metrics"),
    "eval": ("eval", "score a nuScenes detection submission JSON"),
    "vis": ("vis", "BEV + 6-camera pictures of predictions (green) and ground truth (red)"),
    "browse": ("browse", "ground truth after the training pipeline's transforms"),
    "report": ("report", "HTML run report of a work dir"),
    "info": ("info", "parameter counts per part of a recipe's model"),
    "config": ("config_cmd", "print the resolved config of a recipe"),
    "bench": ("bench", "benchmarks: train, infer, data, kernel, eval"),
    "export": ("export", "export a model to ONNX and check it with onnxruntime"),
}


def build_parser(load_all: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bevforge", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        if load_all:
            _module(module_name).add_arguments(p)
    return parser


def _module(module_name: str):
    return importlib.import_module(f"bevforge.cli.{module_name}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Only the chosen subcommand's module is imported (others may pull heavy dependencies).
    parser = build_parser(load_all=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if argv[0] == "--version":
        from bevforge import __version__

        print(__version__)
        return 0
    if argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv)  # argparse prints the error with the valid choices and exits 2
        return 2
    module_name = SUBCOMMANDS[argv[0]][0]
    sub_parser = argparse.ArgumentParser(prog=f"bevforge {argv[0]}", description=SUBCOMMANDS[argv[0]][1])
    module = _module(module_name)
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(argv[1:])
    from bevforge.errors import InputError

    try:
        return int(module.run(args) or 0)
    except InputError as e:  # a bad recipe, --set, file or checkpoint: the message names it and the fix
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
