"""The Java client as a user gets it: `mvn deploy` of a fresh copy to a scratch repository (the
jar, the sources and javadoc jars and a POM with what Maven Central requires), then a scratch
project that depends on it through the README's <dependency> snippet and runs the README's
examples against the sidecar."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest
from conftest import (
    REPO,
    Harness,
    code_blocks,
    expect_lines,
    run,
    substitute,
    substitutions,
    tracked_copy,
)

# Builds, installs and compiles: minutes on a busy machine, not the suite's 120 s per test.
pytestmark = pytest.mark.timeout(900)

CLIENT = REPO / "clients" / "java"
README = CLIENT / "README.md"
MAVEN = ["mvn", "-B", "-q", "-Dstyle.color=never"]
NS = {"m": "http://maven.apache.org/POM/4.0.0"}
VERSION = run([REPO / "scripts" / "version"], REPO).strip()
ARTIFACT = Path("dev/rulessidecar/rules-sidecar-client") / VERSION
PROGRAM = """package scratch;

import com.google.protobuf.util.JsonFormat;
import dev.rulessidecar.client.*;
import dev.rulessidecar.v1.*;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Map;

public final class CLASS {
  public static void main(String[] args) throws Exception {
    Node.Builder builder = Node.newBuilder();
    JsonFormat.parser().merge(System.getenv("NODE_JSON"), builder);
    readme(builder.build());
  }

  static void readme(Node node) throws Exception {
BLOCK
EPILOGUE
  }
}
"""
NOT_FOUND_CHECK = """
    try (sidecar) {
      sidecar.getConnector("doc-test-missing");
    } catch (SidecarException e) {
      System.out.println("reached " + e.getStatus().getCode());
    }
"""
# Every java block of the README, in order: what runs after it, what it must print.
README_BLOCKS = [
    ("evaluate a node", "", "show-status shipped"),
    ("tokens and TLS", NOT_FOUND_CHECK, "reached NOT_FOUND"),
]


def scratch_pom(repository: Path, dependency: str) -> str:
    properties = (CLIENT / "pom.xml").read_text()
    protobuf = re.search(r"<protobuf.version>(.*?)</protobuf.version>", properties)
    assert protobuf is not None
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>scratch</groupId>
  <artifactId>scratch</artifactId>
  <version>1</version>
  <properties>
    <project.build.sourceEncoding>UTF-8</project.build.sourceEncoding>
    <maven.compiler.release>17</maven.compiler.release>
  </properties>
  <repositories>
    <repository><id>scratch</id><url>{repository.as_uri()}</url></repository>
  </repositories>
  <dependencies>
{dependency}
    <dependency>
      <groupId>com.google.protobuf</groupId>
      <artifactId>protobuf-java-util</artifactId>
      <version>{protobuf.group(1)}</version>
    </dependency>
  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-compiler-plugin</artifactId>
        <version>3.14.0</version>
      </plugin>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-resources-plugin</artifactId>
        <version>3.3.1</version>
      </plugin>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>3.8.1</version>
      </plugin>
    </plugins>
  </build>
</project>
"""


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file repository holding what `mvn deploy` of a fresh copy of the client publishes."""
    checkout = tracked_copy(CLIENT, tmp_path_factory.mktemp("checkout"))
    published = tmp_path_factory.mktemp("m2-scratch")
    target = f"-DaltDeploymentRepository=scratch::{published.as_uri()}"
    run([*MAVEN, "-Dmaven.test.skip=true", target, "deploy"], checkout)
    return published


@pytest.fixture(scope="module")
def scratch(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = tmp_path_factory.mktemp("scratch-java")
    (dependency,) = [b for b in code_blocks(README, "xml") if "<dependency>" in b]
    (project / "pom.xml").write_text(scratch_pom(repository, dependency))
    return project


def test_deploy_publishes_the_jar_its_sources_and_javadoc_and_a_complete_pom(
    repository: Path,
) -> None:
    published = repository / ARTIFACT
    stem = f"rules-sidecar-client-{VERSION}"
    for suffix in (".jar", "-sources.jar", "-javadoc.jar", ".pom"):
        assert (published / f"{stem}{suffix}").is_file(), f"{stem}{suffix} was not published"
    with zipfile.ZipFile(published / f"{stem}-sources.jar") as sources:
        assert "dev/rulessidecar/client/RulesSidecarClient.java" in sources.namelist()
    with zipfile.ZipFile(published / f"{stem}-javadoc.jar") as javadoc:
        assert "dev/rulessidecar/client/RulesSidecarClient.html" in javadoc.namelist()
    pom = ET.parse(published / f"{stem}.pom").getroot()  # noqa: S314 (our own build output)
    # What Maven Central refuses a POM without.
    for path in (
        "m:name",
        "m:description",
        "m:url",
        "m:licenses/m:license/m:name",
        "m:licenses/m:license/m:url",
        "m:developers/m:developer/m:name",
        "m:scm/m:connection",
        "m:scm/m:url",
    ):
        element = pom.find(path, NS)
        assert element is not None, f"the POM has no {path}"
        assert (element.text or "").strip(), f"the POM's {path} is empty"


def test_the_readme_has_the_java_blocks_this_test_runs() -> None:
    assert len(code_blocks(README, "java")) == len(README_BLOCKS), (
        "clients/java/README.md gained or lost a java block: add it to README_BLOCKS"
    )


def test_the_readme_examples_compile_against_the_published_jar_and_run(
    scratch: Path, repository: Path, harness: Harness, token_file: Path, node_json: str
) -> None:
    blocks = code_blocks(README, "java")
    replacements = substitutions(harness, token_file)
    sources = scratch / "src" / "main" / "java" / "scratch"
    sources.mkdir(parents=True)
    for index, (_, epilogue, _) in enumerate(README_BLOCKS):
        block = substitute(blocks[index], replacements)
        program = PROGRAM.replace("CLASS", f"Readme{index}").replace("EPILOGUE", epilogue)
        (sources / f"Readme{index}.java").write_text(program.replace("BLOCK", block))
    run([*MAVEN, "compile", "dependency:build-classpath", "-Dmdep.outputFile=cp.txt"], scratch)
    classpath = (scratch / "cp.txt").read_text().strip()
    jar = f"{ARTIFACT}/rules-sidecar-client-{VERSION}.jar"
    assert jar in classpath, "the client came from somewhere else than the scratch repository"
    for index, (_, _, expected) in enumerate(README_BLOCKS):
        output = run(
            ["java", "-cp", f"target/classes:{classpath}", f"scratch.Readme{index}"],
            scratch,
            env={"NODE_JSON": node_json},
        )
        expect_lines(output, expected)
