"""The web console: server-rendered pages over the services' gRPC APIs.

It owns no data. Every page reads, and every button acts, through the services' own
RPCs with the signed-in person's API key as the caller's credentials, so what a person
may see and do is decided by the services (roles, tenants, four eyes), never here. The
console only greys out buttons that the key's roles (from RegistryService.WhoAmI) cannot
use; a forced request still goes to the service, which refuses it.
"""

from posttrain.console.app import ConsoleConfig, ServiceTargets, create_app

__all__ = ["ConsoleConfig", "ServiceTargets", "create_app"]
