"""`launcher build`: build the job's Docker image, tag it by content, push it, record its digest.

The image a cloud job runs is a function of a few files: the Dockerfile, its pins and our code.
We hash exactly those files (plus the build arguments) into the tag, and send exactly those files
as the build context, so the tag names what is inside. A tag that already exists locally or in the
registry is not built again. After a push the registry's digest is recorded in
$LAUNCHER_HOME/images.json, and `recorded_image(spec)` hands `submit` that `image@sha256:...` so
a cloud machine runs exactly the image that was built, never a tag that moved.

Secrets never enter an image: the build gets no environment from this process, only the build
arguments below (base image, wheelhouse), which are checked against the job's secret values.

The Docker SDK is imported lazily: it lives in the `cloud` extra.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import io
import json
import os
import re
import tarfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from launcher.errors import LauncherError
from launcher.spec import JobSpec

REPO_ROOT = Path(__file__).resolve().parent.parent

# What goes into each image: these files and folders of the repository, nothing else.
IMAGE_FILES = {
    "gpu": ["images/gpu/Dockerfile", "images/gpu/requirements.txt", "images/gpu/models.txt", "images/python-env.sh",
            "pyproject.toml", "README.md", "launcher", "dataprep", "trainers"],
    "tpu": ["images/tpu/Dockerfile", "images/tpu/requirements.txt", "images/gpu/models.txt", "images/python-env.sh",
            "pyproject.toml", "README.md", "launcher", "dataprep", "trainers"],
}
SKIP = {"__pycache__", ".pytest_cache", ".mypy_cache"}
ECR_HOST = re.compile(r"^(\d+)\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com$")
GAR_HOST = re.compile(r"^[a-z0-9-]+-docker\.pkg\.dev$")


class BuildError(LauncherError):
    """A build or push problem the user can act on; one line."""


@dataclass
class BuiltImage:
    repository: str              # e.g. ghcr.io/me/llm-launcher, or llm-launcher when local only
    tag: str                     # content hash (or image.tag)
    image_id: str | None = None  # local image id (sha256:...)
    digest: str | None = None    # registry manifest digest after a push (sha256:...)
    built: bool = False          # False: an existing image was reused
    pushed: bool = False

    @property
    def ref(self) -> str:
        """What `submit` should run: pinned by digest when pushed, else repository:tag."""
        return f"{self.repository}@{self.digest}" if self.digest else f"{self.repository}:{self.tag}"

    @property
    def tagged(self) -> str:
        return f"{self.repository}:{self.tag}"


# -- what goes in -------------------------------------------------------------------------------

def image_kind(spec: JobSpec) -> str:
    return "tpu" if spec.resources.is_tpu else "gpu"


def context_files(kind: str, repo_root: Path) -> dict[str, bytes]:
    """Relative path -> content of every file the build context holds, sorted."""
    files: dict[str, bytes] = {}
    for entry in IMAGE_FILES[kind]:
        p = repo_root / entry
        if entry == "README.md" and not p.exists():
            files[entry] = b""  # pyproject names a readme; an empty one keeps setuptools happy
            continue
        if not p.exists():
            raise BuildError(f"{p}: missing (the {kind} image needs it; is {repo_root} the launcher repository?)")
        if p.is_file():
            files[entry] = p.read_bytes()
            continue
        for f in sorted(p.rglob("*")):
            rel = f.relative_to(repo_root)
            if f.is_file() and not SKIP.intersection(rel.parts) and f.suffix not in (".pyc", ".pyo"):
                files[rel.as_posix()] = f.read_bytes()
    return dict(sorted(files.items()))


def write_context(kinds: tuple[str, ...], dest: Path, repo_root: Path = REPO_ROOT) -> Path:
    """The files the images of `kinds` are built from, written under `dest`: a copy of the
    repository's image inputs that a benchmark or a test can change and rebuild."""
    for kind in kinds:
        for rel, data in context_files(kind, repo_root).items():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(data)
    return dest


def build_args(spec: JobSpec) -> dict[str, str]:
    """Build arguments that change what goes in (the wheelhouse URL is added at build time)."""
    return {"BASE": spec.image.base} if spec.image.base else {}


def wheelhouse_fingerprint(wheelhouse: str | None) -> str:
    """Names and sizes of a local wheelhouse: a CPU-torch image must not share a tag with a CUDA one."""
    if not wheelhouse:
        return "pypi"
    p = Path(wheelhouse).expanduser()
    if not p.is_dir():
        return wheelhouse
    return "\n".join(f"{f.name}:{f.stat().st_size}" for f in sorted(p.iterdir()) if f.is_file())


def content_tag(spec: JobSpec, repo_root: Path = REPO_ROOT, files: dict[str, bytes] | None = None) -> str:
    if spec.image.tag:
        return spec.image.tag
    kind = image_kind(spec)
    files = files if files is not None else context_files(kind, repo_root)
    h = hashlib.sha256(kind.encode())
    for rel, data in files.items():
        h.update(b"\0" + rel.encode() + b"\0" + hashlib.sha256(data).digest())
    h.update(json.dumps(build_args(spec), sort_keys=True).encode())
    h.update(wheelhouse_fingerprint(spec.image.wheelhouse).encode())
    return f"{kind}-{h.hexdigest()[:16]}"


def repository(spec: JobSpec) -> str:
    reg = (spec.image.registry or "").rstrip("/")
    return f"{reg}/{spec.image.name}" if reg else spec.image.name


def _context_tar(files: dict[str, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel, data in files.items():
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed mtime: same bytes, same cache
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


# -- the engine ---------------------------------------------------------------------------------

def docker_client():
    try:
        import docker
    except ImportError:
        raise BuildError("the Docker SDK is missing: pip install 'llm-launcher[cloud]'") from None
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as e:  # DockerException, or a socket error with no engine at all
        raise BuildError(f"no Docker engine answers ({str(e).splitlines()[0][:160]}); start Docker or set DOCKER_HOST") from None
    return client


def _local_image(client, ref: str):
    import docker.errors

    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None


def _cache_sources(client, out: BuiltImage, kind: str, keep: int = 3) -> list[str]:
    """Earlier images of this repository and kind on this engine, newest first: the layer cache.

    The engine's own cache is the chain of images it built itself; an image pulled by digest (a
    fresh CI machine, a laptop that pulled what another one pushed) has no such chain, and without
    naming it here a one-line code change would reinstall every dependency (2 GB for the GPU image).
    """
    try:
        images = client.images.list(name=out.repository)
    except Exception:  # a listing problem costs only cache hits, never the build
        return []
    tagged = [(img.attrs.get("Created", ""), t) for img in images for t in img.tags
              if t.startswith(f"{out.repository}:{kind}-") and t != out.tagged]
    return [t for _, t in sorted(tagged, reverse=True)[:keep]]


def _registry_digest(client, ref: str, auth: dict | None) -> str | None:
    """The registry's manifest digest of ref, or None when the registry does not have it."""
    import docker.errors

    try:
        return client.images.get_registry_data(ref, auth_config=auth).id
    except docker.errors.APIError:
        return None  # not found, or not allowed to look: both mean "build and push"


@contextmanager
def _serve(folder: str | None):
    """A local wheelhouse folder served on 127.0.0.1 for the build (host network), or a URL as is."""
    if not folder or re.match(r"^[a-z]+://", folder):
        yield folder
        return
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise BuildError(f"image.wheelhouse: {root} is not a folder")
    handler = functools.partial(_QuietHandler, directory=str(root))
    # The URL is a build argument, and build arguments are part of the layer cache key: the same
    # folder gets the same port, or every build would reinstall every dependency.
    port = 20000 + int(hashlib.sha256(str(root).encode()).hexdigest(), 16) % 20000
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError:  # taken (another build at the same time): correct, only uncached
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


# -- registry credentials -----------------------------------------------------------------------

def registry_auth(repo: str) -> dict | None:
    """auth_config for a push/pull, or None to let Docker use its own login (docker login, helpers).

    Amazon ECR: a token from boto3's credentials. Others: SKYPILOT_DOCKER_USERNAME/PASSWORD (the same
    variables SkyPilot reads to pull), else Docker's own config.
    """
    host = repo.split("/", 1)[0] if "/" in repo else ""
    m = ECR_HOST.match(host)
    if m:
        return _ecr_auth(m.group(2), repo.split("/", 1)[1])
    user, password = os.environ.get("SKYPILOT_DOCKER_USERNAME"), os.environ.get("SKYPILOT_DOCKER_PASSWORD")
    if user and password:
        return {"username": user, "password": password}
    if GAR_HOST.match(host):
        token = _gcloud_token()
        if token:
            return {"username": "oauth2accesstoken", "password": token}
    return None


def _ecr_auth(region: str, repo_name: str) -> dict:
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        raise BuildError("pushing to Amazon ECR needs boto3: pip install 'llm-launcher[cloud]'") from None
    try:
        ecr = boto3.client("ecr", region_name=region)
        try:  # ECR refuses a push to a repository that does not exist yet
            ecr.create_repository(repositoryName=repo_name)
        except ecr.exceptions.RepositoryAlreadyExistsException:
            pass
        data = ecr.get_authorization_token()["authorizationData"][0]
    except (BotoCoreError, ClientError) as e:
        raise BuildError(f"Amazon ECR ({region}): {str(e).splitlines()[0]}") from None
    user, password = base64.b64decode(data["authorizationToken"]).decode().split(":", 1)
    return {"username": user, "password": password}


def _gcloud_token() -> str | None:
    try:
        import google.auth
        import google.auth.transport.requests

        creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        creds.refresh(google.auth.transport.requests.Request())
        return creds.token
    except Exception:  # no google-auth or no credentials: Docker's own gcloud helper may still work
        return None


# -- build and push -----------------------------------------------------------------------------

def _secret_values(spec: JobSpec) -> list[str]:
    return [v for name in spec.secrets if len(v := os.environ.get(name, "")) >= 4]


def _log_path(tag: str) -> Path:
    from launcher.state import home

    p = home() / "logs"
    p.mkdir(parents=True, exist_ok=True)
    return p / f"build-{tag}.log"


def build(spec: JobSpec, repo_root: Path | str = REPO_ROOT, *, push: bool, progress: bool = True,
          wheelhouse: str | None = None, nocache: bool = False) -> BuiltImage:
    """Build (unless the tag exists) and optionally push the image `spec` needs."""
    repo_root = Path(repo_root)
    if wheelhouse is not None:
        spec = spec.model_copy(update={"image": spec.image.model_copy(update={"wheelhouse": wheelhouse})})
    kind = image_kind(spec)
    files = context_files(kind, repo_root)
    tag = content_tag(spec, repo_root, files)
    repo = repository(spec)
    if push and not spec.image.registry:
        raise BuildError("image.registry: not set; push where? (e.g. ghcr.io/USER, docker.io/USER, an ECR repository)")
    client = docker_client()
    out = BuiltImage(repository=repo, tag=tag)
    auth = registry_auth(repo) if push else None
    say = _printer(progress)

    local = _local_image(client, out.tagged)
    if push and not nocache:
        digest = _registry_digest(client, out.tagged, auth)
        if digest:
            say(f"{out.tagged} is already in the registry: nothing to build or push")
            out.digest, out.image_id = digest, local.id if local else None
            _record(spec, out)
            return out
    if local is not None and not nocache:
        say(f"{out.tagged} exists locally: not rebuilt")
        out.image_id = local.id
    else:
        out.image_id = _build(client, spec, files, out, say, progress=progress, nocache=nocache)
        out.built = True
    if push:
        out.digest = _push(client, out, auth, say)
        out.pushed = True
        _record(spec, out)
    return out


def _printer(progress: bool):
    if not progress:
        return lambda msg: None
    from rich.console import Console

    console = Console(stderr=True, highlight=False)
    return lambda msg: console.print(msg, markup=False)


def _build(client, spec: JobSpec, files: dict[str, bytes], out: BuiltImage, say, *, progress: bool, nocache: bool) -> str:
    import docker.errors

    secrets = _secret_values(spec)
    log_path = _log_path(out.tag)
    with _serve(spec.image.wheelhouse) as wheel_url, open(log_path, "w") as log:
        args = build_args(spec)
        if wheel_url:
            args["WHEELHOUSE"] = wheel_url
        for k, v in args.items():
            if any(s in v for s in secrets):
                raise BuildError(f"build argument {k} holds the value of a secret; secrets reach jobs at run time only")
        say(f"building {out.tagged} (log: {log_path})")
        image_id, error, step = None, None, ""
        # A live bar on a terminal; one line per step otherwise (CI logs, pipes).
        progress_bar = _StepBar() if progress and os.isatty(2) else None
        cache_from = [] if nocache else _cache_sources(client, out, image_kind(spec))
        try:
            stream = client.api.build(
                fileobj=_context_tar(files), custom_context=True, tag=out.tagged, buildargs=args,
                dockerfile=f"images/{image_kind(spec)}/Dockerfile", rm=True, forcerm=True, decode=True,
                network_mode="host",  # reach the wheelhouse on 127.0.0.1; SkyPilot runs with --net=host too
                use_config_proxy=False, nocache=nocache, cache_from=cache_from or None, labels={"org.opencontainers.image.title": spec.image.name},
            )
            for chunk in stream:
                text = chunk.get("stream") or chunk.get("status") or ""
                if text:
                    log.write(text if text.endswith("\n") else text + "\n")
                    m = re.match(r"Step (\d+)/(\d+) : (.*)", text)
                    if m:
                        step = m.group(3)[:100]
                        if progress_bar:
                            progress_bar.update(int(m.group(1)), int(m.group(2)), step)
                        else:
                            say(f"  step {m.group(1)}/{m.group(2)}: {step}")
                if "error" in chunk:
                    error = chunk["error"].strip()
                    log.write(error + "\n")
                if "aux" in chunk and "ID" in chunk["aux"]:
                    image_id = chunk["aux"]["ID"]
        except docker.errors.APIError as e:
            error = str(e.explanation or e)
        finally:
            if progress_bar:
                progress_bar.close()
    if error or not image_id:
        last = (error or "no image produced").splitlines()[-1][:300]
        raise BuildError(f"build of {out.tagged} failed at `{step}`: {last} (full log: {log_path})")
    say(f"built {out.tagged} ({image_id[:19]})")
    return image_id


class _StepBar:
    """A rich progress bar over the Dockerfile's steps."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.p = Progress(TextColumn("[bold]build"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          TextColumn("{task.description}"), transient=False)
        self.p.start()
        self.task = self.p.add_task("", total=None)

    def update(self, i: int, n: int, text: str) -> None:
        self.p.update(self.task, completed=i - 1, total=n, description=text[:60])

    def close(self) -> None:
        self.p.update(self.task, completed=self.p.tasks[0].total or 0)
        self.p.stop()


def _push(client, out: BuiltImage, auth: dict | None, say) -> str:
    import docker.errors

    say(f"pushing {out.tagged}")
    digest, error = None, None
    try:
        for chunk in client.images.push(out.repository, tag=out.tag, stream=True, decode=True, auth_config=auth):
            if "error" in chunk:
                error = chunk["error"].strip()
            aux = chunk.get("aux") or {}
            if "Digest" in aux:
                digest = aux["Digest"]
    except docker.errors.APIError as e:
        error = str(e.explanation or e)
    if error:
        low = error.lower()
        if any(w in low for w in ("denied", "unauthorized", "authentication required", "forbidden", "no basic auth")):
            host = out.repository.split("/", 1)[0]
            raise BuildError(f"push to {out.repository} denied: {error.splitlines()[0][:200]} "
                             f"(log in with `docker login {host}`, or set SKYPILOT_DOCKER_USERNAME and SKYPILOT_DOCKER_PASSWORD)")
        raise BuildError(f"push of {out.tagged} failed: {error.splitlines()[0][:300]}")
    if not digest:
        raise BuildError(f"push of {out.tagged}: the registry returned no digest")
    say(f"pushed {out.repository}@{digest}")
    return digest


# -- the record `submit` reads ------------------------------------------------------------------

def _records_path() -> Path:
    from launcher.state import home

    return home() / "images.json"


def _load_records() -> dict:
    try:
        return json.loads(_records_path().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _record(spec: JobSpec, out: BuiltImage) -> None:
    import fcntl

    path = _records_path()
    with open(path.with_suffix(".lock"), "w") as lock:  # two builds at once must not lose a record
        fcntl.flock(lock, fcntl.LOCK_EX)
        records = _load_records()
        records[out.tagged] = {**asdict(out), "ref": out.ref, "recorded": time.time()}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(records, indent=1, sort_keys=True))
        os.replace(tmp, path)


def recorded_image(spec: JobSpec, repo_root: Path | str | None = REPO_ROOT) -> str | None:
    """`repository@sha256:...` of the pushed image for this spec's current code, or None.

    When the repository files are not at hand (an installed launcher without images/), the newest
    image recorded for the spec's repository is used instead.
    """
    records = _load_records()
    repo = repository(spec)
    try:
        tag = content_tag(spec, Path(repo_root)) if repo_root is not None else None
    except BuildError:
        tag = spec.image.tag
    if tag:
        rec = records.get(f"{repo}:{tag}")
        return rec["ref"] if rec and rec.get("digest") else None
    mine = [r for r in records.values() if r.get("repository") == repo and r.get("digest")]
    return max(mine, key=lambda r: r["recorded"])["ref"] if mine else None


def require_image(spec: JobSpec, repo_root: Path | str | None = REPO_ROOT) -> str:
    """recorded_image, or a BuildError telling the user to build and push first."""
    ref = recorded_image(spec, repo_root)
    if ref is None:
        raise BuildError(f"no pushed image of {repository(spec)} for this code: run `launcher build JOB.yaml --push` first")
    return ref
