"""``data-appraisal experiment ...`` sub-commands."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from common.errors import AppraisalError
from common.experiments import DATA_ROOT

# The experiment modules (numpy, scipy, matplotlib, the MPC launcher) are imported when a command
# runs, not here: every `data-appraisal` command, the services included, imports this module.

app = typer.Typer(
    help="Reproduce the paper's experiments through the real two-party MPC.",
    no_args_is_help=True,
)
err_console = Console(stderr=True)


class DatasetChoice(enum.StrEnum):
    digits = "digits"
    mnist = "mnist"
    cifar10 = "cifar10"
    mnist_like = "mnist-like"


def _numbers(kind: type[float] | type[int], *, low: float) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}") from None
        if not values or any(not v >= low for v in values):
            raise typer.BadParameter(f"expected numbers ≥ {low:g}, got {text!r}")
        return values

    return parse


def _list_option(kind: type[float] | type[int], help: str, *, low: float = 1e-300) -> Any:
    """A comma-separated list of numbers (positive unless ``low`` says otherwise)."""
    return typer.Option(parser=_numbers(kind, low=low), metavar="X,Y,...", help=help)


Dataset = Annotated[
    DatasetChoice,
    typer.Option(
        help="digits and mnist-like are offline (mnist-like is NOT MNIST: digits upsampled to "
        "28x28); mnist and cifar10 need torchvision and network access."
    ),
]
Out = Annotated[
    Path | None, typer.Option(help="Output directory (default: experiment-results/<experiment>).")
]
Seed = Annotated[int, typer.Option(help="Seed of the split, label noise and sampling.")]
Size = Annotated[int | None, typer.Option(min=1, help="Default depends on the data set.")]
L2 = Annotated[float, typer.Option(min=0.0, help="λ of the objective Σ L + λ‖θ‖².")]
Candidates = Annotated[
    int | None, typer.Option(min=2, help="Number of candidates N (default: 10).")
]
DataRoot = Annotated[
    Path, typer.Option(help="Where torchvision keeps MNIST / CIFAR-10 (downloaded if missing).")
]
DEFAULT_ROOT = DATA_ROOT


def _go(
    ctx: typer.Context,
    name: str,
    *,
    dataset: DatasetChoice,
    out: Path | None,
    **options: Any,
) -> None:
    """Build the shared setup from the options, run the experiment with progress bars, report."""
    from common.experiments import EXPERIMENTS

    try:
        from common.experiments import core

        experiment: Callable[..., dict[str, Any]] = EXPERIMENTS[name]().run
    except ModuleNotFoundError as exc:
        if exc.name is None or not exc.name.startswith("matplotlib"):
            raise
        err_console.print(
            "[bold red]error:[/] the experiments need their optional extra (matplotlib, for "
            "the plots): pip install 'data-appraisal[experiments]'",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(code=1) from None
    shared = {f.name for f in dataclasses.fields(core.Setup)}
    parts = [f"data-appraisal experiment {ctx.info_name}", f"--dataset {dataset.value}"]
    for key, value in ctx.params.items():
        if value is not None and key not in ("dataset", "out"):
            shown = ",".join(map(str, value)) if isinstance(value, list) else value
            parts.append(f"--{key.replace('_', '-')} {shown}")
    out = out or Path("experiment-results") / str(ctx.info_name)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
    )
    setup = core.Setup(
        dataset=dataset.value,
        out=out,
        command=" ".join([*parts, f"--out {out}"]),
        progress=progress,
        **{k: v for k, v in options.items() if k in shared},
    )
    try:
        with progress:
            payload = experiment(setup, **{k: v for k, v in options.items() if k not in shared})
    except AppraisalError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    pngs = sorted(p.name for p in out.glob("*.png"))
    err_console.print(
        f"{ctx.info_name} on {payload['dataset']['name']} took {payload['elapsed_seconds']:.0f} s; "
        f"wrote {out / 'results.json'}, {out / 'results.md'} and {', '.join(pngs)}",
        highlight=False,
        soft_wrap=True,
    )


@app.command("label-noise")
def label_noise_command(
    ctx: typer.Context,
    dataset: Dataset = DatasetChoice.digits,
    out: Out = None,
    seed: Seed = 0,
    n_train: Size = None,
    n_test: Size = None,
    candidates: Candidates = None,
    candidate_size: Annotated[
        int | None,
        typer.Option(min=1, help="Samples a candidate (default: the rest, split N ways)."),
    ] = None,
    lrs: Annotated[str, _list_option(float, "Fine-tuning learning rates.")] = "0.001,0.1,10",
    budgets: Annotated[
        str, _list_option(float, "Fine-tuning budgets, in multiples of the influence MPC time.")
    ] = "1,4,16",
    steps: Annotated[
        str | None,
        _list_option(int, "Fixed fine-tuning step counts instead of budgets (no calibration)."),
    ] = None,
    calibration_steps: Annotated[
        int, typer.Option(min=2, help="Steps of the second calibration run (the first has 1).")
    ] = 8,
    calibration_candidates: Annotated[
        int, typer.Option(min=1, help="Candidates the calibration runs score (median).")
    ] = 3,
    l2: L2 = 1.0,
    data_root: DataRoot = DEFAULT_ROOT,
) -> None:
    """Table 1 / Figure 2: candidates with labels 1 and 7 swapped with probability p/N.

    Every method's MPC scores, the true utility U and Spearman's ρ against U and against p;
    fine-tuning at each learning rate and each runtime budget (k × the influence MPC time).
    """
    _go(ctx, "label_noise", **ctx.params)


@app.command("class-ratio")
def class_ratio_command(
    ctx: typer.Context,
    dataset: Dataset = DatasetChoice.digits,
    out: Out = None,
    seed: Seed = 0,
    repeats: Annotated[int, typer.Option(min=1, help="Fresh draws of the whole problem.")] = 5,
    n_train: Annotated[
        int | None, typer.Option(min=2, help="|D_tr|, split ratio:1 (default: 55 digits, 1100).")
    ] = None,
    ratio: Annotated[int, typer.Option(min=1, help="First : second class in D_tr.")] = 10,
    n_test: Annotated[
        int | None, typer.Option(min=2, help="|D_te|, balanced (default: 100 digits, 1000).")
    ] = None,
    candidates: Annotated[int | None, typer.Option(min=2, help="N (default: 20).")] = None,
    candidate_size: Annotated[
        int | None, typer.Option(min=1, help="(default: 60 for digits, 440 otherwise).")
    ] = None,
    classes: Annotated[
        str | None,
        _list_option(int, "First,second class (default: 3,8; cifar10: 0,1 = plane,car).", low=0),
    ] = None,
    l2: L2 = 1.0,
    data_root: DataRoot = DEFAULT_ROOT,
) -> None:
    """Figure 5: train at ratio:1, test balanced; candidate p holds p/N of the first class.

    Rank-against-rank scatter plots of the MPC influence against the true utility and against
    the test accuracy after retraining, with Spearman's ρ, over the whole range and zoomed.
    """
    _go(ctx, "class_ratio", **ctx.params)


@app.command("runtime")
def runtime_command(
    ctx: typer.Context,
    dataset: Dataset = DatasetChoice.digits,
    out: Out = None,
    seed: Seed = 0,
    n_train: Size = None,
    n_test: Size = None,
    candidates: Annotated[int | None, typer.Option(min=1, help="(default: 10).")] = None,
    candidate_size: Size = None,
    steps: Annotated[int, typer.Option(min=2, help="Fine-tuning steps T.")] = 16,
    lr: Annotated[float, typer.Option(min=0.0, help="Fine-tuning learning rate.")] = 0.1,
    plaintext_repeats: Annotated[int, typer.Option(min=1, help="Best of N plaintext runs.")] = 5,
    l2: L2 = 1.0,
    data_root: DataRoot = DEFAULT_ROOT,
) -> None:
    """Figure 3: plaintext and MPC seconds, bytes and rounds of each method (log-scale bars)."""
    _go(ctx, "runtime", **ctx.params)


@app.command("finetune-sweep")
def finetune_sweep_command(
    ctx: typer.Context,
    dataset: Dataset = DatasetChoice.digits,
    out: Out = None,
    seed: Seed = 0,
    n_train: Size = None,
    n_test: Size = None,
    candidates: Candidates = None,
    candidate_size: Size = None,
    lrs: Annotated[str, _list_option(float, "Learning rates.")] = "0.001,0.01,0.1,1,10",
    steps: Annotated[str, _list_option(int, "Numbers of steps.")] = "1,4,16",
    l2: L2 = 1.0,
    data_root: DataRoot = DEFAULT_ROOT,
) -> None:
    """Figure 4: fine-tuning's ρ against U, and its MPC time, over learning rate × steps."""
    _go(ctx, "finetune_sweep", **ctx.params)
