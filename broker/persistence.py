"""An amqtt plugin that keeps the broker's state in a Store and restores it at start.

amqtt's own SessionDBPlugin wipes its database on a graceful shutdown, restores
sessions without their user name (so the access rules refuse their
subscriptions) and never deletes delivered messages; this plugin records the
broker's events instead and is told by EdisonBroker when a queued message has
been delivered.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from amqtt.broker import BrokerContext, RetainedApplicationMessage
from amqtt.plugins.base import BasePlugin
from amqtt.session import Session

from broker.store import Store

log = logging.getLogger("edison-broker")


def persistent(session: Session | None) -> bool:
    """Sessions amqtt keeps across disconnects, and therefore worth keeping on disk."""
    return bool(session and session.username and not session.clean_session and not session.is_anonymous)


class PersistencePlugin(BasePlugin[BrokerContext]):
    @dataclass
    class Config:
        file: str = ""

    def __init__(self, context: BrokerContext) -> None:
        super().__init__(context)
        self.store = Store(Path(self.config.file))

    async def on_broker_pre_start(self) -> None:
        retained = self.store.retained()
        for m in retained:
            self.context.retained_messages[m.topic] = RetainedApplicationMessage(None, m.topic, m.data, m.qos)
        sessions = self.store.sessions()
        for s in sessions:
            await self.context.add_subscription(s.client_id, None, None)  # creates an offline session
            session = self.context.get_session(s.client_id)
            session.username, session.clean_session, session.is_anonymous = s.username, False, False
            for topic_filter, qos in s.subscriptions:  # checked again against today's access rules
                await self.context.add_subscription(s.client_id, topic_filter, qos)
            for m in s.queued:
                session.retained_messages.put_nowait(RetainedApplicationMessage(None, m.topic, m.data, m.qos))
        log.info("state restored from %s: %d retained message(s), %d session(s), %d queued message(s)",
                 self.store.path, len(retained), len(sessions), sum(len(s.queued) for s in sessions))

    async def on_broker_client_connected(self, *, client_id: str, client_session: Session) -> None:
        if persistent(client_session):
            self.store.keep_session(client_id, client_session.username)
        else:
            self.store.drop_session(client_id)

    async def on_broker_client_subscribed(self, *, client_id: str, topic: str, qos: int) -> None:
        if self.store.has_session(client_id):
            self.store.subscribe(client_id, topic, qos)

    async def on_broker_client_unsubscribed(self, *, client_id: str, topic: str) -> None:
        self.store.unsubscribe(client_id, topic)

    async def on_broker_retained_message(self, *, client_id: str | None,
                                         retained_message: RetainedApplicationMessage) -> None:
        m = retained_message
        if client_id is None:
            self.store.set_retained(m.topic, m.data, m.qos or 0)
        elif self.store.has_session(client_id):
            self.store.queue(client_id, m.topic, m.data, m.qos or 0)

    def delivered(self, client_id: str) -> None:
        self.store.delivered(client_id, 1)

    async def close(self) -> None:
        self.store.close()
