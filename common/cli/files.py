"""``data-appraisal example-data`` and ``certs ...``: the files a demo or a deployment starts from."""

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


certs_app = typer.Typer(
    help="TLS certificates: a demo set in one step (certs --out DIR), or a deployment's CA and "
    "request-and-sign (certs ca, certs request, certs sign), in which no private key leaves its "
    "owner.",
    add_completion=False,
)


@certs_app.callback(invoke_without_command=True)
def certs(
    ctx: typer.Context,
    out: Annotated[
        Path | None,
        typer.Option(help="Directory for ca.pem, <name>.pem (0644) and <name>.key (0600)."),
    ] = None,
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
            help="Keep the CA's private key in this file (0600), outside --out, so that "
            "`certs sign --ca-cert <out>/ca.pem --ca-key FILE` can issue more later; by default "
            "it is discarded once the certificates are issued."
        ),
    ] = None,
) -> None:
    """Without a command: write a private demo CA and a certificate and key per name into --out.

    Every certificate is valid for its name, localhost, 127.0.0.1 and ::1, as a server and as a
    client (mutual TLS). A complete, valid set already in --out is kept, so this may run at every
    start (docker compose does). Point each service's *_TLS_CERT, *_TLS_KEY and *_TLS_CA at its
    files. Here one machine makes every party's key: for a deployment across organisations use
    `certs ca`, `certs request` and `certs sign` instead (docs/deployment.md).
    """
    from common.web.tls import DEFAULT_NAMES, write_demo_pki

    if ctx.invoked_subcommand is not None:
        given = [o for o, v in (("--out", out), ("--name", name), ("--ca-key", ca_key)) if v]
        if given or overwrite:
            fail(
                f"{' '.join(given) or '--overwrite'} belongs to the demo set (`certs --out DIR`), "
                f"not to `certs {ctx.invoked_subcommand}`: put the options after the command"
            )
        return
    if out is None:
        fail(
            "give --out DIR for a demo set, or a command: ca, request, sign "
            "(data-appraisal certs --help)"
        )
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


@certs_app.command("ca")
def certs_ca(
    out: Annotated[Path, typer.Option(help="The CA holder's own directory (no service reads it).")],
    common_name: Annotated[str, typer.Option(help="The CA's name.")] = "data-appraisal CA",
    days: Annotated[int, typer.Option(help="Validity in days.", min=1)] = 3650,
    overwrite: Annotated[
        bool,
        typer.Option(help="Replace a CA in --out (every certificate it issued stops working)."),
    ] = False,
) -> None:
    """The CA holder: make a deployment's CA, keeping its key so that it can sign requests later.

    Writes --out/ca.pem (0644: send it to every party, each sets *_TLS_CA to it) and
    --out/ca.key (0600: it never leaves the CA holder).
    """
    from common.web.tls import write_ca

    try:
        ca = write_ca(out, common_name=common_name, days=days, overwrite=overwrite)
    except AppraisalError as exc:
        fail(str(exc))
    err_console.print(
        f"wrote {ca.cert} (send it to every party) and {ca.key} (keep it here, 0600); sign a "
        f"party's request with: data-appraisal certs sign REQUEST.csr --ca-cert {ca.cert} "
        f"--ca-key {ca.key} --out DIR",
        highlight=False,
        soft_wrap=True,
    )


@certs_app.command("request")
def certs_request(
    name: Annotated[
        str,
        typer.Option(help="The DNS name (or IP address) this party's service is reached at."),
    ],
    out: Annotated[Path, typer.Option(help="Where to write <name>.key (0600) and <name>.csr.")],
    alt_name: Annotated[
        list[str] | None,
        typer.Option(help="Another name or IP address the certificate should carry; repeatable."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a key and request already in --out.")
    ] = False,
) -> None:
    """Each party: make a private key and a certificate signing request for the CA holder.

    The key, <name>.key (0600), never leaves this machine; send only <name>.csr to the CA holder,
    who signs it (certs sign) and sends back <name>.pem and ca.pem.
    """
    from common.web.tls import write_request

    try:
        made = write_request(out, name, alt_name or (), overwrite=overwrite)
    except AppraisalError as exc:
        fail(str(exc))
    err_console.print(
        f"wrote {made.key} (keep it here, 0600) and {made.request} for {', '.join(made.names)}: "
        f"send {made.request.name} to the CA holder",
        highlight=False,
        soft_wrap=True,
    )


@certs_app.command("sign")
def certs_sign(
    request: Annotated[Path, typer.Argument(help="A party's <name>.csr.")],
    ca_cert: Annotated[Path, typer.Option(help="The CA's certificate (ca.pem).")],
    ca_key: Annotated[Path, typer.Option(help="The CA's key (ca.key, from certs ca).")],
    out: Annotated[Path, typer.Option(help="Where to write <name>.pem.")],
    name: Annotated[
        str | None,
        typer.Option(help="Refuse the request unless it is for this name (what you expect)."),
    ] = None,
    days: Annotated[int, typer.Option(help="Validity in days.", min=1)] = 365,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a certificate of that name in --out (a renewal).")
    ] = False,
) -> None:
    """The CA holder: issue a certificate for a party's request; the party's key is not needed.

    The certificate carries the names the request asks for (printed: check them), is valid as a
    server and as a client, and never outlives the CA. Send <name>.pem and ca.pem back.
    """
    from common.web.tls import sign_request

    try:
        signed = sign_request(
            request,
            ca_cert=ca_cert,
            ca_key=ca_key,
            out=out,
            days=days,
            expect_name=name,
            overwrite=overwrite,
        )
    except AppraisalError as exc:
        fail(str(exc))
    err_console.print(
        f"wrote {signed.cert} for {', '.join(signed.names)}, valid until "
        f"{signed.not_after:%Y-%m-%d}: send it and {ca_cert.name} to the party",
        highlight=False,
        soft_wrap=True,
    )
