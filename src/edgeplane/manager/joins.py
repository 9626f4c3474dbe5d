"""The join desk: hands a member that presents a valid join token its broker identity
(a worker joining its manager's broker, or a cluster's manager joining its root's).

A joining member is an anonymous MQTT client whose client id is a random nonce; the
broker's ACL lets it publish only on its own join topic (``Topics.join(nonce)``) and read
only its answer (docs/broker-security.md). The desk has a link of its own, with the
parent's credentials, so the manager's message path is untouched.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from edgeplane.errors import Invalid, Unauthorized
from edgeplane.protocol import Topics
from edgeplane.protocol.joining import JoinAnswer, JoinRequest
from edgeplane.security.broker_auth import BrokerAuth
from edgeplane.transport import MqttLink

log = logging.getLogger(__name__)

#: answers kept by nonce: a member that reconnects before its answer came asks again and
#: must get the same credentials, not a second set that replaces the first
_REMEMBERED = 256


@dataclass
class JoinStats:
    joined: int = 0
    refused: int = 0


class JoinDesk:
    def __init__(
        self, auth: BrokerAuth, broker_url: str, client_id: str, ca: Path | None = None
    ) -> None:
        self.auth = auth
        self.topics: Topics = auth.topics
        self.stats = JoinStats()
        self._answers: OrderedDict[str, bytes] = OrderedDict()
        self.link = MqttLink(
            broker_url,
            client_id=client_id,
            subscriptions=[self.topics.join("+")],
            on_message=self._on_message,
            username=auth.manager.username,
            password=auth.manager.password,
            ca=ca,
        )

    async def start(self) -> None:
        await self.link.start()

    async def stop(self) -> None:
        await self.link.stop()

    async def _on_message(self, topic: str, payload: bytes) -> None:
        nonce = self.topics.join_nonce(topic)
        if nonce is None:
            return
        answer = self._answers.get(nonce)
        if answer is None:
            answer = self._answer(payload).model_dump_json(exclude_defaults=True).encode()
            self._answers[nonce] = answer
            while len(self._answers) > _REMEMBERED:
                self._answers.popitem(last=False)
        await self.link.publish(self.topics.join_answer(nonce), answer)

    def _answer(self, payload: bytes) -> JoinAnswer:
        try:
            request = JoinRequest.model_validate_json(payload)
            credentials, labels = self.auth.redeem(request.token, request.worker_id)
        except ValidationError as exc:
            return self._refuse(f"bad join request: {exc.errors()[0]['msg']}")
        except (Unauthorized, Invalid) as exc:
            return self._refuse(exc.detail)
        self.stats.joined += 1
        log.info(f"{self.auth.member} joined", extra={"member": credentials.username})
        return JoinAnswer(
            worker_id=credentials.username,
            username=credentials.username,
            password=credentials.password,
            mac_key=credentials.mac_key.hex(),
            labels=labels,
        )

    def _refuse(self, why: str) -> JoinAnswer:
        # The token itself is never logged.
        self.stats.refused += 1
        log.warning("join refused", extra={"error": why})
        self.auth.join_refused(why)
        return JoinAnswer(error=why)
