"""amqtt plugins of the embedded broker."""

from __future__ import annotations

from dataclasses import dataclass

from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session


class TrialAuthPlugin(BaseAuthPlugin):
    """Accept every client, for local trials only.

    amqtt's own AnonymousAuthPlugin marks every session anonymous when it
    allows anonymous clients, and amqtt keeps no offline queue for anonymous
    sessions; here only a client without a user name is anonymous, so a node
    that logs in with its device id keeps its session and queued commands.
    """

    @dataclass
    class Config:
        pass

    async def authenticate(self, *, session: Session) -> bool:
        session.is_anonymous = not session.username
        return True
