package dev.rulessidecar.client;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.attribute.BasicFileAttributes;
import java.util.Arrays;
import java.util.List;
import java.util.Objects;
import java.util.function.Supplier;

/**
 * A bearer token read from a file and read again when the file changes: a token mounted from a
 * Kubernetes Secret is rotated without a restart. One stat per call; the file is read again when
 * its file key (inode), size or modification time changes. Surrounding whitespace is stripped.
 */
public final class TokenFile implements Supplier<String> {
  private final Path path;
  private List<Object> seen;
  private String token;

  public TokenFile(Path path) {
    this.path = Objects.requireNonNull(path);
  }

  /** The current token; an unreadable file throws UncheckedIOException (the call then fails). */
  @Override
  public synchronized String get() {
    try {
      BasicFileAttributes attributes = Files.readAttributes(path, BasicFileAttributes.class);
      List<Object> now = Arrays.asList(
          attributes.fileKey(), attributes.size(), attributes.lastModifiedTime());
      if (!now.equals(seen)) {
        token = Files.readString(path, StandardCharsets.UTF_8).strip();
        seen = now;
      }
      return token;
    } catch (IOException e) {
      throw new UncheckedIOException("cannot read the token file " + path, e);
    }
  }
}
