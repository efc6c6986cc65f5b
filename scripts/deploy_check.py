#!/usr/bin/env python3
"""Checks what Kubernetes' schemas cannot: that deploy/'s objects agree with each
other and with capo's binaries.

    deploy_check.py BIN_DIR RENDERED_DIR

RENDERED_DIR holds the rendered overlays (calico-vpp.yaml, standalone.yaml) and
CalicoVPP's stand-in with capo's patches applied (calico-vpp-patched.yaml). Every
flag passed to capo-agent or capoctl must be one the binary lists in --help; the
sockets, ports and paths named in several objects must be the same. Exits 1 with
one line per disagreement.
"""

import pathlib
import re
import subprocess
import sys

import yaml

problems = []


def check(ok, what):
    if not ok:
        problems.append(what)


def load(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def find(docs, kind, name):
    for d in docs:
        if d["kind"] == kind and d["metadata"]["name"] == name:
            return d
    raise SystemExit(f"deploy-check: no {kind} {name}")


def container(pod_spec, name, init=False):
    key = "initContainers" if init else "containers"
    for c in pod_spec.get(key, []):
        if c["name"] == name:
            return c
    raise SystemExit(f"deploy-check: no {'init ' if init else ''}container {name}")


def flags(argv):
    """`--name=value` and `--name value` pairs of a command line."""
    out = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--"):
            if "=" in a:
                k, v = a[2:].split("=", 1)
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                k, v = a[2:], argv[i + 1]
                i += 1
            else:
                k, v = a[2:], None
            out.setdefault(k, []).append(v)
        i += 1
    return out


def known_flags(binary, *sub):
    text = subprocess.run(
        [binary, *sub, "--help"], capture_output=True, text=True, check=True
    ).stdout
    return set(re.findall(r"--([a-z][a-z0-9-]*)", text))


def mounts(c):
    return {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}


def host_path(pod_spec, volume):
    for v in pod_spec.get("volumes", []):
        if v["name"] == volume:
            return v.get("hostPath", {}).get("path")
    return None


def host_path_of(pod_spec, c, path):
    """The host path behind `path` in container `c` (through its mounts)."""
    for mount_path, volume in sorted(mounts(c).items(), key=lambda m: -len(m[0])):
        if path == mount_path or path.startswith(mount_path.rstrip("/") + "/"):
            base = host_path(pod_spec, volume)
            if base is None:
                return None
            return base.rstrip("/") + path[len(mount_path.rstrip("/")):]
    return None


def main():
    bin_dir = pathlib.Path(sys.argv[1])
    rendered = pathlib.Path(sys.argv[2])
    agent_bin = str(bin_dir / "capo-agent")
    capoctl_bin = str(bin_dir / "capoctl")
    agent_flags = known_flags(agent_bin)
    install_flags = known_flags(capoctl_bin, "install")

    for overlay in ["calico-vpp", "standalone"]:
        docs = load(rendered / f"{overlay}.yaml")
        ds = find(docs, "DaemonSet", "capo-agent")
        spec = ds["spec"]["template"]["spec"]
        agent = container(spec, "agent")
        args = flags(agent.get("args", []))
        for k in args:
            check(k in agent_flags, f"{overlay}: capo-agent has no flag --{k}")
        # Probes and scrape annotations point at the ports the agent serves.
        health_port = int(args["health"][0].rsplit(":", 1)[1])
        metrics_port = int(args["metrics"][0].rsplit(":", 1)[1])
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"]:
            check(
                agent[probe]["grpc"]["port"] == health_port,
                f"{overlay}: {probe} is not on --health's port {health_port}",
            )
        check(
            agent["readinessProbe"]["grpc"].get("service") == "capo.ready",
            f"{overlay}: readiness must ask for the capo.ready service",
        )
        annotations = ds["spec"]["template"]["metadata"].get("annotations", {})
        check(
            annotations.get("prometheus.io/port") == str(metrics_port),
            f"{overlay}: the scrape annotation is not on --metrics' port {metrics_port}",
        )
        check(spec.get("hostNetwork") is True, f"{overlay}: probes reach the agent on the node's address only with hostNetwork")
        # The plugin's control socket is in a host directory both sides see.
        dataplane = args["dataplane"][0]
        check(dataplane.startswith("vpp:"), f"{overlay}: --dataplane is not the VPP plugin")
        socket = dataplane[len("vpp:"):]
        check(
            host_path_of(spec, agent, socket) == "/var/run/vpp/capo.sock",
            f"{overlay}: {socket} is not VPP's /var/run/vpp on the host",
        )
        for c in spec.get("initContainers", []):
            cmd = c["command"]
            check(cmd[:2] == ["/usr/bin/capoctl", "install"], f"{overlay}: init {c['name']} is not capoctl install")
            for k in flags(cmd[2:]):
                check(k in install_flags, f"{overlay}: capoctl install has no flag --{k}")
        if overlay == "standalone":
            res = args["resources"][0]
            check(
                mounts(agent).get(res) == "resources",
                f"standalone: --resources {res} is not the ConfigMap's mount",
            )
            cm_name = next(v["configMap"]["name"] for v in spec["volumes"] if v["name"] == "resources")
            check(
                any(d["kind"] == "ConfigMap" and d["metadata"]["name"] == cm_name for d in docs),
                f"standalone: the resources volume names ConfigMap {cm_name}, which is not rendered",
            )
            check("NODE_NAME" in {e["name"] for e in agent.get("env", [])}, "standalone: --node=$(NODE_NAME) without NODE_NAME")
        if overlay == "calico-vpp":
            capo_felix_sock = host_path_of(spec, agent, args["felix-socket"][0])
            driver_init = container(spec, "install-felix-driver", init=True)
            dest = flags(driver_init["command"][2:])["to"][0]
            driver_dir = host_path_of(spec, driver_init, dest)
            driver_name = pathlib.PurePath(driver_init["command"][-1]).name

    # CalicoVPP's objects with capo's patches.
    docs = load(rendered / "calico-vpp-patched.yaml")
    node = find(docs, "DaemonSet", "calico-vpp-node")["spec"]["template"]["spec"]
    plugin_init = container(node, "install-capo-plugin", init=True)
    plugin_to = flags(plugin_init["command"][2:])["to"][0]
    plugin_host_dir = host_path_of(node, plugin_init, plugin_to)
    vpp = container(node, "vpp")
    template = find(docs, "ConfigMap", "calico-vpp-config")["data"]["CALICOVPP_CONFIG_TEMPLATE"]
    add_path = re.search(r"add-path\s+(\S+)", template)
    check(add_path is not None, "calico-vpp-config: no plugins { add-path } for capo's plugin")
    if add_path:
        check(
            host_path_of(node, vpp, add_path.group(1)) == plugin_host_dir,
            f"calico-vpp-config: add-path {add_path.group(1)} is not where install-capo-plugin puts the plugin ({plugin_host_dir})",
        )
    capo_section = re.search(r"\ncapo \{(.*?)\n\}", template, re.S)
    check(capo_section is not None, "calico-vpp-config: no capo { } section")
    if capo_section:
        sock = re.search(r"socket\s+(\S+)", capo_section.group(1)).group(1)
        check(
            host_path_of(node, vpp, sock) == "/var/run/vpp/capo.sock",
            f"calico-vpp-config: capo socket {sock} is not the one capo-agent dials",
        )
    calico = container(find(docs, "DaemonSet", "calico-node")["spec"]["template"]["spec"], "calico-node")
    calico_spec = find(docs, "DaemonSet", "calico-node")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in calico.get("env", [])}
    check(env.get("FELIX_USEINTERNALDATAPLANEDRIVER") == "false", "calico-node: Felix's internal dataplane is not off")
    driver = env.get("FELIX_DATAPLANEDRIVER", "")
    check(
        host_path_of(calico_spec, calico, driver) == f"{driver_dir}/{driver_name}",
        f"calico-node: FELIX_DATAPLANEDRIVER {driver} is not the installed {driver_dir}/{driver_name}",
    )
    check(
        host_path_of(calico_spec, calico, env.get("CAPO_AGENT_SOCKET", "")) == capo_felix_sock,
        f"calico-node: CAPO_AGENT_SOCKET is not capo-agent's --felix-socket ({capo_felix_sock})",
    )
    check(
        env.get("CAPO_FORWARD_SOCKET") == "/var/run/calico/felix-dataplane.sock",
        "calico-node: CAPO_FORWARD_SOCKET is not calico-vpp-agent's Felix socket",
    )

    for p in problems:
        print(f"deploy-check: {p}", file=sys.stderr)
    if problems:
        sys.exit(1)
    print("deploy-check: every overlay and patch agrees with the others and with the binaries", file=sys.stderr)


if __name__ == "__main__":
    main()
