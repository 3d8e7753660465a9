"""The `agent-registry-exporter` command: serve, sidecar, rules, kubernetes, mixin, demo,
user-id-label."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .artifacts import (
    KubernetesOptions,
    RuleOptions,
    kubernetes_label_problem,
    render_alertmanager_yaml,
    render_kubernetes_files,
    render_metrics_markdown,
    render_mixin_files,
    render_rules_yaml,
)
from .common import configure_logging
from .common.version import __version__
from .http import ExporterServer, ListenError, start_exporter
from .registry import AgentRegistry, Thresholds
from .settings import (
    ENV_PREFIX,
    NO_WEBHOOK_TOKEN,
    Settings,
    ThresholdSettings,
    add_server_flags,
    describe_validation_error,
    flags_of,
    own_flag,
    server_overrides,
    setting_help,
    unknown_environment,
)
from .sources import SidecarSource, UserIdHasher, socket_dir_problem

__all__ = ["main"]

_log = logging.getLogger("agent_registry_exporter")


def _threshold_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(f"thresholds (env {ENV_PREFIX}<NAME>)")
    for name, field in Thresholds.model_fields.items():
        kind = float if field.annotation is float else int  # every limit is a number
        group.add_argument(own_flag(name), type=kind, help=setting_help(Thresholds, name))


def _rule_options(parser: argparse.ArgumentParser) -> None:
    _threshold_options(parser)
    defaults = RuleOptions()
    for name in (f.name for f in fields(RuleOptions) if f.name.startswith("for_")):
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            default=getattr(defaults, name),
            help="`for:` of that alert, at most 10m (%(default)s)",
        )
    parser.add_argument(
        "--job", default=defaults.job, help="scrape job of the exporter (%(default)s)"
    )
    parser.add_argument(
        "--runbook-url-base",
        default=defaults.runbook_url_base,
        help="the docs' URL: every alert's runbook_url is <base>/runbooks/#<alert in lower"
        " case> (%(default)s, pyproject's Documentation URL)",
    )


def _kubernetes_options(parser: argparse.ArgumentParser) -> None:
    defaults = KubernetesOptions()
    parser.add_argument(
        "--output-dir", default="deploy/kubernetes", help="where to write (%(default)s)"
    )
    for name, help_ in (
        ("namespace", "namespace of your backend"),
        ("deployment", "your backend's Deployment"),
        ("backend_container", "its container that serves the registry sockets"),
        ("image", "the exporter image"),
        ("monitoring_namespace", "namespace of Prometheus and Alertmanager"),
    ):
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            default=getattr(defaults, name),
            help=f"{help_} (%(default)s)",
        )
    parser.add_argument(
        "--backend-gid",
        type=int,
        default=defaults.backend_gid,
        help="the group your backend container runs as (`id -g` in it): the sidecar runs in it"
        " to open the workers' sockets (%(default)s)",
    )
    parser.add_argument(
        "--monitor-label",
        action="append",
        dest="monitor_labels",
        metavar="KEY=VALUE",
        help="a label on the PodMonitor, ServiceMonitor and PrometheusRule, what your"
        " Prometheus selects them by (repeat; kube-prometheus-stack: release=<its release>)",
    )
    parser.add_argument(
        "--app-port",
        type=int,
        action="append",
        dest="app_ports",
        help="every port of your pod but the exporter's (each container's, a mesh proxy's):"
        " the opt-in NetworkPolicy keeps them open to all (repeat; "
        f"{', '.join(map(str, defaults.app_ports))})",
    )


def _monitor_label(text: str) -> tuple[str, str]:
    """`--monitor-label KEY=VALUE` as (key, value); ValueError naming the flag."""
    key, equals, value = text.partition("=")
    if not equals:
        raise ValueError(f"--monitor-label {text!r} must be KEY=VALUE (e.g. release=kps)")
    if problem := kubernetes_label_problem(key, value):
        raise ValueError(f"--monitor-label {text!r}: {problem}")
    return key, value


def _kubernetes(args: argparse.Namespace, rules: RuleOptions) -> KubernetesOptions:
    names = (
        "namespace",
        "deployment",
        "backend_container",
        "image",
        "monitoring_namespace",
        "backend_gid",
    )
    chosen: dict[str, Any] = {name: getattr(args, name) for name in names}
    if args.app_ports is not None:
        chosen["app_ports"] = tuple(args.app_ports)
    chosen["monitor_labels"] = tuple(_monitor_label(text) for text in args.monitor_labels or ())
    return KubernetesOptions(rules=rules, **chosen)


def _write(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text, encoding="utf-8")
    print(f"wrote {len(files)} files to {directory}")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agent-registry-exporter",
        description="Export agent-registry sessions to Prometheus and clean up leaking ones.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the exporter server")
    _server_options(serve)
    serve.add_argument("--demo", action="store_true", help="fill the registry with a demo workload")
    _threshold_options(serve)

    sidecar = commands.add_parser(
        "sidecar", help="serve the registries of every backend worker found in --socket-dir"
    )
    _server_options(sidecar)
    sidecar.add_argument("--socket-dir", help=setting_help(Settings, "socket_dir"))

    rules = commands.add_parser("rules", help="print the Prometheus alert rules as YAML")
    _rule_options(rules)

    kubernetes = commands.add_parser(
        "kubernetes", help="write the Kubernetes manifests (deploy/kubernetes/) into a directory"
    )
    _rule_options(kubernetes)
    _kubernetes_options(kubernetes)

    commands.add_parser(
        "dashboard", help="print the Grafana dashboard JSON (needs the dashboard extra)"
    )
    mixin = commands.add_parser(
        "mixin",
        help="write the monitoring mixin (mixin/: rules and dashboard as jsonnet, the limits in"
        " _config) into a directory (needs the dashboard extra)",
    )
    _rule_options(mixin)
    mixin.add_argument("--output-dir", default="mixin", help="where to write (%(default)s)")
    commands.add_parser(
        "alertmanager-config", help="print the example Alertmanager route for the webhook"
    )
    commands.add_parser(
        "metrics-doc", help="print docs/metrics.md, every metric family served (Markdown)"
    )

    label = commands.add_parser(
        "user-id-label",
        help="print the exported label (h:...) of each user id, to find a user behind a hash",
        description="Prints '<label> <user id>' per id (ids from the arguments, else one per"
        " line on stdin). Needs the key file the exporter uses; the exporter itself never"
        " serves the reverse mapping.",
    )
    label.add_argument("user_ids", nargs="*", metavar="USER_ID")
    label.add_argument("--user-id-hmac-key-file", help="the exporter's key file")

    demo = commands.add_parser("demo", help="run the whole loop on a simulated backend")
    demo.add_argument("--duration", type=float, default=120.0, help="give up after this (s)")
    demo.add_argument(
        "--sidecar", action="store_true", help="two simulated workers behind the sidecar"
    )
    return parser


def _server_options(parser: argparse.ArgumentParser) -> None:
    add_server_flags(parser)
    parser.add_argument(
        "--dry-run", action="store_true", default=None, help=setting_help(Settings, "dry_run")
    )
    parser.add_argument(
        "--check-config", action="store_true", help="validate settings and exit (0 when valid)"
    )


def _overrides(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _load(args: argparse.Namespace) -> tuple[Settings, Thresholds]:
    # Built (and so validated) here, once: a bad limit stops start-up.
    thresholds = ThresholdSettings(
        **_overrides(args, list(ThresholdSettings.model_fields))
    ).to_thresholds()
    # The settings' flags (any command's: user-id-label takes the key file's).
    settings = Settings(**server_overrides(args), **_overrides(args, ["dry_run", "socket_dir"]))
    return settings, thresholds


async def _serve(settings: Settings, thresholds: Thresholds, demo: bool) -> None:
    registry = AgentRegistry(thresholds=thresholds)
    if demo:
        from .demo import populate

        kinds = await populate(registry)
        _log.info("demo workload loaded: %s", {k: len(v) for k, v in kinds.items()})
    await _run_until_signalled(await start_exporter(registry, settings))


async def _sidecar(settings: Settings) -> None:
    source = SidecarSource(
        settings.socket_dir,
        timeout=settings.worker_timeout_seconds,
        max_answer_bytes=settings.max_worker_answer_bytes,
    )
    server = await start_exporter(source, settings)
    _log.info("gathering the workers serving a socket in %s", settings.socket_dir)
    await _run_until_signalled(server)


async def _run_until_signalled(server: ExporterServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"agent-registry-exporter {__version__} serving {server.url}/metrics", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()


def _dashboard_json(command: str) -> str | None:
    """The dashboard's JSON; None, said on stderr, without Grafana's SDK."""
    try:
        from .artifacts.dashboard import render_dashboard_json
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("grafana_foundation_sdk"):
            raise
        print(
            f"the {command} command needs Grafana's SDK, the package's 'dashboard' extra: "
            "pip install '.[dashboard]' in the source tree (see docs/install.md)",
            file=sys.stderr,
        )
        return None
    return render_dashboard_json()


def _print_dashboard() -> int:
    dashboard = _dashboard_json("dashboard")
    if dashboard is None:
        return 2
    sys.stdout.write(dashboard)
    return 0


def _write_mixin(directory: Path, thresholds: Thresholds, options: RuleOptions) -> int:
    dashboard = _dashboard_json("mixin")
    if dashboard is None:
        return 2
    _write(directory, render_mixin_files(thresholds, options, dashboard))
    return 0


def _how_to_set(setting: str) -> str:
    """Each way to set the settings `setting` names ("a/b"): its flags, then its variable."""
    return " and ".join(
        " or ".join((*(flags_of(name) or (own_flag(name),)), f"{ENV_PREFIX}{name.upper()}"))
        for name in setting.split("/")
    )


def _print_labels(settings: Settings, user_ids: Sequence[str]) -> int:
    if settings.user_id_hmac_key_file is None:
        print(f"user-id-label needs {_how_to_set('user_id_hmac_key_file')}", file=sys.stderr)
        return 2
    label = UserIdHasher.from_file(settings.user_id_hmac_key_file)
    ids = user_ids or (line.rstrip("\n") for line in sys.stdin)
    for user_id in ids:
        if user_id:
            print(f"{label(user_id)} {user_id}")
    return 0


def _check_config(settings: Settings, *, sidecar: bool) -> int:
    """`--check-config`: validated (settings are), say so and exit; logging is left alone
    (the process's: a test's, a host's)."""
    problem = sidecar and socket_dir_problem(settings.socket_dir)
    if problem:
        print(f"invalid setting socket_dir ({ENV_PREFIX}SOCKET_DIR): {problem}", file=sys.stderr)
        return 2
    print("configuration is valid")
    if settings.webhook_disabled():
        print(f"warning: {NO_WEBHOOK_TOKEN}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = _build_parser().parse_args(argv)
    if unknown := unknown_environment():
        # A misspelt variable would otherwise be ignored in silence, its default used.
        print("\n".join(unknown), file=sys.stderr)
        return 2
    try:
        settings, thresholds = _load(args)
        if args.command in ("rules", "kubernetes", "mixin"):
            options = RuleOptions(**{f.name: getattr(args, f.name) for f in fields(RuleOptions)})
        if args.command == "kubernetes":
            kubernetes = _kubernetes(args, options)
    except ValidationError as exc:
        print(describe_validation_error(exc), file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"invalid option: {exc}", file=sys.stderr)
        return 2

    if args.command == "rules":
        sys.stdout.write(render_rules_yaml(thresholds, options))
        return 0
    if args.command == "kubernetes":
        dashboard = _dashboard_json("kubernetes")
        if dashboard is None:
            return 2
        _write(Path(args.output_dir), render_kubernetes_files(thresholds, kubernetes, dashboard))
        return 0
    if args.command == "dashboard":
        return _print_dashboard()
    if args.command == "mixin":
        return _write_mixin(Path(args.output_dir), thresholds, options)
    if args.command == "alertmanager-config":
        sys.stdout.write(render_alertmanager_yaml())
        return 0
    if args.command == "metrics-doc":
        sys.stdout.write(render_metrics_markdown())
        return 0
    if args.command == "user-id-label":
        return _print_labels(settings, args.user_ids)
    if args.command in ("serve", "sidecar") and args.check_config:
        return _check_config(settings, sidecar=args.command == "sidecar")
    configure_logging(settings.log_level, settings.log_format)
    _log.debug("settings in force", extra={"fields": settings.model_dump(mode="json")})
    if args.command in ("serve", "sidecar"):
        try:
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(
                    _sidecar(settings)
                    if args.command == "sidecar"
                    else _serve(settings, thresholds, args.demo)
                )
        except ListenError as exc:
            print(f"{exc}; set {_how_to_set(exc.setting)}", file=sys.stderr)
            return 1
        return 0
    from .demo import run_demo

    code: int = asyncio.run(
        run_demo(settings, thresholds, duration=args.duration, sidecar=args.sidecar)
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
