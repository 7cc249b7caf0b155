//! Differential tests: on every script × record below, the native evaluator
//! either gives up or gives exactly Rhai's answer.

use serde_json::{Value, json};

use super::super::{Event, ScriptEngine, Vars, to_json};
use crate::doc::Doc;

/// The scripts of the shipped and benchmark pipelines, and the shapes
/// around them (each operator and method on every kind of value).
const SCRIPTS: &[&str] = &[
    r#"record.email != ()"#,
    r#"event.op == "d" || record.email != ()"#,
    r#"event.op == "c" && record.company != ()"#,
    r#"event.op == "u" && record.status == "active""#,
    r#"record.status == "blocked""#,
    r#"event.op == "c" || event.op == "u""#,
    r#"if record.company != () { record.company.to_upper() } else { () }"#,
    r#"if record.status == "active" { "customer" } else { "lead" }"#,
    r#"if record.status == "lead" { "Web" } else { () }"#,
    r#"`Synced from System A (${record.status ?? "unknown"})`"#,
    r#"`${record.first_name} ${record.last_name}: ${record.age} ${record.vip}`"#,
    r#"`${record.score}`"#,
    r#"record.email"#,
    r#"record.company.to_lower()"#,
    r#"record.status.to_upper()"#,
    r#"record.first_name.to_lower() + record.last_name.to_upper()"#,
    r#"to_upper(record.company)"#,
    r#"record.company.len()"#,
    r#"record.tags.len()"#,
    r#"record.tags.is_empty()"#,
    r#"record.address.len()"#,
    r#"record.address.is_empty()"#,
    r#"record.address.city"#,
    r#"record.address.city.to_upper()"#,
    r#"record.address"#,
    r#"record"#,
    r#"record.email.contains("@")"#,
    r#"record.email.starts_with("ada")"#,
    r#"record.email.ends_with(record.domain)"#,
    r#"record.age > 17"#,
    r#"record.age >= 18 && record.age < 65"#,
    r#"record.score <= 2"#,
    r#"record.score == 2"#,
    r#"record.age == 2.0"#,
    r#"record.age < 2.5"#,
    r#"record.age >= record.score"#,
    r#"record.score > record.age"#,
    r#"record.age + 1"#,
    r#"record.age + record.score"#,
    r#"record.big + 1"#,
    r#"record.first_name + " " + record.last_name"#,
    r#"record.first_name + record.age"#,
    r#"record.vip == true"#,
    r#"!record.vip"#,
    r#"record.vip < false"#,
    r#"record.status < "b""#,
    r#"record.status < 3"#,
    r#"record.missing == ()"#,
    r#"record.missing.deeper"#,
    r#"record.email.deeper"#,
    r#"record.age ?? 0"#,
    r#"record.missing ?? record.status ?? "none""#,
    r#"if record.vip { 1 } else { 2 }"#,
    r#"if record.age { 1 } else { 2 }"#,
    r#"if record.vip { 1 }"#,
    r#"record.vip && record.age"#,
    r#"record.age || true"#,
    r#"record == ()"#,
    r#"record.tags == ()"#,
    r#"event.key + "/" + event.subject"#,
    r#"event.seq + 1"#,
    r#"event.timestamp"#,
    r#"event.headers.source"#,
    r#"event.headers.missing"#,
    r#"event.nothing"#,
    r#"event"#,
    r#"event.headers"#,
    r#"{ record.email }"#,
    r#""""#,
    r#"1.5"#,
    r#"()"#,
    // Not translated: Rhai only.
    r#"record["email"]"#,
    r#"let x = record.age; x + 1"#,
    r#"record.email.split("@")"#,
    r#"fn f(x) { x } f(record.age)"#,
    r#"record?.email"#,
];

/// The records scripts are tried on, as evaluation sees them.
fn records() -> Vec<Doc<'static>> {
    values().into_iter().map(Doc::from).collect()
}

fn values() -> Vec<Value> {
    vec![
        json!({}),
        json!(null),
        json!("just a string"),
        json!({"email": "ada@example.com", "domain": "example.com", "first_name": "Ada",
               "last_name": "Lovelace", "company": "Analytical Engines", "status": "active",
               "age": 36, "score": 2.5, "vip": true, "tags": ["a", "b"],
               "address": {"city": "London"}, "big": 9223372036854775807_i64}),
        json!({"email": null, "company": "ÉCOLE straße ǅ", "status": "blocked", "age": 2,
               "score": 2, "vip": false, "tags": [], "address": {}, "first_name": "",
               "last_name": "X", "domain": 5}),
        json!({"email": 5, "company": 7, "status": 1, "age": 17.0, "score": -1e308,
               "vip": "yes", "tags": {"k": 1}, "address": "flat", "big": 18446744073709551615_u64}),
        json!({"company": "ǅ", "status": "ß", "first_name": "ABC", "last_name": "abc"}),
        json!({"email": ["x"], "company": {"name": "x"}, "status": true, "age": -3,
               "score": 1e308, "vip": null, "tags": "not a list", "address": {"city": 5}}),
    ]
}

#[test]
fn native_answers_are_rhais_answers() {
    let engine = ScriptEngine::new();
    let headers = vec![
        ("source".to_string(), "first".to_string()),
        ("source".to_string(), "crm".to_string()),
    ];
    let ops = [json!("c"), json!(1), Value::Null].map(Doc::from);
    let mut native_answers = 0;
    for source in SCRIPTS {
        let script = engine.compile(source).unwrap();
        let Some(node) = &script.native else { continue };
        for record in &records() {
            for op in &ops {
                let event = Event {
                    op: Some(op),
                    key: "k-1",
                    subject: "contacts.created",
                    seq: 42,
                    timestamp_ms: Some(1_700_000_000_000),
                    headers: &headers,
                    linked_key: Some("a-7"),
                };
                let mut vars = Vars::new(record, event);
                let rhai = engine.eval_rhai(&script, &mut vars);
                let Some(native) = super::eval(node, record, &event) else {
                    continue;
                };
                native_answers += 1;
                let rhai = rhai.unwrap_or_else(|e| {
                    panic!("{source} on {record}: native {native:?}, Rhai failed: {e}")
                });
                let rhai_type = rhai.type_name();
                let rhai_json = to_json(rhai);
                assert_eq!(
                    native.clone().into_json(),
                    rhai_json,
                    "{source} on {record} (op {op}): native {native:?}, Rhai {rhai_type}"
                );
            }
        }
    }
    // The comparison above is not vacuous.
    assert!(native_answers > 500, "{native_answers}");
}

#[test]
fn the_shipped_shapes_are_native_and_the_rest_is_not() {
    let engine = ScriptEngine::new();
    let native = |s: &str| engine.compile(s).unwrap().is_native();
    for s in &SCRIPTS[..SCRIPTS.len() - 5] {
        assert!(native(s), "{s} should be evaluated natively");
    }
    for s in &SCRIPTS[SCRIPTS.len() - 5..] {
        assert!(!native(s), "{s} should be left to Rhai");
    }
}

#[test]
fn gives_up_where_rhai_fails_or_decides() {
    let engine = ScriptEngine::new();
    let record = Doc::from(json!({"age": 36, "big": i64::MAX, "name": "x", "email": "a@b"}));
    let event = Event::default();
    let native = |s: &str| {
        let script = engine.compile(s).unwrap();
        super::eval(script.native.as_deref().unwrap(), &record, &event)
            .map(|v| v.into_json().unwrap())
    };
    // Errors: overflow, `<` across types, property of a string, non-bool `if`.
    assert_eq!(native("record.big + 1"), None);
    assert_eq!(native("record.age < record.name"), None);
    assert_eq!(native("record.name.first"), None);
    assert_eq!(native("if record.age { 1 } else { 2 }"), None);
    // And answers where it is sure.
    assert_eq!(native("record.age + 1"), Some(Some(json!(37))));
    assert_eq!(native("record.email != ()"), Some(Some(json!(true))));
}

#[test]
fn scripts_fall_back_to_rhai_with_its_messages() {
    let engine = ScriptEngine::new();
    let record = Doc::from(json!({"name": "x"}));
    let script = engine.compile("record.name.first").unwrap();
    assert!(script.is_native());
    let err = engine
        .eval(&script, &mut Vars::new(&record, Event::default()))
        .unwrap_err();
    assert!(err.message.contains("first"), "{}", err.message);
    let cond = engine.compile("record.name").unwrap();
    let err = engine
        .eval_bool(&cond, &mut Vars::new(&record, Event::default()))
        .unwrap_err();
    assert!(err.message.contains("true or false"), "{}", err.message);
}

/// Random scripts from the whole native grammar, fully parenthesized, on
/// the records above: wherever the native tree answers, Rhai agrees.
#[test]
fn random_scripts_agree_with_rhai() {
    use rand::{Rng, SeedableRng};

    fn leaf(rng: &mut rand::rngs::StdRng) -> String {
        const FIELDS: &[&str] = &[
            "email",
            "company",
            "status",
            "age",
            "score",
            "vip",
            "tags",
            "address",
            "big",
            "missing",
            "first_name",
            "domain",
        ];
        const LITERALS: &[&str] = &[
            "()",
            "true",
            "false",
            "0",
            "1",
            "-1",
            "17",
            "9223372036854775807",
            "2.5",
            "0.0",
            "\"\"",
            "\"active\"",
            "\"a\"",
            "\"ÉCOLE\"",
            "\"ada@example.com\"",
        ];
        match rng.random_range(0..10) {
            0..=4 => format!("record.{}", FIELDS[rng.random_range(0..FIELDS.len())]),
            5 => [
                "event.op",
                "event.key",
                "event.seq",
                "event.timestamp",
                "event.headers.source",
                "event.subject",
            ][rng.random_range(0..6)]
            .to_string(),
            6 => ["record.address.city", "record"][rng.random_range(0..2)].to_string(),
            _ => LITERALS[rng.random_range(0..LITERALS.len())].to_string(),
        }
    }

    fn script(rng: &mut rand::rngs::StdRng, depth: u32) -> String {
        if depth == 0 || rng.random_range(0..3) == 0 {
            return leaf(rng);
        }
        let mut sub = || script(rng, depth - 1);
        let (a, b) = (sub(), sub());
        match rng.random_range(0..14) {
            0 => format!("({a} == {b})"),
            1 => format!("({a} != {b})"),
            2 => format!("({a} < {b})"),
            3 => format!("({a} >= {b})"),
            4 => format!("({a} + {b})"),
            5 => format!("({a} && {b})"),
            6 => format!("({a} || {b})"),
            7 => format!("(!{a})"),
            8 => format!("({a} ?? {b})"),
            9 => {
                let c = script(rng, depth - 1);
                format!("(if {a} {{ {b} }} else {{ {c} }})")
            }
            10 => format!("`${{{a}}}-${{{b}}}`"),
            11 => {
                let m = ["to_upper()", "to_lower()", "len()", "is_empty()"][rng.random_range(0..4)];
                format!("({a}).{m}")
            }
            12 => {
                let m = ["contains", "starts_with", "ends_with"][rng.random_range(0..3)];
                format!("({a}).{m}({b})")
            }
            _ => format!("({a} <= {b})"),
        }
    }

    let engine = ScriptEngine::new();
    let headers = vec![("source".to_string(), "crm".to_string())];
    let op = Doc::from(json!("c"));
    let event = Event {
        op: Some(&op),
        key: "k-1",
        subject: "contacts.created",
        seq: 42,
        timestamp_ms: Some(1_700_000_000_000),
        headers: &headers,
        linked_key: None,
    };
    let records = records();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut translated, mut answered) = (0, 0);
    for _ in 0..6_000 {
        let source = script(&mut rng, 4);
        // Rhai refuses a literal of the wrong type under `&&`, `||`, `!`
        // or `if` at compile time (about a quarter of these scripts).
        let Ok(compiled) = engine.compile(&source) else {
            continue;
        };
        let Some(node) = &compiled.native else {
            panic!("{source} compiles but is not native");
        };
        translated += 1;
        for record in &records {
            let Some(native) = super::eval(node, record, &event) else {
                continue;
            };
            answered += 1;
            let rhai = engine
                .eval_rhai(&compiled, &mut Vars::new(record, event))
                .unwrap_or_else(|e| {
                    panic!("{source} on {record}: native {native:?}, Rhai failed: {e}")
                });
            assert_eq!(
                native.clone().into_json(),
                to_json(rhai),
                "{source} on {record}: native {native:?}"
            );
        }
    }
    // Not vacuous: thousands of scripts, and many records get an answer.
    assert!(translated > 4_000, "{translated}");
    assert!(answered > 8_000, "{answered}");
}

/// Rhai checks every function result (and a container passed to one)
/// against its size limits: the native tree gives those cases up too.
#[test]
fn size_limits_are_rhais() {
    let engine = ScriptEngine::new();
    let items = 10_001; // one over MAX_ARRAY / MAX_MAP
    let record = Doc::from(json!({
        "tags": (0..items).collect::<Vec<_>>(),
        "fields": (0..items).map(|i| (i.to_string(), json!(i))).collect::<serde_json::Map<_, _>>(),
        "notes": "x".repeat(70_000), // over 64 KiB
        "short": "y",
    }));
    let scripts = [
        "record.tags.len()",
        "record.fields.is_empty()",
        "record.fields.len() > 0",
        "record.notes",
        "record.notes.len()",
        "record.notes.contains(\"xx\")",
        "record.notes == \"a\"",
        "record.notes.to_lower()",
        "record.notes.to_upper()",
        "record.notes + record.short",
        "`${record.notes}`",
        "record.short + record.short",
        "record.fields[\"1\"]",
    ];
    let mut answered = 0;
    for source in scripts {
        let script = engine.compile(source).unwrap();
        let mut vars = Vars::new(&record, Event::default());
        let rhai = engine.eval_rhai(&script, &mut vars).map(to_json);
        let native = script
            .native
            .as_deref()
            .and_then(|node| super::eval(node, &record, &Event::default()));
        if let Some(native) = native {
            answered += 1;
            let rhai = rhai.unwrap_or_else(|e| panic!("{source}: native answers, Rhai: {e}"));
            assert_eq!(native.into_json(), rhai, "{source}");
        }
    }
    assert!(answered >= 4, "{answered}");
}
