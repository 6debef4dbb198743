"""Where a webhook may go: the URL's shape, and every address its host resolves to.

Checked twice: when an endpoint is registered (:class:`DnsTargets`), and on every
connection the delivery client opens (:class:`GuardedResolver`, the client's resolver):
the addresses checked are the very addresses connected to, so a host that resolves to a
public address at registration and to 169.254.169.254 later (DNS rebinding) is refused.
"""

from __future__ import annotations

import ipaddress
import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from app.domain.errors import WebhookTargetRefused
from app.domain.webhooks import TargetRules, address_allowed, check_url_shape


class TargetRefusedError(OSError):
    """A connection the target rules forbid (raised inside the HTTP client)."""


def is_ip_literal(host: str) -> bool:
    """Whether ``host`` is an IP address rather than a name."""
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    return True


def literal_refused(host: str, rules: TargetRules) -> bool:
    """Whether ``host`` is an address (no name to resolve) the rules refuse."""
    return is_ip_literal(host) and not address_allowed(host.strip("[]"), rules)


class GuardedResolver(AbstractResolver):
    """Resolves names like the default resolver, then refuses the lot if any address is
    not allowed (a name that also resolves to an internal address is not delivered to)."""

    def __init__(self, rules: TargetRules, inner: AbstractResolver | None = None) -> None:
        self._rules = rules
        self._inner = inner or ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The host's addresses, all allowed.

        Raises:
            TargetRefusedError: One of them is not.
        """
        results = await self._inner.resolve(host, port, family)
        refused = [r["host"] for r in results if not address_allowed(r["host"], self._rules)]
        if refused:
            raise TargetRefusedError(f"{host} resolves to a non-public address")
        return results

    async def close(self) -> None:
        """Release the inner resolver."""
        await self._inner.close()


class DnsTargets:
    """The :class:`~app.services.ports.webhooks.WebhookTargets` port: the URL's shape, and
    (with ``public_only``) where its host resolves now."""

    def __init__(self, rules: TargetRules, resolver: AbstractResolver | None = None) -> None:
        self._rules = rules
        self._resolver = resolver

    async def check(self, url: str) -> None:
        """Return if ``url`` may receive webhooks.

        Raises:
            WebhookTargetRefused: Why not.
        """
        host, port = check_url_shape(url, self._rules)
        if not self._rules.public_only:
            return
        if literal_refused(host, self._rules):
            raise WebhookTargetRefused("the URL's address is not a public address")
        if is_ip_literal(host):
            return
        # The very check every delivery's connection makes.
        resolver = GuardedResolver(self._rules, self._resolver)
        try:
            results = await resolver.resolve(host, port, socket.AF_UNSPEC)
        except TargetRefusedError:
            raise WebhookTargetRefused(
                f"the URL's host {host} resolves to a loopback, private, link-local or "
                "reserved address"
            ) from None
        except (TimeoutError, OSError):
            raise WebhookTargetRefused(f"the URL's host {host} does not resolve") from None
        if not results:
            raise WebhookTargetRefused(f"the URL's host {host} does not resolve")
