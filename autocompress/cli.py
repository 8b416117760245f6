"""Command line: run | resume | report | show | export | validate | list | profile-device | worker.

Errors the user can act on print as one red line on stderr with a non-zero exit code; ``--debug``
shows the traceback. Ctrl-C saves what finished, prints how to resume and exits 130.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from .errors import AutocompressError, ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="Automated, hardware-aware model compression search.")
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)
_DEBUG = {"on": False}


def _log(msg: str) -> None:
    out.print(msg)


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="show tracebacks")):
    _DEBUG["on"] = debug


def _floats(flag: str, text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.replace(" ", ",").split(",") if v]
    except ValueError:
        raise ConfigError(f"{flag} '{text}': expected numbers separated by commas, e.g. {flag} 0.485,0.456,0.406") from None


@app.command()
def run(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="run spec YAML (flags override it)"),
    model: Optional[str] = typer.Option(None, help="zoo name (see `list models`), path/file.py:fn or package.module:fn"),
    checkpoint: Optional[str] = typer.Option(None, help="state_dict to load into the model (weights_only)"),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="allow a full pickle: only for files you trust"),
    data: Optional[str] = typer.Option(None, help="digits (built in), an image folder, or a .npz"),
    image_size: Optional[int] = typer.Option(None, help="resize images to this size (digits: 8 -> this)"),
    normalize: Optional[str] = typer.Option(None, help="dataset (default: the train split's mean/std), imagenet or none"),
    mean: Optional[str] = typer.Option(None, help="explicit per-channel mean in the 0..1 scale, e.g. 0.4914,0.4822,0.4465 (with --std)"),
    std: Optional[str] = typer.Option(None, help="explicit per-channel std, e.g. 0.247,0.243,0.261 (with --mean)"),
    space: Optional[str] = typer.Option(None, help="search space name (see `list spaces`) or YAML path"),
    profile: Optional[str] = typer.Option(None, help="hardware profile name (see `list profiles`) or YAML path"),
    trials: Optional[int] = typer.Option(None, help="trial budget"),
    timeout: Optional[float] = typer.Option(None, help="stop starting new trials after this many seconds"),
    out_dir: Optional[str] = typer.Option(None, "--out", help="run folder (default results/<model>-<data>-<time>)"),
    seed: Optional[int] = typer.Option(None, help="seed of the data split, teacher, KD and sampler (default 0)"),
    sampler_seed: Optional[int] = typer.Option(None, help="seed of the sampler only: repeat a search on the same split and teacher"),
    sampler: Optional[str] = typer.Option(None, help="nsga2 (default), tpe, random, nsga3, gp, or an optuna sampler class"),
    backend: Optional[str] = typer.Option(None, help="optuna (default) or ray"),
    storage: Optional[str] = typer.Option(None, help="Optuna storage URL (default: SQLite in the run folder)"),
    study: Optional[str] = typer.Option(None, help="study name (default derived from the run folder)"),
    workers: Optional[int] = typer.Option(None, help="parallel trials (ray backend)"),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (auto | ray://host:port); local if unset"),
    max_accuracy_drop: Optional[float] = typer.Option(None, help="constraint, percentage points vs the baseline"),
    min_speedup: Optional[float] = typer.Option(None, help="constraint, x vs the baseline"),
    max_size_mb: Optional[float] = typer.Option(None, help="constraint on the model file"),
    metric: Optional[str] = typer.Option(None, help="user metric file.py:fn or module:fn, fn(outputs, targets) -> float"),
    no_early_stop: bool = typer.Option(False, "--no-early-stop", help="never stop a distillation early"),
    no_multi_fidelity: bool = typer.Option(False, "--no-multi-fidelity", help="no dominance gate on the speed measured before "
                                           "training and no KD rungs (constraints are still checked first; early-stop rules stay)"),
    no_finish: bool = typer.Option(False, "--no-finish", help="no finishing: the end of the budget is not spent re-distilling "
                                   "the fastest candidate that narrowly missed the accuracy target with a larger KD budget"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="print each trial's start and every distillation epoch (else a progress bar shows them)"),
    train_device: Optional[str] = typer.Option(None, "--train-device", help="auto (default: a CUDA GPU when present), cpu or cuda: teacher training, logits, KD"),
):
    """Search compressed models and write the Pareto front, its models and a report."""
    from .config import load_run_spec, read_yaml
    from .engine import run as run_engine

    overrides = dict(model=model, checkpoint=checkpoint, data=data, image_size=image_size, space=space,
                     profile=profile, trials=trials, timeout=timeout, out=out_dir, seed=seed, sampler_seed=sampler_seed, sampler=sampler,
                     backend=backend, storage=storage, study=study, workers=workers, address=address, metric=metric,
                     train_device=train_device, normalize=normalize, mean=_floats("--mean", mean),
                     std=_floats("--std", std))
    if trust_checkpoint:
        overrides["trust_checkpoint"] = True
    if no_early_stop:
        overrides["early_stop"] = False
    if no_multi_fidelity:
        overrides["multi_fidelity"] = False
    if no_finish:
        overrides["finish"] = False
    cons = {k: v for k, v in dict(max_accuracy_drop=max_accuracy_drop, min_speedup=min_speedup, max_size_mb=max_size_mb).items() if v is not None}
    if cons:
        base = (read_yaml(config).get("constraints") if config else None) or {"max_accuracy_drop": 1.0}
        overrides["constraints"] = {**base, **cons}
    spec = load_run_spec(config, **overrides)
    if spec.trust_checkpoint:
        err.print("[yellow]warning: --trust-checkpoint loads a full pickle, which can run arbitrary code; use it only for files you made[/]")
    run_engine(spec, log=_log, progress=True, verbose=verbose)


@app.command()
def resume(run_dir: Path = typer.Argument(..., help="a run folder"), trials: Optional[int] = typer.Option(None, help="new total budget"),
           verbose: bool = typer.Option(False, "--verbose", "-v", help="print each trial's start and every distillation epoch")):
    """Continue an interrupted run: finished trials are kept, the budget completes."""
    from .engine import resume as resume_engine

    resume_engine(run_dir, log=_log, trials=trials, progress=True, verbose=verbose)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a run folder"),
           retime: int = typer.Option(0, help="re-time the front and the references in this many fresh processes (0: reuse the run's)")):
    """Rebuild trials.csv, pareto.csv, the front's models and report.html from the stored trials."""
    from .report import finalize
    from .store import RunStore

    RunStore(run_dir).read_run_yaml()
    finalize(run_dir, log=_log, retime=retime)


@app.command()
def show(run_dir: Path = typer.Argument(..., help="a run folder")):
    """Print the Pareto front and the reference points (baseline, int8 alone, the seeds) as tables."""
    from .tables import show_tables

    console = out if out.is_terminal else Console(highlight=False, width=160)  # a pipe: don't wrap at 80
    for renderable in show_tables(run_dir):
        console.print(renderable)


@app.command()
def export(run_dir: Path = typer.Argument(...), trial: int = typer.Option(..., help="trial number"),
           to: Path = typer.Option(..., "--to", help="destination folder")):
    """Write one trial's ONNX model, card and recipe (re-created from the recipe if it is not on disk)."""
    from .exporting import export_trial

    dst = export_trial(run_dir, trial, to, log=_log)
    out.print(f"exported trial {trial} -> {dst}")


@app.command()
def validate(files: List[Path] = typer.Argument(..., help="search-space, hardware-profile or run YAML files")):
    """Check YAML files; prints ok or one line per problem."""
    from .config import validate_file

    bad = 0
    for f in files:
        kind, problems = validate_file(f)
        if problems:
            bad += 1
            for p in problems:
                err.print(f"[red]{escape(p)}[/]")
        else:
            out.print(f"{f}: ok ({kind})")
    if bad:
        raise typer.Exit(1)


class Listable(str, Enum):
    models = "models"
    spaces = "spaces"
    profiles = "profiles"
    samplers = "samplers"
    criteria = "criteria"


@app.command("list")
def list_(what: Listable = typer.Argument(..., help="models | spaces | profiles | samplers | criteria")):
    """List built-in models, search spaces, hardware profiles, samplers or pruning criteria."""
    from .config import find_named, read_yaml
    from .shipped import names

    if what == Listable.models:
        from .models.zoo import MODELS

        for n in MODELS.names():
            out.print(n)
    elif what in (Listable.spaces, Listable.profiles):
        sub = "search_spaces" if what == Listable.spaces else "hardware_profiles"
        for n in names(sub):
            desc = read_yaml(find_named(n, sub, what.value)).get("description", "")
            out.print(f"{n:16s} {desc}")
    elif what == Listable.samplers:
        from .search.optuna_backend import SAMPLERS

        for n in SAMPLERS.names():
            out.print(n)
    else:
        from .compress.criteria import CRITERIA

        for n in CRITERIA.names():
            out.print(n)


@app.command("profile-device")
def profile_device(profile: str = typer.Option("cpu", help="profile to run the benchmarks with"),
                   out_path: Optional[Path] = typer.Option(None, "--out", help="new profile YAML to write (its table beside it)"),
                   quick: bool = typer.Option(False, help="small grid (a minute) to try the command; rough figures, not a table to search with"),
                   calibrate: bool = typer.Option(False, "--calibrate/--no-calibrate", help="also fit a whole-model correction on pruned zoo models (needs torch; off: it has not improved on the table's own in-network fit)"),
                   check: Optional[str] = typer.Option(None, "--check", help="a table or predict-mode profile: time held-out models here and print how well it predicts them")):
    """Benchmark kernels on this device and write a predict-mode profile with a lookup table (rerun to continue
    an interrupted build); or --check a table on its device. Needs no torch."""
    from .measure.predict import check_device, profile_device as run_profile

    if check is not None:
        check_device(check, log=_log)
        return
    if out_path is None:
        raise ConfigError("profile-device: --out is required (the profile YAML to write), or use --check TABLE")
    run_profile(profile, out_path, quick=quick, log=_log, calibrate=calibrate)  # it says what it wrote


@app.command()
def worker(storage: str = typer.Option(..., help="Optuna storage URL shared by the workers"),
           study: str = typer.Option(..., help="study name"),
           out_dir: Optional[str] = typer.Option(None, "--out", help="local folder for this worker's artifacts")):
    """Join an existing study as one more worker (any machine that reaches the database)."""
    from .engine import join

    join(storage, study, out=out_dir, log=_log)


def main(argv: list[str] | None = None) -> int:
    from .engine import Interrupted

    try:
        rc = app(args=argv, standalone_mode=False, prog_name="autocompress")
        return rc if isinstance(rc, int) else 0
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        err.print("[red]aborted[/]")
        return 130
    except typer.TyperException as e:  # usage errors: bad flag, bad value, missing argument
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:
            out.print(ctx.get_help())
            return 0
        cmd = ctx.command_path if ctx is not None else "autocompress"
        msg = e.format_message() if hasattr(e, "format_message") else str(e)
        err.print(f"[red]error: {escape(msg)} (see `{cmd} --help`)[/]")
        return 2
    except Interrupted as e:
        err.print(f"[yellow]interrupted: finished trials are saved; continue with `autocompress resume {escape(str(e.run_dir))}`[/]")
        return 130
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        return 130
    except AutocompressError as e:
        if _DEBUG["on"]:
            raise
        lines = str(e).splitlines() or [type(e).__name__]
        for line in lines:
            err.print(f"[red]error: {escape(line)}[/]")
        return e.exit_code
    except Exception as e:  # a bug, not bad input: still one line (the traceback with --debug)
        if _DEBUG["on"]:
            raise
        first = (str(e).strip().splitlines() or [""])[0][:300]
        err.print(f"[red]error: unexpected {escape(type(e).__name__)}: {escape(first)}; rerun with --debug for the "
                  "traceback and report it[/]")
        return 1


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
