"""Credential redaction for free text and for JSON-like structures.

The probe runs command output through `sanitize` before it leaves the host; the control plane
runs errors, log records and audit detail through `sanitize` / `sanitize_mapping` before they
are stored or shown. Every secret found is replaced by `REDACTED`. Where the secret sits behind
a label (`password=`, `Authorization: Bearer `, `://user:`), the label stays and only the value
goes, so the text still says *what* was hidden.

How it works: an ordered table of precompiled rules, one `re.sub` pass each: private-key blocks,
HTTP credential headers, URL userinfo, some thirty vendor token formats recognised by prefix
(AWS, GitHub, GitLab, Slack, Stripe, OpenAI, Vault, Legator's `lgk_`/`lpc_`/`lrt_`, JWTs …),
then values under a secret-named label in every common syntax (env, shell, INI, YAML, JSON,
XML, URL query, CLI flags, SQL, .netrc, `vault read` tables, k8s `name`/`value` pairs). A rule
names the part it hides with `v…` groups, and a check may veto a match. Every repetition either
starts only at the beginning of a run (a lookbehind on the run's own class) or is possessive and
stops at a delimiter, so each pass is linear in the input: no input backtracks catastrophically.

Judgement calls:

* False positives are cheaper than leaks: `invalid token: bad signature` loses `bad`, and a
  long mixed-case word after "Bearer" is hidden.
* A name is secret when it *ends* in a secret word (`DB_PASSWORD`, `clientSecret`,
  `X-Api-Key`), so `password_min_length`, `token_count`, `max_tokens` and `passwordless` are
  not. Words that also name harmless things need a value that looks the part: `auth` (`auth:
  ldap` stays), `session` (`session=3` stays), `pwd` (`PWD=/root` stays).
* Bare password *hashes* (htpasswd, /etc/shadow, `$argon2id$…`) are kept: operators need them
  when debugging authentication and they cannot be replayed. A hash under a secret-named key
  (`password_hash: …`) is hidden like anything else under such a key.
* Public material is kept: certificates, public keys, Stripe `pk_live_` keys, AWS ids other
  than access key ids (`AIDA…`), `certificate-authority-data`, `client-certificate-data`.
* Values that are not secrets are kept under a secret label: empty, masked (`****`, `xxxx`),
  references and templates (`$VAR`, `${VAR}`, `%VAR%`, `{{ … }}`, `${{ … }}`, `<token>`,
  `%s`, `{password}`), `null`/`none`/`true`/`false`, and `[REDACTED]` itself, which makes
  `sanitize` idempotent.
* Short command-line flags are ambiguous (`-p` is a port for ssh, a password for mysql), so
  `-p`, `-a`, `-w`, `-P` and `-u user:pass` count only on a line that names the tool.
* Limits: a secret with neither a known prefix nor a label (a raw 40-character AWS secret key on
  its own line, the output of `base64 -d`) is indistinguishable from other text and passes.
"""

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

__all__ = ["REDACTED", "is_secret_key", "sanitize", "sanitize_mapping"]

REDACTED: Final = "[REDACTED]"
"""What every hidden secret is replaced with."""

_Check = Callable[[re.Match[str], str], bool]
_Trim = Callable[[str], tuple[int, int]]

# ---------------------------------------------------------------------------------------------
# Secret names, shared by the text rules (`password=…`) and by `sanitize_mapping` (dict keys). A
# name is secret when it *ends* with a secret word, so `password_min_length`, `token_count` and
# `passwordless` are not. The test is a set of lookbehinds at the end of a possessive identifier
# run, grouped by width: a fixed cost per identifier, never a scan per character.


def _by_width(words: list[str]) -> dict[int, str]:
    """Group regex fragments by match width (a `[...]` class is one character), as lookbehinds need."""
    groups: dict[int, list[str]] = {}
    for word in words:
        groups.setdefault(len(re.sub(r"\[[^\]]*\]", "_", word)), []).append(word)
    return {width: "|".join(group) for width, group in sorted(groups.items())}


_SEP_CLASS = r"[_.\-]"
_OWNERS = "api app auth hmac access shared client secret master signing private account session preshared encryption"
_GLUED = [
    *"password passwort passwd passphrase secret token credential credentials cookie cookies authorization".split(),
    *"storepass keypass requirepass masterauth sessionid sessid".split(),
    *(f"{owner}{sep}key" for owner in (*_OWNERS.split(), "subscription") for sep in ("", _SEP_CLASS)),
    *(
        f"{word}{sep}{kind}"
        for word in ("password", "passwd", "secret", "token")
        for kind in ("hash", "digest")
        for sep in ("", _SEP_CLASS)
    ),
    rf"client{_SEP_CLASS}key{_SEP_CLASS}data",
    rf"secret{_SEP_CLASS}key{_SEP_CLASS}base",
]
_SEGMENT = ["pass", "pwd", "auth", "session", rf"session{_SEP_CLASS}id"]
_SECRET_END = "|".join(
    (
        *(f"(?<={alts})" for alts in _by_width(_GLUED).values()),
        # Short words count only as a whole segment: `db_pass`, `MYSQL_PWD`, `_auth`; not `bypass`, `oauth`.
        *(f"(?<={alts})(?<![A-Za-z0-9](?:{alts}))" for alts in _by_width(_SEGMENT).values()),
        # ... or after a camelCase hump: `dbPass`, `basicAuth`; not `OAuth`.
        r"(?-i:(?<=[a-z0-9]Pass|[a-z0-9]Auth)|(?<=[a-z0-9]Pwd)|(?<=[a-z0-9]Session))",
    )
)
_NAME = rf"[A-Za-z0-9_.\-]++(?:{_SECRET_END})"
"""An identifier whose last word says it holds a secret."""

_SECRET_KEY: Final = re.compile(rf"(?s:.*+)(?:{_SECRET_END})", re.IGNORECASE)
_WEAK_TAIL: Final = re.compile(
    r"(?<![a-z0-9])(?:(?P<pwd>pwd)|(?P<auth>auth)|(?P<session>session(?:[_.\-]?id)?))\Z|(?P<sessid>sess(?:ion)?id)\Z"
)
"""Secret names that also name harmless things (`auth: ldap`, `session=3`, `PWD=/root`)."""

_HEADER_NAME: Final = re.compile(r"(?:[A-Za-z0-9_]+-)*(?:authorization|(?:set-)?cookie)", re.IGNORECASE)
"""Names owned by the header rules, which understand `Bearer …` and `a=1; b=2`."""

_SCHEMES = r"bearer|basic|token|bot|negotiate|ntlm|apikey|sso-key|sharedkey|jwt"

# A value: JSON-escaped, double- or single-quoted, an unterminated quote, or a bare run. A bare run
# stops at whitespace and quotes; `,;&` end it only before whitespace or a following `key=`; an
# unbalanced `)]}` ends it before punctuation. So `p,w)d` and `{pw}` stay whole, while
# `pw, user=x` and `User(password=pw)` split after `pw`.
_BARE = (
    r"(?:\{[^\s{}\"'`]*\}|\([^\s()\"'`]*\)|\[[^\s\[\]\"'`]*\]|[^\s\"'`<>,;&)\]}\x00]"
    r"|[,;&](?![\s\"'`<>]|\Z|[A-Za-z_][A-Za-z0-9_.\-]*+=)"
    r"|[)\]}](?=[^\s\"'`<>,;&)\]}\x00]))++"
)
_VALUE = (
    r"(?:\\\"(?P<v1>[^\"\\\r\n]*)\\\""
    r"|\"(?P<v2>[^\"\\\r\n]*+(?:\\.[^\"\\\r\n]*+)*+)\""
    r"|'(?P<v3>[^'\r\n]*)'"
    r"|[\"'](?P<v4>[^\"'\r\n]+)"
    rf"|(?![{{\[(][\s\"'{{\[\]}}]|[{{\[(]\Z)(?P<v5>{_BARE}))"
)
_SEP = (
    rf"\\?[\"']?[ \t]*(?::=|=>|\?=|\+=|[:=])(?:[ \t]+(?![A-Za-z_][A-Za-z0-9_.\-]*+=[^=\s]))?"
    rf"(?:(?:{_SCHEMES})[ \t]+)?"
)

_PLACEHOLDER: Final = re.compile(
    r"\[REDACTED\]|[*•●]+|x{3,}|X{3,}|[|>][\-+0-9]*"
    r"|\$\{[A-Za-z_][A-Za-z0-9_]*\}|\$[A-Z_][A-Z0-9_]*|%[A-Za-z_][A-Za-z0-9_]*%|\$\(.*|\$?\{\{.*|<[^<>]*>|!vault.*"
    r"|\{[A-Za-z_][A-Za-z0-9_.]*\}|%(?:\([A-Za-z_][A-Za-z0-9_]*\))?[sdvqr]|\?|:[A-Za-z_][A-Za-z0-9_]*|\$\d+"
    r"|(?i:null|none|nil|undefined|true|false|~)",
    re.DOTALL,
)

# ---------------------------------------------------------------------------------------------
# Checks and trims.


def _strip(value: str) -> tuple[int, int]:
    return len(value) - len(value.lstrip()), len(value.rstrip())


_COMMENT: Final = re.compile(r"[ \t]#")


def _before_comment(value: str) -> tuple[int, int]:
    """Trim a YAML plain scalar: ` # …` starts a comment, `#` inside a word does not."""
    match = _COMMENT.search(value)
    end = match.start() if match else len(value)
    return 0, len(value[:end].rstrip())


def _looks_random(value: str, min_len: int, classes: int) -> bool:
    present = any(c.islower() for c in value) + any(c.isupper() for c in value) + any(c.isdigit() for c in value)
    return len(value) >= min_len and present >= classes


def _token_like(_match: re.Match[str], value: str) -> bool:
    return _looks_random(value, 16, 2)


def _random_like(_match: re.Match[str], value: str) -> bool:
    return _looks_random(value, 16, 3)


def _name_allows(match: re.Match[str], value: str) -> bool:
    """Weak secret names (`auth`, `session`, `pwd`) need a value that looks the part."""
    name = match.group("name")
    if _HEADER_NAME.fullmatch(name):
        return False
    weak = _WEAK_TAIL.search(name.lower())
    if weak is None:
        return True
    if weak.group("pwd") is not None:
        return not value.startswith(("/", "~", "."))
    if weak.group("auth") is not None:
        return _looks_random(value, 8, 2)
    return _looks_random(value, 16, 2)


_CONTEXT_SPAN = 256
_VAULT_HEADER: Final = re.compile(r"(?m)^Key([ \t]+)Value[ \t]*$")


def _in_vault_table(match: re.Match[str], value: str) -> bool:
    """A row of a `vault read` table: a `Key  Value` header shortly above, its value in the Value column."""
    text = match.string
    headers = list(_VAULT_HEADER.finditer(text, max(0, match.start() - 16 * _CONTEXT_SPAN), match.start()))
    column = match.start("v") - match.start()
    return bool(headers) and len("Key") + len(headers[-1].group(1)) == column and _name_allows(match, value)


def _near(context: re.Pattern[str]) -> _Check:
    """Allow the match only if `context` (a command name) occurs on the same line nearby."""

    def check(match: re.Match[str], _value: str) -> bool:
        text = match.string
        low = max(0, match.start() - _CONTEXT_SPAN)
        high = min(len(text), match.end() + _CONTEXT_SPAN)
        newline = text.rfind("\n", low, match.start())
        start = low if newline == -1 else newline + 1
        end = text.find("\n", match.end(), high)
        return context.search(text, start, high if end == -1 else end) is not None

    return check


_FLAG_TOOLS: Final = {
    "-p": "sshpass|login|mongo",
    "-a": "redis-cli|keydb-cli|valkey-cli",
    "-w": "ldap(?:search|add|modify|delete|passwd|whoami|compare|modrdn|exop)",
    "-P": "sqlcmd|bcp|osql|isql",
}


_FLAG_CHECKS: Final = {flag: _near(re.compile(tools)) for flag, tools in _FLAG_TOOLS.items()}


def _spaced_flag(match: re.Match[str], value: str) -> bool:
    return _FLAG_CHECKS[match.group("flag")](match, value)


# ---------------------------------------------------------------------------------------------
# Rules, in evaluation order: multi-line blocks, then headers and URLs, then prefixed tokens (so
# `GITHUB_TOKEN=ghp_…` is already hidden when labels are looked at), then labelled values.


@dataclass(frozen=True, slots=True)
class _Rule:
    pattern: re.Pattern[str]
    replace: Callable[[re.Match[str]], str]
    hint: re.Pattern[str] | None = None
    """A cheap search that must succeed for the rule to have anything to do."""


def _mask(text: str) -> str:
    """Replace `text` but keep its surrounding whitespace; leave empty or already-hidden text."""
    start, end = _strip(text)
    core = text[start:end]
    if not core or core == REDACTED:
        return text
    return text[:start] + REDACTED + text[end:]


def _value_rule(
    pattern: str,
    flags: int = 0,
    *,
    check: _Check | None = None,
    trim: _Trim = _strip,
    hint: str | None = None,
    near: str | None = None,
) -> _Rule:
    """Build a rule that hides the `v…` group of each match that passes `check`.

    `hint` is a pattern the text must contain for the rule to run at all; `near` is a hint that
    must also occur on the matched line (a command name, for command-line flags).
    """
    compiled = re.compile(pattern, flags)
    source = hint or near
    guard = re.compile(source) if source else None
    if near is not None:
        check = _near(re.compile(near))

    def replace(match: re.Match[str]) -> str:
        group = next(name for name, got in match.groupdict().items() if name.startswith("v") and got is not None)
        value = match.group(group)
        start, end = trim(value)
        secret = value[start:end]
        if not secret or _PLACEHOLDER.fullmatch(secret) or (check is not None and not check(match, secret)):
            return match.group(0)
        offset = match.start(group) - match.start()
        whole = match.group(0)
        return whole[: offset + start] + REDACTED + whole[offset + end :]

    return _Rule(compiled, replace, guard)


def _replace_cookie(match: re.Match[str]) -> str:
    """Hide every cookie value in `Cookie:`, and the first pair's value in `Set-Cookie:`."""
    parts = match.group("v").split(";")
    count = 1 if match.group("set") else len(parts)
    for index in range(count):
        name, equals, value = parts[index].partition("=")
        parts[index] = name + equals + _mask(value) if equals else _mask(name)
    return match.group("label") + ";".join(parts)


_I = re.IGNORECASE
_M = re.MULTILINE
_B64URL = r"[A-Za-z0-9_\-]"
_START = r"(?<![A-Za-z0-9_\-])"

_PREFIXED_TOKENS = "|".join(
    (
        r"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Za-z0-9])",  # AWS access key ids
        r"gh[pousr]_[A-Za-z0-9]{36,}+",  # GitHub
        r"github_pat_[A-Za-z0-9_]{22,}+",
        rf"gl(?:pat|dt|rt|ptt|cbt|ft|soat|agent|imt|oas)-{_B64URL}{{20,}}+",  # GitLab
        r"glsa_[A-Za-z0-9_]{20,}+|glc_[A-Za-z0-9+/=]{20,}+",  # Grafana
        r"xox[abposre]-[A-Za-z0-9\-]{10,}+|xapp-\d-[A-Za-z0-9\-]{10,}+",  # Slack
        r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{10,}+|whsec_[A-Za-z0-9+/=]{20,}+",  # Stripe
        r"SK[0-9a-f]{32}(?![A-Za-z0-9])",  # Twilio API key
        rf"SG\.{_B64URL}{{16,}}+\.{_B64URL}{{16,}}+",  # SendGrid
        rf"sk-ant-{_B64URL}{{20,}}+",  # Anthropic
        rf"AIza{_B64URL}{{35,}}+|GOCSPX-{_B64URL}{{20,}}+|ya29\.{_B64URL}{{20,}}+",  # Google
        r"npm_[A-Za-z0-9]{36,}+",
        rf"pypi-AgE{_B64URL}{{40,}}+",
        rf"dckr_(?:pat|oat)_{_B64URL}{{20,}}+",  # Docker Hub
        rf"hv[sbr]\.{_B64URL}{{20,}}+",  # HashiCorp Vault
        rf"HRKU-{_B64URL}{{20,}}+",  # Heroku
        r"dop_v1_[a-f0-9]{64}|shp(?:at|ss|ca|pa)_[a-fA-F0-9]{32}|dapi[a-f0-9]{32}(?![A-Za-z0-9])",
        r"NRAK-[A-Z0-9]{27}|ATATT3[A-Za-z0-9_\-=]{20,}+|AGE-SECRET-KEY-1[0-9A-Z]{58}",
        rf"eyJ{_B64URL}{{8,}}+\.{_B64URL}{{8,}}+\.{_B64URL}*+",  # JWT / JWS
        rf"(?:lgk|lpc|lrt)_{_B64URL}{{16,}}+",  # Legator API keys, probe credentials, registration tokens
        r"prb_[A-Za-z0-9]{12}_\d+_[0-9a-f]{16}",  # the Go system's registration tokens
    )
)

_RULES: Final[tuple[_Rule, ...]] = (
    # PEM and PGP private keys, hidden up to the END line, or to the next `-----`/end if truncated.
    _value_rule(
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?P<v>(?:[^\-]++|-(?!----))*+)"
        r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)?"
    ),
    _value_rule(r"Private-Lines:[ \t]*\d+[ \t]*\r?\n(?P<v>(?:[A-Za-z0-9+/=]++(?:\r?\n|\Z))++)"),  # PuTTY
    # YAML block scalar under a secret key: `token: |` followed by more-indented lines.
    _value_rule(
        rf"^(?P<ind>[ \t]*+)(?:-[ \t]+)?(?P<name>{_NAME})[ \t]*:[ \t]*[|>][\-+0-9]*[ \t]*(?:#[^\r\n]*)?\r?\n"
        r"(?P<v>(?:(?P=ind)[ \t]++[^\r\n]*+(?:\r?\n|\Z)|[ \t]*\r?\n)*)",
        _I | _M,
        check=_name_allows,
    ),
    # HTTP credentials headers: `Authorization: Bearer …`, `Proxy-Authorization: Basic …`, `Digest k="v", …`.
    _value_rule(
        r"(?<![A-Za-z0-9_.\-])(?:[A-Za-z0-9_]+-)*authorization(?P<q>\\?[\"'])?[ \t]*[:=][ \t]*(?:\\?[\"'])?"
        r"(?:(?:digest|aws4-hmac-sha256|oauth|hmac|signature)[ \t]+(?P<v1>(?:[^\r\n\"'\\]|\"[^\"\r\n]*\")+)"
        rf"|(?:(?:{_SCHEMES}|key|gitlab-token)[ \t]+)?(?P<v2>[^\s\"'`,;\\]+))",
        _I,
    ),
    _Rule(
        re.compile(
            r"(?<![A-Za-z0-9_.\-])(?P<label>(?P<set>set-)?cookie\\?[\"']?[ \t]*[:=][ \t]*(?:\\?[\"'])?)"
            r"(?P<v>[^\r\n\"'\\]+)",
            _I,
        ),
        _replace_cookie,
    ),
    # Passwords in URLs: `scheme://user:pass@host`; the password may itself contain `@` or `:`.
    _value_rule(r"://[^\s/?#@:\"'<>]*:(?P<v>[^\s/?#\"'<>]+)@"),
    _value_rule(
        r"(?:hooks\.slack\.com/(?:services|workflows|triggers)/|discord(?:app)?\.com/api/webhooks/"
        r"|webhook\.office\.com/webhookb2/)(?P<v>[A-Za-z0-9_/@\-]+)"
    ),
    _value_rule(rf"{_START}(?P<v>{_PREFIXED_TOKENS})"),
    _value_rule(r"(?:(?<=/bot)|(?<![A-Za-z0-9_\-]))(?P<v>\d{8,10}:AA[A-Za-z0-9_\-]{33})"),  # Telegram bot
    # Prefixes that also start ordinary words or names: only random-looking tails count.
    _value_rule(
        r"(?<![A-Za-z0-9_.\-])(?P<v>sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}+|hf_[A-Za-z0-9]{30,}+"
        r"|s\.[A-Za-z0-9]{24}(?![A-Za-z0-9_.\-]))",
        check=_random_like,
    ),
    # `- name: DB_PASSWORD` / `value: …`, `{"name": "API_KEY", "value": …}`, `<add key="Password" value="…"/>`.
    _value_rule(
        r"(?<![A-Za-z0-9_\-])[\"']?(?:name|key)[\"']?[ \t]*[:=][ \t]*(?P<q>[\"']?)(?P<name>" + _NAME + r")(?P=q)"
        r"[ \t]*,?[ \t]*(?:\r?\n[ \t]*)?[\"']?value[\"']?[ \t]*[:=][ \t]*" + _VALUE,
        _I,
        check=_name_allows,
    ),
    # A YAML plain scalar or an INI `key = value` line: the value runs to the end of the line or a comment.
    _value_rule(
        rf"^[ \t]*+(?:-[ \t]+)?(?P<name>{_NAME})(?:[ \t]*:[ \t]+|[ \t]+=[ \t]*|=[ \t]+)"
        r"(?![A-Za-z_][A-Za-z0-9_.\-]*+=[^=\s])(?P<v>[^\s\"'|>&*!\[{#][^\r\n]*)",
        _I | _M,
        check=_name_allows,
        trim=_before_comment,
    ),
    # `key=value`, `key: value`, `"key": "value"`, `key => 'value'`, `--key=value`, `?key=value&…`.
    _value_rule(
        # The start test sits after the first character so that the engine can skip ahead to one.
        r"(?P<name>[A-Za-z0-9_.\-](?<![A-Za-z0-9_.\-]{2})(?<!//[A-Za-z0-9_.\-])[A-Za-z0-9_.\-]*+)"
        rf"(?=\\?[\"']?[ \t]*[:=?+])(?:{_SECRET_END}){_SEP}{_VALUE}",
        _I,
        check=_name_allows,
    ),
    _value_rule(rf"<(?:[A-Za-z0-9_\-]+:)?(?P<name>{_NAME})(?:[ \t][^<>]*)?>(?P<v>[^<]+)</", _I, check=_name_allows),
    # `--password value`, `-storepass value`.
    _value_rule(rf"(?<![A-Za-z0-9_\-])(?P<name>--?{_NAME})[ \t]+(?![\-\[<(|]){_VALUE}", _I, check=_name_allows),
    # SQL: `IDENTIFIED BY 'x'`, `WITH PASSWORD 'x'`.
    _value_rule(
        r"(?<![A-Za-z0-9_])(?:identified[ \t]+(?:with[ \t]+\S+[ \t]+)?by[ \t]+(?:password[ \t]+)?|password[ \t]+)"
        r"(?:'(?P<v1>(?:[^'\r\n]|'')*+)'|\"(?P<v2>[^\"\r\n]*)\")",
        _I,
    ),
    # .netrc (`machine h login u password p`, or `password p` alone on a line), redis.conf.
    _value_rule(
        r"(?:^[ \t]*(?:password|passwd|requirepass|masterauth)[ \t]+(?P<v1>\S++)(?=[ \t]*(?:\r?\n|\Z))"
        r"|(?<![A-Za-z0-9_\-])login[ \t]+\S+[ \t]+password[ \t]+(?P<v2>\S+))",
        _I | _M,
    ),
    # `vault kv get` / `vault read` tables: `password    hunter2` under a `Key    Value` header.
    _value_rule(
        rf"^(?P<name>{_NAME})[ \t]{{2,}}+(?P<v>[^\r\n]+)",
        _I | _M,
        check=_in_vault_table,
        hint=_VAULT_HEADER.pattern,
    ),
    # Command lines: `mysql -pSECRET`, `sshpass -p SECRET`, `redis-cli -a …`, `curl -u user:pass`, ….
    _value_rule(
        r"(?<!\S)-p(?:'(?P<v1>[^'\r\n]+)'|\"(?P<v2>[^\"\r\n]+)\"|(?P<v3>[^\s'\"\-][^\s'\"]*+))",
        near="mysql|mariadb|sshpass",
    ),
    _value_rule(
        rf"(?<!\S)(?P<flag>-[pawP])[ \t]+(?!-){_VALUE}", check=_spaced_flag, hint="|".join(_FLAG_TOOLS.values())
    ),
    _value_rule(
        r"(?<!\S)(?:-u|-U|--user|--proxy-user)(?:[ \t]+|=)[\"']?[^\s:%\"'@]+[:%](?P<v>[^\s\"']+)",
        near=r"curl|smbclient|rpcclient|smbmap|smbcacls|smbget|(?<![\w-])net[ \t]",
    ),
    _value_rule(r"(?<!\S)-pass(?:in|out)?[ \t]+[\"']?pass:(?P<v>[^\s\"']+)"),  # openssl
    _value_rule(
        r"(?:echo|printf)[ \t]+[\"']?[A-Za-z_][A-Za-z0-9_.\-]*:(?P<v>[^\s\"':|]+)",
        near="chpasswd",
    ),
    # Signed URLs: Azure SAS `sig=`, S3/GCS presigned `X-Amz-Signature=`.
    _value_rule(
        r"(?<=[?&;])(?:sig|signature|x-(?:amz|goog)-(?:signature|credential|security-token))=(?P<v>[^&#\s\"'<>]+)",
        _I,
    ),
    _value_rule(r"(?<![A-Za-z0-9_\-])bearer[ \t]+(?P<v>[A-Za-z0-9._~+/\-]{16,}+=*+)", _I, check=_token_like),
)


def sanitize(text: str) -> str:
    """Return `text` with every credential it contains replaced by `REDACTED`.

    Labels are kept (`password=[REDACTED]`, `Authorization: Bearer [REDACTED]`,
    `postgres://app:[REDACTED]@db`). The result is stable: `sanitize(sanitize(t)) == sanitize(t)`.
    Runs in time roughly linear in `len(text)`, whatever the input.

    Args:
        text: Command output, a log line, an error message, a config file.

    Returns:
        The redacted text; `text` itself when nothing was found.
    """
    for rule in _RULES:
        if rule.hint is None or rule.hint.search(text):
            text = rule.pattern.sub(rule.replace, text)
    return text


def is_secret_key(name: str) -> bool:
    """Say whether a field, variable or header called `name` holds a secret.

    The last word decides, case-insensitively and across `_`, `-`, `.` and camelCase:
    `DB_PASSWORD`, `clientSecret`, `X-Api-Key`, `aws_secret_access_key`, `password_hash` and
    `session_id` do; `password_min_length`, `token_count`, `max_tokens` and `secretary` do not.
    """
    return _SECRET_KEY.fullmatch(name.strip()) is not None


def sanitize_mapping(value: Mapping[str, Any]) -> dict[str, Any]:
    """Return a redacted deep copy of a JSON-like mapping; `value` is not modified.

    Under a key for which `is_secret_key` holds, the whole value (scalar, list or mapping) becomes
    `REDACTED`, except `None`, booleans and empty strings, which carry no secret. Everywhere else
    strings go through `sanitize`, mappings, lists and tuples are walked, other values are kept.

    Args:
        value: Audit detail, a log record's extras, a job payload.

    Returns:
        A new dict; nested mappings come back as dicts, lists as lists, tuples as tuples.
    """
    return {key: _sanitize_item(key, item) for key, item in value.items()}


def _sanitize_item(key: object, item: Any) -> Any:
    keep = item is None or isinstance(item, bool) or (isinstance(item, str) and not item)
    if isinstance(key, str) and not keep and is_secret_key(key):
        return REDACTED
    return _sanitize_any(item)


def _sanitize_any(item: Any) -> Any:
    if isinstance(item, str):
        return sanitize(item)
    if isinstance(item, Mapping):
        return sanitize_mapping(cast(Mapping[str, Any], item))
    if isinstance(item, list | tuple):
        walked = [_sanitize_any(element) for element in cast(list[Any] | tuple[Any, ...], item)]
        return tuple(walked) if isinstance(item, tuple) else walked
    return item
