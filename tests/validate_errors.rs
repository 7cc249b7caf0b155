//! Table-driven: break the shipped config one way at a time and check that
//! `syncflow validate` names the exact file:line:col and message.

mod common;

use std::path::Path;
use std::process::Command;

use common::{edit, shipped_config};

/// Runs `syncflow validate` and returns (exit code, error lines).
fn validate(dir: &Path) -> (i32, Vec<String>) {
    let out = Command::new(env!("CARGO_BIN_EXE_syncflow"))
        .args(["validate", "--dir"])
        .arg(dir)
        .env_remove("SYNCFLOW_TEST_UNSET")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines = stdout
        .lines()
        .filter(|l| l.contains(": error: "))
        .map(str::to_string)
        .collect();
    (out.status.code().unwrap(), lines)
}

/// The `file:line:col` of each error line.
fn places(lines: &[String]) -> Vec<&str> {
    lines
        .iter()
        .map(|l| l.split(": error: ").next().unwrap())
        .collect()
}

const HUBSPOT_PIPELINE: &str = "pipelines/contacts-to-hubspot.yaml";
const HUBSPOT_PROVIDER: &str = "providers/hubspot.yaml";

struct Case {
    name: &'static str,
    file: &'static str,
    from: &'static str,
    to: &'static str,
    expect: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "typo'd provider",
        file: HUBSPOT_PIPELINE,
        from: "provider: hubspot",
        to: "provider: hubspt",
        expect: &[
            r#"pipelines/contacts-to-hubspot.yaml:22:13: error: unknown provider "hubspt" (did you mean "hubspot"?)"#,
        ],
    },
    Case {
        name: "a window header that is no header name",
        file: HUBSPOT_PROVIDER,
        from: "remaining_header: X-HubSpot-RateLimit-Remaining",
        to: "remaining_header: \"X HubSpot Remaining\"",
        expect: &[
            r#"providers/hubspot.yaml:5:69: error: "X HubSpot Remaining" is not a valid header name"#,
        ],
    },
    Case {
        name: "typo'd object",
        file: HUBSPOT_PIPELINE,
        from: "object: contact",
        to: "object: contcat",
        expect: &[
            r#"pipelines/contacts-to-hubspot.yaml:23:11: error: provider "hubspot" has no object "contcat" (did you mean "contact"?)"#,
        ],
    },
    Case {
        name: "a mapping key YAML reads as a number",
        file: HUBSPOT_PIPELINE,
        from: "  properties.phone: $.phone\n",
        to: "  properties.phone: $.phone\n  5: $.fax\n",
        expect: &[
            r#"pipelines/contacts-to-hubspot.yaml:30:3: error: mapping key 5 is a number; output paths are strings (quote it: "5")"#,
        ],
    },
    Case {
        name: "typo'd action",
        file: HUBSPOT_PIPELINE,
        from: "then: update",
        to: "then: updte",
        expect: &[
            r#"pipelines/contacts-to-hubspot.yaml:20:11: error: unknown action "updte" (did you mean "update"?); expected one of create, update, upsert, delete, read, skip"#,
        ],
    },
    Case {
        name: "action the object has no endpoint for",
        file: HUBSPOT_PROVIDER,
        from: "    delete: { method: DELETE, path: \"/crm/v3/objects/contacts/{id}\" }\n",
        to: "",
        expect: &[
            r#"pipelines/contacts-to-hubspot.yaml:16:11: error: delete: provider "hubspot" object "contact" has no delete endpoint"#,
        ],
    },
    Case {
        name: "unknown key",
        file: HUBSPOT_PROVIDER,
        from: "max_in_flight: 32",
        to: "max_inflight: 32",
        expect: &[
            r#"providers/hubspot.yaml:6:1: error: unknown key "max_inflight" (did you mean "max_in_flight"?)"#,
        ],
    },
    Case {
        name: "Rhai syntax error",
        file: HUBSPOT_PIPELINE,
        from: "- if: 'event.op == \"c\" && record.company != ()'",
        to: "- if: 'event.op == \"c\" && record.company !='",
        expect: &[
            r#"pipelines/contacts-to-hubspot.yaml:17:46: error: invalid Rhai script: the script ends too early (a value or a closing bracket is missing)"#,
        ],
    },
    Case {
        name: "bad JSONPath",
        file: HUBSPOT_PIPELINE,
        from: "key: $.after.id ",
        to: "key: $.after[id ",
        expect: &[
            r#"pipelines/contacts-to-hubspot.yaml:9:14: error: invalid JSONPath "$.after[id": expected selector"#,
        ],
    },
    Case {
        name: "missing schema file",
        file: HUBSPOT_PIPELINE,
        from: "input_schema: schemas/internal/contact.json",
        to: "input_schema: schemas/internal/contacts.json",
        expect: &[
            r#"pipelines/contacts-to-hubspot.yaml:12:15: error: cannot read schema schemas/internal/contacts.json: No such file or directory (os error 2)"#,
        ],
    },
    Case {
        name: "broken schema",
        file: "schemas/hubspot/contact.json",
        from: r#""lifecyclestage": { "enum": ["lead", "customer", "other"] }"#,
        to: r#""lifecyclestage": { "type": "strng" }"#,
        expect: &[
            r#"schemas/hubspot/contact.json:14:29: error: invalid JSON Schema: keyword "type": "strng" is not valid under any of the schemas listed in the 'anyOf' keyword"#,
        ],
    },
    Case {
        name: "bad duration",
        file: HUBSPOT_PROVIDER,
        from: "timeout: 10s",
        to: "timeout: 10 sec",
        expect: &[
            r#"providers/hubspot.yaml:7:10: error: invalid duration "10 sec": expected a number and a unit (ms, s, m, h, d), for example 200ms or 10s"#,
        ],
    },
    Case {
        name: "unset env var",
        file: HUBSPOT_PROVIDER,
        from: "\"${HUBSPOT_URL:-http://127.0.0.1:18080/hubspot}\"",
        to: "\"${SYNCFLOW_TEST_UNSET}/hubspot\"",
        expect: &[
            r#"providers/hubspot.yaml:2:12: error: environment variable SYNCFLOW_TEST_UNSET is not set (set it, or give a default: ${SYNCFLOW_TEST_UNSET:-value})"#,
        ],
    },
    Case {
        name: "YAML syntax error",
        file: HUBSPOT_PIPELINE,
        from: "record: $.after\n",
        to: "record: $.after\n  oops: [\n",
        expect: &[
            r#"pipelines/contacts-to-hubspot.yaml:11:7: error: invalid YAML: mapping values are not allowed in this context"#,
        ],
    },
    Case {
        name: "failing pipeline test",
        file: HUBSPOT_PIPELINE,
        from: "company: \"ANALYTICAL\"",
        to: "company: \"Analytical\"",
        expect: &[
            r#"pipelines/contacts-to-hubspot.yaml:34:11: error: test "create with a company" failed: output differs: expected {"properties":{"company":"Analytical","email":"ada@example.com","firstname":"Ada","lastname":"Lovelace","lifecyclestage":"customer"}}, actual {"properties":{"company":"ANALYTICAL","email":"ada@example.com","firstname":"Ada","lastname":"Lovelace","lifecyclestage":"customer"}}"#,
        ],
    },
    Case {
        name: "a target that is both a provider object and a subject",
        file: HUBSPOT_PIPELINE,
        from: "  object: contact\n",
        to: "  object: contact\n  nats: { subject: systema.contacts }\n",
        expect: &[
            r#"pipelines/contacts-to-hubspot.yaml:24:9: error: a target is either a provider object (provider, object) or a NATS subject (nats), not both"#,
        ],
    },
    Case {
        name: "a provider without an object",
        file: HUBSPOT_PIPELINE,
        from: "  object: contact\n",
        to: "",
        expect: &[
            r#"pipelines/contacts-to-hubspot.yaml:22:13: error: the target names a provider but no object"#,
        ],
    },
    Case {
        name: "a subject target with a wildcard",
        file: HUBSPOT_PIPELINE,
        from: "  provider: hubspot\n  object: contact\n",
        to: "  nats: { subject: \"systema.*.{key}\" }\n",
        expect: &[
            r#"pipelines/contacts-to-hubspot.yaml:22:20: error: subject "systema.*.{key}" has a wildcard: records are published to one subject each"#,
        ],
    },
    Case {
        name: "a script that would block",
        file: HUBSPOT_PIPELINE,
        from: "when: 'event.op",
        to: "when: 'sleep(5); event.op",
        expect: &[
            r#"pipelines/contacts-to-hubspot.yaml:13:8: error: invalid Rhai script: function "sleep" is not available: a script must not block the pipeline"#,
        ],
    },
    Case {
        name: "a duration too long to hold",
        file: HUBSPOT_PROVIDER,
        from: "timeout: 10s",
        to: "timeout: 99999999999999999999h",
        expect: &[
            r#"providers/hubspot.yaml:7:10: error: duration "99999999999999999999h" is too long: at most 366 days (8784h)"#,
        ],
    },
    Case {
        name: "numbers out of range",
        file: HUBSPOT_PROVIDER,
        from: "max_in_flight: 32",
        to: "max_in_flight: 0",
        expect: &[
            r#"providers/hubspot.yaml:6:16: error: max_in_flight must be between 1 and 512, not 0"#,
        ],
    },
    Case {
        name: "a byte bound below one kilobyte",
        file: HUBSPOT_PIPELINE,
        from: r#"subject: "cdc.contacts.>""#,
        to: "subject: \"cdc.contacts.>\"\n    max_ack_pending_bytes: 100",
        expect: &[
            r#"pipelines/contacts-to-hubspot.yaml:8:28: error: source.nats.max_ack_pending_bytes must be between 1024 and 1073741824, not 100"#,
        ],
    },
    Case {
        name: "tls on an http provider, without its key, with files that are not there",
        file: HUBSPOT_PROVIDER,
        from: "max_in_flight: 32",
        to: "max_in_flight: 32\ntls: { ca: certs/none.pem, cert: certs/c.pem }",
        expect: &[
            r#"providers/hubspot.yaml:7:6: error: tls is for a provider whose base_url is https"#,
            r#"providers/hubspot.yaml:7:6: error: tls.cert and tls.key go together (a client certificate and its key)"#,
            r#"providers/hubspot.yaml:7:12: error: no file at "certs/none.pem""#,
            r#"providers/hubspot.yaml:7:34: error: no file at "certs/c.pem""#,
        ],
    },
    Case {
        name: "a tls.ca that holds no certificate",
        file: HUBSPOT_PROVIDER,
        from: r#"base_url: "${HUBSPOT_URL:-http://127.0.0.1:18080/hubspot}""#,
        to: "base_url: https://crm.example/hubspot\ntls: { ca: syncflow.yaml }",
        expect: &[
            r#"providers/hubspot.yaml:3:6: error: tls.ca: syncflow.yaml: no PEM certificate in it"#,
        ],
    },
    Case {
        name: "credentials in base_url",
        file: HUBSPOT_PROVIDER,
        from: r#"base_url: "${HUBSPOT_URL:-http://127.0.0.1:18080/hubspot}""#,
        to: r#"base_url: "http://user:pw@127.0.0.1:18080/hubspot""#,
        expect: &[
            r#"providers/hubspot.yaml:2:11: error: base_url must not hold credentials (user:password@): put them in auth, where they are never logged"#,
        ],
    },
    Case {
        name: "fleet settings out of range and an instance name leases cannot carry",
        file: "syncflow.yaml",
        from: "http:",
        to: "fleet: { partitions: 0, failover: 100ms, instance: \"a.b\" }\nhttp:",
        expect: &[
            r#"syncflow.yaml:4:22: error: fleet.partitions must be between 1 and 1024, not 0"#,
            r#"syncflow.yaml:4:35: error: fleet.failover must be between 500ms and 5m, not 100ms"#,
            r#"syncflow.yaml:4:52: error: fleet.instance must be letters, digits, '-' or '_', not "a.b""#,
        ],
    },
];

/// Broken two-way configs: links, inbound pipelines, webhooks and polls
/// (on a copy of `examples/two-way`).
const TWO_WAY_CASES: &[Case] = &[
    Case {
        name: "link to a typo'd provider",
        file: "links/contacts-hubspot.yaml",
        from: "external: { provider: hubspot,",
        to: "external: { provider: hubspt,",
        expect: &[
            r#"links/contacts-hubspot.yaml:3:23: error: unknown provider "hubspt" (did you mean "hubspot"?)"#,
        ],
    },
    Case {
        name: "link to a typo'd object",
        file: "links/contacts-hubspot.yaml",
        from: "external: { provider: hubspot, object: contact }",
        to: "external: { provider: hubspot, object: contcat }",
        expect: &[
            r#"links/contacts-hubspot.yaml:3:40: error: provider "hubspot" has no object "contcat" (did you mean "contact"?)"#,
        ],
    },
    Case {
        // The link's name is still known: its pipelines are not told "unknown link".
        name: "unknown policy",
        file: "links/contacts-hubspot.yaml",
        from: "policy: provider",
        to: "policy: crm",
        expect: &[
            r#"links/contacts-hubspot.yaml:9:79: error: unknown value "crm"; expected one of latest, internal, provider"#,
        ],
    },
    Case {
        name: "a field named twice (YAML would keep one silently)",
        file: "links/contacts-hubspot.yaml",
        from: "  phone:      { internal: phone,",
        to: "  email:      { internal: phone,",
        expect: &[
            r#"links/contacts-hubspot.yaml:9:3: error: duplicate key "email" (first at line 6)"#,
        ],
    },
    Case {
        name: "a field path that is not one",
        file: "links/contacts-hubspot.yaml",
        from: "external: properties.phone,",
        to: "external: properties..phone,",
        expect: &[
            r#"links/contacts-hubspot.yaml:9:49: error: "properties..phone" is not a dotted path (a.b.c)"#,
        ],
    },
    Case {
        name: "pipeline of a typo'd link",
        file: "pipelines/hubspot-to-contacts.yaml",
        from: "link: contacts-hubspot",
        to: "link: contacts-hubspt",
        expect: &[
            r#"pipelines/hubspot-to-contacts.yaml:25:9: error: unknown link "contacts-hubspt" (did you mean "contacts-hubspot"?)"#,
        ],
    },
    Case {
        name: "inbound pipeline writing elsewhere than the link's internal side",
        file: "pipelines/hubspot-to-contacts.yaml",
        from: "target: { provider: system_a, object: contact }",
        to: "target: { provider: salesforce, object: contact }",
        expect: &[
            r#"pipelines/hubspot-to-contacts.yaml:14:9: error: an inbound pipeline of link "contacts-hubspot" writes to the link's internal side: its target must be the same"#,
        ],
    },
    Case {
        name: "external_id on an inbound pipeline",
        file: "pipelines/hubspot-to-contacts.yaml",
        from: "internal_id: $.properties.syncflow_key",
        to: "external_id: $.properties.syncflow_key",
        expect: &[
            r#"pipelines/hubspot-to-contacts.yaml:29:16: error: external_id is for outbound pipelines (System A's record naming the provider's id)"#,
        ],
    },
    Case {
        name: "unknown direction",
        file: "pipelines/hubspot-to-contacts.yaml",
        from: "direction: inbound",
        to: "direction: inward",
        expect: &[
            r#"pipelines/hubspot-to-contacts.yaml:26:14: error: unknown value "inward"; expected one of outbound, inbound"#,
        ],
    },
    Case {
        name: "unknown signature scheme",
        file: "providers/hubspot.yaml",
        from: "scheme: hubspot_v3",
        to: "scheme: hubspot_v2",
        expect: &[
            r#"providers/hubspot.yaml:27:26: error: unknown value "hubspot_v2" (did you mean "hubspot_v3"?); expected one of hubspot_v3, hmac_sha256"#,
        ],
    },
    Case {
        name: "typo'd envelope field",
        file: "providers/hubspot.yaml",
        from: "id: $.eventId",
        to: "idd: $.eventId",
        expect: &[
            r#"providers/hubspot.yaml:30:7: error: unknown envelope field "idd" (did you mean "id"?); the fields are id, object, record_id, occurred_at, change, record, ours"#,
            r#"providers/hubspot.yaml:30:7: error: the event mapping needs "id" (a JSONPath or { expr })"#,
        ],
    },
    Case {
        name: "broken Rhai in the event mapping",
        file: "providers/hubspot.yaml",
        from: r#"ours: { expr: 'record.changeSource == "INTEGRATION"' }"#,
        to: r#"ours: { expr: 'record.changeSource == ' }"#,
        expect: &[
            r#"providers/hubspot.yaml:36:45: error: invalid Rhai script: the script ends too early (a value or a closing bracket is missing)"#,
        ],
    },
    Case {
        name: "a precondition on a create",
        file: "providers/salesforce.yaml",
        from: "id_from: $.id }",
        to: "id_from: $.id, unmodified_since: { header: If-Unmodified-Since, format: ms } }",
        expect: &[
            r#"providers/salesforce.yaml:14:109: error: unmodified_since belongs on an update or delete endpoint"#,
        ],
    },
    Case {
        name: "poll of an object the provider lacks",
        file: "providers/salesforce.yaml",
        from: "    contact:\n      every",
        to: "    contcat:\n      every",
        expect: &[
            r#"providers/salesforce.yaml:25:5: error: the provider has no object "contcat" (did you mean "contact"?)"#,
        ],
    },
    Case {
        name: "poll every 0s",
        file: "providers/salesforce.yaml",
        from: "every: 1s",
        to: "every: 0s",
        expect: &[
            r#"providers/salesforce.yaml:26:14: error: inbound.poll.contact.every must be between 100ms and 1h, not 0ms"#,
        ],
    },
    Case {
        name: "poll request without its cursor",
        file: "providers/salesforce.yaml",
        from: "since={since}&",
        to: "since=&",
        expect: &[
            r#"providers/salesforce.yaml:27:24: error: path "/services/data/v60.0/sobjects/Contact/changes?since=&after_id={after_id}&limit={limit}" needs {since}: the cursor"#,
        ],
    },
];

const BATCH_HUBSPOT: &str = "providers/hubspot.yaml";

/// Broken credentials per account (on a copy of `examples/accounts`).
const ACCOUNTS_CASES: &[Case] = &[
    Case {
        name: "oauth2 without its client id",
        file: "providers/hubspot.yaml",
        from: "    client_id: \"${HUBSPOT_CLIENT_ID:-syncflow-app}\"\n",
        to: "",
        expect: &[
            "providers/hubspot.yaml:13:5: error: kind: oauth2 needs client_id (the OAuth2 app's, the same for every account)",
        ],
    },
    Case {
        name: "bearer with the OAuth2 keys",
        file: "providers/salesforce.yaml",
        from: "    kind: oauth2",
        to: "    kind: bearer",
        expect: &[
            "providers/salesforce.yaml:11:16: error: token_url is for kind: oauth2; a bearer account's stored token is sent as it is",
            "providers/salesforce.yaml:12:16: error: client_id is for kind: oauth2; a bearer account's stored token is sent as it is",
            "providers/salesforce.yaml:13:20: error: client_secret is for kind: oauth2; a bearer account's stored token is sent as it is",
        ],
    },
    Case {
        name: "pipeline without an account to a provider with credentials per account",
        file: "pipelines/contacts-to-hubspot.yaml",
        from: "account: $.after.tenant_id ",
        to: "# account: $.after.tenant_id ",
        expect: &[
            r#"pipelines/contacts-to-hubspot.yaml:23:13: error: provider "hubspot" takes credentials per account (auth.per_account): the pipeline must say whose records it carries (account: $.tenant_id)"#,
        ],
    },
    Case {
        name: "a provider-wide token beside per_account",
        file: "providers/hubspot.yaml",
        from: "auth:\n",
        to: "auth:\n  bearer: x\n",
        expect: &[
            "providers/hubspot.yaml:12:3: error: auth takes exactly one of bearer, header { name, value }, basic { username, password } or per_account { kind, ... }",
        ],
    },
    Case {
        name: "credentials per account without a rate limit",
        file: "providers/hubspot.yaml",
        from: "rate_limit: { requests: 100, per: 10s, burst: 10, remaining_header: X-HubSpot-RateLimit-Remaining }\n",
        to: "",
        expect: &[
            "providers/hubspot.yaml:13:5: error: credentials per account need a rate_limit (applied per account): it bounds the records an account with refused credentials holds back",
        ],
    },
    Case {
        name: "token_url neither a path nor a URL",
        file: "providers/hubspot.yaml",
        from: "token_url: /oauth/v1/token ",
        to: "token_url: oauth/v1/token ",
        expect: &[
            r#"providers/hubspot.yaml:14:16: error: token_url "oauth/v1/token" must be a path under base_url (/oauth/v1/token) or an http(s) URL"#,
        ],
    },
];

/// Broken batch endpoints (on a copy of `examples/batch`).
const BATCH_CASES: &[Case] = &[
    Case {
        name: "no records per batch",
        file: BATCH_HUBSPOT,
        from: "max_records: 100 ",
        to: "max_records: 0 ",
        expect: &[
            "providers/hubspot.yaml:32:20: error: objects.contact.batch.max_records must be between 1 and 10000, not 0",
        ],
    },
    Case {
        name: "results matched by a trace id syncflow does not set",
        file: BATCH_HUBSPOT,
        from: "        trace: objectWriteTraceId   # set by syncflow on each input\n",
        to: "",
        expect: &[
            "providers/hubspot.yaml:38:16: error: response.trace needs request.trace: the field of each record where syncflow puts the trace id",
            "providers/hubspot.yaml:40:17: error: response.errors needs request.trace: failures listed apart are matched to records by trace id",
        ],
    },
    Case {
        name: "broken JSONPath in the answer",
        file: BATCH_HUBSPOT,
        from: "error_code: $.category",
        to: "error_code: $.category[",
        expect: &[
            r#"providers/hubspot.yaml:43:32: error: invalid JSONPath "$.category[": expected selector"#,
        ],
    },
    Case {
        name: "unknown placeholder in an item",
        file: BATCH_HUBSPOT,
        from: r#"batch/update, item: { id: "{id}" }"#,
        to: r#"batch/update, item: { id: "{idd}" }"#,
        expect: &[
            r#"providers/hubspot.yaml:47:88: error: an item field is "{key}", "{id}" or a constant, not "{idd}""#,
        ],
    },
    Case {
        name: "batch endpoint without its single one",
        file: BATCH_HUBSPOT,
        from: "    delete: { method: DELETE, path: \"/crm/v3/objects/contacts/{id}\" }\n",
        to: "",
        expect: &[
            "providers/hubspot.yaml:47:15: error: batch.delete needs a single-record delete endpoint beside it (objects.contact.delete): records that cannot go in a batch use it",
        ],
    },
];

const GLOBALS: &str = "syncflow.yaml";
const REDIS_LINE: &str = r#"redis: { url: "${REDIS_URL:-redis://127.0.0.1:6379}" }"#;

/// `redis.sentinel` instead of `redis.url` (README, "Redis Sentinel").
const SENTINEL_CASES: &[Case] = &[
    Case {
        name: "sentinel beside a url",
        file: GLOBALS,
        from: REDIS_LINE,
        to: r#"redis: { url: "redis://10.0.0.5:6379", sentinel: { master: mymaster, urls: [redis://127.0.0.1:26379] } }"#,
        expect: &[
            r#"syncflow.yaml:3:15: error: redis.url and redis.sentinel both say where Redis is: with sentinel, the sentinels name the primary; remove url"#,
        ],
    },
    Case {
        name: "sentinel without a master name or a sentinel",
        file: GLOBALS,
        from: REDIS_LINE,
        to: r#"redis: { sentinel: { master: "", urls: [] } }"#,
        expect: &[
            r#"syncflow.yaml:3:30: error: redis.sentinel.master must be the name the sentinels monitor the primary by, such as mymaster"#,
            r#"syncflow.yaml:3:40: error: redis.sentinel.urls needs at least one sentinel, such as redis://127.0.0.1:26379"#,
        ],
    },
    Case {
        name: "sentinel url that is not redis://",
        file: GLOBALS,
        from: REDIS_LINE,
        to: "redis:\n  sentinel:\n    master: mymaster\n    urls:\n      - redis://127.0.0.1:26379\n      - \"http://:secret@127.0.0.1:26380\"",
        expect: &[
            r#"syncflow.yaml:8:9: error: a sentinel url must be redis://host:port, not "http://:***@127.0.0.1:26380""#,
        ],
    },
    Case {
        name: "sentinel with tls",
        file: GLOBALS,
        from: REDIS_LINE,
        to: r#"redis: { sentinel: { master: mymaster, urls: [redis://127.0.0.1:26379] }, tls: {} }"#,
        expect: &[
            r#"syncflow.yaml:3:80: error: redis.tls is not supported with redis.sentinel: the sentinels and the primary are reached without TLS"#,
        ],
    },
    Case {
        name: "sentinel without master",
        file: GLOBALS,
        from: REDIS_LINE,
        to: r#"redis: { sentinel: { urls: [redis://127.0.0.1:26379] } }"#,
        expect: &[r#"syncflow.yaml:3:20: error: missing field `master`"#],
    },
    Case {
        name: "typo'd sentinel key",
        file: GLOBALS,
        from: REDIS_LINE,
        to: r#"redis: { sentinel: { master: mymaster, urls: [redis://127.0.0.1:26379], pasword: x } }"#,
        expect: &[r#"syncflow.yaml:3:73: error: unknown key "pasword" (did you mean "password"?)"#],
    },
];

/// Runs each case on a fresh copy of `config` and lists the mismatches.
fn mismatches(cases: &[Case], config: impl Fn() -> tempfile::TempDir) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        let dir = config();
        edit(dir.path(), case.file, case.from, case.to);
        let (code, lines) = validate(dir.path());
        if code != 1 || lines != case.expect {
            failures.push(format!(
                "{}: exit {code}\n  expected: {:#?}\n  actual:   {:#?}",
                case.name, case.expect, lines
            ));
        }
    }
    failures
}

#[test]
fn each_broken_config_is_reported_at_its_place() {
    let failures = mismatches(CASES, shipped_config);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn each_broken_sentinel_config_is_reported_at_its_place() {
    let failures = mismatches(SENTINEL_CASES, shipped_config);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_sentinel_config_is_valid() {
    let dir = shipped_config();
    edit(
        dir.path(),
        GLOBALS,
        REDIS_LINE,
        r#"redis: { sentinel: { master: mymaster, urls: [redis://10.0.0.1:26379, "redis://:s3cret@10.0.0.2:26379"], password: "${REDIS_PASSWORD:-dev}" } }"#,
    );
    let (code, lines) = validate(dir.path());
    assert_eq!((code, lines), (0, Vec::<String>::new()));
}

#[test]
fn each_broken_two_way_config_is_reported_at_its_place() {
    let failures = mismatches(TWO_WAY_CASES, || {
        syncflow_testkit::example_config("two-way").unwrap()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn each_broken_accounts_config_is_reported_at_its_place() {
    let failures = mismatches(ACCOUNTS_CASES, || {
        syncflow_testkit::example_config("accounts").unwrap()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn each_broken_batch_config_is_reported_at_its_place() {
    let failures = mismatches(BATCH_CASES, || {
        syncflow_testkit::example_config("batch").unwrap()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn errors_in_several_files_are_all_reported_at_once() {
    let dir = shipped_config();
    edit(
        dir.path(),
        HUBSPOT_PIPELINE,
        "provider: hubspot",
        "provider: hubspt",
    );
    edit(dir.path(), HUBSPOT_PROVIDER, "timeout: 10s", "timeout: 10");
    edit(
        dir.path(),
        "pipelines/contacts-to-salesforce.yaml",
        "then: delete",
        "then: remove",
    );
    edit(
        dir.path(),
        "pipelines/contacts-to-salesforce.yaml",
        "LastName: $.last_name",
        "LastName: $.last_name[",
    );
    let (code, lines) = validate(dir.path());
    assert_eq!(code, 1);
    let places = places(&lines);
    assert_eq!(
        places,
        [
            "pipelines/contacts-to-hubspot.yaml:22:13",
            "pipelines/contacts-to-salesforce.yaml:16:11",
            "pipelines/contacts-to-salesforce.yaml:27:25",
            "providers/hubspot.yaml:7:10",
        ],
        "{lines:#?}"
    );
}

#[test]
fn an_unknown_key_or_a_bad_value_does_not_hide_a_files_other_mistakes() {
    let dir = shipped_config();
    // An unknown key, a value of the wrong type, a bad JSONPath and a bad
    // Rhai script, all in one pipeline file.
    edit(dir.path(), HUBSPOT_PIPELINE, "op: $.op", "opp: $.op");
    edit(
        dir.path(),
        HUBSPOT_PIPELINE,
        "durable: contacts-to-hubspot",
        "durable: contacts-to-hubspot\n    max_ack_pending: lots",
    );
    edit(
        dir.path(),
        HUBSPOT_PIPELINE,
        "record: $.after",
        "record: $.after[",
    );
    edit(
        dir.path(),
        HUBSPOT_PIPELINE,
        "properties.phone: $.phone",
        "properties.phone: { expr: 'record.phone +' }",
    );
    let (code, lines) = validate(dir.path());
    assert_eq!(code, 1);
    let places = places(&lines);
    assert_eq!(
        places,
        [
            "pipelines/contacts-to-hubspot.yaml:9:22",
            "pipelines/contacts-to-hubspot.yaml:11:17",
            "pipelines/contacts-to-hubspot.yaml:12:1",
            "pipelines/contacts-to-hubspot.yaml:30:44",
        ],
        "{lines:#?}"
    );
    assert!(
        lines[2].contains(r#"unknown key "opp" (did you mean "op"?)"#),
        "{lines:#?}"
    );
}

#[test]
fn a_value_of_the_wrong_type_is_one_error_not_also_its_absence() {
    let dir = shipped_config();
    // Taken out, the target would name a provider but no object.
    edit(
        dir.path(),
        HUBSPOT_PIPELINE,
        "object: contact",
        "object: [contact]",
    );
    edit(
        dir.path(),
        HUBSPOT_PIPELINE,
        "record: $.after",
        "record: $.after[",
    );
    let (code, lines) = validate(dir.path());
    assert_eq!(code, 1);
    assert_eq!(
        places(&lines),
        [
            "pipelines/contacts-to-hubspot.yaml:10:17",
            "pipelines/contacts-to-hubspot.yaml:23:11"
        ],
        "{lines:#?}"
    );
    assert!(lines[1].contains("invalid type: sequence"), "{lines:#?}");
}

#[test]
fn a_provider_with_a_bad_value_is_checked_for_its_other_mistakes_alone() {
    let dir = shipped_config();
    // Its delete endpoint is a string, not a map: left out, the pipeline
    // that deletes through it would be told the object cannot delete.
    edit(
        dir.path(),
        HUBSPOT_PROVIDER,
        "delete: { method: DELETE, path: \"/crm/v3/objects/contacts/{id}\" }",
        "delete: DELETE",
    );
    let (code, lines) = validate(dir.path());
    assert_eq!(code, 1);
    assert_eq!(
        places(&lines),
        ["providers/hubspot.yaml:24:13"],
        "{lines:#?}"
    );
    // The provider's own checks still run on what is left.
    edit(
        dir.path(),
        HUBSPOT_PROVIDER,
        "id_from: $.id\n",
        "id_from: $.id[\n",
    );
    let (_, lines) = validate(dir.path());
    assert_eq!(
        places(&lines),
        [
            "providers/hubspot.yaml:19:21",
            "providers/hubspot.yaml:24:13"
        ],
        "{lines:#?}"
    );
}

#[test]
fn a_file_with_a_key_left_out_does_not_run_its_tests() {
    let dir = shipped_config();
    // Without its `when`, a record without an email is updated and the
    // file's test "no email, no sync" would fail: only the unknown key is
    // the mistake.
    edit(dir.path(), HUBSPOT_PIPELINE, "when:", "whn:");
    let (code, lines) = validate(dir.path());
    assert_eq!(code, 1);
    assert_eq!(
        lines,
        [
            r#"pipelines/contacts-to-hubspot.yaml:13:1: error: unknown key "whn" (did you mean "when"?)"#
        ],
    );
}

#[test]
fn json_format_lists_errors_as_objects() {
    let dir = shipped_config();
    edit(
        dir.path(),
        HUBSPOT_PIPELINE,
        "provider: hubspot",
        "provider: hubspt",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_syncflow"))
        .args(["validate", "--format", "json", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"][0]["file"], HUBSPOT_PIPELINE);
    assert_eq!(v["errors"][0]["line"], 22);
    assert_eq!(v["errors"][0]["col"], 13);
}

#[test]
fn the_shipped_config_is_valid() {
    let out = Command::new(env!("CARGO_BIN_EXE_syncflow"))
        .args(["validate", "--dir", env!("CARGO_MANIFEST_DIR")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("valid: 2 pipelines, 2 providers, 11 tests passed"),
        "{stdout}"
    );
}

/// `syncflow validate` passes on `examples/<name>` and says `summary`.
fn assert_example_valid(name: &str, summary: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    let out = Command::new(env!("CARGO_BIN_EXE_syncflow"))
        .args(["validate", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains(summary), "{stdout}");
}

#[test]
fn the_batch_example_is_valid() {
    assert_example_valid("batch", "valid: 2 pipelines, 2 providers, 11 tests passed");
}

#[test]
fn the_accounts_example_is_valid() {
    assert_example_valid(
        "accounts",
        "valid: 2 pipelines, 2 providers, 11 tests passed",
    );
}

#[test]
fn the_two_way_example_is_valid() {
    assert_example_valid(
        "two-way",
        "valid: 4 pipelines, 3 providers, 2 links, 5 tests passed",
    );
}
