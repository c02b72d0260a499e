"""``data-appraisal example-data`` and ``certs``: the files a demo or a deployment starts from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from common.cli.output import err_console, fail
from common.errors import AppraisalError


def example_data(
    directory: Annotated[Path, typer.Argument(help="Where to write the split.")],
    seed: Annotated[int, typer.Option(help="Random seed of the split and the label noise.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace files of an earlier split.")] = False,
) -> None:
    """Write a model-owner/data-owner split of scikit-learn's bundled digits (no download).

    The model owner gets model_owner/train.npz and model_owner/test.npz; the data owner gets ten
    candidates data_owner/candidate_01..10.npz, where candidate p has the labels 1 and 7 swapped
    with probability p/10.
    """
    from common.ml.examples import write_example_data

    if not overwrite and directory.is_dir() and any(directory.iterdir()):
        fail(
            f"{directory}: directory is not empty (pass --overwrite to write over it, or choose "
            "an empty or new directory)"
        )
    try:
        split = write_example_data(directory, seed=seed, overwrite=overwrite)
    except AppraisalError as exc:
        fail(str(exc))
    err_console.print(
        f"wrote {split.train}, {split.test} and {len(split.candidates)} candidates in "
        f"{split.directory / 'data_owner'} (see {split.readme})"
    )


def certs(
    out: Annotated[
        Path, typer.Option(help="Directory for ca.pem, <name>.pem (0644) and <name>.key (0600).")
    ],
    name: Annotated[
        list[str] | None,
        typer.Option(
            help="A certificate to issue, named by the DNS name its holder is reached at; repeat "
            "for several (default: model-owner, data-owner, dealer, operator)."
        ),
    ] = None,
    days: Annotated[int, typer.Option(help="Validity in days.", min=1)] = 365,
    overwrite: Annotated[
        bool,
        typer.Option(help="Replace a set already in --out (then restart every service)."),
    ] = False,
    ca_key: Annotated[
        Path | None,
        typer.Option(
            help="Keep the CA's private key in this file (0600), outside --out; by default it is "
            "discarded once the certificates are issued."
        ),
    ] = None,
) -> None:
    """Write a private demo CA and a certificate and key per name, for TLS between the services.

    Every certificate is valid for its name, localhost, 127.0.0.1 and ::1, as a server and as a
    client (mutual TLS). A complete, valid set already in --out is kept, so this may run at every
    start (docker compose does). Point each service's *_TLS_CERT, *_TLS_KEY and *_TLS_CA at its files.
    """
    from common.web.tls import DEFAULT_NAMES, write_demo_pki

    names = tuple(name or DEFAULT_NAMES)
    try:
        pki = write_demo_pki(out, names, days=days, overwrite=overwrite, ca_key=ca_key)
    except AppraisalError as exc:
        fail(str(exc))
    if not pki.written:
        extra = f"; {ca_key} was not written" if ca_key is not None else ""
        err_console.print(
            f"kept the valid CA and certificates of {', '.join(names)} in {out} (--overwrite "
            f"issues a fresh set){extra}",
            highlight=False,
        )
        return
    err_console.print(
        f"wrote {pki.ca} and a certificate and key for {', '.join(names)} in {out}"
        + (f"; the CA's key is in {ca_key}" if ca_key is not None else ""),
        highlight=False,
    )
