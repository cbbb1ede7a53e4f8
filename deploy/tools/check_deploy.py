#!/usr/bin/env python3
"""The checks of scripts/check-deploy.sh that no off-the-shelf validator does.

  check_deploy.py dashboard RULES_OUT   Grafana dashboard sanity; writes its PromQL as a
                                        rule file for `promtool check rules`
  check_deploy.py metrics               every metric the dashboard and alerts.yml use is
                                        defined in the Rust sources, under the right job
  check_deploy.py env GATEWAY WAKE      every environment the deploy files give the gateway
                                        and the wake service names only their real variables
                                        (from --help) and passes their --check-config
  check_deploy.py kustomize             every manifest in deploy/kubernetes is used
  check_deploy.py yaml FILE...          the files parse as YAML

Run from the repository root with the venv of deploy/tools/requirements.txt (PyYAML).
Prints what it checked; exits 1 with every problem listed.
"""

import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

DASHBOARD = "deploy/grafana/dashboard.json"
ALERTS = "deploy/prometheus/alerts.yml"
SOURCES = {
    "gateway": "gateway/src/obs/metrics.rs",
    "wake-service": "wake-service/src/metrics.rs",
}
# Series Prometheus makes itself, not in any /metrics.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
# What a Grafana expression may hold that PromQL does not, for `promtool check rules`.
GRAFANA_VARS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
}
# Variables read by the platform, not by our binaries.
PLATFORM_VARS = {
    "PORT": "Railway: the port it health-checks",
    "RAILWAY_RUN_UID": "Railway: the uid the container runs as",
    "RUST_LOG": "both binaries' log filter (tracing's EnvFilter)",
}
PROBLEMS = []


def problem(msg):
    PROBLEMS.append(msg)


def done(what):
    if PROBLEMS:
        print(f"FAILED: {what}:", file=sys.stderr)
        for p in PROBLEMS:
            print(f"  - {p}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


# --- PromQL ------------------------------------------------------------------------------

PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "atan2", "inf", "nan",
}


def metric_names(expr):
    """The metric names an expression selects: identifiers that are not functions,
    aggregations, keywords, label names (inside {...} or by/without/on/ignoring (...)),
    strings, durations or numbers. Grafana variables are dropped first."""
    e = re.sub(r"\$\{?\w+\}?", " ", expr)
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', " ", e)  # strings
    e = re.sub(r"\{[^{}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # ranges and subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("("):
            continue  # a function or an aggregation
        if word.lower() in PROMQL_KEYWORDS:
            continue
        start = m.start()
        if start > 0 and (e[start - 1].isdigit() or e[start - 1] == "."):
            continue  # part of a number (1e3)
        names.add(word)
    return names


def family(name, defined):
    """The metric family `name` belongs to among `defined` (histograms' series carry
    _bucket, _sum and _count), or None."""
    if name in defined:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in defined:
            return name[: -len(suffix)]
    return None


def dashboard_exprs():
    with open(DASHBOARD, encoding="utf-8") as f:
        dash = json.load(f)
    out = []
    for panel in dash.get("panels", []):
        for target in panel.get("targets", []) or []:
            if target.get("expr"):
                out.append((f"panel '{panel.get('title')}' {target.get('refId')}", target["expr"]))
    return dash, out


def alert_exprs():
    with open(ALERTS, encoding="utf-8") as f:
        rules = yaml.safe_load(f)
    out = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            out.append((f"alert {rule.get('alert') or rule.get('record')}", str(rule["expr"])))
    return out


# --- dashboard -----------------------------------------------------------------------------

PANEL_TYPES = {"row", "timeseries", "stat", "gauge", "bargauge", "table", "heatmap", "text"}


def check_dashboard(rules_out):
    dash, exprs = dashboard_exprs()
    for key in ("title", "uid", "schemaVersion", "panels", "templating", "time"):
        if key not in dash:
            problem(f"dashboard: no '{key}'")
    ds_vars = [v for v in dash.get("templating", {}).get("list", []) if v.get("type") == "datasource"]
    if not any(v.get("name") == "datasource" and v.get("query") == "prometheus" for v in ds_vars):
        problem("dashboard: no datasource variable 'datasource' of type prometheus")
    ids = set()
    cells = {}
    for panel in dash.get("panels", []):
        title = panel.get("title") or "(untitled)"
        pid = panel.get("id")
        if not isinstance(pid, int) or pid in ids:
            problem(f"panel '{title}': id {pid!r} missing or repeated")
        ids.add(pid)
        if panel.get("type") not in PANEL_TYPES:
            problem(f"panel '{title}': unknown type {panel.get('type')!r}")
        pos = panel.get("gridPos") or {}
        if not all(isinstance(pos.get(k), int) for k in ("h", "w", "x", "y")):
            problem(f"panel '{title}': gridPos needs integer h, w, x, y")
            continue
        if pos["x"] < 0 or pos["w"] < 1 or pos["x"] + pos["w"] > 24:
            problem(f"panel '{title}': gridPos outside the 24 columns: {pos}")
        for dx in range(pos["w"]):
            for dy in range(pos["h"]):
                cell = (pos["x"] + dx, pos["y"] + dy)
                if cell in cells:
                    problem(f"panel '{title}' overlaps panel '{cells[cell]}'")
                    break
                cells[cell] = title
            else:
                continue
            break
        if panel.get("type") in ("row", "text"):
            continue
        if not panel.get("description"):
            problem(f"panel '{title}': no description")
        if (panel.get("datasource") or {}).get("uid") != "${datasource}":
            problem(f"panel '{title}': datasource is not the ${{datasource}} variable")
        targets = panel.get("targets") or []
        if not targets:
            problem(f"panel '{title}': no targets")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or None in refs:
            problem(f"panel '{title}': refIds missing or repeated: {refs}")
        for t in targets:
            if not (t.get("expr") or "").strip():
                problem(f"panel '{title}' {t.get('refId')}: empty expr")
            if (t.get("datasource") or {}).get("uid") not in (None, "${datasource}"):
                problem(f"panel '{title}' {t.get('refId')}: datasource is not ${{datasource}}")
    # Every expression as a recording rule, so that promtool parses it.
    rules = []
    for i, (where, expr) in enumerate(exprs):
        for var, value in GRAFANA_VARS.items():
            expr = expr.replace(var, value)
        if "$" in expr:
            problem(f"{where}: unknown Grafana variable in {expr!r}")
        rules.append({"record": f"dashboard:expr_{i}", "expr": expr})
    with open(rules_out, "w", encoding="utf-8") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f, sort_keys=False)
    done(f"{DASHBOARD}: {len(dash.get('panels', []))} panels, {len(exprs)} queries "
         f"(PromQL written to {rules_out} for promtool)")


# --- metric names against the sources -----------------------------------------------------


def defined_metrics():
    out = {}
    for job, path in SOURCES.items():
        with open(path, encoding="utf-8") as f:
            text = f.read()
        prefix = "gateway_" if job == "gateway" else "wake_"
        out[job] = set(re.findall(r'"(' + prefix + r'[a-z0-9_]+)"', text))
        if not out[job]:
            problem(f"no metric names found in {path}")
    return out


def job_of(selector_expr, name):
    """The job label value a selector of `name` in `expr` asks for, or None."""
    m = re.search(re.escape(name) + r'\s*\{([^}]*)\}', selector_expr)
    if not m:
        return None
    j = re.search(r'\bjob\s*=\s*"([^"]*)"', m.group(1))
    return j.group(1) if j else None


def check_metrics():
    defined = defined_metrics()
    _, dash = dashboard_exprs()
    used = 0
    for where, expr in dash + alert_exprs():
        for name in metric_names(expr):
            used += 1
            if name in SYNTHETIC:
                continue
            job = "gateway" if name.startswith("gateway_") else "wake-service" if name.startswith("wake_") else None
            if job is None:
                problem(f"{where}: '{name}' is neither a gateway_ nor a wake_ metric")
                continue
            if family(name, defined[job]) is None:
                problem(f"{where}: '{name}' is not defined in {SOURCES[job]}")
            asked = job_of(expr, name)
            if where.startswith("panel") and asked != job:
                problem(f"{where}: '{name}' must select job=\"{job}\" (has {asked!r})")
            elif asked is not None and asked != job:
                problem(f"{where}: '{name}' selects job=\"{asked}\", it comes from job \"{job}\"")
    done(f"metric names of the dashboard and alerts.yml ({used} uses) defined in "
         f"{', '.join(SOURCES.values())}, under the right job")


# --- environments against the binaries -----------------------------------------------------


def help_env(binary, *args):
    """(variables from `--help`'s [env: NAME=...] entries, the --help text)."""
    out = subprocess.run([binary, *args, "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"\[env: ([A-Z0-9_]+)", out)), out


def interpolate_compose(value):
    """Compose's ${VAR:-default} / ${VAR-default} / ${VAR} with the defaults (unset VARs)."""
    def repl(m):
        body = m.group(1)
        for sep in (":-", "-", ":?", "?"):
            if sep in body:
                name, default = body.split(sep, 1)
                return default if sep in (":-", "-") else "placeholder"
        return ""
    return re.sub(r"\$\{([^}]*)\}", repl, str(value))


RAILWAY_REFERENCES = {
    "RAILWAY_PRIVATE_DOMAIN": "service.railway.internal",
    "DATABASE_URL": "postgresql://postgres:placeholder@state.railway.internal:5432/railway",
    "WAKE_PROXY_TOKEN": "p" * 64,
}


SECRETS = [0]


def railway_value(value, where):
    def repl(m):
        ref = m.group(1).strip()
        s = re.match(r'secret\((\d+)', ref)
        if s:
            # Each a different value, as Railway generates them.
            SECRETS[0] += 1
            return (f"{SECRETS[0]}s" * int(s.group(1)))[: int(s.group(1))]
        var = ref.split(".")[-1]
        if var in RAILWAY_REFERENCES:
            return RAILWAY_REFERENCES[var]
        problem(f"{where}: no placeholder for the Railway reference ${{{{{ref}}}}} (add one to RAILWAY_REFERENCES)")
        return "placeholder"
    return re.sub(r"\$\{\{(.*?)\}\}", repl, value)


def read_env_file(path):
    env = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if "=" not in line:
                problem(f"{path}:{n}: not NAME=VALUE")
                continue
            name, value = line.split("=", 1)
            env[name] = railway_value(value, f"{path}:{n}")
    return env


def k8s_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def k8s_env(deployment, configmaps, secret, patch=None):
    """The environment a Deployment's first container gets: envFrom ConfigMaps, then env
    (values, secretKeyRef from the example Secret, fieldRef as a placeholder), after an
    optional strategic-merge patch of its env list (by name, `$patch: delete`)."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    entries = list(container.get("env", []))
    if patch:
        pc = patch["spec"]["template"]["spec"]["containers"][0]
        for item in pc.get("env", []):
            entries = [e for e in entries if e["name"] != item["name"]]
            if item.get("$patch") != "delete":
                entries.insert(0, item)
    env = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        env.update({k: str(v) for k, v in configmaps[name].items()})
    for e in entries:
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "secretKeyRef" in e.get("valueFrom", {}):
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = secret[ref["key"]]
        elif "fieldRef" in e.get("valueFrom", {}):
            env[e["name"]] = "10.0.0.10"
        else:
            problem(f"deployment {deployment['metadata']['name']}: env {e['name']} has no value this check understands")
    return env


def environments():
    """(where, service, env) for every environment the deploy files define."""
    out = []
    with open("deploy/docker-compose.yml", encoding="utf-8") as f:
        compose = yaml.safe_load(f)
    for service in ("gateway", "wake-service"):
        env = {k: interpolate_compose(v) for k, v in compose["services"][service]["environment"].items()}
        out.append((f"docker-compose.yml service {service}", service, env))

    base = "deploy/kubernetes/base"
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in k8s_docs(f"{base}/configmap.yaml")}
    secret = k8s_docs(f"{base}/secret.example.yaml")[0]["stringData"]
    gw = k8s_docs(f"{base}/gateway-deployment.yaml")[0]
    wake = k8s_docs(f"{base}/wake-service-deployment.yaml")[0]
    patch = k8s_docs("deploy/kubernetes/local-driver/wake-service-deployment.patch.yaml")[0]
    out.append(("kubernetes/base gateway", "gateway", k8s_env(gw, configmaps, secret)))
    out.append(("kubernetes/base wake-service", "wake-service", k8s_env(wake, configmaps, secret)))
    out.append(("kubernetes/local-driver wake-service", "wake-service", k8s_env(wake, configmaps, secret, patch)))

    for path, service in (
        ("deploy/railway/gateway/variables.env", "gateway"),
        ("deploy/railway/wake-service/variables.env", "wake-service"),
        ("deploy/railway/wake-service/variables.local-driver.env", "wake-service"),
    ):
        out.append((path, service, read_env_file(path)))
    return out


def check_env(gateway_bin, wake_bin):
    known = {"gateway": help_env(gateway_bin), "wake-service": help_env(wake_bin, "serve")}
    checked = 0
    with tempfile.TemporaryDirectory(prefix="check-deploy-") as tmp:
        for where, service, env in environments():
            names, _ = known[service]
            env = dict(env)
            for name in sorted(env):
                if name in names or name in PLATFORM_VARS:
                    continue
                problem(f"{where}: {name} is not a variable of `{service} --help`")
            # Paths of this machine instead of the container's.
            if "DATA_DIR" in env or service == "wake-service":
                env["DATA_DIR"] = os.path.join(tmp, "data")
            run_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
            binary = gateway_bin if service == "gateway" else wake_bin
            args = [binary, "--check-config"] if service == "gateway" else [binary, "serve", "--check-config"]
            r = subprocess.run(args, env=run_env, capture_output=True, text=True)
            checked += 1
            if r.returncode != 0:
                problem(f"{where}: `{service} --check-config` refused it: {(r.stderr or r.stdout).strip()}")
    done(f"{checked} environments (compose, kubernetes, railway): every variable is one of "
         f"`--help`'s and `--check-config` accepts them")


# --- kustomize and YAML --------------------------------------------------------------------


def check_kustomize():
    for d, skip in (("deploy/kubernetes/base", {"kustomization.yaml", "secret.example.yaml"}),
                    ("deploy/kubernetes/local-driver", {"kustomization.yaml"})):
        with open(f"{d}/kustomization.yaml", encoding="utf-8") as f:
            k = yaml.safe_load(f)
        listed = set(k.get("resources", [])) | {p["path"] for p in k.get("patches", [])}
        for name in sorted(os.listdir(d)):
            if name.endswith(".yaml") and name not in skip and name not in listed:
                problem(f"{d}/{name} is not listed in {d}/kustomization.yaml")
        for entry in sorted(listed):
            if not os.path.exists(os.path.join(d, entry)):
                problem(f"{d}/kustomization.yaml lists {entry}, which does not exist")
    done("deploy/kubernetes: every manifest is listed in its kustomization.yaml")


def check_yaml(paths):
    for p in paths:
        try:
            with open(p, encoding="utf-8") as f:
                list(yaml.safe_load_all(f))
        except (OSError, yaml.YAMLError) as e:
            problem(f"{p}: {e}")
    done(f"{len(paths)} YAML files parse")


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "dashboard":
        check_dashboard(args[0])
    elif cmd == "metrics":
        check_metrics()
    elif cmd == "env":
        check_env(args[0], args[1])
    elif cmd == "kustomize":
        check_kustomize()
    elif cmd == "yaml":
        check_yaml(args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
