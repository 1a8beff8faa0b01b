"""`saom-train`: collect, synth, train, evaluate and export from one command.

Every subcommand that trains or evaluates takes the YAML config (defaults: config/train.yaml) plus
``--set section.key=value`` overrides; the shortcut flags are the same overrides, named.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

# Delegated subcommands: module -> help. Imported only when used, so one missing module fails
# only its own subcommand.
_DELEGATED = {"collect": ("saom_ros.training.ai2thor_collect",
                          "render an Ai2Thor dataset (COCO layout) with the simulator"),
              "synth": ("saom_ros.training.synthetic",
                        "write a procedural dataset (COCO layout) for tests and small models")}


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", type=Path, help="YAML file over config/train.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=3e-4 (repeatable)")


def _train_parser(p: argparse.ArgumentParser) -> None:
    _config_args(p)
    p.add_argument("--data", help="training dataset (data.train)")
    p.add_argument("--run-dir", help="output folder (train.run_dir)")
    p.add_argument("--init", help="checkpoint to start from (model.init)")
    p.add_argument("--model-type", help="architecture preset (model.model_type)")
    p.add_argument("--max-steps", type=int, help="optimizer steps (train.max_steps)")
    p.add_argument("--device", help="auto, cpu or cuda (train.device)")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue from <run_dir>/checkpoints/last.pt when it exists (if it "
                       "is unreadable, from the newest readable step_*.pt)")
    again.add_argument("--overwrite", action="store_true",
                       help="replace the run already in the run dir (its checkpoints, metrics "
                       "and logs are deleted)")
    p.add_argument("--stop-after", type=int, metavar="N",
                   help="checkpoint and stop after N more steps (for time-limited jobs)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _everything_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--everything", action="append", default=[], metavar="FIELD=VALUE",
                   help=f"everything-mode setting (EverythingSettings field, e.g. "
                   f"pred_iou_thresh=0.3) {what} (repeatable)")


def _everything_values(items: Sequence[str]) -> dict:
    """``--everything FIELD=VALUE`` options as a dict (values parsed as YAML)."""
    from saom_ros.training.config import parse_override
    out: dict = {}
    for item in items:
        if "." in item.split("=", 1)[0]:
            raise ValueError(f"--everything {item!r}: expected FIELD=VALUE, e.g. "
                             "pred_iou_thresh=0.3")
        out.update(parse_override(item))
    return out


def _evaluate_parser(p: argparse.ArgumentParser) -> None:
    _config_args(p)
    _everything_arg(p, "over each checkpoint's own (same as --set evaluate.everything.FIELD=VALUE)")
    p.add_argument("--data", required=True, help="evaluation dataset (COCO or SAOM layout)")
    p.add_argument("--split", default="test", help="list of a SAOM-layout metadata file")
    p.add_argument("--checkpoint", action="append", required=True,
                   help="SAOM or official sam_vit_*.pth checkpoint (repeat to compare)")
    p.add_argument("--names", help="comma-separated names, one per checkpoint (default: stems)")
    p.add_argument("--model-type", help="preset of official SAM files (default: detected)")
    p.add_argument("--out", type=Path, required=True, help="folder for results.json/results.md")
    p.add_argument("--protocol", default="prompted,everything",
                   help="comma-separated: prompted (each object's assigned grid point, its "
                        "feature arg-max kept on the object, as training assigns), "
                        "prompted-reference (the SAOM reference code's choice: arg-max over the "
                        "image, nearest grid point), everything")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _export_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", type=Path, help="run folder (its last checkpoint), a training "
                   "checkpoint file, or a SAOM or official SAM checkpoint (to change only the "
                   "settings it carries)")
    p.add_argument("-o", "--out", type=Path, required=True, help="SAOM checkpoint to write")
    _everything_arg(p, "to carry, over the run's evaluate section or the source checkpoint's own")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saom-train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in _DELEGATED.items():
        # their own arguments are added lazily (in main), so a missing module breaks only them
        sub.add_parser(name, help=help_text, add_help=False)
    _train_parser(sub.add_parser("train", help="fine-tune SAM into SAOM"))
    _evaluate_parser(sub.add_parser("evaluate", help="compare checkpoints (prompted, "
                                    "everything mode, COCO AP)"))
    _export_parser(sub.add_parser("export", help="write the SAOM checkpoint the node loads"))
    return parser


def _train_overrides(args: argparse.Namespace) -> list[dict]:
    named = {("data", "train"): args.data, ("train", "run_dir"): args.run_dir,
             ("model", "init"): args.init, ("model", "model_type"): args.model_type,
             ("train", "max_steps"): args.max_steps, ("train", "device"): args.device}
    return [{s: {k: v}} for (s, k), v in named.items() if v is not None]


def _check_folder(path: Path, what: str) -> None:
    """ValueError unless ``path`` is a folder or can be made one, found before any work."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        where = "" if existing == path else f": {existing}"
        raise ValueError(f"{what} {path}{where} is a file, not a folder")


def _device(name: str) -> str:
    import torch
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def _run(command: str, args: argparse.Namespace, rest: Sequence[str]) -> int:
    if command in _DELEGATED:
        import importlib
        module = importlib.import_module(_DELEGATED[command][0])
        sub = argparse.ArgumentParser(prog=f"saom-train {command}",
                                      description=_DELEGATED[command][1])
        module.add_arguments(sub)
        return int(module.run(sub.parse_args(rest)) or 0)
    from saom_ros.training.config import check_device, load_config, validate_config
    if command == "train":
        from saom_ros.training.finetune import TrainingInterrupted, train
        cfg = load_config(args.config, [*args.overrides, *_train_overrides(args)])
        validate_config(cfg)  # before the run dir's path is used
        _check_folder(Path(cfg["train"]["run_dir"]), "run dir")
        try:
            last = train(cfg, resume=args.resume, stop_after=args.stop_after,
                         progress=not args.no_progress, overwrite=args.overwrite)
        except TrainingInterrupted as stop:  # the shell's convention for death by a signal
            if stop.main:
                print(f"saom-train train: {stop}", file=sys.stderr)
            return 128 + stop.signum
        print(f"checkpoint: {last}")
        return 0
    if command == "export":
        return _export(args)
    from saom_ros.training import evaluate
    from saom_ros.training.datasets import open_dataset
    cfg = load_config(args.config, [
        *args.overrides, {"evaluate": {"everything": _everything_values(args.everything)}}])
    validate_config(cfg)
    check_device(args.device, "--device")
    names = (args.names.split(",") if args.names else [Path(c).stem for c in args.checkpoint])
    _check_folder(args.out, "--out")
    dataset = open_dataset(args.data, args.split)
    evaluate.evaluate_checkpoints(args.checkpoint, names, dataset, cfg, args.out,
                                  device=_device(args.device), model_type=args.model_type,
                                  protocols=[p for p in args.protocol.split(",") if p],
                                  progress=not args.no_progress)
    print((args.out / "results.md").read_text())
    return 0


def _export(args: argparse.Namespace) -> int:
    from saom_ros.everything_settings import RUNTIME_FIELDS
    from saom_ros.training.export import export
    if args.out.is_dir():
        raise ValueError(f"-o {args.out} is a folder; name the checkpoint file to write, e.g. "
                         f"{args.out / 'saom.pt'}")
    values = _everything_values(args.everything)
    out = export(args.source, args.out, values)
    dropped = sorted(RUNTIME_FIELDS & set(values))
    if dropped:
        print(f"saom-train export: warning: --everything {', '.join(dropped)} not written: "
              "checkpoints carry no speed/memory settings, each machine keeps its own (the "
              "node's parameters set them)", file=sys.stderr)
    print(f"wrote {out}")
    return 0


# argparse reads a value that starts with '-' as an option unless it is a plain negative number,
# so "--horizon-range -20,50" (the help's own form) would lose its value.
_NUMBER = r"(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?"
_NEGATIVE_LIST = re.compile(rf"-{_NUMBER}(,-?{_NUMBER})+")
_LONG_OPTION = re.compile(r"--[^=]+")


def _attach_negative_lists(argv: Sequence[str]) -> list[str]:
    """``argv`` with each comma-separated list that starts with a minus joined to the long
    option before it (``--horizon-range=-20,50``); nothing after ``--``, which ends options."""
    out: list[str] = []
    for k, arg in enumerate(argv):
        if arg == "--":
            return out + list(argv[k:])
        if out and _NEGATIVE_LIST.fullmatch(arg) and _LONG_OPTION.fullmatch(out[-1]):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def _os_error_text(err: OSError) -> str:
    """An OSError as one line: the file(s) first, as shell tools write it."""
    if err.filename is None or err.strerror is None:
        return str(err)
    files = f"{err.filename} -> {err.filename2}" if err.filename2 else str(err.filename)
    return f"{files}: {err.strerror}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = _attach_negative_lists(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in _DELEGATED:
        args, rest = argparse.Namespace(command=argv[0]), argv[1:]
    else:
        args, rest = parser.parse_args(argv), []
    try:
        return _run(args.command, args, rest)
    except ImportError as err:
        print(f"saom-train {args.command}: cannot import what it needs: {err}", file=sys.stderr)
        return 2
    except ValueError as err:  # DatasetError, CheckpointError included
        print(f"saom-train {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a path that cannot be read or written: no traceback to show
        print(f"saom-train {args.command}: error: {_os_error_text(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
