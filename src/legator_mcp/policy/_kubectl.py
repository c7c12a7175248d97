"""kubectl: find the verb behind the global flags, then judge read verbs, mutations and cluster-wide deletes.

Shared by the `kubectl` command kind and by `kubectl` (or `oc`, `k3s kubectl`, `microk8s kubectl`) run
from a shell, so both paths agree.
"""

from collections.abc import Sequence

from legator_mcp.policy._call import Call, Handler
from legator_mcp.policy._core import Level, Risk, Verdict
from legator_mcp.policy._syntax import Word

_VALUED_FLAGS = frozenset(
    {
        *("-n", "--namespace", "--context", "--kubeconfig", "--cluster", "--user", "-s", "--server", "--token"),
        *("--as", "--as-group", "--as-uid", "--certificate-authority", "--client-certificate", "--client-key"),
        *("--cache-dir", "--request-timeout", "--tls-server-name", "-v", "--v", "--log-file", "--profile"),
        *("--profile-output", "--password", "--username", "--vmodule", "--log-dir", "-o", "--output", "-l"),
        *("--selector", "-f", "--filename", "-c", "--container", "-p", "--patch", "--field-selector"),
        *("--sort-by", "--since", "--since-time", "--tail", "--replicas", "--image", "--timeout"),
        *("--grace-period", "--type", "--to-revision", "--for", "-k", "--kustomize", "-L", "--label-columns"),
        *("--template", "--chunk-size", "--output-directory", "--current-replicas", "--resource-version"),
        *("--subresource", "--field-manager", "--min", "--max", "--cpu-percent", "--port", "--target-port"),
        *("--name", "--protocol", "--env", "--overrides", "--restart", "--limits", "--requests", "--raw"),
        *("--serviceaccount", "--address", "--pod-running-timeout", "--max-log-requests", "--from-literal"),
        *("--from-file", "--from-env-file", "--revision", "--target", "--copy-to", "--pod-selector"),
    }
)
_READ_VERBS = frozenset(
    {
        *("get", "describe", "logs", "log", "top", "events", "explain", "api-resources", "api-versions"),
        *("version", "cluster-info", "wait", "diff", "kustomize", "completion", "options", "help"),
    }
)
_READ_SUBVERBS: dict[str, frozenset[str]] = {
    "config": frozenset({"view", "get-contexts", "current-context", "get-clusters", "get-users", ""}),
    "auth": frozenset({"can-i", "whoami"}),
    "rollout": frozenset({"status", "history"}),
    "plugin": frozenset({"list", ""}),
}
_GENTLE_VERBS = frozenset(
    {
        *("apply", "create", "patch", "replace", "edit", "scale", "autoscale", "rollout", "label", "annotate"),
        *("set", "cordon", "uncordon", "taint", "expose", "cp", "config"),
    }
)
_HIGH_VERBS = frozenset({"delete", "drain", "exec", "attach", "port-forward", "debug", "proxy", "run", "certificate"})
_CLUSTER_WIDE = frozenset(
    {
        *("namespace", "namespaces", "ns", "node", "nodes", "no", "crd", "crds"),
        *("customresourcedefinition", "customresourcedefinitions", "customresourcedefinition.apiextensions.k8s.io"),
    }
)
_SECRETS = frozenset({"secret", "secrets"})
_SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})


def _resource_types(targets: Sequence[str]) -> set[str]:
    types: set[str] = set()
    for target in targets:
        for part in target.split(","):
            types.add(part.split("/", 1)[0].lower())
    return types


def classify_kubectl(verdict: Verdict, words: Sequence[Word], namespace: str | None = None) -> None:
    """Judge one kubectl invocation (the words after `kubectl`)."""
    flags: list[str] = []
    values: dict[str, str] = {}
    positionals: list[Word] = []
    index = 0
    while index < len(words):
        word = words[index]
        text = word.text
        index += 1
        if text == "--":
            break
        if text.startswith("-") and len(text) > 1:
            name, equals, value = text.partition("=")
            flags.append(name)
            if not equals and name in _VALUED_FLAGS and index < len(words):
                value = words[index].text
                index += 1
            values[name] = value
        else:
            positionals.append(word)
    shown = " ".join(["kubectl", *(word.raw for word in words)])[:80]
    if not positionals:
        verdict.add("kubectl_read", shown, Risk.LOW, Level.DIAGNOSE)
        return
    if positionals[0].dynamic:
        verdict.unparsed("dynamic_command", f"kubectl verb {positionals[0].raw} is only known at run time")
        return
    verb = positionals[0].text
    targets = [word.text for word in positionals[1:]]
    subverb = targets[0] if targets else ""
    namespace = values.get("-n") or values.get("--namespace") or namespace
    all_namespaces = "-A" in flags or "--all-namespaces" in flags
    if verb in _READ_VERBS or subverb in _READ_SUBVERBS.get(verb, frozenset()):
        verdict.add("kubectl_read", shown, Risk.LOW, Level.DIAGNOSE)
        raw = values.get("--raw", "")
        if (verb == "get" and _resource_types(targets) & _SECRETS) or "secrets" in raw:
            verdict.add("sensitive_resource", "kubectl reads Secret values", Risk.MEDIUM, Level.DIAGNOSE)
        if verb == "config" and ("--raw" in flags or "--flatten" in flags):
            verdict.add(
                "sensitive_resource", "kubectl config view --raw prints credentials", Risk.MEDIUM, Level.DIAGNOSE
            )
        return
    if verb in _GENTLE_VERBS:
        risk = Risk.MEDIUM
        if verb == "scale" and values.get("--replicas") == "0":
            risk = Risk.HIGH
        if (verb == "replace" and "--force" in flags) or (verb == "apply" and "--prune" in flags):
            risk = Risk.HIGH
        if verb == "taint" and any(target.endswith(":NoExecute") for target in targets):
            risk = Risk.HIGH
        verdict.add("kubectl_mutation", shown, risk, Level.REMEDIATE)
    elif verb in _HIGH_VERBS or verb == "auth":
        verdict.add("kubectl_mutation", shown, Risk.HIGH, Level.REMEDIATE)
    else:
        verdict.add("kubectl_mutation", f"{shown} (unrecognised verb)", Risk.HIGH, Level.REMEDIATE)
    if verb in ("delete", "drain"):
        cluster_wide = _resource_types(targets) & _CLUSTER_WIDE
        if cluster_wide and verb == "delete":
            verdict.add(
                "kubectl_mutation", f"kubectl delete {', '.join(sorted(cluster_wide))}", Risk.CRITICAL, Level.REMEDIATE
            )
        if "--all" in flags or all_namespaces:
            verdict.add(
                "kubectl_mutation", f"kubectl {verb} across everything it selects", Risk.CRITICAL, Level.REMEDIATE
            )
    if namespace in _SYSTEM_NAMESPACES:
        verdict.add("critical_namespace", f"changes namespace {namespace}", Risk.HIGH, Level.REMEDIATE)


def kubectl(call: Call) -> None:
    """`kubectl`/`oc`, and `k3s kubectl`/`microk8s kubectl`."""
    args = call.args
    if call.name in ("k3s", "microk8s"):
        if not args or args[0].text != "kubectl":
            call.add("unknown_program", f"{call.shown} is not a known subcommand", Risk.MEDIUM, Level.DIAGNOSE)
            return
        args = args[1:]
    classify_kubectl(call.verdict, args)


HANDLERS: dict[str, Handler] = dict.fromkeys(("kubectl", "oc", "k3s", "microk8s", "microk8s.kubectl"), kubectl)
"""Handlers for kubectl and its distributions."""
