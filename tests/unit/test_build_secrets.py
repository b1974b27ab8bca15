"""Build secrets (`image.secrets`): from devloop.yaml to BuildKit's `--secret`, and their values
nowhere devloop writes: not the builder's command line, not its output lines, not an error, not
the JSON lines (which the dashboard also reads)."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from devloop import config
from devloop.builder import BuildKitCLI, ClassicSDK
from devloop.errors import EXIT_USAGE, ConfigError, CycleFailed
from devloop.images import Images
from devloop.output import Output
from devloop.plan import ServiceChange
from tests.unit.fakes import FakeRunner
from tests.unit.test_engine import World, run

TOKEN = "npm_Zq8r-s3cret-token-value"  # what the environment variable holds
CERT = "-----cert s3cret body-----"  # what the file holds (its first line)
CERT_2 = "second-line-of-the-s3cret"
SECRETS = "image: {secrets: [{id: npm, env: NPM_TOKEN}, {id: cert, file: certs/ca.pem}]}\n"


class _Exited:
    def __init__(self, code: int) -> None:
        self.code = code

    def alive(self) -> bool:
        return False

    def wait(self, timeout: float | None = None) -> int | None:
        return self.code

    def stop(self) -> None:
        pass


class _CarelessBuild(FakeRunner):
    """A build whose RUN step prints both secrets (as a careless Dockerfile would), then fails."""

    def spawn(self, argv: Sequence[str], *, on_line: Callable[[str], None], env: Mapping[str, str] | None = None) -> _Exited:  # type: ignore[override]
        self.calls.append(list(argv))
        for line in (
            "#5 [2/2] RUN npm ci",
            f"#5 0.512 npm ERR! 401 Unauthorized with token {TOKEN}",
            f"#5 0.513 {CERT}",
            f"#5 0.513 {CERT_2}",
            '#5 ERROR: process "/bin/sh -c npm ci" did not complete successfully: exit code: 1',
            "------",
            " > [2/2] RUN npm ci:",
            f"#5 0.512 npm ERR! 401 Unauthorized with token {TOKEN}",
            "------",
            f"ERROR: failed to solve: token {TOKEN} refused",
        ):
            on_line(line)
        return _Exited(1)


@pytest.fixture
def secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Path], dict[str, str]]:
    monkeypatch.setenv("NPM_TOKEN", TOKEN)
    cert = tmp_path / "ca.pem"
    cert.write_text(f"{CERT}\n{CERT_2}\n")
    return {"cert": cert}, {"npm": "NPM_TOKEN"}


def test_buildkit_gets_each_secret_by_reference_and_no_output_shows_a_value(
    tmp_path: Path, secrets: tuple[dict[str, Path], dict[str, str]]
) -> None:
    files, env = secrets
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    runner = _CarelessBuild()
    out_buf = io.StringIO()
    out = Output(json_mode=True, stdout=out_buf)
    with pytest.raises(CycleFailed) as e:
        BuildKitCLI(["docker", "build"], {"DOCKER_BUILDKIT": "1"}, runner).build(
            tmp_path, "Dockerfile", "web:dl-1", {}, on_line=lambda line: out.detail(line), secrets=files, secret_env=env
        )
    out.error(e.value)
    (argv,) = runner.calls
    assert "id=npm,env=NPM_TOKEN" in argv and f"id=cert,src={files['cert']}" in argv  # by reference
    said = "\n".join([" ".join(argv), e.value.message, e.value.hint, *e.value.details, out_buf.getvalue()])
    assert "401 Unauthorized with token ***" in said  # the build's words stay, the value does not
    assert TOKEN not in said and CERT not in said and CERT_2 not in said


def test_a_secret_whose_variable_or_file_is_missing_is_named_without_a_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    monkeypatch.delenv("NPM_TOKEN", raising=False)
    builder = BuildKitCLI(["docker", "build"], {}, FakeRunner())
    with pytest.raises(ConfigError, match=r"^build secret 'npm': the environment variable NPM_TOKEN is not set") as e:
        builder.build(tmp_path, "Dockerfile", "web:dl-1", {}, secret_env={"npm": "NPM_TOKEN"})
    assert "export NPM_TOKEN" in e.value.hint and e.value.exit_code == EXIT_USAGE
    with pytest.raises(ConfigError, match=r"build secret 'cert': .* is not a file"):
        builder.build(tmp_path, "Dockerfile", "web:dl-1", {}, secrets={"cert": tmp_path / "nope.pem"})


def test_the_classic_builder_refuses_secrets_saying_they_need_buildkit(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    classic = ClassicSDK(Images(lambda: pytest.fail("a refused build never reaches Docker")))
    with pytest.raises(ConfigError, match="build secrets need BuildKit") as e:
        classic.build(tmp_path, "Dockerfile", "web:dl-1", {}, secret_env={"npm": "NPM_TOKEN"})
    assert "buildx" in e.value.hint


def test_the_engine_hands_the_configs_secrets_to_the_builder_and_reports_no_value(
    sample_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NPM_TOKEN", TOKEN)
    w = World(sample_copy, SECRETS)
    w.engine.up()
    assert w.docker.secrets_seen == [{"npm": "NPM_TOKEN", "cert": sample_copy / "certs" / "ca.pem"}]
    server = sample_copy / "sample-app" / "server.js"
    server.write_text(server.read_text().replace("sample-app v1", "sample-app v2"))
    run(w.engine, [ServiceChange("web-app", rebuild=True, image_files=("server.js",))])
    assert len(w.docker.secrets_seen) == 2
    assert TOKEN not in w.buf.getvalue()


@pytest.mark.parametrize(
    ("secrets", "message"),
    [
        ("[{id: npm}]", "image.secrets[0]: build secret 'npm': give either `env`"),
        ("[{id: npm, env: A, file: f}]", "image.secrets[0]: build secret 'npm': give either `env`"),
        ("[{id: npm, env: A}, {id: npm, file: f}]", "image.secrets: two build secrets have the id 'npm'"),
        ("[{id: npm, env: 'A=1'}]", "image.secrets[0].env"),
        ("[{id: 'a,src=/etc/passwd', env: A}]", "image.secrets[0].id"),
        ("[{id: npm, value: x}]", "image.secrets[0].value: unknown key"),
    ],
)
def test_bad_secrets_are_config_errors_at_their_key(sample_copy: Path, secrets: str, message: str) -> None:
    (sample_copy / "devloop.yaml").write_text(f"image: {{secrets: {secrets}}}\n")
    with pytest.raises(ConfigError) as e:
        config.load(None, sample_copy)
    assert message in e.value.message
