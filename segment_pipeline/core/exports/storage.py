"""Where exports are published: a local folder (default) or an S3 bucket + prefix.

Both storages expose the same small API over relative keys (see :mod:`.keys`):

* ``writer(key)`` yields a local file path to write; when the block ends without error the file
  is published *atomically* (local: temp file in the target folder then ``os.replace``; S3: one
  ``upload_file`` call, i.e. a single PUT or a completed multipart upload, so the object never
  exists half-written). On error nothing is published.
* ``batch(prefix)`` publishes several files under one prefix. Locally the files are written into a
  hidden temp folder next to the target folder, which is renamed into place at the end, so the set
  appears all at once. On S3 (no multi-object atomicity) each file is uploaded as it is finished,
  and uploaded files are deleted again if the batch fails; callers publish a manifest last.
* ``create_exclusive(key, data)`` creates a small object only if it does not exist yet (local:
  hard link of a fully written temp file; S3: ``PutObject`` with ``If-None-Match: *``). Locks are
  built on it.

Keys are checked with :func:`.keys.check_key` at every entry point, and local paths are also
checked to resolve inside the root, so no key can escape the export root or the S3 prefix.

Local files are owner-only (``0600``, folders we create ``0700``, whatever the umask; see
:mod:`segment_pipeline.core.atomic`): exports hold personal data. A web server publishing the
export folder must run as the same user (or be granted access by an administrator, e.g. with a
group and ``chmod g+rX``). S3 staging files live in a private temporary folder (``0700``).
Leftovers of killed writes are removed by the next write of the same key and by :meth:`sweep`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from segment_pipeline.core.atomic import (
    DIR_MODE,
    FILE_MODE,
    TMP_PREFIX,
    atomic_path,
    atomic_write_bytes,
    private_mkdir,
    sweep_temporaries,
    sweep_tree,
    temp_sibling,
)
from segment_pipeline.core.exports.keys import UnsafeKeyError, check_key, check_part


class Batch(Protocol):
    def writer(self, name: str) -> contextlib.AbstractContextManager[Path]: ...


class ExportStorage:
    """Common interface; see the module docstring."""

    kind: str = ""

    def location(self, key: str) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def url(self, key: str) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def writer(self, key: str) -> contextlib.AbstractContextManager[Path]:  # pragma: no cover
        raise NotImplementedError

    def batch(self, prefix: str) -> contextlib.AbstractContextManager[Batch]:  # pragma: no cover
        raise NotImplementedError

    def put_bytes(self, key: str, data: bytes) -> None:  # pragma: no cover
        raise NotImplementedError

    def get_bytes(self, key: str) -> bytes | None:  # pragma: no cover
        raise NotImplementedError

    def open_read(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]:  # pragma: no cover
        raise NotImplementedError

    def size(self, key: str) -> int:  # pragma: no cover
        raise NotImplementedError

    def list_keys(self, prefix: str) -> list[str]:  # pragma: no cover
        raise NotImplementedError

    def delete(self, key: str) -> None:  # pragma: no cover
        raise NotImplementedError

    def create_exclusive(self, key: str, data: bytes) -> bool:  # pragma: no cover
        raise NotImplementedError

    def last_modified(self, key: str) -> dt.datetime | None:  # pragma: no cover
        raise NotImplementedError

    def exists(self, key: str) -> bool:  # pragma: no cover
        raise NotImplementedError

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list_keys(prefix)
        for key in keys:
            self.delete(key)
        return len(keys)


# -- local folder ------------------------------------------------------------------------------


class LocalExportStorage(ExportStorage):
    """Exports under a local folder (default ``data/exports``). ``public_url`` (optional) is the
    base URL under which that folder is served; without it, URLs are ``file://`` URIs."""

    kind = "file"

    def __init__(self, root: str | os.PathLike[str], public_url: str | None = None):
        self.root = Path(root).expanduser().absolute()
        self.public_url = public_url.rstrip("/") + "/" if public_url else None

    def __repr__(self) -> str:
        return f"LocalExportStorage({str(self.root)!r})"

    def __str__(self) -> str:  # the location, as a person reads it (logs, CLI output)
        return str(self.root)

    def path(self, key: str) -> Path:
        check_key(key)
        path = self.root.joinpath(*key.split("/"))
        resolved_root = self.root.resolve()
        if not path.resolve().is_relative_to(resolved_root) or path.resolve() == resolved_root:
            raise UnsafeKeyError(f"key {key!r} resolves outside the export root {self.root}")
        return path

    def location(self, key: str) -> str:
        return str(self.path(key))

    def url(self, key: str) -> str:
        if self.public_url:
            return self.public_url + check_key(key)
        return self.path(key).as_uri()

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[Path]:
        with atomic_path(self.path(key)) as tmp:
            yield tmp

    @contextlib.contextmanager
    def batch(self, prefix: str) -> Iterator[Batch]:
        with atomic_path(self.path(prefix), directory=True) as tmp_dir:
            yield _LocalBatch(tmp_dir)

    def put_bytes(self, key: str, data: bytes) -> None:
        atomic_write_bytes(self.path(key), data)

    def get_bytes(self, key: str) -> bytes | None:
        path = self.path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None

    @contextlib.contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        with open(self.path(key), "rb") as fh:
            yield fh

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list_keys(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        if not base.is_dir():
            return []
        keys = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(TMP_PREFIX))
            rel = Path(dirpath).relative_to(self.root).as_posix()
            keys.extend(f"{rel}/{f}" for f in sorted(filenames) if not f.startswith(TMP_PREFIX))
        return keys

    def sweep(self, prefix: str | None = None) -> list[Path]:
        """Remove leftovers of killed writes under ``prefix`` (default: the whole export root)
        whose writer is gone (:func:`segment_pipeline.core.atomic.sweep_tree`)."""
        return sweep_tree(self.path(prefix) if prefix else self.root)

    def list_temporaries(self, prefix: str) -> list[Path]:
        """Leftovers of crashed writes under ``prefix`` (never visible through ``list_keys``)."""
        base = self.path(prefix)
        if not base.is_dir():
            return []
        return sorted(p for p in base.rglob(f"{TMP_PREFIX}*"))

    def delete(self, key: str) -> None:
        path = self.path(key)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        path = self.path(prefix)
        if not path.exists():
            return 0
        count = len(self.list_keys(prefix))
        shutil.rmtree(path, ignore_errors=True)
        return count

    def create_exclusive(self, key: str, data: bytes) -> bool:
        target = self.path(key)
        private_mkdir(target.parent)
        tmp = temp_sibling(target)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            with os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), FILE_MODE)
                out.write(data)
            os.link(tmp, target)  # fails if target exists; target appears fully written
            created = True
        except FileExistsError:
            created = False
        finally:
            tmp.unlink(missing_ok=True)
        sweep_temporaries(target.parent, target.name)
        return created

    def last_modified(self, key: str) -> dt.datetime | None:
        try:
            return dt.datetime.fromtimestamp(self.path(key).stat().st_mtime, tz=dt.UTC)
        except FileNotFoundError:
            return None


class _LocalBatch:
    def __init__(self, folder: Path):
        self.folder = folder

    @contextlib.contextmanager
    def writer(self, name: str) -> Iterator[Path]:
        # the batch folder is itself temporary and fresh: nothing of a killed writer to sweep here
        with atomic_path(self.folder / check_part(name), sweep=False) as tmp:
            yield tmp


# -- S3 -----------------------------------------------------------------------------------------


class S3ExportStorage(ExportStorage):
    """Exports under ``s3://bucket/prefix/``. ``client`` is a boto3 S3 client (from dagster-aws
    ``S3Resource.get_client()`` in Dagster); files are staged in ``staging_dir`` (default: the
    system temp folder) and uploaded whole."""

    kind = "s3"

    def __init__(self, client: Any, bucket: str, prefix: str = "exports", staging_dir: str | None = None):
        if not bucket:
            raise ValueError("S3 export storage needs a bucket name")
        self.client = client
        self.bucket = bucket
        prefix = (prefix or "").strip("/")
        if prefix:
            check_key(prefix)
        self.prefix = prefix
        self.staging_dir = staging_dir

    def __repr__(self) -> str:
        return f"S3ExportStorage(s3://{self.bucket}/{self.prefix})"

    def __str__(self) -> str:  # the location, as a person reads it (logs, CLI output)
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, object_key: str) -> str:
        return object_key[len(self.prefix) + 1 :] if self.prefix else object_key

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.object_key(key)}"

    def url(self, key: str) -> str:
        return self.location(key)

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[Path]:
        object_key = self.object_key(key)
        if self.staging_dir:
            private_mkdir(self.staging_dir)
        # a private folder (mkdtemp: 0700) holds the file, which its writer creates with any mode
        folder = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, suffix=".part", dir=self.staging_dir))
        os.chmod(folder, DIR_MODE)
        tmp = folder / key.rsplit("/", 1)[-1]
        try:
            yield tmp
            if not tmp.exists():
                raise FileNotFoundError(f"nothing was written for {self.location(key)}")
            # upload_file: one PUT, or a multipart upload that only becomes visible when completed
            self.client.upload_file(str(tmp), self.bucket, object_key)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @contextlib.contextmanager
    def batch(self, prefix: str) -> Iterator[Batch]:
        check_key(prefix)
        batch = _S3Batch(self, prefix)
        try:
            yield batch
        except BaseException:
            for key in batch.published:
                with contextlib.suppress(Exception):
                    self.delete(key)
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    @contextlib.contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        body = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))["Body"]
        try:
            yield body
        finally:
            body.close()

    def size(self, key: str) -> int:
        return int(self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))["ContentLength"])

    def list_keys(self, prefix: str) -> list[str]:
        object_prefix = self.object_key(prefix) + "/"
        keys = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=object_prefix):
            keys.extend(self._relative(obj["Key"]) for obj in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))

    def create_exclusive(self, key: str, data: bytes) -> bool:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data, IfNoneMatch="*")
            return True
        except self.client.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                return False
            raise

    def exists(self, key: str) -> bool:
        return self.last_modified(key) is not None

    def last_modified(self, key: str) -> dt.datetime | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except self.client.exceptions.ClientError:
            return None
        return head["LastModified"]


class _S3Batch:
    def __init__(self, storage: S3ExportStorage, prefix: str):
        self.storage = storage
        self.prefix = prefix
        self.published: list[str] = []

    @contextlib.contextmanager
    def writer(self, name: str) -> Iterator[Path]:
        key = f"{self.prefix}/{check_part(name)}"
        with self.storage.writer(key) as tmp:
            yield tmp
        self.published.append(key)
