"""S3 against a real MinIO: put/get/list/multipart with boto3, and the same objects through s3fs.

Where it sits: uses the `s3_server` fixture (tests/cluster/fixtures.py), the S3 that `make cluster-up`
exports in .cache/cluster/s3.env.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys

import pytest

pytestmark = pytest.mark.cluster


@pytest.fixture
def prefix(s3_server):
    p = f"it-{secrets.token_hex(4)}/"
    yield p
    s3 = s3_server.client()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_server.bucket, Prefix=p):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=s3_server.bucket, Key=obj["Key"])


def test_put_get_list_delete(s3_server, prefix):
    s3 = s3_server.client()
    for i in range(3):
        s3.put_object(Bucket=s3_server.bucket, Key=f"{prefix}dir/obj{i}.txt", Body=f"hello {i}".encode())
    assert s3.get_object(Bucket=s3_server.bucket, Key=f"{prefix}dir/obj1.txt")["Body"].read() == b"hello 1"
    listed = s3.list_objects_v2(Bucket=s3_server.bucket, Prefix=f"{prefix}dir/")
    assert [o["Key"] for o in listed["Contents"]] == [f"{prefix}dir/obj{i}.txt" for i in range(3)]
    s3.delete_object(Bucket=s3_server.bucket, Key=f"{prefix}dir/obj0.txt")
    assert s3.list_objects_v2(Bucket=s3_server.bucket, Prefix=f"{prefix}dir/")["KeyCount"] == 2
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket=s3_server.bucket, Key=f"{prefix}dir/obj0.txt")


def test_wrong_secret_is_refused(s3_server):
    import boto3
    from botocore.exceptions import ClientError

    bad = boto3.client("s3", endpoint_url=s3_server.endpoint, aws_access_key_id=s3_server.access_key,
                       aws_secret_access_key="not-the-secret", region_name=s3_server.region)
    with pytest.raises(ClientError) as e:
        bad.list_objects_v2(Bucket=s3_server.bucket)
    assert e.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_multipart_upload(s3_server, prefix):
    s3 = s3_server.client()
    key = f"{prefix}big.bin"
    parts_data = [os.urandom(5 * 1024 * 1024), os.urandom(5 * 1024 * 1024), os.urandom(123)]
    up = s3.create_multipart_upload(Bucket=s3_server.bucket, Key=key)
    parts = []
    for n, data in enumerate(parts_data, start=1):
        r = s3.upload_part(Bucket=s3_server.bucket, Key=key, UploadId=up["UploadId"], PartNumber=n, Body=data)
        parts.append({"PartNumber": n, "ETag": r["ETag"]})
    listed = s3.list_parts(Bucket=s3_server.bucket, Key=key, UploadId=up["UploadId"])
    assert [p["PartNumber"] for p in listed["Parts"]] == [1, 2, 3]
    done = s3.complete_multipart_upload(Bucket=s3_server.bucket, Key=key, UploadId=up["UploadId"],
                                        MultipartUpload={"Parts": parts})
    assert done["ETag"].strip('"').endswith("-3")  # a real multipart object
    whole = b"".join(parts_data)
    got = s3.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read()
    assert len(got) == len(whole) and hashlib.sha256(got).digest() == hashlib.sha256(whole).digest()
    # ranged read within the second part
    r = s3.get_object(Bucket=s3_server.bucket, Key=key, Range="bytes=5242880-5242889")["Body"].read()
    assert r == whole[5242880:5242890]


def test_s3fs_reads_and_writes(s3_server, prefix):
    fs = s3_server.filesystem()
    root = f"{s3_server.bucket}/{prefix}fs"
    with fs.open(f"{root}/a.jsonl", "wb") as f:
        f.write(b'{"x": 1}\n' * 1000)
    fs.pipe(f"{root}/sub/b.txt", b"bee")
    assert sorted(fs.find(root)) == [f"{root}/a.jsonl", f"{root}/sub/b.txt"]
    assert fs.cat(f"{root}/sub/b.txt") == b"bee"
    assert fs.size(f"{root}/a.jsonl") == 9000
    # written by s3fs, read by boto3: the same store
    body = s3_server.client().get_object(Bucket=s3_server.bucket, Key=f"{prefix}fs/a.jsonl")["Body"].read()
    assert body.count(b"\n") == 1000
    fs.rm(root, recursive=True)
    assert not fs.exists(f"{root}/a.jsonl")


def test_env_vars_alone_reach_the_server(s3_server, prefix):
    """A subprocess with only the s3.env variables (what pods and `make cluster-up` users get) works."""
    code = ("import boto3, os; s3 = boto3.client('s3'); b = os.environ['CAI_S3_BUCKET'];"
            f"s3.put_object(Bucket=b, Key='{prefix}env.txt', Body=b'via env');"
            f"print(s3.get_object(Bucket=b, Key='{prefix}env.txt')['Body'].read().decode())")
    env = {k: v for k, v in s3_server.env.items() if not k.startswith("AWS_") or k in s3_server.vars}
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                       check=False)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "via env"
