"""Least-privilege Redis ACL users for Fleet's three roles (Redis 7 selectors).

`acl_rules` is pure: it turns the settings into one ACL rule string per role,
limited to the key patterns of `fleet.keys` and the commands Fleet sends.
`render_acl` adds user names and passwords (as SHA-256 hashes) and prints
``ACL SETUSER`` lines or an aclfile. `fleet acl print` shows the result.

| role      | may                                                               |
|-----------|-------------------------------------------------------------------|
| submitter | run the submit script on its queues, read queue info and results, |
|           | read and trim only its own reply streams ``fleet:reply:{<p>-*}``  |
| worker    | consume, ack, reclaim its queues' streams; write results, replies,|
|           | DLQ, retries and its registry entry                               |
| operator  | read everything Fleet owns; write scale, decisions, registry,     |
|           | queue info; DLQ operations; submit like a client                  |

A command is allowed when the root rule or one ``(selector)`` allows the command
on every key it names. Each selector pairs a few commands with the keys they
belong to, so e.g. the submitter's SET reaches only idempotency keys and its
XTRIM only its own reply streams. Scripts run with the caller's permissions:
EVALSHA needs its KEYS in one selector, and each ``redis.call`` inside is
checked again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from fleet import keys
from fleet.errors import ConfigError
from fleet.settings import FleetSettings

SUBMITTER, WORKER, OPERATOR = "submitter", "worker", "operator"
ROLES = (SUBMITTER, WORKER, OPERATOR)
DEFAULT_USERS = {SUBMITTER: "fleet-submitter", WORKER: "fleet-worker", OPERATOR: "fleet-operator"}

# every connection: health checks and unblocking our own reads. Not CLIENT SETINFO
# (Redis 7.2+; redis-py ignores its refusal, and Redis 7.0 rejects the rule)
_CONNECTION = ("ping", "client|id", "client|unblock")
_STREAM_READ = ("xlen", "xrange", "xrevrange", "xpending", "xinfo|groups", "xinfo|stream",
                "xinfo|consumers")
_GROUP = ("xreadgroup", "xack", "xautoclaim", "xclaim", "xpending", "xgroup|create",
          "xgroup|createconsumer", "xgroup|delconsumer", "xinfo|groups", "xinfo|stream",
          "xinfo|consumers", "xlen", "xrange", "xadd")
_READ_ALL = ("get", "mget", "ttl", "pttl", "exists", "type", "hget", "hgetall", "hmget", "hkeys",
             "hlen", "zrange", "zcard", "zrangebyscore", "xread", *_STREAM_READ)


@dataclass(frozen=True, slots=True)
class Grant:
    """Some commands on some keys; `read_only` keys get ``%R~``, the others ``~``."""

    commands: tuple[str, ...]
    keys: tuple[str, ...] = ()
    read_only: bool = False
    write_only: bool = False

    def render(self) -> str:
        prefix = "%R~" if self.read_only else "%W~" if self.write_only else "~"
        parts = [f"+{c}" for c in self.commands] + [prefix + k for k in self.keys]
        return " ".join(parts)


def _queues(settings: FleetSettings) -> list[str]:
    """The queues in the config; none: every queue (the pattern ``*``)."""
    return sorted(settings.queues) or ["*"]


def _each(queues: Iterable[str], key: Callable[[str], str]) -> tuple[str, ...]:
    return tuple(key(q) for q in queues)


def _submit_grants(queues: list[str], replies: str) -> list[Grant]:
    jobs = _each(queues, keys.jobs)
    idem = _each(queues, lambda q: keys.idempotency(q, "*"))
    return [
        Grant(("evalsha", "script|load"), jobs + idem),  # SUBMIT_LUA's KEYS
        Grant(("xadd", "xlen"), jobs),  # the script's calls
        Grant(("get", "set"), idem),
        Grant(("xread", "xtrim"), (replies,)),  # the reply listener
    ]


def submitter_grants(settings: FleetSettings, client_prefix: str) -> list[Grant]:
    queues = _queues(settings)
    results = _each(queues, lambda q: keys.result(q, "*"))
    root = Grant((*_CONNECTION, "hget", "get", "mget"), (keys.QUEUES, *results), read_only=True)
    return [root, *_submit_grants(queues, keys.reply(f"{client_prefix}-*"))]


def worker_grants(settings: FleetSettings) -> list[Grant]:
    queues = _queues(settings)
    return [
        Grant((*_CONNECTION, "multi", "exec", "discard")),  # a batch's outcomes and acks: one MULTI/EXEC
        Grant(_GROUP, _each(queues, keys.jobs)),
        Grant(("set", "get"), _each(queues, lambda q: keys.result(q, "*"))),
        Grant(("xadd", "expire"), (keys.reply("*"),), write_only=True),
        Grant(("xadd", "xlen"), _each(queues, keys.dlq)),
        Grant(("zadd", "zrem", "zrange", "zrangebyscore", "zcard", "zscore"), _each(queues, keys.delayed)),
        Grant(("evalsha", "script|load"),  # the retry mover and the batch writer: their KEYS
              _each(queues, keys.delayed) + _each(queues, keys.jobs) + _each(queues, keys.dlq)),
        Grant(("hset", "hdel", "hget"), (keys.WORKERS, keys.QUEUES)),
        Grant(("xadd",), (keys.EXITS,), write_only=True),  # last counts on a clean exit
    ]


def operator_grants(settings: FleetSettings) -> list[Grant]:
    everything = f"{keys.PREFIX}:*"
    queues = ["*"]  # the CLI looks at every queue, declared here or not
    hashes = (keys.SCALE, keys.DECISIONS, keys.WORKERS, keys.QUEUES)
    return [
        Grant((*_CONNECTION, *_READ_ALL), (everything,), read_only=True),
        Grant(("hset", "hdel"), hashes),
        Grant(("xadd", "xdel", "xtrim", "del", *_STREAM_READ), _each(queues, keys.dlq)),
        *_submit_grants(queues, keys.reply("*")),
    ]


def _check_prefix(client_prefix: str) -> None:
    # the id is `<prefix>-<hex>`; glob characters would widen the pattern
    if not keys.CLIENT_ID_RE.match(f"{client_prefix}-0"):
        raise ConfigError(f"client_prefix {client_prefix!r} must be letters, digits, _ . -")


def role_grants(settings: FleetSettings, *, client_prefix: str = "svc") -> dict[str, list[Grant]]:
    _check_prefix(client_prefix)
    return {
        SUBMITTER: submitter_grants(settings, client_prefix),
        WORKER: worker_grants(settings),
        OPERATOR: operator_grants(settings),
    }


def acl_rules(settings: FleetSettings, *, client_prefix: str = "svc") -> dict[str, str]:
    """Role -> ACL rules (no user name, no password): the root grant, then selectors."""
    rules = {}
    for role, grants in role_grants(settings, client_prefix=client_prefix).items():
        root, *selectors = grants
        parts = ["resetkeys", "resetchannels", "-@all", root.render()]
        parts += [f"({s.render()})" for s in selectors]
        rules[role] = " ".join(parts)
    return rules


def password_rule(password: str | None, role: str) -> str:
    """``#<sha256>`` so the cleartext never lands in the output; a placeholder when unknown."""
    if password is None:
        return f"><{role}-password>"
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def render_acl(
    settings: FleetSettings,
    *,
    passwords: Mapping[str, str] | None = None,
    users: Mapping[str, str] | None = None,
    client_prefix: str = "svc",
    aclfile: bool = False,
) -> str:
    """One line per role: ``ACL SETUSER <user> ...`` (for redis-cli) or ``user <user> ...``
    (an aclfile). `users` and `passwords` map a role to its name and cleartext password."""
    names = {**DEFAULT_USERS, **(users or {})}
    secrets = passwords or {}
    head = "user" if aclfile else "ACL SETUSER"
    lines = []
    for role, rules in acl_rules(settings, client_prefix=client_prefix).items():
        lines.append(f"{head} {names[role]} reset on {password_rule(secrets.get(role), role)} {rules}")
    return "\n".join(lines) + "\n"
