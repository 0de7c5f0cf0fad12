package dev.rulessidecar.client;

import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import com.google.protobuf.util.JsonFormat;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * clients/testdata/harness.py (a real sidecar and a loopback upstream, and two secured sidecars:
 * tokens and TLS, tokens and mTLS) for one test class.
 */
final class Harness implements AutoCloseable {
  static final Path TESTDATA = Path.of("..", "testdata").toAbsolutePath().normalize();
  private static final Path PYTHON = Path.of("..", "..", ".venv", "bin", "python");

  final String sidecar;
  final String sidecarUnix;
  final String upstream;
  final String silent;
  final String secureSidecar;
  final String mtlsSidecar;
  final Path caFile;
  final Path clientCertFile;
  final Path clientKeyFile;
  final String adminToken;
  final String evaluationToken;
  private final Process process;

  private Harness(Process process, Struct addresses) {
    this.process = process;
    this.sidecar = addresses.getFieldsOrThrow("sidecar").getStringValue();
    this.sidecarUnix = addresses.getFieldsOrThrow("sidecar_unix").getStringValue();
    this.upstream = addresses.getFieldsOrThrow("upstream").getStringValue();
    this.silent = addresses.getFieldsOrThrow("silent").getStringValue();
    this.secureSidecar = addresses.getFieldsOrThrow("secure_sidecar").getStringValue();
    this.mtlsSidecar = addresses.getFieldsOrThrow("mtls_sidecar").getStringValue();
    this.caFile = Path.of(addresses.getFieldsOrThrow("ca_file").getStringValue());
    this.clientCertFile = Path.of(addresses.getFieldsOrThrow("client_cert_file").getStringValue());
    this.clientKeyFile = Path.of(addresses.getFieldsOrThrow("client_key_file").getStringValue());
    this.adminToken = addresses.getFieldsOrThrow("admin_token").getStringValue();
    this.evaluationToken = addresses.getFieldsOrThrow("evaluation_token").getStringValue();
  }

  static Harness start() throws IOException {
    Process process = new ProcessBuilder(PYTHON.toString(), TESTDATA.resolve("harness.py").toString())
        .redirectError(ProcessBuilder.Redirect.INHERIT)
        .start();
    BufferedReader stdout = new BufferedReader(
        new InputStreamReader(process.getInputStream(), StandardCharsets.UTF_8));
    String line = stdout.readLine();
    if (line == null) {
      throw new IOException("the harness exited before it was ready (run scripts/bootstrap first)");
    }
    Struct.Builder addresses = Struct.newBuilder();
    JsonFormat.parser().merge(line, addresses);
    return new Harness(process, addresses.build());
  }

  /** The cases of clients/testdata/vectors.json, each a Struct of proto3 JSON. */
  static List<Struct> vectors() throws IOException {
    Struct.Builder document = Struct.newBuilder();
    JsonFormat.parser().merge(Files.readString(TESTDATA.resolve("vectors.json")), document);
    return document.getFieldsOrThrow("cases").getListValue().getValuesList().stream()
        .map(Value::getStructValue)
        .toList();
  }

  @Override
  public void close() throws IOException {
    process.getOutputStream().close(); // the harness stops the sidecar and cleans up
    try {
      if (!process.waitFor(30, TimeUnit.SECONDS)) {
        process.destroyForcibly();
      }
    } catch (InterruptedException e) {
      process.destroyForcibly();
      Thread.currentThread().interrupt();
    }
  }
}
