"""The deployment files (``deploy/``, ``.env.example``, ``.dockerignore``, ``LICENSE``) against the code.

There is no Docker engine or cluster here, so nothing is built or started. What is proven: every
``INZWA_*`` name the files mention is a setting and every value they give passes its checks; the
commands they run are the CLI's; their ports agree with the settings and with each other; every
series the dashboard and the alert rules read is one the gateway exports, with labels it has;
the Kubernetes dialplan and knowledge base load; and the files pass their own tools
(``promtool`` for the rules, ``systemd-analyze verify`` for the unit), which ``make test``
installs from Debian: a missing tool fails here, it never skips.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from inzwa_voice import cli
from inzwa_voice.config import ENV_PREFIX, Settings
from inzwa_voice.dialplan import DEFAULT_DIALPLAN, Dialplan
from inzwa_voice.knowledge.loader import load_knowledge
from inzwa_voice.legs.sip import registered_gauge
from inzwa_voice.telemetry import Metrics

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
UNIT = DEPLOY / "inzwa-voice.service"
ENV_EXAMPLE = ROOT / ".env.example"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "inzwa-voice.json"

SETTING_NAME = re.compile(r"\bINZWA_[A-Z0-9_]*[A-Z0-9]\b")
COMPOSE_VARIABLE = re.compile(r"\$\{(\w+)(?::?[-?]([^}]*))?\}")
TARGET_LABELS = frozenset({"instance", "job", "service", "sip_trunk"})
"""Labels Prometheus adds to every series of a target (prometheus.yaml), beside the gateway's own."""
PROMETHEUS_SERIES = frozenset({"up"})


def defaults() -> Settings:
    """The settings with nothing from the environment or a .env file."""
    return Settings.model_construct()


def field_name(variable: str) -> str:
    return variable.removeprefix(ENV_PREFIX).lower()


def settings_from(variables: dict[str, str]) -> Settings:
    """Settings as the gateway reads these environment variables (and only these)."""
    with pytest.MonkeyPatch.context() as env:
        for name in [n for n in os.environ if n.startswith(ENV_PREFIX)]:
            env.delenv(name)
        for name, value in variables.items():
            env.setenv(name, value)
        return Settings(_env_file=None)  # type: ignore[call-arg]


def yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


def interpolate(value: str) -> str:
    """Compose's ``${NAME:-default}`` as its default; a required ``${NAME:?...}`` as a sample value."""
    return COMPOSE_VARIABLE.sub(lambda m: m.group(2) if "-" in m.group(0) else "sample-secret", value)


def gateways() -> dict[str, dict[str, str]]:
    """Each compose gateway's INZWA_* environment, interpolated."""
    services = compose()["services"]
    return {
        name: {key: interpolate(str(value)) for key, value in service.get("environment", {}).items()}
        for name, service in services.items()
        if service.get("image", "").startswith("inzwa-voice")
    }


def k8s_objects() -> dict[str, dict[str, Any]]:
    """Every manifest in deploy/k8s by ``Kind/name``."""
    objects = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml_documents(path):
            objects[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return objects


def k8s_container() -> dict[str, Any]:
    container: dict[str, Any] = k8s_objects()["Deployment/inzwa-voice"]["spec"]["template"]["spec"]["containers"][0]
    return container


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines: list[str] = []
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if lines and lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1] + " " + stripped
        else:
            lines.append(stripped)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def dockerfile_env(stage: int = -1) -> dict[str, str]:
    """The ENV of one stage of the Dockerfile (by default the final image's)."""
    stages: list[dict[str, str]] = []
    for instruction, args in dockerfile_instructions():
        if instruction == "FROM":
            stages.append({})
        elif instruction == "ENV":
            stages[-1].update(dict(pair.split("=", 1) for pair in shlex.split(args)))
    return stages[stage]


def unit_environment() -> dict[str, str]:
    variables: dict[str, str] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if line.startswith("Environment="):
            variables.update(dict(pair.split("=", 1) for pair in shlex.split(line.removeprefix("Environment="))))
    return variables


def unit_value(key: str) -> str:
    values = [
        line.split("=", 1)[1] for line in UNIT.read_text(encoding="utf-8").splitlines() if line.startswith(key + "=")
    ]
    assert len(values) == 1, f"{key} appears {len(values)} times in {UNIT.name}"
    return values[0]


def env_example() -> dict[str, str]:
    """The settings .env.example documents, each with the value it shows (empty: unset)."""
    return dict(re.findall(r"^#\s*(INZWA_[A-Z0-9_]+)=(.*)$", ENV_EXAMPLE.read_text(encoding="utf-8"), re.MULTILINE))


# ----- settings -----

DEPLOYMENT_FILES = [ENV_EXAMPLE, *sorted(p for p in DEPLOY.rglob("*") if p.is_file())]


@pytest.mark.parametrize("path", DEPLOYMENT_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_setting_a_deployment_file_names_exists(path: Path) -> None:
    names = set(SETTING_NAME.findall(path.read_text(encoding="utf-8")))
    unknown = sorted(name for name in names if field_name(name) not in Settings.model_fields)
    assert not unknown, f"{path.name} names settings the gateway does not have: {unknown}"


def test_the_image_settings_are_valid_and_listen_where_a_container_can_be_reached() -> None:
    settings = settings_from(dockerfile_env())
    assert settings.host == "0.0.0.0"
    assert settings.audiosocket_host == "0.0.0.0"
    # The models assembled at build time are the ones the image reads.
    assert dockerfile_env(stage=0)["INZWA_DATA_DIR"] == str(settings.data_dir)


def test_the_compose_gateways_settings_are_valid_and_apart() -> None:
    found = {name: settings_from(env) for name, env in gateways().items()}
    assert len(found) == 2
    for what in ("port", "sip_port", "audiosocket_port"):
        values = [getattr(s, what) for s in found.values()]
        assert len(set(values)) == len(values), f"the gateways share {what}: {values}"
    rtp = sorted(s.sip_rtp_port for s in found.values())
    assert rtp[1] - rtp[0] >= 1000, "RTP ranges of the gateways overlap"
    assert all(s.db_url is not None and s.db_url.get_secret_value().startswith("postgresql://") for s in found.values())


def test_the_k8s_and_systemd_settings_are_valid() -> None:
    configmap = k8s_objects()["ConfigMap/inzwa-voice-settings"]["data"]
    plain = {e["name"]: e["value"] for e in k8s_container().get("env", []) if "value" in e}
    settings = settings_from({**dockerfile_env(), **configmap, **plain})
    assert settings.dialplan_path == Path("/etc/inzwa-voice/dialplan.yaml")
    from_field = {e["name"] for e in k8s_container()["env"] if "valueFrom" in e}
    assert all(field_name(name) in Settings.model_fields for name in from_field)
    settings_from(unit_environment())


def test_env_example_shows_the_true_defaults() -> None:
    documented = env_example()
    assert len(documented) >= 40
    unknown = sorted(name for name in documented if field_name(name) not in Settings.model_fields)
    assert not unknown
    default = defaults()
    for name, value in documented.items():
        if value:
            shown = getattr(settings_from({name: value}), field_name(name))
            assert shown == getattr(default, field_name(name)), f"{name}={value} is not the default"


def test_env_example_gives_no_secret() -> None:
    from inzwa_voice.config import SECRET_SETTINGS

    documented = env_example()
    secrets = {ENV_PREFIX + s.upper() for s in SECRET_SETTINGS}
    assert secrets <= documented.keys(), f"undocumented secrets: {sorted(secrets - documented.keys())}"
    assert all(documented[name] == "" for name in secrets)


# ----- commands and ports -----


def cli_command(argv: list[str]) -> None:
    """Assert that ``argv`` is the inzwa-voice script with one of its subcommands."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert Path(argv[0]).name in scripts, f"{argv[0]} is not one of the package's scripts {sorted(scripts)}"
    with pytest.raises(SystemExit) as exited:
        cli.main([*argv[1:], "--help"])
    assert exited.value.code == 0, f"{shlex.join(argv)} is not a command of the CLI"


def test_the_cli_check_can_fail(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(AssertionError):
        cli_command(["inzwa-voice", "server"])
    capsys.readouterr()


def test_the_image_runs_real_cli_commands(capsys: pytest.CaptureFixture[str]) -> None:
    instructions = dockerfile_instructions()
    cmds = [json.loads(args) for instruction, args in instructions if instruction == "CMD"]
    assert cmds == [["inzwa-voice", "serve"]]
    cli_command(cmds[0])
    # The build assembles the models with the CLI.
    build_runs = [args for instruction, args in instructions if instruction == "RUN" and "inzwa-voice " in args]
    assert build_runs
    for run in build_runs:
        for command in re.findall(r"inzwa-voice \w+", run):
            cli_command(command.split())
    assert "command" not in k8s_container(), "the pod runs the image's command"
    assert all("command" not in compose()["services"][name] for name in gateways())
    cli_command(shlex.split(unit_value("ExecStart")))
    capsys.readouterr()


def test_the_image_is_built_as_designed() -> None:
    instructions = dockerfile_instructions()
    base = next(args for instruction, args in instructions if instruction == "ARG" and args.startswith("PYTHON_IMAGE="))
    assert base.split("=", 1)[1].startswith("python:3.11-slim")
    stages = [args for instruction, args in instructions if instruction == "FROM"]
    assert stages == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    assert dockerfile_env(stage=0)["CMAKE_ARGS"] == "-DGGML_NATIVE=OFF"
    users = [args for instruction, args in instructions if instruction == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(instruction == "HEALTHCHECK" for instruction, _ in instructions)


def test_the_image_healthcheck_tells_a_healthy_gateway_from_a_dead_one() -> None:
    healthcheck = next(args for instruction, args in dockerfile_instructions() if instruction == "HEALTHCHECK")
    probe = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert probe[0] == "python"

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
        try:
            healthy = subprocess.run(
                [sys.executable, *probe[1:]], env={**os.environ, "INZWA_PORT": str(port)}, timeout=30, check=False
            )
        finally:
            server.shutdown()
    dead = subprocess.run(
        [sys.executable, *probe[1:]], env={**os.environ, "INZWA_PORT": str(port)}, capture_output=True, timeout=30
    )
    assert (healthy.returncode, dead.returncode != 0) == (0, True)


def test_the_image_exposes_the_default_ports() -> None:
    exposed = {
        port for instruction, args in dockerfile_instructions() if instruction == "EXPOSE" for port in args.split()
    }
    settings = settings_from(dockerfile_env())
    assert exposed == {
        f"{settings.port}/tcp",
        f"{settings.audiosocket_port}/tcp",
        f"{settings.sip_port}/udp",
        f"{settings.sip_port}/tcp",
    }
    healthcheck = next(args for instruction, args in dockerfile_instructions() if instruction == "HEALTHCHECK")
    assert "/health" in healthcheck
    assert f"os.environ.get('INZWA_PORT', '{defaults().port}')" in healthcheck


def test_the_pod_ports_probes_and_service_agree_with_the_settings() -> None:
    objects = k8s_objects()
    container = k8s_container()
    settings = settings_from({**dockerfile_env(), **objects["ConfigMap/inzwa-voice-settings"]["data"]})
    ports = {p["name"]: (p["containerPort"], p.get("protocol", "TCP")) for p in container["ports"]}
    assert ports == {
        "http": (settings.port, "TCP"),
        "audiosocket": (settings.audiosocket_port, "TCP"),
        "sip-udp": (settings.sip_port, "UDP"),
        "sip-tcp": (settings.sip_port, "TCP"),
    }
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    service = objects["Service/inzwa-voice"]["spec"]
    assert {p["targetPort"] for p in service["ports"]} <= ports.keys()
    template = objects["Deployment/inzwa-voice"]["spec"]["template"]
    assert service["selector"].items() <= template["metadata"]["labels"].items()
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(settings.port)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert settings.dialplan_path is not None and settings.dialplan_path.parent == Path(mounts["dialplan"])
    assert settings.db_path.parent == Path(mounts["records"])


def test_shutdown_waits_are_longer_than_the_sip_drain() -> None:
    """SIGTERM drains SIP calls for sip_drain_timeout_s; whatever sends it must wait longer."""
    objects = k8s_objects()
    pod = objects["Deployment/inzwa-voice"]["spec"]["template"]["spec"]
    drain = settings_from(objects["ConfigMap/inzwa-voice-settings"]["data"]).sip_drain_timeout_s
    pre_stop = float(k8s_container()["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 10
    for name, env in gateways().items():
        grace = float(compose()["services"][name]["stop_grace_period"].removesuffix("s"))
        assert grace >= settings_from(env).sip_drain_timeout_s + 10
    assert float(unit_value("TimeoutStopSec")) >= settings_from(unit_environment()).sip_drain_timeout_s + 10


def test_compose_wires_kamailio_prometheus_and_grafana_to_the_gateways() -> None:
    services = compose()["services"]
    settings = {name: settings_from(env) for name, env in gateways().items()}
    # Kamailio runs sip/kamailio/kamailio.cfg with a dispatcher list of the gateways' SIP ports.
    kamailio = services["kamailio"]
    mounts = dict(volume.rsplit(":", 2)[:2] for volume in kamailio["volumes"])
    config = (DEPLOY / next(iter(mounts))).resolve()
    assert config == ROOT / "sip" / "kamailio" / "kamailio.cfg"
    script = " ".join(kamailio["command"])
    assert f"-f {mounts[next(iter(mounts))]}" in script
    listed = {int(port) for port in re.findall(r"sip:%s:(\d+)", script)}
    assert listed == {s.sip_port for s in settings.values()}
    listen = int(re.search(r"LISTEN=udp:\$\$SIP_ADDRESS:(\d+)", script).group(1))  # type: ignore[union-attr]
    assert listen not in listed
    # Prometheus scrapes each gateway's HTTP port and loads the rules next to its config.
    prometheus = yaml.safe_load((PROMETHEUS / "prometheus.yaml").read_text(encoding="utf-8"))
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert targets == {f"{s.host}:{s.port}" for s in settings.values()}
    assert all((PROMETHEUS / rules).is_file() for rules in prometheus["rule_files"])
    listen_address = next(a for a in services["prometheus"]["command"] if a.startswith("--web.listen-address="))
    # Grafana's data source is that Prometheus, and its dashboard provider reads the mounted JSON.
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert datasource["datasources"][0]["url"] == "http://" + listen_address.split("=", 1)[1]
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/inzwa-voice.yaml").read_text())
    dashboards = {v.split(":")[1]: v.split(":")[0] for v in services["grafana"]["volumes"] if v.endswith(".json:ro")}
    assert {str(Path(p).parent) for p in dashboards} == {provider["providers"][0]["options"]["path"]}
    assert all((DEPLOY / source).resolve() == DASHBOARD for source in dashboards.values())


def test_dockerignore_keeps_what_the_image_copies() -> None:
    kept = {
        line[1:].strip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    }
    copied = set()
    for instruction, args in dockerfile_instructions():
        if instruction == "COPY" and not args.startswith("--from"):
            copied.update(args.split()[:-1])
    assert copied <= kept, f"the build copies what .dockerignore leaves out: {sorted(copied - kept)}"
    assert all((ROOT / path).exists() for path in copied)


# ----- Kubernetes dialplan and knowledge -----


def test_the_k8s_dialplan_and_knowledge_base_load(tmp_path: Path) -> None:
    files = k8s_objects()["ConfigMap/inzwa-voice-dialplan"]["data"]
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    dialplan = Dialplan.load(tmp_path / "dialplan.yaml")
    voices = {profile.voice for profile in Dialplan.load(DEFAULT_DIALPLAN).profiles.values()}
    dialplan.check(voices=voices, languages=defaults().languages)
    bases = {profile.knowledge for profile in dialplan.profiles.values()}
    assert bases == {"knowledge.yaml"}
    base = load_knowledge(tmp_path / "knowledge.yaml")
    assert set(base.languages) == {"sn", "en"}


# ----- metrics: dashboard and alerts -----


def exported_series() -> dict[str, frozenset[str]]:
    """Every series name the gateway's registry can export, with the labels each may carry.

    Built from the app's own registry (``Metrics`` plus the SIP leg's registration gauge). A
    labelled metric has no samples until it is used, so its names come from its type and its
    labels from its declaration."""
    metrics = Metrics()
    declared = [value for value in vars(metrics).values() if isinstance(value, MetricWrapperBase)]
    declared.append(registered_gauge(metrics.registry))
    labels = {wrapper._name: frozenset(wrapper._labelnames) for wrapper in declared}
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created")}
    series: dict[str, frozenset[str]] = {}
    for family in metrics.registry.collect():
        own = labels.get(family.name, frozenset())
        for suffix in suffixes.get(family.type, ("",)):
            series[family.name + suffix] = own | ({"le"} if suffix == "_bucket" else set())
        for sample in family.samples:
            series.setdefault(sample.name, frozenset(sample.labels))
    return series


def promql_series(expr: str) -> set[str]:
    selectors = set(re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]", expr))
    prefixed = set(re.findall(r"\b((?:inzwa|process)_[a-z0-9_]+)", expr))
    return (selectors | prefixed) - {"by", "without", "on", "ignoring"}


def promql_labels(expr: str) -> set[str]:
    matchers = {m for body in re.findall(r"\{([^}]*)\}", expr) for m in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", body)}
    groups = {
        label.strip()
        for body in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr)
        for label in body.split(",")
        if label.strip()
    }
    return matchers | groups


def check_queries(queries: list[tuple[str, str, set[str]]]) -> set[str]:
    """Each (where, PromQL, labels it shows) reads exported series by labels they have; returns the series."""
    exported = exported_series()
    used: set[str] = set()
    for where, expr, shown in queries:
        names = promql_series(expr)
        assert names, f"{where}: no series in {expr!r}"
        unknown = names - exported.keys() - PROMETHEUS_SERIES
        assert not unknown, f"{where}: the gateway exports no {sorted(unknown)}"
        available = TARGET_LABELS.union(*(exported.get(name, frozenset()) for name in names))
        missing = (promql_labels(expr) | shown) - available
        assert not missing, f"{where}: {sorted(names)} have no label {sorted(missing)}"
        used |= names
    return used


def dashboard_queries() -> list[tuple[str, str, set[str]]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            shown = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            queries.append((f"panel {panel['title']!r}", target["expr"], shown))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            name, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query).groups()  # type: ignore[union-attr]
            queries.append((f"variable {variable['name']}", name + "{}", {label}))
    return queries


def alert_rules() -> Iterator[dict[str, Any]]:
    for group in yaml.safe_load((PROMETHEUS / "alerts.yaml").read_text(encoding="utf-8"))["groups"]:
        yield from group["rules"]


def test_the_metric_check_can_fail() -> None:
    with pytest.raises(AssertionError, match="exports no"):
        check_queries([("probe", "rate(inzwa_calls_answered_total[5m])", set())])
    with pytest.raises(AssertionError, match="have no label"):
        check_queries([("probe", "sum by (route) (rate(inzwa_turn_latency_seconds_bucket[5m]))", set())])


def test_the_dashboard_reads_only_exported_series() -> None:
    used = check_queries(dashboard_queries())
    wanted = {
        "inzwa_active_calls",  # calls by leg
        "inzwa_calls_total",
        "inzwa_turn_latency_seconds_bucket",  # turn latency by stage and leg
        "inzwa_build_info",  # the version each gateway runs
        "inzwa_barge_ins_total",
        "inzwa_call_errors_total",
        "inzwa_transfers_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "inzwa_inference_queue_seconds_bucket",
    }
    assert wanted <= used, f"the dashboard misses {sorted(wanted - used)}"
    latency = [expr for _, expr, _ in dashboard_queries() if "inzwa_turn_latency_seconds_bucket" in expr]
    assert any("leg" in promql_labels(expr) for expr in latency), "the dashboard shows no turn latency by leg"


def test_the_dashboard_panels_use_its_data_source_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["datasource"] == {"type": "prometheus", "uid": "${datasource}"} for p in panels)


def test_the_alert_rules_read_only_exported_series() -> None:
    rules = list(alert_rules())
    queries = []
    for rule in rules:
        shown = {
            label for text in rule.get("annotations", {}).values() for label in re.findall(r"\$labels\.(\w+)", text)
        }
        queries.append((f"alert {rule['alert']}", rule["expr"], shown))
    used = check_queries(queries)
    assert "inzwa_sip_registered" in used
    assert {r["alert"] for r in rules} >= {
        "InzwaNoCallsAnswered",
        "InzwaTurnLatencyHigh",
        "InzwaCallErrorRate",
        "InzwaSipTrunkUnregistered",
    }


# ----- the files' own tools -----


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is missing: install Debian's {package} package (`make system-deps` does)")
    return path


def run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def test_promtool_accepts_the_rules_and_the_config() -> None:
    promtool = tool("promtool", "prometheus")
    for argv in (("check", "rules", "alerts.yaml"), ("check", "config", "prometheus.yaml")):
        result = run(promtool, *argv, cwd=PROMETHEUS)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_fire_when_they_should() -> None:
    """alerts.test.yaml feeds series to the rules and names the alerts expected at each time."""
    result = run(tool("promtool", "prometheus"), "test", "rules", "alerts.test.yaml", cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_catches_a_broken_rule(tmp_path: Path) -> None:
    broken = (PROMETHEUS / "alerts.yaml").read_text(encoding="utf-8").replace("> 0.05", "> > 0.05", 1)
    (tmp_path / "alerts.yaml").write_text(broken, encoding="utf-8")
    result = run(tool("promtool", "prometheus"), "check", "rules", "alerts.yaml", cwd=tmp_path)
    assert result.returncode != 0


def verify_unit(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on the unit, its ExecStart pointed at this checkout's script
    (verify insists that the program exists)."""
    script = Path(sys.executable).with_name("inzwa-voice")
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace("/opt/inzwa-voice/.venv/bin/inzwa-voice", str(script)), encoding="utf-8")
    return run(tool("systemd-analyze", "systemd"), "verify", str(unit))


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    result = verify_unit(UNIT.read_text(encoding="utf-8"), tmp_path)
    assert result.returncode == 0 and not result.stderr.strip(), result.stdout + result.stderr
    assert unit_value("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert unit_value("EnvironmentFile").startswith("/etc/")


def test_systemd_verify_catches_a_mistyped_option(tmp_path: Path) -> None:
    result = verify_unit(UNIT.read_text(encoding="utf-8").replace("ProtectHome=", "ProtectHme="), tmp_path)
    assert "ProtectHme" in result.stderr


# ----- files that only need to parse -----


@pytest.mark.parametrize(
    "path", sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")]), ids=lambda p: str(p.relative_to(ROOT))
)
def test_yaml_parses(path: Path) -> None:
    assert yaml_documents(path)


def test_the_licence_is_the_one_pyproject_declares() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["license"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert declared == "Apache-2.0"
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
