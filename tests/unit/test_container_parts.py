"""The container runtime's pure parts: image names, layer application, ``config.json``."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from edgeplane.errors import TaskFailure
from edgeplane.imageref import split_ref
from edgeplane.model import Limits
from edgeplane.runtimes.bundle import container_id, process_env, runtime_config
from edgeplane.runtimes.busybox import Entry, tar_layer, write_image
from edgeplane.runtimes.cgroups import io_bytes
from edgeplane.runtimes.images import Image, ImageStore
from edgeplane.runtimes.layers import apply_layer, entry_path

IMAGE = Image(ref="img", layout=Path("/nowhere"), digest="sha256:" + "0" * 64, layers=())


# --- names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("busybox", ("busybox", "latest")),
        ("busybox:1.36", ("busybox", "1.36")),
        ("my_app.v2-x:rc_1", ("my_app.v2-x", "rc_1")),
        ("busybox:", ("busybox", "latest")),
        ("..", None),
        ("a..b", None),
        ("../busybox", None),
        ("a/b", None),
        ("/etc", None),
        (".hidden", None),
        ("", None),
        ("busybox:../x", None),
        ("busybox:a/b", None),
        ("x" * 129, None),
    ],
)
def test_split_ref(text: str, parsed: tuple[str, str] | None) -> None:
    assert split_ref(text) == parsed


def test_container_ids_fit_runcs_charset() -> None:
    assert container_id("abc-123", 2, "ff00aa") == "ep-abc-123-2-ff00aa"
    assert container_id("a/b c:ü", 1, "000000") == "ep-a_b_c__-1-000000"
    assert len(container_id("x" * 500, 1, "000000")) < 80


# --- layers -------------------------------------------------------------------------------


def apply(root: Path, *entries: Entry | tarfile.TarInfo) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                data = None if entry.data is None else io.BytesIO(entry.data)
                tar.addfile(entry.info(), data)
    buffer.seek(0)
    apply_layer(buffer, root)


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_entries_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    apply(
        tmp_path,
        Entry("./etc"),
        Entry("./etc/gone", b"1"),
        Entry("etc/kept", b"2"),
        Entry("data"),
        Entry("data/old", b"3"),
        Entry("data/sub"),
        Entry("data/sub/deep", b"4"),
        Entry("bin"),
        Entry("bin/sh", link="busybox"),
    )
    apply(
        tmp_path,
        Entry("data/new", b"5"),  # before the opaque marker, same layer: kept
        Entry("data/.wh..wh..opq", b""),
        Entry("etc/.wh.gone", b""),
        Entry("etc/.wh.never-there", b""),
        Entry("fresh/.wh..wh..opq", b""),  # a new directory, opaque: nothing to hide
        Entry("fresh"),
    )
    assert tree(tmp_path) == ["bin", "bin/sh", "data", "data/new", "etc", "etc/kept", "fresh"]
    assert os.readlink(tmp_path / "bin" / "sh") == "busybox"
    assert (tmp_path / "data" / "new").read_bytes() == b"5"


def test_a_file_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("host file")
    root = tmp_path / "root"
    root.mkdir()
    apply(root, Entry("passwd", link=str(outside)))
    apply(root, Entry("passwd", b"image file"))
    assert outside.read_text() == "host file"
    assert not (root / "passwd").is_symlink()
    assert (root / "passwd").read_bytes() == b"image file"


def test_paths_escaping_the_root_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(TaskFailure, match="escapes the root"):
        apply(root, Entry("../evil", b"x"))
    apply(root, Entry("etc", link=str(tmp_path)))  # an absolute symlink is fine as such…
    with pytest.raises(TaskFailure, match="resolves outside"):
        apply(root, Entry("etc/evil", b"x"))  # …but nothing is written through it
    assert not (tmp_path / "evil").exists()
    hard = tarfile.TarInfo("hard")
    hard.type, hard.linkname = tarfile.LNKTYPE, "../../etc/shadow"
    with pytest.raises(TaskFailure, match="escapes the root"):
        apply(root, hard)


def test_device_nodes_are_skipped_and_hardlinks_stay_inside(tmp_path: Path) -> None:
    device = tarfile.TarInfo("dev/sda")
    device.type, device.devmajor, device.devminor = tarfile.BLKTYPE, 8, 0
    hard = tarfile.TarInfo("bin/again")
    hard.type, hard.linkname = tarfile.LNKTYPE, "/bin/busybox"
    apply(tmp_path, Entry("bin"), Entry("bin/busybox", b"elf", mode=0o755), device, hard)
    assert not (tmp_path / "dev" / "sda").exists()
    assert (tmp_path / "bin" / "again").read_bytes() == b"elf"
    assert (tmp_path / "bin" / "again").stat().st_ino == (tmp_path / "bin/busybox").stat().st_ino


def test_entry_path_normalises() -> None:
    assert str(entry_path("./a//b/")) == "a/b"
    assert str(entry_path("/abs/x")) == "abs/x"
    assert entry_path("./").parts == ()


# --- image layouts ------------------------------------------------------------------------


def test_resolve_follows_index_manifest_config(tmp_path: Path) -> None:
    layer = tar_layer([Entry("hello", b"hi")])
    config = {"Env": ["A=1"], "Entrypoint": ["/bin/sh"], "Cmd": ["-c", "x"], "WorkingDir": "/w"}
    digest = write_image(tmp_path / "app", [layer], config, tag="v1")
    image = ImageStore(tmp_path, tmp_path / "cache").resolve("app:v1")
    assert (image.digest, image.env, image.workdir) == (digest, ("A=1",), "/w")
    assert (image.entrypoint, image.cmd) == (("/bin/sh",), ("-c", "x"))
    assert [media for _, media in image.layers] == ["application/vnd.oci.image.layer.v1.tar+gzip"]


def test_resolve_errors_name_the_image(tmp_path: Path) -> None:
    store = ImageStore(tmp_path, tmp_path / "cache")
    write_image(tmp_path / "app", [tar_layer([])], {})
    (tmp_path / "not-an-image").mkdir()
    with pytest.raises(TaskFailure, match="image 'not-an-image': no such image"):
        store.resolve("not-an-image")
    with pytest.raises(TaskFailure, match="image 'app:v2': no manifest tagged 'v2'"):
        store.resolve("app:v2")
    for blob in (tmp_path / "app" / "blobs" / "sha256").iterdir():
        blob.unlink()
    with pytest.raises(TaskFailure, match=r"image 'app': blob sha256:[0-9a-f]+ is missing"):
        store.resolve("app")
    assert store.names() == ["app"]


# --- config.json --------------------------------------------------------------------------


def test_runtime_config_from_image_and_limits() -> None:
    image = Image(
        ref="app",
        layout=Path("/x"),
        digest=IMAGE.digest,
        layers=(),
        env=("PATH=/bin", "A=image"),
        entrypoint=("/entry",),
        cmd=("arg",),
        workdir="/work",
        user="1000:100",
    )
    limits = Limits(memory_mb=64, cpu_shares=512, pids=32)
    config = runtime_config(
        cid="ep-t-1-x",
        rootfs=Path("/r"),
        image=image,
        command=None,
        env={"A": "task"},
        limits=limits,
    )
    process = config["process"]
    assert process["args"] == ["/entry", "arg"]
    assert process["env"] == ["PATH=/bin", "A=task"]
    assert (process["cwd"], process["user"]) == ("/work", {"uid": 1000, "gid": 100})
    assert (process["terminal"], process["noNewPrivileges"]) == (False, True)
    assert config["root"] == {"path": "/r", "readonly": True}
    resources = config["linux"]["resources"]
    assert resources["memory"] == {"limit": 64 * 2**20}
    assert (resources["cpu"], resources["pids"]) == ({"shares": 512}, {"limit": 32})
    assert {n["type"] for n in config["linux"]["namespaces"]} == {
        "pid",
        "network",
        "ipc",
        "uts",
        "mount",
    }
    tmp = next(m for m in config["mounts"] if m["destination"] == "/tmp")
    assert tmp["type"] == "tmpfs"
    assert config["linux"]["cgroupsPath"] == "/edgeplane/ep-t-1-x"


def test_runtime_config_defaults_and_refusals() -> None:
    config = runtime_config(
        cid="c", rootfs=Path("/r"), image=IMAGE, command=["true"], env={}, limits=Limits()
    )
    assert config["process"]["args"] == ["true"]
    assert config["process"]["user"] == {"uid": 0, "gid": 0}
    assert config["process"]["cwd"] == "/"
    assert set(config["linux"]["resources"]) == {"devices"}
    assert process_env(IMAGE, {})[0].startswith("PATH=/usr/local/sbin")
    with pytest.raises(TaskFailure, match="no Cmd or Entrypoint") as info:
        runtime_config(
            cid="c", rootfs=Path("/r"), image=IMAGE, command=None, env={}, limits=Limits()
        )
    assert info.value.field == "command"
    named = Image(ref="app", layout=Path("/x"), digest=IMAGE.digest, layers=(), user="nginx")
    with pytest.raises(TaskFailure, match="only numeric"):
        runtime_config(
            cid="c", rootfs=Path("/r"), image=named, command=["x"], env={}, limits=Limits()
        )


def test_accounted_disks_get_a_rule_that_limits_nothing() -> None:
    """cgroup v1 counts a disk's io only once blk-throttle has a rule for it (cgroups.py):
    ``MAJ:MIN 0`` is "no limit"."""
    config = runtime_config(
        cid="c",
        rootfs=Path("/r"),
        image=IMAGE,
        command=["true"],
        env={},
        limits=Limits(),
        accounted=[(254, 0), (7, 3)],
    )
    assert config["linux"]["resources"]["blockIO"] == {
        "throttleReadBpsDevice": [
            {"major": 254, "minor": 0, "rate": 0},
            {"major": 7, "minor": 3, "rate": 0},
        ]
    }


def test_io_bytes_from_runc_stats() -> None:
    """runc's ``events --stats`` as it prints it on cgroup v1 (a zero minor and a zero
    value are left out) and on v2 (lower-case ops are taken too)."""
    v1 = {
        "blkio": {
            "ioServiceBytesRecursive": [
                {"major": 254, "op": "Read", "value": 20971520},
                {"major": 254, "op": "Write", "value": 4096},
                {"major": 254, "op": "Sync", "value": 20975616},
                {"major": 254, "op": "Async"},
                {"major": 7, "minor": 1, "op": "Read", "value": 10},
                {"major": 254, "op": "Total", "value": 20975616},
            ]
        }
    }
    assert io_bytes(v1) == (20971530.0, 4096.0)
    assert io_bytes({"blkio": {"ioServiceBytesRecursive": [{"op": "write", "value": 5}]}}) == (
        0.0,
        5.0,
    )
    assert io_bytes({"blkio": {}}) == (0.0, 0.0)  # counted, nothing yet
    assert io_bytes({"cpu": {}}) is None  # no io part at all
