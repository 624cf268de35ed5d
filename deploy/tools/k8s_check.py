"""Checks of a rendered overlay (`kustomize build`) beyond the Kubernetes
schemas, for scripts/check-deploy:

- splits the objects of built-in API groups (written to --core-out, for
  kubernetes-validate) from custom resources, which no Kubernetes schema
  covers: KEDA's ScaledObject gets a structure check here, and any other
  custom kind fails until a check is written for it (never skipped silently);
- asserts how Conveyor must be deployed: a Deployment and Service per role,
  gRPC probes, non-root and read-only root filesystems, requests and limits,
  a --peer for every other role naming a rendered Service, budgets,
  autoscalers, every Secret and ConfigMap reference resolved, the TOML
  config files parsing, and an Ingress path for each service of
  proto/conveyor/v1 (read from the .proto files, not from a list here).

    python k8s_check.py RENDERED.yaml --overlay dev|prod --core-out FILE --proto DIR

Needs PyYAML. Prints one line per check; exit 1 on the first failure.
"""

from __future__ import annotations

import argparse
import base64
import re
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

import yaml

ROLES = ("submission", "results", "scheduling", "dispatch")
GRPC_PORT = 50051
# Objects an overlay expects to exist without rendering them (created out of
# band); each is named in the output.
EXTERNAL = {
    "dev": set(),
    "prod": {("Secret", "conveyor-auth")},
}
HPA_ROLES = ("submission", "dispatch")


class CheckError(Exception):
    pass


def fail(message: str) -> None:
    raise CheckError(message)


def ok(message: str) -> None:
    print(f"  ok  {message}", flush=True)


def builtin(api_version: str) -> bool:
    """True for the API groups Kubernetes itself serves."""
    group = api_version.rsplit("/", 1)[0] if "/" in api_version else ""
    return group == "" or "." not in group or group.endswith(".k8s.io")


def seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not match:
        fail(f"cannot read the duration {text!r}")
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2)]


class Render:
    def __init__(self, docs: list[dict]):
        self.docs = docs
        self.by_key = {(d["kind"], d["metadata"]["name"]): d for d in docs}

    def get(self, kind: str, name: str) -> dict | None:
        return self.by_key.get((kind, name))

    def of_kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def generated(self, kind: str, base: str) -> dict | None:
        """An object named `base` or `base-<kustomize hash>`."""
        for d in self.of_kind(kind):
            name = d["metadata"]["name"]
            if name == base or re.fullmatch(re.escape(base) + r"-[a-z0-9]{10}", name):
                return d
        return None


def secret_value(secret: dict, key: str) -> str | None:
    if key in (secret.get("stringData") or {}):
        return str(secret["stringData"][key])
    if key in (secret.get("data") or {}):
        return base64.b64decode(secret["data"][key]).decode()
    return None


# --- custom resources ---------------------------------------------------------------


def check_scaled_object(doc: dict, render: Render) -> None:
    name = doc["metadata"]["name"]
    where = f"ScaledObject/{name}"
    if doc.get("apiVersion") != "keda.sh/v1alpha1":
        fail(f"{where}: apiVersion must be keda.sh/v1alpha1")
    spec = doc.get("spec") or {}
    target = (spec.get("scaleTargetRef") or {}).get("name")
    if not target or render.get("Deployment", target) is None:
        fail(f"{where}: scaleTargetRef.name {target!r} is not a rendered Deployment")
    low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high):
        fail(f"{where}: need integers 0 <= minReplicaCount ({low}) <= maxReplicaCount ({high})")
    for field in ("pollingInterval", "cooldownPeriod"):
        if field in spec and not (isinstance(spec[field], int) and spec[field] > 0):
            fail(f"{where}: {field} must be a positive integer")
    triggers = spec.get("triggers") or []
    if not triggers:
        fail(f"{where}: no triggers")
    for i, trigger in enumerate(triggers):
        meta = trigger.get("metadata") or {}
        for key, value in meta.items():
            if not isinstance(value, str):
                fail(f"{where}: triggers[{i}].metadata.{key} must be a string (KEDA's metadata is a string map)")
        kind = trigger.get("type")
        if kind == "prometheus":
            if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", meta.get("serverAddress", "")):
                fail(f"{where}: triggers[{i}].metadata.serverAddress must be an http(s) URL")
            if "conveyor_queue_depth" not in meta.get("query", ""):
                fail(f"{where}: triggers[{i}] must query conveyor_queue_depth (the gauge dispatch exports)")
            try:
                if float(meta.get("threshold", "")) <= 0:
                    raise ValueError
            except ValueError:
                fail(f"{where}: triggers[{i}].metadata.threshold must be a positive number, as a string")
        elif kind == "redis":
            if "listName" not in meta or "address" not in meta and "addressFromEnv" not in meta:
                fail(f"{where}: triggers[{i}] (redis) needs listName and address")
        else:
            fail(f"{where}: triggers[{i}].type {kind!r}: no check written for it here")
    ok(f"{where}: scales Deployment/{target} {low}..{high} on {', '.join(t['type'] for t in triggers)} "
       "(structure check: no Kubernetes schema covers KEDA's CRD)")


CUSTOM_CHECKS = {("keda.sh", "ScaledObject"): check_scaled_object}


# --- Conveyor's rules ----------------------------------------------------------------


def container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    if len(containers) != 1:
        fail(f"Deployment/{deployment['metadata']['name']}: expected one container")
    return containers[0]


def check_hardening(workload: dict) -> None:
    kind, name = workload["kind"], workload["metadata"]["name"]
    pod = workload["spec"]["template"]["spec"]
    if not (pod.get("securityContext") or {}).get("runAsNonRoot"):
        fail(f"{kind}/{name}: pod securityContext.runAsNonRoot must be true")
    for c in pod["containers"]:
        sc = c.get("securityContext") or {}
        if sc.get("readOnlyRootFilesystem") is not True or sc.get("allowPrivilegeEscalation") is not False:
            fail(f"{kind}/{name}: container {c['name']} needs readOnlyRootFilesystem: true and allowPrivilegeEscalation: false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            fail(f"{kind}/{name}: container {c['name']} must drop ALL capabilities")
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(res.get(part) or {}):
                fail(f"{kind}/{name}: container {c['name']} needs resources.{part}.cpu and .memory")


def check_references(render: Render, overlay: str) -> None:
    """Every Secret and ConfigMap a pod names exists (or is declared external)."""
    external_seen = set()
    for workload in render.of_kind("Deployment") + render.of_kind("StatefulSet"):
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        pod = workload["spec"]["template"]["spec"]
        refs = []
        for volume in pod.get("volumes") or []:
            if "configMap" in volume:
                refs.append(("ConfigMap", volume["configMap"]["name"], None))
            if "secret" in volume:
                refs.append(("Secret", volume["secret"]["secretName"], None))
        for c in pod["containers"]:
            for env in c.get("env") or []:
                source = env.get("valueFrom") or {}
                if "secretKeyRef" in source:
                    refs.append(("Secret", source["secretKeyRef"]["name"], source["secretKeyRef"]["key"]))
                if "configMapKeyRef" in source:
                    refs.append(("ConfigMap", source["configMapKeyRef"]["name"], source["configMapKeyRef"]["key"]))
        for kind, name, key in refs:
            obj = render.get(kind, name)
            if obj is None:
                if (kind, name) in EXTERNAL[overlay]:
                    external_seen.add((kind, name))
                    continue
                fail(f"{where}: names {kind}/{name}, which the overlay does not render")
            if key is not None:
                present = secret_value(obj, key) is not None if kind == "Secret" else key in (obj.get("data") or {})
                if not present:
                    fail(f"{where}: {kind}/{name} has no key {key!r}")
    ok("every Secret and ConfigMap that a pod names is rendered or declared external")
    for kind, name in sorted(external_seen):
        print(f"  note {kind}/{name} is not rendered: created out of band (see deploy/k8s/overlays/{overlay})")


def check_roles(render: Render) -> None:
    config = render.generated("ConfigMap", "conveyor-config")
    if config is None:
        fail("no ConfigMap conveyor-config")
    for key in ("task-defaults.toml", "schedules.toml"):
        text = (config.get("data") or {}).get(key)
        if text is None:
            fail(f"ConfigMap {config['metadata']['name']}: no {key}")
        try:
            tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            fail(f"ConfigMap {config['metadata']['name']}: {key} is not valid TOML: {error}")
    ok(f"ConfigMap {config['metadata']['name']}: task-defaults.toml and schedules.toml parse as TOML")

    for role in ROLES:
        name = f"conveyor-{role}"
        dep, svc = render.get("Deployment", name), render.get("Service", name)
        if dep is None or svc is None:
            fail(f"role {role}: need Deployment/{name} and Service/{name}")
        pod = dep["spec"]["template"]
        labels = pod["metadata"].get("labels") or {}
        if not svc["spec"].get("selector") or any(labels.get(k) != v for k, v in svc["spec"]["selector"].items()):
            fail(f"Service/{name}: its selector does not match Deployment/{name}'s pods")
        c = container(dep)
        ports = {p["name"]: p["containerPort"] for p in c.get("ports") or []}
        if ports.get("grpc") != GRPC_PORT:
            fail(f"Deployment/{name}: needs container port grpc {GRPC_PORT}")
        if not any(p.get("targetPort") == "grpc" and p.get("port") == GRPC_PORT for p in svc["spec"]["ports"]):
            fail(f"Service/{name}: needs port {GRPC_PORT} to targetPort grpc")
        for probe in ("readinessProbe", "livenessProbe"):
            if ((c.get(probe) or {}).get("grpc") or {}).get("port") != GRPC_PORT:
                fail(f"Deployment/{name}: {probe} must be a native gRPC probe on port {GRPC_PORT}")
        args = [str(a) for a in c.get("args") or []]
        if args[:2] != ["serve", role]:
            fail(f"Deployment/{name}: args must start with `serve {role}` (got {args[:2]})")
        peers = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "--peer")
        for other in ROLES:
            if other == role:
                continue
            url = peers.get(other)
            match = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", url or "")
            if not match or int(match.group(2)) != GRPC_PORT:
                fail(f"Deployment/{name}: needs --peer {other}=http://conveyor-{other}:{GRPC_PORT} (got {url!r})")
            if render.get("Service", match.group(1)) is None:
                fail(f"Deployment/{name}: --peer {other} names Service {match.group(1)}, which is not rendered")
        env = {e["name"]: e for e in c.get("env") or []}
        for var in ("CONVEYOR_STORE", "CONVEYOR_AUTH_TOKENS"):
            if "secretKeyRef" not in (env.get(var, {}).get("valueFrom") or {}):
                fail(f"Deployment/{name}: {var} must come from a Secret (valueFrom.secretKeyRef)")
        if env.get("CONVEYOR_LISTEN", {}).get("value") != f"0.0.0.0:{GRPC_PORT}":
            fail(f"Deployment/{name}: CONVEYOR_LISTEN must be 0.0.0.0:{GRPC_PORT}")
        grace = seconds(env.get("CONVEYOR_GRACE", {}).get("value", "10s"))
        pre_stop = ((c.get("lifecycle") or {}).get("preStop") or {}).get("exec", {}).get("command", [])
        pause = float(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0
        term = pod["spec"].get("terminationGracePeriodSeconds", 30)
        if term <= grace + pause:
            fail(f"Deployment/{name}: terminationGracePeriodSeconds ({term}) must exceed CONVEYOR_GRACE ({grace:g}s) plus the preStop pause ({pause:g}s)")
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts") or []}
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        for flag in ("--task-defaults", "--schedules"):
            for i, a in enumerate(args):
                if a != flag:
                    continue
                path = Path(args[i + 1])
                volume = volumes.get(mounts.get(str(path.parent), ""), {})
                if (volume.get("configMap") or {}).get("name") != config["metadata"]["name"] or path.name not in config["data"]:
                    fail(f"Deployment/{name}: {flag} {path} is not a key of the mounted {config['metadata']['name']}")
        pdb = [p for p in render.of_kind("PodDisruptionBudget")
               if all(labels.get(k) == v for k, v in p["spec"]["selector"]["matchLabels"].items())]
        if not pdb:
            fail(f"Deployment/{name}: no PodDisruptionBudget selects its pods")
        ok(f"{role}: Deployment+Service, gRPC probes, --peer {', '.join(sorted(peers))}, PDB {pdb[0]['metadata']['name']}")
    for task in ("submission", "scheduling"):
        flag = "--task-defaults" if task == "submission" else "--schedules"
        if flag not in container(render.get("Deployment", f"conveyor-{task}")).get("args", []):
            fail(f"Deployment/conveyor-{task}: pass {flag}")

    for role in HPA_ROLES:
        name = f"conveyor-{role}"
        hpa = [h for h in render.of_kind("HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == name]
        if not hpa:
            fail(f"no HorizontalPodAutoscaler for Deployment/{name}")
        if "replicas" in render.get("Deployment", name)["spec"]:
            fail(f"Deployment/{name}: remove spec.replicas; its HPA owns the count (an apply would reset it)")
        ok(f"HPA {hpa[0]['metadata']['name']}: {hpa[0]['spec'].get('minReplicas', 1)}..{hpa[0]['spec']['maxReplicas']} replicas")


def proto_services(proto_dir: Path) -> list[str]:
    found = []
    for path in sorted(proto_dir.glob("*.proto")):
        text = path.read_text()
        package = re.search(r"^package\s+([\w.]+)\s*;", text, re.M)
        for service in re.findall(r"^service\s+(\w+)\s*\{", text, re.M):
            found.append(f"{package.group(1)}.{service}")
    if not found:
        fail(f"no services found in {proto_dir}/*.proto")
    return found


def check_ingress(render: Render, proto_dir: Path) -> None:
    ingresses = render.of_kind("Ingress")
    if len(ingresses) != 1:
        fail(f"expected one Ingress, found {len(ingresses)}")
    ing = ingresses[0]
    where = f"Ingress/{ing['metadata']['name']}"
    if (ing["metadata"].get("annotations") or {}).get("nginx.ingress.kubernetes.io/backend-protocol") != "GRPC":
        fail(f"{where}: needs nginx.ingress.kubernetes.io/backend-protocol: GRPC")
    rules = ing["spec"]["rules"]
    if len(rules) != 1:
        fail(f"{where}: one host, one rule")
    paths = {p["path"]: p for p in rules[0]["http"]["paths"]}
    for service in proto_services(proto_dir):
        short = service.rsplit(".", 1)[1]
        role = short.removesuffix("Service").lower()
        path = paths.get(f"/{service}")
        if path is None or path.get("pathType") != "Prefix":
            fail(f"{where}: no Prefix path /{service}")
        backend = path["backend"]["service"]
        target = render.get("Service", backend["name"])
        if backend["name"] != f"conveyor-{role}" or target is None:
            fail(f"{where}: /{service} must go to Service conveyor-{role} (got {backend['name']})")
        port = backend["port"].get("name") or backend["port"].get("number")
        if not any(port in (p.get("name"), p.get("port")) for p in target["spec"]["ports"]):
            fail(f"{where}: /{service}: Service {backend['name']} has no port {port}")
    ok(f"{where}: host {rules[0]['host']} routes {', '.join('/' + s for s in proto_services(proto_dir))}")


def check_overlay(render: Render, overlay: str) -> None:
    store = render.generated("Secret", "conveyor-store")
    url = secret_value(store, "url") if store else None
    if not url or not url.startswith("redis://"):
        fail("Secret conveyor-store needs key url, a redis:// URL")
    sets = render.of_kind("StatefulSet")
    if overlay == "dev":
        redis = render.get("StatefulSet", "redis")
        if redis is None:
            fail("dev: needs the Redis StatefulSet")
        args = [str(a) for a in redis["spec"]["template"]["spec"]["containers"][0].get("args") or []]
        for flag, value in (("--appendonly", "yes"), ("--appendfsync", "everysec"), ("--maxmemory-policy", "noeviction")):
            if flag not in args or args[args.index(flag) + 1] != value:
                fail(f"dev: Redis must run with {flag} {value}")
        host = re.match(r"redis://(?:[^@/]*@)?([^:/]+)", url).group(1)
        if render.get("Service", host) is None:
            fail(f"dev: Secret conveyor-store points at {host}, which is not a rendered Service")
        check_hardening(redis)
        ok(f"dev: Redis StatefulSet (AOF everysec, noeviction), store URL {url}")
    else:
        if sets:
            fail(f"{overlay}: no StatefulSet expected (Redis is external), found {[s['metadata']['name'] for s in sets]}")
        ok(f"{overlay}: external Redis at {url} (placeholder to replace), no Redis in the cluster")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rendered", type=Path)
    parser.add_argument("--overlay", required=True, choices=sorted(EXTERNAL))
    parser.add_argument("--core-out", type=Path, required=True)
    parser.add_argument("--proto", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        docs = [d for d in yaml.safe_load_all(args.rendered.read_text()) if d]
        render = Render(docs)
        core = [d for d in docs if builtin(d["apiVersion"])]
        custom = [d for d in docs if not builtin(d["apiVersion"])]
        args.core_out.write_text(yaml.safe_dump_all(core, sort_keys=False))
        print(f"  {len(core)} objects of built-in kinds go to kubernetes-validate; {len(custom)} custom resource(s) are checked here")
        for doc in custom:
            group = doc["apiVersion"].split("/")[0]
            checker = CUSTOM_CHECKS.get((group, doc["kind"]))
            if checker is None:
                fail(f"{doc['kind']}/{doc['metadata']['name']} ({doc['apiVersion']}): a custom resource with no check: add one to CUSTOM_CHECKS")
            checker(doc, render)
        for workload in render.of_kind("Deployment") + render.of_kind("StatefulSet"):
            check_hardening(workload)
        ok("every workload: non-root, read-only root filesystem, no privilege escalation, capabilities dropped, requests and limits")
        check_references(render, args.overlay)
        check_roles(render)
        check_ingress(render, args.proto)
        check_overlay(render, args.overlay)
    except CheckError as error:
        print(f"error: {args.rendered} ({args.overlay}): {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
