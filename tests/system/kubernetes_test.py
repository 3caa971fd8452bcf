#!/usr/bin/env python3
"""Structural check of packaging/kubernetes/*.yaml (no cluster here): parses every
document and asserts what the README promises about them. Debian 12's
kubernetes-client is not used: its client-side dry-run still asks an API server."""
import glob
import os
import re
import sys

import yaml

errors = []


def check(cond, what):
    if not cond:
        errors.append(what)


def duration_s(text):
    m = re.fullmatch(r'(\d+)(ms|s|m|h)', text)
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def main(directory):
    docs = []
    for path in sorted(glob.glob(os.path.join(directory, "*.yaml"))):
        with open(path) as f:
            docs += [d for d in yaml.safe_load_all(f) if d]
    kinds = {d["kind"]: d for d in docs}
    for kind in ("Deployment", "Service", "ConfigMap", "PodDisruptionBudget"):
        check(kind in kinds, f"no {kind}")
    if errors:
        return
    dep, svc, cm, pdb = (kinds[k] for k in ("Deployment", "Service", "ConfigMap", "PodDisruptionBudget"))
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    check(spec["replicas"] >= 2, "replicas < 2")
    check(spec["selector"]["matchLabels"].items() <= labels.items(), "Deployment selector does not match its pods")
    check(svc["spec"]["selector"].items() <= labels.items(), "Service selector does not match the pods")
    check(pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(), "PDB selector does not match the pods")
    check(pdb["spec"].get("minAvailable", 0) < spec["replicas"], "PDB minAvailable leaves no disruption possible")
    check(pod["securityContext"].get("runAsNonRoot") is True, "pod not runAsNonRoot")
    check(pod["securityContext"].get("runAsUser", 0) != 0, "pod runs as uid 0")
    main_c = next(c for c in pod["containers"] if c["name"] == "echorelay")
    for c in pod["containers"]:
        sc = c.get("securityContext", {})
        check(sc.get("readOnlyRootFilesystem") is True, f"{c['name']}: root filesystem not read-only")
        check(sc.get("allowPrivilegeEscalation") is False, f"{c['name']}: privilege escalation allowed")
        req = c.get("resources", {}).get("requests", {})
        check("cpu" in req and "memory" in req, f"{c['name']}: no cpu/memory requests")
    ports = {p["name"]: p for p in main_c["ports"]}
    check(main_c["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness is not /readyz")
    check(main_c["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness is not /healthz")
    for probe in ("readinessProbe", "livenessProbe"):
        port = main_c[probe]["httpGet"]["port"]
        check(port in ports or port in [p["containerPort"] for p in ports.values()], f"{probe} port {port} unknown")

    toml_text = cm["data"]["echorelay.toml"]
    try:
        import tomllib  # Python 3.11 (Debian 12)
        cfg = tomllib.loads(toml_text)
    except ImportError:
        cfg = None
        errors.append("python3 has no tomllib")
    if cfg:
        drain = duration_s(cfg.get("daemon", {}).get("drain_timeout", "30s"))
        admin = cfg.get("admin", {}).get("listen", "")
        check(admin.startswith("0.0.0.0:") or admin.startswith("[::]:"), "admin endpoint not reachable by the kubelet")
        check(int(admin.rsplit(":", 1)[1]) == ports["admin"]["containerPort"], "admin port differs from the config")
        pre = main_c.get("lifecycle", {}).get("preStop", {})
        cmd = pre.get("exec", {}).get("command", [])
        pre_s = int(cmd[1]) if cmd[:1] == ["sleep"] else pre.get("sleep", {}).get("seconds", 0)
        check(pre_s > 0, "no preStop sleep")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        check(grace > pre_s + drain, f"terminationGracePeriodSeconds {grace} <= preStop {pre_s} + drain_timeout {drain}")
        # every Service port reaches a listener of the config, with the protocol it has
        listeners = {(l["protocol"], int(l["address"].rsplit(":", 1)[1])) for l in cfg.get("listener", [])}
        for sp in svc["spec"]["ports"]:
            target = ports.get(sp["targetPort"]) if isinstance(sp["targetPort"], str) else None
            check(target is not None, f"Service port {sp['name']}: unknown targetPort")
            if target:
                check(target["protocol"] == sp["protocol"], f"Service port {sp['name']}: protocol differs")
                check((sp["protocol"].lower(), target["containerPort"]) in listeners,
                      f"Service port {sp['name']}: no {sp['protocol']} listener on {target['containerPort']}")
        protocols = {p["protocol"] for p in svc["spec"]["ports"]}
        check({"TCP", "UDP"} <= protocols, "Service lacks TCP or UDP")
    # reload on a ConfigMap change: a process-sharing sidecar with the config mounted as a directory
    check(pod.get("shareProcessNamespace") is True, "no shareProcessNamespace for the reload sidecar")
    reloader = [c for c in pod["containers"] if c["name"] != "echorelay"]
    check(any("kill -HUP" in " ".join(c.get("args", []) + c.get("command", [])) for c in reloader), "no SIGHUP sidecar")
    for c in pod["containers"]:
        for m in c.get("volumeMounts", []):
            check("subPath" not in m, f"{c['name']}: a subPath mount never sees ConfigMap updates")
    check(any(m["mountPath"] == "/etc/echorelay" for m in main_c["volumeMounts"]), "config not at /etc/echorelay")


if __name__ == "__main__":
    main(sys.argv[1])
    for e in errors:
        print("FAIL:", e)
    if not errors:
        print("PASS: Deployment, Service, ConfigMap and PodDisruptionBudget hold together")
    sys.exit(1 if errors else 0)
