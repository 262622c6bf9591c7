"""A faithful Klaviyo REST API simulator (revision 2026-10-15) for tests and demos."""

from .api import Stats
from .endpoints import ALL_SCOPES, ENDPOINTS, REVISION
from .nested import ALL_ENDPOINTS, NESTED
from .simulator import KlaviyoSimulator

__all__ = ["ALL_ENDPOINTS", "ALL_SCOPES", "ENDPOINTS", "NESTED", "REVISION", "KlaviyoSimulator", "Stats"]
