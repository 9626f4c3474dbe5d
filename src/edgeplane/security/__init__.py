"""Users, tokens, roles."""

from edgeplane.security.tokens import TokenChecker, digest, ensure_admin_token, generate

__all__ = ["TokenChecker", "digest", "ensure_admin_token", "generate"]
