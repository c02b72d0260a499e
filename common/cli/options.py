"""Options that several commands share (``local``, ``appraise``, ``demo``)."""

from __future__ import annotations

import enum
from typing import Annotated

import typer

from common.methods import METHOD_NAMES
from common.protocol import MAX_CHUNK_ROWS, MAX_SOFTMAX_CHUNKS

# one choice per registered method (common.methods): a new method needs no change here
MethodChoice = enum.StrEnum(  # type: ignore[misc]
    "MethodChoice", {name.replace("-", "_"): name for name in METHOD_NAMES}
)


class RevealChoice(enum.StrEnum):
    score = "score"
    threshold = "threshold"


class RevealToChoice(enum.StrEnum):
    both = "both"
    model_owner = "model_owner"


class DirectionChoice(enum.StrEnum):
    LOWER = "lower"
    HIGHER = "higher"


MethodOpt = Annotated[MethodChoice, typer.Option(help="Appraisal function.", show_default=True)]
StepsOpt = Annotated[int, typer.Option(help="Fine-tuning: gradient steps T.", min=1)]
LrOpt = Annotated[float, typer.Option(help="Fine-tuning: learning rate η.", min=0.0)]
BatchOpt = Annotated[
    int | None, typer.Option(help="Fine-tuning: minibatch size (default: full batch).", min=1)
]
RevealOpt = Annotated[
    RevealChoice,
    typer.Option(help="'score' reveals the score; 'threshold' only the bit score-better-than-τ."),
]
ThresholdOpt = Annotated[
    float | None, typer.Option(help="τ for --reveal threshold (stays the model owner's secret).")
]
DirectionOpt = Annotated[
    DirectionChoice | None,
    typer.Option(
        help="With --reveal threshold: which scores pass (default: lower for influence and "
        "finetune, higher for gradient-norm)."
    ),
]
RevealToOpt = Annotated[
    RevealToChoice | None,
    typer.Option(
        help="Who learns the score or bit: both owners, or the model owner only (the data owner's "
        "results are then empty)."
    ),
]
NoiseOpt = Annotated[
    float | None,
    typer.Option(
        help="influence only: the data owner adds Laplace noise so that each released score is "
        "(ε, δ)-differentially private for one candidate sample (see docs/threat-model.md); ε > 0.",
    ),
]
ChunkRowsOpt = Annotated[
    int | None,
    typer.Option(
        help="Candidate rows per MPC chunk (public): memory is bounded by one chunk, rounds grow "
        f"with the chunk count. Default: 8192, at most {MAX_CHUNK_ROWS}.",
    ),
]
SoftmaxChunksOpt = Annotated[
    int | None,
    typer.Option(
        help="Chunks per softmax (public): one softmax's rounds per group of this many chunks "
        "instead of per chunk, for a WAN; the group's masked chunks wait on disk. "
        f"Default: 1, at most {MAX_SOFTMAX_CHUNKS}.",
    ),
]
OpeningsOpt = Annotated[
    str | None,
    typer.Option(
        help="Width of the softmax's openings (public): narrow sends the fewest bytes between the "
        "owners and more from the dealer; full sends 64 bits each, the fewest bytes in all. "
        "Default: narrow.",
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print only a JSON list, one object per candidate.")
]


def value(choice: enum.Enum | None) -> str | None:
    return None if choice is None else str(choice.value)
