"""Writes a one-layer OCI image archive from local files (what `ctr images import` takes).

Where it sits: tests/cluster/build.sh makes the test node's two small images with it -- the pause image
(containerd's sandbox image, our own static program from tests/cluster/pause) and a busybox image (Debian's
static busybox) for node tests -- so neither needs a registry, a daemon or an image builder. The project's
own images come from `make images` instead. Standard library only (it runs before the virtualenv exists).

    python3 tests/cluster/oci_image.py --ref cai.local/pause:1 --out pause.tar \
        --file /pause=/path/to/pause:0755 --entrypoint /pause --user 65535:65535

The archive is byte-for-byte reproducible (fixed times and owners), so equal inputs give an equal digest.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
from pathlib import Path

OCI = "application/vnd.oci.image"


def _blob(tar: tarfile.TarFile, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _add(tar, f"blobs/sha256/{digest[7:]}", data)
    return {"digest": digest, "size": len(data)}


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def layer(files: dict[str, tuple[Path, int]], links: dict[str, str], dirs: dict[str, int]) -> bytes:
    """An uncompressed layer tar: directories (path -> mode), files (path -> (source, mode)), symlinks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, mode in sorted(dirs.items()):
            info = tarfile.TarInfo(path.strip("/"))
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, 0
            tar.addfile(info)
        for path, (src, mode) in sorted(files.items()):
            _add(tar, path.strip("/"), Path(src).read_bytes(), mode)
        for path, target in sorted(links.items()):
            info = tarfile.TarInfo(path.strip("/"))
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, 0
            tar.addfile(info)
    return buf.getvalue()


def write_archive(out: Path, ref: str, layer_tar: bytes, config: dict) -> str:
    """The OCI image layout as one tar; the image is named `ref` for containerd. Returns the manifest digest."""
    image_config = {
        "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
    }
    tmp = out.with_name(f".{out.name}.tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        cfg = _blob(tar, json.dumps(image_config, sort_keys=True).encode())
        lay = _blob(tar, layer_tar)
        manifest = _blob(tar, json.dumps({
            "schemaVersion": 2, "mediaType": f"{OCI}.manifest.v1+json",
            "config": {"mediaType": f"{OCI}.config.v1+json", **cfg},
            "layers": [{"mediaType": f"{OCI}.layer.v1.tar", **lay}],
        }, sort_keys=True).encode())
        index = {"schemaVersion": 2, "mediaType": f"{OCI}.index.v1+json", "manifests": [{
            "mediaType": f"{OCI}.manifest.v1+json", **manifest,
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": ref,
                            "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1]}}]}
        _add(tar, "index.json", json.dumps(index, sort_keys=True).encode())
    tmp.replace(out)
    return manifest["digest"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ref", required=True, help="image name, e.g. cai.local/pause:1")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--file", action="append", default=[], help="PATH_IN_IMAGE=SOURCE[:MODE] (octal mode)")
    ap.add_argument("--link", action="append", default=[], help="PATH_IN_IMAGE=TARGET (symlink)")
    ap.add_argument("--dir", action="append", default=[], help="PATH_IN_IMAGE[:MODE] (an empty directory)")
    ap.add_argument("--entrypoint", nargs="+", default=[])
    ap.add_argument("--user", default="")
    args = ap.parse_args(argv)

    files = {}
    for spec in args.file:
        path, _, src = spec.partition("=")
        src, _, mode = src.partition(":")
        files[path] = (Path(src), int(mode or "644", 8))
    links = dict(spec.split("=", 1) for spec in args.link)
    dirs = {d.partition(":")[0]: int(d.partition(":")[2] or "755", 8) for d in args.dir}
    config = {"Entrypoint": args.entrypoint, "Env": ["PATH=/bin"], "WorkingDir": "/"}
    if args.user:
        config["User"] = args.user
    args.out.parent.mkdir(parents=True, exist_ok=True)
    print(write_archive(args.out, args.ref, layer(files, links, dirs), config))


if __name__ == "__main__":
    main()
