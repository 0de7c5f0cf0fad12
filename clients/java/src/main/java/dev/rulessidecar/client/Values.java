package dev.rulessidecar.client;

import com.google.protobuf.ListValue;
import com.google.protobuf.NullValue;
import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * Conversions between plain Java values and {@code google.protobuf.Struct} / {@code Value}.
 *
 * <p>Into protobuf: {@code null}, {@link Boolean}, {@link Number}, {@link CharSequence}, {@link
 * Map} with string keys, {@link Iterable}, arrays of objects, and {@link Value} as is. Out of
 * protobuf: {@code null}, {@link Boolean}, {@link String}, {@link Long} for integral numbers (up to
 * 2<sup>53</sup>), else {@link Double}, unmodifiable {@link List} and {@link Map} (keys in order).
 *
 * <pre>{@code
 * Struct variables = Values.toStruct(Map.of("order_number", "A-10023"));
 * Condition condition = Condition.newBuilder().setOperand(Values.toValue("2xx")).build();
 * }</pre>
 */
public final class Values {
  private static final double LARGEST_EXACT_INTEGER = 0x1p53;

  private Values() {}

  /** A Struct from a map of plain values. */
  public static Struct toStruct(Map<String, ?> map) {
    Struct.Builder struct = Struct.newBuilder();
    map.forEach((name, value) -> struct.putFields(name, toValue(value)));
    return struct.build();
  }

  /** A Value from a plain value; IllegalArgumentException for anything JSON cannot hold. */
  public static Value toValue(Object value) {
    if (value == null) {
      return Value.newBuilder().setNullValue(NullValue.NULL_VALUE).build();
    }
    if (value instanceof Value protoValue) {
      return protoValue;
    }
    if (value instanceof Boolean bool) {
      return Value.newBuilder().setBoolValue(bool).build();
    }
    if (value instanceof Number number) {
      return Value.newBuilder().setNumberValue(number.doubleValue()).build();
    }
    if (value instanceof CharSequence text) {
      return Value.newBuilder().setStringValue(text.toString()).build();
    }
    if (value instanceof Map<?, ?> map) {
      Struct.Builder struct = Struct.newBuilder();
      map.forEach((name, item) -> {
        if (!(name instanceof String key)) {
          throw new IllegalArgumentException("map keys must be strings, not " + name);
        }
        struct.putFields(key, toValue(item));
      });
      return Value.newBuilder().setStructValue(struct).build();
    }
    if (value instanceof Iterable<?> items) {
      ListValue.Builder list = ListValue.newBuilder();
      items.forEach(item -> list.addValues(toValue(item)));
      return Value.newBuilder().setListValue(list).build();
    }
    if (value instanceof Object[] items) {
      return toValue(List.of(items));
    }
    throw new IllegalArgumentException("not a JSON value: " + value.getClass().getName());
  }

  /** The plain map of a Struct. */
  public static Map<String, Object> toMap(Struct struct) {
    Map<String, Object> map = new LinkedHashMap<>();
    struct.getFieldsMap().forEach((name, value) -> map.put(name, toJava(value)));
    return Collections.unmodifiableMap(map);
  }

  /** The plain value of a Value. */
  public static Object toJava(Value value) {
    switch (value.getKindCase()) {
      case BOOL_VALUE:
        return value.getBoolValue();
      case NUMBER_VALUE:
        double number = value.getNumberValue();
        boolean exact = number == Math.rint(number) && Math.abs(number) <= LARGEST_EXACT_INTEGER;
        return exact ? (Object) (long) number : (Object) number;
      case STRING_VALUE:
        return value.getStringValue();
      case STRUCT_VALUE:
        return toMap(value.getStructValue());
      case LIST_VALUE:
        List<Object> list = new ArrayList<>();
        value.getListValue().getValuesList().forEach(item -> list.add(toJava(item)));
        return Collections.unmodifiableList(list);
      default:
        return null;
    }
  }
}
