"""Buckets as folders of files: S3 (boto3), GCS (google-cloud-storage) and plain local folders.

The trainers call `upload_tree` after each complete checkpoint, so that a checkpoint survives
preemption and teardown; `launcher sync` reads the same bucket back (`launcher/sync.py`). A URL
names a folder: `s3://bucket/prefix`, `gs://bucket/prefix`, `file:///abs/path` or a plain path.
A local folder behaves exactly like a bucket, which is what tests and `--cloud local` use.

Standard library only at import time: the trainers import this module inside the images, and boto3
or google-cloud-storage are imported only by the store that needs them. Credentials come from the
environment and each library's usual chain; `AWS_ENDPOINT_URL` (or `AWS_ENDPOINT_URL_S3`) points
S3 at another server, and `STORAGE_EMULATOR_HOST` does the same for GCS.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlparse

from launcher.errors import LauncherError

MANIFEST = "manifest.json"  # the same name as launcher.manifest.MANIFEST, without importing it
CHUNK = 1 << 20


class StorageError(LauncherError):
    """A bucket that cannot be used (no credentials, no such bucket, unreachable); one line."""


def split_url(url: str) -> tuple[str, str, str]:
    """(scheme, bucket, prefix) of a URL; for local folders bucket is "" and prefix the path."""
    u = urlparse(str(url))
    if u.scheme in ("s3", "gs"):
        if not u.netloc:
            raise StorageError(f"{url}: no bucket name (expected {u.scheme}://BUCKET/PREFIX)")
        return u.scheme, u.netloc, u.path.strip("/")
    if u.scheme == "file":
        return "file", "", unquote(u.path)
    if u.scheme and len(u.scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise StorageError(f"{url}: unsupported storage URL (use s3://, gs://, file:// or a folder)")
    return "file", "", str(url)


def join(url: str, *parts: str) -> str:
    return "/".join([str(url).rstrip("/"), *(p.strip("/") for p in parts if p)])


def open_store(url: str) -> "Store":
    scheme, bucket, prefix = split_url(url)
    if scheme == "s3":
        return S3Store(url, bucket, prefix)
    if scheme == "gs":
        return GCSStore(url, bucket, prefix)
    return LocalStore(url, prefix)


class Store:
    """A folder in some storage. Paths given to the methods are relative to the folder, with "/"."""

    url: str

    def list(self) -> dict[str, int]:
        """Every file under the folder: relative path -> size in bytes."""
        raise NotImplementedError

    def read_chunks(self, rel: str, start: int = 0) -> Iterator[bytes]:
        """The file's bytes from offset `start` on; FileNotFoundError when it is not there."""
        raise NotImplementedError

    def read_bytes(self, rel: str) -> bytes:
        return b"".join(self.read_chunks(rel))

    def upload(self, path: Path, rel: str) -> None:
        raise NotImplementedError

    def delete(self, rel: str) -> None:
        """Remove one file; no error when it is already gone."""
        raise NotImplementedError


class LocalStore(Store):
    def __init__(self, url: str, path: str):
        self.url, self.root = str(url), Path(path).expanduser()

    def list(self) -> dict[str, int]:
        if not self.root.is_dir():
            return {}
        out = {}
        for p in self.root.rglob("*"):
            try:
                if p.is_file():
                    out[p.relative_to(self.root).as_posix()] = p.stat().st_size
            except FileNotFoundError:  # removed while we walked (a checkpoint rotated away)
                pass
        return out

    def read_chunks(self, rel: str, start: int = 0) -> Iterator[bytes]:
        with open(self.root / rel, "rb") as f:
            f.seek(start)
            while block := f.read(CHUNK):
                yield block

    def upload(self, path: Path, rel: str) -> None:
        dest = self.root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)  # a reader never sees a half-written file under the real name

    def delete(self, rel: str) -> None:
        (self.root / rel).unlink(missing_ok=True)


class _BucketStore(Store):
    """A bucket and a key prefix; the client is made on first use (its import is heavy, and its
    credentials are read then, not cached from an earlier call)."""

    def __init__(self, url: str, bucket: str, prefix: str):
        self.url, self.bucket_name, self.prefix = str(url), bucket, prefix
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _connect(self):
        raise NotImplementedError

    def _key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel


class S3Store(_BucketStore):
    def _connect(self):
        try:
            import boto3
        except ImportError:
            raise StorageError(f"{self.url}: S3 needs boto3 (pip install boto3)") from None
        # Recent boto3 reads AWS_ENDPOINT_URL itself; passing it keeps older releases (and
        # images pinned to them) pointed at the same server.
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        return boto3.session.Session().client("s3", endpoint_url=endpoint)

    def _error(self, e: Exception, rel: str = "") -> Exception:
        """Turn botocore's exceptions into one line the user can act on."""
        where = join(self.url, rel) if rel else self.url
        code = getattr(e, "response", {}).get("Error", {}).get("Code", "")
        name = type(e).__name__
        if code in ("NoSuchKey", "404", "NotFound"):
            return FileNotFoundError(where)
        if code == "NoSuchBucket":
            return StorageError(f"{where}: bucket {self.bucket_name} does not exist")
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StorageError(f"{where}: access denied ({code}); check the AWS credentials")
        if name in ("NoCredentialsError", "PartialCredentialsError"):
            return StorageError(f"{where}: no AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)")
        if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError"):
            return StorageError(f"{where}: cannot reach the S3 endpoint ({e})")
        return StorageError(f"{where}: {name}: {e}")

    def list(self) -> dict[str, int]:
        out = {}
        base = self.prefix + "/" if self.prefix else ""
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket_name, Prefix=base):
                for obj in page.get("Contents", []):
                    out[obj["Key"][len(base):]] = obj["Size"]
        except Exception as e:
            raise self._error(e) from None
        return out

    def read_chunks(self, rel: str, start: int = 0) -> Iterator[bytes]:
        kw = {"Range": f"bytes={start}-"} if start else {}
        try:
            body = self.client.get_object(Bucket=self.bucket_name, Key=self._key(rel), **kw)["Body"]
        except Exception as e:
            if start and getattr(e, "response", {}).get("Error", {}).get("Code") == "InvalidRange":
                return  # the partial copy already holds every byte
            raise self._error(e, rel) from None
        try:
            yield from body.iter_chunks(CHUNK)
        except Exception as e:  # the connection broke mid-file; the partial copy stays for a resume
            raise StorageError(f"{join(self.url, rel)}: download interrupted ({type(e).__name__}: {e})") from None
        finally:
            body.close()

    def upload(self, path: Path, rel: str) -> None:
        try:
            self.client.upload_file(str(path), self.bucket_name, self._key(rel))  # multipart when large
        except Exception as e:
            raise self._error(e, rel) from None

    def delete(self, rel: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket_name, Key=self._key(rel))
        except Exception as e:
            err = self._error(e, rel)
            if not isinstance(err, FileNotFoundError):
                raise err from None


class GCSStore(_BucketStore):
    def _connect(self):
        try:
            from google.cloud import storage
        except ImportError:
            raise StorageError(f"{self.url}: GCS needs google-cloud-storage (pip install google-cloud-storage)") from None
        try:
            client = storage.Client()
        except Exception:  # google.auth.exceptions.DefaultCredentialsError and friends
            raise StorageError(f"{self.url}: no Google Cloud credentials (run `gcloud auth application-default "
                               f"login` or set GOOGLE_APPLICATION_CREDENTIALS)") from None
        return client.bucket(self.bucket_name)

    @property
    def bucket(self):  # the google-cloud-storage Bucket object
        return self.client

    def _error(self, e: Exception, rel: str = "") -> Exception:
        where = join(self.url, rel) if rel else self.url
        code = getattr(e, "code", None)
        if code == 404:
            return FileNotFoundError(where) if rel else StorageError(f"{where}: bucket {self.bucket_name} does not exist")
        if code in (401, 403):
            return StorageError(f"{where}: access denied ({code}); check the Google Cloud credentials")
        return StorageError(f"{where}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")

    def list(self) -> dict[str, int]:
        base, bucket = (self.prefix + "/" if self.prefix else ""), self.bucket
        try:
            return {b.name[len(base):]: b.size for b in bucket.client.list_blobs(bucket, prefix=base)}
        except Exception as e:
            raise self._error(e) from None

    def read_chunks(self, rel: str, start: int = 0) -> Iterator[bytes]:
        blob = self.bucket.blob(self._key(rel))
        try:
            reader = blob.open("rb", chunk_size=CHUNK)
        except Exception as e:
            raise self._error(e, rel) from None
        with reader:
            try:
                reader.seek(start)
                while block := reader.read(CHUNK):
                    yield block
            except Exception as e:
                raise self._error(e, rel) from None

    def upload(self, path: Path, rel: str) -> None:
        blob = self.bucket.blob(self._key(rel))
        try:
            blob.upload_from_filename(str(path))  # resumable when large
        except Exception as e:
            raise self._error(e, rel) from None

    def delete(self, rel: str) -> None:
        blob = self.bucket.blob(self._key(rel))
        try:
            blob.delete()
        except Exception as e:
            err = self._error(e, rel)
            if not isinstance(err, FileNotFoundError):
                raise err from None


def upload_tree(local_dir: str | Path, url: str) -> list[str]:
    """Upload every file of a checkpoint folder to `url`, `manifest.json` last.

    A reader that finds the manifest in the bucket can trust that every file it lists is already
    there. If the folder was uploaded before (a checkpoint saved again after a resume), the old
    manifest goes first, so no reader pairs it with half-replaced files. Returns the uploaded paths.
    """
    local_dir = Path(local_dir)
    if not (local_dir / MANIFEST).is_file():
        raise StorageError(f"{local_dir}: no {MANIFEST}; only complete checkpoints are uploaded")
    store = open_store(url)
    files = sorted(p.relative_to(local_dir).as_posix() for p in local_dir.rglob("*")
                   if p.is_file() and p.name != MANIFEST and not p.name.endswith(".tmp"))
    store.delete(MANIFEST)
    for rel in files:
        store.upload(local_dir / rel, rel)
    store.upload(local_dir / MANIFEST, MANIFEST)
    return files + [MANIFEST]


def latest_checkpoint(url: str) -> str | None:
    """The URL of the newest `checkpoint-N` under `url` whose manifest is there, or None.

    A trainer relaunched on a fresh machine (a preempted spot job) resumes from it: upload_tree
    puts the manifest last, so a checkpoint with a manifest was uploaded whole.
    """
    steps = []
    for rel in open_store(url).list():
        parts = rel.split("/")
        if len(parts) == 2 and parts[1] == MANIFEST and parts[0].startswith("checkpoint-") and parts[0][11:].isdigit():
            steps.append(int(parts[0][11:]))
    return join(url, f"checkpoint-{max(steps)}") if steps else None


def download_tree(url: str, local_dir: str | Path) -> list[str]:
    """Download a complete checkpoint folder, each file checked against its manifest, manifest last.

    The reverse of upload_tree, for a trainer that resumes from the bucket. A file that does not
    match its manifest raises StorageError naming it, and the folder is left without a manifest
    (incomplete), so nothing resumes from it. Returns the downloaded paths.
    """
    import hashlib
    import json

    store, local_dir = open_store(url), Path(local_dir)
    try:
        raw = store.read_bytes(MANIFEST)
        files = json.loads(raw)["files"]
    except FileNotFoundError:
        raise StorageError(f"{join(url, MANIFEST)}: not there; {url} is not a complete checkpoint") from None
    except (ValueError, KeyError, TypeError):
        raise StorageError(f"{join(url, MANIFEST)}: not a valid manifest") from None
    (local_dir / MANIFEST).unlink(missing_ok=True)
    for rel, meta in files.items():
        parts = Path(rel).parts
        if Path(rel).is_absolute() or ".." in parts or not parts:
            raise StorageError(f"{join(url, MANIFEST)}: file {rel!r} is outside the checkpoint")
        dest = local_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        h = hashlib.sha256()
        try:
            with open(tmp, "wb") as f:
                for block in store.read_chunks(rel):
                    f.write(block)
                    h.update(block)
        except FileNotFoundError:
            raise StorageError(f"{join(url, rel)}: listed in its manifest but missing") from None
        if tmp.stat().st_size != meta["size"] or h.hexdigest() != meta["sha256"]:
            tmp.unlink()
            raise StorageError(f"{join(url, rel)}: does not match its manifest (corrupted)")
        os.replace(tmp, dest)
    tmp = local_dir / (MANIFEST + ".tmp")
    tmp.write_bytes(raw)
    os.replace(tmp, local_dir / MANIFEST)
    return list(files) + [MANIFEST]


def fetch_newer_checkpoint(url: str, ckpt_dir: str | Path) -> Path | None:
    """Bring the newest complete checkpoint under `url` (BUCKET/JOB/checkpoints) into `ckpt_dir`
    when that folder has none as new, verified file by file against its manifest; returns it.

    What a trainer calls once at start: on a fresh machine (a relaunched spot job, or a run folder
    deleted) the run resumes from the bucket instead of step 0. None when the local folder is as
    new or the bucket has no complete checkpoint. A download that fails verification raises
    StorageError and leaves a folder without a manifest, which no resume trusts.
    """
    ckpt_dir = Path(ckpt_dir)
    remote = latest_checkpoint(url)
    if remote is None:
        return None
    step = int(remote.rsplit("-", 1)[-1])
    local = [int(p.name[11:]) for p in ckpt_dir.glob("checkpoint-*")
             if p.name[11:].isdigit() and (p / MANIFEST).is_file()]
    if local and max(local) >= step:
        return None
    dest = ckpt_dir / f"checkpoint-{step}"
    download_tree(remote, dest)
    return dest


def resume_from_bucket(bucket: str | None, job_name: str, ckpt_dir: str | Path) -> Path | None:
    """`fetch_newer_checkpoint` from BUCKET/JOB/checkpoints (where the trainers upload), saying what
    it did; a bucket that cannot be read is a warning: training goes on from what is local."""
    import sys

    if not bucket:
        return None
    url = join(bucket, job_name, "checkpoints")
    try:
        got = fetch_newer_checkpoint(url, ckpt_dir)
    except StorageError as e:
        print(f"warning: outputs.bucket: no resume from {url} ({e}); starting from the local run folder",
              file=sys.stderr, flush=True)
        return None
    if got is not None:
        print(f"downloaded {got.name} from {url} (verified against its manifest)", flush=True)
    return got
