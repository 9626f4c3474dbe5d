"""Pure parts of broker security: the command MAC and the identity files."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeplane.errors import Invalid, NotFound, Unauthorized
from edgeplane.protocol import Topics, decode, encode
from edgeplane.protocol.messages import StartTasks
from edgeplane.protocol.signing import sign, verify
from edgeplane.security.broker_auth import (
    MANAGER_USER,
    PROXY_USER,
    ROOT_USER,
    BrokerAuth,
    mosquitto_hash,
)

KEY = b"k" * 32


VALUES = st.integers(-(2**63), 2**63 - 1) | st.text(max_size=20)


@given(st.dictionaries(st.text(max_size=8), VALUES, max_size=5))
def test_a_signed_message_verifies_and_still_decodes(body: dict[str, object]) -> None:
    message = encode("task.start", body)
    signed = sign(KEY, message)
    assert verify(KEY, signed)
    assert decode(signed).body == decode(message).body  # receivers without a key: unchanged


@given(st.integers(min_value=0), st.integers(min_value=1, max_value=255))
def test_any_changed_byte_or_another_key_fails(position: int, flip: int) -> None:
    signed = bytearray(sign(KEY, encode("task.start", StartTasks(tasks=[]))))
    assert not verify(b"x" * 32, bytes(signed))
    signed[position % len(signed)] ^= flip
    assert not verify(KEY, bytes(signed))


def test_unsigned_and_short_messages_fail() -> None:
    message = encode("task.start", StartTasks(tasks=[]))
    assert not verify(KEY, message)
    assert not verify(KEY, b"")
    assert not verify(KEY, b"}")


def test_password_hash_is_mosquittos_pbkdf2_format() -> None:
    salt = b"0123456789ab"
    _, kind, rounds, salt_b64, digest_b64 = mosquitto_hash("pw", salt).split("$")
    assert (kind, rounds, base64.b64decode(salt_b64)) == ("7", "101", salt)
    assert base64.b64decode(digest_b64) == hashlib.pbkdf2_hmac("sha512", b"pw", salt, 101)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def auth_in(path: Path, clock: Clock | None = None) -> tuple[BrokerAuth, list[int]]:
    reloads: list[int] = []
    auth = BrokerAuth(path, Topics("d", "c"), clock or Clock(), reload=lambda: reloads.append(1))
    return auth, reloads


def test_files_are_private_and_name_each_identity(tmp_path: Path) -> None:
    auth, reloads = auth_in(tmp_path / "b")
    auth.add_member("w1")
    assert reloads == [1]
    for name in ("passwd", "acl", "identities.json"):
        assert (tmp_path / "b" / name).stat().st_mode & 0o777 == 0o600
    users = [line.split(":")[0] for line in auth.password_text().splitlines()]
    assert users == [MANAGER_USER, PROXY_USER, "w1"]
    acl = auth.acl_text()
    assert "pattern read d/c/workers/%u/chunks" in acl
    assert "pattern write d/c/workers/%u/fetch" in acl
    assert (
        f"user {PROXY_USER}\ntopic read d/c/workers/+/fetch\ntopic write d/c/workers/+/chunks"
        in acl
    )
    assert "pattern read d/c/workers/%u/cmd" in acl
    assert "pattern write d/c/workers/%u/events" in acl
    assert "pattern write d/c/join/%c" in acl
    writes = [line for line in acl.splitlines() if line.startswith("pattern write")]
    assert not [line for line in writes if line.endswith(("/cmd", "/welcome", "/chunks"))]


def test_a_roots_files_name_the_root_and_each_cluster_with_its_own_leaves(
    tmp_path: Path,
) -> None:
    auth = BrokerAuth(tmp_path, Topics.for_root("d"), Clock(), reload=lambda: None)
    auth.add_member("a")
    users = [line.split(":")[0] for line in auth.password_text().splitlines()]
    assert users == [ROOT_USER, "a"]
    acl = auth.acl_text().splitlines()
    assert "pattern read d/clusters/%u/cmd" in acl
    assert "pattern write d/clusters/%u/aggregate" in acl
    assert "pattern write d/clusters/%u/metrics" in acl  # the cluster's usage, up
    assert "pattern write d/clusters/join/%c/ask" in acl
    assert "pattern read d/clusters/join/%c/welcome" in acl
    assert acl[-2:] == [f"user {ROOT_USER}", "topic readwrite #"]


def test_a_roots_token_for_one_cluster_is_refused_to_another(tmp_path: Path) -> None:
    auth = BrokerAuth(tmp_path, Topics.for_root("d"), Clock(), reload=lambda: None)
    token, secret = auth.create_token(ttl_s=60, labels={}, member_id="a")
    assert (token.cluster_id, token.worker_id) == ("a", None)
    with pytest.raises(Unauthorized, match="for cluster a"):
        auth.redeem(secret, "b")
    assert not auth.has_member("b") and auth.tokens()[0].clusters == []
    credentials, _ = auth.redeem(secret, "a")
    assert credentials.username == "a" and auth.tokens()[0].clusters == ["a"]
    with pytest.raises(Invalid, match="cluster id"):
        auth.add_member("no/slash")


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True), st.booleans())
def test_join_topics_give_back_their_nonce_and_no_member_topic_is_one(
    nonce: str, root: bool
) -> None:
    topics = Topics.for_root("d") if root else Topics("d", "c")
    assert topics.join_nonce(topics.join(nonce)) == nonce
    assert topics.join_nonce(topics.join_answer(nonce)) is None
    # no join topic is a member's leaf (an anonymous client must not speak for one)
    assert topics.member_of(topics.join(nonce)) is None
    assert topics.member_of(topics.join_answer(nonce)) is None


def test_state_survives_a_restart(tmp_path: Path) -> None:
    first, _ = auth_in(tmp_path)
    credentials = first.add_member("w1")
    token, secret = first.create_token(ttl_s=60, labels={"a": "b"}, member_id=None)
    again, _ = auth_in(tmp_path)
    assert again.manager == first.manager
    assert again.sign("w1", b"{}") == first.sign("w1", b"{}") != b"{}"
    assert [t.id for t in again.tokens()] == [token.id]
    assert credentials.mac_key == bytes.fromhex(
        __import__("orjson").loads((tmp_path / "identities.json").read_bytes())["workers"]["w1"][
            "mac_key"
        ]
    )
    assert secret not in (tmp_path / "identities.json").read_text()  # only its sha256


def test_redeem_checks_secret_expiry_and_ownership(tmp_path: Path) -> None:
    clock = Clock()
    auth, _ = auth_in(tmp_path, clock)
    _, secret = auth.create_token(ttl_s=60, labels={"site": "x"}, member_id=None)
    credentials, labels = auth.redeem(secret, "edge-1")
    assert credentials.username == "edge-1" and labels == {"site": "x"}
    with pytest.raises(Unauthorized):
        auth.redeem(secret + "x", "edge-5")
    with pytest.raises(Invalid):
        auth.redeem(secret, "bad/id")
    auth.add_member("taken")
    with pytest.raises(Unauthorized, match="joined already"):
        auth.redeem(secret, "taken")
    with pytest.raises(Unauthorized, match="joined already"):  # not even with its token
        auth.redeem(secret, "edge-1")
    auth.redeem(secret, "edge-2")  # a token may let several workers join until it expires
    clock.now += 60
    with pytest.raises(Unauthorized, match="expired"):
        auth.redeem(secret, "edge-3")
    assert [t.workers for t in auth.tokens()] == [["edge-1", "edge-2"]]


def test_deleting_a_token_revokes_its_workers(tmp_path: Path) -> None:
    auth, reloads = auth_in(tmp_path)
    token, secret = auth.create_token(ttl_s=60, labels={}, member_id="pinned")
    auth.redeem(secret, "ignored")
    assert auth.has_member("pinned") and auth.sign("pinned", b"{}") != b"{}"
    assert auth.delete_token(token.id) == ["pinned"]
    assert not auth.has_member("pinned") and auth.sign("pinned", b"{}") == b"{}"
    assert "pinned" not in auth.password_text()
    with pytest.raises(NotFound):
        auth.delete_token(token.id)
    assert len(reloads) == 2


def test_an_external_broker_is_not_managed_and_a_bare_one_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from edgeplane.config import Settings
    from edgeplane.roles.control import broker_auth

    with caplog.at_level("WARNING"):
        assert broker_auth(Settings(data_dir=tmp_path, broker="mqtt://127.0.0.1:1883")) is None
    assert "without credentials" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        given = Settings(data_dir=tmp_path, broker="mqtt://m:secret@127.0.0.1:1883")
        assert broker_auth(given) is None
    assert caplog.text == ""
    own = broker_auth(Settings(data_dir=tmp_path, broker=""))
    assert own is not None and own.password_file == tmp_path / "broker" / "passwd"


def test_a_join_tokens_owner_goes_to_its_workers_and_leaves_with_its_user(tmp_path: Path) -> None:
    auth, _ = auth_in(tmp_path)
    token, secret = auth.create_token(ttl_s=60, labels={}, member_id=None, owner="ann")
    assert token.owner == "ann"
    _, plain = auth.create_token(ttl_s=60, labels={}, member_id=None)
    auth.redeem(secret, "hers")
    auth.redeem(plain, "nobodys")
    assert (auth.owner_of("hers"), auth.owner_of("nobodys"), auth.owner_of("x")) == (
        "ann",
        None,
        None,
    )
    again, _ = auth_in(tmp_path)  # kept across restarts
    assert again.owner_of("hers") == "ann" and again.tokens()[0].owner == "ann"
    again.disown("ann")  # her user is gone: a new "ann" must not inherit her nodes
    assert again.owner_of("hers") is None and again.tokens()[0].owner is None
    assert auth_in(tmp_path)[0].owner_of("hers") is None


def test_identities_written_before_owners_existed_still_load(tmp_path: Path) -> None:
    auth, _ = auth_in(tmp_path)
    auth.add_member("w1")
    state = tmp_path / "identities.json"
    state.write_text(state.read_text().replace(',"owner":null', ""))
    assert "owner" not in state.read_text()
    assert auth_in(tmp_path)[0].owner_of("w1") is None


def test_a_training_task_may_write_its_update_topic_only_until_revoked(tmp_path: Path) -> None:
    auth, reloads = auth_in(tmp_path / "b")
    auth.add_member("w1")
    topic = Topics("d", "c").fl_update("e1", 3, "w1")
    made = auth.add_fl_clients({"t-1": topic, "t-2": Topics("d", "c").fl_update("e1", 3, "w2")})
    assert len(reloads) == 2  # one for the member, one for both tasks
    user = made["t-1"].username
    assert user == "fl/t-1" and made["t-1"].password
    acl = auth.acl_file.read_text().splitlines()
    # its own section: its topic, and the answer to it; the member patterns cannot reach
    # the manager's topics
    at = acl.index(f"user {user}")
    assert acl[at + 1] == f"topic write {topic}"
    assert acl[at + 2] == "topic read d/fl/e1/rounds/3/acks/w1"
    assert acl[at + 3].startswith("user ")
    assert all(not line.startswith("pattern") for line in acl[at:])
    assert f"{user}:$7$" in auth.password_file.read_text()
    # a restarted coordinator keeps those of its open rounds
    again = BrokerAuth(tmp_path / "b", Topics("d", "c"), Clock(), reload=lambda: None)
    assert again.fl_clients() == auth.fl_clients()
    auth.keep_fl_clients(["t-2"])
    assert set(auth.fl_clients()) == {"fl/t-2"}
    auth.remove_fl_clients(["t-2", "never-made"])
    assert auth.fl_clients() == {}
    assert "fl/" not in auth.acl_file.read_text() + auth.password_file.read_text()
    reloaded = len(reloads)
    auth.remove_fl_clients(["t-2"])  # nothing to revoke: no reload
    assert len(reloads) == reloaded
    assert auth.has_member("w1")
