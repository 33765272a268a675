"""amqtt's Broker with the fixes an internet-facing broker needs (checked on amqtt 0.12.1).

- Messages queued for an offline client are delivered without RETAIN (amqtt
  sets it, and a retained /set is never acted on by the node), in order, and
  each is forgotten by the data directory once the client acknowledged it.
- At connect amqtt sends a client the retained messages of every filter that
  any session holds; here only those of the client's own subscriptions.
- A login is checked before amqtt touches an existing session with the same
  client id (amqtt merges first: a wrong password could wipe a device's
  session and queued commands, or kick the device off); a client id whose
  persistent session belongs to another user is refused.
- A login, subscribe or publish that is refused gets a log line naming user,
  client id and topic (never a password).
- Shutdown first lets the messages already acknowledged to their publishers
  reach their subscribers or offline queues (amqtt drops what it has not yet
  broadcast).
- Connections beyond `max_connections` are refused (amqtt makes them wait),
  publishes larger than `max_message_size` are dropped, and an offline
  client's queue stops at `max_queued` (amqtt's grows without bound); each
  with a log line.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action, ListenerConfig
from amqtt.errors import MQTTError
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import Session
from amqtt.utils import gen_client_id

from broker.persistence import PersistencePlugin
from broker.server import Limits

log = logging.getLogger("edison-broker")

DRAIN_SECONDS = 3.0


class EdisonBroker(Broker):
    def __init__(self, config: dict[str, Any], limits: Limits) -> None:
        super().__init__(config)
        self.limits = limits
        self._connections = 0
        self._broadcasts_queued = self._broadcasts_done = self._in_delivery = 0
        self._persistence = next((p for p in self.plugins_manager.plugins if isinstance(p, PersistencePlugin)), None)

    async def shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_SECONDS
        quiet = 0
        while quiet < 2 and loop.time() < deadline:  # twice in a row: a message may be between two steps
            quiet = quiet + 1 if not self._undelivered() else 0
            await asyncio.sleep(0.01)
        if self._undelivered():
            log.warning("shutting down with %d message(s) not yet passed on", self._undelivered())
        await super().shutdown()

    def _undelivered(self) -> int:
        """Acknowledged publishes not yet handed to subscribers or offline queues."""
        incoming = sum(session.delivered_message_queue.qsize() for session, _ in self._sessions.values())
        return self._in_delivery + self._broadcasts_queued - self._broadcasts_done + incoming

    async def _broadcast_message(self, *args: Any, **kwargs: Any) -> None:
        self._broadcasts_queued += 1
        await super()._broadcast_message(*args, **kwargs)

    async def _run_broadcast(self, running_tasks: Any) -> None:
        """Takes one message off the broadcast queue and hands it on; counted once done."""
        await super()._run_broadcast(running_tasks)
        self._broadcasts_done += 1

    async def _client_connected(self, listener_name: str, reader: ReaderAdapter, writer: WriterAdapter) -> None:
        if self.limits.max_connections and self._connections >= self.limits.max_connections:
            log.warning("refused connection from %s: already %d connections (--max-connections)",
                        writer.get_peer_info(), self._connections)
            await writer.close()
            return
        self._connections += 1
        try:
            await super()._client_connected(listener_name, reader, writer)
        finally:
            self._connections -= 1

    async def _initialize_client_session(self, reader: ReaderAdapter, writer: WriterAdapter,
                                         remote_address: str, remote_port: int,
                                         ) -> tuple[BrokerProtocolHandler, Session]:
        """amqtt's version, with the login checked first and sessions kept per user."""
        try:
            handler, incoming = await BrokerProtocolHandler.init_from_connect(reader, writer, self.plugins_manager)
        except MQTTError:
            await writer.close()
            raise
        existing = self._sessions.get(incoming.client_id, (None, None))[0] if incoming.client_id else None
        reason = None
        if not await super()._authenticate(incoming, None):
            reason = ""
        elif existing is not None and existing.username and existing.username != incoming.username:
            reason = f": client id in use by user {existing.username}"
        if reason is not None:
            log.warning("refused login: user=%s client=%s%s", incoming.username or "(none)", incoming.client_id, reason)
            handler.attach(incoming, reader, writer)
            await handler.mqtt_connack_authorize(False)
            await writer.close()
            raise MQTTError("login refused")
        if incoming.clean_session:
            if incoming.client_id:
                await self._delete_session(incoming.client_id)
            else:
                incoming.client_id = gen_client_id()
            incoming.parent = 0
            session = incoming
        elif existing is not None:
            for name in ("will_flag", "will_message", "will_topic", "will_qos", "will_retain", "keep_alive",
                         "is_anonymous", "username", "password"):
                setattr(existing, name, getattr(incoming, name))
            existing.parent = 1
            session = existing
        else:
            incoming.parent = 0
            session = incoming
        delay = self.config.get("timeout-disconnect-delay", 0)
        if session.keep_alive > 0 and isinstance(delay, int):
            session.keep_alive += delay
        return handler, session

    async def _authenticate(self, session: Session, listener: ListenerConfig) -> bool:
        # Already checked in _initialize_client_session; asking again would re-run the plugins.
        return True

    async def _topic_filtering(self, session: Session, topic: str, action: Action) -> bool:
        ok = await super()._topic_filtering(session, topic, action)
        if not ok and action in (Action.SUBSCRIBE, Action.PUBLISH):
            log.warning("refused %s: user=%s client=%s topic=%s", action.value,
                        session.username or "(none)", session.client_id, topic)
        return ok

    async def _handle_message_delivery(self, client_session: Session, handler: Any,
                                       wait_deliver: asyncio.Future) -> bool:
        message = wait_deliver.result()
        size = len(message.data or b"") if message is not None else 0
        if self.limits.max_message_size and size > self.limits.max_message_size:
            log.warning("refused publish: user=%s client=%s topic=%s: %d bytes, over the limit of %d",
                        client_session.username or "(none)", client_session.client_id, message.topic,
                        size, self.limits.max_message_size)
            return True
        self._in_delivery += 1
        try:
            return await super()._handle_message_delivery(client_session, handler, wait_deliver)
        finally:
            self._in_delivery -= 1

    async def _retain_broadcast_message(self, broadcast: dict[str, Any], qos: int, target_session: Session) -> None:
        if self.limits.max_queued and target_session.retained_messages.qsize() >= self.limits.max_queued:
            log.warning("dropped message on %s for offline client=%s user=%s: already %d queued (--max-queued)",
                        broadcast["topic"], target_session.client_id, target_session.username, self.limits.max_queued)
            return
        await super()._retain_broadcast_message(broadcast, qos, target_session)

    async def _publish_session_retained_messages(self, session: Session) -> None:
        handler = self._get_handler(session)
        queue = session.retained_messages
        while handler and not queue.empty():
            message = queue.get_nowait()
            try:
                await handler.mqtt_publish(message.topic, message.data, message.qos, retain=False)
            except Exception as exc:  # the client went away: keep the rest, in order, for its next connection
                log.info("client=%s: queued message on %s not delivered (%s); kept", session.client_id,
                         message.topic, exc)
                rest = [message]
                while not queue.empty():
                    rest.append(queue.get_nowait())
                for kept in rest:
                    queue.put_nowait(kept)
                return
            if self._persistence:
                self._persistence.delivered(session.client_id)

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int],
                                                          session: Session) -> None:
        topic_filter = subscription[0]
        granted = [qos for s, qos in self._subscriptions.get(topic_filter, []) if s.client_id == session.client_id]
        if granted:
            await super()._publish_retained_messages_for_subscription((topic_filter, granted[0]), session)
