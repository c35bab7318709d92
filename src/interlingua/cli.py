"""``interlingua <command>``: each command is a plain function of a resolved :class:`Config`.

    interlingua baselines --config embedded --limit 1000
    interlingua baselines --config tiny eval.batch_size=4 data.source=tests/assets/squad_mini
    interlingua encode --checkpoint runs/embedded/run/step_000300 --text "Context: …" -o msg.bin
    interlingua generate --checkpoint runs/embedded/run/step_000300 --model gemma3-270m msg.bin
    interlingua generate --checkpoint <hybrid checkpoint> --model gemma3-270m --question "Who?" msg.bin
    interlingua sweep --config compression base.data.source=../shared/data/squad grid.precision=[int8,int4]

Every command takes its overrides the same way, as ``KEY=VALUE`` (``train.lr=1e-4``, ``models.1.prompt_format=chat``,
``eval.limit=null``): the keys of the run config, or of the sweep file for ``sweep`` (``base.KEY`` = its base run).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path

from interlingua.config import Config, ConfigError, load_config

log = logging.getLogger("interlingua")
DEFAULT_CONFIG = "native"
"""The embedded default: the native interlingua (issue #15; the pooled combination is ``embedded``)."""
_OVERRIDE = re.compile(r"[A-Za-z_][\w.]*=")
"""The start of a ``KEY=VALUE`` override (a dotted key, then ``=``)."""


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", default=DEFAULT_CONFIG,
                        help=f"config name (default {DEFAULT_CONFIG}; also native-full, embedded, seed, tiny, "
                             "llama-qwen) or YAML path")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. train.lr=1e-4 eval.batch_size=8")
    parser.add_argument("--output-dir", "-o", default=None, help="run folder (default runs/<config name>/<command>)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars")


def _add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    """--checkpoint, and the config it is used with: the stored one unless --config (plus KEY=VALUE overrides)."""
    parser.add_argument("--checkpoint", required=True, type=Path, help="a step_N/ checkpoint folder")
    parser.add_argument("--config", "-c", default=None,
                        help="config name or path (default: the one stored with the checkpoint)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interlingua", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("baselines", help="text, token-budget and question-only baselines on SQuAD validation")
    _add_common(p)
    p.add_argument("--limit", type=int, default=None, help="validation examples (sets eval.limit)")
    p.set_defaults(func=cmd_baselines)

    p = sub.add_parser("train", help="train the interlingua (aligner + adapters) on SQuAD train")
    _add_common(p)
    p.add_argument("--resume", action="store_true", help="continue exactly from <output-dir>/latest")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("bridge",
                       help="native design: fit the vocabulary bridge, print the fit, write the step-0 checkpoint")
    _add_common(p)
    p.set_defaults(func=cmd_bridge)

    p = sub.add_parser("run", help="the main job: train, then evaluate the final checkpoint and write the report")
    _add_common(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted run's training")
    p.add_argument("--limit", type=int, default=None, help="validation examples (sets eval.limit)")
    p.add_argument("--baselines", type=Path, default=None,
                   help="reuse the baseline rows of an earlier `baselines` or `eval` run on the same examples")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("eval", help="latent evaluation of a checkpoint next to the baselines, with controls")
    _add_checkpoint_args(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of the stored config")
    p.add_argument("--limit", type=int, default=None, help="validation examples (sets eval.limit)")
    p.add_argument("--baselines", type=Path, default=None,
                   help="reuse the baseline rows of an earlier `baselines` or `eval` run on the same examples")
    p.add_argument("--output-dir", "-o", default=None, help="results folder (default <run>/eval/<step_N>)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("encode", help="sender: prompt text -> wire message file(s), with one LLM and the encoder")
    _add_checkpoint_args(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", default=None,
                        help="one whole prompt, used as given; in bash $'Context: …\\nQuestion: …\\nAnswer:' "
                             "gives the real newlines of the standard prompt; a hybrid checkpoint "
                             "(interlingua.conditioning=hybrid) sends the context alone: 'Context: …'")
    source.add_argument("--input", type=Path, default=None,
                        help='JSONL, one object a line: {"text": …} or {"context": …, "question": …} ({"context": …} '
                             'is enough for a hybrid checkpoint), optional "id" (names its message file)')
    p.add_argument("--sender", default=None, help="the model that reads the text (default: the checkpoint's first)")
    p.add_argument("--output", "-o", required=True, type=Path,
                   help="the message file (--text), or a folder for one <id or line number>.bin a line (--input)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. compression.precision=int8")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("generate", help="receiver: wire message file(s) -> one greedy answer each, with one LLM")
    _add_checkpoint_args(p)
    p.add_argument("--model", required=True, help="the receiver: one of the checkpoint's models")
    questions = p.add_mutually_exclusive_group()
    questions.add_argument("--question", default=None,
                           help="hybrid checkpoints: the question the receiver reads as text (for every message)")
    questions.add_argument("--input", type=Path, default=None,
                           help='hybrid checkpoints: JSONL with a "question" per line; message <name>.bin takes the '
                                'line whose "id" (else line number, 000001) is <name>, as `encode --input` names them')
    p.add_argument("messages", nargs="+", metavar="MESSAGE",
                   help="message files written by `encode` (KEY=VALUE among them: overrides, e.g. runtime.device=cpu)")
    p.set_defaults(func=cmd_generate, overrides=[])

    p = sub.add_parser("sweep", help="compression sweep: d_inter x M x wire precision -> F1 vs bytes table and plot")
    p.add_argument("--config", "-c", default="compression",
                   help="sweep file (configs/sweeps/*.yaml) or the name of a shipped one (compression, tiny)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="overrides of the sweep file: base.KEY reaches the base run of every cell "
                        "(base.data.source=DIR base.train.steps=40), the rest the sweep (grid.precision=[fp16,int4])")
    p.add_argument("--output-dir", "-o", default=None, help="sweep folder (default: the sweep file's output_dir)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars (one line per cell still)")
    p.add_argument("--report", action="store_true",
                   help="train and evaluate nothing: write the table and plot of the planned cells finished so far")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("compare", help="finished runs side by side: ablation table (MD/JSON) and training curves (PNG)")
    p.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR", help="a label and a run folder (or its copy in results/)")
    p.add_argument("--output-dir", "-o", required=True,
                   help="folder for ablation.md, ablation.json, ablation_curves.png")
    p.add_argument("--eval-dir", default="eval",
                   help="the evaluation folder inside every run (default eval; e.g. eval-n1000, what "
                        "`interlingua eval --limit 1000 -o RUN/eval-n1000` wrote)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("config", help="print the resolved config as YAML")
    _add_common(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("models", help="list the embedded model names and where they come from")
    p.set_defaults(func=cmd_models)
    return parser


def resolve_config(args: argparse.Namespace, extra: list[str] | None = None) -> Config:
    overrides = list(args.overrides) + list(extra or [])
    if getattr(args, "output_dir", None):
        overrides.append(f"runtime.output_dir={args.output_dir}")
    return load_config(args.config, overrides)


def cmd_sweep(args: argparse.Namespace) -> int:
    from interlingua.sweep import load_sweep, run_sweep

    sweep = load_sweep(args.config, args.overrides)
    out_dir = run_sweep(sweep, output_dir=args.output_dir, progress=not args.quiet, report_only=args.report)
    print(f"\nwrote {out_dir}/")
    print((out_dir / "table.md").read_text())
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from interlingua.eval.compare import CompareError, compare_runs

    runs = {}
    for item in args.runs:
        name, sep, directory = item.partition("=")
        if not sep or not name or not directory:
            raise CompareError(f"{item!r} is not NAME=RUN_DIR (e.g. seed=results/embedded-seed-s250)")
        runs[name] = directory
    print(compare_runs(runs, args.output_dir, eval_dir=args.eval_dir))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    print(OmegaConf.to_yaml(OmegaConf.structured(resolve_config(args))), end="")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from interlingua.models.registry import describe_embedded_models

    print(describe_embedded_models())
    return 0


def cmd_baselines(args: argparse.Namespace) -> int:
    from interlingua.eval.jobs import baselines_job

    extra = [f"eval.limit={args.limit}"] if args.limit is not None else []
    config = resolve_config(args, extra)
    out_dir = baselines_job(config, progress=not args.quiet)
    print(f"\nwrote {out_dir}/")
    print((out_dir / "report.md").read_text())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from interlingua.training.recipe import train

    config = resolve_config(args)
    final = train(config, config.output_dir("train"), resume=args.resume, progress=not args.quiet)
    if _is_main_process():
        print(f"final checkpoint: {final}")
    return 0


def cmd_bridge(args: argparse.Namespace) -> int:
    """The native design before any training: ``<output_dir>/step_000000`` (evaluate it with ``eval``); with
    ``train.init_from`` the new shape as training would start it (the start checkpoint's matching tensors)."""
    from interlingua.artifacts.files import prepare_run_dir
    from interlingua.artifacts.layout import checkpoint_dir
    from interlingua.models.system import load_frozen_models
    from interlingua.runtime import frozen_dtype, resolve_device, seed_everything
    from interlingua.training.recipe import starting_model

    config = resolve_config(args)
    if config.interlingua.design.value != "native":
        raise ConfigError("`interlingua bridge` needs interlingua.design=native (e.g. --config native)")
    seed_everything(config.runtime.seed)
    device = resolve_device(config.runtime.device)
    model = starting_model(config, *load_frozen_models(config, device, frozen_dtype(device, config.runtime.dtype)))
    out = prepare_run_dir(config, config.output_dir("bridge"))
    target = checkpoint_dir(out, 0)
    model.save_pretrained(target)
    print(json.dumps(model.bridge_metrics, indent=2))
    print(f"step-0 checkpoint: {target}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from interlingua.eval.jobs import eval_job
    from interlingua.training.recipe import train

    extra = [f"eval.limit={args.limit}"] if args.limit is not None else []
    config = resolve_config(args, extra)
    run_dir = config.output_dir("run")
    final = train(config, run_dir, resume=args.resume, progress=not args.quiet)
    if not _is_main_process():  # under `accelerate launch` one process evaluates
        return 0
    out_dir = eval_job(final, config=config, baselines_dir=args.baselines, progress=not args.quiet)
    print(f"\nfinal checkpoint: {final}\nwrote {out_dir}/")
    print((out_dir / "report.md").read_text())
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from interlingua.eval.jobs import eval_job

    out_dir = eval_job(
        args.checkpoint, config=_named_config(args), overrides=_checkpoint_overrides(args), limit=args.limit,
        output_dir=Path(args.output_dir) if args.output_dir else None, baselines_dir=args.baselines,
        progress=not args.quiet,
    )
    print(f"\nwrote {out_dir}/")
    print((out_dir / "report.md").read_text())
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from interlingua.models.interlingua import read_spec
    from interlingua.wire.service import MessageInputError, NamedPrompt, encode_texts, read_prompt_file

    if args.text is not None and args.output.is_dir():
        raise MessageInputError(f"-o {args.output} is a folder; with --text, -o names the message file")
    if args.input is not None and args.output.is_file():
        raise MessageInputError(f"-o {args.output} is a file; with --input, -o names a folder for the messages")
    if args.text is not None:
        prompts, names = [NamedPrompt("message", args.text)], ["the --text prompt"]
    else:
        prompts = read_prompt_file(args.input, read_spec(args.checkpoint).interlingua.conditioning)
        names = [f"prompt {p.name} of {args.input}" for p in prompts]
    messages = encode_texts(
        args.checkpoint, [p.text for p in prompts], args.sender, _checkpoint_overrides(args), _named_config(args),
        names=names,
    )
    paths = [args.output] if args.text is not None else [args.output / f"{p.name}.bin" for p in prompts]
    for path, message in zip(paths, messages):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(message)
        print(f"{path}\t{len(message)} bytes")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from interlingua.wire.service import MessageInputError, generate_from_messages, questions_for_messages

    args.messages, overrides = _split_messages(args.messages)
    args.overrides = list(args.overrides) + overrides
    if not args.messages:
        raise MessageInputError("no message file given (KEY=VALUE arguments are overrides)")
    for path in args.messages:
        if not path.is_file():
            raise MessageInputError(f"{path}: no such message file")
    questions = None
    if args.question is not None:
        questions = [args.question] * len(args.messages)
    elif args.input is not None:
        questions = questions_for_messages(args.input, args.messages)
    answers = generate_from_messages(
        args.checkpoint, [path.read_bytes() for path in args.messages], args.model, _checkpoint_overrides(args),
        _named_config(args), names=[str(path) for path in args.messages], questions=questions,
    )
    for path, answer in zip(args.messages, answers):
        print(answer if len(answers) == 1 else f"{path}\t{answer}")
    return 0


def _checkpoint_overrides(args: argparse.Namespace) -> list[str]:
    return list(args.overrides)


def _split_messages(items: list[str]) -> tuple[list[Path], list[str]]:
    """``generate``'s positional arguments: message files, and the ``KEY=VALUE`` overrides among them (an
    item that names an existing file is a message even if it holds ``=``)."""
    messages, overrides = [], []
    for item in items:
        is_override = _OVERRIDE.match(item) and not Path(item).is_file()
        (overrides if is_override else messages).append(item if is_override else Path(item))
    return messages, overrides


def _named_config(args: argparse.Namespace) -> Config | None:
    """--config if given; None = the config stored with --checkpoint."""
    return load_config(args.config) if args.config else None


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # parse_known_args + this check: KEY=VALUE overrides may also come after an option
    # (`run -o x a=1 --resume b=2`), which plain parse_args refuses for a nargs="*" positional.
    args, rest = parser.parse_known_args(argv)
    stray = [item for item in rest if item.startswith("-") or "=" not in item or not hasattr(args, "overrides")]
    if "--set" in stray:
        parser.error("--set is gone: write each override as KEY=VALUE, e.g. train.lr=1e-4 (sweep: base.train.lr=1e-4)")
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if rest:
        args.overrides = list(args.overrides) + rest
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _quiet_libraries()
    from interlingua.errors import USER_ERRORS

    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"interlingua {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
