# The benchmark's node as Rego, for OPA's row of `make bench` (bench/run.py): the same GET with
# the API key from the environment, the same three conditions over two branches and an else, the
# same two extractions. OPA answers POST /v1/data/sidecar/decision {"input": {"variables": ...}}.
package sidecar

response := http.send({
	"method": "GET",
	"url": concat("", [opa.runtime().env.BENCH_UPSTREAM, urlquery.encode(input.variables.order_number)]),
	"headers": {"X-API-Key": opa.runtime().env.BENCH_API_KEY},
	"timeout": "5s",
	"raise_error": false,
})

status := object.get(response, ["body", "status"], null)

target := "show-status" if {
	response.status_code >= 200
	response.status_code <= 299
	status == "shipped"
} else := "processing" if {
	status in {"processing", "packed"}
} else := "not-found"

decision := {
	"target": target,
	"variables": {
		"order_status": status,
		"carrier": object.get(response, ["body", "carrier", "name"], null),
	},
}
