// clients/testdata/vectors.json through the TypeScript client: the same cases every client runs.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { fromJson, type JsonObject, type JsonValue } from "@bufbuild/protobuf";
import {
  ConnectorSchema,
  EvaluationModeSchema,
  NodeSchema,
  OutcomeSchema,
  ReasonSchema,
  RulesSidecarClient,
} from "../src/index.js";
import { loadVectors, startHarness, type Harness } from "./harness.js";

describe("vectors", () => {
  let harness: Harness;
  let sidecar: RulesSidecarClient;
  before(async () => {
    harness = await startHarness();
    sidecar = new RulesSidecarClient(harness.addresses.sidecar);
  });
  after(async () => {
    sidecar.close();
    await harness.stop();
  });

  for (const vector of loadVectors()) {
    test(vector.name, async () => {
      const connectorJson = JSON.stringify(vector.connector).replaceAll("${UPSTREAM}", harness.addresses.upstream);
      await sidecar.registerConnector(fromJson(ConnectorSchema, JSON.parse(connectorJson) as JsonValue));
      const mode = EvaluationModeSchema.values.find((value) => value.name === (vector.mode ?? "EVALUATION_MODE_UNSPECIFIED"));
      const answer = await sidecar.evaluateNode(
        fromJson(NodeSchema, vector.node as JsonValue),
        vector.variables as JsonObject,
        { mode: mode!.number },
      );
      const expected = vector.expect;
      assert.deepEqual(
        {
          outcome: OutcomeSchema.value[answer.outcome]!.name,
          reason: ReasonSchema.value[answer.reason]!.name,
          target: answer.target,
          branch_index: answer.branchIndex ?? null,
          http_status: answer.httpStatus,
        },
        {
          outcome: expected.outcome,
          reason: expected.reason,
          target: expected.target,
          branch_index: expected.branch_index,
          http_status: expected.http_status,
        },
        answer.message,
      );
      assert.deepEqual(answer.variables ?? {}, expected.variables);
    });
  }
});
