"""The project registry's rules: what a save is named, who may pull or push which repository, pull tokens,
and the image list as the registry's notifications reported it. Synchronous functions of a Session."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from opendepot.auth import Principal, TokenKind
from opendepot.builds import service as builds
from opendepot.builds.models import Build
from opendepot.clock import utcnow
from opendepot.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from opendepot.ids import looks_like_id
from opendepot.pagination import Cursor, PageRequest, next_token
from opendepot.projects import queries as project_queries
from opendepot.projects.service import load_project
from opendepot.tokens import service as tokens

from . import queries
from .keys import Access
from .models import Image

IMAGES_LIST = "images"
PULL_TOKEN_LIFETIME = timedelta(hours=1)
PULL_USER = "x-token"
MAX_DELETE = 1000
MIB = 1 << 20
# OCI tag grammar.
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST_TAG = re.compile(r"^sha256[-:]([a-f0-9]{64})$")


def _option(option: dict[str, Any], camel: str, snake: str) -> Any:
    return option.get(camel, option.get(snake))


def uses_registry(options: Sequence[dict[str, Any]]) -> bool:
    """A build saves (`--save`) or may load through the registry (`--load`: the CLI turns it into a save)."""
    return any(o.get("save") or o.get("load") for o in options)


def save_tags(options: Sequence[dict[str, Any]]) -> list[str]:
    """The `--save-tag` values, checked against the OCI tag grammar; a bad one names its option."""
    tags: list[str] = []
    for index, option in enumerate(options):
        for tag in _option(option, "saveTags", "save_tags") or []:
            if not isinstance(tag, str) or not _TAG.match(tag):
                raise InvalidArgument(f"options[{index}].save_tags", f"{tag!r} is not a valid image tag")
            if tag not in tags:
                tags.append(tag)
    return tags


def save_references(host: str, build: Build) -> list[str]:
    """`<host>/<project>:<build>` and one per save tag (spec §6.8)."""
    names = [build.id, *(t for t in save_tags(build.options) if t != build.id)]
    return [f"{host}/{build.project_id}:{name}" for name in names]


def save_for_load(options: Sequence[dict[str, Any]]) -> bool:
    """The build asked to load, not to save: its image is in the registry only so that the CLI can pull it."""
    return any(o.get("load") for o in options) and not any(o.get("save") for o in options)


@dataclass(frozen=True, slots=True)
class PullInfo:
    build: Build
    reference: str
    username: str
    password: str


def pull_info(session: Session, principal: Principal, build_id: str, host: str) -> PullInfo:
    build = builds.load_build(session, principal, build_id)
    secret, _expires = tokens.create_pull_token(
        session, principal, build.organization_id, build.project_id, PULL_TOKEN_LIFETIME
    )
    return PullInfo(build, f"{host}/{build.project_id}:{build.id}", PULL_USER, secret)


def pull_token(
    session: Session, principal: Principal, project_id: str | None, build_id: str | None
) -> tuple[str, datetime]:
    """Pull-only and expiring, for the project named, the build's project, or the caller's own project."""
    if build_id:
        build = builds.load_build(session, principal, build_id)
        organization_id, project = build.organization_id, build.project_id
    else:
        project_id = project_id or principal.project_id
        if not project_id:
            raise InvalidArgument("project_id", "give a project_id or a build_id")
        found = load_project(session, principal, project_id)
        organization_id, project = found.organization_id, found.id
    return tokens.create_pull_token(session, principal, organization_id, project, PULL_TOKEN_LIFETIME)


def _reaches(principal: Principal, organization_id: str, project_id: str) -> bool:
    """Build and pull tokens reach their own project's repository; other callers, the projects they build in
    (an OIDC identity: those whose trust policies match it)."""
    if principal.kind in (TokenKind.BUILD, TokenKind.PULL):
        return principal.organization_id == organization_id and principal.project_id == project_id
    try:
        principal.require_project_access(organization_id, project_id)
    except PermissionDenied:
        return False
    return True


def grant(
    session: Session, principal: Principal, requested: Sequence[Access], quota_bytes: int = 0
) -> list[Access]:
    """What a registry token may carry: a repository is a project id, or `<project id>/<name>` beneath it
    (base images, `opendepot images seed`); pull and push for tokens that build in the project, pull only
    for pull tokens; never delete (deletes go through DeleteImage, so that the image list stays true).
    Anything else is left out, as the token protocol says. With a quota, a push to a project whose images
    already take quota_bytes or more is refused (ResourceExhausted, the whole request): a tenant would
    otherwise fill the disk every project shares."""
    allowed = ("pull",) if principal.kind is TokenKind.PULL else ("pull", "push")
    granted: list[Access] = []
    # Each project is read, and its quota summed, once a request: scopes may name many repositories of one.
    reached: dict[str, bool] = {}
    within_quota: set[str] = set()
    for scope in requested:
        project_id, _, _name = scope.name.partition("/")
        if scope.type != "repository" or not looks_like_id(project_id):
            continue
        if project_id not in reached:
            project = project_queries.get(session, project_id)
            reached[project_id] = project is not None and _reaches(
                principal, project.organization_id, project.id
            )
        if not reached[project_id]:
            continue
        actions = tuple(a for a in scope.actions if a in allowed)
        if "push" in actions and quota_bytes and project_id not in within_quota:
            check_quota(session, project_id, quota_bytes)
            within_quota.add(project_id)
        if actions:
            granted.append(Access("repository", scope.name, actions))
    return granted


def create_saving_build(
    session: Session,
    principal: Principal,
    project_id: str | None,
    options: list[dict[str, Any]],
    quota_bytes: int,
    per_minute: int = 0,
) -> tuple[Build, str]:
    """CreateBuild for a build that saves to a project registry with a quota: a project at its quota is
    refused here, with the reason, and nothing is written. At the push it would only be a bare 403, which is
    all BuildKit shows of a token service's refusal."""
    build, secret = builds.create_build(session, principal, project_id, options, per_minute)
    check_quota(session, build.project_id, quota_bytes)
    return build, secret


def pushable_project(session: Session, principal: Principal, project_id: str | None) -> str | None:
    """The project a build by this caller would save to, if the caller may create builds in it; None
    otherwise (create_build then says why, in its own words and order)."""
    try:
        return builds.buildable_project(session, principal, project_id)[0]
    except (InvalidArgument, NotFound, PermissionDenied):
        return None


def check_quota(session: Session, project_id: str, quota_bytes: int) -> None:
    """ResourceExhausted when the project's images take quota_bytes or more: it may not push more."""
    refuse_over_quota(project_id, queries.stored_bytes(session, project_id), quota_bytes)


# Without --registry-quota-blobs: one blob per this many bytes of the quota, and at least MIN_BLOB_QUOTA. An
# image's layers are megabytes, its config and manifests a few KiB (about 6 blobs a MiB for 1 MB images).
BYTES_PER_BLOB = 64 << 10
MIN_BLOB_QUOTA = 10_000


def blob_quota(quota_bytes: int, quota_blobs: int = 0) -> int:
    return quota_blobs or max(MIN_BLOB_QUOTA, quota_bytes // BYTES_PER_BLOB)


def refuse_over_blob_quota(project_id: str, blobs: int, quota_blobs: int, unnamed: int = 0) -> None:
    """ResourceExhausted when the project keeps quota_blobs blobs or more in the registry's storage
    (`unnamed` of them named by no manifest)."""
    if blobs >= quota_blobs:
        freed = (
            f" ({unnamed} of them no image names, freed by the registry's next garbage collection)"
            if unnamed
            else ""
        )
        raise ResourceExhausted(
            f"project {project_id} keeps {blobs} blobs in the registry{freed}, its quota is {quota_blobs} "
            "(--registry-quota-blobs): delete images to push again"
        )


def refuse_over_quota(project_id: str, used: int, quota_bytes: int, unnamed: int = 0) -> None:
    """ResourceExhausted when `used` bytes of the project's reach its quota (`unnamed` of them blobs no
    manifest names, which the next garbage collection frees)."""
    if used >= quota_bytes:
        freed = (
            f" ({unnamed / MIB:.1f} MiB of it blobs no image names, freed by the registry's next garbage "
            "collection)"
            if unnamed
            else ""
        )
        raise ResourceExhausted(
            f"project {project_id} keeps {used / MIB:.1f} MiB of images in the registry{freed}, its quota "
            f"is {quota_bytes / MIB:.0f} MiB (--registry-quota-mib): delete images to push again"
        )


def list_images(
    session: Session, principal: Principal, project_id: str, page: PageRequest
) -> tuple[list[Image], str | None]:
    project = load_project(session, principal, project_id)
    rows = list(queries.newest_first(session, project.id, limit=page.size + 1, after=page.after))
    token = next_token(IMAGES_LIST, [Cursor(r.pushed_at, r.tag) for r in rows], page.size)
    return rows[: page.size], token


@dataclass(frozen=True, slots=True)
class DeletePlan:
    """Tags to remove; per digest touched, the tags that stay (the registry can only delete a manifest with
    all its tags, so the ones that stay are put back)."""

    project_id: str
    tags: list[str]
    keep: dict[str, list[str]]


def tag_of(reference: str, project_id: str) -> str:
    """A bare tag, `<host>/<project>:<tag>` or `<project>:<tag>`; the repository must be this project."""
    name, _, tag = reference.rpartition(":")
    if "/" in tag or not name:
        return reference
    repository = name.rsplit("/", 1)[-1]
    if repository != project_id:
        raise InvalidArgument("image_tags", f"{reference!r} is not in project {project_id}'s repository")
    return tag


def plan_delete(
    session: Session, principal: Principal, project_id: str, references: Sequence[str]
) -> DeletePlan:
    project = load_project(session, principal, project_id)
    if not references:
        raise InvalidArgument("image_tags", "name at least one image")
    if len(references) > MAX_DELETE:
        raise InvalidArgument("image_tags", f"at most {MAX_DELETE} per call")
    doomed: dict[str, Image] = {}
    for reference in references:
        if not isinstance(reference, str) or not reference.strip():
            raise InvalidArgument("image_tags", "must not be blank")
        if digest := _DIGEST_TAG.match(reference.strip()):
            found = list(queries.by_digests(session, project.id, [f"sha256:{digest.group(1)}"]))
        else:
            tag = tag_of(reference.strip(), project.id)
            one = queries.by_tag(session, project.id, tag)
            found = [one] if one is not None else []
        if not found:
            raise NotFound(f"image {reference!r} not found in project {project.id}")
        doomed.update({image.tag: image for image in found})
    digests = sorted({image.digest for image in doomed.values()})
    keep: dict[str, list[str]] = {d: [] for d in digests}
    for image in queries.by_digests(session, project.id, digests):
        if image.tag not in doomed:
            keep[image.digest].append(image.tag)
    return DeletePlan(project.id, sorted(doomed), keep)


def other_images(session: Session, project_id: str, digests: Sequence[str]) -> list[tuple[str, str]]:
    """(digest, media type) of each image of the project but those with the given digests, each once."""
    return queries.digests_except(session, project_id, digests)


def collection_marks(session: Session) -> tuple[datetime | None, datetime | None]:
    """When a garbage collection was last asked for (DeleteImage asks each time) and when the last one
    that finished started: what the project's storage holds changes with either."""
    return queries.gc_marks(session)


def ask_for_collection(session: Session) -> bool:
    """Asks for a garbage collection unless one is already waiting; True if this asked."""
    state = queries.maintenance(session)
    if state.collection_waiting:
        return False
    state.gc_requested_at = utcnow()
    return True


def forget_tags(session: Session, project_id: str, tags: Sequence[str]) -> None:
    queries.delete_tags(session, project_id, tags)
    queries.maintenance(session).gc_requested_at = utcnow()


def record_push(
    session: Session, project_id: str, tag: str, digest: str, media_type: str, size: int, at: datetime
) -> bool:
    """From a registry notification. False when the repository is no project (anything else is ignored)."""
    if project_queries.get(session, project_id) is None:
        return False
    image = queries.by_tag(session, project_id, tag)
    if image is None:
        session.add(
            Image(
                project_id=project_id,
                tag=tag,
                digest=digest,
                media_type=media_type,
                size_bytes=size,
                pushed_at=at,
            )
        )
    elif image.digest != digest:
        # A tag put back after a partial delete keeps its pushed_at: only a new image changes it.
        image.digest, image.media_type, image.size_bytes, image.pushed_at = digest, media_type, size, at
    session.flush()
    return True
