"""The project registry (CNCF distribution started by `opendepot serve`, token auth signed by opendepot):
`depot build --save` pushes from buildkitd, the registry's notifications fill ListImages, skopeo pulls with
a pull token, `depot image rm` and DeleteImage remove exactly the tags named, and garbage collection
reclaims the blobs once the registry is idle."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from opendepot.gen.depot.cli.v1 import build_pb as cli
from opendepot.registry.operations import KEPT_BYTES_TTL
from tests.e2e.test_builds import build, new_project, new_project_token
from tests.support.builds import builds_possible, busybox_context
from tests.support.clients import depot, sdk_one, ts
from tests.support.rpc import call
from tests.support.server import Server

pytestmark = pytest.mark.skipif(
    builds_possible() is not None or shutil.which("skopeo") is None,
    reason=str(builds_possible() or "skopeo is not installed (./dev setup)"),
)


def saved_build(server: Server, token: str, project: str, context: Path, *extra: str) -> str:
    code, output = build(server, token, project, context, "--save", *extra)
    assert code == 0, output
    assert f"pushing manifest for {server.registry_host}/{project}:" in output, output
    return output.split("depot pull --project", 1)[1].split()[1]


def images(server: Server, token: str, project: str) -> list[dict[str, Any]]:
    listed = sdk_one(server.url, "build.v1.RegistryService", "listImages", {"projectId": project}, token)
    assert "ok" in listed, listed
    found: list[dict[str, Any]] = listed["ok"].get("images", [])
    return found


def delete_images(server: Server, token: str, project: str, tags: list[str]) -> dict[str, Any]:
    """DeleteImage through @depot/sdk-node: its answer, `ok` or `error`."""
    return sdk_one(
        server.url,
        "build.v1.RegistryService",
        "deleteImage",
        {"projectId": project, "imageTags": tags},
        token,
    )


def wait_for(check: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120, check=False)


def raw_manifest(reference: str, creds: str) -> dict[str, Any]:
    shown = skopeo("inspect", "--raw", "--tls-verify=false", "--creds", creds, f"docker://{reference}")
    assert shown.returncode == 0, shown.stderr
    document: dict[str, Any] = json.loads(shown.stdout)
    return document


def size_by_skopeo(repository: str, tag: str, creds: str) -> int:
    """Config plus layers, each blob once, as skopeo reads them: the definition ListImages uses."""
    top = raw_manifest(f"{repository}:{tag}", creds)
    children = [m["digest"] for m in top.get("manifests", [])]
    manifests = [raw_manifest(f"{repository}@{digest}", creds) for digest in children] or [top]
    blobs = {b["digest"]: b["size"] for m in manifests for b in [m["config"], *m["layers"]]}
    return sum(blobs.values())


def pull_token(server: Server, token: str, project: str) -> str:
    result = depot(server.url, token, "pull-token", "--project", project)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture(scope="module")
def collecting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that garbage-collects one second after the last delete (the default waits five minutes)."""
    srv = Server(
        data_dir=tmp_path_factory.mktemp("registry-gc") / "data",
        database_url=None,
        extra_args=["--registry-gc-idle-seconds", "1", "--workers", "1"],
    ).start()
    yield srv
    srv.stop()


def test_save_list_pull_and_delete(server: Server, org: tuple[str, str], tmp_path: Path) -> None:
    _org, token = org
    project = new_project(server, token, "saved")
    context = busybox_context(tmp_path / "ctx", "echo saved-image > /marker")
    build_id = saved_build(server, token, project, context, "--save-tag", "latest", "--save-tag", "v1")

    listed = wait_for(
        lambda: len(images(server, token, project)) == 3 and images(server, token, project), "3 tags"
    )
    assert {i["tag"] for i in listed} == {build_id, "latest", "v1"}
    assert len({i["digest"] for i in listed}) == 1
    digest = listed[0]["digest"]
    repository = f"{server.registry_host}/{project}"

    # Pull with a pull token, as `docker login -u x-token` would: same digest, real content, honest size.
    secret = pull_token(server, token, project)
    assert secret.startswith("odr_")
    creds = f"x-token:{secret}"
    inspected = skopeo("inspect", "--tls-verify=false", "--creds", creds, f"docker://{repository}:latest")
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["Digest"] == digest
    assert int(listed[0]["sizeBytes"]) == size_by_skopeo(repository, "latest", creds)
    # Usage counts the image once, however many tags name it (the org is this test's alone).
    now = datetime.now(UTC)
    period = {"startAt": ts(now - timedelta(hours=1)), "endAt": ts(now + timedelta(hours=1))}
    usage = sdk_one(server.url, "core.v1.UsageService", "getUsage", period, token)["ok"]
    [registry] = [s for s in usage["storage"] if s["storageType"] == "registry"]
    assert registry["totalGb"] == pytest.approx(int(listed[0]["sizeBytes"]) / 2**30, rel=1e-6)
    pulled = skopeo(
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        creds,
        f"docker://{repository}:latest",
        f"oci:{tmp_path / 'pulled'}:latest",
    )
    assert pulled.returncode == 0, pulled.stderr

    # A pull token cannot push.
    pushed = skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        creds,
        f"oci:{tmp_path / 'pulled'}:latest",
        f"docker://{repository}:by-pull-token",
    )
    assert pushed.returncode != 0
    assert "denied" in pushed.stderr or "unauthorized" in pushed.stderr

    # depot image ls shows what the store has; depot image rm removes exactly the tag named.
    shown = depot(server.url, token, "image", "ls", "--project", project)
    assert shown.returncode == 0, shown.stderr
    assert f"latest,{digest},{listed[0]['sizeBytes']}," in shown.stdout
    removed = depot(server.url, token, "image", "rm", "--project", project, build_id)
    assert removed.returncode == 0, removed.stderr
    assert {i["tag"] for i in images(server, token, project)} == {"latest", "v1"}
    gone = skopeo("inspect", "--tls-verify=false", "--creds", creds, f"docker://{repository}:{build_id}")
    assert gone.returncode != 0 and "manifest unknown" in gone.stderr
    # The tags that share the image stay pullable, and stay listed once the registry's events are in.
    time.sleep(1)
    assert {i["tag"] for i in images(server, token, project)} == {"latest", "v1"}
    assert (
        skopeo("inspect", "--tls-verify=false", "--creds", creds, f"docker://{repository}:v1").returncode == 0
    )

    # DeleteImage by full reference and by the sha256-<hex> pseudo-tag of older CLIs.
    deleted = delete_images(server, token, project, [f"{repository}:v1"])
    assert "ok" in deleted, deleted
    assert {i["tag"] for i in images(server, token, project)} == {"latest"}
    pseudo = "sha256-" + digest.removeprefix("sha256:")
    deleted = delete_images(server, token, project, [pseudo])
    assert "ok" in deleted, deleted
    assert images(server, token, project) == []
    time.sleep(1)
    assert images(server, token, project) == []
    gone = skopeo("inspect", "--tls-verify=false", "--creds", creds, f"docker://{repository}:latest")
    assert gone.returncode != 0

    missing = delete_images(server, token, project, ["nope"])
    assert missing["error"]["code"] == "not_found", missing


def test_projects_and_token_kinds_are_isolated(server: Server, org: tuple[str, str], tmp_path: Path) -> None:
    _org, token = org
    project, other = new_project(server, token, "mine"), new_project(server, token, "theirs")
    saved_build(
        server, token, project, busybox_context(tmp_path / "ctx", "echo isolated > /x"), "--save-tag", "t"
    )
    wait_for(lambda: images(server, token, project), "the saved image")
    repository = f"{server.registry_host}/{project}"

    # Another project's pull token and another organization's token cannot pull this project's image.
    other_creds = f"x-token:{pull_token(server, token, other)}"
    refused = skopeo("inspect", "--tls-verify=false", "--creds", other_creds, f"docker://{repository}:t")
    assert refused.returncode != 0
    assert "denied" in refused.stderr or "unauthorized" in refused.stderr
    _other_org, stranger = server.new_organization()
    refused = skopeo(
        "inspect", "--tls-verify=false", "--creds", f"x-token:{stranger}", f"docker://{repository}:t"
    )
    assert refused.returncode != 0
    assert images(server, token, other) == []
    listed = sdk_one(server.url, "build.v1.RegistryService", "listImages", {"projectId": project}, stranger)
    assert listed["error"]["code"] == "permission_denied", listed

    # The token service itself: GET with Basic auth and the OAuth2 password grant; grants are intersected.
    scope = f"repository:{project}:pull,push"
    with httpx.Client(timeout=10) as http:
        basic = base64.b64encode(f"x-token:{token}".encode()).decode()
        got = http.get(
            f"{server.url}/registry/token",
            params={"service": "opendepot-registry", "scope": [scope, f"repository:{other}:pull"]},
            headers={"Authorization": f"Basic {basic}"},
        )
        assert got.status_code == 200, got.text
        access = jwt.decode(got.json()["token"], options={"verify_signature": False})["access"]
        assert {a["name"]: (a["type"], a["actions"]) for a in access} == {
            project: ("repository", ["pull", "push"]),
            other: ("repository", ["pull"]),
        }
        pull_only = pull_token(server, token, project)
        posted = http.post(
            f"{server.url}/registry/token",
            data={
                "grant_type": "password",
                "username": "x-token",
                "password": pull_only,
                "scope": scope,
                "service": "opendepot-registry",
                "client_id": "test",
            },
        )
        assert posted.status_code == 200, posted.text
        claims = jwt.decode(posted.json()["access_token"], options={"verify_signature": False})
        assert claims["access"] == [{"type": "repository", "name": project, "actions": ["pull"]}]
        denied = http.get(
            f"{server.url}/registry/token",
            params={"scope": scope},
            headers={"Authorization": "Basic " + base64.b64encode(b"x-token:odp_wrong").decode()},
        )
        assert denied.status_code == 401
        stranger_grant = http.get(
            f"{server.url}/registry/token",
            params={"scope": scope},
            headers={"Authorization": "Basic " + base64.b64encode(f"x-token:{stranger}".encode()).decode()},
        )
        assert jwt.decode(stranger_grant.json()["token"], options={"verify_signature": False})["access"] == []
        # A project token pushes and pulls its own project's repository only.
        project_token = new_project_token(server, token, other, "r")
        both = f"repository:{other}:pull,push {scope}"
        granted = http.post(
            f"{server.url}/registry/token",
            data={"grant_type": "password", "username": "x", "password": project_token, "scope": both},
        )
        assert jwt.decode(granted.json()["access_token"], options={"verify_signature": False})["access"] == [
            {"type": "repository", "name": other, "actions": ["pull", "push"]}
        ]
        # One request names at most 64 scopes: 20,000 held a worker for half a second for a 4 MB token.
        many = " ".join(f"repository:{other}/n{i}:pull" for i in range(65))
        flood = http.post(
            f"{server.url}/registry/token",
            data={"grant_type": "password", "username": "x", "password": project_token, "scope": many},
        )
        assert flood.status_code == 400 and "at most 64 scopes" in flood.json()["errors"][0]["message"]
        # Only the registry may post events.
        forged = http.post(f"{server.url}/registry/events", json={"events": []})
        assert forged.status_code == 401


def test_create_build_registry_fields_and_pull_info(server: Server, org: tuple[str, str]) -> None:
    _org, token = org
    project = new_project(server, token, "fields")
    with httpx.Client(timeout=10) as http:
        base = server.url
        path = "/depot.cli.v1.BuildService/"
        load = cli.CreateBuildRequest(
            project_id=project,
            options=[cli.BuildOptions(command=cli.Command.BUILD, load=True, tags=["app:dev"])],
        )
        created = call(http, base, path + "CreateBuild", load, token).message(cli.CreateBuildResponse)
        assert created.registry is not None and created.registry.load_using_registry
        assert [t.tag for t in created.additional_tags] == [
            f"{server.registry_host}/{project}:{created.build_id}"
        ]
        [credential] = created.additional_credentials
        assert credential.host == server.registry_host
        assert base64.b64decode(credential.token).decode() == f"x-token:{created.build_token}"

        info = call(
            http, base, path + "GetPullInfo", cli.GetPullInfoRequest(build_id=created.build_id), token
        ).message(cli.GetPullInfoResponse)
        assert info.reference == f"{server.registry_host}/{project}:{created.build_id}"
        assert info.username == "x-token" and info.password.startswith("odr_")
        assert info.save_for_load and info.registry_host == server.registry_host
        assert [o.tags for o in info.options] == [["app:dev"]]

        plain = cli.CreateBuildRequest(
            project_id=project, options=[cli.BuildOptions(command=cli.Command.BUILD)]
        )
        created = call(http, base, path + "CreateBuild", plain, token).message(cli.CreateBuildResponse)
        assert created.registry is not None and not created.registry.load_using_registry
        assert list(created.additional_tags) == []

        bad = cli.CreateBuildRequest(
            project_id=project,
            options=[cli.BuildOptions(command=cli.Command.BUILD, save=True, save_tags=["no way"])],
        )
        refused = call(http, base, path + "CreateBuild", bad, token)
        assert refused.code == "invalid_argument" and "options[0].save_tags" in refused.error["message"]
        unknown = call(http, base, path + "GetPullInfo", cli.GetPullInfoRequest(build_id="bbbbbbbbbb"), token)
        assert unknown.code == "not_found"
        # A pull token pulls, and does nothing else with the API.
        pulled = call(http, base, path + "GetPullToken", cli.GetPullTokenRequest(project_id=project), token)
        pull_secret = pulled.message(cli.GetPullTokenResponse).token
        listed = call(http, base, path + "ListBuilds", cli.ListBuildsRequest(project_id=project), pull_secret)
        assert listed.code == "permission_denied"


def blob_files(server: Server) -> set[str]:
    root = server.data_dir / "registry" / "storage" / "docker" / "registry" / "v2" / "blobs"
    return {p.parent.name for p in root.rglob("data")}


def test_garbage_collection_reclaims_deleted_blobs(collecting: Server, tmp_path: Path) -> None:
    _org, token = collecting.new_organization()
    project = new_project(collecting, token, "gc")
    context = busybox_context(tmp_path / "ctx", "head -c 300000 /dev/urandom > /random.bin")
    saved_build(collecting, token, project, context)
    [image] = wait_for(lambda: images(collecting, token, project), "the saved image")
    before = blob_files(collecting)
    creds = f"x-token:{pull_token(collecting, token, project)}"
    top = raw_manifest(f"{collecting.registry_host}/{project}@{image['digest']}", creds)
    layers = {
        layer["digest"].removeprefix("sha256:")
        for m in top["manifests"]
        for layer in raw_manifest(f"{collecting.registry_host}/{project}@{m['digest']}", creds)["layers"]
    }
    assert layers <= before

    deleted = delete_images(collecting, token, project, [image["tag"]])
    assert "ok" in deleted, deleted
    wait_for(lambda: not (layers & blob_files(collecting)), "garbage collection to remove the layers", 30)
    wait_for(lambda: "registry garbage collection done" in collecting.log_text(), "the registry's restart")
    # The registry is back and takes pushes again.
    saved_build(collecting, token, project, context)
    wait_for(lambda: images(collecting, token, project), "the image saved after collection")


def test_load_and_docker_login_with_a_docker_engine(
    server: Server, org: tuple[str, str], tmp_path: Path
) -> None:
    if (
        shutil.which("docker") is None
        or subprocess.run(["docker", "info"], capture_output=True).returncode != 0
    ):
        pytest.skip(
            "no Docker engine runs here: `depot build --load` pulls into one (the CreateBuild and "
            "GetPullInfo answers for --load are checked in test_create_build_registry_fields_and_pull_info)"
        )
    # The CLI's Docker client speaks API 1.44; an older engine (Debian bookworm's 20.10 is 1.41) is told ours.
    api = subprocess.run(
        ["docker", "version", "--format", "{{.Server.APIVersion}}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    docker_env = {**os.environ, "DOCKER_API_VERSION": api}
    _org, token = org
    project = new_project(server, token, "load")
    context = busybox_context(tmp_path / "ctx", "echo loaded-through-the-registry > /loaded")
    tag = f"opendepot-load-test:{project}"
    code, output = build(
        server, token, project, context, "--load", "-t", tag, env={"DOCKER_API_VERSION": api}
    )
    assert code == 0, output
    assert f"pushing manifest for {server.registry_host}/{project}:" in output and "pulling" in output, output
    ran = subprocess.run(
        ["docker", "run", "--rm", tag, "/bin/busybox", "cat", "/loaded"],
        capture_output=True,
        text=True,
        env=docker_env,
    )
    assert ran.stdout.strip() == "loaded-through-the-registry", ran.stderr

    # docker login with a project token: push to its own repository, not to another project's.
    secret = sdk_one(
        server.url, "core.v1.ProjectService", "createToken", {"projectId": project, "description": "d"}, token
    )["ok"]["secret"]
    config = tmp_path / "docker-config"
    config.mkdir()
    login_env = {**docker_env, "DOCKER_CONFIG": str(config)}

    def docker(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", *args], input=stdin, capture_output=True, text=True, env=login_env)

    assert (
        docker("login", server.registry_host, "-u", "x-token", "--password-stdin", stdin=secret).returncode
        == 0
    )
    mine, theirs = f"{server.registry_host}/{project}:from-docker", f"{server.registry_host}/zzzzzzzzzz:nope"
    for target in (mine, theirs):
        assert docker("tag", tag, target).returncode == 0
    pushed = docker("push", mine)
    assert pushed.returncode == 0, pushed.stderr
    refused = docker("push", theirs)
    assert refused.returncode != 0 and "denied" in (refused.stdout + refused.stderr)

    # depot pull <build-id>: GetPullInfo, then the same pull through the engine, retagged.
    build_id = output.split(f"{server.registry_host}/{project}:", 1)[1].split("@", 1)[0]
    pulled_tag = f"opendepot-pulled:{project}"
    pulled = depot(
        server.url, token, "pull", "--project", project, build_id, "-t", pulled_tag,
        env={"DOCKER_API_VERSION": api},
    )  # fmt: skip
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert docker("image", "inspect", pulled_tag).returncode == 0

    listed = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    for image in {tag, mine, theirs, pulled_tag, *(i for i in listed if i.startswith(server.registry_host))}:
        docker("image", "rm", image)


@contextmanager
def quota_server(tmp_path: Path, *extra_args: str) -> Iterator[tuple[Server, str]]:
    """A server with --registry-quota-mib 1, and an organization token on it."""
    srv = Server(
        data_dir=tmp_path / "data",
        database_url=None,
        extra_args=["--registry-quota-mib", "1", *extra_args],
    ).start()
    try:
        _org, token = srv.new_organization()
        yield srv, token
    finally:
        srv.stop()


def assert_push_refused_pull_granted(
    srv: Server, token: str, project: str, reason: str = "its quota is 1 MiB (--registry-quota-mib)"
) -> None:
    """The token service's own answer: 403 with the reason for a push, to the organization's token and to
    the project's own (a CI job's `docker push`); a pull is still granted. An API worker trusts what it read
    of the registry's storage for 3 s: a grant just before may stand that long."""
    for pusher in (token, new_project_token(srv, token, project)):

        def push_grant(pusher: str = pusher) -> httpx.Response:
            return httpx.get(
                f"{srv.url}/registry/token",
                params={"scope": f"repository:{project}:pull,push"},
                auth=("x-token", pusher),
            )

        refused = wait_for(lambda: (answer := push_grant()).status_code == 403 and answer, "a refusal", 10)
        assert refused.status_code == 403, refused.text
        assert refused.json()["errors"][0]["code"] == "DENIED"
        assert reason in refused.json()["errors"][0]["message"], refused.text
    pulling = httpx.get(
        f"{srv.url}/registry/token", params={"scope": f"repository:{project}:pull"}, auth=("x-token", token)
    )
    assert pulling.status_code == 200, pulling.text


def test_a_project_over_its_registry_quota_cannot_push_until_it_deletes(tmp_path: Path) -> None:
    """--registry-quota-mib 1: the first save (2 MB of random data) lands, since the project kept nothing;
    the next push is refused by the token service with a message that reaches the depot CLI, while pulls,
    and pushes to another project, go on; deleting the image makes room again."""
    with quota_server(tmp_path) as (srv, token):
        project, other = new_project(srv, token, "full"), new_project(srv, token, "roomy")
        big = busybox_context(tmp_path / "big", "head -c 2000000 /dev/urandom > /random.bin")
        saved_build(srv, token, project, big)
        [image] = wait_for(lambda: images(srv, token, project), "the saved image")
        assert int(image["sizeBytes"]) > 1 << 20

        small = busybox_context(tmp_path / "small", "echo small > /x")
        code, output = build(srv, token, project, small, "--save")
        assert code != 0, output
        assert "its quota is 1 MiB (--registry-quota-mib): delete images to push again" in output, output
        assert_push_refused_pull_granted(srv, token, project)
        creds = f"x-token:{pull_token(srv, token, project)}"
        inspected = skopeo(
            "inspect",
            "--tls-verify=false",
            "--creds",
            creds,
            f"docker://{srv.registry_host}/{project}:{image['tag']}",
        )
        assert inspected.returncode == 0, inspected.stderr
        saved_build(srv, token, other, small)  # the quota is each project's own

        deleted = delete_images(srv, token, project, [image["tag"]])
        assert "ok" in deleted, deleted
        saved_build(srv, token, project, small)


def test_garbage_collection_keeps_every_image_still_tagged(collecting: Server, tmp_path: Path) -> None:
    """A saved image is an index whose per-platform manifests carry no tag. Collecting after one project's
    delete must leave every image still tagged whole, in that project and in others: each manifest the
    index names, their config and layers, and a real pull of it."""
    _org, token = collecting.new_organization()
    kept_project = new_project(collecting, token, "gc-kept")
    deleting = new_project(collecting, token, "gc-del")
    kept_context = busybox_context(tmp_path / "kept", "head -c 200000 /dev/urandom > /kept.bin")
    saved_build(collecting, token, kept_project, kept_context)
    saved_build(collecting, token, deleting, busybox_context(tmp_path / "kept-too", "echo same-project > /x"))
    saved_build(collecting, token, deleting, busybox_context(tmp_path / "gone", "echo gone > /gone"))
    [kept] = wait_for(lambda: images(collecting, token, kept_project), "the kept image")
    neighbours = wait_for(
        lambda: (found := images(collecting, token, deleting)) and len(found) == 2 and found, "both images"
    )
    gone, still = neighbours[0], neighbours[1]  # newest first: the last build's image goes

    def whole(project: str, image: dict[str, Any]) -> set[str]:
        """Every blob of the image (its manifests too), read through the registry."""
        creds = f"x-token:{pull_token(collecting, token, project)}"
        top = raw_manifest(f"{collecting.registry_host}/{project}@{image['digest']}", creds)
        blobs = {image["digest"]}
        for child in top.get("manifests", []):
            manifest = raw_manifest(f"{collecting.registry_host}/{project}@{child['digest']}", creds)
            blobs |= {child["digest"], manifest["config"]["digest"]}
            blobs |= {layer["digest"] for layer in manifest["layers"]}
        return {b.removeprefix("sha256:") for b in blobs}

    kept_blobs, still_blobs = whole(kept_project, kept), whole(deleting, still)
    runs = collecting.log_text().count("registry garbage collection done")
    assert "ok" in delete_images(collecting, token, deleting, [gone["tag"]])
    wait_for(
        lambda: collecting.log_text().count("registry garbage collection done") > runs,
        "garbage collection after the delete",
        60,
    )
    assert kept_blobs <= blob_files(collecting)
    assert still_blobs <= blob_files(collecting)
    assert whole(kept_project, kept) == kept_blobs
    assert whole(deleting, still) == still_blobs
    for project, image in ((kept_project, kept), (deleting, still)):
        creds = f"x-token:{pull_token(collecting, token, project)}"
        copied = skopeo(
            "copy",
            "--all",
            "--src-tls-verify=false",
            "--src-creds",
            creds,
            f"docker://{collecting.registry_host}/{project}:{image['tag']}",
            f"oci:{tmp_path / project}:copy",
        )
        assert copied.returncode == 0, copied.stderr


def registry_push_headers(srv: Server, token: str, project: str) -> dict[str, str]:
    grant = httpx.get(
        f"{srv.url}/registry/token",
        params={"scope": f"repository:{project}:pull,push"},
        auth=("x-token", token),
    )
    assert grant.status_code == 200, grant.text
    return {"Authorization": f"Bearer {grant.json()['token']}"}


def blob_uploader(srv: Server, token: str, project: str) -> Callable[[bytes], str]:
    """Uploads a blob to the project's repository straight through the registry's API; returns its digest."""
    headers = registry_push_headers(srv, token, project)
    base = f"http://{srv.registry_host}"

    def put_blob(content: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(content).hexdigest()
        started = httpx.post(f"{base}/v2/{project}/blobs/uploads/", headers=headers)
        assert started.status_code == 202, started.text
        location = httpx.URL(base).join(started.headers["location"])
        done = httpx.put(
            location.copy_merge_params({"digest": digest}),
            headers={**headers, "Content-Type": "application/octet-stream"},
            content=content,
        )
        assert done.status_code == 201, done.text
        return digest

    return put_blob


def push_by_digest(srv: Server, token: str, project: str, data: bytes) -> str:
    """An image pushed without a tag, straight through the registry's API (as any client may): a blob as its
    one layer, a config, and the manifest put by its digest. Returns the manifest's digest."""
    headers = registry_push_headers(srv, token, project)
    base = f"http://{srv.registry_host}"
    put_blob = blob_uploader(srv, token, project)
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
    layer = {
        "mediaType": "application/vnd.oci.image.layer.v1.tar",
        "size": len(data),
        "digest": put_blob(data),
    }
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "size": len(config),
                "digest": put_blob(config),
            },
            "layers": [layer],
        }
    ).encode()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    put = httpx.put(
        f"{base}/v2/{project}/manifests/{digest}",
        headers={**headers, "Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        content=manifest,
    )
    assert put.status_code == 201, put.text
    return digest


def test_what_a_push_by_digest_keeps_counts_against_the_quota(tmp_path: Path) -> None:
    """--registry-quota-mib 1: 2 MB pushed without a tag is in no image list, but the registry keeps it, so
    the project's next push is refused (before, the quota counted tagged images only and such pushes were
    never refused); its pulls, and another project's pushes, go on. `depot build --save` is refused by
    CreateBuild with the quota's message, before any build is written (it was created, and its push then
    failed with BuildKit's bare `403`)."""
    with quota_server(tmp_path) as (srv, token):
        project, other = new_project(srv, token, "by-digest"), new_project(srv, token, "tagged")
        push_by_digest(srv, token, project, os.urandom(2_000_000))
        assert images(srv, token, project) == []
        assert_push_refused_pull_granted(srv, token, project)
        push_by_digest(srv, token, other, os.urandom(1000))  # the quota is each project's own
        # Each API worker trusts its read for KEPT_BYTES_TTL: the worker that granted the push by digest may
        # still hold "under quota" while the other already refuses.
        time.sleep(KEPT_BYTES_TTL + 0.5)
        code, output = build(
            srv, token, project, busybox_context(tmp_path / "small", "echo x > /x"), "--save"
        )
        assert code != 0, output
        assert "its quota is 1 MiB (--registry-quota-mib): delete images to push again" in output, output
        with httpx.Client(timeout=30) as http:
            listed = call(
                http,
                srv.url,
                "/depot.cli.v1.BuildService/ListBuilds",
                cli.ListBuildsRequest(project_id=project),
                token,
            )
        assert listed.message(cli.ListBuildsResponse).builds == []


def pushes_again_once_collected(srv: Server, token: str, project: str, uploaded: set[str]) -> None:
    """The collection a refusal asked for removes the uploaded blobs; then a push is granted, and lands."""
    wait_for(lambda: not (uploaded & blob_files(srv)), "the collection to remove the blobs", 60)
    wait_for(
        lambda: (
            httpx.get(
                f"{srv.url}/registry/token",
                params={"scope": f"repository:{project}:pull,push"},
                auth=("x-token", token),
            ).status_code
            == 200
        ),
        "a push grant again",
        20,
    )
    push_by_digest(srv, token, project, os.urandom(1000))


def test_blobs_no_manifest_names_count_until_a_collection_frees_them(tmp_path: Path) -> None:
    """--registry-quota-mib 1: 2 MB of blobs uploaded and never named by a manifest (a tenant filling the
    shared disk with a project token, or a push cut off before its manifest) count, so the next push is
    refused; before, they counted nothing and were only freed by a collection after someone's delete.
    Deleting images cannot free them, so the refusal asks for a garbage collection, which removes them, and
    the project pushes again."""
    with quota_server(tmp_path, "--registry-gc-idle-seconds", "1", "--workers", "1") as (srv, token):
        project = new_project(srv, token, "blobs-alone")
        put_blob = blob_uploader(srv, token, project)
        uploaded = {put_blob(os.urandom(700_000)).removeprefix("sha256:") for _ in range(3)}
        assert uploaded <= blob_files(srv)
        assert images(srv, token, project) == []
        assert_push_refused_pull_granted(srv, token, project)
        refused = httpx.get(
            f"{srv.url}/registry/token",
            params={"scope": f"repository:{project}:pull,push"},
            auth=("x-token", token),
        )
        assert "2.0 MiB of it blobs no image names" in refused.json()["errors"][0]["message"], refused.text
        # The collection runs once the registry has been idle a second; then the blobs are gone and the
        # project may push again.
        pushes_again_once_collected(srv, token, project, uploaded)


def test_tiny_blobs_count_against_a_blob_quota_until_a_collection_frees_them(tmp_path: Path) -> None:
    """--registry-quota-blobs 5 beside --registry-quota-mib 1: five blobs of 10 bytes are nowhere near the
    bytes, but each is files on the registry's disk. A tenant uploading millions of them would use up its
    inodes within the bytes (and make each storage read long); the next push is refused, the refusal asks
    for a collection, which frees them, and the project pushes again."""
    with quota_server(
        tmp_path, "--registry-quota-blobs", "5", "--registry-gc-idle-seconds", "1", "--workers", "1"
    ) as (srv, token):
        project = new_project(srv, token, "tiny-blobs")
        put_blob = blob_uploader(srv, token, project)
        uploaded = {put_blob(os.urandom(10)).removeprefix("sha256:") for _ in range(5)}
        assert uploaded <= blob_files(srv)
        assert_push_refused_pull_granted(
            srv,
            token,
            project,
            "keeps 5 blobs in the registry (5 of them no image names, freed by the registry's next "
            "garbage collection), its quota is 5 (--registry-quota-blobs)",
        )
        pushes_again_once_collected(srv, token, project, uploaded)
